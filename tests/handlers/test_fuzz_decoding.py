"""Property-based fuzzing (hypothesis) of every task handler's request decoding, in-process (issue 13).

Each handler of `handlers.TASKS` runs on a small random-weight stand-in archive (tskit/stand_in.py; the segmenter
on a one-layer model written here), initialised as a TorchServe worker initialises it, and gets generated
requests in the form TorchServe hands them over (one dict per request: a raw body under `body`, multipart fields
under their names, an `application/json` body or field already decoded, a `text/*` one as `str`, any other as a
`bytearray`; `delivered` mirrors ts/protocol/otf_message_handler.py):

    raw_bytes   random bytes, bytes that open like a file format (PNG, JPEG, .npy, safetensors, JSON, ...), valid
                payloads of every task truncated or with bytes flipped, inserted, deleted, odd valid images, and
                .npy / safetensors headers of any dtype and shape (lying about the data or not)
    json        random and deeply nested JSON (lists, objects, numbers, strings, nulls, NaN), and arrays of numbers
                of random shapes, as the body of each content type
    multipart   random sets of form fields, the library's own request keys among their names
    kserve_v1   {"instances": [...]} through TorchServe's `kserve` envelope: random, near-valid and valid instances
    kserve_v2   {"inputs": [{name, shape, datatype, data}]} through the `kservev2` envelope: right keys with wrong
                shapes, datatypes and sizes, random values, and valid inputs

Properties: every request gets a 2xx, or a 4xx whose body is `{code, type, message}` with that code; never a 5xx;
every answer is JSON the worker can send (no NaN) with a one-line status phrase (it becomes the HTTP reason
phrase, where CR/LF cannot go); a valid request batched with the generated one (or a valid instance or input
beside it) gets the answer it gets alone; after each property the handler still answers the valid request alone.
A KServe body that TorchServe's own envelope cannot parse fails before the handler runs (TorchServe answers 503;
KServe's model server rejects such bodies in front of it: tests/e2e/test_kserve_v2_e2e.py): those are counted
(`envelope` in the printed statuses), not failed.

The examples tried per handler and strategy, and their answers' statuses, are printed (`pytest -rP` or `-s`).
Runs are seeded (TSKIT_FUZZ_SEED, default 13) so that CI is repeatable; another seed explores other inputs.
"""
import base64
import importlib
import io
import json
import logging
import math
import os
import struct
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from PIL import Image
from ts.context import RequestProcessor
from ts.model_loader import TsModelLoader
from ts.utils.util import PredictionException

import handlers
from export.archive import ArchiveSpec, build_archive
from export.golden import compare
from export.inprocess import load_handler, unpack_archive
from handlers import jpeg
from handlers.loading import load_module_class
from handlers.payload import REJECTED
from handlers.protocol import V2_INPUT
from tskit.stand_in import ROW_FEATURES, stand_in_files

SEED = int(os.environ.get("TSKIT_FUZZ_SEED", "13"))
EXAMPLES = int(os.environ.get("TSKIT_FUZZ_EXAMPLES", "100"))  # per handler and strategy
ATOL = 1e-4  # a batch of two against one alone: float rounding only
# torchvision's detection models pad a batch to its largest image, which moves a random-weight model's (many,
# low-score) detections: there a valid request is compared exactly only when its neighbours were all rejected
BATCH_DEPENDENT = ("object_detector",)
FP32 = {"precision": "fp32", "threads": 1}  # one thread: a loaded 2-core machine stalls two
# small inputs keep a model call cheap; the decoding code is the same at any size
CONFIGS = {
    "image_classifier": {"resize": 64, "crop": 56},
    "image_segmenter": {"size": 32},
    "object_detector": {"min_size": 64, "max_size": 128, "score_threshold": 0.05},
    "tensor": {},
    "text_classifier": {},
    "transformer_classifier": {},
    "sentence_embedder": {},
    "token_classifier": {},
}
IMAGE_TASKS = ("image_classifier", "image_segmenter", "object_detector")
TEXT_TASKS = ("text_classifier", "transformer_classifier", "sentence_embedder", "token_classifier")
VARIANTS = {task: (task, CONFIGS[task]) for task in handlers.TASKS}
if jpeg.available():  # the classifier's libjpeg-turbo path decodes JPEGs itself
    VARIANTS["image_classifier[turbojpeg]"] = ("image_classifier", {**CONFIGS["image_classifier"],
                                                                   "decoder": "turbojpeg"})
