"""Hostile input: schemathesis fuzzes every operation of /openapi.json against a live in-process Percept.

Each operation gets schema-valid (positive) and schema-breaking (negative) requests with a valid key, and a
few requests with no key or a wrong one. Every answer must be documented (status code, content type, body
schema), never a 5xx, and every 4xx must be a JSON error in the product's shape naming the field and reason.

The server is run as `percept serve` runs it (gateway.http_server.GatewayRunner), so requests that aiohttp's
HTTP parser refuses before any middleware (a line over its limits, too many headers) are held to the same
checks: their JSON errors come from the runner's connection handler.

Failures are collected, not raised at the first one, so a run reports every kind of problem at once (and
Hypothesis does not spend minutes shrinking). Generation is derandomized: the same cases on every run.
"""

from __future__ import annotations

import asyncio
import base64
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import Case, CheckContext, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from broker.memory import MemoryBroker
from consumers.config import ConsumerConfig
from consumers.service import ConsumerService
from gateway.app import create_app
from gateway.auth import ensure_api_key
from gateway.context import GatewayConfig
from gateway.http_server import MAX_FIELD_BYTES, MAX_REQUEST_LINE_BYTES, GatewayRunner
from store.factory import open_store
from tests.images import png
from tests.models import network_parts

pytestmark = [
    pytest.mark.slow,
    # The server thread (webhook retry jitter) draws from the process's `random` while Hypothesis generates a
    # case; Hypothesis takes that for a strategy using `random`. Generation itself stays derandomized.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies"),
]

API_KEY = "fuzz-key-0123456789abcdef"
# Per operation: positive and negative cases with a valid key, then cases with no key and a wrong key.
POSITIVE_CASES = 30
NEGATIVE_CASES = 25
KEYLESS_CASES = 2
MIN_TOTAL_CASES = 1000
READY_TIMEOUT_S = 120


class LivePercept:
    """The embedded Percept (SQLite, in-process broker, consumer) on a loopback port, in its own thread.

    Schemathesis sends requests synchronously, so the server cannot share the test's event loop.
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="live-percept", daemon=True)
        self.url = ""

    def __enter__(self) -> LivePercept:
        self._thread.start()
        if not self._ready.wait(READY_TIMEOUT_S) or self._error is not None:
            raise RuntimeError(f"Percept did not start: {self._error!r}")
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            self._error = error
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        store = await open_store("", self._root)
        broker = MemoryBroker()
        await broker.start()
        service = ConsumerService(
            store, broker, ConsumerConfig(cache_dir=self._root / "cache", outbound_allow=("127.0.0.1/32",))
        )
        await service.start()
        app = create_app(GatewayConfig(max_request_bytes=1024 * 1024), store=store, broker=broker)
        runner = GatewayRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        await ensure_api_key(store, API_KEY)
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()
            await service.stop(grace_s=5)
            await broker.close()
            await store.close()


@pytest.fixture(scope="module")
def live_percept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LivePercept]:
    with LivePercept(tmp_path_factory.mktemp("fuzz")) as percept:
        yield percept


class Seeder:
    """Makes known-good requests, keeping each answer so that it can be checked against the document."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.answers: list[tuple[str, str, requests.Response]] = []

    def call(self, method: str, template: str, status: int, *, ids: Any = (), **kwargs: Any) -> Any:
        """`template` is the documented path; `ids` fill its parameters in order."""
        values = iter(ids)
        path = re.sub(r"\{\w+\}", lambda _: str(next(values)), template)
        response = requests.request(
            method, self.base_url + path, headers=HEADERS_BY_KIND["valid key"], timeout=90, **kwargs
        )
        assert response.status_code == status, f"{method} {path}: {response.status_code} {response.text}"
        self.answers.append((method, template, response))
        return response.json()

    def finished(self, task_id: str) -> dict[str, Any]:
        task: dict[str, Any] = self.call("GET", "/v0.7/tasks/{id}/", 200, ids=[task_id], params={"wait": 60})
        assert task["status"] != "pending", task
        return task


