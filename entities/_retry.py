"""Retries and error messages shared by the HTTP model adapters."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

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
