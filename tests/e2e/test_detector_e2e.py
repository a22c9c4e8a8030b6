"""The scene detector, built by `tskit build --handler object_detector`, served by a real TorchServe."""
import base64
import concurrent.futures
import subprocess

import pytest
from PIL import Image, ImageEnhance

from export.zoo.detection import (
    DETECTOR_NAME, OBJECTS, TRAIN_BACKGROUNDS, box_iou, detection_quality, heldout_scenes, make_scenes,
    reference_scenes, scene_inputs, scene_png, write_detector_files,
)
from tskit.properties import serve_overrides
from tskit.server import TorchServeProcess

from tests.e2e.conftest import REPO, TSKIT, drift_build_inputs, wait_drift

MODEL = DETECTOR_NAME
SETTINGS = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 10, "responseTimeout": 120}
DRIFT = {"drift_window": 64, "drift_min_count": 64, "drift_every": 1}  # one worker; scored after every batch


@pytest.fixture(scope="module")
def detector_server(tmp_path_factory):
    work = tmp_path_factory.mktemp("detector-e2e")
    files = write_detector_files(work)  # its config is work/model-config.yaml: rewritten with DRIFT in place
    config, reference = drift_build_inputs(work, files["config"], DRIFT, scene_inputs(reference_scenes(), "reference"))
    store = work / "model_store"
    cmd = TSKIT + ["build", MODEL, "--serialized-file", files["serialized_file"], "--model-file", files["model_file"],
                   "--handler", "object_detector", "--labels", files["labels"], "--config", str(config),
                   "--extra-files", files["extra_files"], "--reference", str(reference), "--export-path", str(store)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    overrides = serve_overrides({MODEL: SETTINGS})
    with TorchServeProcess(work / "ts", REPO / "config.properties", store, overrides=overrides) as server:
        yield server


def detections(response) -> list:
    assert response.status_code == 200, response.text
    return response.json()


def test_served_with_the_configured_batching(detector_server):
    [version] = detector_server.client.describe(MODEL)
    assert version["batchSize"] == 4 and version["maxBatchDelay"] == 10
    assert detector_server.client.ready_workers(MODEL) == 1


def test_held_out_scenes_over_http_concurrently(detector_server):
    scenes = heldout_scenes(16)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:  # concurrent requests get batched
        responses = list(pool.map(lambda s: detector_server.client.predict(MODEL, scene_png(s[0])), scenes))
    quality = detection_quality([detections(r) for r in responses], scenes)
    assert quality["recall"] >= 0.85 and quality["precision"] >= 0.85, quality


@pytest.mark.parametrize("label", ["rocket", "astronaut"])
def test_a_real_photo_in_its_own_pixels(detector_server, photos, label):
    """The photos the objects were cut from, at their own size: the best box is the object's region there."""
    file, region = OBJECTS[label]
    width, height = Image.open(photos[file]).size
    truth = [region[0] * width, region[1] * height, region[2] * width, region[3] * height]
    best = detections(detector_server.client.predict(MODEL, photos[file].read_bytes()))[0]
    assert best["label"] == label and box_iou(best["box"], truth) >= 0.5, (best, truth)


def test_bad_request_is_a_json_4xx_and_the_worker_survives(detector_server, photo_bytes):
    r = detector_server.client.predict(MODEL, b"this is text, not an image")
    assert r.status_code == 415
    assert r.json()["code"] == 415 and "not an image" in r.json()["message"]
    assert detections(detector_server.client.predict(MODEL, photo_bytes["rocket.jpg"]))[0]["label"] == "rocket"
    assert detector_server.client.ready_workers(MODEL) == 1


def test_explanations_over_http(detector_server):
    """Each detection with its saliency map and heatmap; a bad target is a JSON 400."""
    c = detector_server.client
    image, boxes, labels = heldout_scenes(1)[0]
    r = c.inference("POST", f"/explanations/{MODEL}", data=scene_png(image), timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "saliency" and body["input_size"] == list(image.size)
    assert {d["label"] for d in body["detections"]} <= set(OBJECTS) and body["detections"]
    for det in body["detections"]:
        assert base64.b64decode(det["heatmap_png"])[:4] == b"\x89PNG" and 0 < det["mass_in_box"] <= 1
    bad = c.inference("POST", f"/explanations/{MODEL}", timeout=300,
                      json={"data": base64.b64encode(scene_png(image)).decode(), "target": "unicorn"})
    assert bad.status_code == 400 and bad.json()["type"] == "BadTarget"
    assert detector_server.client.ready_workers(MODEL) == 1


def test_drift_gauges_rise_with_darkened_scenes(detector_server):
    """The archive's reference is training scenes: new ones of that kind keep the channel gauges low, the
    same scenes darkened raise them; the detection count and best score are watched too."""
    c = detector_server.client
    fresh = [image for image, _, _ in make_scenes(DRIFT["drift_window"], 2, TRAIN_BACKGROUNDS)]
    channels = ("red_mean", "green_mean", "blue_mean")

    def send(images) -> None:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert all(r.status_code == 200 for r in pool.map(lambda im: c.predict(MODEL, scene_png(im)), images))

    send(fresh)
    before = wait_drift(c, lambda v: len(v) == 8 and all(v[ch] < 1.0 for ch in channels), "fresh scenes",
                        ModelName=MODEL)
    assert {"detections", "top_score"} <= set(before)
    send([ImageEnhance.Brightness(image).enhance(0.4) for image in fresh])
    after = wait_drift(c, lambda v: min(v[ch] for ch in channels) > 2.0, "darkened scenes", ModelName=MODEL)
    for channel in channels:
        assert before[channel] < 1.0 < 2.0 < after[channel], (before, after)
    print("in distribution", before, "\ndarkened", after)
