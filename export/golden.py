"""Golden inputs and outputs: what an archive answered at build time, and how answers are compared.

A golden case is a request payload stored in the archive (`golden/...`) with its content type, and the
response the archive's handler gave at build time. `compare` checks a later answer against it:
identical top-1 (first key of a `{label: probability}` object, first element of a list) and every
number within the tolerance of the precision in use.
"""
import json
import math
import mimetypes
from dataclasses import dataclass
from pathlib import Path

# Absolute tolerance on every number of a response, by the precision that produced it. fp32 covers
# different CPU kernels (AVX2 vs AVX-512) and batch sizes; bf16 keeps 8 bits of mantissa; int8 kernels differ
# between CPUs with and without VNNI.
TOLERANCE = {"fp32": 1e-3, "fp16": 2e-2, "bf16": 6e-2, "int8": 6e-2}


@dataclass
class GoldenInput:
    name: str  # file name inside the archive's golden/ folder
    payload: bytes
    content_type: str = "application/octet-stream"


def content_type(path: Path) -> str:
    """A file's content type from its suffix, as a client would send it."""
    if path.suffix == ".json":
        return "application/json"
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def inputs_from_files(paths) -> list[GoldenInput]:
    """Files, or every file below a folder (hidden ones skipped), as request bodies."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        else:
            files.append(path)
    return [GoldenInput(p.name, p.read_bytes(), content_type(p)) for p in files]


def top1(answer):
    """What two versions must agree on: the first label of `{label: score}`, the `label` of a detection,
    the argmax of a score list, and element-wise for lists of those."""
    if isinstance(answer, dict):
        return answer.get("label", next(iter(answer), None))
    if isinstance(answer, list):
        if answer and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in answer):
            return max(range(len(answer)), key=answer.__getitem__)
        return tuple(top1(v) for v in answer)
    return answer


def tolerance(*precisions: str) -> float:
    return max(TOLERANCE.get(p, TOLERANCE["bf16"]) for p in precisions)


def as_request(payload: bytes, content_type: str) -> dict:
    """The request dict a TorchServe worker builds for this body: JSON decoded, text as str."""
    if content_type == "application/json":
        try:
            return {"body": json.loads(payload)}
        except ValueError:  # TorchServe passes a JSON body that does not parse on as bytes
            return {"body": payload}
    if content_type.startswith("text"):
        return {"body": payload.decode("utf-8")}
    return {"body": payload}


def compare(expected, actual, atol: float, path: str = "$") -> list[str]:
    """Differences between two responses, one readable line each; [] when they agree. A `..._png` string
    (a class mask, say) is compared as the image it encodes: a share of atol / 2 of its pixels may differ
    (boundary pixels flip between CPU kernels and precisions: up to 1.5% between bf16 and fp32 seen on the
    segmenter's held-out scenes)."""
    if isinstance(expected, str) and isinstance(actual, str) and path.endswith("_png") and expected != actual:
        return compare_png(expected, actual, atol / 2, path)
    if isinstance(expected, bool) or isinstance(expected, str) or expected is None:
        return [] if expected == actual else [f"{path}: expected {expected!r}, got {actual!r}"]
    if isinstance(expected, (int, float)):
        if not isinstance(actual, (int, float)) or isinstance(actual, bool):
            return [f"{path}: expected a number {expected!r}, got {actual!r}"]
        if math.isclose(expected, actual, abs_tol=atol, rel_tol=0):
            return []
        return [f"{path}: {actual!r} differs from {expected!r} by {abs(actual - expected):.2e} (> {atol:g})"]
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{path}: expected an object, got {actual!r}"]
        diffs = []
        if expected and actual and next(iter(expected)) != next(iter(actual)):
            diffs.append(f"{path}: top-1 {next(iter(actual))!r} instead of {next(iter(expected))!r}")
        for key in expected:
            if key in actual:
                diffs += compare(expected[key], actual[key], atol, f"{path}.{key}")
            elif not _is_tail_score(expected, key, atol):
                diffs.append(f"{path}: {key!r} missing")
        return diffs
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: expected a list of {len(expected)}, got {actual!r}"]
        diffs = []
        for i, (e, a) in enumerate(zip(expected, actual)):
            diffs += compare(e, a, atol, f"{path}[{i}]")
        return diffs
    return [f"{path}: cannot compare {type(expected).__name__}"]


def compare_png(expected: str, actual: str, share: float, path: str) -> list[str]:
    """Two base64 PNGs of the same size whose pixels differ on at most `share` of them."""
    import base64
    import binascii
    import io

    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        a, b = (np.asarray(Image.open(io.BytesIO(base64.b64decode(v)))) for v in (expected, actual))
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError) as err:
        return [f"{path}: not a base64 PNG ({err})"]
    if a.shape != b.shape:
        return [f"{path}: image of shape {list(b.shape)} instead of {list(a.shape)}"]
    differ = float(np.mean(np.any((a != b).reshape(a.shape[0], a.shape[1], -1), axis=-1)))
    return [] if differ <= share else [f"{path}: {differ:.2%} of the pixels differ (> {share:.2%})"]


def _is_tail_score(scores: dict, key: str, atol: float) -> bool:
    """A low-ranked label may swap with its neighbour below the cut-off when scores sit within the
    tolerance: that is not a mismatch, as long as the top-1 agrees."""
    value = scores[key]
    return key != next(iter(scores)) and isinstance(value, float) and value <= min(scores.values()) + atol
