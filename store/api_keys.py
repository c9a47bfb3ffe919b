"""API keys as the store keeps them: hashed, never in clear; looked up with a short positive cache.

Shared by the gateway (HTTP headers) and the consumers (queue producers' message headers).
"""

from __future__ import annotations

import hashlib
import time

from schemas.documents import KEYS_OWNER
from store.port import API_KEYS, Store

_CACHE_SECONDS = 30.0
_CACHE_ENTRIES = 10_000


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyCache:
    """Positive lookups only, so a new key works at once and a deleted key stops within the TTL."""

    def __init__(self) -> None:
        self._owners: dict[str, tuple[str, float]] = {}

    async def owner(self, store: Store, key: str) -> str | None:
        hashed = hash_key(key)
        cached = self._owners.get(hashed)
        now = time.monotonic()
        if cached is not None and cached[1] > now:
            return cached[0]
        doc = await store.get(API_KEYS, hashed, owners=[KEYS_OWNER])
        if doc is None:
            return None
        if len(self._owners) > _CACHE_ENTRIES:
            self._owners.clear()
        self._owners[hashed] = (doc.tenant, now + _CACHE_SECONDS)
        return doc.tenant
