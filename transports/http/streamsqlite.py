"""`SQLiteStreams`: Durable Streams storage in a SQLite file (WAL).

Tables (all prefixed `ds_`, so the file can be the entity store's too):

- `ds_streams`: one row per stream name: configuration, tail offset, closure,
  the fork it comes from, how many forks read from it, whether it is gone;
- `ds_rows`: one row per append, keyed by (stream id, n), with its bytes;
- `ds_producers`: idempotent producer state per (stream id, Producer-Id);
- `ds_meta`: the schema version.

One writer connection applies queued writes in groups: everything that queued
while the previous transaction ran goes into the next `BEGIN IMMEDIATE`
transaction, each write in its own savepoint (one refused write never takes
another with it), run in aiosqlite's worker thread as a single call. An append
and its producer-state update are one savepoint of one transaction: both or
neither. Reads use a second connection, each read one snapshot.

Live readers are woken in process (`Watchers`): one process serves one file.
TTL renewals by reads are kept in memory and written every `sweep_interval`
seconds and at close; after a crash a stream with a TTL may expire up to that
much earlier than its last read implied.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

import aiosqlite

from wakeful.runtime.errors import StoreClosed
from wakeful.runtime.lifecycle import AsyncResource

from .. import _local
from . import streamlog
from .streamlog import Meta, ProducerState
from .streamtypes import (
    AppendOutcome,
    AppendSpec,
    CreateResult,
    CreateSpec,
    Offset,
    Producer,
    ReadResult,
    Row,
    StreamInfo,
    Watchers,
)

__all__ = ["SQLiteStreams"]

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS ds_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ds_streams (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    content_type TEXT NOT NULL,
    created REAL NOT NULL,
    accessed REAL NOT NULL,
    ttl INTEGER,
    expires_at REAL,
    expires_text TEXT,
    closed INTEGER NOT NULL DEFAULT 0,
    closer_id TEXT,
    closer_epoch INTEGER,
    closer_seq INTEGER,
    stream_seq BLOB,
    tail_n INTEGER NOT NULL,
    tail_m INTEGER NOT NULL,
    fork_of INTEGER,
    fork_source TEXT,
    fork_n INTEGER NOT NULL DEFAULT 0,
    fork_m INTEGER NOT NULL DEFAULT 0,
    fork_sub INTEGER NOT NULL DEFAULT 0,
    refs INTEGER NOT NULL DEFAULT 0,
    gone INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ds_streams_expiring ON ds_streams(expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS ds_streams_ttl ON ds_streams(accessed)
    WHERE ttl IS NOT NULL;
CREATE TABLE IF NOT EXISTS ds_rows (
    stream INTEGER NOT NULL,
    n INTEGER NOT NULL,
    m INTEGER NOT NULL,
    count INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (stream, n)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ds_producers (
    stream INTEGER NOT NULL,
    producer TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (stream, producer)
) WITHOUT ROWID;
"""

_COLUMNS = (
    "id, name, content_type, created, accessed, ttl, expires_at, expires_text, closed, "
    "closer_id, closer_epoch, closer_seq, stream_seq, tail_n, tail_m, fork_of, fork_source, "
    "fork_n, fork_m, fork_sub, refs, gone"
)
_SELECT = f"SELECT {_COLUMNS} FROM ds_streams"
_INSERT = f"INSERT INTO ds_streams({_COLUMNS.removeprefix('id, ')}) VALUES ({', '.join('?' * 21)})"
_UPDATE = (
    "UPDATE ds_streams SET accessed = ?, closed = ?, closer_id = ?, closer_epoch = ?, "
    "closer_seq = ?, stream_seq = ?, tail_n = ?, tail_m = ?, refs = ?, gone = ? WHERE id = ?"
)
MAX_GROUP = 256
T = TypeVar("T")


def _meta(row: tuple[Any, ...] | None) -> Meta | None:
    if row is None:
        return None
    closer = Producer(row[9], row[10], row[11]) if row[9] is not None else None
    return Meta(
        id=row[0],
        name=row[1],
        content_type=row[2],
        created=row[3],
        accessed=row[4],
        ttl=row[5],
        expires_at=row[6],
        expires_text=row[7],
        closed=bool(row[8]),
        closer=closer,
        stream_seq=row[12],
        tail_n=row[13],
        tail_m=row[14],
        fork_of=row[15],
        fork_source=row[16],
        fork_n=row[17],
        fork_m=row[18],
        fork_sub=row[19],
        refs=row[20],
        gone=bool(row[21]),
    )


