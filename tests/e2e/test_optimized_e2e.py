"""`tskit optimize`'s archive (the `optimized` fixture) on a real TorchServe whose Python lacks this project: rolled
out against the fp32 archive it came from with the usual agreement check, then serving the sample photos right,
its model log naming the engine and precision, and `tskit verify --url` passing against it."""
import shutil

import pytest

from export.manifest import archive_manifest
from export.variants import derive_archive
from export.zoo import SAMPLE_TOP1
from tests.e2e.conftest import REPO, tskit_cli
from tskit.properties import serve_overrides
from tskit.rollout import default_version
from tskit.server import TorchServeProcess

MODEL = "lite0_onnx"  # the name format_archives gives the ONNX archive; tskit optimize keeps it
FRONTEND = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 20, "responseTimeout": 120}


@pytest.fixture(scope="module")
def rolled_out(format_archives, optimized, stock_python, photo_bytes, tmp_path_factory):
    """A server with the fp32 archive as 1.0, and `tskit rollout` of the optimized one as 2.0: (server, its output,
    the 2.0 archive)."""
    store = tmp_path_factory.mktemp("optimized-store")
    shutil.copy(format_archives["onnx"], store / f"{MODEL}.mar")
    work = tmp_path_factory.mktemp("optimized-work")
    candidate = derive_archive(optimized[1], work / f"{MODEL}-2.0.mar", version="2.0")
    samples = work / "samples"
    samples.mkdir()
    for name in SAMPLE_TOP1:
        (samples / name).write_bytes(photo_bytes[name])
    overrides = {"enable_model_api": "true", **serve_overrides({MODEL: FRONTEND})}
    ts = TorchServeProcess(tmp_path_factory.mktemp("ts-optimized"), REPO / "config.properties", store,
                           python=stock_python, overrides=overrides, env={"OMP_NUM_THREADS": "1"})
    with ts:
        result = tskit_cli(ts, "rollout", str(candidate), "--samples", str(samples), "--rounds", "1",
                           "--max-latency-ratio", "100")
        yield ts, result, candidate


def test_the_rollout_reports_agreement_and_promotes(rolled_out):
    ts, result, _ = rolled_out
    assert result.returncode == 0 and "promoted" in result.stdout, result.stdout + result.stderr
    assert f"{len(SAMPLE_TOP1)}/{len(SAMPLE_TOP1)} top-1 agree" in result.stdout
    assert default_version(ts.client, MODEL)["modelVersion"] == "2.0"


def test_the_optimized_model_answers_the_samples_and_names_its_engine(rolled_out, photo_bytes):
    ts, _, candidate = rolled_out
    for name, labels in SAMPLE_TOP1.items():
        answer = ts.client.predict(MODEL, photo_bytes[name], timeout=120)
        assert answer.status_code == 200 and next(iter(answer.json())) in labels, (name, answer.text)
    report = archive_manifest(candidate)["optimization"]
    precision = next(c["precision"] for c in report["candidates"] if c["name"] == report["chosen"])
    assert f"loaded openvino model on cpu, precision {precision}" in ts.wait_log("loaded openvino model")


def test_verify_against_the_live_server(rolled_out):
    ts, _, candidate = rolled_out
    result = tskit_cli(ts, "verify", str(candidate), "--url", ts.client.inference_url)
    assert result.returncode == 0 and "PASSED" in result.stdout, result.stdout + result.stderr
