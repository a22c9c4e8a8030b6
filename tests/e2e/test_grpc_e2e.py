"""TorchServe 0.12's gRPC APIs (inference and management) with this project's default archive: one real server
for the module, the protos compiled from its own frontend jar by tskit.grpc_client."""
import json

import grpc
import pytest

from export.zoo import DEFAULT_NAME, SAMPLE_TOP1
from tests.e2e.conftest import tskit_cli
from tskit.grpc_client import GrpcClient, handler_error, status_code

MODEL = DEFAULT_NAME
NOT_AN_IMAGE = b"this is plain text, not an image"


@pytest.fixture(scope="module")
def grpc_cache(tmp_path_factory):
    """A fresh cache folder for the compiled protos, for this process and the `tskit` subprocesses."""
    with pytest.MonkeyPatch.context() as mp:
        folder = tmp_path_factory.mktemp("grpc-cache")
        mp.setenv("TSKIT_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def client(server, grpc_cache):
    with GrpcClient.from_config(server.config_file, server.workdir, timeout=300) as c:
        yield c


def top1(body) -> str:
    scores = json.loads(body)
    return max(scores, key=scores.get)


def worker_pids(c: GrpcClient) -> dict[str, int]:
    return {w["id"]: w["pid"] for v in c.describe(MODEL) for w in v["workers"] if w["status"] == "READY"}


def test_prediction_matches_http(client, server, photo_bytes):
    assert client.ping() == "Healthy"
    for name, photo in photo_bytes.items():
        body = client.predict(MODEL, photo)
        assert handler_error(body) is None and status_code(body) == 200
        assert name not in SAMPLE_TOP1 or top1(body) in SAMPLE_TOP1[name], name
        assert top1(body) == top1(server.client.predict(MODEL, photo).content), name
    # the field name is the handler's to read: `body` (as a raw HTTP body arrives) works as well as `data`
    assert top1(client.predict(MODEL, photo_bytes["coffee.png"], input_name="body")) == "espresso"


def test_grpc_has_no_explanations(client, photo_bytes):
    """0.12's inference.proto has no Explanations rpc, and Predictions passes no headers, so the handler never
    sees `explain: True`: an `explain` input field is just another field and the answer is a prediction."""
    service = client.pb.inference_pb2.DESCRIPTOR.services_by_name["InferenceAPIsService"]
    assert {m.name for m in service.methods} == {"Ping", "Predictions", "StreamPredictions", "StreamPredictions2"}
    body = client.predict(MODEL, photo_bytes["coffee.png"], inputs={"explain": b"True"})
    assert top1(body) == "espresso" and "attributions" not in json.loads(body)


def test_bad_input_is_grpc_ok_with_the_4xx_in_the_body(client, photo_bytes):
    before = worker_pids(client)
    request = client.pb.inference_pb2.PredictionsRequest(model_name=MODEL, input={"data": NOT_AN_IMAGE})
    response, call = client.inference_stub.Predictions.with_call(request, metadata=client.metadata("inference"),
                                                                 timeout=300)
    assert call.code() == grpc.StatusCode.OK
    error = handler_error(response.prediction)
    assert error is not None and error["code"] == 415 and error["type"] == "UnsupportedMediaType", response.prediction
    assert status_code(response.prediction) == 415
    assert not response.HasField("status")  # PredictionResponse.status is for StreamPredictions2 only
    # the worker that answered it is still serving, none was restarted
    assert top1(client.predict(MODEL, photo_bytes["coffee.png"])) == "espresso"
    assert worker_pids(client) == before


def test_token_is_required(client, photo_bytes):
    """No key, a wrong one or the other API's key: PERMISSION_DENIED (HTTP answers 400 for a missing key)."""
    photo = photo_bytes["coffee.png"]
    for metadata in ([], [("authorization", "Bearer not-the-key")], client.metadata("management")):
        with pytest.raises(grpc.RpcError) as refused:
            client.predict(MODEL, photo, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, metadata
        assert "Token Authorization failed" in refused.value.details()
    for metadata in ([], client.metadata("inference")):
        with pytest.raises(grpc.RpcError) as refused:
            client.describe(MODEL, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert top1(client.predict(MODEL, photo)) == "espresso"
    assert client.describe(MODEL)[0]["modelName"] == MODEL


def test_scale_workers_through_grpc_management(client, server):
    (before,) = client.describe(MODEL)
    workers, high = before["minWorkers"], before["maxWorkers"]
    target = workers - 1 if workers > 1 else workers + 1
    assert client.models()["models"] == [{"modelName": MODEL, "modelUrl": f"{MODEL}.mar"}]
    try:
        assert "Workers scaled" in client.scale(MODEL, target)
        (scaled,) = client.describe(MODEL)
        assert scaled["minWorkers"] == target and client.ready_workers(MODEL) == target
        assert server.client.ready_workers(MODEL) == target  # the HTTP management API sees the same server
    finally:
        client.scale(MODEL, workers, high)
    (after,) = client.describe(MODEL)
    assert (after["minWorkers"], after["maxWorkers"]) == (workers, high)
    server.client.wait_ready(MODEL, workers, timeout=300)
    assert client.ready_workers(MODEL) == workers


def test_cli_predict_grpc(server, grpc_cache, photos, tmp_path):
    ok = tskit_cli(server, "predict", MODEL, str(photos["coffee.png"]), "--grpc")
    assert ok.returncode == 0, ok.stderr
    assert top1(ok.stdout) == "espresso"
    (compiled,) = grpc_cache.glob("grpc/*/tskit_torchserve_grpc/inference_pb2.py")
    stamp = compiled.stat().st_mtime_ns

    text = tmp_path / "not_an_image.txt"
    text.write_bytes(NOT_AN_IMAGE)
    bad = tskit_cli(server, "predict", MODEL, str(text), "--grpc")
    assert bad.returncode == 1
    assert json.loads(bad.stdout)["code"] == 415  # the body is still printed
    assert len(bad.stderr.strip().splitlines()) == 1 and "answered 415" in bad.stderr, bad.stderr

    # compiled once: the second process imported what the first one compiled
    assert list(grpc_cache.glob("grpc/*/tskit_torchserve_grpc/inference_pb2.py")) == [compiled]
    assert compiled.stat().st_mtime_ns == stamp
