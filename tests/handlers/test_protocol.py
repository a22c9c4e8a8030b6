"""KServe v1 and Open Inference Protocol (v2) requests in-process, through TorchServe's own `kserve` and
`kservev2` envelope classes wrapping the handler as a worker started with `service_envelope` does."""
import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from ts.torch_handler.request_envelope.kservev2 import KServev2Envelope
from ts.utils.util import PredictionException

from export.golden import compare
from export.zoo.text import load_split
from handlers.protocol import V2_INPUT, is_numbers, tensor_image, v2_output
from handlers.text_classifier import TextClassifier
from tskit.testing import load_handler, run_batch, run_envelope


@pytest.fixture(scope="module")
def text_handler(text_model_dir):
    return load_handler(TextClassifier, text_model_dir, yaml_overrides={"handler": {"precision": "fp32"}})


@pytest.fixture(scope="module")
def messages():
    _, test = load_split()
    return [text for text, _ in test[:4]]


def v2_text(name: str, text: str, shape=(1,)) -> dict:
    return {"name": name, "shape": list(shape), "datatype": "BYTES", "data": [text] * int(np.prod(shape))}


def outputs(body: dict) -> dict:
    """{output name: the JSON answer it holds} of a v2 response."""
    return {o["name"]: json.loads(o["data"][0]) for o in body["outputs"]}


def test_v1_instances_are_the_batch_and_answer_like_plain_requests(text_handler, messages):
    plain = [body for _, body in run_batch(text_handler, [{"body": m.encode()} for m in messages])]
    instances = [messages[0], {"text": messages[1]}, {"data": messages[2]}, messages[3]]
    status, body = run_envelope(text_handler, "kserve", {"instances": instances})
    assert status == 200 and body == {"predictions": plain}


def test_v2_inputs_are_the_batch_and_outputs_carry_the_answers(text_handler, messages):
    plain = [body for _, body in run_batch(text_handler, [{"body": m.encode()} for m in messages[:2]])]
    request = {"id": "req-7", "inputs": [v2_text("first", messages[0]), v2_text("second", messages[1])]}
    status, body = run_envelope(text_handler, "kservev2", request)
    assert status == 200 and body["id"] == "req-7" and body["model_name"] == "sms_spam"
    assert [(o["name"], o["datatype"], list(o["shape"])) for o in body["outputs"]] == [
        ("first", "BYTES", [1]), ("second", "BYTES", [1])]
    assert outputs(body) == {"first": plain[0], "second": plain[1]}


def test_a_bad_instance_is_answered_in_place_with_the_requests_4xx(text_handler, messages):
    status, body = run_envelope(text_handler, "kserve", {"instances": [messages[0], "   ", messages[1]]})
    assert status == 400
    good, bad, also_good = body["predictions"]
    assert bad == {"code": 400, "type": "EmptyText", "message": "empty text"}
    assert set(good) == set(also_good) == {"ham", "spam"}
    status, body = run_envelope(text_handler, "kservev2", {"inputs": [v2_text("a", messages[0]),
                                                                      v2_text("b", "x" * 6000)]})
    assert status == 413 and outputs(body)["b"]["type"] == "TextTooLong" and set(outputs(body)["a"]) == {"ham", "spam"}


def test_a_bytes_input_the_envelope_would_cut_is_rejected_not_half_answered(text_handler, messages):
    status, body = run_envelope(text_handler, "kservev2", {"inputs": [v2_text("two", messages[0], shape=(2,))]})
    assert status == 400
    error = outputs(body)["two"]
    assert error["type"] == "ShapeMismatch" and "only the first element" in error["message"]


def test_requests_with_nothing_to_answer(text_handler):
    status, body = run_envelope(text_handler, "kserve", {"inputs": ["hello"]})
    assert status == 400 and body["predictions"][0]["type"] == "MissingInstances"
    status, body = run_envelope(text_handler, "kserve", {"instances": []})
    assert status == 400 and "instances" in body["predictions"][0]["message"]
    with pytest.raises(PredictionException) as raised:  # TorchServe answers it with this code and message
        run_envelope(text_handler, "kservev2", {"inputs": []})
    assert raised.value.error_code == 400


