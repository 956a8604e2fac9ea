"""The storage port: what the runtime needs from a store, and the records it exchanges.

Every store (memory, SQLite, JetStream) implements `EventStore` and passes the
contract suite in `tests/contracts/`. The core is `commit`: one atomic write of
an entity's new events, guarded by the seq the writer expects, together with the
messages it sends (the outbox), the timers it arms or cancels, and the inbox
messages it consumed. Either all of it lands or none of it does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection
from typing import Any, Protocol, runtime_checkable

import msgspec

from .events import Event


class NewEvent(msgspec.Struct, frozen=True):
    """An event as the runtime hands it to `commit`: the store gives it offset and seq."""

    kind: str
    data: Any
    """The kind's `EventData` struct (a plain value for kinds this version does not know)."""
    at: float
    run: str | None = None


class Envelope(msgspec.Struct, frozen=True):
    """A message on its way to an entity's inbox."""

    address: str
    """The entity it is for."""
    kind: str = "message"
    """The wake kind it causes: message, child, timer, approval, signal, cancel, resume."""
    payload: Any = None
    source: str | None = None
    """The sending entity's address, or None for a message from outside."""
    mode: str | None = None
    """The execution mode asked for by the sender, if any."""
    key: str | None = None
    """Idempotency key: a second send with the same key to the same address is a no-op."""
    reply_to: str | None = None
    """Where the run this message starts reports when it ends (the parent of a spawn)."""
    name: str | None = None
    """Timer, signal or call id the message is about."""
    run: str | None = None
    """The run the message is addressed to (approvals, signals, cancel)."""
    generation: int = 0
    """For timer firings: the seq of the `timer.set` event that armed the timer."""


class InboxItem(msgspec.Struct, frozen=True):
    """A message in an entity's inbox, not yet consumed by a commit."""

    offset: str
    """Position in the inbox, given by the store; increasing per entity."""
    at: float
    envelope: Envelope


class TimerArm(msgspec.Struct, frozen=True):
    """A timer to arm in a commit: when due, the store delivers a `timer` message."""

    name: str
    due: float
    payload: Any = None
    generation: int = 0


class RunRecord(msgspec.Struct, frozen=True):
    """A run as the store indexes it across entities (`rt.runs()`, `rt.run(id)`)."""

    run: str
    address: str
    status: str
    """running, suspended, completed, failed or cancelled."""
    mode: str = "classic"
    trigger: str = "message"
    started_at: float = 0.0
    ended_at: float | None = None
    reason: str | None = None
    """Why it ended (the stop reason of a completed run, why it failed or was
    cancelled), or why it is suspended: `requires_approval` or `waiting_for_signal`."""
    error: str | None = None
    waiting_for: str | None = None
    """What a suspended run waits for: `approval:<call_id>` or `signal:<name>`."""


def suspend_reason(waiting_for: str) -> str:
    """The stop reason of a run suspended on `waiting_for`."""
    return "requires_approval" if waiting_for.startswith("approval:") else "waiting_for_signal"


ACTIVE = ("running", "suspended")
TERMINAL = ("completed", "failed", "cancelled")


class Commit(msgspec.Struct, frozen=True):
    """One atomic write for one entity."""

    address: str
    expected: int
    """The seq the entity's stream must be at (0 for a new entity); else `ConcurrencyError`."""
    events: list[NewEvent] = []
    outbox: list[Envelope] = []
    timers: list[TimerArm] = []
    """Timers to arm (replacing a timer of the same name)."""
    cancel_timers: list[str] = []
    """Names of timers to disarm."""
    consumed: list[str] = []
    """Inbox offsets this commit consumed; they leave the inbox with the commit."""
    runs: list[RunRecord] = []
    """Run index entries to insert or replace (by run id) with this commit."""


class Snapshot(msgspec.Struct, frozen=True):
    """A cached fold of an entity's stream up to `seq`; only a cache, the stream stays the truth."""

    seq: int
    data: bytes
    offset: str = ""
    """Offset of the event at `seq`, so replay can continue from there."""


@runtime_checkable
class EventStore(Protocol):
    """The storage port. Implementations: MemoryStore, SQLiteStore, JetStreamStore."""

    recovers_runs: bool
    """False for a store one process serves whole (memory, SQLite): `Runtime.open`
    looks for unfinished runs itself. True for a store shared by several workers
    (JetStream): the store yields through `wakes()` the entities with unfinished
    runs of each partition this worker takes over, whenever that happens."""

    def owns(self, address: str) -> bool:
        """Whether this process serves `address` now: always for an embedded store;
        for a shared one, while this worker holds the entity's partition."""
        ...

    async def open(self) -> None:
        """Connect and prepare; idempotent."""

    async def close(self) -> None:
        """Release everything; idempotent. Pending tails end."""

    async def commit(self, commit: Commit) -> list[Event]:
        """Write `commit` atomically; return the new events with offsets and seqs.

        Raises `ConcurrencyError` (and writes nothing) when the stream is not at
        `commit.expected`.
        """
        ...

    async def send(self, envelope: Envelope) -> str:
        """Append `envelope` to its entity's inbox and return its inbox offset.

        With `envelope.key`, a second send with the same key to the same
        address writes nothing and returns the first offset, however late.
        """
        ...

    async def inbox(
        self, address: str, after: str | None = None, limit: int | None = None
    ) -> list[InboxItem]:
        """The entity's unconsumed inbox messages after offset `after`, oldest first."""
        ...

    async def read(
        self, address: str, after: str | None = None, limit: int | None = None
    ) -> list[Event]:
        """Events of `address` with offset greater than `after` (all if None), in order."""
        ...

    def tail(self, address: str, after: str | None = None) -> AsyncIterator[Event]:
        """Events after `after`, then live ones as they commit; gap- and duplicate-free.

        Never ends by itself (only when the store closes or the consumer stops).
        """
        ...

    async def load_snapshot(self, address: str) -> Snapshot | None:
        """The latest snapshot of `address`, if any."""
        ...

    async def save_snapshot(self, address: str, snapshot: Snapshot) -> None:
        """Store a snapshot, replacing an older one (a newer one is kept)."""
        ...

    async def entities(self, type: str, after: str | None = None, limit: int = 100) -> list[str]:
        """Ids of the entities of `type` that have a stream, sorted, after id `after`."""
        ...

    def wakes(self) -> AsyncIterator[str]:
        """Addresses that have (or may have) inbox messages to process.

        A hint feed, at least once: it yields every address with pending
        messages when it starts, then each address that receives one. The
        runtime reads the inbox itself, so a spurious hint costs one read.
        """
        ...

    async def pending(self, types: Collection[str]) -> bool:
        """Whether any entity of `types` has inbox messages, or a timer due now."""
        ...

    async def run(self, run: str) -> RunRecord | None:
        """The index entry of one run."""
        ...

    async def runs(
        self, address: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """Runs, newest first; `status` is one status, or "active" (running or suspended)."""
        ...
