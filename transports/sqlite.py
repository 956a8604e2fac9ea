"""`SQLiteStore`: the embedded event store, one SQLite file in WAL mode.

- One writer connection. Writes queue up and are applied by one writer loop;
  everything that queued while the previous transaction ran goes into the next
  one (group commit), each write in its own savepoint, so one failing write
  never takes another with it. Each transaction is one `BEGIN IMMEDIATE` …
  `COMMIT` run in aiosqlite's worker thread as a single call.
- One reader connection for reads and tails (WAL readers never block the writer).
- Durability: `synchronous="NORMAL"` (the default) survives any process crash
  (SIGKILL included) and may lose the last transactions on power loss or an OS
  crash; `synchronous="FULL"` survives those too, at the cost of an fsync per
  transaction.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from wakeful.runtime.address import parse_address
from wakeful.runtime.errors import ConcurrencyError, InvalidPayload, StoreClosed
from wakeful.runtime.events import Event, decode_data, encode_data
from wakeful.runtime.lifecycle import AsyncResource
from wakeful.runtime.ports import ACTIVE, Commit, Envelope, InboxItem, RunRecord, Snapshot

from ._local import Background, Signals, closed_error, format_offset, parse_offset, run_timers
from ._local import tail_events as _tail_events

__all__ = ["SQLiteStore"]

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS entities (
    address TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entities_by_type ON entities(type, id);
CREATE TABLE IF NOT EXISTS events (
    address TEXT NOT NULL,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    run TEXT,
    data BLOB NOT NULL,
    PRIMARY KEY (address, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    address TEXT NOT NULL,
    type TEXT NOT NULL,
    at REAL NOT NULL,
    envelope BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS inbox_by_address ON inbox(address, id);
CREATE INDEX IF NOT EXISTS inbox_by_type ON inbox(type);
CREATE TABLE IF NOT EXISTS sent_keys (
    address TEXT NOT NULL,
    key TEXT NOT NULL,
    inbox_id INTEGER NOT NULL,
    PRIMARY KEY (address, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS timers (
    address TEXT NOT NULL,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    due REAL NOT NULL,
    generation INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (address, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS timers_by_due ON timers(due);
CREATE TABLE IF NOT EXISTS runs (
    run TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    status TEXT NOT NULL,
    record BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status, run);
CREATE INDEX IF NOT EXISTS runs_by_address ON runs(address, run);
CREATE TABLE IF NOT EXISTS snapshots (
    address TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    offset TEXT NOT NULL,
    data BLOB NOT NULL
) WITHOUT ROWID;
"""

SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
MAX_GROUP = 512

_run_encoder = msgspec.msgpack.Encoder()
_run_decoder = msgspec.msgpack.Decoder(RunRecord)
_env_encoder = msgspec.msgpack.Encoder()
_env_decoder = msgspec.msgpack.Decoder(Envelope)
_any_encoder = msgspec.msgpack.Encoder()
_any_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder()

T = TypeVar("T")


