"""Every export format served side by side by one real TorchServe; `tskit verify --url` on each.
(A tampered archive refused by a real worker: tests/e2e/test_faults_e2e.py.)"""
import subprocess
import sys

import pytest

from export.zoo import CONFIG_DIR, SAMPLE_TOP1
from tskit.properties import serve_overrides
from tskit.server import TorchServeProcess

REPO = CONFIG_DIR.parent
ONE_WORKER = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 10, "responseTimeout": 120}


@pytest.fixture(scope="module")
def format_server(format_archives, tmp_path_factory):
    store = format_archives["eager"].parent
    ts = TorchServeProcess(tmp_path_factory.mktemp("ts-formats"), REPO / "config.properties", store,
                           overrides=serve_overrides({mar.stem: ONE_WORKER for mar in format_archives.values()}))
    ts.start(timeout=300)
    yield ts
    ts.stop()


def test_every_format_serves_the_same_top1(format_server, format_archives, photo_bytes):
    for name in sorted(SAMPLE_TOP1):
        tops = {}
        for fmt, mar in format_archives.items():
            response = format_server.client.predict(mar.stem, photo_bytes[name])
            assert response.status_code == 200, (fmt, response.text)
            tops[fmt] = next(iter(response.json()))
        assert len(set(tops.values())) == 1 and tops["eager"] in SAMPLE_TOP1[name], (name, tops)


@pytest.mark.parametrize("fmt", ["eager", "torchscript", "onnx", "openvino", "aoti"])
def test_verify_against_the_live_server(format_server, format_archives, fmt):
    cli = subprocess.run([sys.executable, "-m", "tskit.cli", "verify", str(format_archives[fmt]),
                          "--url", format_server.client.inference_url, "--workdir", str(format_server.workdir)],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "ok    live http://127.0.0.1:" in cli.stdout and "PASSED" in cli.stdout


def test_the_onnx_default_explains_with_curl(format_server, format_archives, photos, curl):
    """What `make serve` serves: an ONNX archive, explained on the eager weights it ships, with the README's
    curl command (-T, the Bearer token from key_file.json); an archive without them answers a JSON 501."""
    status, body = curl(format_server, f"/explanations/{format_archives['onnx'].stem}", "-T", str(photos["chelsea.png"]))
    assert status == 200, body
    assert body["target"] in SAMPLE_TOP1["chelsea.png"] and len(body["attributions"]) == 224
    status, body = curl(format_server, f"/explanations/{format_archives['aoti'].stem}", "-T", str(photos["coffee.png"]))
    assert status == 501 and body["type"] == "ExplanationsUnavailable" and "--explain-weights" in body["message"]