def seed(seeder: Seeder, model: Path) -> dict[str, str]:
    """One object of every kind, so that generated cases also reach existing objects, not only 404s.

    Keys are path parameter names, or for `{id}` the collection before it (see `known_path_parameters`).
    """
    form = {
        "name": "fuzz",
        "framework": "tensorflow-1.x",
        "preprocessing.inputs[0]tensor_name": "image",
        "preprocessing.inputs[0]image.dimension_order": "NHWC",
        "preprocessing.inputs[0]image.target_size": "16x16",
        "preprocessing.inputs[0]image.resize_type": "SQUASH",
        "preprocessing.inputs[0]image.color_channels": "RGB",
        "preprocessing.inputs[0]image.pixel_scaling": "1.0",
        "preprocessing.inputs[0]image.data_type": "FLOAT32",
    }
    files = {name: (name, data) for name, data in network_parts(model).items()}
    network = seeder.call("POST", "/v0.7/networks/", 201, data=form, files=files)
    assert seeder.finished(network["task_id"])["status"] == "success"
    labels = [{"id": 0, "name": "dark"}, {"id": 1, "name": "bright"}]
    spec_body = {"name": "s", "outputs": [{"labels": {"labels": labels}}]}
    spec = seeder.call("POST", "/v0.7/recognition/specs/", 201, json=spec_body)
    post = {"classification": {"output_tensor": "probabilities", "thresholds": [0.5, 0.5]}}
    version_body = {"spec_id": spec["id"], "network_id": network["id"], "post_processings": [post]}
    version = seeder.call("POST", "/v0.7/recognition/versions/", 201, json=version_body)
    source = base64.b64encode(png((200, 200, 200))).decode()
    image = {"inputs": [{"image": {"source": source}}]}
    inference = "/v0.7/recognition/versions/{id}/inference"
    task = seeder.call("POST", inference, 200, ids=[version["id"]], json=image)
    assert seeder.finished(task["task_id"])["status"] == "success"
    raw = seeder.call("POST", "/v0.7/networks/{id}/inference", 200, ids=[network["id"]], json=image)
    assert seeder.finished(raw["task_id"])["status"] == "success"
    clarifai = {"inputs": [{"data": {"image": {"base64": source}}}]}
    seeder.call("POST", "/v2/models/{model_id}/outputs", 200, ids=[spec["id"]], json=clarifai)
    endpoint = seeder.call("POST", "/v0.7/webhooks/", 201, json={"url": "http://127.0.0.1:9/hook"})
    project = seeder.call("POST", "/v1/projects", 201, json={"name": "fuzz"})
    sources = "/v1/projects/{project}/sources"
    stored = seeder.call("POST", sources, 201, ids=[project["id"]], json={"url": "http://127.0.0.1:9/a.png"})
    job_body = {
        "groupName": "fuzz",
        "projectIdentifier": project["id"],
        "modelIdentifier": spec["id"],
        "sourceIds": [stored["id"]],
        "outputLayerIdentifier": "Predictions",
    }
    job = seeder.call("POST", "/v1/infer/batch", 200, json=job_body)
    seeder.finished(job["inferenceJobId"])
    return {
        "networks": str(network["id"]),
        "specs": str(spec["id"]),
        "versions": str(version["id"]),
        "tasks": str(task["task_id"]),
        "webhooks": str(endpoint["id"]),
        "user_id": "me",
        "app_id": "main",
        "model_id": str(spec["id"]),
        "version_id": str(version["id"]),
        "project": str(project["id"]),
        "source": str(stored["id"]),
        "layer": "Predictions",
        "job_id": str(job["inferenceJobId"]),
    }


def known_path_parameters(path: str, seeds: dict[str, str]) -> dict[str, str] | None:
    """Path parameters naming seeded objects, or None when the path has none (or names an unseeded kind)."""
    parameters = {}
    for collection, name in re.findall(r"([\w-]+)/\{(\w+)\}", path):
        value = seeds.get(collection if name == "id" else name)
        if value is None:
            return None
        parameters[name] = value
    return parameters or None


def assert_error_shape(path: str, status: int, content_type: str, body: Any) -> None:
    """A 4xx is JSON in the surface's error shape, naming the field at fault and the reason."""
    if not 400 <= status < 500:
        return
    assert content_type.startswith("application/json"), f"4xx answered as {content_type!r}, not JSON"
    assert isinstance(body, dict), "error body is not a JSON object"
    if path.startswith("/v2/"):
        status_object = body.get("status")
        assert isinstance(status_object, dict), "Clarifai error without a `status` object"
        assert isinstance(status_object.get("code"), int), "Clarifai error without an integer `status.code`"
        details = status_object.get("details")
        assert isinstance(details, str) and ":" in details, "Clarifai error whose details name no field"
        return
    for key in ("error", "detail", "code"):
        assert isinstance(body.get(key), str) and body[key], f"error body without a non-empty `{key}`"
    assert isinstance(body.get("field"), str) and body["field"], "error names no field"


def product_error_shape(ctx: CheckContext, response: Response, case: Case) -> None:
    content_type = response.headers.get("content-type", [""])[0]
    body = response.json() if content_type.startswith("application/json") else None
    assert_error_shape(case.path, response.status_code, content_type, body)


def over_parser_limits(response: Response) -> bool:
    """Whether the request had a line longer than aiohttp's HTTP parser takes: counted for the summary, to
    show that the refusals before any middleware were exercised (they face the same checks)."""
    request = response.request
    headers = [f"{name}: {value}" for name, value in request.headers.items()]
    return len(request.path_url.encode()) > MAX_REQUEST_LINE_BYTES or any(
        len(line.encode()) > MAX_FIELD_BYTES for line in headers
    )


