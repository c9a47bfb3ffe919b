"""Tenant isolation across every resource the API exposes, as a matrix.

Tenant A creates one of everything. Tenants B and C then read, update, delete and infer on A's ids, on every
route and surface; each answer must be a refusal identical to the answer for an unknown id (same status,
same body once the id itself is blanked), so nobody learns even that the id exists. Afterwards A still gets
2xx on every non-destructive case: the foreign DELETEs removed nothing, and the request bodies were valid
(a case refused for a bad body would prove nothing). Lists of B and C never show A's ids.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.auth import ensure_api_key
from schemas.documents import AttemptResult, WebhookAttemptDoc
from schemas.webhooks import WebhookEvent
from store.port import WEBHOOK_ATTEMPTS
from tests.conftest import API_KEY, OTHER_KEY, Stack
from tests.images import png
from tests.integration.test_recognition_flow import _classifier_version

THIRD_KEY = "third-key-0123456789abcdef"
IMAGE = base64.b64encode(png((200, 200, 200))).decode()
INFER = {"inputs": [{"image": {"source": IMAGE}}]}
CLARIFAI = {"inputs": [{"data": {"image": {"base64": IMAGE}}}]}
CLARIFAI_PREFIXES = ("/v2", "/v2/users/me/apps/main")


@dataclass(frozen=True)
class Case:
    method: str
    path: str  # `{name}` placeholders: A's ids, or unknown ones
    body: dict[str, Any] | None = None
    owner_ok: bool = True  # A itself gets 2xx: non-destructive and meaningful for A
    only_b: bool = False  # refers to B's own objects, which C does not have
    listing: bool = False  # a list or filter: an unknown id is skipped (200), a foreign one must be too

    def placeholders(self) -> set[str]:
        return set(re.findall(r"\{(\w+)\}", f"{self.path} {self.body}"))


def cases() -> list[Case]:
    version_body = {
        "spec_id": "{spec}",
        "network_id": "{net}",
        "post_processings": [
            {"classification": {"output_tensor": "probabilities", "thresholds": [0.5, 0.5]}}
        ],
    }
    batch = {
        "projectIdentifier": "{proj}",
        "modelIdentifier": "{spec}",
        "sourceIds": ["{src}"],
        "outputLayerIdentifier": "OtherLayerZeta",
        "groupName": "g",
    }
    return [
        # networks
        Case("GET", "/v0.7/networks/{net}/"),
        Case("GET", "/v0.7/networks/public/{net}/", owner_ok=False),  # private: not on the public path
        Case("PATCH", "/v0.7/networks/{net}/", {"description": "patched"}),
        Case("PUT", "/v0.7/networks/{net}/", {"description": "put"}),
        Case("DELETE", "/v0.7/networks/{net}/", owner_ok=False),
        Case("POST", "/v0.7/networks/{net}/inference", INFER),
        # specs
        Case("GET", "/v0.7/recognition/specs/{spec}/"),
        Case("PATCH", "/v0.7/recognition/specs/{spec}/", {"description": "patched"}),
        Case("PUT", "/v0.7/recognition/specs/{spec}/", {"description": "put"}),
        Case("DELETE", "/v0.7/recognition/specs/{spec}/", owner_ok=False),
        Case("GET", "/v0.7/recognition/specs/{spec}/versions"),
        Case("POST", "/v0.7/recognition/specs/{spec}/inference", INFER),
        Case("GET", "/v0.7/recognition/public/{spec}/", owner_ok=False),
        Case("POST", "/v0.7/recognition/public/{spec}/inference", INFER, owner_ok=False),
        # versions, and references to A's objects from B's own
        Case("GET", "/v0.7/recognition/versions/{ver}/"),
        Case("DELETE", "/v0.7/recognition/versions/{ver}/", owner_ok=False),
        Case("POST", "/v0.7/recognition/versions/{ver}/inference", INFER),
        Case("POST", "/v0.7/recognition/versions/", version_body),
        Case("POST", "/v0.7/recognition/versions/", {**version_body, "spec_id": "{bspec}"}, False, True),
        Case("PATCH", "/v0.7/recognition/specs/{bspec}/", {"current_version_id": "{ver}"}, False, True),
        # tasks, single and batch
        Case("GET", "/v0.7/tasks/{task}/"),
        Case("GET", "/v0.7/tasks/?task_ids={task}", listing=True),
        Case("GET", "/v0.7/tasks/?task_ids={task}&wait=0.1", listing=True),
        # webhook endpoints and attempts
        Case("GET", "/v0.7/webhooks/{hook}/"),
        Case("PATCH", "/v0.7/webhooks/{hook}/", {"description": "patched"}),
        Case("DELETE", "/v0.7/webhooks/{hook}/", owner_ok=False),
        Case("GET", "/v0.7/webhooks/{hook}/deliveries/"),
        Case("GET", "/v0.7/webhooks/deliveries/?task_id={task}", listing=True),
        # projects (by id and by name), sources, layers, batch jobs
        Case("GET", "/v1/projects/{proj}/sources"),
        Case("GET", "/v1/projects/{projname}/sources"),
        Case("POST", "/v1/projects/{proj}/sources", {"url": "http://127.0.0.1:9/white.png"}),
        Case("GET", "/v1/projects/{proj}/sources/{src}/predictions"),
        Case("GET", "/v1/projects/{proj}/layers/{layer}/predictions"),
        Case("POST", "/v1/infer/batch", batch),
        Case("POST", "/v1/infer/batch", {**batch, "projectIdentifier": "{bproj}"}, False, True),
        Case("GET", "/v1/infer/batch/{job}"),
        # keys
        Case("DELETE", "/v0.7/accounts/me/keys/{key}/", owner_ok=False),
        # Clarifai outputs on A's model and version
        *(Case("POST", f"{prefix}/models/{{spec}}/outputs", CLARIFAI) for prefix in CLARIFAI_PREFIXES),
        *(
            Case("POST", f"{prefix}/models/{{spec}}/versions/{{ver}}/outputs", CLARIFAI)
            for prefix in CLARIFAI_PREFIXES
        ),
    ]


def _fill(value: Any, ids: dict[str, str]) -> Any:
    """Placeholders replaced; a JSON value that is only a placeholder of a numeric id becomes an int."""
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    if isinstance(value, str):
        whole = re.fullmatch(r"\{(\w+)\}", value)
        if whole and ids[whole[1]].isdigit():
            return int(ids[whole[1]])
        return re.sub(r"\{(\w+)\}", lambda m: ids[m[1]], value)
    return value


def _blank(text: str, ids: dict[str, str], names: set[str]) -> str:
    """The ids a case used, blanked; only those, so another object's equal number stays as it is."""
    for value in sorted((ids[name] for name in names if name in ids), key=len, reverse=True):
        text = re.sub(rf"(?<![\w.]){re.escape(value)}(?![\w.])", "<id>", text)
    return text


