"""A user's Hugging Face folder (RoBERTa with a byte-level BPE tokenizer, tests/hf_models.py) built by `tskit build
--handler transformer_classifier --model-dir --format onnx` with golden texts, served by a real TorchServe whose
Python has neither this project nor `transformers`: answers over HTTP equal what `transformers` computes, texts of
every length batched together, a long one cut and counted, bad bodies a JSON 4xx, and `tskit verify` live; and a
token classifier (BERT, OpenVINO) beside it whose entities equal the `transformers` pipeline's."""
import concurrent.futures
import subprocess

import pytest
import yaml

from tests.e2e.conftest import REPO, TSKIT, stock_venv
from tests.hf_models import build_folder, build_token_folder, reference_entities, reference_probabilities
from tskit.properties import serve_overrides
from tskit.server import TorchServeProcess

MODEL = "sms_roberta"
TOKEN_MODEL = "entities_bert"
FRONTEND = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 8, "maxBatchDelay": 20, "responseTimeout": 120}
TEXTS = ["Call now to WIN a free prize!!", "ok", "see you at lunch tomorrow, ok?", "emoji 😀🎉 你好世界 مرحبا שלום",
         "Your account 4921 was charged $49.99 - reply if this wasn't you", "word " * 300,
         "hello world", "a somewhat longer message about nothing in particular, to vary the lengths in a batch"]
MAX_TOKENS = 64  # tests/hf_models.py: every folder takes at most 64 tokens


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build_folder("roberta", tmp_path_factory.mktemp("hf-e2e"))


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
    work = tmp_path_factory.mktemp("transformer-e2e")
    (work / "model-config.yaml").write_text(yaml.safe_dump({**FRONTEND, "handler": {"topk": 2}}))
    golden = work / "golden"
    golden.mkdir()
    for i, text in enumerate(TEXTS[:3]):
        (golden / f"text{i}.txt").write_text(text)
    store = work / "model_store"
    result = subprocess.run(TSKIT + ["build", MODEL, "--handler", "transformer_classifier", "--model-dir", str(folder),
                                     "--format", "onnx", "--config", str(work / "model-config.yaml"), "--golden",
                                     str(golden), "--export-path", str(store)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return store / f"{MODEL}.mar"


@pytest.fixture(scope="module")
def token_folder(tmp_path_factory):
    return build_token_folder("bert", tmp_path_factory.mktemp("hf-tokens-e2e"))


@pytest.fixture(scope="module")
def token_built(token_folder, built):
    """A token classifier in OpenVINO, beside the classifier in the same model store."""
    result = subprocess.run(TSKIT + ["build", TOKEN_MODEL, "--handler", "token_classifier", "--model-dir",
                                     str(token_folder), "--format", "openvino", "--export-path", str(built.parent)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return built.parent / f"{TOKEN_MODEL}.mar"


@pytest.fixture(scope="module")
def server(built, token_built, tmp_path_factory):
    python = stock_venv(tmp_path_factory.mktemp("no-transformers-venv"), blocked=("transformers",))
    ts = TorchServeProcess(tmp_path_factory.mktemp("ts-transformer"), REPO / "config.properties", built.parent,
                           python=python, overrides=serve_overrides({MODEL: FRONTEND, TOKEN_MODEL: FRONTEND}))
    with ts:
        yield ts


def test_answers_over_http_equal_transformers_whatever_the_batch(server, folder):
    expected = reference_probabilities(folder, TEXTS, MAX_TOKENS)
    c = server.client
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # concurrent requests: TorchServe batches them
        responses = list(pool.map(lambda t: c.predict(MODEL, t.encode()), TEXTS * 3))
    for text, response in zip(TEXTS * 3, responses):
        assert response.status_code == 200, response.text
        want = expected[TEXTS.index(text)]
        answer = response.json()
        assert list(answer) == sorted(want, key=want.get, reverse=True)[:2]
        assert all(abs(p - want[label]) <= 1e-3 for label, p in answer.items()), (text[:30], answer, want)
    assert "loaded onnx model" in server.log()  # in a Python without transformers


def test_entities_over_http_equal_the_pipelines_whatever_the_batch(server, token_folder):
    texts = TEXTS[:5] + ["Call 07781 482 910 now to WIN £1000 cash, see www.prize-now.com"]
    expected = reference_entities(token_folder, texts)
    c = server.client
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda t: c.predict(TOKEN_MODEL, t.encode()), texts * 2))
    for text, response in zip(texts * 2, responses):
        assert response.status_code == 200, response.text
        want = expected[texts.index(text)]
        got = response.json()
        assert [(e["entity_group"], e["start"], e["end"]) for e in got] == \
            [(e["entity_group"], e["start"], e["end"]) for e in want], text
        assert all(abs(a["score"] - b["score"]) <= 1e-3 and a["word"] == text[a["start"]:a["end"]]
                   for a, b in zip(got, want))


def test_a_cut_text_is_counted(server):
    c = server.client
    assert c.predict(MODEL, ("long " * 400).encode()).status_code == 200
    counted = c.wait_metric("TskitTextsTruncated", "ModelName", lambda v: v.get(MODEL, 0) >= 1)
    assert counted.get(MODEL, 0) >= 1, counted


@pytest.mark.parametrize("body, status, kind", [
    (b"\xff\xfe\x00bad", 400, "InvalidEncoding"), (b"   ", 400, "EmptyText"), (b'{"txt": "hi"}', 400, "BadInput"),
])
def test_bad_bodies_are_a_json_4xx_and_the_worker_lives(server, body, status, kind):
    c = server.client
    headers = {"Content-Type": "application/json"} if body.startswith(b"{") else {}
    r = c.inference("POST", f"/predictions/{MODEL}", data=body, headers=headers, timeout=60)
    assert r.status_code == status and r.json()["type"] == kind, r.text
    assert c.predict(MODEL, b"still answering").status_code == 200 and c.ready_workers(MODEL) == 1


def test_verify_replays_the_golden_texts_live(server, built):
    cli = subprocess.run(TSKIT + ["verify", str(built), "--url", server.client.inference_url, "--workdir",
                                  str(server.workdir)], capture_output=True, text=True, cwd=REPO)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.count("ok    live http://127.0.0.1:") == 3 and "PASSED" in cli.stdout


def test_explanations_of_an_onnx_archive_without_weights_are_a_501_saying_how(server):
    r = server.client.inference("POST", f"/explanations/{MODEL}", data=TEXTS[0].encode(), timeout=60)
    assert r.status_code == 501 and "--explain-weights" in r.json()["message"], r.text
    assert server.client.predict(MODEL, b"still answering").status_code == 200
