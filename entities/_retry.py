"""What the HTTP model adapters share: one (streamed) POST per call, retries, errors.
The chat adapters read a stream into a `Reply`; the embeddings adapter reads JSON."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx

from .models import ModelError

RETRY_STATUSES = frozenset((408, 409, 429, 500, 502, 503, 504, 529))
"""Statuses worth another try: timeouts, rate limits, overloads, server errors."""

T = TypeVar("T")


class Retry(Exception):
    """One attempt failed in a way that may pass on another try."""

    def __init__(self, message: str, after: float | None) -> None:
        super().__init__(message)
        self.message = message
        self.after = after


async def with_retries(
    where: str, max_retries: int, backoff: float, attempt: Callable[[], Awaitable[T]]
) -> T:
    """`attempt()` until it does not raise `Retry`, at most `max_retries` more times,
    waiting `Retry-After` when the server gave one, else exponential backoff."""
    for n in range(max_retries + 1):
        try:
            return await attempt()
        except Retry as retry:
            if n == max_retries:
                raise ModelError(
                    f"{where}: still failing after {n + 1} attempts: {retry.message}"
                ) from None
            await asyncio.sleep(retry.after or backoff * 2**n * random.uniform(1, 1.5))
    raise AssertionError("unreachable")  # pragma: no cover


def error_message(response: httpx.Response) -> str:
    """The provider's own error message (`{"error": {"message"}}`), else the body."""
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
    except (json.JSONDecodeError, AttributeError):
        pass
    return response.text[:300] or response.reason_phrase


def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (capped at a minute), if the server sent one."""
    raw = response.headers.get("retry-after")
    try:
        return min(float(raw), 60.0) if raw is not None else None
    except ValueError:
        return None


async def sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The `data:` fields of a streamed (server-sent events) response, line by line."""
    async for line in response.aiter_lines():
        if line.startswith("data:"):
            yield line[5:].strip()


def openai_endpoint(base_url: str | None, api_key: str | None) -> tuple[str, dict[str, str]]:
    """The base URL and auth headers of an OpenAI-compatible API: the arguments, else
    `OPENAI_BASE_URL` and `OPENAI_API_KEY`, else OpenAI's URL and no key."""
    key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
    url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
    return url, {"Authorization": f"Bearer {key}"} if key else {}


class HTTPModel:
    """Base of the adapters: POSTs a streaming request, hands a 200 response to a
    reader, and retries what may pass on another try (`RETRY_STATUSES`, timeouts,
    connection errors)."""

    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        timeout: float,
        max_retries: int,
        backoff: float,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.backoff = backoff
        self._headers = headers
        self._timeout = httpx.Timeout(timeout)
        self._transport = transport

    async def _post(
        self,
        path: str,
        body: dict[str, Any],
        read: Callable[[httpx.Response], Awaitable[T]],
    ) -> T:
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=self._transport,
        ) as http:
            return await with_retries(
                self.base_url,
                self.max_retries,
                self.backoff,
                lambda: self._attempt(http, path, body, read),
            )

    async def _attempt(
        self,
        http: httpx.AsyncClient,
        path: str,
        body: dict[str, Any],
        read: Callable[[httpx.Response], Awaitable[T]],
    ) -> T:
        try:
            async with http.stream("POST", path, json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    message = error_message(response)
                    if response.status_code in RETRY_STATUSES:
                        raise Retry(message, retry_after(response))
                    raise ModelError(f"{self.base_url}: {response.status_code}: {message}")
                return await read(response)
        except httpx.TimeoutException as exc:
            raise Retry(f"timed out: {exc!r}", None) from exc
        except httpx.TransportError as exc:
            raise Retry(f"connection failed: {exc!r}", None) from exc
        except (json.JSONDecodeError, KeyError) as exc:
            raise ModelError(f"{self.base_url}: the response is malformed: {exc!r}") from exc
