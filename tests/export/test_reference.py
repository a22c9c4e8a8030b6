"""Drift reference statistics in built archives: computed by the archive's own handler, hashed, refused when
the handler refuses an input; `tskit build --reference` input folders and files."""
import json
import zipfile

import pytest

from export.archive import build_archive
from export.golden import GoldenInput
from export.reference import read_reference_inputs
from export.zoo.tabular import tabular_spec
from handlers.drift import REFERENCE_NAME, read_reference
from handlers.integrity import MANIFEST_NAME, sha256_file
from handlers.image_classifier import ImageClassifier
from tskit.testing import load_handler, run_batch


def test_reference_is_hashed_and_listed_in_the_manifest(default_mar, default_model_dir):
    with zipfile.ZipFile(default_mar) as zf:
        manifest = json.loads(zf.read(MANIFEST_NAME))
    assert manifest["files"][REFERENCE_NAME] == sha256_file(default_model_dir / REFERENCE_NAME)
    assert manifest["reference"]["inputs"] == 96 and manifest["reference"]["features"][0] == "red_mean"


def test_reference_describes_what_the_handler_computes_on_the_same_inputs(default_model_dir, tmp_path):
    """Serving the reference photos themselves, in one window, reproduces the stored bin shares exactly."""
    from export.zoo import reference_photos

    photos = reference_photos()
    drift = {"drift_window": len(photos), "drift_min_count": len(photos), "drift_every": len(photos)}
    handler = load_handler(ImageClassifier, default_model_dir, yaml_overrides={"handler": drift})
    for start in range(0, len(photos), 16):
        run_batch(handler, [{"body": p.payload} for p in photos[start:start + 16]])
    stored = read_reference(default_model_dir)["features"]
    for feature, shares in zip(stored, handler.drift.shares()):
        assert shares[:len(feature["shares"])] == pytest.approx(feature["shares"]), feature["name"]
    assert handler.drift.last.max() == pytest.approx(0, abs=1e-9)


def test_a_refused_reference_input_fails_the_build(tmp_path):
    spec = tabular_spec(str(tmp_path / "store"), tmp_path / "work")
    spec.reference_inputs = spec.reference_inputs[:20] + [GoldenInput("bad.json", b"[1, 2, 3]", "application/json")]
    with pytest.raises(RuntimeError, match=r"reference input bad.json was refused \(400\): expected shape \[30\]"):
        build_archive(spec)


def test_reference_inputs_from_a_folder_a_jsonl_file_or_one_file(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "b.jpg").write_bytes(b"jpeg bytes")
    (folder / "a.json").write_text("[1]")
    (folder / ".hidden").write_text("skipped")
    assert [(g.name, g.content_type) for g in read_reference_inputs(folder)] == [
        ("a.json", "application/json"), ("b.jpg", "image/jpeg")]
    rows = tmp_path / "rows.jsonl"
    rows.write_text("[1, 2]\n\n[3, 4]\n")
    assert [(g.payload, g.content_type) for g in read_reference_inputs(rows)] == [
        (b"[1, 2]", "application/json"), (b"[3, 4]", "application/json")]
    assert read_reference_inputs(folder / "b.jpg")[0].payload == b"jpeg bytes"
    with pytest.raises(FileNotFoundError, match="reference inputs not found"):
        read_reference_inputs(tmp_path / "missing")
