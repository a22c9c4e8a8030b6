"""A stock TorchServe whose Python cannot import this project serves the archive."""
import subprocess
import sys
import sysconfig
from pathlib import Path

from tskit.server import TorchServeProcess

from export.zoo import DEFAULT_NAME

REPO = Path(__file__).resolve().parents[2]
ONE_WORKER = ('{"%s": {"1.0": {"defaultVersion": true, "marName": "%s.mar", "minWorkers": 1, "maxWorkers": 1, '
              '"batchSize": 4, "maxBatchDelay": 10}}}' % (DEFAULT_NAME, DEFAULT_NAME))


def stock_python(root: Path) -> str:
    """A venv that sees the installed torch/torchserve but not this project.

    Its one .pth line adds the project venv's site-packages as a plain path: .pth files inside that
    folder (the project's editable install among them) are not processed, so `handlers`, `export`
    and `tskit` are not importable, while torch, ts and PIL are.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "stock.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return str(python)


def test_archive_serves_without_the_project_installed(e2e_store, photo_bytes, tmp_path):
    python = stock_python(tmp_path / "stock-venv")
    probe = subprocess.run([python, "-c", "import ts, torch, PIL\nimport handlers"], capture_output=True,
                           text=True, cwd=tmp_path)
    assert "No module named 'handlers'" in probe.stderr, "the stock Python must not see the project"

    ts = TorchServeProcess(tmp_path / "ts", REPO / "config.properties", e2e_store, python=python,
                           overrides={"models": ONE_WORKER})
    with ts:
        response = ts.client.predict(DEFAULT_NAME, photo_bytes["coffee.png"])
        assert response.status_code == 200, response.text
        assert next(iter(response.json())) == "espresso"
    assert "loaded eager model" in ts.log()
