"""The `Runtime`: the public entry point, and the dispatcher that wakes entities.

One activation per entity at a time (`Actor`): the wakes of one entity are
handled in inbox order; different entities run concurrently. States of
recently active entities stay in an LRU cache and leave it after `idle_timeout`
(scale to zero); the next wake rebuilds them from the latest snapshot plus the
events after it. When the runtime starts, every run the store lists as active
is looked at: classic ones left by a stopped process are closed as
`worker_lost`, durable ones resumed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import msgspec

from .actor import Actor
from .address import check_name, parse_address
from .codec import normalize
from .config import RuntimeConfig
from .context import Decision
from .errors import NotFound, StoreClosed, WakefulError
from .events import Event
from .lifecycle import AsyncResource
from .metrics import Metrics
from .ports import TERMINAL, Envelope, EventStore, RunRecord, Snapshot
from .registry import Registry, check_mode
from .state import EntityState, decode_snapshot, encode_snapshot, rebuild

log = logging.getLogger("wakeful.runtime")

READ_BATCH = 10_000


class _Cached:
    __slots__ = ("snapshot_seq", "state", "used")

    def __init__(self, state: EntityState, snapshot_seq: int) -> None:
        self.state = state
        self.snapshot_seq = snapshot_seq
        self.used = time.monotonic()


class Slots:
    """At most `n` holders at once; `take` waits in order, `give` hands over or frees."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed over just as we were cancelled: pass it on
            raise

    def give(self) -> bool:
        """Release one slot; True if it is free now (no waiter took it over)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return False
        self.free += 1
        return True


class EntityInfo(msgspec.Struct, frozen=True):
    """What `Runtime.describe` tells about one entity."""

    address: str
    status: str
    """idle, running or suspended (the status of its active run)."""
    seq: int
    """Events in its stream (0: none yet)."""
    offset: str | None
    """Offset of its last event; `rt.tail(address, after=offset)` follows from here."""
    active_run: str | None = None
    waiting_for: str | None = None
    """What a suspended run waits for: `approval:<call_id>` or `signal:<name>`."""
    parent: str | None = None
    pending: int = 0
    """Messages accepted into its log and waiting for their run."""
    state: dict[str, dict[str, Any]] | None = None
    """Every collection, custom and built-in, with `describe(..., state=True)`."""


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
        self._actors: dict[str, Actor] = {}
        self._retrying: set[str] = set()
        self._activity = asyncio.Event()
        self._slots = Slots(self.config.max_concurrency)
        self._backlog: dict[str, None] = {}
        """Addresses to activate when a slot frees up, in order (an ordered set)."""
        self._tg: asyncio.TaskGroup | None = None
        self._main: asyncio.Task[None] | None = None
        self._closed = False
        self.metrics = Metrics()
        """Counters of wakes, runs and commit latency since this Runtime was created."""

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        """Open the store, recover unfinished runs and start dispatching wakes (idempotent)."""
        if self._main is not None:
            return
        if self._closed:
            raise StoreClosed("this Runtime was closed; create a new one")
        await self.store.open()
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._main = asyncio.create_task(self._supervise(ready), name="wakeful-runtime")
        await ready
        if self.store.recovers_runs:
            return  # the store wakes them, partition by partition
        for record in await self.store.runs(status="active", limit=1_000_000):
            # A durable run that waits (suspended) needs nothing until its answer comes.
            if record.status == "running" or record.mode == "classic":
                self._poke(record.address)

    async def close(self) -> None:
        """Stop dispatching, abandon turns in flight (their messages stay in the inbox; a
        classic run in flight is closed as `worker_lost` on the next start) and close
        the store. Idempotent."""
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

    async def _supervise(self, ready: asyncio.Future[None]) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self._feed(), name="wakeful-feed")
                tg.create_task(self._sweep(), name="wakeful-sweep")
                ready.set_result(None)
                await asyncio.Event().wait()  # until cancelled by close()
        finally:
            self._tg = None

    def _spawn(
        self, coro: Coroutine[Any, Any, None], name: str | None = None
    ) -> asyncio.Task[None]:
        if self._tg is not None:
            try:
                return self._tg.create_task(coro, name=name)
            except RuntimeError:  # the task group is shutting down
                pass
        coro.close()
        raise StoreClosed("the Runtime is not running")

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
            deadline = time.monotonic() - self.config.idle_timeout
            cache = self._cache
            while cache:
                address, cached = next(iter(cache.items()))
                if cached.used > deadline:
                    break
                del cache[address]

    # -- dispatch --------------------------------------------------------------

    def _poke(self, address: str) -> None:
        actor = self._actors.get(address)
        if actor is not None:
            actor.poke()
            return
        try:
            type_name, _ = parse_address(address)
        except WakefulError:
            log.error("wake for invalid address %r ignored", address)
            return
        if type_name not in self.registry:
            log.warning("%s: no handler for entity type %r; its inbox waits", address, type_name)
            return
        if self._tg is None or address in self._retrying:
            return
        if not self._slots.try_take():
            self._backlog[address] = None
            return
        self._backlog.pop(address, None)
        actor = self._actors[address] = Actor(self, address)
        self._activity.set()
        self._spawn(actor.main(), name=f"wakeful-actor-{address}")

    def _give_slot(self) -> None:
        if self._slots.give():
            while self._backlog and self._tg is not None:
                address = next(iter(self._backlog))
                if address in self._actors:
                    del self._backlog[address]
                    self._actors[address].poke()
                    continue
                before = len(self._backlog)
                self._poke(address)
                if len(self._backlog) == before:
                    break  # no slot free: it stays in the backlog

    def _actor_done(self, actor: Actor) -> None:
        if self._actors.get(actor.address) is actor:
            del self._actors[actor.address]
        self._activity.set()
        if actor.broken is not None:
            # Drop what we had in memory; the entity is reloaded and its runs recovered.
            self._cache.pop(actor.address, None)
            if actor.run is not None and actor.run.task is not None:
                actor.run.task.cancel()
            self._retry_later(actor.address)
        elif actor.cached is not None:
            self._touch(actor.address, actor.cached)
            if actor.dirty:
                self._poke(actor.address)

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

        self._spawn(retry())

    def _after_commit(self, cached: _Cached) -> None:
        state = cached.state
        every = self.config.snapshot_every
        if every and state.seq - cached.snapshot_seq >= every:
            cached.snapshot_seq = state.seq
            snapshot = Snapshot(state.seq, encode_snapshot(state), state.offset or "")
            self._spawn(self._save_snapshot(state.address, snapshot))

    async def _save_snapshot(self, address: str, snapshot: Snapshot) -> None:
        try:
            await self.store.save_snapshot(address, snapshot)
        except Exception:
            log.exception("%s: could not save a snapshot (it is only a cache)", address)

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

    async def _current(self, address: str) -> EntityState:
        actor = self._actors.get(address)
        if actor is not None and actor.cached is not None:
            return actor.state
        cached = self._cache.get(address)
        return cached.state if cached is not None else (await self._rebuild(address))[0]

    @property
    def running(self) -> bool:
        """Open, and its dispatcher has not stopped."""
        main = self._main
        return main is not None and not self._closed and not main.done()

    def _check_running(self) -> None:
        main = self._main
        if main is None or self._closed:
            raise StoreClosed("the Runtime is not running; use it as `async with Runtime(...)`")
        if main.done():
            exc = None if main.cancelled() else main.exception()
            raise WakefulError(f"the Runtime's dispatcher stopped: {exc!r}") from exc

    # -- messages --------------------------------------------------------------

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
        that returns the first offset. `mode` ("classic" or "durable") picks the
        execution mode of the run the message starts. Raises `InvalidAddress`,
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

        Runs waiting for an approval or a signal do not count as running. Bound
        the wait with `asyncio.timeout(...)` if handlers may keep each other busy.
        """
        types = self.registry.types
        while True:
            self._check_running()
            self._activity.clear()
            if (
                not self._busy()
                and not self._retrying
                and not await self.store.pending(types)
                and not self._busy()
            ):
                return
            try:
                async with asyncio.timeout(0.01):
                    await self._activity.wait()
            except TimeoutError:
                pass

    def _busy(self) -> bool:
        return bool(self._backlog) or any(actor.busy for actor in self._actors.values())

    # -- approvals, signals, cancel --------------------------------------------

    async def approve(
        self, address: str, call_id: str, approved: bool = True, reason: str | None = None
    ) -> Decision:
        """Decide the approval `call_id` of the entity's active run and wake the run.

        Returns the decision that counts: a second decision for the same call is a
        no-op that returns the first. Raises `NotFound` for an unknown call id, and
        for a classic run whose process stopped ("run no longer exists").
        """
        parse_address(address)
        check_name(call_id, "call id")
        state = await self._current(address)
        approval = state.approvals.get(call_id)
        if approval is None:
            pending = [c for c, a in state.approvals.items() if a["status"] == "pending"]
            raise NotFound(
                f"{address} has no approval {call_id!r}; pending approvals: "
                f"{', '.join(pending) if pending else 'none'}"
            )
        if approval["status"] != "pending":
            if approval.get("reason") == "worker_lost":
                raise NotFound(_gone(address, approval.get("run")))
            return Decision(approval["status"] == "approved", approval.get("reason"))
        run = approval.get("run")
        info = state.runs.get(run or "", {})
        actor = self._actors.get(address)
        # A classic run lives in the process that serves its entity; when that is
        # another worker, the decision goes there (and comes back as worker_lost if
        # that run is gone).
        if (
            info.get("mode") != "durable"
            and self.store.owns(address)
            and (actor is None or actor.run is None or actor.run.run != run)
        ):
            raise NotFound(_gone(address, run))
        after = state.offset
        await self.store.send(
            Envelope(
                address=address,
                kind="approval",
                name=call_id,
                run=run,
                payload={"approved": bool(approved), "reason": reason},
            )
        )
        async with asyncio.timeout(self.config.wait_timeout):
            async for event in self.store.tail(address, after=after):
                if event.kind == "approval.decided" and event.data.call_id == call_id:
                    if event.data.reason == "worker_lost":
                        raise NotFound(_gone(address, run))
                    return Decision(event.data.approved, event.data.reason)
        raise AssertionError("unreachable: a tail never ends")  # pragma: no cover

    async def signal(self, address: str, name: str, payload: Any = None) -> str:
        """Deliver the signal `name` (a webhook-style callback) to the entity's active run;
        returns its inbox offset. Raises `NotFound` when no run is active."""
        parse_address(address)
        check_name(name, "signal name")
        value = normalize(payload, f"payload of signal {name!r}", self.config.max_payload)
        state = await self._current(address)
        actor = self._actors.get(address)
        run = state.active_run or (actor.run.run if actor is not None and actor.run else None)
        if run is None:
            raise NotFound(f"{address} has no active run to receive signal {name!r}")
        return await self.store.send(
            Envelope(address=address, kind="signal", name=name, run=run, payload=value)
        )

    async def cancel(self, address: str, run: str) -> RunRecord:
        """Cancel the run `run` of `address`: it ends with `run.cancelled`, its pending
        approvals are denied (reason `cancelled`). Returns the run's final record; a
        run that had already ended is returned as it is."""
        parse_address(address)
        record = await self.store.run(run)
        if record is None or record.address != address:
            raise NotFound(f"{address} has no run {run!r}")
        if record.status in TERMINAL:
            return record
        state = await self._current(address)
        info = state.runs.get(run)
        if info is not None and info["status"] in TERMINAL:  # the log knows before the index
            return msgspec.structs.replace(
                record,
                status=info["status"],
                ended_at=info.get("ended_at"),
                reason=info.get("reason"),
                error=info.get("error"),
            )
        after = state.offset
        await self.store.send(Envelope(address=address, kind="cancel", run=run))
        status = {
            "run.completed": "completed",
            "run.failed": "failed",
            "run.cancelled": "cancelled",
        }
        async with asyncio.timeout(self.config.wait_timeout):
            async for event in self.store.tail(address, after=after):
                if event.run == run and event.kind in status:
                    # The final record, from the event itself: a store may update its
                    # run index a moment after the commit that ended the run.
                    data = event.data
                    return msgspec.structs.replace(
                        record,
                        status=status[event.kind],
                        ended_at=event.at,
                        reason=getattr(data, "reason", None),
                        error=getattr(data, "error", None),
                    )
        raise AssertionError("unreachable: a tail never ends")  # pragma: no cover

    # -- runs ------------------------------------------------------------------

    async def runs(
        self, address: str | None = None, status: str | None = "active", limit: int = 100
    ) -> list[RunRecord]:
        """Runs across entities (or of one), newest first. `status` is "active" (running or
        suspended), one status (running, suspended, completed, failed, cancelled), or None."""
        if address is not None:
            parse_address(address)
        allowed = (None, "active", "running", "suspended", *TERMINAL)
        if status not in allowed:
            raise ValueError(f"status {status!r} is not one of {', '.join(map(str, allowed))}")
        return await self.store.runs(address=address, status=status, limit=limit)

    async def run(self, run: str) -> RunRecord:
        """One run's record (status, mode, timings, reason); `NotFound` if unknown."""
        record = await self.store.run(run)
        if record is None:
            raise NotFound(f"no run {run!r}")
        return record

    # -- reading ---------------------------------------------------------------

    async def state(self, address: str) -> dict[str, dict[str, Any]]:
        """The entity's collections, custom and built-in, as plain values (a copy)."""
        parse_address(address)
        return (await self._current(address)).to_dict()

    async def describe(self, address: str, *, state: bool = False) -> EntityInfo:
        """The entity's status, active run, stream position and parent; with `state`,
        also its collections (as `rt.state` gives them), from the same load."""
        parse_address(address)
        current = await self._current(address)
        run = current.active_run
        info = current.runs.get(run or "", {})
        status = info.get("status", "running") if run is not None else "idle"
        return EntityInfo(
            address=address,
            status=status,
            seq=current.seq,
            offset=current.offset,
            active_run=run,
            waiting_for=info.get("waiting_for") if status == "suspended" else None,
            parent=current.parent,
            pending=len(current.inbox),
            state=current.to_dict() if state else None,
        )

    async def read(
        self, address: str, after: str | None = None, limit: int | None = None
    ) -> list[Event]:
        """The entity's events after offset `after` (from the first if None)."""
        parse_address(address)
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        return await self.store.read(address, after=after, limit=limit)

    def tail(
        self, address: str, after: str | None = None, *, run: str | None = None
    ) -> AsyncIterator[Event]:
        """Follow the entity's events live, from after offset `after` (the first if None).

        With `run`, only that run's events, ending after its terminal event.
        """
        parse_address(address)
        if run is None:
            return self.store.tail(address, after=after)
        return _run_tail(self.store.tail(address, after=after), run)

    def loaded(self) -> list[str]:
        """Addresses whose state is in memory now, least recently used first."""
        return list(self._cache)

    async def entities(self, type: str, after: str | None = None, limit: int = 100) -> list[str]:
        """Ids of the entities of `type` that have events, sorted, after id `after`."""
        self.registry.get(type)
        return await self.store.entities(type, after=after, limit=limit)


async def _run_tail(events: AsyncIterator[Event], run: str) -> AsyncIterator[Event]:
    async for event in events:
        if event.run == run:
            yield event
            if event.kind in ("run.completed", "run.failed", "run.cancelled"):
                return


def _gone(address: str, run: str | None) -> str:
    return (
        f"run {run} of {address} no longer exists: it was a classic run and the process "
        "running it stopped; it was closed as worker_lost and its approvals denied"
    )
