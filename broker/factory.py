"""Choose the broker adapter from PERCEPT_BROKER_URL: empty means the in-process broker."""

from __future__ import annotations

from broker.port import Broker


def make_broker(url: str) -> Broker:
    # Adapters are imported here so the embedded mode never imports aio-pika.
    if not url:
        from broker.memory import MemoryBroker

        return MemoryBroker()
    if url.startswith(("amqp://", "amqps://")):
        from broker.amqp import AmqpBroker

        return AmqpBroker(url)
    raise ValueError(
        f"PERCEPT_BROKER_URL must be empty (in-process broker) or an amqp:// or amqps:// URL, got {url!r}"
    )
