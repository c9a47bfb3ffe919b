"""API keys: `X-API-KEY` on the Deepomatic surface. Keys are stored hashed; lookups are cached briefly."""

from __future__ import annotations

import hashlib
import secrets
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from gateway.context import OWNER, STORE
from gateway.errors import NotAuthenticated
from schemas.documents import KEYS_OWNER, ApiKeyDoc
from store.port import API_KEYS, DuplicateId, Store

_CACHE_SECONDS = 30.0
_PUBLIC_PREFIXES = ("/healthz", "/readyz", "/openapi.json", "/docs", "/metrics")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return "pk_" + secrets.token_urlsafe(24)


async def ensure_api_key(store: Store, key: str, *, owner: str | None = None, name: str = "") -> str:
    """Make `key` valid (idempotent); returns its owner. A new key gets its own tenant."""
    hashed = hash_key(key)
    existing = await store.get(API_KEYS, hashed, owners=[KEYS_OWNER])
    if existing is not None:
        return existing.tenant
    tenant = owner or "t" + hashed[:16]
    try:
        await store.insert(API_KEYS, ApiKeyDoc(id=hashed, owner=KEYS_OWNER, tenant=tenant, name=name))
    except DuplicateId:
        # Another process bootstrapped the same key at the same moment: its tenant wins.
        raced = await store.get(API_KEYS, hashed, owners=[KEYS_OWNER])
        assert raced is not None
        return raced.tenant
    return tenant


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
        if len(self._owners) > 10_000:
            self._owners.clear()
        self._owners[hashed] = (doc.tenant, now + _CACHE_SECONDS)
        return doc.tenant


def auth_middleware(cache: KeyCache) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(_PUBLIC_PREFIXES) or request.path == "/":
            return await handler(request)
        key = request.headers.get("X-API-KEY")
        if not key:
            raise NotAuthenticated("Authentication credentials were not provided.", field="X-API-KEY")
        owner = await cache.owner(request.app[STORE], key)
        if owner is None:
            raise NotAuthenticated("Invalid API key.", field="X-API-KEY")
        request[OWNER] = owner
        return await handler(request)

    return authenticate
