"""`tskit new handler`: every template's handler, config and test, written by the real CLI, and the tests it
writes pass as written (run by pytest in a fresh process, as a user runs them)."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from handlers.tasks import scaffold_bases

REPO = Path(__file__).resolve().parents[2]
TSKIT = [sys.executable, "-m", "tskit.cli"]


def new(name: str, base: str, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(TSKIT + ["new", "handler", name, "--from", base, "--out", str(out)],
                          capture_output=True, text=True, cwd=REPO)


@pytest.mark.slow  # one pytest process per template
def test_every_template_writes_a_handler_whose_test_passes_as_written(tmp_path):
    from tskit.cli import main

    for base in scaffold_bases():  # written in this process, their tests run in a new one
        assert main(["new", "handler", f"my_{base}", "--from", base, "--out", str(tmp_path / base)]) == 0
        written = sorted(p.name for p in (tmp_path / base).iterdir())
        assert written == sorted([f"my_{base}.py", "model-config.yaml", f"test_my_{base}.py"])
        config = yaml.safe_load((tmp_path / base / "model-config.yaml").read_text())
        assert config["batchSize"] >= 1 and isinstance(config["handler"], dict)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:]
    assert f"{2 * len(scaffold_bases())} passed" in run.stdout, run.stdout[-1000:]


def test_the_written_handler_is_a_subclass_of_its_base(tmp_path):
    assert new("shop_items", "image_classifier", tmp_path).returncode == 0
    source = (tmp_path / "shop_items.py").read_text()
    assert "class ShopItems(ImageClassifier):" in source and "super().postprocess(data)" in source


@pytest.mark.parametrize("name, message", [("handlers", "other than `handlers`"), ("my-handler", "Python module name")])
def test_names_that_cannot_be_modules_are_refused(tmp_path, name, message):
    result = new(name, "tensor", tmp_path)
    assert result.returncode == 1 and message in result.stderr


def test_existing_files_are_not_overwritten(tmp_path):
    assert new("mine", "tensor", tmp_path).returncode == 0
    (tmp_path / "mine.py").write_text("# my edits\n")
    result = new("mine", "tensor", tmp_path)
    assert result.returncode == 1 and "not overwriting" in result.stderr
    assert (tmp_path / "mine.py").read_text() == "# my edits\n"
