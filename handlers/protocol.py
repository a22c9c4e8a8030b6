"""KServe v1 and Open Inference Protocol (v2) requests, as TorchServe's request envelopes hand them over.

With `service_envelope=kserve` (v1) or `kservev2` (v2) in config.properties, TorchServe 0.12 unpacks every
request before `handle` sees it and packs what `handle` returns:

    kserve    {"instances": [...]}  ->  the instances           answers -> {"predictions": [...]}
    kservev2  {"id", "inputs": [...]}  ->  the inputs, each      answers -> {"id", "model_name", "model_version",
              {name, shape, datatype, data}: a BYTES input's        "outputs": [one per input, named after it]}
              data cut to its first element, other data
              reshaped to `shape`

The envelope is server-wide (the frontend writes it into every model it registers, whatever the archive
says) and reads only the first request of a TorchServe batch, so a model behind it runs with batchSize 1;
the instances (inputs) of that one request are the handler's batch. TorchServe tells the handler nothing
about the envelope, so `handle` looks at its caller (`calling_envelope`).

Each instance becomes `{"body": instance}` and each v2 input `{"body": data}`, which the task decoders already
read (base64 or JSON objects for images, strings for text, nested lists for tensors); a UINT8 [H, W, 3] input
is an image given as pixels (`tensor_image`). A bad instance gets its `{code, type, message}` in its place
and gives the request its 4xx; the other instances are answered. v2 answers become output data: numbers an
FP32 tensor, anything else (label scores, detections, errors) one BYTES element holding its JSON.
"""
import json
import math
from contextlib import contextmanager

import numpy as np
from PIL import Image

from handlers.contract import addressed_as
from handlers.errors import BadInput
from handlers.payload import REJECTED

ENVELOPES = {"KServeEnvelope": "kserve", "KServev2Envelope": "kservev2"}
V2_INPUT = "kserve_v2_input"  # the request key holding a v2 input's name, datatype and shape
IMAGE_DATATYPES = ("UINT8",)


class V2Meta(dict):
    """A v2 input's name, datatype and shape under `V2_INPUT`: a type of its own, which no decoded body or
    multipart field can be, so a client's field named `kserve_v2_input` is not taken for one."""


def calling_envelope(frame) -> str | None:
    """'kserve' or 'kservev2' when `frame`, the caller of `handle`, is TorchServe's envelope of that name."""
    from ts.torch_handler.request_envelope.base import BaseEnvelope

    caller = frame.f_locals.get("self") if frame is not None else None
    return ENVELOPES.get(type(caller).__name__) if isinstance(caller, BaseEnvelope) else None


def answer_envelope(handler, kind: str, items, context) -> list:
    """Answer one request's instances (v1) or inputs (v2) through `handler.handle_requests`."""
    if not items or not isinstance(items, list):  # v1 `instances` may be any JSON: true, a string, an object
        return nothing_to_answer(kind, context)
    requests = [v1_request(item) if kind == "kserve" else v2_request(item) for item in items]
    with one_request_per_item(context, len(requests)):
        answers = handler.handle_requests(requests, context)
    return [v2_output(answer) for answer in answers] if kind == "kservev2" else answers


def nothing_to_answer(kind: str, context) -> list:
    """A v1 request without a list of instances gets its 400 here. The v2 envelope cannot pack an answer without inputs,
    so that request fails through TorchServe's own error path, still with a 400 and this message."""
    if kind == "kservev2":
        from ts.utils.util import PredictionException

        raise PredictionException('an Open Inference Protocol request needs at least one of "inputs"', 400)
    err = BadInput('a KServe v1 request carries its inputs as {"instances": [...]} (at least one)',
                   kind="MissingInstances")
    context.set_response_status(err.status, err.message, idx=0)
    return [err.to_response()]


def v1_request(instance) -> dict:
    return {"body": instance}


def v2_request(item) -> dict:
    """One v2 input as a request dict. A BYTES input with more than one element reaches the handler cut to its
    first by TorchServe's envelope: that input is rejected rather than answered for a part of it."""
    if not isinstance(item, dict) or "datatype" not in item:
        return {REJECTED: BadInput("an Open Inference Protocol input needs name, shape, datatype and data")}
    meta = V2Meta((key, item.get(key)) for key in ("name", "datatype", "shape"))
    request = {"body": item.get("data"), V2_INPUT: meta}
    shape = meta["shape"] if isinstance(meta["shape"], list) else []
    if meta["datatype"] == "BYTES" and not (all(isinstance(d, int) for d in shape) and math.prod(shape) == 1):
        request[REJECTED] = BadInput(
            f"input {meta['name']!r}: TorchServe's kservev2 envelope passes only the first element of a BYTES "
            f"input, this one has shape {shape}; send one input per item", kind="ShapeMismatch")
    return request


@contextmanager
def one_request_per_item(context, n: int):
    """Let the handler address every item as a request of its own (`set_response_status(idx=i)`, request
    headers, ids) while all of them are the one HTTP request the envelope unpacked: its status is the last
    bad item's 4xx."""
    request_id = (context.request_ids or {}).get(0, "0")
    with addressed_as(context, [context.request_processor[0]] * n, {i: f"{request_id}[{i}]" for i in range(n)}):
        yield


def v2_output(answer):
    """What the envelope turns into one output: `np.array(answer).flatten()`, its datatype from the dtype."""
    if is_numbers(answer):
        return np.asarray(answer, dtype=np.float32)
    return json.dumps(answer)


def is_numbers(value) -> bool:
    """A number or (nested) non-empty lists of numbers; bools are not numbers."""
    if isinstance(value, list):
        return bool(value) and all(is_numbers(v) for v in value)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def tensor_image(request) -> Image.Image | None:
    """A v2 input of pixels (UINT8, shape [H, W, 3] or [1, H, W, 3]) as an RGB image; None for any request
    that is not a numeric v2 input (bytes, base64, JSON go through the image decoder)."""
    meta = request.get(V2_INPUT) if isinstance(request, dict) else None
    if not isinstance(meta, V2Meta) or meta["datatype"] == "BYTES":
        return None
    shape = list(meta["shape"] or [])
    if shape[:1] == [1] and len(shape) == 4:
        shape = shape[1:]
    if meta["datatype"] not in IMAGE_DATATYPES or len(shape) != 3 or shape[2] != 3:
        raise BadInput(f"input {meta['name']!r}: an image is BYTES (the file, base64) or UINT8 pixels of shape "
                       f"[H, W, 3]; got {meta['datatype']} {meta['shape']}", kind="ShapeMismatch")
    pixels = np.asarray(request["body"])
    if pixels.size != math.prod(shape) or pixels.dtype.kind not in "iu" or pixels.min() < 0 or pixels.max() > 255:
        raise BadInput(f"input {meta['name']!r}: UINT8 pixels are integers 0..255, {shape[0]}x{shape[1]}x3 of them",
                       kind="DTypeMismatch")
    return Image.fromarray(pixels.reshape(shape).astype(np.uint8), "RGB")