CHECKS: list[Callable[..., Any]] = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    product_error_shape,
]
# Schemathesis's default statuses for rejected invalid data, plus the request-head refusals: an invalid query
# can make the URL longer than the request line limit (414), a generated header longer than 8,190 bytes (431).
FUZZ_CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "negative_data_rejection": {
                "expected-statuses": [
                    *("400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"),
                    *("414", "431"),
                ]
            }
        }
    }
)
HEADERS_BY_KIND = {
    "valid key": {"X-API-KEY": API_KEY},
    "no key": {},
    "wrong key": {"X-API-KEY": "not-a-key-0123456789"},
}


class Fuzzer:
    """Runs generated cases through the checks, remembering failures by kind instead of raising."""

    def __init__(self, base_url: str, seeds: dict[str, str]) -> None:
        self.base_url = base_url
        self.seeds = seeds
        self.session = requests.Session()
        self.cases: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        self.over_limit = 0
        self.failures: dict[str, list[str]] = {}

    def run(self, operation: Any, mode: GenerationMode, key: str, examples: int) -> None:
        headers = HEADERS_BY_KIND[key]

        strategy = operation.as_strategy(generation_mode=mode)
        known = known_path_parameters(operation.path, self.seeds)
        if known is not None:
            # Half the cases aim at the seeded objects, so validation past the 404 is exercised too.
            strategy = st.one_of(strategy, operation.as_strategy(generation_mode=mode, path_parameters=known))

        @settings(
            max_examples=examples,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            # Only the explicit phase: no shrinking, since failures are recorded rather than raised.
            phases=[Phase.generate],
        )
        @given(case=strategy)
        def send(case: Case) -> None:
            self.cases[operation.label] += 1
            started = time.monotonic()
            response = case.call(base_url=self.base_url, session=self.session, headers=headers, timeout=90)
            self.seconds[operation.label] += time.monotonic() - started
            if over_parser_limits(response):
                self.over_limit += 1
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except FailureGroup as group:
                for failure in group.exceptions:
                    kind = f"{failure.title} | {operation.label} | {mode.value}, {key}"
                    example = f"{failure.message}\n[{response.status_code}] {response.text[:300]}"
                    self.failures.setdefault(kind, []).append(
                        f"{example}\n{case.as_curl_command(headers=headers)}"
                    )

        send()


def _operations(schema: Any) -> list[Any]:
    """Every operation, deletions last so that they run after the others have had their turn."""
    operations = [result.ok() for result in schema.get_all_operations()]
    return sorted(operations, key=lambda op: (op.method.upper() == "DELETE", op.path, op.method))


@pytest.fixture(scope="module")
def seeder(live_percept: LivePercept) -> Seeder:
    return Seeder(live_percept.url)


@pytest.fixture(scope="module")
def seeds(seeder: Seeder, tiny_models: dict[str, Path]) -> dict[str, str]:
    return seed(seeder, tiny_models["brightness"])


def test_known_good_answers_match_the_document(seeder: Seeder, seeds: dict[str, str]) -> None:
    """Random bodies seldom pass validation, so success bodies are checked on known-good requests too:
    the seeding requests, and every GET operation on the seeded objects."""
    schema = schemathesis.openapi.from_url(f"{seeder.base_url}/openapi.json")
    for path, operations in schema.raw_schema["paths"].items():
        known = known_path_parameters(path, seeds)
        if "get" in operations and (known is not None or "{" not in path):
            query = {"task_ids": seeds["tasks"]} if path == "/v0.7/tasks/" else {}
            seeder.call("GET", path, 200, ids=list((known or {}).values()), params=query)
    problems = []
    for method, template, response in seeder.answers:
        try:
            schema[template][method].validate_response(response)
        except FailureGroup as group:
            problems += [
                f"{method} {template}: {failure.title}: {failure.message}" for failure in group.exceptions
            ]
        except Failure as failure:  # a single failure is raised as itself
            problems.append(f"{method} {template}: {failure.title}: {failure.message}")
    checked = {(method, template) for method, template, _ in seeder.answers}
    print(f"checked {len(seeder.answers)} known-good answers of {len(checked)} operations")
    assert not problems, "\n".join(problems)


