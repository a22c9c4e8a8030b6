"""The sealed manifest, `tskit verify`, and the refusal of tampered archives."""
import json
import shutil
import subprocess
import sys
import zipfile

import pytest

from handlers.image_classifier import ImageClassifier
from handlers.integrity import MANIFEST_NAME, IntegrityError, sha256_file
from export.manifest import archive_manifest as manifest_of
from export.verify import verify_archive
from tskit.testing import load_handler, unpack_archive


def rewrite(mar, dest, member, transform):
    """Copy an archive with one member's bytes transformed (what an attacker or a bad copy does)."""
    with zipfile.ZipFile(mar) as src, zipfile.ZipFile(dest, "w") as out:
        for item in src.infolist():
            data = src.read(item.filename)
            out.writestr(item, transform(data) if item.filename == member else data)
    return dest


def test_manifest_records_hashes_versions_config_and_golden(default_mar, default_model_dir):
    manifest = manifest_of(default_mar)
    assert manifest["model"]["format"] == "eager"
    serialized = manifest["model"]["serialized_file"]
    assert manifest["files"][serialized] == sha256_file(default_model_dir / serialized)
    assert "handlers/base.py" in manifest["files"] and "index_to_name.json" in manifest["files"]
    env = manifest["environment"]
    assert env["torch"] == "2.14.1" and env["torchserve"] == "0.12.0" and env["python"]
    assert "onnxruntime" in env and "torchvision" in env
    assert manifest["preprocessing"]["crop"] == 224
    golden = manifest["golden"]
    assert golden["precision"] in ("fp32", "bf16", "fp16") and golden["tolerance"] > 0
    coffee = next(c for c in golden["cases"] if c["input"] == "golden/coffee.jpg")
    assert next(iter(coffee["output"])) == "espresso"


def test_verify_passes_on_a_good_archive(default_mar):
    report = verify_archive(default_mar)
    assert report.passed, str(report)
    assert "in-process" in str(report)


def test_verify_and_load_refuse_a_tampered_model(default_mar, tmp_path):
    serialized = manifest_of(default_mar)["model"]["serialized_file"]
    bad = rewrite(default_mar, tmp_path / "bad.mar", serialized, lambda b: b[:-16] + bytes(16))
    report = verify_archive(bad)
    assert not report.passed and serialized in str(report) and "differs from the manifest" in str(report)
    with pytest.raises(IntegrityError, match="archive refused"):
        load_handler(ImageClassifier, unpack_archive(bad, tmp_path / "unpacked"))


def test_verify_refuses_an_added_file(default_model_dir, tmp_path):
    root = shutil.copytree(default_model_dir, tmp_path / "copy")
    (root / "torch.py").write_text("raise SystemExit('shadowing torch')\n")
    with pytest.raises(IntegrityError, match="torch.py: not in the manifest"):
        load_handler(ImageClassifier, root)


def test_verify_reports_a_golden_mismatch_readably(default_mar, tmp_path):
    def swap_golden(data):
        manifest = json.loads(data)
        case = next(c for c in manifest["golden"]["cases"] if c["input"] == "golden/coffee.jpg")
        case["output"] = {"cup": 0.9, **{k: v for k, v in case["output"].items() if k != "cup"}}
        return json.dumps(manifest).encode()

    bad = rewrite(default_mar, tmp_path / "golden.mar", MANIFEST_NAME, swap_golden)
    cli = subprocess.run([sys.executable, "-m", "tskit.cli", "verify", str(bad)], capture_output=True, text=True)
    assert cli.returncode == 1
    assert "FAIL  in-process" in cli.stdout and "top-1 'espresso' instead of 'cup'" in cli.stdout


def test_verify_without_manifest_fails(default_mar, tmp_path):
    stripped = tmp_path / "stripped.mar"
    with zipfile.ZipFile(default_mar) as src, zipfile.ZipFile(stripped, "w") as out:
        for item in src.infolist():
            if item.filename != MANIFEST_NAME:
                out.writestr(item, src.read(item.filename))
    report = verify_archive(stripped)
    assert not report.passed and "no tskit-manifest.json" in str(report)


def test_png_answers_are_compared_as_images():
    """A class mask whose boundary moved by a few pixels still agrees; a different mask does not."""
    import base64
    import io

    import numpy as np
    from PIL import Image

    from export.golden import compare

    def png(mask: np.ndarray) -> str:
        buf = io.BytesIO()
        Image.fromarray(mask.astype(np.uint8), "P").save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()

    mask = np.zeros((100, 100))
    mask[20:60, 20:60] = 3
    nudged = mask.copy()
    nudged[60, 20:30] = 3  # 10 of 10,000 pixels
    moved = np.roll(mask, 30, axis=1)
    assert compare({"mask_png": png(mask)}, {"mask_png": png(nudged)}, atol=6e-2) == []
    assert compare({"mask_png": png(mask)}, {"mask_png": png(nudged)}, atol=1e-3) != []  # fp32: 0.05% at most
    [diff] = compare({"mask_png": png(mask)}, {"mask_png": png(moved)}, atol=6e-2)
    assert "of the pixels differ" in diff and diff.startswith("$.mask_png")
