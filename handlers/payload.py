"""Pull the payload out of one TorchServe request, whichever way the client sent it.

TorchServe hands the handler one dict per request: a raw body under `body`, a multipart field under its
name (`data` by convention), a JSON body already decoded, a text body as `str`.
"""
import base64
import binascii
import json

from handlers.errors import BadInput

FIELDS = ("data", "body")
B64_KEYS = ("b64", "data", "image", "bytes")
REJECTED = "tskit_rejected"  # a BadInput found before decoding (handlers/protocol.py): the request fails with it


def request_value(request: dict):
    """The request's payload: the `data` field, else the raw `body`."""
    if not isinstance(request, dict):
        raise BadInput("malformed request: expected a body or a multipart field named 'data'")
    if isinstance(request.get(REJECTED), BadInput):
        raise request[REJECTED]
    for field in FIELDS:
        if request.get(field) is not None:
            return request[field]
    raise BadInput("empty request: send the payload as the body or as a multipart field named 'data'")


def request_bytes(request: dict) -> bytes:
    """The binary payload of a request: raw bytes as sent, or base64 inside JSON.

    JSON forms accepted: `{"data": "<base64>"}` (also under `b64`, `image` or `bytes`) or a bare
    JSON string holding base64.
    """
    value = request_value(request)
    if isinstance(value, dict):
        value = unwrap_json(value, B64_KEYS, "base64 data")
    if isinstance(value, str):
        return decode_base64(value)
    if isinstance(value, (bytes, bytearray)):
        if not value:
            raise BadInput("empty request body")
        data = bytes(value)  # TorchServe sends a bytearray: convert once, then look (bytearray.lstrip copies)
        reject_broken_json(data)
        return data
    raise BadInput(f"unsupported payload of type {type(value).__name__}: send bytes or base64 in JSON")


def reject_broken_json(data: bytes) -> None:
    """A JSON body reaches the handler decoded; one that arrives as bytes yet opens like a JSON object or
    array failed TorchServe's parse (no image format starts with `{` or `[`): say so, not "not an image"."""
    if data.lstrip()[:1] in (b"{", b"["):
        try:
            json.loads(data)
        except (UnicodeDecodeError, ValueError, RecursionError) as err:
            raise BadInput(f"body is not valid JSON: {err}", kind="MalformedJSON") from None


def unwrap_json(body: dict, keys: tuple, what: str):
    """The value under the first of `keys` present in a JSON object body, else a 400 naming them."""
    key = next((k for k in keys if k in body), None)
    if key is None:
        raise BadInput(f"JSON body must carry {what} under one of {list(keys)}")
    return body[key]


def decode_base64(text: str) -> bytes:
    if text.startswith("data:") and "," in text:  # data URL: data:image/jpeg;base64,....
        text = text.split(",", 1)[1]
    try:
        data = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise BadInput("payload is not valid base64: send the raw file as the body, or base64 in JSON as "
                       "{\"data\": \"...\"}", kind="InvalidBase64") from None
    if not data:
        raise BadInput("base64 payload is empty")
    return data


TEXT_KEYS = ("text", "data")


def request_text(request: dict, max_chars: int | None = None) -> str:
    """The request's text: a raw body (bytes or str), a multipart field `data`/`text`, or JSON
    {"text": ...} / {"data": ...}; with `max_chars`, a longer one is a 413 and an empty one a 400."""
    if isinstance(request, dict) and request.get("data") is None and request.get("body") is None \
            and request.get("text") is not None:
        value = request["text"]
    else:
        value = request_value(request)
    if isinstance(value, dict):
        value = unwrap_json(value, TEXT_KEYS, "the text")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise BadInput(f"text is not valid UTF-8 (byte {err.start})", kind="InvalidEncoding") from None
    if not isinstance(value, str):
        raise BadInput(f"expected text, got JSON {type(value).__name__}: send a string or {{\"text\": \"...\"}}")
    if max_chars is not None:
        if len(value) > max_chars:
            raise BadInput(f"text has {len(value)} characters; the limit is {max_chars}", status=413,
                           kind="TextTooLong")
        if not value.strip():
            raise BadInput("empty text", kind="EmptyText")
    return value
