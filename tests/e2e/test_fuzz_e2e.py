"""A bounded HTTP fuzz run against a live TorchServe with the shipped config and the default image classifier
(issue 13): a fixed-seed list of generated requests, sent concurrently, then the workers and a real photo.

Generated (random.Random(SEED), so every run sends the same requests): random bytes, bytes that open like a
file format, the photo truncated or with bytes changed, random and deeply nested JSON, multipart forms of random
fields, KServe v1 `{"instances": [...]}` and v2 `{"inputs": [...]}` bodies (random, near-valid and valid) to
/v1/models/NAME:predict and /v2/models/NAME/infer, all with random content types, and a few crafted ones the
in-process fuzzing (tests/handlers/test_fuzz_decoding.py) found defects with. Every eighth request is the real
photo, which must be answered "espresso" whatever it shares a batch with. Bodies stay far under
`max_request_size` (the frontend answers a larger one 413 with an empty body: tests/e2e/test_bad_input_e2e.py).
The shipped config sets no `service_envelope`, so the KServe bodies reach the handler as plain JSON bodies; the
envelopes themselves are fuzzed in-process (tests/handlers/test_fuzz_decoding.py).

Every answer must be a 2xx or a 4xx with a JSON body (a 4xx's `code` its status); afterwards the model has the
same workers (ids, pids, start times), all READY, and the photo still predicts "espresso". The count of
requests sent and the status histogram per kind are printed (`pytest -rP`).
"""
import base64
import concurrent.futures
import io
import json
import os
import random
from collections import Counter, defaultdict

from PIL import Image

from export.zoo import DEFAULT_NAME
from tests.images import png_claiming

MODEL = DEFAULT_NAME
SEED = int(os.environ.get("TSKIT_FUZZ_SEED", "13"))
COUNT = int(os.environ.get("TSKIT_FUZZ_HTTP_REQUESTS", "600"))
THREADS = 6  # concurrent clients: batches of mixed requests, within the job queue (no 503 for a full queue)
MAX_REQUEST_SIZE = 6553500  # TorchServe's default max_request_size (the shipped config keeps it)
MAX_BODY = 64 * 1024  # a generated body's size at most (the photo's is 300 kB): far under max_request_size
PHOTO_EVERY = 8
CONTENT_TYPES = ["application/json", "text/plain", "text/plain; charset=latin-1", "application/octet-stream",
                 "image/png", "image/jpeg", "multipart/form-data", "application/x-www-form-urlencoded",
                 "application/x-npy", "foo/bar", ""]
MAGIC = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBPVP8 ",
         b"\x93NUMPY\x01\x00", b"{", b"[", b"\xef\xbb\xbf", b"data:image/png;base64,", b"--boundary\r\n"]
KEYS = ["data", "body", "b64", "image", "bytes", "text", "instances", "inputs", "name", "shape", "datatype", "id",
        "target", "kserve_v2_input", "tskit_rejected"]
V2_DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
                "FP64", "BYTES", "FLOAT", ""]


# ---- generators ------------------------------------------------------------------------------------------
def random_text(rng: random.Random, n: int = 12) -> str:
    alphabet = "abcXYZ019 _-./\\\"'{}[]:,\n\t\u00e9\u4e2d\U0001f600\x00"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, n)))


def random_json(rng: random.Random, depth: int = 0):
    kind = rng.choice(["null", "bool", "int", "bigint", "float", "str", "list", "dict"] if depth < 4 else
                      ["null", "bool", "int", "float", "str"])
    if kind == "list":
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    if kind == "dict":
        return {rng.choice(KEYS + [random_text(rng, 6)]): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}
    return {"null": None, "bool": rng.random() < 0.5, "int": rng.randint(-300, 300),
            "bigint": rng.randint(-2 ** 80, 2 ** 80), "float": rng.choice([rng.uniform(-1e6, 1e6), 1e308, -0.0]),
            "str": random_text(rng)}[kind]


