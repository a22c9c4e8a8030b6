"""All four export formats served side by side by one real TorchServe; `tskit verify --url` on each;
a tampered archive refused by a real worker."""
import json
import subprocess
import sys
import zipfile

import pytest

from export.zoo import SAMPLE_TOP1
from handlers.integrity import MANIFEST_NAME
from tskit.properties import serve_overrides
from tskit.server import TorchServeProcess

from export.zoo import CONFIG_DIR
from tests.e2e.conftest import tamper_archive

REPO = CONFIG_DIR.parent


def one_worker_each(names) -> dict:
    return serve_overrides({n: {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 10,
                                "responseTimeout": 120} for n in names})


@pytest.fixture(scope="module")
def format_server(format_archives, tmp_path_factory):
    store = format_archives["eager"].parent
    names = [mar.stem for mar in format_archives.values()]
    ts = TorchServeProcess(tmp_path_factory.mktemp("ts-formats"), REPO / "config.properties", store,
                           overrides=one_worker_each(names))
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


@pytest.mark.parametrize("fmt", ["eager", "torchscript", "onnx", "aoti"])
def test_verify_against_the_live_server(format_server, format_archives, fmt):
    cli = subprocess.run([sys.executable, "-m", "tskit.cli", "verify", str(format_archives[fmt]),
                          "--url", format_server.client.inference_url, "--workdir", str(format_server.workdir)],
                         capture_output=True, text=True)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "ok    live http://127.0.0.1:" in cli.stdout and "PASSED" in cli.stdout


def test_a_real_worker_refuses_a_tampered_archive(default_mar, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    tamper_archive(default_mar, store / "efficientnet_lite0.mar", "handlers/payload.py")
    with zipfile.ZipFile(default_mar) as src:
        manifest = json.loads(src.read(MANIFEST_NAME))
    ts = TorchServeProcess(tmp_path / "ts", REPO / "config.properties", store,
                           overrides=one_worker_each(["efficientnet_lite0"]))
    ts.start(wait=False)
    try:
        log = ts.wait_log("archive refused", timeout=240)  # generous: a loaded CI machine starts workers slowly
        assert "archive refused" in log and "handlers/payload.py: sha256" in log
        assert ts.client.ready_workers("efficientnet_lite0") == 0
    finally:
        ts.stop()
    assert manifest["files"]["handlers/payload.py"]


def test_the_onnx_default_explains_with_curl(format_server, format_archives, photos, curl):
    """What `make serve` serves: an ONNX archive, explained on the eager weights it ships, with the README's
    curl command (-T, the Bearer token from key_file.json); an archive without them answers a JSON 501."""
    status, body = curl(format_server, f"/explanations/{format_archives['onnx'].stem}", "-T", str(photos["chelsea.png"]))
    assert status == 200, body
    assert body["target"] in SAMPLE_TOP1["chelsea.png"] and len(body["attributions"]) == 224
    status, body = curl(format_server, f"/explanations/{format_archives['aoti'].stem}", "-T", str(photos["coffee.png"]))
    assert status == 501 and body["type"] == "ExplanationsUnavailable" and "--explain-weights" in body["message"]
