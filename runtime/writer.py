"""The commit writer of one entity: every commit of the entity goes through it, in order.

Events that need not wait for the store (classic run events, text deltas) are
buffered and flushed in the background: the first one at once, later ones at
most every `flush_interval` seconds, consecutive text deltas of a run merged into
one event. A commit that must land now (a durable step, a terminal event) takes
everything still buffered with it, so the stream keeps the order in which
things happened and a turn's effects land together with its terminal event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from . import events as ev
from .errors import StoreClosed
from .events import Event
from .metrics import Metrics
from .ports import Commit, Envelope, EventStore, NewEvent, RunRecord, TimerArm, suspend_reason
from .state import EntityState, evolve

Spawn = Callable[[Coroutine[Any, Any, None]], object]


class Writer:
    """Serialises the commits of one entity and buffers its background events.

    `on_commit` is called after each commit, and with `[]` when a scheduled flush
    found nothing to do; `on_failure` when a background flush failed.
    """

    def __init__(
        self,
        store: EventStore,
        state: EntityState,
        spawn: Spawn,
        flush_interval: float,
        on_commit: Callable[[list[Event]], None],
        on_failure: Callable[[BaseException], None],
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics or Metrics()
        self.state = state
        self._spawn = spawn
        self._interval = flush_interval
        self._on_commit = on_commit
        self._on_failure = on_failure
        self._lock = asyncio.Lock()
        self._events: list[NewEvent] = []
        self._outbox: list[Envelope] = []
        self._consumed: list[str] = []
        self._flushing = False
        self._hurry = asyncio.Event()
        self._last_flush = 0.0
        self.failed: BaseException | None = None
        """The error of a background flush; the next commit raises it."""

    @property
    def has_pending(self) -> bool:
        """Something is buffered, scheduled or being committed."""
        return bool(self._events or self._consumed or self._outbox) or (
            self._flushing or self._lock.locked()
        )

    # -- buffering -------------------------------------------------------------

    def emit(self, data: ev.EventData, run: str | None) -> None:
        """Buffer an event; it is committed in the background (or with the next commit)."""
        self._events.append(NewEvent(ev.KIND_OF[type(data)], data, time.time(), run))
        self.schedule()

    def send(self, envelope: Envelope) -> None:
        """Buffer an outgoing message; it is committed in the background (or with the
        next commit), together with the events buffered before it."""
        self._outbox.append(envelope)
        self._hurry.set()  # another entity waits for it: no flush interval
        self.schedule()

    def hold(self, data: ev.EventData, run: str | None) -> None:
        """Buffer an event for the next commit without scheduling a flush."""
        self._events.append(NewEvent(ev.KIND_OF[type(data)], data, time.time(), run))

    def consume(self, offset: str, *, flush: bool = True) -> None:
        """Mark an inbox message consumed with the next commit."""
        self._consumed.append(offset)
        if flush:
            self.schedule()

    def schedule(self) -> None:
        """Flush what is buffered soon: after the callbacks already queued have run, so a
        handler that started just before and finishes without waiting commits its whole
        turn, buffered events included, in one commit and no flush task is needed."""
        if not self._flushing:
            self._flushing = True
            asyncio.get_running_loop().call_soon(self._kick)

    def _kick(self) -> None:
        if self._events or self._consumed or self._outbox:
            try:
                self._spawn(self._flush_soon())
            except StoreClosed:  # the runtime stopped: what is buffered is abandoned
                self._flushing = False
        else:
            self._flushing = False
            self._on_commit([])  # nothing to flush: tell the actor the writer is idle

    async def _flush_soon(self) -> None:
        delay = self._last_flush + self._interval - time.monotonic()
        try:
            if delay > 0 and not self._outbox:
                self._hurry.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._hurry.wait()
                except TimeoutError:
                    pass  # the interval is over
        finally:
            self._flushing = False
        if self.failed is None and (self._events or self._consumed or self._outbox):
            try:
                await self.commit()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._on_failure(exc)  # also kept in self.failed for the next commit
        else:
            self._on_commit([])

    # -- committing ------------------------------------------------------------

    async def commit(
        self,
        events: Iterable[tuple[ev.EventData, str | None]] = (),
        outbox: Iterable[Envelope] = (),
        consumed: Iterable[str] = (),
    ) -> list[Event]:
        """Commit everything buffered plus `events`, `outbox` and `consumed`, now."""
        async with self._lock:
            if self.failed is not None:
                raise self.failed
            at = time.time()
            new = self._events + [
                NewEvent(ev.KIND_OF[type(data)], data, at, run) for data, run in events
            ]
            out = [*self._outbox, *outbox]
            used = [*self._consumed, *consumed]
            self._events, self._outbox, self._consumed = [], [], []
            if not new and not out and not used:
                return []
            if new and self.state.seq == 0:
                new.insert(0, _created(self.state.address, new, at))
            commit = build_commit(self.state, coalesce(new), out, used)
            metrics = self.metrics
            began = time.monotonic()
            try:
                committed = await self.store.commit(commit)
            except BaseException as exc:
                if not isinstance(exc, asyncio.CancelledError):
                    self.failed = exc
                    metrics.commit_errors += 1
                raise
            self._last_flush = time.monotonic()
            metrics.commits.observe(self._last_flush - began)
            state = self.state
            for event in committed:
                if event.kind in _ENDED:
                    run = state.runs.get(event.run or "", {})
                    metrics.runs_ended[(run.get("mode", "classic"), _ENDED[event.kind])] += 1
                elif event.kind == "run.started":
                    metrics.runs_started[event.data.mode] += 1
                evolve(state, event)
            self._on_commit(committed)
            return committed


_ENDED = {"run.completed": "completed", "run.failed": "failed", "run.cancelled": "cancelled"}


def _created(address: str, events: list[NewEvent], at: float) -> NewEvent:
    """The first event of every stream; a spawned child names its parent."""
    type_name, id = address.split("/", 2)[1:]
    first = events[0].data
    parent = first.reply_to if isinstance(first, ev.MessageReceived) else None
    return NewEvent("entity.created", ev.EntityCreated(type=type_name, id=id, parent=parent), at)


def coalesce(events: list[NewEvent]) -> list[NewEvent]:
    """Merge consecutive `text.delta` events of the same run into one."""
    if len(events) < 2:
        return events
    out: list[NewEvent] = []
    for e in events:
        if e.kind == "text.delta" and out and out[-1].kind == "text.delta" and out[-1].run == e.run:
            prev = out[-1]
            out[-1] = NewEvent(
                "text.delta", ev.TextDelta(text=prev.data.text + e.data.text), prev.at, prev.run
            )
        else:
            out.append(e)
    return out


def build_commit(
    state: EntityState, events: list[NewEvent], outbox: list[Envelope], consumed: list[str]
) -> Commit:
    """The commit for `events` on top of `state`: timers and run index entries follow
    from the events themselves (`timer.set` arms, `timer.cancelled` disarms)."""
    expected = state.seq
    timers: dict[str, TimerArm | None] = {}
    for i, e in enumerate(events):
        data = e.data
        if e.kind == "timer.set":
            timers[data.name] = TimerArm(data.name, data.due, data.payload, expected + i + 1)
        elif e.kind == "timer.cancelled":
            timers[data.name] = None
    return Commit(
        address=state.address,
        expected=expected,
        events=events,
        outbox=outbox,
        timers=[arm for arm in timers.values() if arm is not None],
        cancel_timers=[name for name, arm in timers.items() if arm is None],
        consumed=consumed,
        runs=run_records(state, events),
    )


_STATUS = {
    "run.suspended": "suspended",
    "run.resumed": "running",
    "run.completed": "completed",
    "run.failed": "failed",
    "run.cancelled": "cancelled",
}


def run_records(state: EntityState, events: list[NewEvent]) -> list[RunRecord]:
    """Run index entries for the run events among `events`."""
    records: dict[str, RunRecord] = {}
    for e in events:
        run = e.run
        if run is None:
            continue
        if e.kind == "run.started":
            d = e.data
            records[run] = RunRecord(run, state.address, "running", d.mode, d.trigger, e.at)
            continue
        status = _STATUS.get(e.kind)
        if status is None:
            continue
        base = records.get(run)
        if base is None:
            info = state.runs.get(run, {})
            base = RunRecord(
                run,
                state.address,
                info.get("status", "running"),
                info.get("mode", "classic"),
                info.get("trigger", "message"),
                info.get("started_at", e.at),
            )
        d = e.data
        reason: str | None = None
        error: str | None = None
        waiting_for: str | None = None
        if e.kind == "run.suspended":
            waiting_for = d.waiting_for
            reason = suspend_reason(d.waiting_for)
        elif e.kind == "run.failed":
            reason, error = d.reason, d.error
        elif e.kind in ("run.cancelled", "run.completed"):
            reason = d.reason
        ended = e.at if status in ("completed", "failed", "cancelled") else None
        records[run] = RunRecord(
            run,
            state.address,
            status,
            base.mode,
            base.trigger,
            base.started_at,
            ended,
            reason,
            error,
            waiting_for,
        )
    return list(records.values())
