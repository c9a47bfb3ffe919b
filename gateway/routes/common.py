"""Small helpers every route module uses: parsing bodies into models, path ids, JSON answers."""

from __future__ import annotations

from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ValidationError

from gateway.errors import NotFound, from_validation_error

M = TypeVar("M", bound=BaseModel)


def parse(model: type[M], fields: dict[str, Any], *, prefix: str = "") -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        raise from_validation_error(error, prefix=prefix) from None


def path_id(request: web.Request, name: str = "id") -> str:
    """Ids in paths are integers for private objects, slugs for public ones; anything else is unknown."""
    raw = request.match_info[name]
    if not raw or len(raw) > 100:
        raise NotFound("no such object", field=name)
    return raw


def ok(body: Any, *, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def no_content() -> web.Response:
    return web.Response(status=204)


def add(app: web.Application, method: str, path: str, handler: Any) -> None:
    """Register the path with and without its trailing slash: clients differ (the official one mixes both)."""
    app.router.add_route(method, path, handler)
    alternate = path[:-1] if path.endswith("/") else path + "/"
    app.router.add_route(method, alternate, handler)
