"""The `Runtime`: the public entry point, and the dispatcher that wakes entities.

One activation per entity at a time: the wakes of one entity are handled in
inbox order, one after another; different entities run concurrently. States
of recently woken entities stay in an LRU cache and leave it after
`idle_timeout` (scale to zero); the next wake rebuilds them from the latest
snapshot plus the events after it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Any

from .address import parse_address
from .codec import normalize
from .config import RuntimeConfig
from .errors import ConcurrencyError, StoreClosed, WakefulError
from .events import Event
from .lifecycle import AsyncResource
from .ports import Envelope, EventStore, InboxItem, Snapshot
from .registry import Registry, check_mode
from .state import EntityState, decode_snapshot, encode_snapshot, evolve, rebuild
from .turn import run_turn

log = logging.getLogger("wakeful.runtime")

READ_BATCH = 10_000
INBOX_BATCH = 256


class _Cached:
    __slots__ = ("snapshot_seq", "state", "used")

    def __init__(self, state: EntityState, snapshot_seq: int) -> None:
        self.state = state
        self.snapshot_seq = snapshot_seq
        self.used = time.monotonic()


class _Activation:
    __slots__ = ("address", "dirty")

    def __init__(self, address: str) -> None:
        self.address = address
        self.dirty = True


class Runtime(AsyncResource):
    """Runs the handlers of `registry` against the entities in `store`.

    ```python
    async with Runtime(registry, SQLiteStore("wakeful.db")) as rt:
        await rt.send("/counter/c1", {"add": 2}, key="req-1")
        await rt.idle()
        print((await rt.state("/counter/c1"))["totals"])
    ```
    """

    def __init__(
        self, registry: Registry, store: EventStore, config: RuntimeConfig | None = None
    ) -> None:
        self.registry = registry
        self.store = store
        self.config = config or RuntimeConfig()
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._active: dict[str, _Activation] = {}
        self._retrying: set[str] = set()
        self._activity = asyncio.Event()
        self._sem: asyncio.Semaphore | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._main: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        """Open the store and start dispatching wakes (idempotent)."""
        if self._main is not None:
            return
        if self._closed:
            raise StoreClosed("this Runtime was closed; create a new one")
        await self.store.open()
        self._sem = asyncio.Semaphore(self.config.max_concurrency)
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._main = asyncio.create_task(self._supervise(), name="wakeful-runtime")
        await self._ready

    async def close(self) -> None:
        """Stop dispatching, abandon turns in flight (their messages stay in the inbox),
        and close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._main is not None:
            self._main.cancel()
            try:
                await self._main
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
        await self.store.close()

    async def _supervise(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._feed(), name="wakeful-feed")
            tg.create_task(self._sweep(), name="wakeful-sweep")
            assert self._ready is not None
            self._ready.set_result(None)
            await asyncio.Event().wait()  # until cancelled by close()

    async def _feed(self) -> None:
        while True:
            try:
                async for address in self.store.wakes():
                    self._poke(address)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("wake feed failed; restarting it in %ss", self.config.retry_delay)
                await asyncio.sleep(self.config.retry_delay)

    async def _sweep(self) -> None:
        """Evict states idle for longer than `idle_timeout`."""
        period = max(0.05, min(self.config.idle_timeout / 2, 5.0))
        while True:
            await asyncio.sleep(period)
            self._evict_idle()

    def _evict_idle(self) -> None:
        deadline = time.monotonic() - self.config.idle_timeout
        cache = self._cache
        while cache:
            address, cached = next(iter(cache.items()))
            if cached.used > deadline:
                break
            del cache[address]

    # -- dispatch ------------------------------------------------------------------

    def _poke(self, address: str) -> None:
        act = self._active.get(address)
        if act is not None:
            act.dirty = True
            return
        try:
            type_name, _ = parse_address(address)
        except WakefulError:
            log.error("wake for invalid address %r ignored", address)
            return
        if type_name not in self.registry:
            log.warning("%s: no handler for entity type %r; its inbox waits", address, type_name)
            return
        if self._tg is None:
            return
        act = self._active[address] = _Activation(address)
        self._activity.set()
        self._tg.create_task(self._activate(act))

    async def _activate(self, act: _Activation) -> None:
        address = act.address
        assert self._sem is not None
        try:
            async with self._sem:
                while act.dirty:
                    act.dirty = False
                    items = await self.store.inbox(address, limit=INBOX_BATCH)
                    for item in items:
                        await self._process(address, item)
                    if len(items) == INBOX_BATCH:
                        act.dirty = True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: wake failed; retrying in %ss", address, self.config.retry_delay)
            self._cache.pop(address, None)
            self._retry_later(address)
        finally:
            del self._active[address]
            self._activity.set()

    def _retry_later(self, address: str) -> None:
        if address in self._retrying or self._tg is None:
            return
        self._retrying.add(address)

        async def retry() -> None:
            try:
                await asyncio.sleep(self.config.retry_delay)
            finally:
                self._retrying.discard(address)
            self._poke(address)

        self._tg.create_task(retry())

    async def _process(self, address: str, item: InboxItem) -> None:
        for attempt in range(5):
            cached = await self._load(address)
            commit = await run_turn(self.registry, cached.state, item, self.config.max_payload)
            try:
                committed = await self.store.commit(commit)
            except ConcurrencyError as exc:
                # Another writer moved the stream: forget our copy, reload, and
                # see whether the message is still ours to process.
                log.info("%s: %s (attempt %d)", address, exc, attempt + 1)
                self._cache.pop(address, None)
                pending = await self.store.inbox(address)
                if not any(p.offset == item.offset for p in pending):
                    return
                continue
            state = cached.state
            for event in committed:
                evolve(state, event)
            self._touch(address, cached)
            every = self.config.snapshot_every
            if every and state.seq - cached.snapshot_seq >= every:
                await self._snapshot(cached)
            return
        raise ConcurrencyError(address, commit.expected, -1)

    async def _snapshot(self, cached: _Cached) -> None:
        state = cached.state
        await self.store.save_snapshot(
            state.address, Snapshot(state.seq, encode_snapshot(state), state.offset or "")
        )
        cached.snapshot_seq = state.seq

    async def _load(self, address: str) -> _Cached:
        cached = self._cache.get(address)
        if cached is not None:
            self._cache.move_to_end(address)
            return cached
        state, snapshot_seq = await self._rebuild(address)
        cached = _Cached(state, snapshot_seq)
        self._touch(address, cached)
        return cached

    def _touch(self, address: str, cached: _Cached) -> None:
        cached.used = time.monotonic()
        cache = self._cache
        cache[address] = cached
        cache.move_to_end(address)
        while len(cache) > self.config.cache_size:
            cache.popitem(last=False)

    async def _rebuild(self, address: str) -> tuple[EntityState, int]:
        state: EntityState | None = None
        snapshot = await self.store.load_snapshot(address)
        if snapshot is not None:
            state = decode_snapshot(address, snapshot.data)
        snapshot_seq = state.seq if state is not None else 0
        if state is None:
            state = EntityState(address)
        while True:
            batch = await self.store.read(address, after=state.offset, limit=READ_BATCH)
            rebuild(address, batch, state)
            if len(batch) < READ_BATCH:
                return state, snapshot_seq

    # -- public API ------------------------------------------------------------------

    async def send(
        self,
        address: str,
        payload: Any = None,
        *,
        key: str | None = None,
        mode: str | None = None,
    ) -> str:
        """Send a message to the entity at `address`; return its inbox offset.

        With `key`, a retry of the same send (same address and key) is a no-op
        that returns the first offset. Raises `InvalidAddress`,
        `UnknownEntityType`, `InvalidPayload` or `PayloadTooLarge`, writing
        nothing, when the input is bad.
        """
        type_name, _ = parse_address(address)
        self.registry.get(type_name)
        check_mode(mode)
        if key is not None and (not isinstance(key, str) or not 1 <= len(key) <= 256):
            raise ValueError("idempotency key must be a string of 1-256 characters")
        value = normalize(payload, f"payload of message to {address}", self.config.max_payload)
        return await self.store.send(Envelope(address=address, payload=value, key=key, mode=mode))

    async def idle(self) -> None:
        """Wait until every inbox is drained, no turn is running and no timer is due now.

        Bound the wait with `asyncio.timeout(...)` if handlers may keep each other busy.
        """
        types = self.registry.types
        while True:
            self._check_running()
            self._activity.clear()
            if (
                not self._active
                and not self._retrying
                and not await self.store.pending(types)
                and not self._active
            ):
                return
            try:
                async with asyncio.timeout(0.01):
                    await self._activity.wait()
            except TimeoutError:
                pass

    def _check_running(self) -> None:
        main = self._main
        if main is None or self._closed:
            raise StoreClosed("the Runtime is not running; use it as `async with Runtime(...)`")
        if main.done():
            exc = None if main.cancelled() else main.exception()
            raise WakefulError(f"the Runtime's dispatcher stopped: {exc!r}") from exc

    async def state(self, address: str) -> dict[str, dict[str, Any]]:
        """The entity's collections, custom and built-in, as plain values (a copy)."""
        parse_address(address)
        cached = self._cache.get(address)
        state = cached.state if cached is not None else (await self._rebuild(address))[0]
        return state.to_dict()

    async def read(
        self, address: str, after: str | None = None, limit: int | None = None
    ) -> list[Event]:
        """The entity's events after offset `after` (from the first if None)."""
        parse_address(address)
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        return await self.store.read(address, after=after, limit=limit)

    def tail(self, address: str, after: str | None = None) -> AsyncIterator[Event]:
        """Follow the entity's events live, from after offset `after` (the first if None)."""
        parse_address(address)
        return self.store.tail(address, after=after)

    def loaded(self) -> list[str]:
        """Addresses whose state is in memory now, least recently used first."""
        return list(self._cache)

    async def entities(self, type: str, after: str | None = None, limit: int = 100) -> list[str]:
        """Ids of the entities of `type` that have events, sorted, after id `after`."""
        self.registry.get(type)
        return await self.store.entities(type, after=after, limit=limit)