class _SQLiteTx:
    """`streamlog.Tx` on a `sqlite3` connection (inside the caller's transaction)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def get(self, name: str) -> Meta | None:
        return _meta(self.conn.execute(f"{_SELECT} WHERE name = ?", (name,)).fetchone())

    def get_id(self, id: int) -> Meta | None:
        return _meta(self.conn.execute(f"{_SELECT} WHERE id = ?", (id,)).fetchone())

    def insert(self, m: Meta) -> int:
        closer = m.closer or Producer(None, None, None)  # type: ignore[arg-type]
        cur = self.conn.execute(
            _INSERT,
            (
                m.name,
                m.content_type,
                m.created,
                m.accessed,
                m.ttl,
                m.expires_at,
                m.expires_text,
                int(m.closed),
                closer.id,
                closer.epoch,
                closer.seq,
                m.stream_seq,
                m.tail_n,
                m.tail_m,
                m.fork_of,
                m.fork_source,
                m.fork_n,
                m.fork_m,
                m.fork_sub,
                m.refs,
                int(m.gone),
            ),
        )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def save(self, m: Meta) -> None:
        closer = m.closer or Producer(None, None, None)  # type: ignore[arg-type]
        self.conn.execute(
            _UPDATE,
            (
                m.accessed,
                int(m.closed),
                closer.id,
                closer.epoch,
                closer.seq,
                m.stream_seq,
                m.tail_n,
                m.tail_m,
                m.refs,
                int(m.gone),
                m.id,
            ),
        )

    def remove(self, id: int) -> None:
        self.conn.execute("DELETE FROM ds_rows WHERE stream = ?", (id,))
        self.conn.execute("DELETE FROM ds_producers WHERE stream = ?", (id,))
        self.conn.execute("DELETE FROM ds_streams WHERE id = ?", (id,))

    def rows(self, id: int, after: int, upto: int, limit: int) -> list[Row]:
        cur = self.conn.execute(
            "SELECT n, m, data, count FROM ds_rows WHERE stream = ? AND n > ? AND n <= ? "
            "ORDER BY n",
            (id, after, upto),
        )
        out: list[Row] = []
        taken = 0
        for n, m, data, count in cur:
            if out and taken >= limit:
                break
            out.append(Row(n, m, data, count))
            taken += len(data)
        cur.close()
        return out

    def add_row(self, id: int, row: Row) -> None:
        self.conn.execute(
            "INSERT INTO ds_rows(stream, n, m, count, data) VALUES (?, ?, ?, ?, ?)",
            (id, row.n, row.m, row.count, row.data),
        )

    def producer(self, id: int, producer: str) -> ProducerState | None:
        row = self.conn.execute(
            "SELECT epoch, seq, updated FROM ds_producers WHERE stream = ? AND producer = ?",
            (id, producer),
        ).fetchone()
        return None if row is None else ProducerState(row[0], row[1], row[2])

    def set_producer(self, id: int, producer: str, state: ProducerState) -> None:
        self.conn.execute(
            "INSERT INTO ds_producers(stream, producer, epoch, seq, updated) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(stream, producer) DO UPDATE SET "
            "epoch = excluded.epoch, seq = excluded.seq, updated = excluded.updated",
            (id, producer, state.epoch, state.seq, state.updated),
        )

    def expiring(self, now: float) -> list[Meta]:
        rows = self.conn.execute(
            f"{_SELECT} WHERE gone = 0 AND ((expires_at IS NOT NULL AND expires_at <= ?) "
            "OR (ttl IS NOT NULL AND accessed + ttl <= ?))",
            (now, now),
        ).fetchall()
        return [m for m in map(_meta, rows) if m is not None]


# -- work in the writer thread ----------------------------------------------------

WriteFn = Callable[[_SQLiteTx], tuple[Any, set[str]]]


def _apply_group(
    conn: sqlite3.Connection, ops: list[WriteFn]
) -> list[tuple[Any, set[str]] | BaseException]:
    """One transaction for a group of writes; each in a savepoint of its own (a lone
    write needs none: its failure rolls the transaction back)."""
    outcomes: list[tuple[Any, set[str]] | BaseException] = []
    tx = _SQLiteTx(conn)
    alone = len(ops) == 1
    conn.execute("BEGIN IMMEDIATE")
    try:
        for op in ops:
            if not alone:
                conn.execute("SAVEPOINT op")
            try:
                outcome = op(tx)
            except Exception as exc:
                conn.execute("ROLLBACK" if alone else "ROLLBACK TO op")
                if alone:
                    return [exc]
                conn.execute("RELEASE op")
                outcomes.append(exc)
            else:
                if not alone:
                    conn.execute("RELEASE op")
                outcomes.append(outcome)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return outcomes


def _any_expiring(tx: _SQLiteTx) -> bool:
    now = time.time()
    return bool(tx.expiring(now))


def _read_snapshot(conn: sqlite3.Connection, fn: Callable[[_SQLiteTx], T]) -> T:
    conn.execute("BEGIN")
    try:
        return fn(_SQLiteTx(conn))
    finally:
        conn.execute("COMMIT")


async def _in_thread(db: aiosqlite.Connection, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(sqlite3_connection, *args)` in aiosqlite's worker thread, one hop.

    Uses aiosqlite's internals (`_execute`, `_conn`) like `SQLiteStore` does;
    the aiosqlite version is pinned in pyproject.
    """
    return await db._execute(fn, db._conn, *args)  # type: ignore[no-untyped-call,no-any-return]