STRATEGIES = ("raw_bytes", "json", "multipart", "kserve_v1", "kserve_v2")
CASES = [(v, s) for v in VARIANTS for s in STRATEGIES if "turbojpeg" not in v or s == "raw_bytes"]

TINY_SEGMENTER = '''"""A stand-in segmenter: [N, 3, H, W] images to [N, 3, H/2, W/2] logits."""
import torch
from torch import nn


class TinySegmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 3, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)
'''


# ---- valid payloads ---------------------------------------------------------------------------------
def encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


PHOTO = Image.linear_gradient("L").convert("RGB").resize((48, 40))
PNG = encoded(PHOTO, "PNG")
ROW = [round(0.1 * i, 1) for i in range(ROW_FEATURES)]
FEATURES = [f"f{i}" for i in range(ROW_FEATURES)]
TEXT = "Call now to win a free prize"


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def safetensors(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


# seeds for mutation: every task's valid payload, whichever handler gets it
SEEDS = [PNG, encoded(PHOTO, "JPEG"), encoded(PHOTO, "JPEG", progressive=True), encoded(PHOTO, "GIF"),
         encoded(PHOTO, "BMP"), encoded(PHOTO, "TIFF"), encoded(PHOTO, "WEBP"), encoded(PHOTO.convert("L"), "PNG"),
         npy(np.array(ROW, dtype=np.float32)), npy(np.array([ROW, ROW], dtype=np.float64)),
         safetensors({"x": {"dtype": "F32", "shape": [ROW_FEATURES], "data_offsets": [0, 4 * ROW_FEATURES]}},
                     np.array(ROW, dtype=np.float32).tobytes()),
         json.dumps(ROW).encode(), json.dumps({"data": ROW}).encode(), json.dumps({"data": base64.b64encode(PNG)
                                                                                      .decode()}).encode(),
         TEXT.encode(), json.dumps({"text": TEXT}).encode(), base64.b64encode(PNG)]
MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"\xff\xd8\xff\xe1\x00\x10Exif\x00\x00", b"GIF89a", b"BM",
         b"II*\x00", b"MM\x00*", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"\x93NUMPY\x01\x00", b"\x93NUMPY\x02\x00",
         b"\x93NUMPY\x03\x00", b"P6\n", b"P5 1 1 65535\n", b"\x00\x00\x01\x00", b"8BPS", b"{", b"[", b"\xef\xbb\xbf",
         b"data:image/png;base64,", b'"', struct.pack("<Q", 2) + b"{}", struct.pack("<Q", 40) + b'{"',
         b"\x00" * 8]


def valid_request(task: str) -> dict:
    if task in IMAGE_TASKS:
        return {"body": bytearray(PNG)}
    return {"body": bytearray(TEXT.encode())} if task in TEXT_TASKS else {"body": list(ROW)}


def valid_instance(task: str):
    if task in IMAGE_TASKS:
        return {"b64": base64.b64encode(PNG).decode()}
    return TEXT if task in TEXT_TASKS else list(ROW)


def valid_v2_input(task: str) -> dict:
    if task == "tensor":
        return {"name": "valid", "shape": [ROW_FEATURES], "datatype": "FP32", "data": list(ROW)}
    data = TEXT if task in TEXT_TASKS else base64.b64encode(PNG).decode()
    return {"name": "valid", "shape": [1], "datatype": "BYTES", "data": [data]}


# ---- requests as TorchServe delivers them ------------------------------------------------------------
def delivered(payload: bytes, content_type: str):
    """A body or multipart field as the worker hands it to the handler (ts/protocol/otf_message_handler.py)."""
    if content_type == "application/json":
        try:
            return json.loads(payload.decode("utf-8"))
        except Exception:  # the worker forwards what it cannot decode as the bytes it got
            return bytearray(payload)
    if content_type.startswith("text"):
        try:
            return payload.decode("utf-8")
        except Exception:
            return bytearray(payload)
    return bytearray(payload)


