"""`tskit optimize`: behaviour, not speed. The guard's arithmetic, a run on the default model's ONNX archive (the
`optimized` fixture), and a user's TorchScript classifier optimized where OpenVINO is missing."""
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from export.manifest import archive_manifest as manifest
from export.optimize import Candidate, guard, worker_splits
from export.zoo import SAMPLE_TOP1
from handlers.errors import ConfigError
from handlers.image_classifier import ImageClassifier
from tskit.testing import load_archive_handler, run_batch, unpack_archive

TSKIT = [sys.executable, "-m", "tskit.cli"]


def test_the_guard_counts_confident_views_and_top5():
    reference = torch.full((6, 10), -5.0)
    reference[:4, 0] = 5.0  # four confident views (top-1 class 0, p ~ 1)
    reference[4:, 1:4] = torch.tensor([0.1, 0.0, 0.0])  # two unsure ones (class 1 at p ~ 0.36)
    candidate = reference.clone()
    candidate[0, 3] = 9.0  # a confident view flips to class 3; class 0 stays second, so inside the top 5
    candidate[4, 2] = 0.5  # an unsure view flips
    result = guard(reference, candidate, np.array([False, False, False, True, True, True]))
    assert result.views == 6 and result.confident_views == 4
    assert result.confident == pytest.approx(0.75) and result.overall == pytest.approx(4 / 6)
    assert result.top5 == 1.0 and result.held_out_confident == 1.0
    assert result.refusal(0.99, 0.99) == "confident agreement 75.0% < 99.0%"
    assert result.refusal(0.7, 0.99) is None


def test_worker_splits_never_exceed_the_cores():
    assert worker_splits(2) == [(2, 1), (1, 2)]
    assert worker_splits(4) == [(4, 1), (2, 2), (1, 4)]
    assert all(w * t == 6 for w, t in worker_splits(6))


def test_optimize_picks_a_candidate_and_writes_a_verified_archive(optimized):
    output, mar = optimized
    report = manifest(mar)["optimization"]
    assert report["cpu"]["model"] and isinstance(report["cpu"]["flags"], list)
    rows = {c["name"]: c for c in report["candidates"]}
    assert report["chosen"] in ("openvino fp32", "openvino int8") and rows[report["chosen"]]["verdict"] == "chosen"
    for name in ("as built (onnx fp32)", "onnxruntime fp32", "openvino bf16"):
        assert rows[name]["verdict"] == "skipped: not asked for (--only)"
    for name in ("openvino fp32", "openvino int8"):
        g = rows[name]["guard"]
        assert g["views"] >= 500 and g["confident_views"] > 0
        assert not rows[name]["rates"] or "1x%d" % report["cores"] in rows[name]["rates"]  # every split measured
        assert (rows[name]["verdict"].startswith("refused")) == (g["confident"] < 0.99 or g["top5"] < 0.99)
    assert rows["openvino fp32"]["guard"]["confident"] == 1.0  # fp32 against fp32
    assert {d["name"] for d in report["decoders"]} == {"pillow", "turbojpeg"}
    assert "| candidate | forward images/s" in output and mar.name in output
    verify = subprocess.run(TSKIT + ["verify", str(mar)], capture_output=True, text=True)
    assert verify.returncode == 0 and "PASSED" in verify.stdout, verify.stdout
    assert "openvino" in verify.stdout  # the golden answers were recorded by the new engine


def test_the_optimized_archive_answers_the_sample_photos(optimized, photo_bytes, tmp_path):
    handler = load_archive_handler(optimized[1], tmp_path / "unpacked")
    assert handler.model_format == "openvino" and handler.model.takes_pixels
    results = run_batch(handler, [{"body": photo_bytes[name]} for name in sorted(SAMPLE_TOP1)])
    for name, (status, scores) in zip(sorted(SAMPLE_TOP1), results):
        assert status == 200 and next(iter(scores)) in SAMPLE_TOP1[name], (name, scores)
    assert manifest(optimized[1])["requirements"][0].startswith("openvino==")


