"""Open Inference Protocol (KServe v2) through a real TorchServe started with `service_envelope=kservev2`,
every handler, with tritonclient's HTTP client: BYTES (base64 files, text, JSON), UINT8 and FP32 tensors."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from tritonclient.utils import InferenceServerException

from export.golden import compare
from export.zoo import DEFAULT_NAME, SAMPLE_TOP1
from export.zoo.detection import DETECTOR_NAME, detection_quality, heldout_scenes, scene_png
from export.zoo.tabular import TABULAR_NAME, dataset_info, load_split
from export.zoo.text import LABELS, TEXT_NAME
from export.zoo.text import load_split as text_split
from tests.oip import kserve_server, v2_client, v2_infer, v2_input, v2_post


@pytest.fixture(scope="module")
def server(kserve_store, tmp_path_factory):
    with kserve_server(kserve_store, tmp_path_factory.mktemp("ts-kservev2"), "kservev2") as ts:
        yield ts


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def top1(scores: dict) -> str:
    return next(iter(scores))


def test_health_endpoints_answer_the_v2_client(server):
    client = v2_client(server)
    headers = server.client._headers("inference")
    assert client.is_server_live(headers=headers) and client.is_server_ready(headers=headers)


def test_images_as_base64_files_and_as_uint8_pixels(server, photo_bytes):
    pixels = np.asarray(Image.open(io.BytesIO(photo_bytes["coffee.png"])).convert("RGB"))
    answers = v2_infer(server, DEFAULT_NAME, {"coffee": b64(photo_bytes["coffee.png"]),
                                              "cat": b64(photo_bytes["chelsea.png"]), "coffee_pixels": pixels})
    assert top1(answers["coffee"]) in SAMPLE_TOP1["coffee.png"] and top1(answers["cat"]) in SAMPLE_TOP1["chelsea.png"]
    assert compare(answers["coffee"], answers["coffee_pixels"], 1e-5) == []  # a PNG decodes to these pixels


def test_text_messages_as_bytes(server):
    held_out = text_split()[1][:10]
    answers = v2_infer(server, TEXT_NAME, {f"m{i}": text for i, (text, _) in enumerate(held_out)})
    right = sum(top1(answers[f"m{i}"]) == LABELS[label] for i, (_, label) in enumerate(held_out))
    assert right >= 9, answers


def test_tabular_rows_as_an_fp32_tensor_and_named_rows_as_json(server):
    _, x_test, _, y_test = load_split()
    info = dataset_info()
    named = json.dumps({"inputs": [dict(zip(info["feature_names"], map(float, row))) for row in x_test[40:42]]})
    answers = v2_infer(server, TABULAR_NAME, {"rows": x_test[:40].astype(np.float32), "named": named})
    labels = info["labels"]
    assert np.mean([labels.index(top1(a)) == y for a, y in zip(answers["rows"], y_test[:40])]) >= 0.9
    assert [labels.index(top1(a)) for a in answers["named"]] == [labels.index(top1(a)) for a in
                                                                 v2_infer(server, TABULAR_NAME, {
                                                                     "same": x_test[40:42].astype(np.float32)})["same"]]


def test_detector_scenes_as_base64_and_as_pixels(server):
    scenes = heldout_scenes(4)
    answers = v2_infer(server, DETECTOR_NAME, {f"s{i}": b64(scene_png(scene[0])) for i, scene in enumerate(scenes)})
    quality = detection_quality([answers[f"s{i}"] for i in range(len(scenes))], scenes)
    assert quality["recall"] >= 0.8 and quality["precision"] >= 0.8, quality
    as_pixels = v2_infer(server, DETECTOR_NAME, {"p": np.asarray(scenes[0][0].convert("RGB"))})
    # the same detections; alone or in a batch of four, floats may round apart in the last digit
    assert [d["label"] for d in as_pixels["p"]] == [d["label"] for d in answers["s0"]]
    for alone, batched in zip(as_pixels["p"], answers["s0"]):
        assert abs(alone["score"] - batched["score"]) <= 1e-3
        assert max(abs(a - b) for a, b in zip(alone["box"], batched["box"])) <= 0.2


def test_a_bad_input_is_answered_in_place_and_the_worker_survives(server):
    body = {"inputs": [{"name": "ok", "shape": [1], "datatype": "BYTES", "data": ["see you at home tonight"]},
                       {"name": "empty", "shape": [1], "datatype": "BYTES", "data": [" "]},
                       {"name": "two", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]}]}
    r = v2_post(server, TEXT_NAME, json=body)
    assert r.status_code == 400, r.text
    errors = {o["name"]: o["data"][0] for o in r.json()["outputs"]}
    assert '"EmptyText"' in errors["empty"] and "only the first element" in errors["two"]
    assert set(json.loads(errors["ok"])) == {"ham", "spam"}
    with pytest.raises(InferenceServerException) as raised:  # the v2 client sees the status
        v2_client(server).infer(TEXT_NAME, [v2_input("empty", " ")], headers=server.client._headers("inference"))
    assert "400" in str(raised.value.status())
    assert top1(v2_infer(server, TEXT_NAME, {"t": "WINNER! claim your free prize now"})["t"]) == "spam"


def test_a_body_the_envelope_cannot_read_fails_before_the_handler_and_the_worker_survives(server):
    """Not JSON, or no `inputs`: TorchServe's envelope raises before the handler runs (TorchServe answers 503);
    KServe's model server in front of TorchServe rejects such requests itself. The worker lives on."""
    for kwargs in ({"data": b"{not json", "headers": {"Content-Type": "application/json"}},
                   {"json": {"instances": ["a v1 body"]}}):
        r = v2_post(server, TEXT_NAME, timeout=60, **kwargs)
        assert r.status_code >= 400 and r.json()["code"] == r.status_code
    assert top1(v2_infer(server, TEXT_NAME, {"t": "see you at home tonight"})["t"]) == "ham"
    assert all(server.client.ready_workers(m) == 1 for m in (TEXT_NAME, TABULAR_NAME, DEFAULT_NAME, DETECTOR_NAME))
