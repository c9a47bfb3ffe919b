"""PERCEPT_BROKER_URL picks the adapter."""

from __future__ import annotations

import pytest

from broker.amqp import AmqpBroker
from broker.factory import make_broker
from broker.memory import MemoryBroker


@pytest.mark.parametrize(
    ("url", "adapter"),
    [
        ("", MemoryBroker),
        ("amqp://guest:guest@127.0.0.1/", AmqpBroker),
        ("amqps://rabbit.example/", AmqpBroker),
    ],
)
def test_url_picks_the_adapter(url: str, adapter: type) -> None:
    assert isinstance(make_broker(url), adapter)


def test_other_urls_are_refused_naming_the_variable() -> None:
    with pytest.raises(ValueError, match="PERCEPT_BROKER_URL"):
        make_broker("redis://127.0.0.1/")
