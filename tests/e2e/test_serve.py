"""The default archive, built by `tskit build`, served by a real TorchServe over real HTTP."""
import base64
import concurrent.futures
import io
import random

import pytest
import requests
from PIL import Image, ImageEnhance, ImageOps

from export.zoo import DEFAULT_NAME, SAMPLE_TOP1, guard_images
from tskit.alerts import alert_metric_names
from tskit.client import read_keys

from tests.e2e.conftest import tskit_cli, wait_drift

MODEL = DEFAULT_NAME


def top1(response) -> str:
    assert response.status_code == 200, response.text
    return next(iter(response.json()))


def test_server_is_healthy_with_the_configured_workers(server):
    assert server.client.ping()
    [version] = server.client.describe(MODEL)
    assert version["batchSize"] == 8 and version["maxBatchDelay"] == 5
    assert server.client.ready_workers(MODEL) == 2


@pytest.mark.parametrize("name", sorted(SAMPLE_TOP1))
def test_real_photos_over_http(server, photo_bytes, name):
    assert top1(server.client.predict(MODEL, photo_bytes[name])) in SAMPLE_TOP1[name]


def test_put_like_curl_T(server, photo_bytes):
    c = server.client
    r = c.inference("PUT", f"/predictions/{MODEL}", data=photo_bytes["coffee.png"], timeout=60)
    assert top1(r) == "espresso"


def test_multipart_and_base64_json(server, photo_bytes):
    c, coffee = server.client, photo_bytes["coffee.png"]
    multipart = c.inference("POST", f"/predictions/{MODEL}", files={"data": ("coffee.png", coffee)}, timeout=60)
    as_json = c.inference("POST", f"/predictions/{MODEL}", json={"data": base64.b64encode(coffee).decode()}, timeout=60)
    assert top1(multipart) == top1(as_json) == "espresso"


def test_concurrent_requests_are_batched_and_all_correct(server, photo_bytes):
    names = sorted(SAMPLE_TOP1) * 6
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda n: server.client.predict(MODEL, photo_bytes[n]), names))
    assert [top1(r) in SAMPLE_TOP1[n] for n, r in zip(names, responses)] == [True] * len(names)


def test_bad_input_is_a_json_4xx_and_the_worker_survives(server, photo_bytes):
    r = server.client.predict(MODEL, b"this is text, not an image")
    assert r.status_code == 415
    assert r.json()["code"] == 415 and "not an image" in r.json()["message"]
    assert top1(server.client.predict(MODEL, photo_bytes["coffee.png"])) == "espresso"
    assert server.client.ready_workers(MODEL) == 2


def test_model_log_carries_request_ids_timings_and_reasons(server, photo_bytes):
    ok = server.client.predict(MODEL, photo_bytes["coffee.png"])
    bad = server.client.predict(MODEL, b"not an image at all")
    assert ok.status_code == 200 and bad.status_code == 415
    timing = f"[{ok.headers['x-request-id']}]: preprocess"
    reason = f"request {bad.headers['x-request-id']} rejected (415 UnsupportedMediaType): payload is not an image"
    log = server.wait_log(timing, reason)
    assert timing in log and "ms, postprocess" in log
    assert reason in log


