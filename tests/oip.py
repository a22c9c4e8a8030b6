"""Clients for the two KServe protocols against a live TorchServe: Open Inference Protocol (v2) through
tritonclient's HTTP client, KServe v1 as plain JSON over HTTP (v1 has no client library of its own)."""
import json
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import tritonclient.http as triton

from tskit.properties import serve_overrides
from tskit.server import TorchServeProcess

REPO = Path(__file__).resolve().parent.parent

DATATYPES = {np.dtype("uint8"): "UINT8", np.dtype("float32"): "FP32", np.dtype("int64"): "INT64"}


def v2_client(server) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(urlparse(server.client.inference_url).netloc, network_timeout=120)


def v2_input(name: str, value) -> triton.InferInput:
    """A str or bytes becomes a BYTES input of shape [1]; an array keeps its dtype and shape."""
    array = np.array([value], dtype=object) if isinstance(value, (str, bytes)) else np.asarray(value)
    item = triton.InferInput(name, list(array.shape), "BYTES" if array.dtype == object else DATATYPES[array.dtype])
    item.set_data_from_numpy(array, binary_data=False)
    return item


def v2_infer(server, model: str, inputs: dict) -> dict:
    """{input name: answer}: a JSON output decoded, an FP32 output as a flat array."""
    result = v2_client(server).infer(model, [v2_input(name, value) for name, value in inputs.items()],
                                     headers=server.client._headers("inference"))
    answers = {}
    for output in result.get_response()["outputs"]:
        data = result.as_numpy(output["name"])
        answers[output["name"]] = json.loads(data[0]) if output["datatype"] == "BYTES" else data
    return answers


def v1_predict(server, model: str, body: dict, verb: str = "predict"):
    """POST /v1/models/MODEL:predict (or `verb="explain"`)."""
    return server.client.inference("POST", f"/v1/models/{model}:{verb}", json=body, timeout=120)


def v2_post(server, model: str, timeout: float = 120, **kwargs):
    """A raw v2 request, for what a client library would not send (bad inputs, broken bodies); `headers` add
    to the inference key."""
    return server.client.inference("POST", f"/v2/models/{model}/infer", timeout=timeout, **kwargs)


def kserve_server(store: Path, workdir: Path, envelope: str) -> TorchServeProcess:
    """The shipped config.properties serving every archive of `store` behind `service_envelope=envelope`."""
    names = sorted(p.stem for p in store.glob("*.mar"))
    models = serve_overrides({n: {"minWorkers": 1, "maxWorkers": 1, "batchSize": 1} for n in names})
    return TorchServeProcess(workdir, REPO / "config.properties", store, overrides={
        **models, "service_envelope": envelope, "ts_open_inference_protocol": "true"})