def mutated(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(max(1, len(data)))
        op = rng.choice(["flip", "truncate", "insert", "delete"])
        if op == "flip" and data:
            data[at] = rng.randrange(256)
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = rng.randbytes(rng.randint(1, 16))
        else:
            del data[at:at + rng.randint(1, 64)]
    return bytes(data)


def deep_json(rng: random.Random) -> bytes:
    depth = rng.choice([10, 100, 500, 900, 1100, 3000])
    opener, closer = rng.choice([("[", "]"), ('{"data":', "}"), ('{"instances":[', "]}")])
    return (opener * depth + json.dumps(random_json(rng, 3)) + closer * depth).encode()


def small_copies(photo: bytes) -> list[bytes]:
    """The photo at 96 x 72 in a few formats: what the generators mutate (small, so most changes are decoded)."""
    image = Image.open(io.BytesIO(photo)).convert("RGB").resize((96, 72))
    copies = []
    for fmt, kwargs in (("PNG", {}), ("JPEG", {}), ("JPEG", {"progressive": True}), ("GIF", {}), ("WEBP", {})):
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kwargs)
        copies.append(buf.getvalue())
    return copies


def random_bytes(rng: random.Random, small: list[bytes]) -> bytes:
    choice = rng.random()
    if choice < 0.3:
        return rng.randbytes(rng.randint(0, 4096))
    if choice < 0.5:
        return rng.choice(MAGIC) + rng.randbytes(rng.randint(0, 512))
    return mutated(rng, rng.choice(small)) if choice < 0.9 else rng.choice(small)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def v1_body(rng: random.Random, small: list[bytes]):
    instances = [rng.choice([lambda: random_json(rng), lambda: b64(random_bytes(rng, small)),
                             lambda: {rng.choice(["data", "b64", "image"]): b64(random_bytes(rng, small))},
                             lambda: {"b64": b64(rng.choice(small))}])() for _ in range(rng.randint(0, 3))]
    return rng.choice([{"instances": instances}] * 4 + [{"instances": random_json(rng)}, random_json(rng)])


def v2_input(rng: random.Random, small: list[bytes]) -> dict:
    kind = rng.choice(["pixels", "bytes", "numbers", "random"])
    if kind == "pixels":
        h, w = rng.randint(0, 12), rng.randint(0, 12)
        shape = rng.choice([[h, w, 3], [1, h, w, 3], [h, w], [h, w, 4]])
        size = max(0, h * w * shape[-1] + rng.choice([0, 0, 0, 1, -1]))
        item = {"datatype": rng.choice(["UINT8"] * 3 + V2_DATATYPES), "shape": shape,
                "data": [rng.randint(-2, 258) for _ in range(size)]}
    elif kind == "bytes":
        item = {"datatype": rng.choice(["BYTES"] * 3 + V2_DATATYPES), "shape": rng.choice([[1], [1], [2], [], [None]]),
                "data": [rng.choice([b64(rng.choice(small)), b64(random_bytes(rng, small)), random_text(rng)])]}
    elif kind == "numbers":
        shape = [rng.randint(0, 4) for _ in range(rng.randint(0, 3))]
        n = 1
        for d in shape:
            n *= d
        item = {"datatype": rng.choice(V2_DATATYPES), "shape": shape,
                "data": [rng.uniform(-5, 5) for _ in range(n + rng.choice([0, 0, 1]))]}
    else:
        item = {"datatype": random_json(rng, 3), "shape": random_json(rng, 2), "data": random_json(rng, 2)}
    item["name"] = random_text(rng, 6)
    if rng.random() < 0.1:
        del item[rng.choice(list(item))]
    return item


def v2_body(rng: random.Random, small: list[bytes]):
    inputs = [v2_input(rng, small) for _ in range(rng.randint(0, 3))]
    if rng.random() < 0.3:
        inputs.append({"name": "photo", "shape": [1], "datatype": "BYTES", "data": [b64(rng.choice(small))]})
    body = {"inputs": inputs}
    if rng.random() < 0.3:
        body["id"] = random_text(rng, 8)
    return rng.choice([body] * 5 + [{"inputs": random_json(rng)}, random_json(rng)])


def encoded_json(rng: random.Random, value) -> bytes:
    text = json.dumps(value).encode()
    return text if rng.random() < 0.85 else text[:rng.randint(0, len(text))]  # now and then cut short


