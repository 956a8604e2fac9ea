"""`MemoryStore`: the event store in process memory, for tests and examples.

Same semantics as the other stores (it passes the same contract suite), no
durability: everything is gone when the process ends.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Collection

from wakeful.runtime.address import parse_address
from wakeful.runtime.errors import ConcurrencyError, InvalidPayload
from wakeful.runtime.events import Event, encode_data
from wakeful.runtime.lifecycle import AsyncResource
from wakeful.runtime.ports import (
    ACTIVE,
    Commit,
    Envelope,
    InboxItem,
    RunRecord,
    Snapshot,
    TimerArm,
)

from ._local import Background, Signals, closed_error, format_offset, parse_offset, run_timers
from ._local import tail_events as _tail_events

__all__ = ["MemoryStore"]


def _check_encodable(data: object) -> None:
    """Fail like a store that serialises would, so the contract holds in memory too."""
    try:
        encode_data(data)
    except (TypeError, ValueError) as exc:
        raise InvalidPayload("event data", str(exc)) from None


class MemoryStore(AsyncResource):
    """An `EventStore` in memory. Use as `async with MemoryStore() as store:` or hand it
    to a `Runtime`, which opens and closes it."""

    recovers_runs = False

    def owns(self, address: str) -> bool:
        """One process serves every entity of this store."""
        return True

    def __init__(self) -> None:
        self._events: dict[str, list[Event]] = {}
        self._inbox: dict[str, dict[str, InboxItem]] = {}
        self._keys: dict[tuple[str, str], str] = {}
        self._timers: dict[tuple[str, str], TimerArm] = {}
        self._snapshots: dict[str, Snapshot] = {}
        self._runs: dict[str, RunRecord] = {}
        self._counter = 0
        self._signals: Signals | None = None
        self._background = Background("wakeful-memory-store")

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        if self._signals is not None:
            return
        self._signals = Signals()
        await self._background.start(self._timer_loop)

    async def close(self) -> None:
        signals, self._signals = self._signals, None
        if signals is None:
            return
        signals.close()
        await self._background.stop()

    def _sig(self) -> Signals:
        if self._signals is None:
            raise closed_error("MemoryStore")
        return self._signals

    def _next(self) -> str:
        self._counter += 1
        return format_offset(self._counter)

    # -- writes ----------------------------------------------------------------

    async def commit(self, commit: Commit) -> list[Event]:
        signals = self._sig()
        address = commit.address
        stream = self._events.get(address)
        actual = len(stream) if stream else 0
        if actual != commit.expected:
            raise ConcurrencyError(address, commit.expected, actual)
        parse_address(address)
        for env in commit.outbox:
            parse_address(env.address)
        for e in commit.events:
            _check_encodable(e.data)
        # Validated: from here on nothing can fail, so the commit is all or nothing.
        if stream is None:
            stream = self._events[address] = []
        seq = commit.expected
        new: list[Event] = []
        for e in commit.events:
            seq += 1
            new.append(Event(self._next(), seq, e.kind, e.at, e.run, e.data))
        stream.extend(new)
        inbox = self._inbox.get(address)
        if inbox is not None:
            for offset in commit.consumed:
                inbox.pop(offset, None)
            if not inbox:
                del self._inbox[address]
        for env in commit.outbox:
            self._deliver(env)
        for name in commit.cancel_timers:
            self._timers.pop((address, name), None)
        for arm in commit.timers:
            self._timers[(address, arm.name)] = arm
        for record in commit.runs:
            self._runs[record.run] = record
        if commit.timers or commit.cancel_timers:
            signals.timers_changed()
        if new:
            signals.committed(address)
        return new

    def _deliver(self, env: Envelope) -> str:
        if env.key is not None:
            offset = self._keys.get((env.address, env.key))
            if offset is not None:
                return offset
        offset = self._next()
        self._inbox.setdefault(env.address, {})[offset] = InboxItem(offset, time.time(), env)
        if env.key is not None:
            self._keys[(env.address, env.key)] = offset
        self._sig().wake(env.address)
        return offset

    async def send(self, envelope: Envelope) -> str:
        self._sig()
        parse_address(envelope.address)
        return self._deliver(envelope)

    async def save_snapshot(self, address: str, snapshot: Snapshot) -> None:
        self._sig()
        old = self._snapshots.get(address)
        if old is None or old.seq < snapshot.seq:
            self._snapshots[address] = snapshot

    # -- reads -----------------------------------------------------------------

    async def inbox(
        self, address: str, after: str | None = None, limit: int | None = None
    ) -> list[InboxItem]:
        self._sig()
        start = parse_offset(after, "after")
        items = [i for i in self._inbox.get(address, {}).values() if int(i.offset) > start]
        return items if limit is None else items[:limit]

    async def read(
        self, address: str, after: str | None = None, limit: int | None = None
    ) -> list[Event]:
        self._sig()
        start = parse_offset(after, "after")
        stream = self._events.get(address, [])
        # Offsets grow with seq, so find the first event after `start` by bisection.
        lo, hi = 0, len(stream)
        while lo < hi:
            mid = (lo + hi) // 2
            if int(stream[mid].offset) <= start:
                lo = mid + 1
            else:
                hi = mid
        return stream[lo:] if limit is None else stream[lo : lo + limit]

    def tail(self, address: str, after: str | None = None) -> AsyncIterator[Event]:
        parse_offset(after, "after")
        return _tail_events(self.read, self._sig(), address, after, None)

    async def load_snapshot(self, address: str) -> Snapshot | None:
        self._sig()
        return self._snapshots.get(address)

    async def entities(self, type: str, after: str | None = None, limit: int = 100) -> list[str]:
        self._sig()
        prefix = f"/{type}/"
        ids = sorted(a[len(prefix) :] for a in self._events if a.startswith(prefix))
        if after is not None:
            ids = [i for i in ids if i > after]
        return ids[:limit]

    def wakes(self) -> AsyncIterator[str]:
        return self._sig().wakes(self._initial_wakes)

    async def _initial_wakes(self) -> list[str]:
        return list(self._inbox)

    async def pending(self, types: Collection[str]) -> bool:
        self._sig()
        wanted = set(types)
        if any(parse_address(a)[0] in wanted for a in self._inbox):
            return True
        now = time.time()
        return any(
            arm.due <= now and parse_address(address)[0] in wanted
            for (address, _), arm in self._timers.items()
        )

    async def run(self, run: str) -> RunRecord | None:
        self._sig()
        return self._runs.get(run)

    async def runs(
        self, address: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        self._sig()
        wanted = ACTIVE if status == "active" else (status,)
        found = [
            r
            for r in self._runs.values()
            if (address is None or r.address == address) and (status is None or r.status in wanted)
        ]
        found.sort(key=lambda r: r.run, reverse=True)
        return found[:limit]

    # -- timers ----------------------------------------------------------------

    async def _timer_loop(self) -> None:
        await run_timers(self._next_due, self._fire_due, self._sig(), None)

    async def _next_due(self) -> float | None:
        return min((arm.due for arm in self._timers.values()), default=None)

    async def _fire_due(self, now: float) -> list[str]:
        due = sorted(
            ((arm.due, key) for key, arm in self._timers.items() if arm.due <= now),
        )
        addresses: list[str] = []
        for _, key in due:
            arm = self._timers.pop(key)
            address = key[0]
            self._deliver(
                Envelope(
                    address=address,
                    kind="timer",
                    payload=arm.payload,
                    name=arm.name,
                    generation=arm.generation,
                )
            )
            addresses.append(address)
        return addresses
