"""Fetching image URLs for jobs: size and time capped, through the outbound policy."""

from __future__ import annotations

import aiohttp
from yarl import URL

from consumers.outbound import OutboundPolicy, RefusedAddress, guarded_session

_MAX_REDIRECTS = 5


class FetchError(Exception):
    """The image could not be fetched; the message is for the task's `error`."""


class ImageFetcher:
    def __init__(self, policy: OutboundPolicy, *, timeout_s: float, max_bytes: int) -> None:
        self._policy = policy
        self._timeout_s = timeout_s
        self._max_bytes = max_bytes
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = guarded_session(self._policy, timeout_s=self._timeout_s)
        return self._session

    async def fetch(self, url: str) -> bytes:
        try:
            return await self._follow(URL(url))
        except RefusedAddress as error:
            raise FetchError(f"refused to fetch: {error}") from None
        except aiohttp.ClientConnectorError as error:
            if isinstance(error.os_error, RefusedAddress):
                raise FetchError(f"refused to fetch: {error.os_error}") from None
            raise FetchError(f"could not connect to fetch the image: {error}") from None
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise FetchError(f"could not fetch the image: {error!r}") from None

    async def _follow(self, url: URL) -> bytes:
        """Redirects are followed here, not by the client, so each hop's address is checked."""
        for _ in range(_MAX_REDIRECTS + 1):
            if url.scheme not in {"http", "https"} or not url.host:
                raise FetchError("only http and https URLs can be fetched")
            self._policy.check_literal(url.host)
            async with self._client().get(url, allow_redirects=False) as response:
                if response.status in {301, 302, 303, 307, 308} and "Location" in response.headers:
                    url = url.join(URL(response.headers["Location"]))
                    continue
                return await self._body(response)
        raise FetchError(f"more than {_MAX_REDIRECTS} redirects")

    async def _body(self, response: aiohttp.ClientResponse) -> bytes:
        if response.status != 200:
            raise FetchError(f"fetching the image answered HTTP {response.status}")
        declared = response.content_length
        if declared is not None and declared > self._max_bytes:
            raise FetchError(f"the image is {declared} bytes; the limit is {self._max_bytes}")
        chunks = []
        size = 0
        async for chunk in response.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self._max_bytes:
                raise FetchError(f"the image is larger than the limit of {self._max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
