"""The object detector in-process, on the built scene_detector archive and held-out scenes of real photos.

The archive's model is trained at build time (export/zoo/detection.py, once per test session); held-out
scenes use another seed and backgrounds that training never sees.
"""
import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance

from export.zoo.detection import (
    CLASSES, TRAIN_BACKGROUNDS, box_iou, detection_quality, heldout_scenes, make_scenes,
)
from handlers.errors import ConfigError
from handlers.image_classifier import DRIFT_FEATURES
from handlers.object_detector import DETECTION_DRIFT_FEATURES, ObjectDetector
from tskit.testing import load_handler, run_batch, unpack_archive

BATCH = 4  # the archive's batchSize


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def answer(handler, images: list, fmt: str = "PNG") -> list:
    """Each image's detections, sent in batches like the server would."""
    out = []
    for i in range(0, len(images), BATCH):
        results = run_batch(handler, [{"body": encode(image, fmt)} for image in images[i:i + BATCH]])
        assert [status for status, _ in results] == [200] * len(results), results
        out += [body for _, body in results]
    return out


def matches_truth(detections: list, boxes: list, labels: list, iou: float = 0.5) -> bool:
    """Every true object has a detection with its label and IoU >= `iou`, and nothing else is detected."""
    truth = [(box, CLASSES[label]) for box, label in zip(boxes, labels)]
    return len(detections) == len(truth) and all(
        any(d["label"] == name and box_iou(d["box"], box) >= iou for d in detections) for box, name in truth)


@pytest.fixture(scope="module")
def detector_dir(detector_mar, tmp_path_factory):
    return unpack_archive(detector_mar, tmp_path_factory.mktemp("detector-unpacked"))


@pytest.fixture(scope="module")
def detector(detector_dir):
    return load_handler(ObjectDetector, detector_dir, batch_size=BATCH)


@pytest.fixture(scope="module")
def scenes():
    return heldout_scenes(50)


@pytest.fixture(scope="module")
def answers(detector, scenes):
    return answer(detector, [image for image, _, _ in scenes])


@pytest.fixture(scope="module")
def clean_scenes(scenes, answers):
    """Held-out scenes the detector gets exactly right at their own size."""
    clean = [scene for scene, dets in zip(scenes, answers) if matches_truth(dets, scene[1], scene[2], 0.6)]
    assert len(clean) >= 10
    return clean


def test_detects_held_out_objects(scenes, answers):
    # measured on this project's 2-core machine: 88 of 89 objects found, 2 false detections
    quality = detection_quality(answers, scenes)
    assert quality["objects"] >= 80
    assert quality["recall"] >= 0.9 and quality["precision"] >= 0.9, quality


def test_answer_is_a_list_of_detections_best_first(answers):
    for detections in answers:
        json.dumps(detections)  # what the worker sends must serialise
        scores = [d["score"] for d in detections]
        assert scores == sorted(scores, reverse=True)
        for d in detections:
            assert set(d) == {"label", "score", "box"} and d["label"] in CLASSES and 0.5 <= d["score"] <= 1
            x1, y1, x2, y2 = d["box"]
            assert 0 <= x1 < x2 <= 256 and 0 <= y1 < y2 <= 256


def test_boxes_are_in_each_original_images_pixels_within_one_batch(detector, clean_scenes):
    """One batch of five sizes: scaled 2x (PNG) and 4x (JPEG, decoded in draft mode), and padded to
    320x256 and 256x384 (the scene placed lower). Every box must land on the object in that image."""
    image, boxes, labels = clean_scenes[0]

    def padded(width, height, dy):
        canvas = Image.new("RGB", (width, height), (90, 90, 90))
        canvas.paste(image, (0, dy))
        return canvas

    variants = [  # (image, format, scale, y offset)
        (image, "PNG", 1, 0),
        (image.resize((512, 512), Image.BICUBIC), "PNG", 2, 0),
        (image.resize((1024, 1024), Image.BICUBIC), "JPEG", 4, 0),
        (padded(320, 256, 0), "PNG", 1, 0),
        (padded(256, 384, 128), "PNG", 1, 128),
    ]
    results = run_batch(detector, [{"body": encode(im, fmt)} for im, fmt, _, _ in variants])
    for (im, fmt, scale, dy), (status, detections) in zip(variants, results):
        truth = [[x1 * scale, (y1 + dy) * scale, x2 * scale, (y2 + dy) * scale] for x1, y1, x2, y2 in boxes]
        assert status == 200 and matches_truth(detections, truth, labels), (im.size, fmt, detections, truth)
        assert max(d["box"][2] for d in detections) <= im.size[0]
        assert max(d["box"][3] for d in detections) <= im.size[1]


