"""The SMS spam text classifier, built with `tskit build`, served by a real TorchServe over real HTTP."""
import concurrent.futures
import json
import subprocess
import sys

import pytest
import yaml

from export.zoo.text import LABELS, TEXT_NAME, ZOO_DIR, load_split, train_text_model
from handlers.text_classifier import TextClassifier
from tskit.properties import serve_overrides
from tskit.server import TorchServeProcess
from tskit.testing import load_handler, run_batch, unpack_archive

REPO = ZOO_DIR.parent.parent
MODEL = TEXT_NAME
FRONTEND = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 10, "responseTimeout": 120}


@pytest.fixture(scope="module")
def text_store(tmp_path_factory):
    work = tmp_path_factory.mktemp("text-e2e-build")
    weights, vocab = train_text_model(work)
    config = work / "model-config.yaml"
    config.write_text(yaml.safe_dump({**FRONTEND, "handler": {"topk": 2}}))
    store = work / "model_store"
    cmd = [sys.executable, "-m", "tskit.cli", "build", MODEL, "--serialized-file", str(weights),
           "--model-file", str(ZOO_DIR / "text_cnn.py"), "--handler", "text_classifier",
           "--extra-files", str(vocab), "--config", str(config), "--export-path", str(store)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert (store / f"{MODEL}.mar").exists()
    return store


@pytest.fixture(scope="module")
def text_server(text_store, tmp_path_factory):
    ts = TorchServeProcess(tmp_path_factory.mktemp("ts-text"), REPO / "config.properties", text_store,
                           overrides=serve_overrides({MODEL: FRONTEND}))
    with ts:
        yield ts


@pytest.fixture(scope="module")
def in_process(text_store, tmp_path_factory):
    """The same archive's handler in this process, to compare answers with the server's."""
    model_dir = unpack_archive(text_store / f"{MODEL}.mar", tmp_path_factory.mktemp("text-e2e-unpacked"))
    return load_handler(TextClassifier, model_dir)


@pytest.fixture(scope="module")
def held_out():
    """20 held-out messages of each label, as the seeded split orders them."""
    _, test = load_split()
    return [(t, LABELS[y]) for label in LABELS for t, y in [r for r in test if LABELS[r[1]] == label][:20]]


def top1(response) -> str:
    assert response.status_code == 200, response.text
    return next(iter(response.json()))


def post(server, **kwargs):
    return server.client.inference("POST", f"/predictions/{MODEL}", timeout=60, **kwargs)


def test_server_runs_the_configured_batching(text_server):
    [version] = text_server.client.describe(MODEL)
    assert version["batchSize"] == 4 and version["maxBatchDelay"] == 10
    assert text_server.client.ready_workers(MODEL) == 1


def test_held_out_texts_over_http_get_the_right_labels(text_server, in_process, held_out):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # concurrent, so TorchServe batches them
        responses = list(pool.map(lambda row: text_server.client.predict(MODEL, row[0].encode()), held_out))
    got = [top1(r) for r in responses]
    truth = [label for _, label in held_out]
    assert sum(g == t for g, t in zip(got, truth)) >= 0.9 * len(held_out), list(zip(got, truth))
    expected = [next(iter(scores)) for _, scores in run_batch(in_process, [{"body": t} for t, _ in held_out])]
    assert got == expected  # the server answers exactly as the archive's handler does in-process


def test_json_plain_text_and_multipart(text_server, held_out):
    text = held_out[-1][0]
    raw = top1(post(text_server, data=text.encode()))
    as_json = top1(post(text_server, json={"text": text}))
    as_data_json = top1(post(text_server, json={"data": text}))
    plain = top1(post(text_server, data=text.encode(), headers={"Content-Type": "text/plain; charset=utf-8"}))
    multipart = top1(post(text_server, files={"data": ("msg.txt", text.encode())}))
    assert raw == as_json == as_data_json == plain == multipart


@pytest.mark.parametrize("payload, status, kind", [
    ({"data": b"caf\xe9 \xff"}, 400, "InvalidEncoding"),
    ({"json": {"text": "   "}}, 400, "EmptyText"),
    ({"json": {"message": "hi"}}, 400, "BadInput"),
    ({"data": ("spam " * 1200).encode()}, 413, "TextTooLong"),
])
def test_bad_requests_get_a_json_4xx_and_the_worker_survives(text_server, held_out, payload, status, kind):
    r = post(text_server, **payload)
    assert r.status_code == status, r.text
    assert r.json()["code"] == status and r.json()["type"] == kind
    assert top1(post(text_server, data=held_out[0][0].encode())) in LABELS
    assert text_server.client.ready_workers(MODEL) == 1


SPAM = "WINNER!! You have won a FREE prize. Call 09061701461 now to claim your cash award"


def test_explanations_with_curl(text_server, curl):
    """The real curl binary, the Bearer token from key_file.json: per-token attributions for a raw text body,
    a chosen target in JSON, a bad target as a JSON 400; the worker keeps serving."""
    plain = ("-H", "Content-Type: text/plain")  # curl's default form-urlencoded type gets parsed into fields
    status, body = curl(text_server, f"/explanations/{MODEL}", *plain, "--data-binary", SPAM)
    assert status == 200 and body["target"] == "spam", body
    assert len(body["tokens"]) == 18 and {"free", "call"} <= {t for t, _ in body["top_tokens"]}
    status, body = curl(text_server, f"/explanations/{MODEL}", "-H", "Content-Type: application/json",
                        "-d", json.dumps({"text": SPAM, "target": "ham"}))
    assert status == 200 and body["target"] == "ham" and body["probability"] < 0.01
    status, body = curl(text_server, f"/explanations/{MODEL}", "-H", "Content-Type: application/json",
                        "-d", json.dumps({"text": SPAM, "target": "eggs"}))
    assert status == 400 and body["type"] == "BadTarget" and "'eggs'" in body["message"]
    status, body = curl(text_server, f"/predictions/{MODEL}", *plain, "--data-binary", SPAM)
    assert status == 200 and next(iter(body)) == "spam"


def test_explanations_and_predictions_batched_together(text_server, held_out):
    c = text_server.client
    texts = [t for t, _ in held_out[:8]]

    def send(k):
        endpoint = "explanations" if k % 2 else "predictions"
        return c.inference("POST", f"/{endpoint}/{MODEL}", data=texts[k].encode(), timeout=120)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(send, range(len(texts))))
    assert [r.status_code for r in responses] == [200] * len(texts), [r.text for r in responses]
    for k, r in enumerate(responses):
        assert ("tokens" in r.json()) == bool(k % 2)