async def _send(stack: Stack, case: Case, ids: dict[str, str], key: str) -> tuple[int, str]:
    path = _fill(case.path, ids)
    kwargs: dict[str, Any] = {"json": _fill(case.body, ids)} if case.body is not None else {}
    response = await stack.client.request(case.method, path, headers=stack.headers(key), **kwargs)
    return response.status, await response.text()


async def _tenant_a(stack: Stack, tiny_models: dict[str, Path]) -> dict[str, str]:
    """One of everything, owned by A; returns the placeholders' values."""
    spec, version = await _classifier_version(stack, tiny_models)
    headers = stack.headers()

    async def post(path: str, body: dict[str, Any], status: int = 201) -> Any:
        response = await stack.client.post(path, json=body, headers=headers)
        assert response.status == status, await response.text()
        return await response.json()

    task = await post(f"/v0.7/recognition/versions/{version['id']}/inference", INFER, 200)
    await stack.wait_task(task["task_id"])
    hook = await post("/v0.7/webhooks/", {"url": "http://127.0.0.1:9/hook", "events": ["task.failed"]})
    owner = await ensure_api_key(stack.store, API_KEY)
    await stack.store.insert(
        WEBHOOK_ATTEMPTS,
        WebhookAttemptDoc(
            id="msg-isolation.1",
            owner=owner,
            message_id="msg-isolation",
            endpoint_id=str(hook["id"]),
            task_id=task["task_id"],
            event=WebhookEvent.TASK_FAILED,
            url="http://127.0.0.1:9/hook",
            attempt=1,
            result=AttemptResult.FAILED,
            duration_ms=1.0,
        ),
    )
    project = await post("/v1/projects", {"name": "ProjectAlphaZeta"})
    source = await post(f"/v1/projects/{project['id']}/sources", {"url": "http://127.0.0.1:9/white.png"})
    job = await post(
        "/v1/infer/batch",
        {
            "projectIdentifier": project["id"],
            "modelIdentifier": spec["id"],
            "sourceIds": [source["id"]],
            "outputLayerIdentifier": "GoldLayerZeta",
            "groupName": "g",
        },
        200,
    )
    await stack.wait_task(job["inferenceJobId"])
    keys = await (await stack.client.get("/v0.7/accounts/me/keys/", headers=headers)).json()
    # A second key, so that A's own revocation is not refused as its last (B's attempt must fail anyway).
    await post("/v0.7/accounts/me/keys/", {"name": "spare"})
    return {
        "net": str(version["network_id"]),
        "spec": str(spec["id"]),
        "ver": str(version["id"]),
        "task": str(task["task_id"]),
        "hook": str(hook["id"]),
        "proj": str(project["id"]),
        "projname": "ProjectAlphaZeta",
        "src": str(source["id"]),
        "layer": "GoldLayerZeta",
        "job": str(job["inferenceJobId"]),
        "key": keys["results"][0]["id"],
    }


