"""The segmenter's training data: the detector's scenes with their class masks, and the quality arithmetic.

Asking for the mask must not change a scene (the detector's trained model and tests depend on them), and the
mask must say what the scene shows."""
import numpy as np
import pytest

from export.zoo.detection import CLASSES, HELDOUT_BACKGROUNDS, HELDOUT_SEED, TRAIN_BACKGROUNDS, TRAIN_SEED, make_scenes
from export.zoo.scene_segmenter import SEGMENT_CLASSES
from export.zoo.segmentation import segmentation_quality


@pytest.mark.parametrize("seed, backgrounds", [(TRAIN_SEED, TRAIN_BACKGROUNDS), (HELDOUT_SEED, HELDOUT_BACKGROUNDS)])
def test_the_mask_leaves_the_detectors_scenes_as_they_were(seed, backgrounds):
    plain = make_scenes(40, seed, backgrounds)
    masked = make_scenes(40, seed, backgrounds, with_mask=True)
    for (image, boxes, labels), (m_image, m_boxes, m_labels, _) in zip(plain, masked):
        assert image.tobytes() == m_image.tobytes() and boxes == m_boxes and labels == m_labels


def test_each_mask_shows_its_scenes_objects():
    """Every object pixel lies in a box of its class; the box of the last object pasted is all its class
    (nothing covers it), except the horse silhouette, which covers only part of its box."""
    horse = CLASSES.index("horse")
    seen_horse = False
    for image, boxes, labels, mask in make_scenes(40, TRAIN_SEED, TRAIN_BACKGROUNDS, with_mask=True):
        assert mask.shape == (image.height, image.width) and mask.dtype == np.uint8
        inside = np.zeros_like(mask, dtype=bool)
        for (x1, y1, x2, y2), label in zip(boxes, labels):
            inside[y1:y2, x1:x2] |= mask[y1:y2, x1:x2] == label + 1
        assert ((mask > 0) <= inside).all()
        (x1, y1, x2, y2), last = boxes[-1], labels[-1]
        share = (mask[y1:y2, x1:x2] == last + 1).mean()
        if last == horse:
            seen_horse = True
            assert 0.1 < share < 0.9
        else:
            assert share == 1.0
    assert seen_horse


def test_iou_per_class_mean_and_pixel_accuracy():
    truth = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    predicted = np.array([[0, 0, 0, 1], [0, 0, 1, 1]])
    quality = segmentation_quality([predicted], [truth], ["background", "cat", "coffee"])
    assert quality["iou"] == {"background": 4 / 5, "cat": 3 / 4}  # coffee occurs nowhere: not averaged
    assert quality["miou"] == pytest.approx((4 / 5 + 3 / 4) / 2)
    assert quality["pixel_accuracy"] == 7 / 8
    assert len(SEGMENT_CLASSES) == len(CLASSES) + 1 and SEGMENT_CLASSES[0] == "background"
