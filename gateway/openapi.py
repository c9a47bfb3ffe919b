"""The OpenAPI document, generated from the same pydantic models that validate requests."""

from __future__ import annotations

import re
from functools import cache
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from gateway.asyncapi import ASYNCAPI_PATH
from gateway.long_poll import MAX_WAIT_S
from gateway.openapi_responses import SCHEMAS as RESPONSE_SCHEMAS
from gateway.openapi_responses import success_content
from gateway.pagination import MAX_LIMIT, MAX_OFFSET
from gateway.routes.tasks import MAX_TASK_IDS
from schemas.annolab import BatchInferenceRequest, ProjectCreate, RegionsSet, SourceUrl, TagCreate
from schemas.clarifai import PostModelOutputsRequest
from schemas.inference import InferenceRequest, InferenceResult, NetworkInferenceRequest, TensorsResult
from schemas.keys import KeyCreate
from schemas.networks import NetworkCreate, NetworkUpdate
from schemas.specs import SpecCreate, SpecUpdate
from schemas.versions import VersionCreate
from schemas.webhooks import EndpointCreate, EndpointUpdate

_V = "/v0.7"
_CLARIFAI_OUTPUTS = "Clarifai PostModelOutputs: up to 128 inputs, answered synchronously (outputs[].data)"
# (method, path, summary, request body model, response model)
OPERATIONS: list[tuple[str, str, str, type[BaseModel] | None, type[BaseModel] | None]] = [
    ("get", f"{_V}/accounts/me/", "The caller's account", None, None),
    (
        "get",
        f"{_V}/accounts/me/keys/",
        "Your API keys: id, name, prefix, last four (never the key)",
        None,
        None,
    ),
    (
        "post",
        f"{_V}/accounts/me/keys/",
        "Create an API key; the answer holds the full key, shown this once",
        KeyCreate,
        None,
    ),
    (
        "delete",
        f"{_V}/accounts/me/keys/{{id}}/",
        "Revoke an API key (not the account's last one)",
        None,
        None,
    ),
    ("get", f"{_V}/networks/", "List networks (yours and public ones)", None, None),
    (
        "post",
        f"{_V}/networks/",
        "Upload a SavedModel as multipart (files + flattened fields); returns task_id",
        NetworkCreate,
        None,
    ),
    ("get", f"{_V}/networks/{{id}}/", "Retrieve a network", None, None),
    ("patch", f"{_V}/networks/{{id}}/", "Edit name, description, metadata", NetworkUpdate, None),
    ("put", f"{_V}/networks/{{id}}/", "Edit name, description, metadata", NetworkUpdate, None),
    ("delete", f"{_V}/networks/{{id}}/", "Delete a network and its versions", None, None),
    (
        "post",
        f"{_V}/networks/{{id}}/inference",
        "Raw tensors for one image; returns task_id",
        NetworkInferenceRequest,
        TensorsResult,
    ),
    ("get", f"{_V}/recognition/specs/", "List your specs", None, None),
    ("post", f"{_V}/recognition/specs/", "Create a spec", SpecCreate, None),
    ("get", f"{_V}/recognition/specs/{{id}}/", "Retrieve a spec", None, None),
    ("patch", f"{_V}/recognition/specs/{{id}}/", "Edit a spec (current_version_id)", SpecUpdate, None),
    ("put", f"{_V}/recognition/specs/{{id}}/", "Edit a spec (current_version_id)", SpecUpdate, None),
    ("delete", f"{_V}/recognition/specs/{{id}}/", "Delete a spec and its versions", None, None),
    ("get", f"{_V}/recognition/specs/{{id}}/versions", "Versions of a spec", None, None),
    (
        "post",
        f"{_V}/recognition/specs/{{id}}/inference",
        "Infer with the current version",
        InferenceRequest,
        InferenceResult,
    ),
    ("get", f"{_V}/recognition/public/", "List public (demo) specs", None, None),
    ("get", f"{_V}/recognition/public/{{id}}/", "Retrieve a public spec", None, None),
    (
        "post",
        f"{_V}/recognition/public/{{id}}/inference",
        "Infer with a public spec",
        InferenceRequest,
        InferenceResult,
    ),
    ("get", f"{_V}/recognition/versions/", "List versions", None, None),
    (
        "post",
        f"{_V}/recognition/versions/",
        "Create a version (first one becomes current)",
        VersionCreate,
        None,
    ),
    ("get", f"{_V}/recognition/versions/{{id}}/", "Retrieve a version", None, None),
    ("delete", f"{_V}/recognition/versions/{{id}}/", "Delete a version", None, None),
    (
        "post",
        f"{_V}/recognition/versions/{{id}}/inference",
        "Infer with a version",
        InferenceRequest,
        InferenceResult,
    ),
    ("get", f"{_V}/tasks/{{id}}/", "A task: pending, success (data) or error", None, None),
    ("get", f"{_V}/tasks/", "Several tasks: ?task_ids=1&task_ids=2", None, None),
    ("get", f"{_V}/webhooks/", "List your webhook endpoints", None, None),
    (
        "post",
        f"{_V}/webhooks/",
        "Register a signed webhook endpoint",
        EndpointCreate,
        None,
    ),
    ("get", f"{_V}/webhooks/{{id}}/", "Retrieve a webhook endpoint", None, None),
    (
        "patch",
        f"{_V}/webhooks/{{id}}/",
        "Edit a webhook endpoint",
        EndpointUpdate,
        None,
    ),
    ("delete", f"{_V}/webhooks/{{id}}/", "Delete a webhook endpoint", None, None),
    ("get", f"{_V}/webhooks/{{id}}/deliveries/", "Delivery attempts of one endpoint", None, None),
    ("get", f"{_V}/webhooks/deliveries/", "All delivery attempts (?task_id= filters)", None, None),
    *(
        (
            "post",
            f"{prefix}/models/{{model_id}}{version}/outputs",
            _CLARIFAI_OUTPUTS,
            PostModelOutputsRequest,
            None,
        )
        for prefix in ("/v2", "/v2/users/{user_id}/apps/{app_id}")
        for version in ("", "/versions/{version_id}")
    ),
    ("post", "/v1/projects", "Create a project (dataset); names are unique per account", ProjectCreate, None),
    ("get", "/v1/projects", "List your projects", None, None),
    (
        "post",
        "/v1/projects/{project}/sources",
        "Add a source: multipart part `file` (an image), or JSON {url} fetched at inference",
        SourceUrl,
        None,
    ),
    ("get", "/v1/projects/{project}/sources", "List a project's sources (?offset&limit)", None, None),
    (
        "get",
        "/v1/projects/{project}/sources/{source}/predictions",
        "A source's predictions, one per layer",
        None,
        None,
    ),
    ("get", "/v1/projects/{project}/layers/{layer}/predictions", "A layer's predictions", None, None),
    ("post", "/v1/projects/{project}/tags", "Create a tag; names are unique per project", TagCreate, None),
    ("get", "/v1/projects/{project}/tags", "List a project's tags", None, None),
    ("delete", "/v1/projects/{project}/tags/{tag}", "Delete a tag and its regions", None, None),
    (
        "put",
        "/v1/projects/{project}/sources/{source}/regions",
        "Replace a source's regions: each a tag of the project on a normalized box (left, top, width,"
        " height: 0 <= left < left + width <= 1, 0 <= top < top + height <= 1)",
        RegionsSet,
        None,
    ),
    ("get", "/v1/projects/{project}/sources/{source}/regions", "A source's regions", None, None),
    (
        "post",
        "/v1/infer/batch",
        "Queue an Annolab inference job over stored sources; answers inferenceJobId (a string) and Queued",
        BatchInferenceRequest,
        None,
    ),
    (
        "get",
        "/v1/infer/batch/{job_id}",
        "An inference job: Queued, Running, Finished or Errored, with progress (done, failed, total)",
        None,
        None,
    ),
]