CONTENT_TYPES = ["application/json", "text/plain", "application/octet-stream", "image/png", "multipart/mixed"]


# ---- strategies -------------------------------------------------------------------------------------
KEYS = ["data", "body", "b64", "image", "bytes", "text", "inputs", "instances", "name", "shape", "datatype", "id",
        "target", V2_INPUT, REJECTED, "f0", "f1"]
leaves = (st.none() | st.booleans() | st.integers() | st.integers(-2 ** 80, 2 ** 80) | st.floats()
          | st.text(max_size=24) | st.sampled_from(["", " ", "\n", TEXT, base64.b64encode(PNG).decode(), "aGVsbG8=",
                                                   "data:image/png;base64,", "\ufeff", "\x00"]))
often = st.sampled_from([True] * 5 + [False])  # mostly (hypothesis leans to the first items of a list)
json_values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=6)
                           | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), kids, max_size=5),
                           max_leaves=30)


@st.composite
def mutated(draw) -> bytes:
    """A valid payload as is, or truncated, or with bytes flipped, inserted, deleted or repeated."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "repeat"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        else:
            data[at:at] = data[at:at + 64] * draw(st.integers(1, 8))
    return bytes(data)


@st.composite
def odd_images(draw) -> bytes:
    """Valid files of odd images: any mode a format stores, 1-pixel and extreme-aspect sizes."""
    fmt, modes = draw(st.sampled_from([("PNG", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"]),
                                       ("JPEG", ["L", "RGB", "CMYK"]), ("GIF", ["L", "P"]),
                                       ("BMP", ["1", "L", "P", "RGB"]), ("TIFF", ["1", "L", "RGB", "RGBA", "CMYK",
                                                                                   "I;16", "I", "F"]),
                                       ("WEBP", ["RGB", "RGBA"]), ("ICO", ["RGBA"]), ("PPM", ["L", "RGB"])]))
    mode = draw(st.sampled_from(modes))
    long_side = draw(st.integers(1, 64) | st.integers(64, 3000))
    short_side = draw(st.integers(1, 8) | st.integers(1, 64))
    size = (long_side, short_side) if draw(st.booleans()) else (short_side, long_side)
    if fmt == "ICO":
        size = tuple(min(s, 256) for s in size)
    noise = Image.effect_noise(size, 64)  # mode L
    image = noise.convert(mode) if mode in ("I;16", "I", "F", "L") else noise.convert("RGB").convert(mode)
    return encoded(image, fmt)


@st.composite
def lying_npy(draw) -> bytes:
    """A .npy header of any dtype, order and shape (negative, huge, wrong), then bytes of any length."""
    descr = draw(st.sampled_from(["<f4", "<f8", "|u1", "<i8", "|b1", "<f2", ">f4", "<c8", "<U4", "|O", "|V8", "x"]))
    shape = tuple(draw(st.lists(st.sampled_from([ROW_FEATURES, 1, 2, 0, -1, 2 ** 40]), max_size=3)))
    order = draw(st.sampled_from(["False", "True", "0", "'x'"]))
    header = f"{{'descr': {descr!r}, 'fortran_order': {order}, 'shape': {shape}, }}"
    header = header.ljust(draw(st.integers(len(header), len(header) + 64))) + "\n"
    major = draw(st.sampled_from([1, 2, 3]))
    size = struct.pack("<H", len(header)) if major == 1 else struct.pack("<I", len(header))
    return b"\x93NUMPY" + bytes([major, 0]) + size + header.encode("latin-1") + draw(st.binary(max_size=256))


SAFETENSORS_DTYPES = {"F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "U16": 2,
                      "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8, "X": 4}


@st.composite
def lying_safetensors(draw) -> bytes:
    """A safetensors file of any dtype and shape, its header mostly true to its data, now and then lying."""
    dtype = draw(st.sampled_from(sorted(SAFETENSORS_DTYPES)))
    shape = draw(st.lists(st.sampled_from([ROW_FEATURES, 1, 2, 0, 3]), max_size=3))
    size = SAFETENSORS_DTYPES[dtype] * math.prod(shape)
    data = draw(st.binary(min_size=size, max_size=size))
    offsets = [0, size]
    if not draw(often):
        shape, offsets = draw(st.sampled_from([(shape + [-1], offsets), ([2 ** 40], offsets),
                                               (shape, [0, size + 1]), (shape, [size, 0]), (shape, ["0", None])]))
    name = draw(st.sampled_from(["x", "features", ""]))
    header = {name: {"dtype": dtype, "shape": shape, "data_offsets": offsets}}
    if not draw(often):
        header["__metadata__"] = draw(st.dictionaries(st.text(max_size=4), leaves, max_size=2))
    return safetensors(header, data)


raw_payloads = (st.binary(max_size=512) | st.builds(lambda m, b: m + b, st.sampled_from(MAGIC), st.binary(max_size=256))
                | mutated() | odd_images() | lying_npy() | lying_safetensors())


@st.composite
def numeric_arrays(draw):
    """Nested lists of numbers of random shapes, the rows' widths near the tensor schema's."""
    dims = draw(st.lists(st.sampled_from([0, 1, 2, 3, ROW_FEATURES - 1, ROW_FEATURES, ROW_FEATURES + 1, 17]),
                         min_size=0, max_size=3))
    number = draw(st.sampled_from(["finite", "float", "int", "mixed"]))
    values = {"finite": st.floats(-1e6, 1e6), "float": st.floats(width=64), "int": st.integers(-2 ** 70, 2 ** 70),
              "mixed": st.floats(-1e6, 1e6) | st.integers(-10, 10) | st.booleans() | st.none()}[number]
    size = math.prod(dims)
    flat = draw(st.lists(values, min_size=size, max_size=size)) if size <= 2000 else [0.5] * size
    array = np.array(flat, dtype=object).reshape(dims) if dims else (flat[0] if flat else 0.0)
    return array.tolist() if isinstance(array, np.ndarray) else array


@st.composite
def deeply_nested(draw) -> bytes:
    """A JSON text nested 1..3000 deep (the worker's json.loads gives up near 1000: the handler gets bytes)."""
    depth = draw(st.integers(1, 3000))
    leaf = json.dumps(draw(leaves))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"data":', "}"), ('{"inputs":[', "]}"), ("[[", "]]")]))
    return (opener * depth + leaf + closer * depth).encode()


def json_text(value) -> bytes:
    return json.dumps(value).encode()


@st.composite
def named_rows(draw):
    """Rows as {feature name: value} objects: the schema's names, some missing or extra, any values."""
    names = FEATURES if draw(often) else draw(st.lists(st.sampled_from(FEATURES + ["x", ""]),
                                                       max_size=ROW_FEATURES + 1))
    value = st.floats(-10, 10) if draw(often) else leaves
    row = st.fixed_dictionaries({name: value for name in names})
    return draw(row if draw(st.booleans()) else st.lists(row, min_size=1, max_size=3))


json_payloads = st.one_of(json_values.map(json_text), numeric_arrays().map(json_text), deeply_nested(),
                          named_rows().map(json_text),
                          st.fixed_dictionaries({"data": numeric_arrays() | json_values}).map(json_text))
any_payload = raw_payloads | json_payloads


@st.composite
def plain_requests(draw, payloads) -> dict:
    """One request of a raw body: `payloads` sent with a random content type."""
    return {"body": delivered(draw(payloads), draw(st.sampled_from(CONTENT_TYPES)))}


@st.composite
def multipart_requests(draw) -> dict:
    """A multipart form: 0..4 fields of random names (the library's own keys among them), each a payload of its
    own content type."""
    names = st.sampled_from(["data", "body", "text", "file", "image", "b64", V2_INPUT, REJECTED]) | st.text(max_size=8)
    fields = draw(st.dictionaries(names, st.tuples(any_payload, st.sampled_from(CONTENT_TYPES)), max_size=4))
    return {name: delivered(payload, content_type) for name, (payload, content_type) in fields.items()}


def b64_text(data: bytes) -> str:
    return base64.b64encode(data).decode()


instances = (json_values | numeric_arrays() | any_payload.map(b64_text)
             | st.builds(lambda k, v: {k: v}, st.sampled_from(["b64", "data", "image", "bytes", "text"]),
                         any_payload.map(b64_text) | json_values))


@st.composite
def kserve_v1_bodies(draw):
    """{"instances": [...]} with random instances, or a near-valid body (instances not a list, absent)."""
    kind = draw(st.sampled_from(["instances", "instances", "instances", "not a list", "no instances", "not an object"]))
    if kind == "instances":
        return {"instances": draw(st.lists(instances, max_size=4)), **draw(st.dictionaries(st.sampled_from(KEYS),
                                                                                           json_values, max_size=2))}
    if kind == "not a list":
        return {"instances": draw(json_values.filter(lambda v: not isinstance(v, list)))}
    if kind == "no instances":
        return draw(st.dictionaries(st.sampled_from(KEYS).filter(lambda k: k != "instances"), json_values, max_size=3))
    return draw(json_values.filter(lambda v: not isinstance(v, dict)))


V2_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                "FP64", "BYTES"]


@st.composite
def v2_inputs(draw) -> dict:
    """One v2 input: mostly the right keys (what the envelope can parse) with wrong or random shapes, datatypes,
    sizes and values; now and then a key missing or random JSON throughout."""
    kind = draw(st.sampled_from(["pixels", "sized", "bytes"] * 3 + ["random"]))
    usual = {"pixels": ["UINT8"], "sized": ["FP32", "INT64"], "bytes": ["BYTES"], "random": V2_DATATYPES}[kind]
    datatype = draw(st.sampled_from(usual) if draw(often) else st.sampled_from(V2_DATATYPES)
                    | st.sampled_from(["FLOAT", "bytes", "uint8", ""]) | leaves)
    if kind == "pixels":  # an image as UINT8 [H, W, 3] / [1, H, W, 3], sizes right or off
        h, w, c = draw(st.integers(0, 24)), draw(st.integers(0, 24)), draw(st.sampled_from([3, 3, 1, 4]))
        shape = [h, w, c] if draw(st.booleans()) else [1, h, w, c]
        size = h * w * c + (0 if draw(often) else draw(st.sampled_from([1, -1])))
        values = st.integers(-3, 258) | st.floats(-1, 300) if draw(st.booleans()) else st.integers(0, 255)
        data = draw(st.lists(values, min_size=max(0, size), max_size=max(0, size)))
    elif kind == "sized":  # data of the shape's size (what the envelope can reshape), or one off
        shape = draw(st.lists(st.sampled_from([1, 2, ROW_FEATURES, 3, 0, -1]), max_size=3))
        while abs(math.prod(shape)) > 4 * ROW_FEATURES:
            shape = shape[1:]
        size = abs(math.prod(shape)) + (0 if draw(often) else 1)
        data = draw(st.lists(st.floats(-1e3, 1e3) | st.integers(-300, 300) | leaves, min_size=size, max_size=size))
    elif kind == "bytes":
        shape = draw(st.sampled_from([[1], [1], [2], [], [1, 1], [0], [None], ["1"], [[1]]])
                     | st.lists(leaves, max_size=2))
        data = draw(st.lists(any_payload.map(b64_text) | st.text(max_size=40) | json_values, min_size=1, max_size=2))
    else:
        shape = draw(json_values)
        data = draw(json_values)
    item = {"name": draw(st.text(max_size=6) | leaves), "shape": shape, "datatype": datatype, "data": data}
    if not draw(often):
        del item[draw(st.sampled_from(["name", "shape", "datatype", "data"]))]
    return item


@st.composite
def kserve_v2_bodies(draw):
    kind = draw(st.sampled_from(["inputs"] * 8 + ["not a list", "random"]))
    if kind == "inputs":
        body = {"inputs": draw(st.lists(v2_inputs(), max_size=2))}
        if draw(st.booleans()):
            body["id"] = draw(st.text(max_size=8) if draw(often) else leaves)
        return body
    if kind == "not a list":
        return {"inputs": draw(json_values.filter(lambda v: not isinstance(v, list)))}
    return draw(json_values)


# ---- the handlers under test --------------------------------------------------------------------------
@dataclass
class Served:
    handler: object
    task: str
    reference: object  # the valid request's answer alone
    v1_reference: object = None
    v2_reference: object = None
    statuses: Counter = field(default_factory=Counter)


def build_stand_in(task: str, config: dict, work) -> "os.PathLike":
    files = work / "files"
    if task == "image_segmenter":  # no stand-in of its own: one conv layer giving [N, 3, H/2, W/2] logits
        files.mkdir(parents=True)
        model_file = files / "tiny_segmenter.py"
        model_file.write_text(TINY_SEGMENTER)
        torch.manual_seed(0)
        weights = files / "stand_in.pt"
        torch.save(load_module_class(str(model_file))().state_dict(), weights)
        labels = files / "index_to_name.json"
        labels.write_text(json.dumps({"0": "background", "1": "thing", "2": "other"}))
        spec = dict(serialized_file=str(weights), model_file=str(model_file), labels=str(labels), extra_files=[],
                    handler_config={})
    else:
        stand_in = stand_in_files(task, files)
        if task == "tensor":  # named features too, so that rows may come as {name: value} objects
            schema = json.loads((files / "tensor_schema.json").read_text())
            (files / "tensor_schema.json").write_text(json.dumps({**schema, "feature_names": FEATURES}))
        spec = dict(serialized_file=stand_in.serialized_file, model_file=stand_in.model_file, labels=stand_in.labels,
                    extra_files=stand_in.extra_files, handler_config=stand_in.handler_config,
                    model_dir=stand_in.model_dir)
    handler_config = {**spec.pop("handler_config"), **FP32, **config}
    return build_archive(ArchiveSpec(name=f"fuzz_{task}", handler=task, config={"handler": handler_config},
                                     export_path=str(work / "model_store"), **spec))


def start(handler, n: int) -> None:
    """n requests on the handler's context, without headers, as ts/service.py sets them up."""
    context = handler.context
    context.request_processor = [RequestProcessor({}) for _ in range(n)]
    context.request_ids = {i: f"fuzz-{i}" for i in range(n)}
    if context.metrics is not None:
        context.metrics.request_ids = context.request_ids


def answer_batch(handler, requests: list) -> list[tuple[int, object, str]]:
    """One `handle` call as the worker makes it: (status, body, status phrase) per request."""
    start(handler, len(requests))
    bodies = handler.handle(requests, handler.context)
    assert isinstance(bodies, list) and len(bodies) == len(requests), "one answer per request of the batch"
    return [(code or 200, body, phrase or "")
            for body, (code, phrase) in zip(bodies, map(handler.context.get_response_status, range(len(requests))))]


def through_envelope(handler, envelope: str, body):
    """One HTTP request of JSON `body` through TorchServe's own `envelope` class as a worker started with that
    `service_envelope` runs it: None when the envelope itself failed to parse it (before the handler ran),
    else (status, answer, status phrase)."""
    wrapper = TsModelLoader()._load_default_envelope(envelope)(handler.handle)
    parse, parsed = wrapper.parse_input, []

    def parse_input(data):
        items = parse(data)
        parsed.append(True)
        return items

    wrapper.parse_input = parse_input  # the frame calling `handle` is still the envelope's own
    start(handler, 1)
    try:
        answers = wrapper.handle([{"body": body}], handler.context)
    except PredictionException as err:  # TorchServe answers it with its code and message: a JSON error
        assert parsed and 400 <= err.error_code < 500, (err.error_code, err.message)
        return err.error_code, {"code": err.error_code, "message": err.message}, err.message
    except Exception:
        if not parsed:
            return None
        raise
    assert len(answers) == 1
    code, phrase = handler.context.get_response_status(0)
    return code or 200, answers[0], phrase or ""


def v2_outputs(answer: dict) -> list:
    return [json.loads(o["data"][0]) if o["datatype"] == "BYTES" else o["data"] for o in answer["outputs"]]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """{variant: Served}, each built and loaded on first use (so `-k tensor` builds one archive)."""
    cache = {}

    def get(variant: str) -> Served:
        if variant not in cache:
            task, config = VARIANTS[variant]
            work = tmp_path_factory.mktemp(variant.replace("[", "-").replace("]", ""))
            model_dir = unpack_archive(build_stand_in(task, config, work), work / "unpacked")
            handler = load_handler(handler_class_for(task), model_dir, batch_size=4)
            [(status, reference, _)] = answer_batch(handler, [valid_request(task)])
            assert status == 200, reference
            v1 = through_envelope(handler, "kserve", {"instances": [valid_instance(task)]})
            v2 = through_envelope(handler, "kservev2", {"inputs": [valid_v2_input(task)]})
            assert v1[0] == 200 and v2[0] == 200, (v1, v2)
            cache[variant] = Served(handler, task, reference, v1[1]["predictions"][0], v2_outputs(v2[1])[0])
        return cache[variant]

    return get


def handler_class_for(task: str):
    """The library's class for `task` (what an archive built with `--handler TASK` instantiates)."""
    spec = handlers.TASKS[task]
    return getattr(importlib.import_module(f"handlers.{spec.module}"), spec.class_name)


# ---- properties ---------------------------------------------------------------------------------------
def check_answer(status: int, body, phrase: str, where: str) -> None:
    """A 2xx, or a 4xx whose JSON body says what was wrong; an answer the worker can send."""
    assert 200 <= status < 300 or 400 <= status < 500, f"{where}: HTTP {status}: {body!r:.600}"
    json.dumps(body, allow_nan=False)  # TorchServe json.dumps it; NaN would not be JSON for the client
    assert "\n" not in phrase and "\r" not in phrase, f"{where}: status phrase {phrase!r:.300}"
    if status >= 400:
        assert isinstance(body, dict) and body.get("code") == status, f"{where}: {status} with {body!r:.300}"
        assert isinstance(body.get("message"), str) and body["message"], f"{where}: {body!r:.300}"


def is_error(answer) -> bool:
    return isinstance(answer, dict) and set(answer) == {"code", "type", "message"}


def same_answer(served: "Served", expected, actual, where: str, alone: bool = True) -> None:
    """The valid request's answer in a batch is its answer alone (`alone`: its neighbours never reached the
    model; for a batch-dependent task anything else is only checked to be an answer of the same form)."""
    if not alone and served.task in BATCH_DEPENDENT:
        assert isinstance(actual, list) and all({"label", "score", "box"} <= set(d) for d in actual), \
            f"{where}: the valid neighbour's answer is {actual!r:.300}"
        return
    differences = compare(expected, actual, ATOL)
    assert not differences, f"{where}: the valid neighbour's answer changed: {differences[:5]}"


def check_plain(served: Served, request: dict, valid_first: bool) -> None:
    """The generated request batched with a valid one: both answered properly, the valid one as alone."""
    valid = valid_request(served.task)
    batch = [valid, request] if valid_first else [request, valid]
    answers = answer_batch(served.handler, batch)
    (good_status, good, good_phrase), (status, body, phrase) = answers if valid_first else answers[::-1]
    served.statuses[status] += 1
    check_answer(status, body, phrase, "generated request")
    assert good_status == 200, f"valid neighbour: HTTP {good_status}: {good!r:.600}"
    same_answer(served, served.reference, good, "batch", alone=status >= 400)


def with_valid_item(body, key: str, at: int, make_valid) -> tuple[bool, object, int]:
    """(whether it could, the body, where) with a valid item spliced into its `key` list, when it has one."""
    if not (isinstance(body, dict) and isinstance(body.get(key), list)):
        return False, body, at
    at = min(at, len(body[key]))
    return True, {**body, key: body[key][:at] + [make_valid()] + body[key][at:]}, at


def check_pieces(served: Served, reference, pieces: list, body: dict, key: str, valid_at: int | None) -> None:
    """An envelope's answers, one per item of `body[key]`: each an answer or a JSON 4xx in its place; the valid
    item spliced in at `valid_at` (None: none was) answered as it is alone."""
    what = f"{'v1' if key == 'instances' else 'v2'} {key}"
    for item in pieces:
        if is_error(item):
            assert 400 <= item["code"] < 500, f"{what}: {item!r:.600}"
    if valid_at is not None:
        assert len(pieces) == len(body[key]), f"one answer per item of {key}"
        others = pieces[:valid_at] + pieces[valid_at + 1:]
        same_answer(served, reference, pieces[valid_at], what, all(map(is_error, others)))


def check_v1(served: Served, body, valid_at: int) -> None:
    """A v1 body through the envelope; when it carries a list of instances, a valid one joins them."""
    with_valid, body, valid_at = with_valid_item(body, "instances", valid_at, lambda: valid_instance(served.task))
    result = through_envelope(served.handler, "kserve", body)
    if result is None:
        served.statuses["envelope"] += 1
        return
    status, answer, phrase = result
    served.statuses[status] += 1
    if status >= 400 and "predictions" not in answer:
        check_answer(status, answer, phrase, "v1 request")
        return
    assert 200 <= status < 300 or 400 <= status < 500, f"v1 request: HTTP {status}: {answer!r:.600}"
    json.dumps(answer, allow_nan=False)
    assert "\n" not in phrase and "\r" not in phrase, f"v1 request: status phrase {phrase!r:.300}"
    predictions = answer["predictions"]
    assert isinstance(predictions, list)
    check_pieces(served, served.v1_reference, predictions, body, "instances", valid_at if with_valid else None)


def check_v2(served: Served, body, valid_at: int) -> None:
    """A v2 body through the envelope; when it carries a list of inputs, a valid one joins them."""
    with_valid, body, valid_at = with_valid_item(body, "inputs", valid_at, lambda: valid_v2_input(served.task))
    result = through_envelope(served.handler, "kservev2", json.loads(json.dumps(body)))
    if result is None:
        served.statuses["envelope"] += 1
        return
    status, answer, phrase = result
    served.statuses[status] += 1
    assert 200 <= status < 300 or 400 <= status < 500, f"v2 request: HTTP {status}: {answer!r:.600}"
    json.dumps(answer, allow_nan=False)
    assert "\n" not in phrase and "\r" not in phrase, f"v2 request: status phrase {phrase!r:.300}"
    if "outputs" not in answer:
        check_answer(status, answer, phrase, "v2 request")
        return
    outputs = v2_outputs(answer)
    check_pieces(served, served.v2_reference, outputs, body, "inputs", valid_at if with_valid else None)


PROPERTIES = {
    "raw_bytes": (st.tuples(plain_requests(raw_payloads), st.booleans()), lambda s, v: check_plain(s, *v)),
    "json": (st.tuples(plain_requests(json_payloads) | json_values.map(lambda v: {"body": v}), st.booleans()),
             lambda s, v: check_plain(s, *v)),
    "multipart": (st.tuples(multipart_requests(), st.booleans()), lambda s, v: check_plain(s, *v)),
    "kserve_v1": (st.tuples(kserve_v1_bodies(), st.integers(0, 4)), lambda s, v: check_v1(s, *v)),
    "kserve_v2": (st.tuples(kserve_v2_bodies(), st.integers(0, 3)), lambda s, v: check_v2(s, *v)),
}


@pytest.mark.slow  # hundreds of generated requests per case
@pytest.mark.filterwarnings("ignore::UserWarning:PIL")  # Pillow's notes on mutated files ("Corrupt EXIF data")
@pytest.mark.parametrize("variant, strategy", CASES, ids=[f"{v}-{s}" for v, s in CASES])
def test_generated_requests_get_a_2xx_or_a_json_4xx(served, variant, strategy, caplog):
    caplog.set_level(logging.ERROR, logger="handlers")  # every rejection logs a warning: keep the 5xx ones
    subject = served(variant)
    subject.statuses.clear()
    strategy_of, check = PROPERTIES[strategy]
    tried = Counter()

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
    @given(strategy_of)
    def generated_request_is_answered(value):
        tried["examples"] += 1
        check(subject, value)

    try:
        generated_request_is_answered()
    finally:
        statuses = ", ".join(f"{k}: {n}" for k, n in sorted(subject.statuses.items(), key=lambda kv: str(kv[0])))
        print(f"fuzz {variant} {strategy}: {tried['examples']} examples tried (seed {SEED}); statuses {{{statuses}}}")
    [(status, answer, _)] = answer_batch(subject.handler, [valid_request(subject.task)])  # still serving
    assert status == 200
    same_answer(subject, subject.reference, answer, "after fuzzing")
