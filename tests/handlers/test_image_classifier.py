"""The image classifier in-process, on the real default archive and real photos."""
import base64
import io
import json

import pytest
from PIL import Image

from export.golden import as_request
from export.zoo import SAMPLE_TOP1, golden_photos
from handlers.errors import ConfigError
from handlers.image_classifier import ImageClassifier
from tests.images import bad_images, odd_images
from tskit.testing import load_handler, run_batch


def top1(scores: dict) -> str:
    return next(iter(scores))


@pytest.mark.parametrize("name", sorted(SAMPLE_TOP1))
def test_real_photos_get_the_right_label(classifier, photo_bytes, name):
    [(status, scores)] = run_batch(classifier, [{"body": photo_bytes[name]}])
    assert status == 200
    assert top1(scores) in SAMPLE_TOP1[name], scores


def test_response_is_topk_label_to_probability_highest_first(classifier, photo_bytes):
    [(_, scores)] = run_batch(classifier, [{"body": photo_bytes["coffee.png"]}])
    assert len(scores) == 5
    probs = list(scores.values())
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs)
    assert scores["espresso"] > 0.5
    json.dumps(scores)  # what the worker sends must serialise


def test_one_handle_call_answers_a_whole_batch_in_order(classifier, photo_bytes):
    names = sorted(SAMPLE_TOP1) * 2
    results = run_batch(classifier, [{"body": photo_bytes[n]} for n in names])
    assert [top1(scores) in SAMPLE_TOP1[n] for n, (_, scores) in zip(names, results)] == [True] * len(names)


def test_batched_and_single_answers_agree(classifier, photo_bytes):
    names = sorted(SAMPLE_TOP1)
    batched = run_batch(classifier, [{"body": photo_bytes[n]} for n in names])
    for name, (_, scores) in zip(names, batched):
        [(_, alone)] = run_batch(classifier, [{"body": photo_bytes[name]}])
        assert list(alone) == list(scores)
        assert alone[top1(alone)] == pytest.approx(scores[top1(scores)], abs=1e-3)


def test_every_input_encoding(classifier, photo_bytes):
    raw = photo_bytes["coffee.png"]
    b64 = base64.b64encode(raw).decode()
    requests = [
        {"body": raw},  # curl -T / --data-binary
        {"data": raw},  # multipart field `data`
        {"body": {"data": b64}},  # JSON with base64
        {"body": b64},  # bare base64 string (text/plain)
    ]
    results = run_batch(classifier, requests)
    assert [(status, top1(scores)) for status, scores in results] == [(200, "espresso")] * 4


def test_bad_request_fails_alone_inside_a_batch(classifier, photo_bytes):
    good = {"body": photo_bytes["coffee.png"]}
    truncated = {"body": photo_bytes["rocket.jpg"][:300]}
    results = run_batch(classifier, [good, {"body": b"not an image"}, good, truncated, {"body": b""}, good])
    statuses = [status for status, _ in results]
    assert statuses == [200, 415, 200, 400, 400, 200]
    for status, body in results:
        if status == 200:
            assert top1(body) == "espresso"
        else:
            assert set(body) == {"code", "type", "message"} and body["code"] == status


def test_odd_but_valid_images_are_classified(classifier, photo_bytes):
    variants = odd_images(photo_bytes["coffee.png"])
    results = dict(zip(variants, run_batch(classifier, [{"body": v} for v in variants.values()])))
    assert {name: status for name, (status, _) in results.items()} == {name: 200 for name in variants}
    for name, (_, answer) in results.items():
        if name != "1x1":  # grayscale, 16-bit, palette, CMYK, RGBA and EXIF-rotated keep the label
            assert top1(answer) == "espresso", name


def test_every_bad_body_is_a_json_4xx(classifier):
    cases = bad_images(next(g.payload for g in golden_photos() if g.name.startswith("rocket")))
    results = run_batch(classifier, [as_request(body, content_type) for body, content_type, _ in cases.values()])
    for name, (status, answer) in zip(cases, results):
        assert (status, answer["code"]) == (cases[name][2],) * 2, name


