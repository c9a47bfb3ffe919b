"""Fixtures shared by several integration modules."""

from tests.integration.test_webhooks import receiver_factory

__all__ = ["receiver_factory"]
