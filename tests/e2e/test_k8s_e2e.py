"""The `config/config.properties` that `tskit k8s` writes, started by a real TorchServe with the layout standing
in for KServe's /mnt/models mount: Open Inference Protocol requests as the config says, then KServe v1 with
`TS_SERVICE_ENVELOPE=kserve`, as KServe sets it for an InferenceService of protocolVersion v1."""
import concurrent.futures
import subprocess
import sys

import numpy as np
import pytest
import requests

from export.zoo.tabular import TABULAR_NAME, dataset_info, load_split
from tests.oip import REPO, v1_predict, v2_infer
from tskit.k8s import local_overrides
from tskit.server import PORT_KEYS, TorchServeProcess, free_port

LABELS = dataset_info()["labels"]


@pytest.fixture(scope="module")
def layout(kserve_built, tmp_path_factory):
    out = tmp_path_factory.mktemp("k8s-layout") / TABULAR_NAME
    result = subprocess.run([sys.executable, "-m", "tskit.cli", "k8s", TABULAR_NAME, "--archive",
                             str(kserve_built / f"{TABULAR_NAME}.mar"), "--out", str(out)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return out


def generated_server(layout, workdir, env=None) -> TorchServeProcess:
    """The generated config as written, except that /mnt/models is the layout and every port is a free one on
    127.0.0.1 (inference and management share one, as generated)."""
    ports = {key: fmt.format(free_port()) for key, fmt in PORT_KEYS.items()}
    ports["management_address"] = ports["inference_address"]
    return TorchServeProcess(workdir, layout / "config" / "config.properties", layout / "model-store",
                             isolate_ports=False, overrides={**local_overrides(layout), **ports}, env=env)


@pytest.fixture(scope="module")
def server(layout, tmp_path_factory):
    with generated_server(layout, tmp_path_factory.mktemp("ts-k8s")) as ts:
        yield ts


def top1(scores: dict) -> int:
    return LABELS.index(next(iter(scores)))


def test_the_generated_config_serves_v2_with_batch_size_one(server):
    [version] = server.client.describe(TABULAR_NAME)
    assert version["batchSize"] == 1 and server.client.ready_workers(TABULAR_NAME) == 1
    _, x_test, _, y_test = load_split()
    answers = v2_infer(server, TABULAR_NAME, {"rows": x_test.astype(np.float32)})["rows"]
    assert np.mean([top1(a) == y for a, y in zip(answers, y_test)]) >= 0.9


def test_concurrent_requests_all_answered(server):
    """Each request is a TorchServe batch of its own: none is lost to the envelope reading only the first."""
    rows = load_split()[1][:16].astype(np.float32)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda row: v2_infer(server, TABULAR_NAME, {"row": row})["row"], rows))
    assert answers == [v2_infer(server, TABULAR_NAME, {"row": row})["row"] for row in rows]


def test_no_token_inside_the_pod_and_metrics_for_prometheus(server):
    """Token auth is off as generated (KServe's model server sends none); health and metrics answer plainly."""
    assert not (server.workdir / "key_file.json").exists()
    assert requests.get(f"{server.client.inference_url}/v2/health/ready", timeout=10).json() == {"ready": True}
    assert "ts_inference_requests_total" in requests.get(f"{server.client.metrics_url}/metrics", timeout=10).text


def test_the_same_layout_serves_v1_when_kserve_sets_the_envelope(layout, tmp_path):
    _, x_test, _, y_test = load_split()
    with generated_server(layout, tmp_path / "ts-v1", env={"TS_SERVICE_ENVELOPE": "kserve"}) as ts:
        r = v1_predict(ts, TABULAR_NAME, {"instances": x_test[:8].tolist()})
        assert r.status_code == 200, r.text
        assert np.mean([top1(a) == y for a, y in zip(r.json()["predictions"], y_test[:8])]) >= 0.75