def test_config_keys_reach_the_handler(default_model_dir, photo_bytes):
    handler = load_handler(ImageClassifier, default_model_dir, batch_size=2, yaml_overrides={
        "handler": {"topk": 2, "resize": 160, "crop": 128, "precision": "fp32",
                    "fast_decode": False, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}})
    assert handler.precision == "fp32"
    assert handler.batch_size == 2
    assert handler.config["crop"] == 128
    assert handler.decode({"body": photo_bytes["coffee.png"]}).shape == (128, 128, 3)
    assert handler.mean.flatten().tolist() == pytest.approx([127.5] * 3)
    [(status, scores)] = run_batch(handler, [{"body": photo_bytes["coffee.png"]}])
    assert status == 200 and len(scores) == 2 and top1(scores) == "espresso"


def test_bf16_precision_keeps_the_labels(default_model_dir, photo_bytes):
    handler = load_handler(ImageClassifier, default_model_dir, yaml_overrides={"handler": {"precision": "bf16"}})
    assert handler.precision == "bf16"
    for name, expected in SAMPLE_TOP1.items():
        [(_, scores)] = run_batch(handler, [{"body": photo_bytes[name]}])
        assert top1(scores) in expected, (name, scores)


@pytest.mark.parametrize("section, fragment", [
    ({"topkk": 3}, "unknown handler config keys ['topkk']"),
    ({"topk": "five"}, "'topk' must be int"),
    ({"crop": 300}, "crop (300) must not exceed resize (256)"),
    ({"precision": "int8"}, "precision must be one of"),
])
def test_bad_config_fails_the_load_with_a_fix(default_model_dir, section, fragment):
    with pytest.raises((ConfigError, ValueError)) as err:
        load_handler(ImageClassifier, default_model_dir, yaml_overrides={"handler": section})
    assert fragment in str(err.value)


def test_explanations_in_a_mixed_batch(classifier, photo_bytes):
    """Requests sent to /explanations (header explain: True) get attributions; the others in the same
    batch get predictions; a bad one fails alone."""
    chelsea = base64.b64encode(photo_bytes["chelsea.png"]).decode()
    results = run_batch(
        classifier,
        [{"body": photo_bytes["chelsea.png"]}, {"body": photo_bytes["coffee.png"]}, {"body": b"junk"},
         {"body": {"data": chelsea, "target": "tabby"}}],
        headers=[{"explain": "True"}, {}, {"explain": "True"}, {"explain": "True"}])
    assert [status for status, _ in results] == [200, 200, 415, 200]
    explained, predicted, _, targeted = (body for _, body in results)
    assert top1(predicted) == "espresso"
    assert explained["target"] in SAMPLE_TOP1["chelsea.png"] and explained["method"] == "integrated_gradients"
    assert len(explained["attributions"]) == 224 and len(explained["attributions"][0]) == 224
    assert Image.open(io.BytesIO(base64.b64decode(explained["heatmap_png"]))).size == (224, 224)
    assert targeted["target"] == "tabby" and targeted["target_index"] == 281


def test_attributions_are_concentrated_not_uniform(classifier, photo_bytes):
    """A real attribution map puts much of its mass on few pixels (uniform noise would put 10% on 10%)."""
    import numpy as np

    [(_, body)] = run_batch(classifier, [{"body": photo_bytes["chelsea.png"]}], headers=[{"explain": "True"}])
    a = np.sort(np.array(body["attributions"]).ravel())[::-1]
    assert a[: a.size // 10].sum() / a.sum() > 0.3


def test_bad_explanation_targets_fail_alone(classifier, photo_bytes):
    data = base64.b64encode(photo_bytes["coffee.png"]).decode()
    results = run_batch(classifier, [{"body": {"data": data, "target": "unicorn"}}, {"body": {"data": data, "target": 1000}},
                                     {"body": {"data": data, "target": 967}}], headers=[{"explain": "True"}] * 3)
    assert [status for status, _ in results] == [400, 400, 200]
    assert "unknown explanation target 'unicorn'" in results[0][1]["message"]
    assert "out of range: the model has 1000 classes" in results[1][1]["message"]
    assert results[2][1]["target"] == "espresso"


def test_a_batch_already_on_the_device_goes_through_to_device_unchanged(classifier):
    """`collate` hands `to_model_input` the batch `normalised` already moved: `to_device` must take it as it
    is (on CUDA it pins only CPU tensors; pinning a device tensor raises). Here, on CPU, it is a no-op."""
    batch = classifier.normalised(classifier.example_items(2))
    assert classifier.to_device(batch) is batch
    items = classifier.example_items(2)
    assert classifier.to_device(items[0]) is items[0]
