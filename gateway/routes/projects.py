"""Annolab projects (datasets): create and list projects, upload and list sources, read predictions; tags
and regions (a tag on a normalized box of a source), the annotations Custom Vision training will read."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from aiohttp import web

from gateway.bodies import read_body
from gateway.context import CONFIG, STORE, owner_of
from gateway.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from gateway.images import SUPPORTED, sniff_format
from gateway.pagination import page_body, page_params
from gateway.routes.common import add, no_content, ok, parse, path_id
from schemas.annolab import ProjectCreate, RegionsSet, SourceUrl, TagCreate
from schemas.common import iso
from schemas.documents import Document, LayerDoc, PredictionDoc, ProjectDoc, RegionDoc, SourceDoc, TagDoc
from store.port import LAYERS, PREDICTIONS, PROJECTS, REGIONS, SOURCES, TAGS, Collection, source_file_key

D = TypeVar("D", bound=Document)


async def find_project(request: web.Request, identifier: str, *, field: str) -> ProjectDoc:
    """By id, else by name (names are unique per owner and never all digits)."""
    store = request.app[STORE]
    owners = [owner_of(request)]
    project = await store.get(PROJECTS, identifier, owners=owners) if identifier.isdigit() else None
    if project is None:
        named = await store.find(PROJECTS, owners=owners, where={"name": identifier}, limit=1)
        project = named.items[0] if named.items else None
    if project is None:
        raise NotFound(f"project {identifier!r} does not exist", field=field)
    return project


async def find_layer(request: web.Request, project: ProjectDoc, identifier: str, *, field: str) -> LayerDoc:
    store = request.app[STORE]
    owners = [owner_of(request)]
    if identifier.isdigit():
        layer = await store.get(LAYERS, identifier, owners=owners)
        if layer is None or layer.project_id != project.id:
            raise NotFound(f"layer {identifier} does not exist in project {project.name!r}", field=field)
        return layer
    named = await store.find(LAYERS, owners=owners, where={"project_id": project.id, "name": identifier})
    if not named.items:
        raise NotFound(f"layer {identifier!r} does not exist in project {project.name!r}", field=field)
    return named.items[0]


def render_project(doc: ProjectDoc) -> dict[str, Any]:
    return {"id": int(doc.id), "name": doc.name, "createdAt": iso(doc.create_date)}


def render_source(doc: SourceDoc) -> dict[str, Any]:
    return {
        "id": int(doc.id),
        "projectId": int(doc.project_id),
        "name": doc.name,
        "url": doc.url,
        "contentType": doc.content_type,
        "createdAt": iso(doc.create_date),
    }


def render_prediction(doc: PredictionDoc) -> dict[str, Any]:
    return {
        "sourceId": int(doc.source_id),
        "layerId": int(doc.layer_id),
        "inferenceJobId": doc.job_id,
        "ok": doc.ok,
        "result": doc.data,
        "error": doc.error,
        "createdAt": iso(doc.date),
    }


async def create_project(request: web.Request) -> web.Response:
    created = parse(ProjectCreate, (await read_body(request)).fields)
    store = request.app[STORE]
    owner = owner_of(request)
    existing = await store.find(PROJECTS, owners=[owner], where={"name": created.name}, limit=0)
    if existing.count:
        raise Conflict(f"a project named {created.name!r} already exists", field="name")
    doc = ProjectDoc(id=await store.next_id("projects"), owner=owner, name=created.name)
    await store.insert(PROJECTS, doc)
    return ok(render_project(doc), status=201)


async def list_projects(request: web.Request) -> web.Response:
    offset, limit = page_params(request)
    page = await request.app[STORE].find(PROJECTS, owners=[owner_of(request)], offset=offset, limit=limit)
    results = [render_project(doc) for doc in page.items]
    return ok(page_body(request, count=page.count, offset=offset, limit=limit, results=results))


async def upload_source(request: web.Request) -> web.Response:
    """Multipart with a `file` part (stored now), or JSON `{url}`: fetched by the consumer at inference."""
    project = await find_project(request, path_id(request, "project"), field="project")
    body = await read_body(request)
    store = request.app[STORE]
    source_id = await store.next_id("sources")
    data = body.files.get("file")
    if data is None:
        given = parse(SourceUrl, body.fields)
        doc = SourceDoc(
            id=source_id, owner=project.owner, project_id=project.id, name=given.name, url=given.url
        )
    else:
        limit = request.app[CONFIG].max_inline_image_bytes
        if len(data) > limit:
            raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {limit}", field="file")
        image_format = sniff_format(data)
        if image_format is None:
            raise InvalidInput(f"not a supported image format ({SUPPORTED})", field="file")
        key = source_file_key(project.id, source_id)
        await store.put_file(key, data)
        name = str(body.fields.get("name", ""))
        doc = SourceDoc(
            id=source_id,
            owner=project.owner,
            project_id=project.id,
            name=name,
            file_key=key,
            content_type=f"image/{image_format}",
        )
    await store.insert(SOURCES, doc)
    return ok(render_source(doc), status=201)


async def _project_page(
    request: web.Request, collection: Collection[D], render: Callable[[D], dict[str, Any]]
) -> web.Response:
    """One page of a project's documents of `collection` (its sources, its tags)."""
    project = await find_project(request, path_id(request, "project"), field="project")
    offset, limit = page_params(request)
    page = await request.app[STORE].find(
        collection, owners=[project.owner], where={"project_id": project.id}, offset=offset, limit=limit
    )
    results = [render(doc) for doc in page.items]
    return ok(page_body(request, count=page.count, offset=offset, limit=limit, results=results))


