"""KServe v1 (`{"instances": [...]}` -> `{"predictions": [...]}`) through a real TorchServe started with
`service_envelope=kserve`, every handler."""
import base64

import pytest

from export.golden import compare
from export.zoo import DEFAULT_NAME, SAMPLE_TOP1
from export.zoo.detection import DETECTOR_NAME, detection_quality, heldout_scenes, scene_png
from export.zoo.tabular import TABULAR_NAME, dataset_info, load_split
from export.zoo.text import TEXT_NAME
from tests.oip import kserve_server, v1_predict


@pytest.fixture(scope="module")
def server(kserve_store, tmp_path_factory):
    with kserve_server(kserve_store, tmp_path_factory.mktemp("ts-kserve"), "kserve") as ts:
        yield ts


def predictions(response) -> list:
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def test_images_as_base64_instances(server, photo_bytes):
    coffee, cat = (base64.b64encode(photo_bytes[n]).decode() for n in ("coffee.png", "chelsea.png"))
    answers = predictions(v1_predict(server, DEFAULT_NAME, {"instances": [{"data": coffee}, {"b64": cat}, coffee]}))
    assert next(iter(answers[0])) in SAMPLE_TOP1["coffee.png"] and next(iter(answers[1])) in SAMPLE_TOP1["chelsea.png"]
    assert compare(answers[0], answers[2], 1e-5) == []


def test_text_and_tabular_instances(server):
    spam, ham = "WINNER! claim your free prize now, call 08000930705", "see you at home tonight, love mum"
    assert [next(iter(a)) for a in predictions(v1_predict(server, TEXT_NAME, {"instances": [spam, {"text": ham}]}))] \
        == ["spam", "ham"]
    _, x_test, _, y_test = load_split()
    info = dataset_info()
    named = dict(zip(info["feature_names"], map(float, x_test[1])))
    answers = predictions(v1_predict(server, TABULAR_NAME, {"instances": [x_test[0].tolist(), named]}))
    assert [info["labels"].index(next(iter(a))) for a in answers] == list(y_test[:2])


def test_detector_instances(server):
    scenes = heldout_scenes(4)  # the scenes the v2 test sends: the same bytes, the same answers
    bodies = [{"data": base64.b64encode(scene_png(image)).decode()} for image, _, _ in scenes]
    quality = detection_quality(predictions(v1_predict(server, DETECTOR_NAME, {"instances": bodies})), scenes)
    assert quality["recall"] >= 0.8 and quality["precision"] >= 0.8, quality


def test_bad_instances_are_answered_in_place_and_the_worker_survives(server, photo_bytes):
    coffee = base64.b64encode(photo_bytes["coffee.png"]).decode()
    r = v1_predict(server, DEFAULT_NAME, {"instances": [{"data": coffee}, {"data": "not base64!"}, "aGVsbG8="]})
    assert r.status_code == 415, r.text  # the request's status is its last bad instance's (the not-an-image 415)
    good, bad_b64, not_image = r.json()["predictions"]
    assert next(iter(good)) in SAMPLE_TOP1["coffee.png"]
    assert bad_b64["type"] == "InvalidBase64" and not_image["type"] == "UnsupportedMediaType"
    r = v1_predict(server, DEFAULT_NAME, {"inputs": [coffee]})
    assert r.status_code == 400 and r.json()["predictions"][0]["type"] == "MissingInstances"
    assert next(iter(predictions(v1_predict(server, DEFAULT_NAME, {"instances": [coffee]}))[0])) == "espresso"
    assert server.client.ready_workers(DEFAULT_NAME) == 1


def test_explain_route_answers_explanations_for_every_instance(server, photo_bytes):
    """`:explain` is TorchServe's explanations path behind the same envelope: one explanation per instance,
    under "explanations"; a bad target is that instance's 400."""
    cat = base64.b64encode(photo_bytes["chelsea.png"]).decode()
    r = v1_predict(server, DEFAULT_NAME, {"instances": [{"data": cat}]}, verb="explain")
    assert r.status_code == 200, r.text
    [image] = r.json()["explanations"]
    assert image["target"] in SAMPLE_TOP1["chelsea.png"] and len(image["attributions"]) == 224
    assert base64.b64decode(image["heatmap_png"])[:4] == b"\x89PNG"
    _, x_test, _, _ = load_split()
    rows = [x_test[0].tolist(), {"data": x_test[1].tolist(), "target": "unicorn"}]
    r = v1_predict(server, TABULAR_NAME, {"instances": rows}, verb="explain")
    assert r.status_code == 400, r.text
    row, bad = r.json()["explanations"]
    assert row["attributions"][0][0] == dataset_info()["feature_names"][0]
    assert bad["code"] == 400 and "target" in bad["message"]
    assert server.client.ready_workers(TABULAR_NAME) == 1
