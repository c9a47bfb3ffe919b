"""JSON Schemas of the success answers, so that clients (and the API fuzzer) can check what they receive.

They describe what `gateway/render.py` and the route modules' renderers produce: every listed property is
always present (`required`), nullable ones say so. Clients must tolerate properties added later.
"""

from __future__ import annotations

from typing import Any

from schemas.documents import TaskStatus

_V = "/v0.7"
_STRING = {"type": "string"}
_INT = {"type": "integer"}
_ID = {"type": ["integer", "string"], "description": "integers for your objects, slugs for public ones"}
_DATE = {"type": "string", "description": "ISO 8601, UTC"}
_OBJECT = {"type": "object"}
_ARRAY = {"type": "array"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _record(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": sorted(properties)}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _page(item: str) -> dict[str, Any]:
    link = _nullable(_STRING)
    return _record(
        count=_INT, next=link, previous=link, prev=link, results={"type": "array", "items": _ref(item)}
    )


SCHEMAS: dict[str, dict[str, Any]] = {
    "Network": _record(
        id=_ID,
        name=_STRING,
        description=_STRING,
        metadata=_OBJECT,
        framework=_STRING,
        preprocessing=_OBJECT,
        postprocessings=_ARRAY,
        task_id=_STRING,
        deploy_status=_STRING,
        is_public={"type": "boolean"},
        create_date=_DATE,
        update_date=_DATE,
    ),
    "Spec": {
        **_record(
            id=_ID,
            name=_STRING,
            description=_STRING,
            metadata=_OBJECT,
            current_version_id=_nullable(_INT),
            is_public={"type": "boolean"},
            create_date=_DATE,
            update_date=_DATE,
        ),
        "description": "`outputs` (the labels) is left out of listings",
    },
    "Version": _record(
        id=_ID,
        spec_id=_ID,
        spec_name=_nullable(_STRING),
        network_id=_ID,
        network_name=_nullable(_STRING),
        post_processings=_ARRAY,
        create_date=_DATE,
        update_date=_DATE,
    ),
    "Task": _record(
        id=_STRING,
        status={"enum": [status.value for status in TaskStatus]},
        error=_nullable(_STRING),
        data=_nullable(_OBJECT),
        date_created=_DATE,
        date_updated=_DATE,
        subtasks={"type": "null"},
    ),
    "InferenceAccepted": {
        "type": "object",
        "properties": {"task_id": _STRING, "task": _ref("Task")},
        "required": ["task_id"],
        "description": "`task` only with `?wait`",
    },
    "WebhookEndpoint": _record(
        id=_INT,
        url=_STRING,
        events={"type": "array", "items": _STRING},
        description=_STRING,
        enabled={"type": "boolean"},
        disabled_reason=_nullable(_STRING),
        secret=_STRING,
        create_date=_DATE,
        update_date=_DATE,
    ),
    "WebhookAttempt": _record(
        webhook_id=_STRING,
        endpoint_id=_nullable(_INT),
        task_id=_STRING,
        event=_STRING,
        url=_STRING,
        attempt=_INT,
        result=_STRING,
        status_code=_nullable(_INT),
        error=_nullable(_STRING),
        duration_ms={"type": "number"},
        next_attempt_s=_nullable({"type": "number"}),
        date=_DATE,
    ),
    "Project": _record(id=_INT, name=_STRING, createdAt=_DATE),
    "Source": _record(
        id=_INT,
        projectId=_INT,
        name=_STRING,
        url=_nullable(_STRING),
        contentType=_nullable(_STRING),
        createdAt=_DATE,
    ),
    "Tag": _record(id=_INT, projectId=_INT, name=_STRING, description=_STRING, createdAt=_DATE),
    "Region": _record(
        id=_INT,
        sourceId=_INT,
        tagId=_INT,
        left={"type": "number"},
        top={"type": "number"},
        width={"type": "number"},
        height={"type": "number"},
        createdAt=_DATE,
    ),
    "SourcePrediction": _record(
        sourceId=_INT,
        layerId=_INT,
        inferenceJobId=_STRING,
        ok={"type": "boolean"},
        result=_nullable(_OBJECT),
        error=_nullable(_STRING),
        createdAt=_DATE,
    ),
    "BatchJob": _record(
        inferenceJobId=_STRING,
        status=_STRING,
        projectName=_STRING,
        projectId=_INT,
        outputLayerName=_STRING,
        outputLayerId=_INT,
        sourceIds={"type": "array", "items": _INT},
    ),
    "ClarifaiOutputs": _record(
        status={
            "type": "object",
            "properties": {"code": _INT, "description": _STRING, "details": _STRING},
            "required": ["code", "description"],
        },
        outputs={"type": "array", "items": _OBJECT},
    ),
}
SCHEMAS["Spec"]["properties"]["outputs"] = _ARRAY
SCHEMAS["BatchJobProgress"] = {
    "allOf": [
        _ref("BatchJob"),
        _record(
            progress=_record(done=_INT, failed=_INT, total=_INT),
            createdAt=_DATE,
            updatedAt=_DATE,
        ),
    ]
}
for _item in ("Network", "Spec", "Version", "Task", "WebhookEndpoint", "WebhookAttempt", "Project", "Source"):
    SCHEMAS[f"{_item}Page"] = _page(_item)
SCHEMAS["SourcePredictionPage"] = _page("SourcePrediction")
SCHEMAS["TagPage"] = _page("Tag")
SCHEMAS["RegionPage"] = _page("Region")
SCHEMAS["SourceRegions"] = _record(sourceId=_INT, regions={"type": "array", "items": _ref("Region")})

_INFERENCE = "InferenceAccepted"
# (method, path) -> the schema of the success body; operations not listed answer 204 or an undocumented body.
RESPONSES: dict[tuple[str, str], str] = {
    ("get", f"{_V}/networks/"): "NetworkPage",
    ("post", f"{_V}/networks/"): "Network",
    ("get", f"{_V}/networks/{{id}}/"): "Network",
    ("patch", f"{_V}/networks/{{id}}/"): "Network",
    ("put", f"{_V}/networks/{{id}}/"): "Network",
    ("post", f"{_V}/networks/{{id}}/inference"): _INFERENCE,
    ("get", f"{_V}/recognition/specs/"): "SpecPage",
    ("post", f"{_V}/recognition/specs/"): "Spec",
    ("get", f"{_V}/recognition/specs/{{id}}/"): "Spec",
    ("patch", f"{_V}/recognition/specs/{{id}}/"): "Spec",
    ("put", f"{_V}/recognition/specs/{{id}}/"): "Spec",
    ("get", f"{_V}/recognition/specs/{{id}}/versions"): "VersionPage",
    ("post", f"{_V}/recognition/specs/{{id}}/inference"): _INFERENCE,
    ("get", f"{_V}/recognition/public/"): "SpecPage",
    ("get", f"{_V}/recognition/public/{{id}}/"): "Spec",
    ("post", f"{_V}/recognition/public/{{id}}/inference"): _INFERENCE,
    ("get", f"{_V}/recognition/versions/"): "VersionPage",
    ("post", f"{_V}/recognition/versions/"): "Version",
    ("get", f"{_V}/recognition/versions/{{id}}/"): "Version",
    ("post", f"{_V}/recognition/versions/{{id}}/inference"): _INFERENCE,
    ("get", f"{_V}/tasks/{{id}}/"): "Task",
    ("get", f"{_V}/tasks/"): "TaskPage",
    ("get", f"{_V}/webhooks/"): "WebhookEndpointPage",
    ("post", f"{_V}/webhooks/"): "WebhookEndpoint",
    ("get", f"{_V}/webhooks/{{id}}/"): "WebhookEndpoint",
    ("patch", f"{_V}/webhooks/{{id}}/"): "WebhookEndpoint",
    ("get", f"{_V}/webhooks/{{id}}/deliveries/"): "WebhookAttemptPage",
    ("get", f"{_V}/webhooks/deliveries/"): "WebhookAttemptPage",
    ("post", "/v1/projects"): "Project",
    ("get", "/v1/projects"): "ProjectPage",
    ("post", "/v1/projects/{project}/sources"): "Source",
    ("get", "/v1/projects/{project}/sources"): "SourcePage",
    ("get", "/v1/projects/{project}/sources/{source}/predictions"): "SourcePredictionPage",
    ("get", "/v1/projects/{project}/layers/{layer}/predictions"): "SourcePredictionPage",
    ("post", "/v1/projects/{project}/tags"): "Tag",
    ("get", "/v1/projects/{project}/tags"): "TagPage",
    ("put", "/v1/projects/{project}/sources/{source}/regions"): "SourceRegions",
    ("get", "/v1/projects/{project}/sources/{source}/regions"): "RegionPage",
    ("post", "/v1/infer/batch"): "BatchJob",
    ("get", "/v1/infer/batch/{job_id}"): "BatchJobProgress",
}


def success_content(method: str, path: str) -> dict[str, Any]:
    """The `content` of the success answer, or nothing for operations whose body is not described."""
    if path.startswith("/v2/") and method == "post":
        name: str | None = "ClarifaiOutputs"
    else:
        name = RESPONSES.get((method, path))
    return {} if name is None else {"content": {"application/json": {"schema": _ref(name)}}}