def test_v2_text_as_a_tensor_is_a_clear_400(text_handler):
    status, body = run_envelope(text_handler, "kservev2",
                                {"inputs": [{"name": "ids", "shape": [2], "datatype": "INT64", "data": [3, 4]}]})
    assert status == 400 and "expected text" in outputs(body)["ids"]["message"]


def test_image_as_base64_bytes_and_as_uint8_pixels(classifier, photo_bytes):
    png = photo_bytes["coffee.png"]
    [(_, plain)] = run_batch(classifier, [{"body": png}])
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    request = {"inputs": [
        {"name": "file", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(png).decode()]},
        {"name": "pixels", "shape": list(pixels.shape), "datatype": "UINT8", "data": pixels.ravel().tolist()},
        {"name": "floats", "shape": list(pixels.shape), "datatype": "FP32", "data": pixels.ravel().tolist()},
    ]}
    status, body = run_envelope(classifier, "kservev2", request)
    answers = outputs(body)
    # same labels, same order; numbers equal up to batch-size-dependent float rounding
    assert compare(plain, answers["file"], 1e-5) == compare(plain, answers["pixels"], 1e-5) == []
    assert next(iter(plain)) == "espresso"
    assert status == 400 and answers["floats"]["type"] == "ShapeMismatch" and "UINT8" in answers["floats"]["message"]
    status, body = run_envelope(classifier, "kserve", {"instances": [{"b64": base64.b64encode(png).decode()}]})
    assert status == 200 and compare([plain], body["predictions"], 1e-5) == []


def test_v2_outputs_numbers_as_fp32_and_the_rest_as_json_bytes():
    envelope = KServev2Envelope(lambda data, context: data)
    numbers = envelope._to_json(v2_output([[0.5, 1.5], [2.0, 3.0]]), "rows")
    assert numbers == {"name": "rows", "datatype": "FP32", "data": [0.5, 1.5, 2.0, 3.0], "shape": (4,)}
    scores = envelope._to_json(v2_output({"cat": 0.75}), "image")
    assert scores["datatype"] == "BYTES" and json.loads(scores["data"][0]) == {"cat": 0.75}
    assert is_numbers([1, 2.5]) and not is_numbers([True]) and not is_numbers([]) and not is_numbers([{"a": 1}])


# ---- found by fuzzing (tests/handlers/test_fuzz_decoding.py): each was a 5xx -------------------------------
def test_v1_instances_that_are_not_a_list_are_a_400(text_handler):
    for instances in (True, 5, "see you", {"text": "see you"}):
        status, body = run_envelope(text_handler, "kserve", {"instances": instances})
        assert status == 400 and [p["type"] for p in body["predictions"]] == ["MissingInstances"], (instances, body)


def test_a_bytes_input_whose_shape_is_not_numbers_is_a_400(text_handler, messages):
    for shape in ([None], [{}], [[1], [1]]):
        request = {"inputs": [{"name": "t", "shape": shape, "datatype": "BYTES", "data": [messages[0]]}]}
        status, body = run_envelope(text_handler, "kservev2", request)
        assert status == 400 and outputs(body)["t"]["type"] == "ShapeMismatch", (shape, body)


def test_a_multipart_field_named_like_the_v2_input_key_is_not_taken_for_one(classifier, photo_bytes):
    png = photo_bytes["coffee.png"]
    for spoofed in (bytearray(b"UINT8"), "UINT8", {"datatype": "UINT8", "shape": [1, 1, 3], "name": "x"}, [1]):
        assert tensor_image({"data": png, V2_INPUT: spoofed}) is None
        [(status, answer)] = run_batch(classifier, [{"data": bytearray(png), V2_INPUT: spoofed}])
        assert status == 200 and next(iter(answer)) == "espresso", (spoofed, answer)
