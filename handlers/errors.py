"""Client errors: raised anywhere on a request's path, turned into that request's 4xx response."""


class BadInput(Exception):
    """A request the handler cannot serve. `status` is the HTTP code that request gets (400, 413 or 415)."""

    def __init__(self, message: str, status: int = 400, kind: str = "BadInput"):
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind

    def to_response(self) -> dict:
        return {"code": self.status, "type": self.kind, "message": self.message}


class ConfigError(ValueError):
    """The archive's configuration is wrong: raised at load time so the model log says how to fix it."""
