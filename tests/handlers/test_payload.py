import base64

import pytest

from handlers.errors import BadInput
from handlers.payload import request_bytes

RAW = b"\x89PNG\r\n\x1a\nrest"


@pytest.mark.parametrize("request_dict", [
    {"body": RAW},
    {"body": bytearray(RAW)},
    {"data": RAW},
    {"body": {"data": base64.b64encode(RAW).decode()}},
    {"body": {"b64": base64.b64encode(RAW).decode()}},
    {"body": base64.b64encode(RAW).decode()},
    {"body": "data:image/png;base64," + base64.b64encode(RAW).decode()},
])
def test_every_encoding_yields_the_same_bytes(request_dict):
    assert request_bytes(request_dict) == RAW


@pytest.mark.parametrize("request_dict, fragment", [
    ({}, "empty request"),
    ({"body": b""}, "empty request body"),
    ({"body": "not base64 !!"}, "not valid base64"),
    ({"body": {"other": 1}}, "base64 data under"),
    ({"body": [1, 2, 3]}, "unsupported payload"),
])
def test_bad_payloads_are_client_errors(request_dict, fragment):
    with pytest.raises(BadInput) as err:
        request_bytes(request_dict)
    assert fragment in err.value.message
    assert err.value.status == 400


def test_a_long_thin_image_has_only_its_crop_resized(monkeypatch):
    """Found by fuzzing: a 1 x 60000 PNG (a few hundred bytes) resized whole to a shorter side of 256 would be
    60000 * 256 rows of 256 pixels, 12 GB. Only the crop's region is resized, sampled as the whole would be."""
    import io

    import numpy as np
    from PIL import Image

    from handlers.image_classifier import decode_image, resize_center_crop

    def png(image: Image.Image) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()

    thin = png(Image.linear_gradient("L").resize((1, 60000)).convert("RGB"))
    assert len(thin) < 2000
    resized = []
    real_resize = Image.Image.resize
    monkeypatch.setattr(Image.Image, "resize", lambda im, size, *a, **k: resized.append(size) or
                        real_resize(im, size, *a, **k))
    pixels = resize_center_crop(decode_image(thin), 256, 224)
    assert pixels.shape == (224, 224, 3) and max(w * h for w, h in resized) <= 224 * 224
    # the same pixels (within two levels) as resizing all of an image long enough to take this path
    wide = decode_image(png(Image.effect_noise((4000, 160), 60).convert("RGB")))
    scale = 64 / 160
    whole = np.asarray(real_resize(wide, (round(4000 * scale), 64), Image.BILINEAR))
    left = (whole.shape[1] - 56) // 2
    expected = whole[4:60, left:left + 56]
    assert np.abs(resize_center_crop(wide, 64, 56).astype(int) - expected.astype(int)).max() <= 2


@pytest.mark.parametrize("dtype", ["F8_E4M3", "F8_E5M2", "BF16"])
def test_safetensors_floats_numpy_lacks_are_read_as_float32(dtype):
    """Found by fuzzing: a float8 safetensors payload was a 500 (`tensor.numpy()` raised TypeError)."""
    import json
    import struct

    import numpy as np
    import torch
    from safetensors.torch import save

    from handlers.tensor import load_safetensors

    torch_dtype = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "BF16": torch.bfloat16}[dtype]
    values = torch.tensor([0.5, -2.0, 3.0]).to(torch_dtype)
    data = save({"x": values})
    assert json.loads(data[8:8 + struct.unpack("<Q", data[:8])[0]])["x"]["dtype"] == dtype
    array = load_safetensors(data, "x")
    assert array.dtype == np.float32 and array.tolist() == [0.5, -2.0, 3.0]


@pytest.mark.parametrize("header", [b"{", b"(" * 300, b"{'descr': '<f4', 'fortran_order': False, 'shape': (30,"])
def test_an_npy_header_numpy_cannot_tokenize_is_a_400(header):
    """Found by fuzzing: an unclosed .npy header made numpy's tokenizer raise TokenError, a 500."""
    import struct

    from handlers.tensor import load_npy

    with pytest.raises(BadInput) as err:
        load_npy(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
    assert err.value.kind == "InvalidNpy" and err.value.status == 400
