"""Generic tensors (tabular rows and the like): JSON, `.npy` or safetensors in, scores or raw outputs out.

The archive ships a schema (`tensor_schema.json`, through `--extra-files`):

    {"shape": [30], "dtype": "float32", "input_name": "features", "max_rows": 256,
     "feature_names": ["mean radius", ...], "labels": ["malignant", "benign"], "baseline": [14.1, ...]}

`shape` is one example's shape (no batch dimension). A request carries one example (`shape`) or several
(`[n, *shape]`, n <= `max_rows`); every request is checked against the schema and a mismatch (shape,
dtype, NaN/Inf) is that request's 400 saying what was expected and what came. Rows of all requests in a
batch go through the model together and are split back, one response per request: a single example gets
one answer, several get a list. With `labels` (or an `index_to_name.json`) the answer is `{label:
probability}` for the top-k classes, otherwise the model's raw output values. Request data is never
unpickled: `.npy` loads with `allow_pickle=False`, safetensors is a JSON header plus raw numbers.

Explanations are Integrated Gradients per input value, from the schema's `baseline` example (say the
training means; zeros without one): with `feature_names`, [name, score] pairs in feature order.
"""
import io
import json
import math
import os
import struct
import tokenize

import numpy as np
import torch

from handlers.base import TskitHandler
from handlers.errors import BadInput, ConfigError
from handlers.explain import EXPLAIN_CONFIG, attribute, checked_targets, explain_valid, unavailable
from handlers.payload import request_value

DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8")
SCHEMA_KEYS = {"shape", "dtype", "input_name", "max_rows", "feature_names", "labels", "baseline"}
ROW_KEYS = ("data", "inputs", "instances")
NPY_MAGIC = b"\x93NUMPY"
MAX_DRIFT_FEATURES = 64  # wider examples are described by their mean and spread instead
READ_HEADER = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_schema(path: str) -> dict:
    """The archive's schema, validated at load time (a bad one fails the model load, not requests)."""
    if not os.path.exists(path):
        raise ConfigError(f"the tensor handler needs {os.path.basename(path)} in the archive "
                          "(tskit build --extra-files tensor_schema.json)")
    try:
        with open(path) as f:
            schema = json.load(f)
    except ValueError as err:
        raise ConfigError(f"{os.path.basename(path)} is not valid JSON: {err}") from None
    if not isinstance(schema, dict) or set(schema) - SCHEMA_KEYS:
        raise ConfigError(f"schema must be an object with keys among {sorted(SCHEMA_KEYS)}")
    shape = schema.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                              for d in shape):
        raise ConfigError(f"schema 'shape' must be a list of positive ints (one example, no batch), got {shape!r}")
    if schema.setdefault("dtype", "float32") not in DTYPES:
        raise ConfigError(f"schema 'dtype' must be one of {list(DTYPES)}, got {schema['dtype']!r}")
    max_rows = schema.setdefault("max_rows", 1)
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
        raise ConfigError(f"schema 'max_rows' must be a positive int, got {max_rows!r}")
    names = schema.setdefault("feature_names", [])
    if names and shape != [len(names)]:
        raise ConfigError(f"schema has {len(names)} feature_names but shape {shape}: they must agree")
    schema.setdefault("input_name", "")
    labels = schema.setdefault("labels", [])
    if not isinstance(labels, list) or len(set(map(str, labels))) != len(labels):
        raise ConfigError("schema 'labels' must be a list of distinct class names, index order")
    schema["labels"] = [str(label) for label in labels]
    baseline = schema.setdefault("baseline", None)
    if baseline is not None:
        try:
            ok = np.isfinite(np.asarray(baseline, dtype=np.float64)).all() and np.shape(baseline) == tuple(shape)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ConfigError(f"schema 'baseline' must be one example of shape {shape} in finite numbers")
    return schema


def read_index_labels(path: str) -> list[str]:
    """index_to_name.json ({"0": "cat"} or stock TorchServe's {"0": ["n0", "cat"]}) as a list."""
    with open(path) as f:
        raw = {int(k): v for k, v in json.load(f).items()}
    return [str(raw[i][-1] if isinstance(raw[i], list) else raw[i]) if i in raw else str(i)
            for i in range(max(raw, default=-1) + 1)]


def where(shape: tuple, flat_index: int) -> str:
    return "".join(f"[{i}]" for i in np.unravel_index(flat_index, shape)) if shape else "(scalar)"


