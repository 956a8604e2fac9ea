"""Server-sent events: framing, keepalive comments, and Durable Streams cursors."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator

from starlette.responses import StreamingResponse

KEEPALIVE = b": keepalive\n\n"

CURSOR_EPOCH = 1728432000.0
"""2024-10-09T00:00:00Z, the protocol's default cursor epoch."""
CURSOR_INTERVAL = 20.0


def frame(data: bytes | str, *, event: str | None = None, id: str | None = None) -> bytes:
    """One SSE event; multi-line data becomes several `data:` lines."""
    if isinstance(data, str):
        data = data.encode()
    out = bytearray()
    if id is not None:
        out += b"id: " + id.encode() + b"\n"
    if event is not None:
        out += b"event: " + event.encode() + b"\n"
    for line in data.split(b"\n"):
        out += b"data: " + line + b"\n"
    out += b"\n"
    return bytes(out)


def next_cursor(client: str | None) -> str:
    """The `Stream-Cursor` of a live response: the current 20 s interval since the
    epoch, and always past the cursor the client echoed (jitter of up to an hour), so
    a CDN never serves the same cached empty answer forever."""
    now = int((time.time() - CURSOR_EPOCH) // CURSOR_INTERVAL)
    if client is not None and client.isdigit() and len(client) < 20 and int(client) >= now:
        return str(int(client) + random.randint(1, int(3600 / CURSOR_INTERVAL)))
    return str(now)


async def with_keepalive(
    source: AsyncIterator[bytes], interval: float, duration: float | None = None
) -> AsyncIterator[bytes]:
    """`source`, with a comment line whenever nothing came for `interval` seconds;
    with `duration`, it ends (closing `source`) after that many seconds."""
    pending: asyncio.Future[bytes] | None = None
    ends = None if not duration else time.monotonic() + duration
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(source))
            wait = interval
            if ends is not None:
                wait = min(wait, ends - time.monotonic())
                if wait <= 0:
                    return
            done, _ = await asyncio.wait({pending}, timeout=wait)
            if not done:
                if ends is not None and time.monotonic() >= ends:
                    return
                yield KEEPALIVE
                continue
            finished, pending = pending, None
            try:
                item = finished.result()
            except StopAsyncIteration:
                return
            yield item
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)
        aclose = getattr(source, "aclose", None)
        if aclose is not None:
            await aclose()


def sse_response(
    body: AsyncIterator[bytes],
    interval: float,
    headers: dict[str, str] | None = None,
    duration: float | None = None,
) -> StreamingResponse:
    """A `text/event-stream` response of `body` with keepalive comments, ending after
    `duration` seconds if given."""
    return StreamingResponse(
        with_keepalive(body, interval, duration),
        media_type="text/event-stream",
        headers={
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            **(headers or {}),
        },
    )
