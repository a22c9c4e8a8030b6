"""`tskit optimize`: behaviour, not speed. The guard's arithmetic, a run on the default model's ONNX archive (the
`optimized` fixture), and a user's TorchScript classifier optimized where OpenVINO is missing."""
import logging
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
import yaml

from export.manifest import archive_manifest as manifest
from export.optimize.candidates import Candidate, known_names, parse_only
from export.optimize.guard import Thresholds, guard
from export.optimize.speed import choose_split, worker_splits
from export.variants import CONFIG_NAME
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
    assert result.refusal(Thresholds(0.99, 0.99)) == "confident agreement 75.0% < 99.0%"
    assert result.refusal(Thresholds(0.7, 0.99)) is None


def test_worker_splits_never_exceed_the_cores():
    assert worker_splits(2) == [(2, 1), (1, 2)]
    assert worker_splits(4) == [(4, 1), (2, 2), (1, 4)]
    assert all(w * t == 6 for w, t in worker_splits(6))


def test_optimize_picks_a_candidate_and_writes_a_verified_archive(optimized):
    output, mar = optimized
    report = manifest(mar)["optimization"]
    assert report["cpu"]["model"] and isinstance(report["cpu"]["flags"], list)
    rows = {c["name"]: c for c in report["candidates"]}
    assert report["chosen"] in ("openvino-fp32", "openvino-int8") and rows[report["chosen"]]["verdict"] == "chosen"
    assert rows["onnxruntime-fp32"]["as_built"], "an ONNX archive's own file is its ONNX Runtime row"
    for name in ("onnxruntime-fp32", "openvino-bf16", "openvino-int8-mixed"):
        assert rows[name]["verdict"] == "skipped: not asked for (--only)"
    for name in ("openvino-fp32", "openvino-int8"):
        g = rows[name]["guard"]
        assert g["views"] >= 500 and g["confident_views"] > 0
        passes = g["confident"] >= 0.99 and g["top5"] >= 0.99
        assert rows[name]["verdict"].startswith("refused") != passes
        if passes:  # every split of the cores measured
            assert set(rows[name]["rates"]) == {f"{w}x{t}" for w, t in worker_splits(report["cores"])}
    assert rows["openvino-fp32"]["guard"]["confident"] == 1.0  # fp32 against fp32
    assert set(report["served"]) == {f"{w}x{t}" for w, t in worker_splits(report["cores"])}
    assert report["split"] in report["served"] and report["split_reason"]
    config = yaml.safe_load(zipfile.ZipFile(mar).read(CONFIG_NAME))
    assert config["minWorkers"] == config["maxWorkers"] == int(report["split"].split("x")[0])
    assert report["seconds"] < report["budget_s"]
    assert {d["name"] for d in report["decoders"]} == {"pillow", "turbojpeg"}
    assert "| candidate | forward images/s" in output and mar.name in output and "chosen: " in output
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
                                     "--seconds", "0.3", "--only", "onnxruntime-fp32"],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    built = manifest(out / "lite0_torchscript.mar")
    rows = {c["name"]: c for c in built["optimization"]["candidates"]}
    assert built["optimization"]["chosen"] == "onnxruntime-fp32" and built["model"]["format"] == "onnx"
    assert rows["torchscript-fp32"]["as_built"] and rows["onnxruntime-fp32"]["verdict"] == "chosen"
    assert rows["openvino-int8"]["verdict"] == "skipped: openvino not installed (openvino)"
    assert built["requirements"][0].startswith("onnxruntime==")
    assert built["golden"]["cases"], "the TorchScript archive's golden inputs carry over"