def check_finite(arr: np.ndarray, sent: np.ndarray, note: str = "") -> None:
    """NaN/Inf in `arr` is a 400 naming the first place and the value the client sent there."""
    if arr.dtype.kind != "f":
        return
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        more = f" ({bad.size} non-finite values in all)" if bad.size > 1 else ""
        raise BadInput(f"expected finite numbers, got {sent.flat[bad[0]]} at {where(arr.shape, int(bad[0]))}"
                       f"{note}{more}", kind="NonFinite")


def first_non_number(value, path: str = ""):
    """(path, leaf) of the first JSON leaf that is not a number (bools are not numbers), else None."""
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = first_non_number(item, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return path or "(value)", value
    return None


def json_array(value, dtype: str) -> np.ndarray:
    """Nested JSON lists of numbers to an array; anything else is a 400 naming the offending element."""
    try:
        bad = first_non_number(value)
    except RecursionError:
        raise BadInput("JSON nested too deeply", kind="ShapeMismatch") from None
    if bad:
        kind = "null" if bad[1] is None else type(bad[1]).__name__
        raise BadInput(f"expected numbers ({dtype}), got {kind} {bad[1]!r} at {bad[0]}"[:300], kind="DTypeMismatch")
    try:
        arr = np.asarray(value)
    except ValueError:
        lengths = sorted({len(row) for row in value if isinstance(row, list)}) if isinstance(value, list) else []
        raise BadInput(f"rows must all have the same shape, got ragged lists (row lengths {lengths})",
                       kind="ShapeMismatch") from None
    if arr.dtype == object:  # numpy keeps ints beyond 64 bits as Python objects
        raise BadInput(f"expected numbers ({dtype}), got integers beyond 64 bits", kind="DTypeMismatch")
    return arr


def load_npy(data: bytes) -> np.ndarray:
    """`.npy` bytes without pickles; the header's size is checked first, so a lying header allocates nothing."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version not in READ_HEADER:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, _, dtype = READ_HEADER[version](buf)
        if dtype.hasobject:
            raise ValueError("object arrays are not accepted")
        need = math.prod(shape) * dtype.itemsize
        if len(data) - buf.tell() != need:
            raise ValueError(f"header says {need} bytes of data, got {len(data) - buf.tell()}")
        buf.seek(0)
        return np.load(buf, allow_pickle=False)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError, MemoryError, RecursionError,
            tokenize.TokenError) as err:  # numpy tokenizes the header: an unclosed one is a TokenError
        raise BadInput(f"invalid .npy payload: {err}", kind="InvalidNpy") from None


def is_safetensors(data: bytes) -> bool:
    """safetensors = 8-byte little-endian header length, then a JSON object header."""
    if len(data) < 10:
        return False
    (n,) = struct.unpack("<Q", data[:8])
    return 2 <= n <= len(data) - 8 and data[8:9] == b"{"


def load_safetensors(data: bytes, name: str) -> np.ndarray:
    try:
        from safetensors.torch import load
    except ImportError:
        raise BadInput("safetensors payloads need the `safetensors` package where TorchServe runs; "
                       "send JSON or .npy", status=415, kind="UnsupportedMediaType") from None
    try:
        tensors = load(data)
    except Exception as err:  # the Rust parser raises its own SafetensorError for every malformed file
        raise BadInput(f"invalid safetensors payload: {err}", kind="InvalidSafetensors") from None
    if name in tensors:
        tensor = tensors[name]
    elif len(tensors) == 1:
        tensor = next(iter(tensors.values()))
    else:
        want = f"a tensor named {name!r} or a single tensor" if name else "a single tensor"
        raise BadInput(f"safetensors payload must hold {want}, got {sorted(tensors)}", kind="ShapeMismatch")
    if tensor.is_floating_point() and tensor.dtype not in (torch.float16, torch.float32, torch.float64):
        tensor = tensor.float()  # bfloat16, float8: numpy has no such dtype; float32 holds their values exactly
    try:
        return tensor.numpy()
    except TypeError as err:  # any other dtype numpy lacks
        raise BadInput(f"safetensors tensor of dtype {tensor.dtype} is not accepted: {err}",
                       kind="DTypeMismatch") from None


def per_request(answers: list, splits: list[tuple[int, bool]]) -> list:
    """Flat per-row answers split back per request, `splits` giving each request's (rows, single): the bare
    answer for a request that sent one example, a list for one that sent several."""
    responses, start = [], 0
    for n, single in splits:
        rows = answers[start:start + n]
        responses.append(rows[0] if single else rows)
        start += n
    return responses


class TensorHandler(TskitHandler):
    config_defaults = {
        "topk": 5,
        "schema_file": "tensor_schema.json",
        **EXPLAIN_CONFIG,  # attributions per input value, from the schema's baseline
        "explain_steps": 64,  # rows are small: more steps cost little and tighten IG's completeness
    }

    def setup(self, model_dir: str) -> None:
        if self.config["topk"] < 1:
            raise ConfigError(f"handler config 'topk' must be at least 1, got {self.config['topk']}")
        self.schema = read_schema(os.path.join(model_dir, self.config["schema_file"]))
        self.shape = tuple(self.schema["shape"])
        self.np_dtype = np.dtype(self.schema["dtype"])
        self.feature_names = self.schema["feature_names"]
        self.labels = list(self.schema["labels"])
        labels_path = os.path.join(model_dir, "index_to_name.json")
        if not self.labels and os.path.exists(labels_path):
            self.labels = read_index_labels(labels_path)
        self.splits: list[tuple[int, bool]] = []

    # ---- decoding ------------------------------------------------------------------------------
    def decode(self, request: dict) -> tuple[np.ndarray, bool]:
        """One request to (rows of shape [n, *shape] in the schema dtype, whether it was one example)."""
        return self.check(self.payload_array(request_value(request)))

    def payload_array(self, value) -> np.ndarray:
        if isinstance(value, (bytes, bytearray)):
            data = bytes(value)
            if not data:
                raise BadInput("empty request body")
            if data.startswith(NPY_MAGIC):
                return load_npy(data)
            if is_safetensors(data):
                return load_safetensors(data, self.schema["input_name"])
            try:
                value = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise BadInput("payload is neither JSON, .npy nor safetensors", kind="InvalidPayload") from None
        elif isinstance(value, str):
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                raise BadInput("payload is not valid JSON", kind="InvalidPayload") from None
        return json_array(self.json_rows(value), self.np_dtype.name)

    def json_rows(self, value):
        """Unwrap {"data"|"inputs"|"instances": ...} and rows given as {feature name: value} objects."""
        if isinstance(value, dict):
            key = next((k for k in ROW_KEYS if k in value), None)
            if key is not None:
                value = value[key]
            elif not self.feature_names:
                raise BadInput(f"JSON object must carry the rows under one of {list(ROW_KEYS)}",
                               kind="InvalidPayload")
        if isinstance(value, dict):
            return self.named_row(value)
        if isinstance(value, list) and value and all(isinstance(row, dict) for row in value):
            return [self.named_row(row) for row in value]
        return value

    def named_row(self, row: dict) -> list:
        if not self.feature_names:
            raise BadInput("rows as objects need feature_names in the schema; send lists", kind="InvalidPayload")
        missing = [n for n in self.feature_names if n not in row]
        unknown = sorted(set(row) - set(self.feature_names))
        if missing or unknown:
            raise BadInput(f"row features must be exactly the schema's {len(self.feature_names)}: "
                           f"missing {missing[:5]}, unknown {unknown[:5]}"[:300], kind="ShapeMismatch")
        return [row[n] for n in self.feature_names]

    def check(self, arr: np.ndarray) -> tuple[np.ndarray, bool]:
        """Shape, dtype and finiteness against the schema; returns [n, *shape] rows in the schema dtype."""
        want = list(self.shape)
        single = arr.shape == self.shape
        if not single and not (arr.ndim == len(want) + 1 and arr.shape[1:] == self.shape and arr.shape[0] > 0):
            raise BadInput(f"expected shape {want} (one example) or [n, {', '.join(map(str, want))}] "
                           f"(n examples), got {list(arr.shape)}", kind="ShapeMismatch")
        if not single and len(arr) > self.schema["max_rows"]:
            raise BadInput(f"{len(arr)} examples in one request; the schema allows at most {self.schema['max_rows']}",
                           status=413, kind="TooManyRows")
        arr = self.cast(arr)
        return (arr[None] if single else arr), single

    def cast(self, arr: np.ndarray) -> np.ndarray:
        target = self.np_dtype
        floating = target.kind == "f"
        if arr.dtype.kind not in ("fiu" if floating else "iu"):
            raise BadInput(f"expected dtype {target.name}, got {arr.dtype.name}"
                           + ("" if floating else " (integers only)"), kind="DTypeMismatch")
        if floating:
            check_finite(arr, arr)
            with np.errstate(over="ignore"):  # reported just below, with the value sent
                out = arr.astype(target)
            check_finite(out, arr, f", beyond {target.name}'s range")
            return out
        info = np.iinfo(target)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise BadInput(f"expected {target.name} values in [{info.min}, {info.max}], got "
                           f"[{arr.min()}, {arr.max()}]", kind="DTypeMismatch")
        return arr.astype(target)

    # ---- batching and answers ------------------------------------------------------------------
    def collate(self, items: list) -> torch.Tensor:
        """All requests' rows in one batch; `respond` splits the output back by `self.splits`."""
        self.splits = [(len(rows), single) for rows, single in items]
        return self.to_model_input(torch.from_numpy(np.concatenate([rows for rows, _ in items])))

    def respond(self, outputs) -> list:
        if not isinstance(outputs, torch.Tensor):
            raise TypeError(f"the tensor handler expects the model to return a tensor, got {type(outputs).__name__}")
        outputs = outputs.float().cpu()
        return per_request(self.label_scores(outputs) if self.labels else outputs.tolist(), self.splits)

    def label_scores(self, logits: torch.Tensor) -> list[dict[str, float]]:
        if logits.dim() != 2 or logits.shape[1] != len(self.labels):
            raise ValueError(f"model output {list(logits.shape)} does not match {len(self.labels)} labels")
        probs = torch.softmax(logits, dim=1)
        values, indices = probs.topk(min(self.config["topk"], probs.shape[1]), dim=1)
        return [{self.labels[i]: p for p, i in zip(v, ix)} for v, ix in zip(values.tolist(), indices.tolist())]

    def drift_features(self, batch: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Every input feature of every row (examples wider than MAX_DRIFT_FEATURES: their mean and std)."""
        x = batch.reshape(len(batch), -1).float()
        if x.shape[1] > MAX_DRIFT_FEATURES:
            return ["mean", "std"], torch.stack([x.mean(dim=1), x.std(dim=1)], dim=1)
        return self.feature_names or [f"x{i}" for i in range(x.shape[1])], x

    # ---- explanations --------------------------------------------------------------------------
    def explain_items(self, items: list, requests: list[dict]) -> list:
        """Per row: attributions of the target output (requested, else the top one) to every input value;
        for IG they sum to `output - baseline_output` up to `convergence_delta`. A request of several rows
        gets a list, one target for all its rows."""
        if self.np_dtype.kind != "f":
            raise unavailable(f"inputs of dtype {self.np_dtype.name} have no gradients")
        method, steps = self.config["explain_method"], self.config["explain_steps"]
        model = self.explainer()
        rows = torch.from_numpy(np.concatenate([r for r, _ in items])).float().to(self.device)
        baseline = torch.zeros_like(rows[:1]) if self.schema["baseline"] is None else \
            torch.tensor(self.schema["baseline"], dtype=torch.float32, device=self.device)[None]
        with torch.inference_mode():
            outputs, base_out = model(rows).float().cpu(), model(baseline).float().cpu()[0]
        if outputs.dim() != 2:
            raise unavailable(f"the model returns {list(outputs.shape)}; explanations need [rows, outputs]")
        starts = np.cumsum([0] + [len(r) for r, _ in items])
        requested = checked_targets(requests, self.labels, outputs.shape[1])  # None: each row its top-1

        def explain(ok: list[int], _requested: list) -> list:
            index = [j for i in ok for j in range(starts[i], starts[i + 1])]
            targets = [requested[i] if requested[i] is not None else int(outputs[j].argmax())
                       for i in ok for j in range(starts[i], starts[i + 1])]
            scores, delta = attribute(model, rows[index], targets, method, steps,
                                      baselines=baseline.expand(len(index), *self.shape), delta=True)
            answers = [self.row_explanation(outputs[j], base_out, t, s, d, method)
                       for j, t, s, d in zip(index, targets, scores.cpu(),
                                             delta.cpu() if delta is not None else [None] * len(index))]
            return per_request(answers, [(len(items[i][0]), items[i][1]) for i in ok])

        return explain_valid(requested, explain)

    def row_explanation(self, output, base_out, target: int, scores, delta, method: str) -> dict:
        answer = {"target": self.labels[target] if target < len(self.labels) else target, "target_index": target}
        if self.labels:
            answer["probability"] = float(torch.softmax(output, 0)[target])
        answer.update(method=method, output=float(output[target]), baseline_output=float(base_out[target]))
        if delta is not None:
            answer["convergence_delta"] = float(delta)
        values = np.round(scores.numpy().astype(np.float64), 6)
        answer["attributions"] = [[n, float(v)] for n, v in zip(self.feature_names, values)] \
            if self.feature_names else values.tolist()
        return answer

    def example_items(self, n: int) -> list:
        return [(np.zeros((1, *self.shape), dtype=self.np_dtype), True) for _ in range(n)]