async def list_sources(request: web.Request) -> web.Response:
    return await _project_page(request, SOURCES, render_source)


async def list_layer_predictions(request: web.Request) -> web.Response:
    project = await find_project(request, path_id(request, "project"), field="project")
    layer = await find_layer(request, project, path_id(request, "layer"), field="layer")
    offset, limit = page_params(request)
    page = await request.app[STORE].find(
        PREDICTIONS, owners=[project.owner], where={"layer_id": layer.id}, offset=offset, limit=limit
    )
    results = [render_prediction(doc) for doc in page.items]
    return ok(page_body(request, count=page.count, offset=offset, limit=limit, results=results))


async def list_source_predictions(request: web.Request) -> web.Response:
    """A source's prediction in every layer of its project."""
    project = await find_project(request, path_id(request, "project"), field="project")
    source = await find_source(request, project)
    store = request.app[STORE]
    offset, limit = page_params(request)
    page = await store.find(
        PREDICTIONS, owners=[project.owner], where={"source_id": source.id}, offset=offset, limit=limit
    )
    results = [render_prediction(doc) for doc in page.items]
    return ok(page_body(request, count=page.count, offset=offset, limit=limit, results=results))


async def find_source(request: web.Request, project: ProjectDoc) -> SourceDoc:
    source_id = path_id(request, "source")
    source = await request.app[STORE].get(SOURCES, source_id, owners=[project.owner])
    if source is None or source.project_id != project.id:
        raise NotFound(f"source {source_id} does not exist in project {project.name!r}", field="source")
    return source


def render_tag(doc: TagDoc) -> dict[str, Any]:
    return {
        "id": int(doc.id),
        "projectId": int(doc.project_id),
        "name": doc.name,
        "description": doc.description,
        "createdAt": iso(doc.create_date),
    }


def render_region(doc: RegionDoc) -> dict[str, Any]:
    return {
        "id": int(doc.id),
        "sourceId": int(doc.source_id),
        "tagId": int(doc.tag_id),
        "left": doc.left,
        "top": doc.top,
        "width": doc.width,
        "height": doc.height,
        "createdAt": iso(doc.create_date),
    }


async def create_tag(request: web.Request) -> web.Response:
    project = await find_project(request, path_id(request, "project"), field="project")
    created = parse(TagCreate, (await read_body(request)).fields)
    store = request.app[STORE]
    where = {"project_id": project.id, "name": created.name}
    if (await store.find(TAGS, owners=[project.owner], where=where, limit=0)).count:
        raise Conflict(f"project {project.name!r} already has a tag named {created.name!r}", field="name")
    doc = TagDoc(
        id=await store.next_id("tags"),
        owner=project.owner,
        project_id=project.id,
        name=created.name,
        description=created.description,
    )
    await store.insert(TAGS, doc)
    return ok(render_tag(doc), status=201)