async def _in_thread(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(sqlite3_connection, *args)` in aiosqlite's worker thread.

    aiosqlite runs one statement per hop; a transaction of many statements as
    one call costs one hop instead of one per statement. This is the one place
    that uses aiosqlite's internals (`_execute`, `_conn`), pinned in pyproject.
    """
    return await db._execute(fn, db._conn, *args)  # type: ignore[no-untyped-call,no-any-return]


# -- work done in the writer thread ------------------------------------------------


@dataclass
class _CommitOp:
    commit: Commit
    type: str
    id: str
    result: list[Event] = field(default_factory=list)
    woken: list[str] = field(default_factory=list)

    def apply(self, conn: sqlite3.Connection) -> None:
        c = self.commit
        address = c.address
        n = len(c.events)
        if n:
            if c.expected == 0:
                cur = conn.execute(
                    "INSERT INTO entities(address, type, id, seq) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(address) DO NOTHING",
                    (address, self.type, self.id, n),
                )
            else:
                cur = conn.execute(
                    "UPDATE entities SET seq = ? WHERE address = ? AND seq = ?",
                    (c.expected + n, address, c.expected),
                )
            if cur.rowcount != 1:
                raise ConcurrencyError(address, c.expected, _head(conn, address))
        else:
            actual = _head(conn, address)
            if actual != c.expected:
                raise ConcurrencyError(address, c.expected, actual)
        seq = c.expected
        rows = []
        events = self.result
        for e in c.events:
            seq += 1
            try:
                data = encode_data(e.data)
            except (TypeError, ValueError) as exc:
                raise InvalidPayload("event data", str(exc)) from None
            rows.append((address, seq, e.kind, e.at, e.run, data))
            events.append(Event(format_offset(seq), seq, e.kind, e.at, e.run, e.data))
        if rows:
            conn.executemany("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)", rows)
        if c.consumed:
            conn.executemany(
                "DELETE FROM inbox WHERE id = ? AND address = ?",
                [(parse_offset(o, "consumed offset"), address) for o in c.consumed],
            )
        for env in c.outbox:
            _deliver(conn, env, time.time())
            self.woken.append(env.address)
        if c.cancel_timers:
            conn.executemany(
                "DELETE FROM timers WHERE address = ? AND name = ?",
                [(address, name) for name in c.cancel_timers],
            )
        if c.runs:
            conn.executemany(
                "INSERT INTO runs(run, address, status, record) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(run) DO UPDATE SET status = excluded.status, record = excluded.record",
                [(r.run, r.address, r.status, _run_encoder.encode(r)) for r in c.runs],
            )
        if c.timers:
            conn.executemany(
                "INSERT INTO timers(address, name, type, due, generation, payload) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(address, name) DO UPDATE SET "
                "due = excluded.due, generation = excluded.generation, payload = excluded.payload",
                [
                    (
                        address,
                        t.name,
                        self.type,
                        t.due,
                        t.generation,
                        _any_encoder.encode(t.payload),
                    )
                    for t in c.timers
                ],
            )


@dataclass
class _SendOp:
    envelope: Envelope
    result: str = ""

    def apply(self, conn: sqlite3.Connection) -> None:
        self.result = _deliver(conn, self.envelope, time.time())


@dataclass
class _FireOp:
    now: float
    result: list[str] = field(default_factory=list)

    def apply(self, conn: sqlite3.Connection) -> None:
        rows = conn.execute(
            "SELECT address, name, generation, payload FROM timers WHERE due <= ? ORDER BY due",
            (self.now,),
        ).fetchall()
        for address, name, generation, payload in rows:
            env = Envelope(
                address=address,
                kind="timer",
                payload=_any_decoder.decode(payload),
                name=name,
                generation=generation,
            )
            _deliver(conn, env, self.now)
            self.result.append(address)
        if rows:
            conn.execute("DELETE FROM timers WHERE due <= ?", (self.now,))


@dataclass
class _SnapshotOp:
    address: str
    snapshot: Snapshot
    result: None = None

    def apply(self, conn: sqlite3.Connection) -> None:
        s = self.snapshot
        conn.execute(
            "INSERT INTO snapshots(address, seq, offset, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(address) DO UPDATE SET seq = excluded.seq, offset = excluded.offset, "
            "data = excluded.data WHERE excluded.seq > snapshots.seq",
            (self.address, s.seq, s.offset, s.data),
        )


_Op = _CommitOp | _SendOp | _FireOp | _SnapshotOp


def _head(conn: sqlite3.Connection, address: str) -> int:
    row = conn.execute("SELECT seq FROM entities WHERE address = ?", (address,)).fetchone()
    return int(row[0]) if row else 0


def _deliver(conn: sqlite3.Connection, env: Envelope, at: float) -> str:
    if env.key is not None:
        row = conn.execute(
            "SELECT inbox_id FROM sent_keys WHERE address = ? AND key = ?", (env.address, env.key)
        ).fetchone()
        if row is not None:
            return format_offset(row[0])
    type_name = env.address.split("/", 2)[1]
    cur = conn.execute(
        "INSERT INTO inbox(address, type, at, envelope) VALUES (?, ?, ?, ?)",
        (env.address, type_name, at, _env_encoder.encode(env)),
    )
    inbox_id = cur.lastrowid
    assert inbox_id is not None
    if env.key is not None:
        conn.execute(
            "INSERT INTO sent_keys(address, key, inbox_id) VALUES (?, ?, ?)",
            (env.address, env.key, inbox_id),
        )
    return format_offset(inbox_id)


def _apply_group(conn: sqlite3.Connection, ops: list[_Op]) -> list[BaseException | None]:
    """One transaction for a group of writes; each in a savepoint of its own."""
    outcomes: list[BaseException | None] = []
    conn.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            conn.execute("SAVEPOINT op")
            try:
                op.apply(conn)
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append(exc)
            else:
                conn.execute("RELEASE op")
                outcomes.append(None)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


# -- work done in the reader thread --------------------------------------------------


def _read_events(conn: sqlite3.Connection, address: str, after: int, limit: int) -> list[Event]:
    rows = conn.execute(
        "SELECT seq, kind, at, run, data FROM events WHERE address = ? AND seq > ? "
        "ORDER BY seq LIMIT ?",
        (address, after, limit),
    ).fetchall()
    return [
        Event(format_offset(seq), seq, kind, at, run, decode_data(kind, data))
        for seq, kind, at, run, data in rows
    ]


def _read_inbox(conn: sqlite3.Connection, address: str, after: int, limit: int) -> list[InboxItem]:
    rows = conn.execute(
        "SELECT id, at, envelope FROM inbox WHERE address = ? AND id > ? ORDER BY id LIMIT ?",
        (address, after, limit),
    ).fetchall()
    return [InboxItem(format_offset(i), at, _env_decoder.decode(env)) for i, at, env in rows]


class SQLiteStore(AsyncResource):
    """An `EventStore` in one SQLite file.

    `SQLiteStore("wakeful.db")`; `synchronous` is "NORMAL" (default) or "FULL"
    (see the module docs); `poll` bounds how long a live tail or the timer loop
    waits before looking again, which only matters when another process writes
    the same file.
    """

    recovers_runs = False

    def owns(self, address: str) -> bool:
        """One process serves every entity of this store."""
        return True

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
        poll: float = 1.0,
    ) -> None:
        synchronous = synchronous.upper()
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous={synchronous!r}; use one of {', '.join(SYNCHRONOUS)}")
        self.path = str(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.poll = poll
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._signals: Signals | None = None
        self._queue: list[tuple[_Op, asyncio.Future[Any]]] = []
        self._queued = asyncio.Event()
        self._background = Background("wakeful-sqlite-store")

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        if self._signals is not None:
            return
        writer = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await writer.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            mode = await (await writer.execute("PRAGMA journal_mode = WAL")).fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreClosed(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            await writer.execute(f"PRAGMA synchronous = {self.synchronous}")
            await writer.executescript(SCHEMA)
            await self._check_schema(writer)
            reader = await aiosqlite.connect(self.path, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except BaseException:
            await writer.close()
            raise
        self._writer, self._reader = writer, reader
        self._signals = Signals()
        self._queued = asyncio.Event()
        await self._background.start(self._write_loop, self._timer_loop)

    async def _check_schema(self, db: aiosqlite.Connection) -> None:
        row = await (
            await db.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        ).fetchone()
        if row is None:
            await db.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreClosed(
                f"{self.path} has schema version {row[0]}; this wakeful reads version "
                f"{SCHEMA_VERSION}"
            )

    async def close(self) -> None:
        signals, self._signals = self._signals, None
        if signals is None:
            return
        signals.close()
        await self._background.stop()
        for _, fut in self._queue:
            if not fut.done():
                fut.set_exception(closed_error("SQLiteStore"))
        self._queue.clear()
        for db in (self._reader, self._writer):
            if db is not None:
                await db.close()
        self._reader = self._writer = None

    def _sig(self) -> Signals:
        if self._signals is None:
            raise closed_error("SQLiteStore")
        return self._signals

    def _read_db(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise closed_error("SQLiteStore")
        return self._reader

    # -- the writer ------------------------------------------------------------

    async def _write(self, op: _Op) -> Any:
        self._sig()
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        self._queued.set()
        return await fut

    async def _write_loop(self) -> None:
        signals = self._sig()
        writer = self._writer
        assert writer is not None
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                group = self._queue[:MAX_GROUP]
                del self._queue[:MAX_GROUP]
                ops = [op for op, _ in group]
                try:
                    outcomes = await _in_thread(writer, _apply_group, ops)
                except asyncio.CancelledError:
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(closed_error("SQLiteStore"))
                    raise
                except Exception as exc:
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                timers_changed = False
                for (op, fut), outcome in zip(group, outcomes, strict=True):
                    if outcome is None:
                        self._announce(signals, op)
                        timers_changed |= isinstance(op, _CommitOp) and bool(
                            op.commit.timers or op.commit.cancel_timers
                        )
                    if fut.done():
                        continue
                    if outcome is None:
                        fut.set_result(op.result)
                    else:
                        fut.set_exception(outcome)
                if timers_changed:
                    signals.timers_changed()

    @staticmethod
    def _announce(signals: Signals, op: _Op) -> None:
        if isinstance(op, _CommitOp):
            if op.result:
                signals.committed(op.commit.address)
            for address in op.woken:
                signals.wake(address)
        elif isinstance(op, _SendOp):
            signals.wake(op.envelope.address)
        elif isinstance(op, _FireOp):
            for address in op.result:
                signals.wake(address)

    # -- writes ----------------------------------------------------------------

    async def commit(self, commit: Commit) -> list[Event]:
        type_name, id = parse_address(commit.address)
        for env in commit.outbox:
            parse_address(env.address)
        for offset in commit.consumed:
            parse_offset(offset, "consumed offset")
        result: list[Event] = await self._write(_CommitOp(commit, type_name, id))
        return result

    async def send(self, envelope: Envelope) -> str:
        parse_address(envelope.address)
        result: str = await self._write(_SendOp(envelope))
        return result

    async def save_snapshot(self, address: str, snapshot: Snapshot) -> None:
        parse_address(address)
        await self._write(_SnapshotOp(address, snapshot))

    # -- reads -----------------------------------------------------------------

    async def read(
        self, address: str, after: str | None = None, limit: int | None = None
    ) -> list[Event]:
        start = parse_offset(after, "after")
        return await _in_thread(
            self._read_db(), _read_events, address, start, -1 if limit is None else limit
        )

    def tail(self, address: str, after: str | None = None) -> AsyncIterator[Event]:
        parse_offset(after, "after")
        return _tail_events(self.read, self._sig(), address, after, self.poll)

    async def inbox(
        self, address: str, after: str | None = None, limit: int | None = None
    ) -> list[InboxItem]:
        start = parse_offset(after, "after")
        return await _in_thread(
            self._read_db(), _read_inbox, address, start, -1 if limit is None else limit
        )

    async def load_snapshot(self, address: str) -> Snapshot | None:
        async with self._read_db().execute(
            "SELECT seq, offset, data FROM snapshots WHERE address = ?", (address,)
        ) as cur:
            row = await cur.fetchone()
        return None if row is None else Snapshot(row[0], bytes(row[2]), row[1])

    async def entities(self, type: str, after: str | None = None, limit: int = 100) -> list[str]:
        async with self._read_db().execute(
            "SELECT id FROM entities WHERE type = ? AND id > ? ORDER BY id LIMIT ?",
            (type, after or "", limit),
        ) as cur:
            return [row[0] for row in await cur.fetchall()]

    def wakes(self) -> AsyncIterator[str]:
        return self._sig().wakes(self._initial_wakes)

    async def _initial_wakes(self) -> list[str]:
        async with self._read_db().execute("SELECT DISTINCT address FROM inbox") as cur:
            return [row[0] for row in await cur.fetchall()]

    async def pending(self, types: Collection[str]) -> bool:
        names = list(types)
        if not names:
            return False
        marks = ", ".join("?" * len(names))
        async with self._read_db().execute(
            f"SELECT EXISTS(SELECT 1 FROM inbox WHERE type IN ({marks})) "
            f"OR EXISTS(SELECT 1 FROM timers WHERE due <= ? AND type IN ({marks}))",
            (*names, time.time(), *names),
        ) as cur:
            row = await cur.fetchone()
        return bool(row and row[0])

    async def run(self, run: str) -> RunRecord | None:
        async with self._read_db().execute("SELECT record FROM runs WHERE run = ?", (run,)) as cur:
            row = await cur.fetchone()
        return None if row is None else _run_decoder.decode(row[0])

    async def runs(
        self, address: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        where, args = [], []
        if address is not None:
            where.append("address = ?")
            args.append(address)
        if status is not None:
            statuses = ACTIVE if status == "active" else (status,)
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        sql = "SELECT record FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY run DESC LIMIT ?"
        async with self._read_db().execute(sql, (*args, limit)) as cur:
            return [_run_decoder.decode(row[0]) for row in await cur.fetchall()]

    # -- timers ----------------------------------------------------------------

    async def _timer_loop(self) -> None:
        await run_timers(self._next_due, self._fire_due, self._sig(), self.poll)

    async def _next_due(self) -> float | None:
        async with self._read_db().execute("SELECT min(due) FROM timers") as cur:
            row = await cur.fetchone()
        return None if row is None or row[0] is None else float(row[0])

    async def _fire_due(self, now: float) -> list[str]:
        result: list[str] = await self._write(_FireOp(now))
        return result