def test_other_handlers_are_not_supported_yet(tabular_mar, calibration_photos, tmp_path):
    result = subprocess.run(TSKIT + ["optimize", str(tabular_mar), "--calibration", str(calibration_photos),
                                     "--export-path", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1 and "not supported yet" in result.stderr


def test_refused_and_skipped_candidates_are_never_chosen():
    c = Candidate("openvino-int8", "openvino", "int8", verdict="refused: top-5 containment 98.0% < 99.0%")
    assert c.best is None and c.pixels


def test_an_over_aggressive_resize_shortcut_is_refused_with_its_agreement(format_archives, calibration_photos,
                                                                          tmp_path):
    """A real shortcut on real views: decoding at 1/8 scale (what a JPEG DCT-scaled decode to the smallest size
    would give) and scaling back up. The guard refuses it and says by how much it missed."""
    import io

    from PIL import Image

    from export.optimize.inputs import archive_handler, forward_all, preprocessed
    from export.views import make_views, read_photos

    views = make_views(read_photos(calibration_photos), 500)
    handler = archive_handler(unpack_archive(format_archives["onnx"], tmp_path / "onnx"), 8, precision="fp32")

    def eighth(payload: bytes) -> bytes:
        image = Image.open(io.BytesIO(payload)).convert("RGB")
        small = image.reduce(8)
        out = io.BytesIO()
        small.resize(image.size, Image.NEAREST).save(out, format="PNG")
        return out.getvalue()

    reference = forward_all(handler.model, preprocessed(handler, [v.payload for v in views])[0])
    shortcut = forward_all(handler.model, preprocessed(handler, [eighth(v.payload) for v in views])[0])
    result = guard(reference, shortcut, np.array([v.held_out for v in views]))
    refusal = result.refusal(Thresholds())
    assert refusal is not None and "%" in refusal, result
    assert result.overall < 0.9 and result.views >= 500


def test_only_takes_every_candidate_name_and_refuses_an_unknown_one():
    for name in known_names():
        assert "," not in name and " " not in name
        assert parse_only(name) == [name]
    assert parse_only("openvino-int8, openvino-int8-mixed") == ["openvino-int8", "openvino-int8-mixed"]
    with pytest.raises(ValueError, match="unknown candidate 'openvino int8'; known: onnxruntime-fp32, openvino-fp32"):
        parse_only("openvino-fp32,openvino int8")


def test_without_nncf_the_int8_rows_are_skipped_with_why():
    from export.optimize.candidates import plan

    rows = {c.name: c for c in plan("eager", "fp32", "m.pt", None, {"nncf": "nncf not installed (nncf)"}, True)}
    for name in ("openvino-int8", "openvino-int8-bf16", "openvino-int8-mixed", "openvino-int8-mixed-bf16"):
        assert rows[name].verdict == "skipped: nncf not installed (nncf)"
    assert rows["openvino-fp32"].open and rows["torch-fp32"].as_built
    cpu_without_bf16 = {c.name: c for c in plan("eager", "fp32", "m.pt", None, {}, False)}
    assert cpu_without_bf16["openvino-bf16"].verdict == "skipped: this CPU has no native bf16"


def test_a_tie_within_noise_goes_to_the_split_with_more_workers():
    tie = choose_split({"2x1": [400.0, 410.0], "1x2": [415.0, 416.0]})
    assert tie.split == "2x1" and "tie goes to more workers" in tie.reason
    clear = choose_split({"2x1": [300.0, 305.0], "1x2": [415.0, 416.0]})
    assert clear.split == "1x2" and clear.reason.startswith("highest served rate")


@pytest.fixture(scope="module")
def outlier_mar(calibration_photos, tmp_path_factory):
    from tests.export.models.build_outlier import build_outlier_archive

    return build_outlier_archive(calibration_photos, tmp_path_factory.mktemp("outlier"))


def test_plain_int8_fails_and_the_mixed_search_finds_the_layer_within_the_budget(outlier_mar, calibration_photos,
                                                                                  tmp_path):
    """Another architecture than the default, whose plain int8 fails the guard: the search keeps the layer that
    outlier channel crushes in floating point, and the run stays within its budget, saying what it does."""
    out = tmp_path / "out"
    start = time.monotonic()
    result = subprocess.run(TSKIT + ["optimize", str(outlier_mar), "--calibration", str(calibration_photos),
                                     "--export-path", str(out), "--views", "500", "--seconds", "0.3", "--budget",
                                     "240", "--only", "openvino-int8,openvino-int8-mixed"],
                            capture_output=True, text=True, timeout=600)
    took = time.monotonic() - start
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = manifest(out / "outlier.mar")["optimization"]
    rows = {c["name"]: c for c in report["candidates"]}
    assert rows["openvino-int8"]["verdict"].startswith("refused: confident agreement")
    mixed = rows["openvino-int8-mixed"]
    assert report["chosen"] == "openvino-int8-mixed" and mixed["guard"]["confident"] >= 0.99
    assert 1 <= len(mixed["search"]["kept"]) < mixed["search"]["quantizers"]
    assert report["seconds"] < 240 and took < 240 + 60  # the run, then the interpreter's start and exit
    assert "openvino-int8-mixed: ranking" in result.stdout and "layers in floating point:" in result.stdout
    handler = load_archive_handler(out / "outlier.mar", tmp_path / "unpacked")
    assert handler.model.precision == "int8"


def test_the_search_stops_at_its_deadline_with_no_variant(outlier_mar, calibration_photos, tmp_path):
    import openvino as ov

    from export.optimize import mixed_int8
    from export.optimize.engines import openvino_ir, quantize_int8
    from export.optimize.inputs import Inputs, archive_handler, forward_all
    from export.views import make_views, read_photos

    root = unpack_archive(outlier_mar, tmp_path / "unpacked")
    views = make_views(read_photos(calibration_photos), 500)
    held_out = np.array([v.held_out for v in views])
    inputs = Inputs(archive_handler(root, 8, precision="fp32"), [v.payload for v in views])
    reference_model = archive_handler(root, 8, precision="fp32").model
    reference = forward_all(reference_model, inputs.normalised)
    config = inputs.handler.config
    ir = openvino_ir(reference_model, inputs.normalised[:2], config["mean"], config["std"], tmp_path / "o.xml")
    int8 = quantize_int8(ir, [inputs.pixels[i:i + 1].numpy() for i in range(0, 200)], tmp_path / "o8.xml")
    model = ov.Core().read_model(str(int8))
    logged = []
    outcome = mixed_int8.search(model, inputs.pixels, reference, held_out, guard, Thresholds(), 2, time.monotonic(),
                                logged.append)
    assert not outcome.passed and outcome.stopped == "deadline" and not outcome.steps
    assert outcome.quantizers == len(mixed_int8.activation_quantizers(model)) > 0
    outcome = mixed_int8.search(model, inputs.pixels, reference, held_out, guard, Thresholds(), 2,
                                time.monotonic() + 300, logged.append, max_steps=1)
    assert outcome.passed and len(outcome.kept) == 1 and outcome.stopped == "passed"
    assert [s.kept for s in outcome.steps] == [1] and outcome.ranked == outcome.quantizers


def optimize_hf_archive(tmp_path, arch: str, name: str, handler: str, fmt: str, *options: str):
    """The tests/hf_models.py `arch` folder built as a `handler` archive in `fmt`, then `tskit optimize` on 45 held-out
    SMS messages with `options` into tmp_path/out; (the source archive, the finished optimize process)."""
    from export.archive import ArchiveSpec, build_archive
    from export.zoo.text import load_split
    from tests.hf_models import build_folder

    source = build_archive(ArchiveSpec(name, None, handler=handler, model_dir=str(build_folder(arch, tmp_path)),
                                       model_format=fmt, export_path=str(tmp_path / "store")))
    calibration = tmp_path / "texts.txt"
    calibration.write_text("\n".join(text.replace("\n", " ") for text, _ in load_split()[1][:45]))
    result = subprocess.run(TSKIT + ["optimize", str(source), "--calibration", str(calibration), "--export-path",
                                     str(tmp_path / "out"), "--seconds", "0.3", *options], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return source, result


@pytest.mark.slow  # an ONNX export, an NNCF quantization and served measurements
def test_a_transformer_archive_is_optimized_and_a_candidate_that_fails_the_guard_is_refused(tmp_path):
    """sentence_embedder on a Hugging Face BERT folder (ONNX): held to a cosine no int8 model reaches, int8 is
    refused and a floating-point engine chosen from served figures; the archive answers as the reference does."""
    from handlers.sentence_embedder import SentenceEmbedder
    from tskit.testing import load_handler

    source, _ = optimize_hf_archive(tmp_path, "bert", "emb", "sentence_embedder", "onnx", "--min-cosine", "0.99999",
                                    "--only", "openvino-fp32,openvino-int8")
    built = manifest(tmp_path / "out" / "emb.mar")
    rows = {c["name"]: c for c in built["optimization"]["candidates"]}
    assert rows["openvino-int8"]["verdict"].startswith("refused: cosine") and rows["openvino-int8"]["guard"]
    assert built["optimization"]["chosen"] in ("onnxruntime-fp32", "openvino-fp32")
    assert rows[built["optimization"]["chosen"]]["served"], "the choice is made on served figures"
    optimized = load_handler(SentenceEmbedder, unpack_archive(tmp_path / "out" / "emb.mar", tmp_path / "o"))
    original = load_handler(SentenceEmbedder, unpack_archive(source, tmp_path / "s"))
    texts = [{"body": b"see you at lunch"}, {"body": b"Call now to WIN a free prize!!"}]
    ours = np.array([a for _, a in run_batch(optimized, texts)])
    np.testing.assert_allclose(ours, np.array([a for _, a in run_batch(original, texts)]), atol=1e-4)


@pytest.mark.slow  # an ONNX export and served measurements
def test_an_eager_transformer_archive_is_exported_to_onnx_and_answers_the_same(tmp_path):
    """transformer_classifier built --format eager (a multi-label DistilBERT): optimize exports the Hugging Face
    folder to ONNX itself; the ONNX Runtime archive it writes answers as the eager one does."""
    from handlers.transformer_classifier import TransformerClassifier
    from tskit.testing import load_handler

    source, result = optimize_hf_archive(tmp_path, "distilbert", "dist", "transformer_classifier", "eager",
                                         "--only", "onnxruntime-fp32")
    assert "exported the eager model to ONNX" in result.stdout
    built = manifest(tmp_path / "out" / "dist.mar")
    assert built["optimization"]["chosen"] == "onnxruntime-fp32" and built["model"]["format"] == "onnx"
    texts = [{"body": b"see you at lunch"}, {"body": b"Call now to WIN a free prize!!"}]
    optimized = load_handler(TransformerClassifier, unpack_archive(tmp_path / "out" / "dist.mar", tmp_path / "o"))
    original = load_handler(TransformerClassifier, unpack_archive(source, tmp_path / "s"))
    for (_, ours), (_, theirs) in zip(run_batch(optimized, texts), run_batch(original, texts)):
        assert list(ours) == list(theirs) and all(abs(ours[k] - theirs[k]) <= 1e-4 for k in ours)