async def list_tags(request: web.Request) -> web.Response:
    return await _project_page(request, TAGS, render_tag)


async def delete_tag(request: web.Request) -> web.Response:
    """The tag and its regions on every source, as Custom Vision's delete_tag does."""
    project = await find_project(request, path_id(request, "project"), field="project")
    tag_id = path_id(request, "tag")
    store = request.app[STORE]
    tag = await store.get(TAGS, tag_id, owners=[project.owner])
    if tag is None or tag.project_id != project.id:
        raise NotFound(f"tag {tag_id} does not exist in project {project.name!r}", field="tag")
    # Regions first: a failure in between leaves a tag with fewer regions, never regions without a tag.
    await store.delete_where(REGIONS, owner=project.owner, where={"tag_id": tag.id})
    await store.delete(TAGS, tag.id, owner=project.owner)
    return no_content()


async def set_regions(request: web.Request) -> web.Response:
    """Replace a source's regions; every tag must be one of the project's."""
    project = await find_project(request, path_id(request, "project"), field="project")
    source = await find_source(request, project)
    given = parse(RegionsSet, (await read_body(request)).fields)
    store = request.app[STORE]
    tag_ids = list(dict.fromkeys(region.tag_id() for region in given.regions))
    tags = await store.get_many(TAGS, tag_ids, owners=[project.owner])
    known = {tag.id for tag in tags if tag.project_id == project.id}
    for index, region in enumerate(given.regions):
        if region.tag_id() not in known:
            raise InvalidInput(
                f"tag {region.tag_id()} does not exist in project {project.name!r}",
                field=f"regions[{index}].tagId",
            )
    ids = await store.reserve_ids("regions", len(given.regions)) if given.regions else range(0)
    docs = [
        RegionDoc(
            id=str(region_id),
            owner=project.owner,
            project_id=project.id,
            source_id=source.id,
            tag_id=region.tag_id(),
            left=region.left,
            top=region.top,
            width=region.width,
            height=region.height,
        )
        for region_id, region in zip(ids, given.regions, strict=True)
    ]
    # One store operation: a failure leaves the old regions, and concurrent PUTs leave one whole set.
    await store.replace_where(REGIONS, owner=project.owner, where={"source_id": source.id}, docs=docs)
    return ok({"sourceId": int(source.id), "regions": [render_region(doc) for doc in docs]})


async def list_regions(request: web.Request) -> web.Response:
    project = await find_project(request, path_id(request, "project"), field="project")
    source = await find_source(request, project)
    offset, limit = page_params(request)
    page = await request.app[STORE].find(
        REGIONS, owners=[project.owner], where={"source_id": source.id}, offset=offset, limit=limit
    )
    results = [render_region(doc) for doc in page.items]
    return ok(page_body(request, count=page.count, offset=offset, limit=limit, results=results))


def setup(app: web.Application) -> None:
    add(app, "POST", "/v1/projects", create_project)
    add(app, "GET", "/v1/projects", list_projects)
    add(app, "POST", "/v1/projects/{project}/sources", upload_source)
    add(app, "GET", "/v1/projects/{project}/sources", list_sources)
    add(app, "GET", "/v1/projects/{project}/sources/{source}/predictions", list_source_predictions)
    add(app, "GET", "/v1/projects/{project}/layers/{layer}/predictions", list_layer_predictions)
    add(app, "POST", "/v1/projects/{project}/tags", create_tag)
    add(app, "GET", "/v1/projects/{project}/tags", list_tags)
    add(app, "DELETE", "/v1/projects/{project}/tags/{tag}", delete_tag)
    add(app, "PUT", "/v1/projects/{project}/sources/{source}/regions", set_regions)
    add(app, "GET", "/v1/projects/{project}/sources/{source}/regions", list_regions)
