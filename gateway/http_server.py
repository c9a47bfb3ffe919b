"""The gateway's HTTP server: aiohttp's, with Percept's parser limits and its refusals answered as JSON.

aiohttp's HTTP parser refuses an over-long line, too many headers or broken framing before any middleware
runs, and its answer is plain text. aiohttp has no hook for that answer (aio-libs/aiohttp#3287, open), so
the connection handler is subclassed: `handle_error` renders the refusal like every other error, from the
parser's exception and the bytes the connection received last. Relies on aiohttp 3.14's RequestHandler.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError
from aiohttp.web_protocol import RequestHandler, _ErrInfo
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from gateway.middleware import error_response
from gateway.refusals import ParserLimits, refusal

log = structlog.get_logger("gateway")

# The request line holds the URL: `GET /v0.7/tasks/?task_ids=…` lists up to 1,000 tasks (routes.tasks), and
# the official client's Task.batch_wait repeats `task_ids=` for each, 20 bytes apiece with 10-digit ids.
# aiohttp's default (8,190) stops at about 400 of them.
MAX_REQUEST_LINE_BYTES = 32 * 1024
# Headers keep aiohttp's defaults: nothing Percept reads is long (API keys are 20-odd characters).
MAX_FIELD_BYTES = 8190
MAX_HEADERS = 128
# Bytes of history a refusal may need: the start of an over-long header line in an earlier read.
_HISTORY_BYTES = MAX_FIELD_BYTES + 8 * 1024


class _RefusingRequestHandler(RequestHandler):
    """aiohttp's connection handler, keeping the latest bytes received so a refusal can name its field."""

    __slots__ = ("_history", "_refused_head")

    def __init__(self, manager: web.Server, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._history = b""
        self._refused_head: bytes | None = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._refused_head is None and self._messages and isinstance(self._messages[-1][0], _ErrInfo):
            # The parser failed on these bytes; later reads would only push the offending line out.
            self._refused_head = self._history + data
        # A bounded copy, not a reference to the whole read: idle connections keep at most this much.
        self._history = (
            data[-_HISTORY_BYTES:]
            if len(data) >= _HISTORY_BYTES
            else (self._history + data)[-_HISTORY_BYTES:]
        )

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> StreamResponse:
        if status >= 500 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("a response is already under way; the refusal cannot be sent")
        limits = ParserLimits(self.max_line_size, self.max_field_size, self.max_headers)
        answer = refusal(exc, self._history if self._refused_head is None else self._refused_head, limits)
        # Not an error of ours: no traceback. TLS or other non-HTTP bytes on the port are mere noise.
        emit = log.debug if isinstance(exc, BadHttpMethod) else log.info
        emit(
            "http_refused",
            status=answer.error.status,
            field=answer.error.field,
            reason=answer.error.reason,
            path=answer.path,
            remote=request.remote,
        )
        response = error_response(answer.error, path=answer.path)
        response.force_close()  # the parser cannot resume on this connection
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _RefusingRequestHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """`web.AppRunner` serving the app with Percept's parser limits and JSON refusals."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("max_line_size", MAX_REQUEST_LINE_BYTES)
        kwargs.setdefault("max_field_size", MAX_FIELD_BYTES)
        kwargs.setdefault("max_headers", MAX_HEADERS)
        ParserLimits(
            kwargs["max_line_size"], kwargs["max_field_size"], kwargs["max_headers"]
        )  # fail at start
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        # The app's own server (started app, handler arguments) with only the connection handler swapped.
        server = await super()._make_server()
        return _Server(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **server._kwargs,
        )
