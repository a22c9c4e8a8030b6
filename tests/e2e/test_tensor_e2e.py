"""The tabular archive, built by `tskit build --handler tensor`, served by a real TorchServe over real HTTP."""
import concurrent.futures
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save as safetensors_bytes

from export.zoo.tabular import TABULAR_NAME, ZOO_DIR, dataset_info, export_files, load_split
from export.zoo.tabular_mlp import TabularMLP
from tskit.properties import serve_overrides
from tskit.server import TorchServeProcess

from tests.e2e.conftest import wait_drift

REPO = Path(__file__).resolve().parents[2]
MODEL = TABULAR_NAME
LABELS = ["malignant", "benign"]
BATCHING = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 10}
HELD_OUT_ROWS = 143
# one window = the held-out set; scored after every batch once full
DRIFT = {"drift_window": HELD_OUT_ROWS, "drift_min_count": HELD_OUT_ROWS, "drift_every": 1}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(weights, schema) files of the model trained at build time."""
    return export_files(tmp_path_factory.mktemp("tabular-train"))


@pytest.fixture(scope="module")
def server(trained, tmp_path_factory):
    weights, schema = trained
    store = tmp_path_factory.mktemp("tabular-store")
    # TorchServe 0.12 takes batching from the archive's model-config.yaml over config.properties' models=
    config = tmp_path_factory.mktemp("tabular-config") / "model-config.yaml"
    config.write_text(yaml.safe_dump({**BATCHING, "handler": {"topk": 2, **DRIFT}}))
    reference = config.with_name("training-rows.jsonl")  # the drift reference: one JSON row per line
    reference.write_text("\n".join(json.dumps(row.tolist()) for row in load_split()[0]))
    cmd = [sys.executable, "-m", "tskit.cli", "build", MODEL, "--serialized-file", str(weights),
           "--model-file", str(ZOO_DIR / "tabular_mlp.py"), "--handler", "tensor",
           "--extra-files", str(schema), "--config", str(config), "--export-path", str(store),
           "--reference", str(reference)]
    built = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert built.returncode == 0, built.stderr
    ts = TorchServeProcess(tmp_path_factory.mktemp("tabular-ts"), REPO / "config.properties", store,
                           overrides=serve_overrides({MODEL: BATCHING}))
    with ts:
        yield ts


@pytest.fixture(scope="module")
def expected(trained):
    """The trained weights run directly on the held-out rows: (rows, true labels, model's top-1 names)."""
    model = TabularMLP()
    model.load_state_dict(torch.load(trained[0], weights_only=True))
    _, x_test, _, y_test = load_split()
    with torch.inference_mode():
        top = model.eval()(torch.from_numpy(x_test)).argmax(1).tolist()
    return x_test, y_test, [LABELS[i] for i in top]


def post(server, content_type: str | None = None, **kwargs):
    headers = {"Content-Type": content_type} if content_type else None
    return server.client.inference("POST", f"/predictions/{MODEL}", headers=headers, timeout=60, **kwargs)


def top1(response) -> str:
    assert response.status_code == 200, response.text
    return next(iter(response.json()))


def test_served_with_the_configured_batching(server):
    [version] = server.client.describe(MODEL)
    assert version["batchSize"] == 4 and version["maxBatchDelay"] == 10
    assert server.client.ready_workers(MODEL) == 1


def test_held_out_rows_over_http_concurrently(server, expected):
    x_test, y_test, model_top1 = expected
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda row: post(server, json=row.tolist()), x_test))
    answers = [top1(r) for r in responses]
    assert answers == model_top1
    assert np.mean([LABELS.index(a) == y for a, y in zip(answers, y_test)]) >= 0.9