def test_explanations_endpoint(server, photo_bytes):
    c = server.client
    r = c.inference("POST", f"/explanations/{MODEL}", data=photo_bytes["chelsea.png"], timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["target"] in SAMPLE_TOP1["chelsea.png"] and len(body["attributions"]) == 224
    assert base64.b64decode(body["heatmap_png"])[:4] == b"\x89PNG"


def test_requests_without_the_token_are_refused(server, photo_bytes):
    c = server.client
    r = requests.post(f"{c.inference_url}/predictions/{MODEL}", data=photo_bytes["coffee.png"], timeout=30)
    assert r.status_code == 400  # TorchServe 0.12 answers a missing token with 400
    assert "Token Authorization failed" in r.json()["message"]
    assert requests.get(f"{c.management_url}/models", timeout=30).status_code == 400


def test_scale_workers_through_the_management_api(server, photo_bytes):
    c = server.client
    c.scale(MODEL, 1, 1)
    assert c.ready_workers(MODEL) == 1
    assert top1(c.predict(MODEL, photo_bytes["coffee.png"])) == "espresso"
    c.scale(MODEL, 2, 2)
    assert c.ready_workers(MODEL) == 2


def test_cli_reads_the_key_file(server, photos):
    predict = tskit_cli(server, "predict", MODEL, str(photos["coffee.png"]))
    assert predict.returncode == 0, predict.stderr
    assert "espresso" in predict.stdout
    status = tskit_cli(server, "status")
    assert status.returncode == 0 and "READY" in status.stdout


def listening_addresses(ports: set[int]) -> dict[int, str]:
    """{port: local address (hex, as the kernel writes it)} of the LISTEN sockets on `ports`."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, port = local.rsplit(":", 1)
                if state == "0A" and int(port, 16) in ports:
                    found[int(port, 16)] = address
    return found


def test_every_listener_is_bound_to_loopback_only(server):
    ports = {int(str(server.props[key]).rsplit(":", 1)[-1]) for key in
             ("inference_address", "management_address", "metrics_address", "grpc_inference_port",
              "grpc_management_port")}
    found = listening_addresses(ports)
    assert set(found) == ports, f"not listening: {ports - set(found)}"
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}  # 127.0.0.1 in tcp and tcp6 (v4-mapped)
    assert all(address in loopback for address in found.values()), found


def test_a_wrong_or_misplaced_key_is_refused(server, photo_bytes):
    c = server.client
    keys = read_keys(server.workdir / "key_file.json")
    for key in ("not-the-key", keys["management"]):  # the management key opens no inference door
        r = requests.post(f"{c.inference_url}/predictions/{MODEL}", data=photo_bytes["coffee.png"], timeout=30,
                          headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 400 and "Token Authorization failed" in r.json()["message"]


def test_the_shipped_config_refuses_model_registration(server):
    for method, path in (("POST", f"/models?url={MODEL}.mar&model_name=again"), ("DELETE", f"/models/{MODEL}")):
        r = server.client.management(method, path)
        assert r.status_code == 405, r.text
        assert "not allowed" in r.json()["message"]
    assert server.client.ready_workers(MODEL) == 2  # still serving


def test_drift_gauge_rises_with_darkened_photos(server):
    """The archive's reference is the guard photos; each worker scores its last 48 requests (E2E_DRIFT)."""
    photos = [ImageOps.mirror(Image.open(io.BytesIO(data)).convert("RGB")) for data in guard_images().values()]
    random.Random(0).shuffle(photos)  # each worker's window then holds a spread of the photos

    def send(images) -> None:
        bodies = []
        for image in images:
            buf = io.BytesIO()
            image.save(buf, format="JPEG", quality=85)
            bodies.append(buf.getvalue())
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert all(r.status_code == 200 for r in pool.map(lambda b: server.client.predict(MODEL, b), bodies))

    channels = ("red_mean", "green_mean", "blue_mean")
    send(photos)  # in distribution: mirrored reference photos, about half of them per worker
    before = wait_drift(server.client, lambda v: all(v.get(c, 9) < 1.0 for c in channels), "mirrored photos",
                        ModelName=MODEL)
    send([ImageEnhance.Brightness(p).enhance(0.4) for p in photos])
    after = wait_drift(server.client, lambda v: min(v[c] for c in channels) > 2.0, "darkened photos",
                       ModelName=MODEL)
    for channel in channels:
        assert before[channel] < 1.0 < 2.0 < after[channel], (before, after)
    warning = "input drift: PSI above 0.20 for red_mean, green_mean, blue_mean"
    assert warning in server.wait_log(warning, timeout=120)


def test_every_metric_the_alerts_read_is_exported(server):
    """config/alerts.yml against a live scrape: TorchServe lists every declared metric (a `# TYPE` line even
    before its first sample)."""
    missing = alert_metric_names() - set(server.client.metric_samples())
    assert not missing, f"alerts read metrics this TorchServe does not export: {missing}"
