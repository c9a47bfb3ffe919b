"""The one place where errors become HTTP answers: JSON bodies naming the field and the reason.

Deepomatic's error shape everywhere, except under the Clarifai prefix, which answers in Clarifai's shape.
"""

from __future__ import annotations

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler
from pydantic import ValidationError

from gateway import clarifai_shape
from gateway.errors import (
    ApiError,
    InvalidInput,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unavailable,
    from_validation_error,
)
from store.port import StoreUnavailable

log = structlog.get_logger("gateway")


def _as_api_error(error: web.HTTPException) -> ApiError:
    if isinstance(error, web.HTTPNotFound):
        return NotFound("no such endpoint; the API lives under /v0.7/ (see /openapi.json)", field="path")
    if isinstance(error, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(error.allowed_methods))
        # RFC 9110: a 405 lists the methods the resource does support.
        return MethodNotAllowed(
            f"{error.method} is not allowed here; allowed: {allowed}",
            field="method",
            headers={"Allow": allowed},
        )
    if isinstance(error, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge(error.text or "request body too large", field="body")
    # aiohttp's own refusals (e.g. a malformed request line or header) concern the request as a whole.
    return InvalidInput(error.reason, field="request")


def _clarifai(request: web.Request) -> bool:
    return request.path.startswith(clarifai_shape.PREFIX)


def error_response(error: ApiError, *, path: str) -> web.Response:
    """The error in the shape of the surface `path` belongs to."""
    clarifai = path.startswith(clarifai_shape.PREFIX)
    body = clarifai_shape.error_body(error) if clarifai else error.body()
    return web.json_response(body, status=error.status, headers=error.headers)


def _answer(request: web.Request, error: ApiError) -> web.Response:
    return error_response(error, path=request.path)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return _answer(request, error)
    except ValidationError as error:
        return _answer(request, from_validation_error(error))
    except StoreUnavailable as error:
        log.warning("store_unavailable", error=str(error))
        return _answer(request, Unavailable("the database is unavailable; retry shortly"))
    except web.HTTPException as error:
        if error.status < 400:
            raise
        return _answer(request, _as_api_error(error))
    except Exception:
        log.exception("request_failed", method=request.method, path=request.path)
        if _clarifai(request):
            return web.json_response(clarifai_shape.internal_error_body(), status=500)
        return web.json_response(
            {"error": "internal error", "detail": "internal error", "field": None, "code": "internal"},
            status=500,
        )
