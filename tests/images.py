"""Request bodies for the image handlers' bad-input and odd-input stories, made from a real photo.

Used by the in-process tests and the end-to-end tests alike, so both prove the same list."""
import base64
import io
import random
import struct
import zlib

import numpy as np
from PIL import Image


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90, **kwargs)
    return buf.getvalue()


def exif_rotated_jpeg(image: Image.Image) -> bytes:
    """The photo stored sideways with EXIF orientation 6 ("rotate 90 clockwise to show"), as phones write it."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(image.transpose(Image.Transpose.ROTATE_90), exif=exif)


def odd_images(photo: bytes) -> dict[str, bytes]:
    """Valid images in every awkward mode: each must be answered, the photo's label kept where the colours are."""
    image = Image.open(io.BytesIO(photo)).convert("RGB")
    sixteen = (np.asarray(image.convert("L")).astype(np.uint16) * 257)
    return {
        "grayscale": _png(image.convert("L")),
        "rgba": _png(image.convert("RGBA")),
        "palette": _png(image.convert("P")),
        "cmyk_jpeg": _jpeg(image.convert("CMYK")),
        "png_16bit": _png(Image.fromarray(sixteen)),
        "1x1": _png(Image.new("RGB", (1, 1), (200, 10, 10))),
        "exif_rotated": exif_rotated_jpeg(image),
    }


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels: a decompression bomb's calling card."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bad_images(photo_jpeg: bytes) -> dict[str, tuple[bytes, str, int]]:
    """{case: (body, content type, expected status)} for everything a client can get wrong."""
    return {
        "empty": (b"", "application/octet-stream", 400),
        "truncated": (photo_jpeg[: len(photo_jpeg) // 3], "image/jpeg", 400),
        "random_bytes": (random.Random(0).randbytes(4096), "application/octet-stream", 415),
        "text": (b"this is a sentence, not a photo", "text/plain", 400),
        "malformed_json": (b'{"data": "abc', "application/json", 400),
        "wrong_base64": (b'{"data": "%%% not base64 %%%"}', "application/json", 400),
        "base64_of_text": (b'{"data": "' + base64.b64encode(b"plain words") + b'"}', "application/json", 415),
        "json_without_data": (b'{"image": 3}', "application/json", 400),
        "bomb": (png_claiming(60000, 60000), "image/png", 413),
    }
