"""Users' own handlers (tests/user_handlers, packed by tests/user_handlers/archives.py) on one real TorchServe whose
Python lacks this project: each override honoured, bad requests failing alone through the user's code, a
missing requirement refused with its name, and verify, describe, metrics and rollout as for built-in handlers."""
import concurrent.futures
import io
import json
import re
import shutil
import time

import pytest
from PIL import Image

from export.variants import derive_archive
from export.zoo.tabular import golden_rows
from tests.e2e.conftest import REPO, tskit_cli
from tests.user_handlers.archives import FRONTEND
from tskit.properties import serve_overrides
from tskit.server import TorchServeProcess

SERVED = ("top1", "tempered", "mirrored", "stock_style", "plain", "strict")
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def user_server(user_archives, stock_python, tmp_path_factory):
    store = tmp_path_factory.mktemp("user-store")
    for mar in user_archives.values():
        shutil.copy(mar, store)
    overrides = serve_overrides({name: FRONTEND for name in (*SERVED, "needs_dep")})
    overrides["enable_model_api"] = "true"  # for the rollout; allowed_urls=^$ still refuses every URL
    ts = TorchServeProcess(tmp_path_factory.mktemp("ts-user"), REPO / "config.properties", store,
                           python=stock_python, overrides=overrides, env={"OMP_NUM_THREADS": "1"})
    ts.start(wait=False)  # needs_dep never gets a READY worker
    try:
        for name in SERVED:
            ts.client.wait_ready(name, 1, timeout=300, proc=ts.proc)
        yield ts
    finally:
        ts.stop()


def predict(ts, model: str, body, **kwargs):
    return ts.client.predict(model, body, timeout=120, **kwargs)


def together(ts, model: str, bodies: list) -> list:
    """Send `bodies` at once (batchSize 4, maxBatchDelay 50 ms: they are meant to share a batch)."""
    with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: predict(ts, model, body), bodies))


def shared_a_batch(ts, response, timeout: float = 120) -> bool:
    """Whether the model log's `batch of N [ids]` line for the response's request has N > 1. The line is polled
    for (a generous liveness bound): the frontend can write it after the request's own rejection line."""
    pattern = re.compile(r"batch of (\d+)[^\n]*" + re.escape(response.headers["x-request-id"]))
    deadline = time.monotonic() + timeout
    while not (batch := pattern.search(ts.log())):
        assert time.monotonic() < deadline, f"no batch line for request {response.headers['x-request-id']}"
        time.sleep(0.2)
    return int(batch.group(1)) > 1


ROUNDS = 20  # bounded retries: whether requests sent together meet in one batch window is up to the scheduler


def mirror(png: bytes) -> bytes:
    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(out, format="PNG")
    return out.getvalue()


def test_postprocess_override_and_a_bad_request_that_fails_alone(user_server, photo_bytes):
    """Retried until the bad request really shared a batch with good ones (the log names each batch's ids)."""
    coffee, cat = photo_bytes["coffee.png"], photo_bytes["chelsea.png"]
    for _ in range(ROUNDS):
        answers = together(user_server, "top1", [coffee, b"not an image", cat, coffee])
        assert [r.status_code for r in answers] == [200, 415, 200, 200], [r.text for r in answers]
        assert answers[0].json() == {"label": "espresso", "probability": answers[3].json()["probability"]}
        assert answers[2].json()["label"] in ("tabby", "tiger cat", "Egyptian cat")
        assert set(answers[1].json()) == {"code", "type", "message"}
        if shared_a_batch(user_server, answers[1]):
            return
    pytest.fail(f"the bad request never shared a batch with good ones in {ROUNDS} tries")


def test_inference_and_preprocess_overrides_are_honoured(user_server, photo_bytes):
    coffee, moped = photo_bytes["coffee.png"], photo_bytes["motorcycle_left.png"]
    plain = predict(user_server, "top1", coffee).json()
    tempered = predict(user_server, "tempered", coffee).json()
    assert next(iter(tempered)) == "espresso" and tempered["espresso"] < plain["probability"]  # T = 2 flattens
    mirrored = predict(user_server, "mirrored", moped)  # mylib.augment.mirror, from the user's own package
    assert mirrored.status_code == 200
    assert next(iter(mirrored.json())) == predict(user_server, "top1", mirror(moped)).json()["label"]


def test_a_stock_torchserve_handler_subclass_answers_bad_requests_alone(user_server, photo_bytes):
    answers = together(user_server, "stock_style", [photo_bytes["coffee.png"], b"\x00 junk", photo_bytes["chelsea.png"]])
    assert [r.status_code for r in answers] == [200, 415, 200]
    assert answers[0].text == "espresso"  # a str answer goes out as it is, as TorchServe sends it
    assert answers[1].json()["type"] == "UnsupportedMediaType"
    assert user_server.client.ready_workers("stock_style") == 1