def test_a_sideways_jpeg_with_exif_orientation_is_answered_upright(detector, clean_scenes):
    """Stored rotated with EXIF orientation 6 (and large enough for draft mode): boxes in the upright image."""
    image, boxes, labels = clean_scenes[3]
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    buf = io.BytesIO()
    image.resize((1536, 1536), Image.BICUBIC).transpose(Image.ROTATE_90).save(buf, "JPEG", quality=95,
                                                                               exif=exif.tobytes())
    [(status, detections)] = run_batch(detector, [{"body": buf.getvalue()}])
    assert status == 200 and matches_truth(detections, [[v * 6 for v in box] for box in boxes], labels), detections


def test_every_input_encoding(detector, clean_scenes):
    image, boxes, labels = clean_scenes[1]
    raw = encode(image)
    b64 = base64.b64encode(raw).decode()
    results = run_batch(detector, [{"body": raw}, {"data": raw}, {"body": {"data": b64}}, {"body": b64}])
    assert [status for status, _ in results] == [200] * 4
    assert all(matches_truth(detections, boxes, labels) for _, detections in results)


def test_bad_requests_fail_alone_inside_a_batch(detector, clean_scenes):
    image, boxes, labels = clean_scenes[2]
    good = {"body": encode(image)}
    truncated = {"body": encode(image, "JPEG")[:400]}
    requests = [good, {"body": b"not an image"}, good, truncated, {"body": b""}, {"body": {"data": "@@not base64"}}]
    results = run_batch(detector, requests)
    assert [status for status, _ in results] == [200, 415, 200, 400, 400, 400]
    for status, body in results:
        if status == 200:
            assert matches_truth(body, boxes, labels)
        else:
            assert set(body) == {"code", "type", "message"} and body["code"] == status


def test_odd_but_valid_images(detector):
    requests = [{"body": encode(Image.new(mode, size))} for mode, size in
                (("L", (300, 200)), ("RGBA", (64, 640)), ("P", (1, 1)), ("RGB", (2000, 30)))]
    assert [(status, body) for status, body in run_batch(detector, requests)] == [(200, [])] * 4


def test_score_threshold_and_max_detections_from_the_config(detector, detector_dir, clean_scenes):
    images = [image for image, _, _ in clean_scenes[:8]]
    strict = load_handler(ObjectDetector, detector_dir, batch_size=BATCH,
                          yaml_overrides={"handler": {"score_threshold": 0.8}})
    loose = load_handler(ObjectDetector, detector_dir, batch_size=BATCH,
                         yaml_overrides={"handler": {"score_threshold": 0.05, "max_detections": 5}})
    assert strict.model.score_thresh == 0.8 and loose.model.detections_per_img == 5
    default, high, low = answer(detector, images), answer(strict, images), answer(loose, images)
    assert all(d["score"] >= 0.8 for dets in high for d in dets)
    assert all(d["score"] >= 0.05 for dets in low for d in dets)
    assert max(map(len, low)) == 5  # the cap is reached, and holds
    assert sum(map(len, high)) < sum(map(len, default)) < sum(map(len, low))
    for dets, high_dets, low_dets in zip(default, high, low):  # the threshold only adds or removes the tail
        assert high_dets == [d for d in dets if d["score"] >= 0.8]
        assert low_dets[:len(dets)] == dets


def test_bf16_runs_the_backbone_only_and_keeps_the_answers(detector_dir, clean_scenes):
    handler = load_handler(ObjectDetector, detector_dir, batch_size=1,
                           yaml_overrides={"handler": {"precision": "bf16"}})
    assert handler.precision == "bf16"
    assert next(handler.model.backbone.parameters()).dtype == torch.bfloat16
    assert next(handler.model.head.parameters()).dtype == torch.float32
    for (image, boxes, labels), dets in zip(clean_scenes[:3], answer(handler, [s[0] for s in clean_scenes[:3]])):
        assert matches_truth([d for d in dets if d["score"] >= 0.55], boxes, labels), dets


