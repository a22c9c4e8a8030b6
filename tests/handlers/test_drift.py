"""Drift monitoring: PSI math, the sliding window, and the default archive's handler on shifted photos."""
import io
import logging
import math

import numpy as np
import pytest
from PIL import Image, ImageEnhance, ImageOps

from export.zoo import guard_images
from handlers.drift import EPS, DriftMonitor, bin_index, psi, read_reference, reference_stats
from handlers.image_classifier import ImageClassifier
from tskit.testing import load_handler, run_batch


def test_psi_of_known_distributions():
    assert psi([[0.25] * 4], [[0.25] * 4])[0] == 0
    expected = (0.5 - 0.9) * math.log(0.5 / 0.9) + (0.5 - 0.1) * math.log(0.5 / 0.1)
    assert psi([[0.5, 0.5]], [[0.9, 0.1]])[0] == pytest.approx(expected)
    # an empty bin counts as EPS, so the PSI is large but finite
    assert psi([[1.0, 0.0]], [[0.5, 0.5]])[0] == pytest.approx(0.5 * math.log(0.5 / 0.5)
                                                             + (0.5 - EPS) * math.log(0.5 / EPS) + 0.5 * math.log(2))
    # bins empty on both sides (padding of a feature with fewer bins) add nothing
    assert psi([[0.5, 0.5, 0.0]], [[0.5, 0.5, 0.0]])[0] == 0


def test_reference_stats_are_quantile_bins_and_ties_merge():
    rng = np.random.default_rng(0)
    normal = rng.normal(size=5000)
    mostly_zero = np.where(rng.random(5000) < 0.8, 0.0, rng.random(5000))
    ref = reference_stats(np.stack([normal, mostly_zero], axis=1), ["normal", "mostly_zero"])
    normal_ref, zero_ref = ref["features"]
    assert len(normal_ref["edges"]) == 9 and normal_ref["edges"][4] == pytest.approx(0, abs=0.05)
    assert np.allclose(normal_ref["shares"], 0.1, atol=0.002)
    # deciles 1..8 are all 0: one edge at 0, everything at 0 in the bin above it
    assert zero_ref["edges"][0] == 0 and zero_ref["shares"][0] == 0 and zero_ref["shares"][1] >= 0.8
    assert sum(zero_ref["shares"]) == pytest.approx(1)


def test_window_counts_match_a_recount_of_the_last_rows():
    rng = np.random.default_rng(1)
    ref = reference_stats(rng.normal(size=(1000, 3)), ["a", "b", "c"])
    monitor = DriftMonitor(ref, window=50, min_count=20, every=10, threshold=0.2)
    seen = []
    for n in (7, 30, 1, 64, 13):  # batches smaller and larger than the window
        rows = rng.normal(size=(n, 3))
        monitor.observe(rows)
        seen.append(rows)
    last = np.concatenate(seen)[-50:]
    recount = np.stack([np.bincount(b, minlength=monitor.bins) for b in bin_index(last, monitor.edges).T])
    assert np.array_equal(monitor.counts[:, :monitor.bins], recount)
    assert monitor.filled == 50


def test_shift_raises_the_psi_and_the_window_forgets_it():
    rng = np.random.default_rng(2)
    ref = reference_stats(rng.normal(size=(2000, 2)), ["a", "b"])
    monitor = DriftMonitor(ref, window=400, min_count=100, every=50, threshold=0.2)
    assert not monitor.observe(rng.normal(size=(99, 2)))  # below min_count: nothing to score yet
    assert monitor.observe(rng.normal(size=(301, 2)))
    assert monitor.score().max() < 0.1 and not monitor.drifted
    monitor.observe(rng.normal(size=(400, 2)) + [1.0, 0.0])  # feature a shifts by one standard deviation
    values = monitor.score()
    assert values[0] > 0.5 and values[1] < 0.1 and monitor.drifted == ["a"]
    monitor.observe(rng.normal(size=(400, 2)))
    assert monitor.score().max() < 0.1


def jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


@pytest.fixture(scope="module")
def mirrored():
    """The guard photos (the default archive's drift reference), mirrored: new pixels, the same statistics."""
    return [ImageOps.mirror(Image.open(io.BytesIO(data)).convert("RGB")) for data in guard_images().values()]


@pytest.fixture(scope="module")
def watched(default_model_dir):
    """The default archive's handler with a drift window as large as its reference set."""
    drift = {"drift_window": 96, "drift_min_count": 96, "drift_every": 96, "precision": "fp32"}
    return load_handler(ImageClassifier, default_model_dir, yaml_overrides={"handler": drift})


def feed(handler, payloads: list[bytes]) -> dict[str, float]:
    for start in range(0, len(payloads), 8):
        results = run_batch(handler, [{"body": p} for p in payloads[start:start + 8]])
        assert all(status == 200 for status, _ in results), results
    return dict(zip(handler.drift.names, handler.drift.last))


def test_default_archive_carries_its_reference(default_model_dir):
    ref = read_reference(default_model_dir)
    assert ref["inputs"] == ref["rows"] == 96
    assert [f["name"] for f in ref["features"]] == ["red_mean", "green_mean", "blue_mean", "red_std", "green_std",
                                                    "blue_std", "top1_probability"]


def test_photos_like_the_reference_stay_low_darkened_and_tinted_ones_drift(watched, mirrored, caplog):
    def views(transform):
        return [jpeg(transform(image)) for image in mirrored]

    caplog.set_level(logging.WARNING, logger="handlers.base")
    same = feed(watched, views(lambda im: im))
    # mirrored photos: the same pixel statistics; the model's confidence moves a little, under the threshold
    assert max(v for name, v in same.items() if name != "top1_probability") < 0.05, same
    assert max(same.values()) < watched.drift.threshold and not watched.drift.drifted, same
    assert "input drift" not in caplog.text

    dark = feed(watched, views(lambda im: ImageEnhance.Brightness(im).enhance(0.5)))
    assert min(dark[f"{c}_mean"] for c in ("red", "green", "blue")) > 1.0, dark
    assert "input drift: PSI above 0.20 for red_mean, green_mean, blue_mean" in caplog.text

    tinted = feed(watched, views(lambda im: Image.merge("RGB", (im.getchannel("R").point(lambda v: min(255, v + 60)),
                                                              im.getchannel("G"), im.getchannel("B")))))
    assert tinted["red_mean"] > 1.0 and tinted["green_mean"] < 0.1 and tinted["blue_mean"] < 0.1, tinted


def test_a_failing_drift_monitor_turns_off_and_requests_still_succeed(default_model_dir, photo_bytes, caplog):
    handler = load_handler(ImageClassifier, default_model_dir, yaml_overrides={"handler": {"drift_min_count": 1}})
    handler.drift.names = ["something else"]  # features that no longer match the reference
    results = run_batch(handler, [{"body": photo_bytes["coffee.png"]}])
    assert results[0][0] == 200 and next(iter(results[0][1])) == "espresso"
    assert handler.drift is None and "drift monitoring failed and is now off" in caplog.text