# Bodies that are broken below the level of the documented schemas: framing, encoding, nesting, size.
HOSTILE_BODIES: list[tuple[str, bytes]] = [
    ("multipart/form-data", b'{"name": "x"}'),  # no boundary
    (
        "multipart/form-data; boundary=zz",
        b'--zz\r\nContent-Disposition: form-data; name="\x0f"\r\n\r\nx\r\n--zz--\r\n',
    ),
    (
        "multipart/form-data; boundary=zz",
        b'--zz\r\nContent-Disposition: form-data; name="name"\r\n\r\nunterminated',
    ),
    ("multipart/form-data; boundary=zz", b"--zz\r\nContent-Disposition: form-data\r\n\r\nx\r\n--zz--\r\n"),
    ("application/json", b"{"),
    ("application/json", b"\xff\xfe\x00"),
    ("application/json", b"[1, 2]"),
    ("application/json", b""),
    ("application/json", b"[" * 100_000 + b"]" * 100_000),  # deeper than Python's recursion limit
    ("application/json", b'{"name": ' + b"9" * 5000 + b"}"),  # more digits than Python converts
    ("application/json", b'{"name": NaN, "metadata": {"a": Infinity}}'),
    ("text/plain", b"name=x"),
    ("application/x-www-form-urlencoded", b"name=x"),
]
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _concrete(path: str, seeds: dict[str, str]) -> str:
    known = known_path_parameters(path, seeds) or {}
    return re.sub(r"\{(\w+)\}", lambda match: known.get(match[1], "1"), path)


def test_hostile_framing_and_methods(live_percept: LivePercept, seeds: dict[str, str]) -> None:
    """Every body-taking operation gets malformed bodies, every path the methods it does not document."""
    session = requests.Session()
    document = session.get(f"{live_percept.url}/openapi.json", timeout=30).json()
    problems: list[str] = []
    sent = 0
    for path, operations in document["paths"].items():
        url = live_percept.url + _concrete(path, seeds)
        documented = {method.upper() for method in operations}
        for method in METHODS:
            if method in documented:
                continue
            response = session.request(method, url, headers=HEADERS_BY_KIND["valid key"], timeout=90)
            sent += 1
            allowed = {part.strip() for part in response.headers.get("Allow", "").split(",") if part.strip()}
            if response.status_code != 405 or not documented <= allowed <= documented | {"HEAD"}:
                problems.append(f"{method} {path}: {response.status_code}, Allow {sorted(allowed)}")
            problems += _shape_problems(method, path, response)
        for method, operation in operations.items():
            if "requestBody" not in operation:
                continue
            for content_type, body in HOSTILE_BODIES:
                headers = {**HEADERS_BY_KIND["valid key"], "Content-Type": content_type}
                response = session.request(method.upper(), url, data=body, headers=headers, timeout=90)
                sent += 1
                if not 400 <= response.status_code < 500:
                    problems.append(
                        f"{method.upper()} {path} [{content_type}, {body[:40]!r}]: {response.status_code}"
                    )
                problems += _shape_problems(method.upper(), path, response)
    print(f"sent {sent} hostile framing and method cases")
    assert not problems, "\n".join(problems)


def _shape_problems(method: str, path: str, response: requests.Response) -> list[str]:
    content_type = response.headers.get("Content-Type", "")
    try:
        body = response.json() if content_type.startswith("application/json") else None
        assert_error_shape(path, response.status_code, content_type, body)
    except (AssertionError, ValueError) as error:
        return [f"{method} {path}: {response.status_code} {error}: {response.text[:200]}"]
    return []


def test_fuzz_every_operation(live_percept: LivePercept, seeds: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_url(f"{live_percept.url}/openapi.json", config=FUZZ_CONFIG)
    # Keys are sent by the fuzzer itself (valid, missing or wrong), never generated: a generated key is just
    # a wrong one, and a negative case that only drops the key is the "no key" run.
    schema.config.generation.update(with_security_parameters=False)
    fuzzer = Fuzzer(live_percept.url, seeds)
    for operation in _operations(schema):
        fuzzer.run(operation, GenerationMode.POSITIVE, "valid key", POSITIVE_CASES)
        # Path parameters are strings, which no value breaks: only a query or a body can be made invalid.
        if len(operation.query) or len(operation.body):
            fuzzer.run(operation, GenerationMode.NEGATIVE, "valid key", NEGATIVE_CASES)
        for key in ("no key", "wrong key"):
            fuzzer.run(operation, GenerationMode.POSITIVE, key, KEYLESS_CASES)
    total = sum(fuzzer.cases.values())
    print(
        f"fuzzed {total} cases over {len(fuzzer.cases)} operations ({fuzzer.over_limit} over parser limits)"
    )
    for label, count in sorted(fuzzer.cases.items()):
        print(f"{count:5d} cases {fuzzer.seconds[label]:6.1f} s  {label}")
    report = "\n\n".join(
        f"{kind}: {len(found)}x\n{found[0]}" for kind, found in sorted(fuzzer.failures.items())
    )
    print(report)
    assert not fuzzer.failures, f"{len(fuzzer.failures)} kinds of failure:\n{report}"
    assert total >= MIN_TOTAL_CASES, f"only {total} cases generated"