def photo_png_of(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.linear_gradient("L").resize(size).convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


def crafted(photo: bytes) -> list[tuple[str, str, dict]]:
    """Requests the in-process fuzzing found defects with, and other known traps: (kind, path, kwargs)."""
    predict = f"/predictions/{MODEL}"
    v1, v2 = f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"
    return [
        ("crafted", predict, {"data": photo_png_of((1, 60000)), "headers": {"Content-Type": "image/png"}}),
        ("crafted", predict, {"data": photo_png_of((60000, 1)), "headers": {"Content-Type": "image/png"}}),
        ("crafted", predict, {"files": {"data": ("p.png", photo, "image/png"),
                                        "kserve_v2_input": ("m", b"UINT8", "application/octet-stream")}}),
        ("crafted", predict, {"data": png_claiming(60000, 60000), "headers": {"Content-Type": "image/png"}}),
        ("crafted", predict, {"data": b"[" * 5000 + b"]" * 5000, "headers": {"Content-Type": "application/json"}}),
        ("crafted", v1, {"json": {"instances": True}}),
        ("crafted", v1, {"json": {"instances": "abc"}}),
        ("crafted", v2, {"json": {"inputs": [{"name": "x", "shape": [None], "datatype": "BYTES",
                                              "data": [b64(photo)]}]}}),
        ("crafted", v2, {"json": {"inputs": [{"name": "x", "shape": [1, 60000, 3], "datatype": "UINT8",
                                              "data": [7] * 180000}]}}),
    ]


def generated(photo: bytes, count: int, seed: int) -> list[tuple[str, str, dict]]:
    """`count` requests as (kind, path, requests kwargs), the same for the same seed."""
    rng = random.Random(seed)
    small = small_copies(photo)
    predict = f"/predictions/{MODEL}"
    v1, v2 = f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"
    requests_ = crafted(photo)
    while len(requests_) < count:
        if len(requests_) % PHOTO_EVERY == 0:
            requests_.append(("photo", predict, {"data": photo, "headers": {"Content-Type": "image/png"}}))
            continue
        kind = rng.choice(["bytes", "bytes", "json", "deep_json", "multipart", "kserve_v1", "kserve_v2"])
        content_type = rng.choice(CONTENT_TYPES)
        if kind == "bytes":
            path, body = predict, random_bytes(rng, small)
        elif kind == "json":
            path, body = predict, encoded_json(rng, random_json(rng))
        elif kind == "deep_json":
            path, body = predict, deep_json(rng)
        elif kind == "multipart":
            fields = {rng.choice(["data", "body", "file", "image", "kserve_v2_input", "tskit_rejected",
                                  random_text(rng, 6) or "x"]):
                      (random_text(rng, 6), rng.choice([random_bytes(rng, small), encoded_json(rng, random_json(rng)),
                                                        rng.choice(small)]), rng.choice(CONTENT_TYPES) or "text/plain")
                      for _ in range(rng.randint(1, 3))}
            requests_.append((kind, predict, {"files": fields}))
            continue
        elif kind == "kserve_v1":
            path, body = v1, encoded_json(rng, v1_body(rng, small))
            content_type = rng.choice(["application/json"] * 3 + CONTENT_TYPES)
        else:
            path, body = v2, encoded_json(rng, v2_body(rng, small))
            content_type = rng.choice(["application/json"] * 3 + CONTENT_TYPES)
        headers = {"Content-Type": content_type} if content_type else {}
        requests_.append((kind, path, {"data": body[:MAX_BODY], "headers": headers}))
    return requests_


# ---- the run ---------------------------------------------------------------------------------------------
def workers(server) -> list[tuple]:
    """(id, pid, start time, status) of every worker of the model."""
    return sorted((w.get("id"), w.get("pid"), w.get("startTime"), w.get("status"))
                  for version in server.client.describe(MODEL) for w in version.get("workers", []))


def send(server, request: tuple[str, str, dict]):
    kind, path, kwargs = request
    r = server.client.inference("POST", path, timeout=300, **kwargs)
    return kind, r.status_code, r.text


def content_types(kwargs: dict) -> list[str]:
    """The request's Content-Type, or its multipart parts' ones."""
    if "files" in kwargs:
        return [ctype for _, _, ctype in kwargs["files"].values()]
    return [kwargs.get("headers", {}).get("Content-Type", "application/json" if "json" in kwargs else "")]


def frontend_refusal(kwargs: dict, status: int, text: str) -> bool:
    """TorchServe's own frontend answers 500 ErrorDataDecoderException, before any worker sees the request, when its
    (Netty's) form decoder cannot read the body: an application/x-www-form-urlencoded body that is not form encoding,
    or a multipart part whose charset Java does not know (`latin-1`; Java spells it `ISO-8859-1` or `latin1`). No
    handler code runs for these, so no handler can answer them otherwise: counted apart, not failed."""
    if status != 500 or not any("x-www-form-urlencoded" in c or "charset=" in c for c in content_types(kwargs)):
        return False
    try:
        return json.loads(text).get("type") == "ErrorDataDecoderException"
    except (ValueError, AttributeError):
        return False


def problem(kind: str, status: int, text: str) -> str | None:
    """Why an answer breaks the property, or None."""
    if not (200 <= status < 300 or 400 <= status < 500):
        return f"HTTP {status}"
    try:
        body = json.loads(text)
    except ValueError:
        return f"HTTP {status} without a JSON body"
    if "Traceback" in text:
        return "a traceback in the answer"
    if status >= 400 and not (isinstance(body, dict) and body.get("code") == status and body.get("message")):
        return f"HTTP {status} whose body is not {{code, type, message}}"
    if kind == "photo" and not (status == 200 and next(iter(body)) == "espresso"):
        return "the photo was not answered espresso"
    return None


def test_generated_http_requests_get_a_2xx_or_a_json_4xx_and_the_workers_live(server, photo_bytes):
    photo = photo_bytes["coffee.png"]
    before = workers(server)
    assert before and all(status == "READY" for *_, status in before), before
    plan = generated(photo, COUNT, SEED)
    histogram: dict[str, Counter] = defaultdict(Counter)
    failures = []
    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        for request, (kind, status, text) in zip(plan, pool.map(lambda r: send(server, r), plan)):
            if frontend_refusal(request[2], status, text):
                histogram[kind]["500 (frontend's form decoder)"] += 1
                continue
            histogram[kind][status] += 1
            why = problem(kind, status, text)
            if why:
                failures.append(f"{kind} {request[1]} -> {why}: {text[:300]!r} (sent {str(request[2])[:200]})")
    print(f"HTTP fuzz (seed {SEED}): {len(plan)} requests sent with {THREADS} concurrent clients")
    for kind, counts in sorted(histogram.items()) + [("all", sum(histogram.values(), Counter()))]:
        print(f"  {kind:10s} {sum(counts.values()):4d}: "
              + ", ".join(f"{status}: {n}" for status, n in sorted(counts.items(), key=lambda kv: str(kv[0]))))
    assert not failures, f"{len(failures)} of {len(plan)} answers broke the property:\n" + "\n".join(failures[:20])
    after = workers(server)
    print(f"  workers (id, pid, start time, status) before and after: {before}")
    assert after == before, f"workers changed: before {before}, after {after}"
    r = server.client.predict(MODEL, photo, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and next(iter(r.json())) == "espresso", r.text


def body_size(kwargs: dict) -> int:
    if "files" in kwargs:
        return sum(len(content) for _, content, _ in kwargs["files"].values())
    return len(kwargs["data"]) if "data" in kwargs else len(json.dumps(kwargs["json"]))


def test_the_generated_requests_depend_only_on_the_seed_and_stay_small(photo_bytes):
    photo = photo_bytes["coffee.png"]
    first, again = generated(photo, 200, SEED), generated(photo, 200, SEED)
    assert first == again and len(first) == 200
    assert generated(photo, 200, SEED + 1) != first
    assert all(body_size(kwargs) < MAX_REQUEST_SIZE // 4 for _, _, kwargs in first)
    assert all(body_size(kwargs) <= 3 * MAX_BODY for kind, _, kwargs in first if kind not in ("photo", "crafted"))
