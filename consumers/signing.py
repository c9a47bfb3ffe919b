"""Standard Webhooks signatures: HMAC-SHA256 over `<id>.<timestamp>.<body>` with the decoded secret."""

from __future__ import annotations

import base64
import hashlib
import hmac

from schemas.webhooks import SECRET_PREFIX


def signature(secret: str, message_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    digest = hmac.new(key, f"{message_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, message_id: str, timestamp: int, body: str) -> dict[str, str]:
    """The spec's three headers; the timestamp is the attempt's, so receivers can refuse stale replays."""
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, message_id, timestamp, body),
    }
