"""The in-archive check (handlers/integrity.py): run when the bundled `handlers` package is imported, before any
other module of it; an archive without a manifest refuses to load unless its model-config says `integrity: off`."""
import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from handlers.image_classifier import ImageClassifier
from handlers.integrity import MANIFEST_NAME, IntegrityError, check_integrity, integrity_off
from tskit.testing import load_handler

MARKER = "HANDLER CODE RAN"


def import_bundled(root: Path, module: str = "handlers.base") -> subprocess.CompletedProcess:
    """Import `module` from an unpacked archive as a worker does (its folder first on sys.path)."""
    code = f"import sys; sys.path.insert(0, {str(root)!r}); import {module}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)


@pytest.fixture
def model_dir(default_model_dir, tmp_path):
    return Path(shutil.copytree(default_model_dir, tmp_path / "archive"))


def integrity_off_line(root: Path) -> None:
    """The line the plain torch-model-archiver recipe puts in model-config.yaml."""
    with open(root / "model-config.yaml", "a") as f:
        f.write("integrity: off\n")


def test_edited_handler_code_is_refused_before_it_runs(model_dir):
    base = model_dir / "handlers" / "base.py"
    base.write_text(f"print({MARKER!r})\n" + base.read_text())
    result = import_bundled(model_dir)
    assert result.returncode != 0
    assert "IntegrityError: archive refused" in result.stderr and "handlers/base.py: sha256" in result.stderr
    assert MARKER not in result.stdout  # the check ran before the edited module


def test_an_intact_archive_imports_and_a_source_checkout_is_left_alone(model_dir, tmp_path):
    assert import_bundled(model_dir).returncode == 0
    checkout = tmp_path / "checkout"  # no MAR-INF beside the package: nothing to check
    shutil.copytree(model_dir / "handlers", checkout / "handlers")
    assert import_bundled(checkout, "handlers.integrity").returncode == 0


def test_no_manifest_refuses_unless_integrity_is_off(model_dir, caplog):
    (model_dir / MANIFEST_NAME).unlink()
    result = import_bundled(model_dir)
    assert result.returncode != 0 and "has no tskit-manifest.json" in result.stderr
    assert "integrity: off" in result.stderr  # the refusal says how to serve it anyway
    with pytest.raises(IntegrityError, match="has no tskit-manifest.json"):
        load_handler(ImageClassifier, model_dir)
    integrity_off_line(model_dir)
    assert yaml.safe_load((model_dir / "model-config.yaml").read_text())["integrity"] is False  # YAML's `off`
    assert import_bundled(model_dir).returncode == 0
    with caplog.at_level(logging.WARNING, logger="handlers.integrity"):
        handler = load_handler(ImageClassifier, model_dir)
    assert handler.tskit_manifest is None
    assert "go unchecked" in caplog.text


def test_integrity_off_does_not_skip_the_check_of_an_archive_with_a_manifest(model_dir):
    integrity_off_line(model_dir)  # model-config.yaml is hashed: editing it is tampering too
    with pytest.raises(IntegrityError, match="model-config.yaml: sha256"):
        check_integrity(model_dir)
    manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
    assert "model-config.yaml" in manifest["files"]


@pytest.mark.parametrize("value,off", [(False, True), ("off", True), ("OFF", True), (True, False), ("on", False),
                                       (None, False)])
def test_integrity_off_values(value, off):
    assert integrity_off({} if value is None else {"integrity": value}) is off