async def _tenant_b_own(stack: Stack) -> dict[str, str]:
    spec_body = {"name": "b", "outputs": [{"labels": {"roi": "NONE", "labels": [{"id": 0, "name": "x"}]}}]}
    spec = await stack.client.post(
        "/v0.7/recognition/specs/", json=spec_body, headers=stack.headers(OTHER_KEY)
    )
    assert spec.status == 201, await spec.text()
    project = await stack.client.post(
        "/v1/projects", json={"name": "ProjectBetaZeta"}, headers=stack.headers(OTHER_KEY)
    )
    assert project.status == 201, await project.text()
    return {"bspec": str((await spec.json())["id"]), "bproj": str((await project.json())["id"])}


UNKNOWN = {
    "net": "900001",
    "spec": "900002",
    "ver": "900003",
    "task": "900004",
    "hook": "900005",
    "proj": "900006",
    "projname": "ProjectNoSuchZeta",
    "src": "900007",
    "layer": "NoSuchLayerZeta",
    "job": "900008",
    "key": "key_000000000000000000000000",
}

LISTS = (
    "/v0.7/networks/",
    "/v0.7/recognition/specs/",
    "/v0.7/recognition/versions/",
    "/v0.7/webhooks/",
    "/v0.7/webhooks/deliveries/",
    "/v0.7/accounts/me/keys/",
    "/v1/projects",
)


async def test_another_tenants_ids_answer_like_unknown_ones(
    stack: Stack, tiny_models: dict[str, Path]
) -> None:
    await ensure_api_key(stack.store, THIRD_KEY)
    theirs = await _tenant_a(stack, tiny_models)
    b_own = await _tenant_b_own(stack)
    leaks = []
    probes = 0
    for key in (OTHER_KEY, THIRD_KEY):
        for case in cases():
            if case.only_b and key != OTHER_KEY:
                continue
            own = b_own if key == OTHER_KEY else {}
            foreign = await _send(stack, case, {**theirs, **own}, key)
            unknown = await _send(stack, case, {**UNKNOWN, **own}, key)
            probes += 1
            used = case.placeholders()
            same = foreign[0] == unknown[0] and _blank(foreign[1], theirs, used) == _blank(
                unknown[1], UNKNOWN, used
            )
            if not same or (foreign[0] < 400 and not case.listing):
                leaks.append(f"{key[:5]} {case.method} {case.path}: foreign {foreign} vs unknown {unknown}")
    assert not leaks, "\n".join(leaks)
    assert probes > 70

    # A still has everything (foreign DELETEs removed nothing), and every body was a valid request.
    for case in cases():
        if case.owner_ok:
            status, text = await _send(stack, case, theirs, API_KEY)
            assert status < 300, f"A {case.method} {case.path}: {status} {text}"

    # Project names are unique per tenant, not across tenants: B may take A's, and then sees only its own.
    response = await stack.client.post(
        "/v1/projects", json={"name": "ProjectAlphaZeta"}, headers=stack.headers(OTHER_KEY)
    )
    assert response.status == 201, await response.text()
    assert (await response.json())["id"] != int(theirs["proj"])

    # Lists: nobody else sees A's objects.
    for key in (OTHER_KEY, THIRD_KEY):
        for path in LISTS:
            response = await stack.client.get(path, headers=stack.headers(key))
            assert response.status == 200, await response.text()
            ids = {str(item.get("id")) for item in (await response.json())["results"]}
            assert not ids & {theirs[name] for name in ("net", "spec", "ver", "hook", "proj", "key")}, path
            deliveries = [item for item in (await response.json())["results"] if "webhook_id" in item]
            assert not [d for d in deliveries if d["webhook_id"] == "msg-isolation"], path
