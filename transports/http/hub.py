"""One live feed per entity, shared by all the observers of that entity.

A thousand SSE observers of one entity should not mean a thousand store reads per
commit. `Hub.follow(address, after)` gives each observer its own catch-up read from
its own offset, then the events of one shared store tail. The merge is gap- and
duplicate-free: the observer joins the feed (whose starting point is fixed) before
its catch-up read, so every event is either in that read or delivered by the feed
afterwards; events at or before what it has seen are skipped by offset. An observer
that falls more than `max_lag` events behind is dropped from the feed and catches up
by reading again, so a slow client costs memory for a bounded time only.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncGenerator

import msgspec

from wakeful.runtime import Event, Runtime, StoreClosed

log = logging.getLogger("wakeful.http")

READ_BATCH = 500
_encode = msgspec.json.Encoder().encode


class _Observer:
    __slots__ = ("dropped", "idle", "lagged", "queue", "wake")

    def __init__(self) -> None:
        self.queue: deque[Event] = deque()
        self.wake = asyncio.Event()
        self.dropped = False
        self.lagged = False
        self.idle = False
        """Set by the keepalive ticker; cleared by every delivery."""


class _Feed:
    __slots__ = ("observers", "ready", "task")

    def __init__(self) -> None:
        self.observers: set[_Observer] = set()
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None


class Hub:
    """Shared live feeds of entity streams; `close()` ends them all."""

    def __init__(self, rt: Runtime, max_lag: int = 10_000, keepalive: float = 15.0) -> None:
        self.rt = rt
        self.max_lag = max_lag
        self.keepalive = keepalive
        self._feeds: dict[str, _Feed] = {}
        self._closed = False
        self._ticker: asyncio.Task[None] | None = None
        self._encoded: dict[tuple[str, str, str, int], bytes] = {}

    @property
    def observers(self) -> int:
        """Observers following an entity now (the `active tails` metric)."""
        return sum(len(feed.observers) for feed in self._feeds.values())

    def encode(self, address: str, batch: list[Event]) -> bytes:
        """`batch` as a JSON array, encoded once for all the observers that get it."""
        key = (address, batch[0].offset, batch[-1].offset, len(batch))
        data = self._encoded.get(key)
        if data is None:
            data = self._encoded[key] = _encode(batch)
            if len(self._encoded) > 256:
                del self._encoded[next(iter(self._encoded))]
        return data

    async def _tick(self) -> None:
        """Every `keepalive` seconds, wake the observers that got nothing since the
        last tick (one timer for all of them, none per event)."""
        while self._feeds:
            for feed in self._feeds.values():
                for observer in feed.observers:
                    if observer.idle:
                        observer.wake.set()
                    observer.idle = True
            await asyncio.sleep(self.keepalive)

    async def close(self) -> None:
        self._closed = True
        if self._ticker is not None:
            self._ticker.cancel()
        feeds, self._feeds = list(self._feeds.values()), {}
        for feed in feeds:
            for observer in feed.observers:
                observer.dropped = True
                observer.wake.set()
            if feed.task is not None:
                feed.task.cancel()
        tasks = [feed.task for feed in feeds if feed.task is not None]
        if self._ticker is not None:
            tasks.append(self._ticker)
        await asyncio.gather(*tasks, return_exceptions=True)

    def _join(self, address: str) -> tuple[_Feed, _Observer]:
        if self._closed:
            raise StoreClosed("the server is stopping")
        feed = self._feeds.get(address)
        if feed is None or feed.task is None or feed.task.done():
            feed = self._feeds[address] = _Feed()
            feed.task = asyncio.create_task(self._pump(address, feed), name=f"feed {address}")
        observer = _Observer()
        feed.observers.add(observer)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._tick(), name="keepalive ticker")
        return feed, observer

    def _leave(self, address: str, feed: _Feed, observer: _Observer) -> None:
        feed.observers.discard(observer)
        if not feed.observers and self._feeds.get(address) is feed:
            del self._feeds[address]
            if feed.task is not None:
                feed.task.cancel()

    async def _pump(self, address: str, feed: _Feed) -> None:
        try:
            start = (await self.rt.describe(address)).offset
            feed.ready.set()
            async for event in self.rt.tail(address, after=start):
                for observer in feed.observers:
                    if observer.dropped:
                        continue
                    if len(observer.queue) >= self.max_lag:
                        observer.dropped = observer.lagged = True  # it reads instead
                        observer.queue.clear()
                    else:
                        observer.queue.append(event)
                    observer.wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: live feed stopped: %r; observers read again", address, exc)
        finally:
            feed.ready.set()
            for observer in feed.observers:
                observer.dropped = True
                observer.wake.set()
            if self._feeds.get(address) is feed:
                del self._feeds[address]

    async def follow(self, address: str, after: str | None = None) -> AsyncGenerator[Event, None]:
        """The entity's events after offset `after` (from the first if None), then live
        ones; never ends by itself."""
        async for batch, _ in self.batches(address, after):
            for event in batch:
                yield event

    async def batches(
        self, address: str, after: str | None = None, *, keepalive: bool = False
    ) -> AsyncGenerator[tuple[list[Event], bool], None]:
        """Like `follow`, in batches: what one read or one wake-up brought, and whether
        it reaches what the store had then (the first batch may be empty). With
        `keepalive`, an empty batch that is not complete says nothing came for about
        `Hub.keepalive` seconds."""
        last = after
        first = True
        while True:
            feed, observer = self._join(address)
            try:
                await feed.ready.wait()
                while True:
                    batch = await self.rt.read(address, after=last, limit=READ_BATCH)
                    complete = len(batch) < READ_BATCH
                    if batch or first:
                        first = False
                        if batch:
                            last = batch[-1].offset
                        yield batch, complete
                    if complete:
                        break
                queue = observer.queue
                while not observer.dropped:
                    if not queue:
                        observer.wake.clear()
                        await observer.wake.wait()
                        if not queue and observer.idle and keepalive and not observer.dropped:
                            yield [], False
                        continue
                    out = [e for e in queue if last is None or e.offset > last]
                    queue.clear()
                    observer.idle = False
                    if out:
                        last = out[-1].offset
                        yield out, True
            finally:
                self._leave(address, feed, observer)
            if self._closed:
                return
            if not observer.lagged:
                await asyncio.sleep(0.1)  # the feed failed: do not spin while the store does