@pytest.mark.parametrize("section, fragment", [
    ({"min_size": 600, "max_size": 400}, "need 0 < min_size (600) <= max_size (400)"),
    ({"score_threshold": 1.5}, "score_threshold must be in 0..1"),
    ({"max_detections": 0}, "max_detections must be >= 1"),
    ({"topk": 5}, "unknown handler config keys ['topk']"),
])
def test_bad_config_fails_the_load_with_a_fix(detector_dir, section, fragment):
    with pytest.raises(ConfigError) as err:
        load_handler(ObjectDetector, detector_dir, yaml_overrides={"handler": section})
    assert fragment in str(err.value)


EXPLAIN = {"explain": "True"}


def test_each_detection_comes_with_a_saliency_map_on_its_object(detector, clean_scenes):
    """Explaining a scene returns the detections a prediction returns, each with |d score / d pixel|: that
    saliency sits on the object (several times the share a uniform map would put in the box)."""
    images = [image for image, _, _ in clean_scenes[:3]]
    results = run_batch(detector, [{"body": encode(im)} for im in images] + [{"body": encode(images[0])}],
                        headers=[EXPLAIN] * 3 + [{}])
    assert [status for status, _ in results] == [200] * 4
    predicted = results[3][1]
    concentration = []
    for image, (_, body) in zip(images, results):
        width, height = body["input_size"]
        assert body["method"] == "saliency" and (width, height) == image.size  # scenes are at the model's size
        for det in body["detections"]:
            assert len(det["saliency"]) == -(-height // body["cell"]) and len(det["saliency"][0]) == -(-width // body["cell"])
            assert Image.open(io.BytesIO(base64.b64decode(det["heatmap_png"]))).size == (width, height)
            x1, y1, x2, y2 = det["box"]
            concentration.append(det["mass_in_box"] / ((x2 - x1) * (y2 - y1) / (width * height)))
    first = results[0][1]["detections"]
    assert [(d["label"], d["box"]) for d in first] == [(d["label"], d["box"]) for d in predicted]
    assert len(concentration) >= 3 and min(concentration) > 1.5 and np.median(concentration) > 2.5, concentration


def test_explain_one_label_and_bad_targets(detector, clean_scenes):
    scene = next(s for s in clean_scenes if len(set(s[2])) >= 2)
    image, _, labels = scene
    data = base64.b64encode(encode(image)).decode()
    wanted = CLASSES[labels[0]]
    results = run_batch(detector, [{"body": {"data": data, "target": wanted}}, {"body": {"data": data, "target": "unicorn"}},
                                   {"body": {"data": data, "target": 99}}, {"body": b"not an image"}],
                        headers=[EXPLAIN] * 4)
    assert [status for status, _ in results] == [200, 400, 400, 415]
    assert {d["label"] for d in results[0][1]["detections"]} == {wanted}
    assert "unknown explanation target 'unicorn'" in results[1][1]["message"]
    assert "out of range" in results[2][1]["message"]


def test_drift_new_scenes_of_the_training_kind_stay_low_darkened_ones_drift(detector_dir):
    """The archive's reference is the training scenes. New scenes from the same generator (another seed) stay
    near the noise floor: scenes are a few backgrounds, so a window of n rows is noisier than (bins - 1) / n.
    The same scenes darkened move the channel means."""
    n = 128
    drift = {"drift_window": n, "drift_min_count": n, "drift_every": n}
    handler = load_handler(ObjectDetector, detector_dir, batch_size=BATCH, yaml_overrides={"handler": drift})
    assert handler.drift.names == DRIFT_FEATURES + DETECTION_DRIFT_FEATURES
    fresh = [image for image, _, _ in make_scenes(n, 2, TRAIN_BACKGROUNDS)]

    def fed(images) -> dict:
        answer(handler, images)
        return dict(zip(handler.drift.names, handler.drift.last))

    same = fed(fresh)
    assert max(same.values()) < 0.3, same
    dark = fed([ImageEnhance.Brightness(image).enhance(0.4) for image in fresh])
    assert min(dark[f"{c}_mean"] for c in ("red", "green", "blue")) > 1.0, dark
