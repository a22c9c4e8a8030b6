"""The errors a request can be answered with instead of a prediction, and the one a bad configuration raises.

`RequestError` is what one request's JSON error answer is made of, `{"code": status, "type": kind, "message": ...}`:

    BadInput      4xx: the client's request cannot be served (400, 413, 415); raise it from `decode` and the like
    HandlerError  500: the handler's own code (or its user's) failed on that request; the traceback is in the log
    Unavailable   501: the handler cannot do what was asked (an explanation without an explanation model)
"""


class RequestError(Exception):
    """One request's error answer. `status` is the HTTP code that request gets, `kind` the `type` of its body."""

    default_status, default_kind = 500, "HandlerError"

    def __init__(self, message: str, status: int | None = None, kind: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status or self.default_status
        self.kind = kind or self.default_kind

    def to_response(self) -> dict:
        return {"code": self.status, "type": self.kind, "message": self.message}


class BadInput(RequestError):
    """A request the handler cannot serve because of what the client sent: 400, or 413/415 where they fit."""

    default_status, default_kind = 400, "BadInput"


class HandlerError(RequestError):
    """The handler's code failed on this request (a bug, not the client's doing): its JSON 500."""


class Unavailable(RequestError):
    default_status, default_kind = 501, "Unavailable"


class ConfigError(ValueError):
    """The archive's configuration is wrong: raised at load time so the model log says how to fix it."""
