"""One webhook POST: through the outbound policy, time-capped, redirects not followed, body not read."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from yarl import URL

from consumers.outbound import OutboundPolicy, RefusedAddress, guarded_session


@dataclass(frozen=True)
class Sent:
    duration_ms: float
    status_code: int | None = None  # None: no answer (see error)
    error: str | None = None
    refused: bool = False  # the outbound policy refused the address


class WebhookSender:
    def __init__(self, policy: OutboundPolicy, *, timeout_s: float) -> None:
        self._policy = policy
        self._timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = guarded_session(self._policy, timeout_s=self._timeout_s)
        return self._session

    async def post(self, url: str, body: str, headers: Mapping[str, str]) -> Sent:
        started = time.perf_counter()

        def took() -> float:
            return round((time.perf_counter() - started) * 1000, 1)

        try:
            self._policy.check_literal(URL(url).host or "")
            # A redirect is a failed attempt: following it would sign a body for a host nobody registered.
            async with self._client().post(
                url,
                data=body.encode(),
                headers={**headers, "Content-Type": "application/json", "User-Agent": "Percept-Webhooks"},
                allow_redirects=False,
            ) as response:
                return Sent(took(), status_code=response.status)
        except RefusedAddress as error:
            return Sent(took(), error=f"refused: {error}", refused=True)
        except aiohttp.ClientConnectorError as error:
            if isinstance(error.os_error, RefusedAddress):
                return Sent(took(), error=f"refused: {error.os_error}", refused=True)
            return Sent(took(), error=f"could not connect: {error}")
        except TimeoutError:
            return Sent(took(), error=f"no answer within {self._timeout_s:g} s")
        except (aiohttp.ClientError, ValueError) as error:
            return Sent(took(), error=repr(error))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