class SQLiteStreams(AsyncResource):
    """A `StreamStore` in a SQLite file: `async with SQLiteStreams("streams.db") as s:`.

    The file may be shared with `SQLiteStore` (different tables, own connections;
    `busy_timeout` covers the other's write transactions). `synchronous` is
    "NORMAL" (survives a process crash) or "FULL" (survives power loss too).
    `sweep_interval` is how often expired streams are removed and TTL renewals
    written.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
        sweep_interval: float = 1.0,
    ) -> None:
        synchronous = synchronous.upper()
        if synchronous not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous={synchronous!r}; use one of OFF, NORMAL, FULL, EXTRA")
        self.path = str(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.sweep_interval = sweep_interval
        self.watchers = Watchers()
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: list[tuple[WriteFn, asyncio.Future[Any]]] = []
        self._queued = asyncio.Event()
        self._touched: dict[int, float] = {}
        self._background = _local.Background("wakeful-sqlite-streams")

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        ms = int(self.busy_timeout * 1000)
        writer = await aiosqlite.connect(self.path, isolation_level=None)
        reader: aiosqlite.Connection | None = None
        try:
            await writer.execute(f"PRAGMA busy_timeout = {ms}")
            mode = await (await writer.execute("PRAGMA journal_mode = WAL")).fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise StoreClosed(f"{self.path}: SQLite refused WAL mode (got {mode!r})")
            await writer.execute(f"PRAGMA synchronous = {self.synchronous}")
            await writer.executescript(SCHEMA)
            await self._check_schema(writer)
            reader = await aiosqlite.connect(self.path, isolation_level=None)
            await reader.execute(f"PRAGMA busy_timeout = {ms}")
        except BaseException:
            if reader is not None:
                await reader.close()
            await writer.close()
            raise
        self._writer, self._reader = writer, reader
        self.watchers = Watchers()
        self._queued = asyncio.Event()
        await self._background.start(self._write_loop, self._sweep_loop)

    async def _check_schema(self, db: aiosqlite.Connection) -> None:
        row = await (
            await db.execute("SELECT value FROM ds_meta WHERE key = 'schema_version'")
        ).fetchone()
        if row is None:
            await db.execute(
                "INSERT INTO ds_meta(key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        elif int(row[0]) != SCHEMA_VERSION:
            raise StoreClosed(
                f"{self.path} has Durable Streams schema version {row[0]}; this wakeful "
                f"reads version {SCHEMA_VERSION}"
            )

    async def close(self) -> None:
        writer, reader = self._writer, self._reader
        if writer is None:
            return
        self.watchers.close()
        await self._background.stop()
        for _, fut in self._queue:
            if not fut.done():
                fut.set_exception(_local.closed_error("SQLiteStreams"))
        self._queue.clear()
        try:
            if self._touched:
                await _in_thread(writer, _apply_group, [self._flush_touched_op()])
        finally:
            self._writer = self._reader = None
            for db in (reader, writer):
                if db is not None:
                    await db.close()

    def _reader_db(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise _local.closed_error("SQLiteStreams")
        return self._reader

    # -- the writer ------------------------------------------------------------

    async def _write(self, op: WriteFn) -> Any:
        if self._writer is None:
            raise _local.closed_error("SQLiteStreams")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((op, fut))
        self._queued.set()
        return await fut

    async def _write_loop(self) -> None:
        writer = self._writer
        assert writer is not None
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                group = self._queue[:MAX_GROUP]
                del self._queue[:MAX_GROUP]
                try:
                    outcomes = await _in_thread(writer, _apply_group, [op for op, _ in group])
                except asyncio.CancelledError:
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(_local.closed_error("SQLiteStreams"))
                    raise
                except Exception as exc:
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(exc)
                    continue
                changed: set[str] = set()
                for (_, fut), outcome in zip(group, outcomes, strict=True):
                    if isinstance(outcome, BaseException):
                        if not fut.done():
                            fut.set_exception(outcome)
                        continue
                    result, names = outcome
                    changed |= names
                    if not fut.done():
                        fut.set_result(result)
                if changed:
                    self.watchers.notify(changed)

    def _last_touch(self, id: int) -> float:
        return self._touched.get(id, 0.0)

    def _flush_touched_op(self) -> WriteFn:
        touched, self._touched = self._touched, {}

        def flush(tx: _SQLiteTx) -> tuple[None, set[str]]:
            tx.conn.executemany(
                "UPDATE ds_streams SET accessed = max(accessed, ?) WHERE id = ?",
                [(at, id) for id, at in touched.items()],
            )
            return None, set()

        return flush

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            if self._touched:
                await self._write(self._flush_touched_op())
            # Look first on the reader, so an idle sweep never takes the write lock.
            due = await _in_thread(self._reader_db(), _read_snapshot, _any_expiring)
            if due:
                await self._write(self._sweep_op)

    def _sweep_op(self, tx: _SQLiteTx) -> tuple[None, set[str]]:
        return None, streamlog.sweep(tx, time.time(), self._last_touch)

    # -- the port ----------------------------------------------------------------

    async def create(self, name: str, spec: CreateSpec) -> CreateResult:
        touched = self._last_touch

        def op(tx: _SQLiteTx) -> tuple[CreateResult, set[str]]:
            result = streamlog.create(tx, name, spec, time.time(), touched)
            return result, {name} if result.created else set()

        result: CreateResult = await self._write(op)
        return result

    async def append(self, name: str, spec: AppendSpec) -> AppendOutcome:
        touched = self._last_touch

        def op(tx: _SQLiteTx) -> tuple[AppendOutcome, set[str]]:
            outcome, changed = streamlog.append(tx, name, spec, time.time(), touched)
            return outcome, {name} if changed else set()

        outcome: AppendOutcome = await self._write(op)
        return outcome

    async def delete(self, name: str) -> None:
        touched = self._last_touch

        def op(tx: _SQLiteTx) -> tuple[None, set[str]]:
            return None, streamlog.delete(tx, name, time.time(), touched)

        await self._write(op)

    async def read(
        self, name: str, after: Offset | Literal["now"] | None, limit: int
    ) -> ReadResult:
        now = time.time()
        touched = self._last_touch

        def fn(tx: _SQLiteTx) -> ReadResult:
            return streamlog.read(tx, name, after, limit, now, touched)

        result: ReadResult = await _in_thread(self._reader_db(), _read_snapshot, fn)
        if result.info.ttl is not None:
            self._touched[result.info.id] = now
        return result

    async def info(self, name: str) -> StreamInfo:
        now = time.time()
        touched = self._last_touch

        def fn(tx: _SQLiteTx) -> StreamInfo:
            return streamlog.info(tx, name, now, touched)

        info: StreamInfo = await _in_thread(self._reader_db(), _read_snapshot, fn)
        return info
