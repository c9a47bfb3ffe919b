"""An account's default webhook secret, made on first use by whichever process needs it first."""

from __future__ import annotations

import contextlib

from schemas.documents import WebhookSecretDoc
from schemas.webhooks import new_secret
from store.port import WEBHOOK_SECRETS, DuplicateId, Store


async def account_secret(store: Store, tenant: str) -> str:
    existing = await store.get(WEBHOOK_SECRETS, tenant, owners=[tenant])
    if existing is not None:
        return existing.secret
    # Another process may make it at the same moment: then its secret wins.
    with contextlib.suppress(DuplicateId):
        await store.insert(WEBHOOK_SECRETS, WebhookSecretDoc(id=tenant, owner=tenant, secret=new_secret()))
    made = await store.get(WEBHOOK_SECRETS, tenant, owners=[tenant])
    assert made is not None  # inserted above, by us or by the racer
    return made.secret
