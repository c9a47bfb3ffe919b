"""The queue producers' contract: an AsyncAPI 3.0 document and the request's JSON Schema.

Both are generated from the pydantic models that validate the messages and from the topology the brokers
declare, so they cannot drift from the code. Copies are committed under docs/ for readers without a running
gateway; `python -m gateway.asyncapi` rewrites them, and a test fails while they differ.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path
from typing import Any

from pydantic.json_schema import models_json_schema

from broker.topology import DEAD_LETTER_EXCHANGE, DEAD_REASON_HEADER, EXCHANGE, REQUESTS
from schemas.producer import API_KEY_HEADER, ProducerReply, ProducerRequest

SCHEMA_PATH = "/schemas/producer-message.json"
ASYNCAPI_PATH = "/asyncapi.json"
# Where the committed copies live, relative to the repository root.
COMMITTED = {"docs/asyncapi.json": ASYNCAPI_PATH, "docs/producer-message.schema.json": SCHEMA_PATH}

_BINDING_VERSION = "0.3.0"


def _routing_key_binding(exchange: str) -> dict[str, Any]:
    return {
        "amqp": {
            "is": "routingKey",
            "exchange": {
                "name": exchange,
                "type": "direct",
                "durable": True,
                "autoDelete": False,
                "vhost": "/",
            },
            "bindingVersion": _BINDING_VERSION,
        }
    }


@cache
def producer_message_schema() -> dict[str, Any]:
    """JSON Schema (2020-12) of the body a producer publishes."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_PATH,
        **ProducerRequest.model_json_schema(),
    }


@cache
def asyncapi_document() -> dict[str, Any]:
    _, definitions = models_json_schema(
        [(ProducerRequest, "validation"), (ProducerReply, "serialization")],
        ref_template="#/components/schemas/{model}",
    )
    headers = {
        "type": "object",
        "properties": {API_KEY_HEADER: {"type": "string", "description": "your Percept API key"}},
        "required": [API_KEY_HEADER],
    }
    dead_headers = {
        "type": "object",
        "properties": {DEAD_REASON_HEADER: {"type": "string", "description": "why no task was created"}},
    }
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Percept queue producers",
            "version": "1",
            "description": (
                "Publish recognition inferences straight to RabbitMQ. Publish persistent messages to the "
                f"direct exchange `{EXCHANGE}` with routing key `{REQUESTS.name}` (do not declare the queue: "
                "Percept declares it as a quorum queue). Each valid, authenticated request becomes a task, "
                "as `POST /v0.7/recognition/versions/{id}/inference` creates one. With the AMQP properties "
                "`reply_to` and `correlation_id`, the task's outcome (or the refusal) is published to "
                "`reply_to` through the default exchange. Requests without a valid key, malformed, or "
                f"naming an unknown version or spec create no task and are dead-lettered to "
                f"`{REQUESTS.dead_letter_queue}` with the reason in the `{DEAD_REASON_HEADER}` header."
            ),
        },
        "servers": {
            "rabbitmq": {
                "host": "localhost:5672",
                "protocol": "amqp",
                "protocolVersion": "0-9-1",
                "description": "the RabbitMQ that Percept's gateway and consumers use (PERCEPT_BROKER_URL)",
            }
        },
        "channels": {
            "requests": {
                "address": REQUESTS.name,
                "description": f"routing key `{REQUESTS.name}` on exchange `{EXCHANGE}`",
                "messages": {"request": {"$ref": "#/components/messages/request"}},
                "bindings": _routing_key_binding(EXCHANGE),
            },
            "replies": {
                "address": None,
                "description": "the queue named by the request's `reply_to` (e.g. exclusive, server-named)",
                "messages": {"reply": {"$ref": "#/components/messages/reply"}},
            },
            "deadLetters": {
                "address": REQUESTS.dead_letter_queue,
                "description": (
                    f"refused requests, unchanged but for the `{DEAD_REASON_HEADER}` header (queue "
                    f"`{REQUESTS.dead_letter_queue}`, bound to exchange `{DEAD_LETTER_EXCHANGE}`)"
                ),
                "messages": {"deadLetter": {"$ref": "#/components/messages/deadLetter"}},
                "bindings": _routing_key_binding(DEAD_LETTER_EXCHANGE),
            },
        },
        "operations": {
            "requestInference": {
                "action": "send",
                "channel": {"$ref": "#/channels/requests"},
                "messages": [{"$ref": "#/channels/requests/messages/request"}],
                "reply": {
                    "address": {
                        "location": "$message.header#/reply_to",
                        "description": "the AMQP `reply_to` property",
                    },
                    "channel": {"$ref": "#/channels/replies"},
                    "messages": [{"$ref": "#/channels/replies/messages/reply"}],
                },
            },
            "inspectDeadLetters": {
                "action": "receive",
                "channel": {"$ref": "#/channels/deadLetters"},
                "messages": [{"$ref": "#/channels/deadLetters/messages/deadLetter"}],
            },
        },
        "components": {
            "schemas": definitions.get("$defs", {}),
            "messages": {
                "request": {
                    "name": "ProducerRequest",
                    "contentType": "application/json",
                    "headers": headers,
                    "payload": {"$ref": "#/components/schemas/ProducerRequest"},
                    "correlationId": {"location": "$message.header#/correlation_id"},
                    "bindings": {"amqp": {"deliveryMode": 2, "bindingVersion": _BINDING_VERSION}},
                },
                "reply": {
                    "name": "ProducerReply",
                    "contentType": "application/json",
                    "payload": {"$ref": "#/components/schemas/ProducerReply"},
                    "correlationId": {"location": "$message.header#/correlation_id"},
                },
                "deadLetter": {
                    "name": "DeadLetter",
                    "contentType": "application/json",
                    "headers": dead_headers,
                    "payload": {"description": "the refused request's body, as published"},
                },
            },
        },
    }


def render(document: dict[str, Any]) -> str:
    """The committed form: stable key order and a final newline, so diffs stay readable."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def documents() -> dict[str, dict[str, Any]]:
    """Committed file → its document."""
    by_path = {ASYNCAPI_PATH: asyncapi_document(), SCHEMA_PATH: producer_message_schema()}
    return {file: by_path[path] for file, path in COMMITTED.items()}


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    for file, document in documents().items():
        (root / file).write_text(render(document))
        print(f"wrote {file}")