_WAIT = {
    "name": "wait",
    "in": "query",
    "required": False,
    "description": "Long poll: answer as soon as the task(s) finish, or after this many seconds (0-60).",
    "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
}
# Inference submissions take it too: the answer then also holds the task, finished or as it is by then.
_SUBMIT_WAIT = {
    **_WAIT,
    "description": "Answer with the task (`task`) once it finishes, or after this many seconds (0-60): one"
    " request instead of a submission and a poll.",
}
_PAGE = [
    {
        "name": "offset",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET},
    },
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
    },
]
# The listings that read `offset` and `limit` (gateway/pagination.py).
_PAGED = {
    f"{_V}/networks/",
    f"{_V}/recognition/specs/",
    f"{_V}/recognition/specs/{{id}}/versions",
    f"{_V}/recognition/public/",
    f"{_V}/recognition/versions/",
    f"{_V}/tasks/",
    f"{_V}/webhooks/",
    f"{_V}/webhooks/{{id}}/deliveries/",
    f"{_V}/webhooks/deliveries/",
    "/v1/projects",
    "/v1/projects/{project}/sources",
    "/v1/projects/{project}/sources/{source}/predictions",
    "/v1/projects/{project}/layers/{layer}/predictions",
    "/v1/projects/{project}/tags",
    "/v1/projects/{project}/sources/{source}/regions",
}
# Other query parameters, by path (GET only).
_QUERY: dict[str, list[dict[str, Any]]] = {
    f"{_V}/tasks/": [
        {
            "name": "task_ids",
            "in": "query",
            "required": True,
            "description": "Repeat the parameter or separate ids with commas",
            "style": "form",
            "explode": True,
            "schema": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": MAX_TASK_IDS},
        },
        _WAIT,
    ],
    f"{_V}/tasks/{{id}}/": [_WAIT],
    f"{_V}/webhooks/deliveries/": [
        {"name": "task_id", "in": "query", "required": False, "schema": {"type": "string"}}
    ],
}
_CLARIFAI_ERROR = {
    "description": "Error: `status.code` (Clarifai's codes) and `status.details` give the reason",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ClarifaiResponse"}}},
}
_ERROR = {
    "description": "Error: `error` and `detail` give the reason, `field` the field at fault",
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "string"}}
}
# The operations that answer 201 Created; deletions answer 204 without a body, all others 200.
_CREATES = {
    ("post", f"{_V}/networks/"),
    ("post", f"{_V}/recognition/specs/"),
    ("post", f"{_V}/recognition/versions/"),
    ("post", f"{_V}/webhooks/"),
    ("post", f"{_V}/accounts/me/keys/"),
    ("post", "/v1/projects"),
    ("post", "/v1/projects/{project}/sources"),
    ("post", "/v1/projects/{project}/tags"),
}


