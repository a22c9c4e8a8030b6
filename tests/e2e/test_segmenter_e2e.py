"""The scene segmenter, built by `tskit build --handler image_segmenter`, served by a real TorchServe whose Python
does not have this project installed (the archive carries the handler, the model file and the trunk it imports)."""
import base64
import concurrent.futures
import io
import subprocess

import numpy as np
import pytest
from PIL import Image

from export.zoo.detection import scene_inputs, scene_png
from export.zoo.scene_segmenter import SEGMENT_CLASSES
from export.zoo.segmentation import (
    SEGMENTER_NAME, answer_mask, heldout_scenes, segmentation_quality, write_segmenter_files,
)
from tests.e2e.conftest import REPO, TSKIT
from tskit.properties import serve_overrides
from tskit.server import TorchServeProcess

MODEL = SEGMENTER_NAME
SETTINGS = {"minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 10, "responseTimeout": 120}


@pytest.fixture(scope="module")
def segmenter_mar(tmp_path_factory):
    """The archive through the CLI, three held-out scenes as its golden cases (no drift reference: not tested
    here, and computing it would double the build)."""
    work = tmp_path_factory.mktemp("segmenter-e2e")
    files = write_segmenter_files(work)
    golden = work / "golden"
    golden.mkdir()
    for item in scene_inputs(heldout_scenes(3), "scene"):
        (golden / item.name).write_bytes(item.payload)
    store = work / "model_store"
    cmd = TSKIT + ["build", MODEL, "--serialized-file", files["serialized_file"], "--model-file", files["model_file"],
                   "--handler", "image_segmenter", "--labels", files["labels"], "--config", files["config"],
                   "--extra-files", *files["extra_files"], "--golden", str(golden), "--export-path", str(store)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return store / f"{MODEL}.mar"


@pytest.fixture(scope="module")
def segmenter_server(segmenter_mar, stock_python, tmp_path_factory):
    ts = TorchServeProcess(tmp_path_factory.mktemp("ts-segmenter"), REPO / "config.properties", segmenter_mar.parent,
                           python=stock_python, overrides=serve_overrides({MODEL: SETTINGS}))
    with ts:
        yield ts


def mask_of(response):
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["labels"] == SEGMENT_CLASSES and abs(sum(body["classes"].values()) - 1) <= 1e-5
    return body, answer_mask(body)


def test_held_out_scenes_over_http_concurrently(segmenter_server):
    # measured through the handler on these 12 scenes (2-core machine): mIoU 0.847, pixel accuracy 0.957
    scenes = heldout_scenes(12)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:  # concurrent requests get batched
        responses = list(pool.map(lambda s: segmenter_server.client.predict(MODEL, scene_png(s[0])), scenes))
    masks = [mask_of(r)[1] for r in responses]
    assert all(mask.shape == (256, 256) for mask in masks)
    quality = segmentation_quality(masks, [mask for _, mask in scenes])
    assert quality["miou"] >= 0.75 and quality["pixel_accuracy"] >= 0.92, quality
    assert "loaded eager model" in segmenter_server.log()  # in the stock Python: the archive is self-contained


def test_a_large_jpeg_gets_a_mask_of_its_own_size(segmenter_server):
    image, truth = heldout_scenes(1)[0]
    buf = io.BytesIO()
    image.resize((1536, 1024), Image.BICUBIC).save(buf, format="JPEG", quality=95)  # draft-decoded at half size
    body, mask = mask_of(segmenter_server.client.predict(MODEL, buf.getvalue()))
    assert (body["width"], body["height"]) == (1536, 1024) and mask.shape == (1024, 1536)
    expected = Image.fromarray(truth).resize((1536, 1024), Image.NEAREST)
    assert (mask == expected).mean() >= 0.9


def test_bad_request_is_a_json_4xx_and_the_worker_survives(segmenter_server):
    r = segmenter_server.client.predict(MODEL, b"this is text, not an image")
    assert r.status_code == 415
    assert r.json()["code"] == 415 and "not an image" in r.json()["message"]
    mask_of(segmenter_server.client.predict(MODEL, scene_png(heldout_scenes(1)[0][0])))
    assert segmenter_server.client.ready_workers(MODEL) == 1


def test_explanations_over_http(segmenter_server):
    """The target's saliency with its heatmap; a bad target is a JSON 400."""
    c = segmenter_server.client
    image, truth = heldout_scenes(1)[0]
    data = base64.b64encode(scene_png(image)).decode()
    areas = np.bincount(truth.ravel(), minlength=len(SEGMENT_CLASSES))
    wanted = SEGMENT_CLASSES[int(areas[1:].argmax()) + 1]  # the largest object in the scene
    r = c.inference("POST", f"/explanations/{MODEL}", json={"data": data, "target": wanted}, timeout=300)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["target"] == wanted and body["method"] == "saliency" and body["input_size"] == [256, 256]
    assert base64.b64decode(body["heatmap_png"])[:4] == b"\x89PNG"
    assert body["mass_in_target"] >= 1.5 * body["target_share"] > 0, body
    bad = c.inference("POST", f"/explanations/{MODEL}", json={"data": data, "target": "unicorn"}, timeout=300)
    assert bad.status_code == 400 and bad.json()["type"] == "BadTarget"
    assert c.ready_workers(MODEL) == 1


def test_verify_against_the_live_server(segmenter_server, segmenter_mar):
    cli = subprocess.run(TSKIT + ["verify", str(segmenter_mar), "--url", segmenter_server.client.inference_url,
                                  "--workdir", str(segmenter_server.workdir)], capture_output=True, text=True, cwd=REPO)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.count("ok    live http://127.0.0.1:") == 3 and "PASSED" in cli.stdout
