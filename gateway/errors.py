"""The gateway's error tree and its one mapping to HTTP.

Every error names the field at fault (when there is one) and a reason a person can act on. The Deepomatic
surface renders them as `{"error": reason, "detail": reason, "field": field, "code": code}`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError


class ApiError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, reason: str, *, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.reason = reason
        self.field = field
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        message = f"{self.field}: {self.reason}" if self.field else self.reason
        return {"error": message, "detail": message, "field": self.field, "code": self.code}


class InvalidInput(ApiError):
    status = 400
    code = "invalid"


class NotAuthenticated(ApiError):
    status = 401
    code = "not_authenticated"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class MethodNotAllowed(ApiError):
    status = 405
    code = "method_not_allowed"


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "too_large"


class UriTooLong(ApiError):
    status = 414
    code = "too_long"


class HeadersTooLarge(ApiError):
    """One header field too long, or too many of them (RFC 6585's 431)."""

    status = 431
    code = "too_large"


class UnsupportedMediaType(ApiError):
    status = 415
    code = "unsupported_media_type"


class TooManyRequests(ApiError):
    """The caller's API key is over its rate limit; `Retry-After` says when a request will be admitted."""

    status = 429
    code = "throttled"

    def __init__(self, reason: str, *, retry_after_s: int):
        super().__init__(reason, headers={"Retry-After": str(max(1, retry_after_s))})


class Unavailable(ApiError):
    status = 503
    code = "unavailable"

    def __init__(self, reason: str, *, retry_after_s: int = 2):
        super().__init__(reason, headers={"Retry-After": str(retry_after_s)})


class Overloaded(Unavailable):
    """The job queue is at its length limit: nothing was queued; retry after `Retry-After`."""

    code = "queue_full"


def _location(loc: tuple[int | str, ...], prefix: str) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part in {"function-after", "function-before"} or "[" in str(part):
            continue  # pydantic's validator frames, not fields
        else:
            name = str(part) or '""'  # a JSON key may be empty, and must still be named
            path += f".{name}" if path else name
    return path


def from_validation_error(error: ValidationError, *, prefix: str = "") -> InvalidInput:
    """The first problem names the field; all problems are listed in the reason."""
    problems = error.errors(include_url=False)
    first = problems[0]
    # A problem with no location (a whole-object validator) lies with the body as a whole.
    field = _location(tuple(first["loc"]), prefix) or "body"
    reason = _reason(first)
    if len(problems) > 1:
        others = "; ".join(f"{_location(tuple(p['loc']), prefix)}: {_reason(p)}" for p in problems[1:])
        reason = f"{reason} (also: {others})"
    return InvalidInput(reason, field=field)


def _reason(problem: Any) -> str:
    if problem["type"] == "extra_forbidden":
        return "unknown or read-only field"
    return str(problem["msg"]).removeprefix("Value error, ")