def test_npy_and_safetensors_bodies(server, expected):
    x_test, _, model_top1 = expected
    buf = io.BytesIO()
    np.save(buf, x_test[:5])
    as_npy = post(server, "application/octet-stream", data=buf.getvalue())
    as_safetensors = post(server, "application/octet-stream",
                          data=safetensors_bytes({"features": torch.from_numpy(x_test[5:8])}))
    as_records = post(server, json={"inputs": x_test[8:10].tolist()})
    for response, want in ((as_npy, model_top1[:5]), (as_safetensors, model_top1[5:8]), (as_records, model_top1[8:10])):
        assert response.status_code == 200, response.text
        assert [next(iter(a)) for a in response.json()] == want


def test_bad_rows_get_a_json_400_alone_and_the_worker_survives(server, expected):
    x_test, _, model_top1 = expected
    bad = [x_test[0].tolist()[:29], ["x"] * 30, [float("nan")] + x_test[0].tolist()[1:]]
    # json.dumps writes NaN as many clients do; `requests`' json= would refuse it
    bodies = [json.dumps(b) for b in bad] + [json.dumps(x_test[i].tolist()) for i in range(5)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda body: post(server, "application/json", data=body), bodies))
    for r, fragment in zip(responses[:3], ("got [29]", "got str 'x'", "got nan")):
        assert r.status_code == 400, r.text
        body = r.json()
        assert set(body) == {"code", "type", "message"} and body["code"] == 400
        assert fragment in body["message"]
    assert [top1(r) for r in responses[3:]] == model_top1[:5]
    assert server.client.ready_workers(MODEL) == 1
    assert "loaded eager model" in server.wait_log("loaded eager model")



def test_drift_gauges_stay_low_on_held_out_rows_and_rise_on_rescaled_ones(server, expected):
    x_test = expected[0]
    assert len(x_test) == HELD_OUT_ROWS
    assert post(server, json={"inputs": x_test.tolist()}).status_code == 200  # one request: the window is the set
    held_out = wait_drift(server.client, lambda v: len(v) == 31, "held-out rows", ModelName=MODEL)
    assert len(held_out) == 31 and max(held_out.values()) < 0.2, held_out
    shifted = x_test.copy()
    texture = [i for i, name in enumerate(dataset_info()["feature_names"]) if "texture" in name]
    shifted[:, texture] *= 1.25
    assert post(server, json={"inputs": shifted.tolist()}).status_code == 200
    texture_drift = {"mean texture", "texture error", "worst texture"}
    after = wait_drift(server.client, lambda v: min(v[f] for f in texture_drift) > 0.2, "rescaled texture",
                       ModelName=MODEL)
    assert {name for name, value in after.items() if value > 0.2} == texture_drift, after
    # reported beside the PSI gauges, but parsed from its own log line: polled, not read once
    highest = {MODEL: max(after.values())}
    assert server.client.wait_metric("TskitDriftMax", "ModelName", lambda v: v == highest, timeout=120) == highest
    warning = "input drift: PSI above 0.20 for mean texture, texture error, worst texture"
    assert warning in server.wait_log(warning, timeout=120)


def explain(server, **kwargs):
    return server.client.inference("POST", f"/explanations/{MODEL}", timeout=120, **kwargs)


def test_explanations_over_http(server, expected):
    """Per-feature Integrated Gradients with the schema's feature names; the attributions add up to the
    output change from the baseline; a bad target is that request's JSON 400."""
    x_test, _, model_top1 = expected
    r = explain(server, json=x_test[0].tolist())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["target"] == model_top1[0] and body["attributions"][0][0] == "mean radius"
    total = sum(score for _, score in body["attributions"])
    change = body["output"] - body["baseline_output"]
    assert total == pytest.approx(change, abs=0.02 * abs(change) + 0.02)
    many = explain(server, json={"data": x_test[:3].tolist(), "target": "malignant"})
    assert many.status_code == 200 and [a["target"] for a in many.json()] == ["malignant"] * 3
    bad = explain(server, json={"data": x_test[0].tolist(), "target": "unicorn"})
    assert bad.status_code == 400 and bad.json()["type"] == "BadTarget"
    assert top1(post(server, json=x_test[1].tolist())) == model_top1[1]
