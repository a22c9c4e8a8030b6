"""End-to-end fixtures: archives built with the real `tskit build` CLI, served by a real TorchServe."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from export.zoo import CONFIG_DIR, DEFAULT_NAME, ZOO_DIR, efficientnet_lite0_weights, write_imagenet_labels
from tskit.server import TorchServeProcess

REPO = CONFIG_DIR.parent
TSKIT = [sys.executable, "-m", "tskit.cli"]


def tskit_build(store: Path, work: Path) -> Path:
    labels = write_imagenet_labels(work / "index_to_name.json")
    cmd = TSKIT + ["build", DEFAULT_NAME, "--serialized-file", efficientnet_lite0_weights(),
                   "--model-file", str(ZOO_DIR / "efficientnet_lite0.py"), "--handler", "image_classifier",
                   "--labels", str(labels), "--config", str(CONFIG_DIR / f"{DEFAULT_NAME}.yaml"),
                   "--export-path", str(store)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def e2e_store(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e-build")
    store = work / "model_store"
    mar = tskit_build(store, work)
    assert mar == store / f"{DEFAULT_NAME}.mar" and mar.exists()
    return store


@pytest.fixture(scope="module")
def server(e2e_store, tmp_path_factory):
    """The shipped config.properties, as is except for free ports and the model store path."""
    ts = TorchServeProcess(tmp_path_factory.mktemp("ts"), REPO / "config.properties", e2e_store)
    ts.start(timeout=300)
    yield ts
    ts.stop()


@pytest.fixture(scope="session")
def curl():
    """`curl(server, path, *args)`: the real curl binary against a live server, with the Bearer token read
    from the server's key_file.json as a user would; returns (HTTP status, body parsed as JSON or text)."""
    def run(server, path: str, *args: str):
        key = json.loads((server.workdir / "key_file.json").read_text())["inference"]["key"]
        cmd = ["curl", "-sS", "--max-time", "300", "-w", "\n%{http_code}", "-H", f"Authorization: Bearer {key}",
               f"{server.client.inference_url}{path}", *args]
        result = subprocess.run(cmd, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        body, _, status = result.stdout.rpartition("\n")
        try:
            return int(status), json.loads(body)
        except ValueError:
            return int(status), body
    return run
