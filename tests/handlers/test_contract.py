"""TorchServe's contract through `TskitHandler.handle`, in-process: subclasses that override one of
`preprocess` / `inference` / `postprocess` (as TorchServe's docs teach) on the real default archive, and user
code that raises or answers the wrong number of requests."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.image_classifier import ImageClassifier
from tests.images import bad_images
from tskit.testing import load_handler, run_batch, run_envelope


class Top1Only(ImageClassifier):
    """Overrides only postprocess: the best label and its probability."""

    def postprocess(self, data):
        return [{"label": next(iter(scores)), "probability": next(iter(scores.values()))}
                for scores in super().postprocess(data)]


class Tempered(ImageClassifier):
    """Overrides only inference: temperature-scaled logits."""

    temperature = 4.0

    def inference(self, data, *args, **kwargs):
        return super().inference(data, *args, **kwargs) / self.temperature


class Mirrored(ImageClassifier):
    """Overrides preprocess, composing with super(): the decoded batch, mirrored left to right."""

    def preprocess(self, data):
        batch = super().preprocess(data)
        return None if batch is None else torch.flip(batch, dims=[3])


class OwnDecoding(ImageClassifier):
    """Overrides preprocess without super(), as a TorchServe user would write it: PIL per row, one batch."""

    def preprocess(self, data):
        images = []
        for row in data:
            image = Image.open(io.BytesIO(row.get("data") or row.get("body"))).convert("RGB").resize((224, 224))
            images.append(torch.from_numpy(np.asarray(image).copy()))
        return self.collate(images)


class FailsOnTinyImages(ImageClassifier):
    """Its decode raises a plain ValueError (not BadInput) for images under 32 pixels."""

    def decode(self, request):
        item = super().decode(request)
        image = Image.open(io.BytesIO(request["body"]))
        if min(image.size) < 32:
            raise ValueError(f"image too small for this model: {image.size}")
        return item


class BrokenInference(ImageClassifier):
    def inference(self, data, *args, **kwargs):
        raise RuntimeError("the model server lost its GPU")


class DropsAnAnswer(ImageClassifier):
    def postprocess(self, data):
        return super().postprocess(data)[:-1]


@pytest.fixture(scope="module")
def load(default_model_dir):
    loaded = {}

    def get(cls):
        if cls not in loaded:
            loaded[cls] = load_handler(cls, default_model_dir)
        return loaded[cls]
    return get


@pytest.fixture(scope="module")
def coffee(photo_bytes):
    return {"body": photo_bytes["coffee.png"]}


def tiny_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_postprocess_override_shapes_the_answers_and_bad_requests_fail_alone(load, classifier, coffee, photo_bytes):
    handler = load(Top1Only)
    cat = {"body": photo_bytes["chelsea.png"]}
    results = run_batch(handler, [coffee, {"body": bad_images(photo_bytes["coffee.png"])["random_bytes"][0]}, cat,
                                  {"body": b""}])
    assert [status for status, _ in results] == [200, 415, 200, 400]
    [(_, base_scores)] = run_batch(classifier, [coffee])
    assert results[0][1] == {"label": "espresso", "probability": pytest.approx(base_scores["espresso"], abs=1e-5)}
    assert results[2][1]["label"] in ("tabby", "tiger cat", "Egyptian cat")
    assert set(results[1][1]) == {"code", "type", "message"}


def test_inference_override_changes_only_the_logits(load, classifier, coffee):
    [(_, plain)] = run_batch(classifier, [coffee])
    [(status, tempered)] = run_batch(load(Tempered), [coffee])
    assert status == 200
    assert list(tempered)[0] == "espresso"
    assert tempered["espresso"] < plain["espresso"]  # a higher temperature flattens the distribution


def test_preprocess_override_composes_with_super(load, classifier, photo_bytes):
    image = Image.open(io.BytesIO(photo_bytes["motorcycle_left.png"])).convert("RGB")
    mirrored = io.BytesIO()
    image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored, format="PNG")
    [(_, expected)] = run_batch(classifier, [{"body": mirrored.getvalue()}])
    results = run_batch(load(Mirrored), [{"body": photo_bytes["motorcycle_left.png"]}, {"body": b"junk"}])
    assert [status for status, _ in results] == [200, 415]
    # the same classes as for the mirrored photo; the centre crop of a mirror can sit one pixel off
    assert list(results[0][1]) == list(expected)
    assert results[0][1][next(iter(expected))] == pytest.approx(next(iter(expected.values())), abs=0.05)


def test_a_bad_request_fails_alone_even_when_preprocess_skips_super(load, coffee):
    """OwnDecoding's preprocess raises for the whole batch on one bad image; the batch is answered again one
    request at a time, so only the bad request fails (415: Pillow could not read it)."""
    results = run_batch(load(OwnDecoding), [coffee, {"body": b"not an image at all"}, coffee])
    assert [status for status, _ in results] == [200, 415, 200]
    assert next(iter(results[0][1])) == "espresso" and results[1][1]["type"] == "UnsupportedMediaType"


def test_user_decode_that_raises_fails_that_request_with_a_json_500(load, coffee):
    results = run_batch(load(FailsOnTinyImages), [coffee, {"body": tiny_png()}, coffee])
    assert [status for status, _ in results] == [200, 500, 200]
    error = results[1][1]
    assert error["type"] == "HandlerError" and "decode raised ValueError: image too small" in error["message"]
    json.dumps(results)


def test_inference_that_raises_fails_the_batch_with_json_500s_and_the_handler_keeps_serving(load, coffee):
    handler = load(BrokenInference)
    results = run_batch(handler, [coffee, {"body": b"junk"}, coffee])
    assert [status for status, _ in results] == [500, 415, 500]
    assert "inference raised RuntimeError: the model server lost its GPU" in results[0][1]["message"]
    assert run_batch(handler, [coffee])[0][0] == 500  # still answering, not dead


def test_wrong_answer_count_is_named(load, coffee, photo_bytes):
    [(status, body)] = run_batch(load(DropsAnAnswer), [coffee])
    assert status == 500 and body["type"] == "HandlerError"
    assert body["message"].startswith("postprocess returned 0 answers for the 1 requests that reached inference")
    # in a batch, each request is answered again alone: every one that reached inference gets the same error
    results = run_batch(load(DropsAnAnswer), [coffee, {"body": b""}, {"body": photo_bytes["chelsea.png"]}])
    assert [status for status, _ in results] == [500, 400, 500]


def test_explanations_share_a_batch_with_overridden_predictions(load, coffee):
    handler = load(Top1Only)
    results = run_batch(handler, [coffee, coffee], headers=[{"explain": "True"}, {}])
    assert [status for status, _ in results] == [200, 200]
    assert results[0][1]["target"] == "espresso" and "heatmap_png" in results[0][1]
    assert results[1][1]["label"] == "espresso"


def test_explanation_through_a_preprocess_without_super_is_refused(load, coffee):
    [(status, body)] = run_batch(load(OwnDecoding), [coffee], headers=[{"explain": "True"}])
    assert status == 501 and "super().preprocess" in body["message"]


def test_kserve_v1_through_a_postprocess_override(load, photo_bytes):
    import base64

    instances = [{"b64": base64.b64encode(photo_bytes["coffee.png"]).decode()}, "not base64 at all!"]
    status, body = run_envelope(load(Top1Only), "kserve", {"instances": instances})
    assert status == 400
    assert body["predictions"][0]["label"] == "espresso" and body["predictions"][1]["code"] == 400


def test_describe_answers_what_the_worker_serves(load, coffee):
    handler = load(Top1Only)
    results = run_batch(handler, [{"body": b""}, coffee], headers=[{"describe": "True"}, {}])
    (status, described), (_, prediction) = results
    assert status == 200 and prediction["label"] == "espresso"
    assert described["handler"] == "Top1Only" and described["format"] == "eager"
    assert described["precision"] == handler.precision and len(described["labels"]) == 1000
    assert described["manifest"]["golden_cases"] == 6 and described["manifest"]["model"]["name"] == "efficientnet_lite0"
    json.dumps(described)