def test_a_pixel_engine_refuses_another_normalisation_and_drifts_like_the_original(optimized, photo_bytes,
                                                                                    format_archives, tmp_path):
    root = unpack_archive(optimized[1], tmp_path / "unpacked")
    from tskit.testing import load_handler

    with pytest.raises(ConfigError, match="normalises pixels with mean"):
        load_handler(ImageClassifier, root, yaml_overrides={"handler": {"mean": [0.5, 0.5, 0.5]}})
    pixels = load_handler(ImageClassifier, root, yaml_overrides={"handler": {"decoder": "pillow"}})
    plain = load_handler(ImageClassifier, unpack_archive(format_archives["onnx"], tmp_path / "onnx"))
    items = [pixels.decode({"body": photo_bytes[name]}) for name in sorted(SAMPLE_TOP1)]
    batch = pixels.collate(items)
    assert batch.dtype == torch.uint8 and batch.shape[-1] == 3
    torch.testing.assert_close(pixels.drift_features(batch)[1], plain.drift_features(plain.collate(items))[1],
                               atol=1e-4, rtol=1e-4)


def test_bf16_falls_back_to_fp32_on_a_cpu_without_it(optimized, tmp_path, monkeypatch, caplog):
    """The same flag reading the precision policy uses, read as a CPU without avx512_bf16/amx_bf16."""
    import handlers.runtime

    monkeypatch.setattr(handlers.runtime, "cpu_has_fast_bf16", lambda *args: False)
    root = unpack_archive(optimized[1], tmp_path / "unpacked")
    from tskit.testing import load_handler

    with caplog.at_level(logging.INFO):
        handler = load_handler(ImageClassifier, root, yaml_overrides={"handler": {"precision": "bf16"}})
    assert "this CPU has no native bf16" in caplog.text and handler.model.hint == "f32"
    assert f"precision {handler.precision} (f32 hint)" in caplog.text


def test_a_users_torchscript_classifier_where_openvino_is_missing(format_archives, calibration_photos, tmp_path):
    """A Python that cannot import openvino: its candidates are listed as skipped, ONNX Runtime is chosen, and
    the archive records onnxruntime as its requirement."""
    blocker = tmp_path / "site" / "openvino"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'openvino'\", name='openvino')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    out = tmp_path / "out"
    result = subprocess.run(TSKIT + ["optimize", str(format_archives["torchscript"]), "--calibration",
                                     str(calibration_photos), "--export-path", str(out), "--views", "500",
                                     "--seconds", "0.3", "--only", "onnxruntime fp32"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    built = manifest(out / "lite0_torchscript.mar")
    rows = {c["name"]: c for c in built["optimization"]["candidates"]}
    assert built["optimization"]["chosen"] == "onnxruntime fp32" and built["model"]["format"] == "onnx"
    assert rows["openvino int8"]["verdict"] == "skipped: openvino not installed (openvino)"
    assert built["requirements"][0].startswith("onnxruntime==")
    assert built["golden"]["cases"], "the TorchScript archive's golden inputs carry over"


def test_other_handlers_are_not_supported_yet(tabular_mar, calibration_photos, tmp_path):
    result = subprocess.run(TSKIT + ["optimize", str(tabular_mar), "--calibration", str(calibration_photos),
                                     "--export-path", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "not supported yet" in result.stderr


def test_refused_and_skipped_candidates_are_never_chosen():
    c = Candidate("openvino int8", "openvino", "int8", verdict="refused: top-5 containment 98.0% < 99.0%")
    assert c.best is None and c.pixels


def test_an_over_aggressive_resize_shortcut_is_refused_with_its_agreement(format_archives, calibration_photos,
                                                                          tmp_path):
    """A real shortcut on real views: decoding at 1/8 scale (what a JPEG DCT-scaled decode to the smallest size
    would give) and scaling back up. The guard refuses it and says by how much it missed."""
    import io

    from PIL import Image

    from export.optimize import archive_handler, forward_all, preprocessed
    from export.views import make_views, read_photos

    views = make_views(read_photos(calibration_photos), 500)
    handler = archive_handler(unpack_archive(format_archives["onnx"], tmp_path / "onnx"), 8, precision="fp32")

    def eighth(payload: bytes) -> bytes:
        image = Image.open(io.BytesIO(payload)).convert("RGB")
        small = image.reduce(8)
        out = io.BytesIO()
        small.resize(image.size, Image.NEAREST).save(out, format="PNG")
        return out.getvalue()

    reference = forward_all(handler.model, preprocessed(handler, [v.payload for v in views]))
    shortcut = forward_all(handler.model, preprocessed(handler, [eighth(v.payload) for v in views]))
    result = guard(reference, shortcut, np.array([v.held_out for v in views]))
    refusal = result.refusal(0.99, 0.99)
    assert refusal is not None and "%" in refusal, result
    assert result.overall < 0.9 and result.views >= 500