def _responses(method: str, path: str, *, clarifai: bool) -> dict[str, Any]:
    """The success answer, client errors, and 503 (store or queue unavailable: retry after a while)."""
    error = _CLARIFAI_ERROR if clarifai else _ERROR
    if method == "delete":
        success = {"204": {"description": "Deleted"}}
    elif (method, path) in _CREATES:
        success = {"201": {"description": "Created", **success_content(method, path)}}
    else:
        success = {"200": {"description": "OK", **success_content(method, path)}}
    unavailable = {**error, "description": "Unavailable: retry after `Retry-After` seconds"}
    responses = {**success, "4XX": error, "503": {**unavailable, "headers": _RETRY_AFTER}}
    if clarifai:
        # Clarifai's surface answers 500 when every input failed for a reason on our side (status.code 98004).
        responses["500"] = {**error, "description": "No input succeeded, for a reason on the server's side"}
    return responses


def _path_schema(path: str, name: str) -> dict[str, str]:
    # Webhook endpoint ids are digits in the route itself, so that /webhooks/deliveries/ is not an id.
    if path.startswith(f"{_V}/webhooks/{{id}}") and name == "id":
        return {"type": "string", "pattern": "^[0-9]+$"}
    return {"type": "string"}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


@cache
def openapi_document() -> dict[str, Any]:
    models = {model for _, _, _, request, response in OPERATIONS for model in (request, response) if model}
    _, definitions = models_json_schema(
        [(model, "validation") for model in sorted(models, key=lambda m: m.__name__)],
        ref_template="#/components/schemas/{model}",
    )
    schemas: dict[str, Any] = {**definitions.get("$defs", {}), **RESPONSE_SCHEMAS}
    schemas["Error"] = {
        "type": "object",
        "properties": {
            "error": {"type": "string"},
            "detail": {"type": "string"},
            "field": {"type": ["string", "null"]},
            "code": {"type": "string"},
        },
        "required": ["error", "detail", "field", "code"],
    }
    schemas["ClarifaiResponse"] = {
        "type": "object",
        "properties": {
            "status": {"type": "object"},
            "outputs": {"type": "array", "items": {"type": "object"}},
        },
        "required": ["status"],
    }
    paths: dict[str, dict[str, Any]] = {}
    for method, path, summary, request, response in OPERATIONS:
        clarifai = path.startswith("/v2/")
        annolab = path.startswith("/v1/")
        security: list[dict[str, list[str]]] = [{"ApiKey": []}]
        if clarifai:
            security = [{"ClarifaiKey": []}, {"ApiKey": []}]
        elif annolab:
            security = [{"AnnolabKey": []}, {"ApiKey": []}]
        operation: dict[str, Any] = {
            "summary": summary,
            "security": security,
            "responses": _responses(method, path, clarifai=clarifai),
        }
        # Every `{name}` in the path; Clarifai's user_id and app_id are accepted and ignored.
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": _path_schema(path, name)}
            for name in re.findall(r"\{(\w+)\}", path)
        ]
        if method == "get":
            parameters += _QUERY.get(path, [])
            parameters += _PAGE if path in _PAGED else []
        elif path.startswith(_V) and path.endswith("/inference"):
            parameters.append(_SUBMIT_WAIT)
        if parameters:
            operation["parameters"] = parameters
        if request is not None:
            media = "multipart/form-data" if request is NetworkCreate else "application/json"
            operation["requestBody"] = {"required": True, "content": {media: {"schema": _ref(request)}}}
        if response is not None:
            operation["description"] = f"The task's `data`, once it succeeds, is a {response.__name__}."
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Percept",
            "version": "0.1.0",
            "description": (
                "Self-hosted computer vision: Deepomatic v0.7 (/v0.7), Clarifai outputs (/v2),"
                " Annolab batch jobs (/v1)."
            ),
            # Queue producers publish to RabbitMQ instead; their contract is an AsyncAPI document.
            "x-asyncapi": ASYNCAPI_PATH,
        },
        "externalDocs": {"description": "Queue producers (AsyncAPI 3.0)", "url": ASYNCAPI_PATH},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-KEY"},
                "ClarifaiKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Key <api key>`",
                },
                "AnnolabKey": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "`Api-Key <api key>`",
                },
            },
        },
    }


async def serve_openapi(_request: web.Request) -> web.Response:
    return web.json_response(openapi_document())
