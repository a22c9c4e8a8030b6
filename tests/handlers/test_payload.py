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