def test_plain_torch_model_archiver_archive_is_served(user_server, photo_bytes):
    r = predict(user_server, "plain", photo_bytes["coffee.png"])
    assert r.status_code == 200 and r.json()["label"] == "espresso"
    # its model-config.yaml says `integrity: off` (the README's recipe): served, and the log says what goes unchecked
    assert "go unchecked (no tskit-manifest.json)" in user_server.wait_log("go unchecked")


def test_user_code_that_raises_is_a_json_500_and_the_worker_lives(user_server):
    good = json.loads(golden_rows(1)[0].payload)
    r = predict(user_server, "strict", json.dumps([-1.0] + good[1:]).encode(), headers=JSON)
    assert r.status_code == 500 and r.json()["type"] == "HandlerError"
    assert "decode raised ValueError: a radius cannot be negative" in r.json()["message"]
    r = predict(user_server, "strict", json.dumps([good] * 101).encode(), headers=JSON)
    assert r.status_code == 500 and "postprocess returned 0 answers for the 1 requests" in r.json()["message"]
    assert predict(user_server, "strict", json.dumps(good).encode(), headers=JSON).status_code == 200
    assert user_server.client.ready_workers("strict") == 1
    assert "Traceback" in user_server.wait_log("a radius cannot be negative")


def test_a_missing_requirement_is_refused_with_its_name(user_server):
    expected = "tskit-fixture-dep==1.0 (not installed)"
    assert expected in user_server.wait_log(expected, timeout=120)
    assert user_server.client.ready_workers("needs_dep") == 0
    status = tskit_cli(user_server, "status")
    section = status.stdout.split("needs_dep 1.0", 1)[1].split("\n\n")[0]
    assert "RequirementError" in section or expected in section, status.stdout


def test_verify_live_and_describe(user_server, user_archives):
    for name in ("top1", "stock_style"):
        result = tskit_cli(user_server, "verify", str(user_archives[name]), "--url", user_server.client.inference_url)
        assert result.returncode == 0 and "PASSED" in result.stdout, result.stdout + result.stderr
    [described] = user_server.client.management("GET", "/models/top1", params={"customized": "true"}).json()
    metadata = described["customizedMetadata"]
    metadata = json.loads(metadata) if isinstance(metadata, str) else metadata
    assert metadata["handler"] == "Top1Classifier" and metadata["format"] == "eager"
    assert metadata["manifest"]["model"]["handler"] == "tskit_entry.py"


def test_metrics_count_user_handlers(user_server, photo_bytes):
    """Each model's counters rise by what this test sends itself (a photo and a bad body each), whatever other
    tests sent before; the scrape is polled (generous liveness bound: metrics trail the answers)."""
    c, models = user_server.client, ("top1", "stock_style")
    requests_before = c.metric_by("TskitRequests", "ModelName")
    bad_before = c.metric_by("TskitBadInput", "ModelName", Kind="UnsupportedMediaType")
    for model, junk in zip(models, (b"not an image", b"\x00 junk")):  # each as the tests above send them
        assert predict(user_server, model, photo_bytes["coffee.png"]).status_code == 200
        assert predict(user_server, model, junk).status_code == 415
    counted = c.wait_metric("TskitRequests", "ModelName", timeout=120, until=lambda v: all(
        v.get(m, 0) >= requests_before.get(m, 0) + 2 for m in models))
    bad = c.wait_metric("TskitBadInput", "ModelName", timeout=120, Kind="UnsupportedMediaType", until=lambda v: all(
        v.get(m, 0) >= bad_before.get(m, 0) + 1 for m in models))
    assert all(counted.get(m, 0) >= requests_before.get(m, 0) + 2 for m in models), (requests_before, counted)
    assert all(bad.get(m, 0) >= bad_before.get(m, 0) + 1 for m in models), (bad_before, bad)


def test_rollout_of_a_user_handler(user_server, user_archives, tmp_path, photo_bytes):
    new = derive_archive(user_archives["top1"], tmp_path / "top1-2.0.mar", version="2.0")
    samples = tmp_path / "samples"
    samples.mkdir()
    for name in ("coffee.png", "chelsea.png"):
        (samples / name).write_bytes(photo_bytes[name])
    result = tskit_cli(user_server, "rollout", str(new), "--samples", str(samples), "--rounds", "1",
                       "--max-latency-ratio", "10")
    assert result.returncode == 0 and "promoted" in result.stdout, result.stdout + result.stderr
    assert "2/2 top-1 agree" in result.stdout
    assert predict(user_server, "top1", photo_bytes["coffee.png"]).json()["label"] == "espresso"
    back = tskit_cli(user_server, "rollback", "top1")
    assert back.returncode == 0 and "2.0 -> 1.0" in back.stdout, back.stdout + back.stderr
