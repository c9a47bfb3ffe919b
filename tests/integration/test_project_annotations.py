"""Project tags and regions (the annotations Custom Vision training will read): validation and isolation."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import FormData

from schemas.documents import RegionDoc
from store.port import REGIONS
from tests.conftest import OTHER_KEY, Stack
from tests.images import png


async def _call(
    stack: Stack, method: str, path: str, status: int, *, key: str | None = None, **kwargs: Any
) -> Any:
    response = await stack.client.request(
        method, path, headers=stack.headers(key) if key else stack.headers(), **kwargs
    )
    assert response.status == status, await response.text()
    return None if status == 204 else await response.json()


async def _project(stack: Stack, name: str, *, key: str | None = None) -> tuple[int, int]:
    """A project with one uploaded source: (project id, source id)."""
    project = await _call(stack, "POST", "/v1/projects", 201, key=key, json={"name": name})
    form = FormData()
    form.add_field("file", png((200, 200, 200)), filename="a.png", content_type="image/png")
    source = await _call(stack, "POST", f"/v1/projects/{project['id']}/sources", 201, key=key, data=form)
    return project["id"], source["id"]


def _box(tag_id: Any, left: Any = 0.1, top: Any = 0.2, width: Any = 0.5, height: Any = 0.3) -> dict[str, Any]:
    return {"tagId": tag_id, "left": left, "top": top, "width": width, "height": height}


async def test_tags_and_regions_round_trip(stack: Stack) -> None:
    project, source = await _project(stack, "Boxes")
    cat = await _call(stack, "POST", f"/v1/projects/{project}/tags", 201, json={"name": "cat"})
    dog = await _call(
        stack, "POST", f"/v1/projects/{project}/tags", 201, json={"name": "dog", "description": "good"}
    )
    assert cat["projectId"] == project and dog["description"] == "good"
    tags = await _call(stack, "GET", "/v1/projects/Boxes/tags?limit=1", 200)
    assert tags["count"] == 2 and [t["name"] for t in tags["results"]] == ["cat"] and tags["next"]

    regions_path = f"/v1/projects/{project}/sources/{source}/regions"
    # A box touching the far edges is inside; the tag id may come as a string of digits.
    body = {"regions": [_box(cat["id"]), _box(str(dog["id"]), left=0.9, top=0.0, width=0.1, height=1.0)]}
    saved = await _call(stack, "PUT", regions_path, 200, json=body)
    assert saved["sourceId"] == source
    assert [(r["tagId"], r["left"], r["width"]) for r in saved["regions"]] == [
        (cat["id"], 0.1, 0.5),
        (dog["id"], 0.9, 0.1),
    ]
    listed = await _call(stack, "GET", regions_path, 200)
    assert listed["count"] == 2 and listed["results"] == saved["regions"]

    # Setting replaces; deleting a tag takes its regions along.
    await _call(stack, "PUT", regions_path, 200, json={"regions": [_box(cat["id"]), _box(dog["id"])]})
    await _call(stack, "DELETE", f"/v1/projects/{project}/tags/{cat['id']}", 204)
    left = await _call(stack, "GET", regions_path, 200)
    assert [r["tagId"] for r in left["results"]] == [dog["id"]]
    assert [
        t["name"] for t in (await _call(stack, "GET", f"/v1/projects/{project}/tags", 200))["results"]
    ] == ["dog"]
    await _call(stack, "PUT", regions_path, 200, json={"regions": []})
    assert (await _call(stack, "GET", regions_path, 200))["count"] == 0


async def test_every_refusal_names_its_field(stack: Stack) -> None:
    project, source = await _project(stack, "Checked")
    other_project, other_source = await _project(stack, "Elsewhere")
    tag = await _call(stack, "POST", f"/v1/projects/{project}/tags", 201, json={"name": "cat"})
    foreign_tag = await _call(stack, "POST", f"/v1/projects/{other_project}/tags", 201, json={"name": "cat"})
    tags = f"/v1/projects/{project}/tags"
    regions = f"/v1/projects/{project}/sources/{source}/regions"

    async def refused(method: str, path: str, status: int, field: str, **kwargs: Any) -> None:
        error = await _call(stack, method, path, status, **kwargs)
        assert error["field"] == field, error
        assert error["detail"] or error["error"], error

    await refused("POST", tags, 409, "name", json={"name": "cat"})
    await refused("POST", tags, 400, "name", json={"name": "   "})
    await refused("POST", tags, 400, "name", json={})
    await refused("POST", tags, 400, "name", json={"name": "x" * 201})
    await refused("POST", tags, 400, "description", json={"name": "ok", "description": "x" * 1001})
    await refused("POST", tags, 400, "colour", json={"name": "ok", "colour": "red"})
    await refused("POST", "/v1/projects/424242/tags", 404, "project", json={"name": "ok"})
    await refused("DELETE", f"{tags}/424242", 404, "tag")
    await refused("DELETE", f"{tags}/{foreign_tag['id']}", 404, "tag")  # another project's tag

    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "regions"),
        ({"regions": [{"left": 0.1, "top": 0.1, "width": 0.1, "height": 0.1}]}, "regions[0].tagId"),
        ({"regions": [_box(tag["id"]), _box("cat")]}, "regions[1].tagId"),
        ({"regions": [_box(True)]}, "regions[0].tagId"),
        ({"regions": [_box(tag["id"], left=-0.1)]}, "regions[0].left"),
        ({"regions": [_box(tag["id"], top=1.5)]}, "regions[0].top"),
        ({"regions": [_box(tag["id"], width=0)]}, "regions[0].width"),  # left == right
        ({"regions": [_box(tag["id"], height=-0.2)]}, "regions[0].height"),  # bottom above top
        ({"regions": [_box(tag["id"], left=0.6, width=0.5)]}, "regions[0].width"),  # right edge past 1
        ({"regions": [_box(tag["id"], top=0.8, height=0.3)]}, "regions[0].height"),
        ({"regions": [_box(tag["id"], left="NaN")]}, "regions[0].left"),
        ({"regions": [_box(tag["id"], width=True)]}, "regions[0].width"),
        ({"regions": [_box(tag["id"]) | {"right": 0.9}]}, "regions[0].right"),
        ({"regions": [_box(tag["id"])] * 501}, "regions"),
        ({"regions": [_box(tag["id"]), _box(424242)]}, "regions[1].tagId"),  # no such tag
        ({"regions": [_box(foreign_tag["id"])]}, "regions[0].tagId"),  # another project's tag
    ]
    for body, field in cases:
        await refused("PUT", regions, 400, field, json=body)
    await refused(
        "PUT", f"/v1/projects/{project}/sources/{other_source}/regions", 404, "source", json={"regions": []}
    )
    await refused("GET", f"/v1/projects/{project}/sources/424242/regions", 404, "source")
    # Nothing refused was stored.
    assert (await _call(stack, "GET", regions, 200))["count"] == 0


async def test_another_tenants_tags_and_regions_are_unknown(stack: Stack) -> None:
    project, source = await _project(stack, "Mine")
    tag = await _call(stack, "POST", f"/v1/projects/{project}/tags", 201, json={"name": "cat"})
    regions = f"/v1/projects/{project}/sources/{source}/regions"
    await _call(stack, "PUT", regions, 200, json={"regions": [_box(tag["id"])]})

    theirs, their_source = await _project(stack, "Theirs", key=OTHER_KEY)
    their_tags = f"/v1/projects/{theirs}/tags"
    # Every id of the first tenant is unknown to the other, whether named by id or by name.
    for method, path, body in (
        ("GET", f"/v1/projects/{project}/tags", None),
        ("GET", "/v1/projects/Mine/tags", None),
        ("POST", f"/v1/projects/{project}/tags", {"name": "dog"}),
        ("DELETE", f"/v1/projects/{project}/tags/{tag['id']}", None),
        ("GET", regions, None),
        ("PUT", regions, {"regions": []}),
    ):
        error = await _call(stack, method, path, 404, key=OTHER_KEY, json=body)
        assert error["field"] == "project", error
    # Its own project cannot reach the first tenant's tag either.
    await _call(stack, "DELETE", f"{their_tags}/{tag['id']}", 404, key=OTHER_KEY)
    error = await _call(
        stack,
        "PUT",
        f"/v1/projects/{theirs}/sources/{their_source}/regions",
        400,
        key=OTHER_KEY,
        json={"regions": [_box(tag["id"])]},
    )
    assert error["field"] == "regions[0].tagId"
    # The first tenant's annotations are untouched.
    assert (await _call(stack, "GET", regions, 200))["count"] == 1


async def test_replacing_regions_fails_whole_or_not_at_all(stack: Stack) -> None:
    project, source = await _project(stack, "Atomic")
    tag = await _call(stack, "POST", f"/v1/projects/{project}/tags", 201, json={"name": "cat"})
    regions_path = f"/v1/projects/{project}/sources/{source}/regions"
    kept = await _call(stack, "PUT", regions_path, 200, json={"regions": [_box(tag["id"]), _box(tag["id"])]})

    # The next replacement fails half-way through its write: the second new region's id is taken (a
    # stand-in for any failure between removing the old regions and storing the new ones).
    taken = str(int(await stack.store.next_id("regions")) + 2)
    stranger = RegionDoc(
        id=taken,
        owner="elsewhere",
        project_id="0",
        source_id="0",
        tag_id="0",
        left=0,
        top=0,
        width=1,
        height=1,
    )
    await stack.store.insert(REGIONS, stranger)
    response = await stack.client.put(
        regions_path, json={"regions": [_box(tag["id"], left=0.0)] * 3}, headers=stack.headers()
    )
    assert response.status == 500, await response.text()
    assert (await _call(stack, "GET", regions_path, 200))["results"] == kept["regions"]


async def test_concurrent_region_replacements_leave_one_whole_set(stack: Stack) -> None:
    project, source = await _project(stack, "Racing")
    tag = await _call(stack, "POST", f"/v1/projects/{project}/tags", 201, json={"name": "cat"})
    regions_path = f"/v1/projects/{project}/sources/{source}/regions"
    bodies = [{"regions": [_box(tag["id"], left=n / 40) for _ in range(n % 5 + 1)]} for n in range(20)]
    saved = await asyncio.gather(*(_call(stack, "PUT", regions_path, 200, json=body) for body in bodies))
    listed = (await _call(stack, "GET", regions_path, 200))["results"]
    assert listed in [answer["regions"] for answer in saved]
