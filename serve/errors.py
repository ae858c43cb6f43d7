"""HTTP errors and their two body shapes: TEI's on /embed and friends, OpenAI's on /v1/* and /embeddings.

TEI:    {"error": "message", "error_type": "Validation"}
OpenAI: {"error": {"message": "...", "type": "invalid_request_error", "param": "input", "code": "..."}}
"""

from __future__ import annotations

from dataclasses import dataclass, field

# status -> (TEI error_type, OpenAI error type)
_KINDS = {
    400: ("Validation", "invalid_request_error"),
    401: ("Unauthorized", "authentication_error"),
    413: ("Validation", "invalid_request_error"),
    415: ("Validation", "invalid_request_error"),
    422: ("Validation", "invalid_request_error"),
    429: ("Overloaded", "rate_limit_error"),
    500: ("Backend", "server_error"),
    503: ("Unhealthy", "server_error"),
}


@dataclass
class ApiError(Exception):
    """An error answered to the client. `code` is a stable machine-readable reason."""

    status: int
    message: str
    code: str
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.message

    def body(self, openai: bool) -> dict:
        tei_type, openai_type = _KINDS.get(self.status, ("Backend", "server_error"))
        if self.status == 503 and self.code == "queue_timeout":
            tei_type = "Overloaded"
        if openai:
            return {"error": {"message": self.message, "type": openai_type, "param": self.param, "code": self.code}}
        return {"error": self.message, "error_type": tei_type}


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code, param)


def unprocessable(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(422, message, code, param)


def too_large(message: str, param: str | None = None, code: str = "too_large") -> ApiError:
    return ApiError(413, message, code, param)


def text_too_long(index: int, detail: str) -> ApiError:
    """413 for a text the runtime refuses to tokenize (`TextTooLongError`), by its place in the request."""
    return too_large(f"input {index}: {detail}", code="text_too_long")


def unavailable(message: str, code: str, retry_after_s: int = 1) -> ApiError:
    return ApiError(503, message, code, None, {"Retry-After": str(retry_after_s)})
