"""`JetStreamStreams`: Durable Streams storage on a NATS JetStream stream.

Several server processes can serve the same streams from one JetStream cluster.
Layout, in one JetStream stream (default `WAKEFUL_DS`, subjects `<prefix>.>`,
prefix `wkds`):

- `<prefix>.m.<name token>`: the stream's whole state as one message (its
  `streamlog.Meta` and its producers' states, msgpack), written with
  `Nats-Rollup: sub` so only the newest stays. An empty message is a tombstone
  (the name is free). The name token is the name in unpadded base64url.
- `<prefix>.d.<id>.<n>.<part>`: the stream's `n`-th append (the bytes; `Ds-M`,
  `Ds-Count` and, when an append exceeds the server's `max_payload` and is split,
  `Ds-Parts` headers on part 0). Ids are random 52-bit integers, so a name used again
  after a removal never sees the old rows.

Every request runs the semantics of `streamlog` (the same as `MemoryStreams`
and `SQLiteStreams`) on a snapshot loaded from JetStream: what the functions ask
for is loaded lazily (a miss aborts the run, loads, and runs it again on the same
snapshot). A write then commits everything it changed as one atomic batch (or
one publish when it is a single message), every state message guarded with
`Nats-Expected-Last-Subject-Sequence` = the sequence it was loaded at. Two
processes therefore never interleave: the loser of a race gets a conflict
(10071/10164), reloads and runs the request again. The producer state travels
in the state message, so producer dedupe and the append are one atomic write.
Writes to one stream that queue in one process while a batch is in flight are
committed together (group commit), each with its own outcome.

Live readers are woken by local commits and by an ordered push consumer on
`<prefix>.m.*` (new messages only, headers only): a writer in another process
wakes them too, once its write is stored.

TTL renewals by reads are kept in memory and written to the state message every
second (another process may see a renewal up to that much late). Expired
streams read as deleted at once; every `sweep_interval` seconds (default 10)
each process removes them, after reading every stream's state message (a scan:
fine for thousands of streams, not for millions).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api

from wakeful.runtime.errors import WakefulError
from wakeful.runtime.lifecycle import AsyncResource

from .. import _local
from ..jetstream.stream import JetStreamSetupError, check_server_version, direct_get
from . import streamlog
from .streamlog import Meta, ProducerState
from .streamtypes import (
    AppendOutcome,
    AppendSpec,
    CreateResult,
    CreateSpec,
    Offset,
    ReadResult,
    Row,
    StreamConflict,
    StreamError,
    StreamInfo,
    Watchers,
)

__all__ = ["JetStreamStreams"]

log = logging.getLogger("wakeful.http.streamjetstream")
T = TypeVar("T")
CONFLICT_CODES = (10071, 10164)
DIRECT_BATCH = 256
PAYLOAD_HEADROOM = 8 * 1024
TOUCH_INTERVAL = 1.0
"""Seconds between writes of the TTL renewals that reads made in this process."""
TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


class _State(msgspec.Struct):
    """Everything about one stream that changes together: its metadata and producers."""

    meta: Meta
    producers: dict[str, ProducerState] = {}


_encode = msgspec.msgpack.Encoder().encode
_decode_state = msgspec.msgpack.Decoder(_State).decode


def name_token(name: str) -> str:
    """A stream name as one subject token (unpadded base64url of its UTF-8 bytes)."""
    raw = name.encode("utf-8", "surrogateescape")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def token_name(token: str) -> str:
    """The inverse of `name_token`."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    return raw.decode("utf-8", "surrogateescape")


def _raise_if_cancelling() -> None:
    """nats-py 2.16 swallows a `CancelledError` that hits it while it flushes (a
    subscribe, a request): the task then runs on as if never cancelled. Loops call
    this after their awaits, so a cancelled task stops all the same."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Conflict(Exception):
    """A guarded write lost a race (or its retry found its own first try)."""


class _PublishError(WakefulError):
    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (err_code {err_code})")
        self.code = code
        self.err_code = err_code


class _Need(Exception):
    """The snapshot lacks a stream's state (`name`) or a range of rows (`rows`)."""

    def __init__(
        self, name: str | None = None, rows: tuple[int, int, int, int] | None = None
    ) -> None:
        super().__init__(name or rows)
        self.name = name
        self.rows = rows


class _Snapshot:
    """What one request loaded: state messages by name (with their stream sequence and
    commit id), stream ids by name, and row ranges."""

    def __init__(self) -> None:
        self.states: dict[str, tuple[int, _State | None]] = {}
        self.names: dict[int, str] = {}
        self.rows: dict[tuple[int, int, int, int], list[Row]] = {}

    def learn(self, name: str, seq: int, state: _State | None) -> None:
        self.states[name] = (seq, state)
        if state is not None:
            meta = state.meta
            self.names[meta.id] = name
            if meta.fork_of is not None and meta.fork_source is not None:
                self.names.setdefault(meta.fork_of, meta.fork_source)


class _SnapshotTx:
    """`streamlog.Tx` on a `_Snapshot`: reads miss with `_Need`, writes are buffered."""

    def __init__(self, snap: _Snapshot) -> None:
        self.snap = snap
        self.writes: dict[str, _State | None] = {}
        self.new_rows: list[tuple[int, Row]] = []
        self.removed: list[int] = []

    def _state(self, name: str) -> _State | None:
        if name in self.writes:
            return self.writes[name]
        if name not in self.snap.states:
            raise _Need(name=name)
        return self.snap.states[name][1]

    def _name(self, id: int) -> str | None:
        return self.snap.names.get(id)

    def get(self, name: str) -> Meta | None:
        state = self._state(name)
        return None if state is None else msgspec.structs.replace(state.meta)

    def get_id(self, id: int) -> Meta | None:
        # A fork's source keeps its name while the fork exists (deleting it only
        # marks it gone), so the name a fork records finds its source.
        name = self._name(id)
        if name is None:
            return None
        state = self._state(name)
        if state is None or state.meta.id != id:
            return None
        return msgspec.structs.replace(state.meta)

    def insert(self, meta: Meta) -> int:
        id = secrets.randbits(52) or 1
        self.writes[meta.name] = _State(msgspec.structs.replace(meta, id=id), {})
        self.snap.names[id] = meta.name
        return id

    def save(self, meta: Meta) -> None:
        before = self._state(meta.name)
        producers = before.producers if before is not None and before.meta.id == meta.id else {}
        self.writes[meta.name] = _State(msgspec.structs.replace(meta), dict(producers))

    def remove(self, id: int) -> None:
        name = self._name(id)
        if name is None:
            return
        state = self._state(name)
        if state is not None and state.meta.id == id:
            self.writes[name] = None
            self.removed.append(id)

    def rows(self, id: int, after: int, upto: int, limit: int) -> list[Row]:
        key = (id, after, upto, limit)
        found = self.snap.rows.get(key)
        if found is None:
            raise _Need(rows=key)
        return found

    def add_row(self, id: int, row: Row) -> None:
        self.new_rows.append((id, row))

    def producer(self, id: int, producer: str) -> ProducerState | None:
        name = self._name(id)
        state = None if name is None else self._state(name)
        return None if state is None else state.producers.get(producer)

    def set_producer(self, id: int, producer: str, state: ProducerState) -> None:
        name = self._name(id)
        if name is None:
            raise WakefulError(f"stream id {id} is not in this transaction")
        current = self._state(name)
        if current is None:
            raise WakefulError(f"stream {name!r} is not in this transaction")
        if name not in self.writes:
            current = _State(msgspec.structs.replace(current.meta), dict(current.producers))
            self.writes[name] = current
        current.producers[producer] = state

    def expiring(self, now: float) -> list[Meta]:
        return [
            msgspec.structs.replace(state.meta)
            for _, state in self.snap.states.values()
            if state is not None and (state.meta.ttl is not None or state.meta.expires_at)
        ]


Op = Callable[[_SnapshotTx], T]
_Queued = tuple[Callable[[_SnapshotTx], Any], int, "asyncio.Future[tuple[Any, set[str]]]"]
GROUP_MAX = 64
GROUP_BYTES = 4 * 1024 * 1024


class _Writers:
    """The writes to one stream queued in this process, and the lock of their committer."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.queue: list[_Queued] = []
        self.users = 0

    def take(self) -> list[_Queued]:
        """The oldest queued writes that fit one atomic batch (at least one)."""
        taken, size = 0, 0
        for _, bytes_, _ in self.queue:
            if taken and (taken >= GROUP_MAX or size + bytes_ > GROUP_BYTES):
                break
            taken += 1
            size += bytes_
        group, self.queue = self.queue[:taken], self.queue[taken:]
        return group


class JetStreamStreams(AsyncResource):
    """A `StreamStore` on JetStream, shared by any number of server processes:
    `async with JetStreamStreams("nats://127.0.0.1:4222") as store:`.

    The JetStream stream `stream` is created when missing (`replicas` 1, 3 or 5,
    `storage` "file" or "memory"); an existing one must have `allow_atomic`,
    `allow_direct`, `allow_rollup_hdrs` and the subjects `<prefix>.>` (two stores
    on one server need different streams and prefixes). Requests that get no
    answer (an election, a reconnect) are sent again for up to `retry_for`
    seconds; `sweep_interval` is how often expired streams are removed.
    """

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        stream: str = "WAKEFUL_DS",
        replicas: int = 1,
        storage: str = "file",
        prefix: str = "wkds",
        request_timeout: float = 5.0,
        retry_for: float = 30.0,
        sweep_interval: float = 10.0,
    ) -> None:
        if replicas not in (1, 3, 5):
            raise ValueError(f"replicas={replicas}; use 1, 3 or 5")
        if storage not in ("file", "memory"):
            raise ValueError(f"storage={storage!r}; use 'file' or 'memory'")
        if not prefix or any(c in prefix for c in ".*> \t"):
            raise ValueError(f"prefix={prefix!r}; use one subject token such as 'wkds'")
        self.servers = servers
        self.stream = stream
        self.replicas = replicas
        self.storage = storage
        self.prefix = prefix
        self.timeout = request_timeout
        self.retry_for = retry_for
        self.sweep_interval = sweep_interval
        self.watchers = Watchers()
        self._nc: Client | None = None
        self._sub: Subscription | None = None
        self._touched: dict[int, tuple[str, float]] = {}
        self._writers: dict[str, _Writers] = {}
        self._background = _local.Background("wakeful-jetstream-streams")

    # -- subjects ------------------------------------------------------------------

    def _meta_subject(self, name: str) -> str:
        return f"{self.prefix}.m.{name_token(name)}"

    def _row_subject(self, id: int, n: int, part: int) -> str:
        return f"{self.prefix}.d.{id}.{n}.{part}"

    def _rows_of(self, id: int) -> str:
        return f"{self.prefix}.d.{id}.>"

    # -- lifecycle -------------------------------------------------------------------

    async def open(self) -> None:
        if self._nc is not None:
            return
        nc = await nats.connect(
            self.servers,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            error_cb=_connection_error,
        )
        try:
            await self._ensure_stream(nc)
            watchers = Watchers()

            async def changed(msg: Msg) -> None:
                token = msg.subject.rsplit(".", 1)[-1]
                with contextlib.suppress(ValueError):
                    watchers.notify([token_name(token)])

            # A JetStream consumer, not a core subscription: a core subscriber may get a
            # message before JetStream has stored it (an atomic batch's first messages
            # even before its commit), and a reader woken then would find nothing new
            # and sleep through the write. A consumer delivers what is stored.
            self._sub = await nc.jetstream().subscribe(
                f"{self.prefix}.m.*",
                cb=changed,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.NEW,
                headers_only=True,
            )
        except BaseException:
            await nc.close()
            raise
        self._nc = nc
        self.watchers = watchers
        await self._background.start(self._sweep_loop)

    async def _ensure_stream(self, nc: Client) -> None:
        server = nc.connected_url.netloc if nc.connected_url else "the server"
        version = nc.connected_server_version
        check_server_version((version.major, version.minor, version.patch), server)
        js = nc.jetstream()
        subjects = [f"{self.prefix}.>"]
        try:
            info = await js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            config = api.StreamConfig(
                name=self.stream,
                subjects=subjects,
                storage=api.StorageType(self.storage),
                num_replicas=self.replicas,
                allow_atomic=True,
                allow_direct=True,
                allow_rollup_hdrs=True,
            )
            try:
                await js.add_stream(config)
            except nats.js.errors.APIError as exc:
                raise JetStreamSetupError(
                    f"cannot create stream {self.stream!r} on {server}: {exc.description} "
                    f"(err_code {exc.err_code})"
                ) from exc
            return
        except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
            raise JetStreamSetupError(
                f"JetStream is not enabled on the nats-server at {server}: start it with -js"
            ) from exc
        have = info.config
        problems = [
            f"{flag} is false, needs true"
            for flag in ("allow_atomic", "allow_direct", "allow_rollup_hdrs")
            if not getattr(have, flag)
        ]
        if subjects[0] not in (have.subjects or []):
            problems.append(f"subjects {have.subjects} do not include {subjects[0]!r}")
        if problems:
            raise JetStreamSetupError(
                f"stream {self.stream!r} on {server} exists with settings Durable Streams "
                "cannot use: " + "; ".join(problems) + ". Edit the stream, delete it, or "
                "give JetStreamStreams another stream name"
            )

    async def close(self) -> None:
        nc = self._nc
        if nc is None:
            return
        self.watchers.close()
        await self._background.stop()
        try:
            if self._touched and nc.is_connected:
                async with asyncio.timeout(self.timeout):
                    await self._flush_touched()
        except (TimeoutError, WakefulError, nats.errors.Error) as exc:
            log.warning("could not write TTL renewals at close: %r", exc)
        finally:
            sub, self._sub = self._sub, None
            self._nc = None
            if sub is not None and nc.is_connected:
                with contextlib.suppress(nats.errors.Error, nats.js.errors.Error):
                    await sub.unsubscribe()  # deletes its ephemeral consumer now
            await nc.close()

    def _conn(self) -> Client:
        if self._nc is None:
            raise _local.closed_error("JetStreamStreams")
        return self._nc

    # -- raw JetStream -----------------------------------------------------------------

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """`op`, tried again while the server does not answer, for up to `retry_for` s."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            _raise_if_cancelling()
            try:
                return await op()
            except _PublishError as exc:
                if exc.code != 503:
                    raise
                failure: Exception = exc
            except TRANSIENT as exc:
                failure = exc
            if time.monotonic() + delay > deadline:
                raise WakefulError(
                    f"{what}: no answer from JetStream within {self.retry_for}s: {failure!r}"
                ) from failure
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _direct(self, request: dict[str, Any]) -> list[Msg]:
        nc = self._conn()
        return await self._retrying(
            "read", lambda: direct_get(nc, self.stream, request, self.timeout)
        )

    async def _load_state(self, snap: _Snapshot, name: str) -> None:
        subject = self._meta_subject(name)
        if self.replicas > 1:
            # A direct get may be answered by a follower that is behind: a client could
            # miss its own append. The stream leader has every acknowledged write.
            js = self._conn().jetstream()

            async def leader() -> tuple[int, bytes] | None:
                try:
                    msg = await js.get_last_msg(self.stream, subject)
                except nats.js.errors.NotFoundError:
                    return None
                return int(msg.seq or 0), msg.data or b""

            got = await self._retrying(f"read of {subject}", leader)
        else:
            found = await self._direct({"last_by_subj": subject})
            got = None
            if found:
                got = int((found[0].headers or {})["Nats-Sequence"]), found[0].data
        if got is None:
            snap.learn(name, 0, None)
        else:
            seq, data = got
            snap.learn(name, seq, _decode_state(data) if data else None)

    async def _load_rows(self, snap: _Snapshot, key: tuple[int, int, int, int]) -> None:
        """Rows as `_SnapshotTx.rows` gives them. The state said they exist; a direct
        get answered by a follower that is behind may miss the newest: ask again."""
        _, after, upto, limit = key
        deadline = time.monotonic() + self.retry_for
        while True:
            rows = await self._fetch_rows(key)
            taken = sum(len(r.data) for r in rows)
            whole = bool(rows) and (rows[-1].n >= upto or taken >= limit)
            if whole or after >= upto or time.monotonic() > deadline:
                if not whole and after < upto:
                    raise WakefulError(
                        f"rows {after + 1}..{upto} of a stream are not readable from "
                        f"JetStream after {self.retry_for}s; try again"
                    )
                snap.rows[key] = rows
                return
            await asyncio.sleep(0.02)

    async def _fetch_rows(self, key: tuple[int, int, int, int]) -> list[Row]:
        id, after, upto, limit = key
        out: list[Row] = []
        first = await self._direct({"last_by_subj": self._row_subject(id, after + 1, 0)})
        if first:
            seq = int((first[0].headers or {})["Nats-Sequence"])
            taken = 0
            parts: list[bytes] = []
            row: Row | None = None
            wanted = 0
            done = False
            while not done:
                batch = await self._direct(
                    {"seq": seq, "next_by_subj": self._rows_of(id), "batch": DIRECT_BATCH}
                )
                for msg in batch:
                    h = msg.headers or {}
                    _, n_text, k_text = h["Nats-Subject"].rsplit(".", 2)
                    n, k = int(n_text), int(k_text)
                    if k == 0:
                        if n > upto or (out and taken >= limit):
                            done = True
                            break
                        row = Row(n, int(h["Ds-M"]), b"", int(h.get("Ds-Count", "1")))
                        wanted = int(h.get("Ds-Parts", "1"))
                        parts = []
                    if row is None or n != row.n:
                        continue  # a part of a row before the first (cannot happen)
                    parts.append(msg.data)
                    if len(parts) == wanted:
                        row.data = parts[0] if wanted == 1 else b"".join(parts)
                        out.append(row)
                        taken += len(row.data)
                        row = None
                        if n >= upto:
                            done = True
                            break
                if len(batch) < DIRECT_BATCH:
                    break
                seq = int((batch[-1].headers or {})["Nats-Sequence"]) + 1
        return out

    async def _load_all(self, snap: _Snapshot) -> None:
        """Every stream's state (for the sweeper). The state subjects keep only their
        newest message (rollups), so a scan of them in stream order, page by page, reads
        each stream once (one that changes meanwhile shows up again later: the later
        copy wins). A multi-last get would be one request but the server caps its
        answer (413 Too Many Results at about a thousand subjects)."""
        seq = 1
        while True:
            batch = await self._direct(
                {"seq": seq, "next_by_subj": f"{self.prefix}.m.*", "batch": DIRECT_BATCH}
            )
            for msg in batch:
                h = msg.headers or {}
                name = token_name(h["Nats-Subject"].rsplit(".", 1)[-1])
                at = int(h["Nats-Sequence"])
                snap.learn(name, at, _decode_state(msg.data) if msg.data else None)
            if len(batch) < DIRECT_BATCH:
                return
            seq = int((batch[-1].headers or {})["Nats-Sequence"]) + 1

    async def _publish(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> None:
        nc = self._conn()
        if len(messages) == 1:
            js = nc.jetstream()
            subject, body, headers = messages[0]

            async def one() -> None:
                try:
                    await js.publish(subject, body, timeout=self.timeout, headers=headers)
                except nats.js.errors.APIError as exc:
                    raise _PublishError(
                        exc.code or 0, exc.err_code or 0, exc.description or ""
                    ) from exc

            await self._retrying(f"publish to {subject}", one)
            return

        async def batch() -> None:
            batch_id = uuid.uuid4().hex
            n = len(messages)
            for i, (subject, body, headers) in enumerate(messages, 1):
                h = {**headers, "Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(i)}
                if i < n:
                    await nc.publish(subject, body, headers=h)
                    continue
                h["Nats-Batch-Commit"] = "1"
                reply = await nc.request(subject, body, timeout=self.timeout, headers=h)
                error = msgspec.json.decode(reply.data).get("error")
                if error:
                    raise _PublishError(
                        error.get("code", 0), error.get("err_code", 0), error.get("description", "")
                    )

        await self._retrying("atomic batch", batch)

    # -- running streamlog -----------------------------------------------------------

    async def _run(self, op: Op[T], *, everything: bool = False) -> tuple[T, set[str]]:
        """Run `op` on a fresh snapshot and commit what it wrote; again on a conflict
        (after a short random pause, so racing processes spread out), for up to
        `retry_for` seconds. Returns its result and the names it changed."""
        deadline = time.monotonic() + self.retry_for
        pause = 0.001
        while True:
            _raise_if_cancelling()
            snap = _Snapshot()
            if everything:
                await self._load_all(snap)
            while True:
                _raise_if_cancelling()
                tx = _SnapshotTx(snap)
                try:
                    result = op(tx)
                    break
                except _Need as need:
                    if need.name is not None:
                        await self._load_state(snap, need.name)
                    elif need.rows is not None:
                        await self._load_rows(snap, need.rows)
            if not tx.writes and not tx.new_rows:
                return result, set()
            try:
                await self._commit(snap, tx)
            except _Conflict:
                if time.monotonic() + pause > deadline:
                    raise StreamConflict(
                        f"gave up after {self.retry_for}s: other writers kept changing the "
                        "same streams; try again"
                    ) from None
                await asyncio.sleep(random.uniform(0, pause))
                pause = min(pause * 2, 0.05)
                continue
            for id in tx.removed:
                await self._purge(id)
            return result, set(tx.writes)

    async def _write(self, name: str, op: Op[T], size: int = 0) -> tuple[T, set[str]]:
        """`_run` for a write to `name`, with group commit: writes to one stream in this
        process queue, and whoever holds the stream's lock runs every queued write (up
        to `GROUP_MAX` of them, about `GROUP_BYTES` of bodies) on one snapshot and
        commits them as one atomic batch. Each write keeps its own outcome: one that the
        rules refuse (a `StreamError`) changes nothing and does not stop the others.
        Other processes are still fenced by the guards."""
        fut: asyncio.Future[tuple[Any, set[str]]] = asyncio.get_running_loop().create_future()
        writers = self._writers.get(name)
        if writers is None:
            writers = self._writers[name] = _Writers()
        writers.queue.append((op, size, fut))
        writers.users += 1
        try:
            async with writers.lock:
                while not fut.done():
                    await self._write_group(writers.take())
            result: tuple[T, set[str]] = fut.result()
            return result
        finally:
            writers.users -= 1
            if writers.users == 0:
                del self._writers[name]

    async def _write_group(self, group: list[_Queued]) -> None:
        def run_all(tx: _SnapshotTx) -> list[tuple[bool, Any]]:
            outcomes: list[tuple[bool, Any]] = []
            for op, _, _ in group:
                try:
                    outcomes.append((True, op(tx)))
                except StreamError as exc:  # refused before it changed anything
                    outcomes.append((False, exc))
            return outcomes

        try:
            outcomes, changed = await self._run(run_all)
        except BaseException as exc:
            for _, _, fut in group:
                if not fut.done():
                    if isinstance(exc, Exception):
                        fut.set_exception(exc)
                    else:
                        fut.set_exception(
                            WakefulError(
                                "the write was interrupted (the request that committed it "
                                "was cancelled); its outcome is unknown: read the stream"
                            )
                        )
            raise
        for (_, _, fut), (ok, value) in zip(group, outcomes, strict=True):
            if not fut.done():
                if ok:
                    fut.set_result((value, changed))
                else:
                    fut.set_exception(value)

    async def _commit(self, snap: _Snapshot, tx: _SnapshotTx) -> None:
        commit_id = uuid.uuid4().hex[:20]
        messages: list[tuple[str, bytes, dict[str, str]]] = []
        for name, state in tx.writes.items():
            seq = snap.states[name][0] if name in snap.states else 0
            headers = {
                "Nats-Expected-Last-Subject-Sequence": str(seq),
                "Nats-Rollup": "sub",
                "Ds-Commit": commit_id,
            }
            body = b"" if state is None else _encode(state)
            messages.append((self._meta_subject(name), body, headers))
        size = self._part_size()
        for id, row in tx.new_rows:
            # An append larger than the server's max_payload travels in parts (in the
            # same atomic batch), each its own message.
            pieces = [row.data[i : i + size] for i in range(0, len(row.data), size)] or [b""]
            headers = {"Ds-M": str(row.m), "Ds-Count": str(row.count)}
            if len(pieces) > 1:
                headers["Ds-Parts"] = str(len(pieces))
            for k, piece in enumerate(pieces):
                messages.append((self._row_subject(id, row.n, k), piece, headers if k == 0 else {}))
        try:
            await self._publish(messages)
        except _PublishError as exc:
            if exc.err_code not in CONFLICT_CODES:
                raise WakefulError(f"write refused by JetStream: {exc}") from exc
            # After a try whose answer was lost, the conflict may be our own write.
            first = messages[0][0]
            found = await self._direct({"last_by_subj": first})
            if found and (found[0].headers or {}).get("Ds-Commit") == commit_id:
                return
            raise _Conflict from exc

    def _part_size(self) -> int:
        """The bytes of an append that fit one message, leaving room for headers."""
        return max(1024, self._conn().max_payload - PAYLOAD_HEADROOM)

    async def _purge(self, id: int) -> None:
        """Drop the rows of a removed stream (garbage: nothing reads them any more)."""
        js = self._conn().jetstream()
        try:
            await js.purge_stream(self.stream, subject=self._rows_of(id))
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("could not purge the rows of removed stream %d: %r", id, exc)

    # -- TTL and the sweeper -----------------------------------------------------------

    def _last_touch(self, id: int) -> float:
        found = self._touched.get(id)
        return 0.0 if found is None else found[1]

    async def _flush_touched(self) -> None:
        touched, self._touched = self._touched, {}
        for id, (name, at) in touched.items():

            def renew(tx: _SnapshotTx, id: int = id, name: str = name, at: float = at) -> None:
                meta = tx.get(name)
                if meta is not None and meta.id == id and at > meta.accessed:
                    meta.accessed = at
                    tx.save(meta)

            await self._write(name, renew)

    async def _sweep_loop(self) -> None:
        swept = time.monotonic()
        while True:
            await asyncio.sleep(min(self.sweep_interval, TOUCH_INTERVAL))
            if self._touched:
                await self._flush_touched()
                _raise_if_cancelling()
            if time.monotonic() - swept >= self.sweep_interval:
                swept = time.monotonic()
                _, changed = await self._run(self._sweep_op, everything=True)
                _raise_if_cancelling()
                if changed:
                    self.watchers.notify(changed)

    def _sweep_op(self, tx: _SnapshotTx) -> set[str]:
        return streamlog.sweep(tx, time.time(), self._last_touch)

    # -- the port -------------------------------------------------------------------

    async def create(self, name: str, spec: CreateSpec) -> CreateResult:
        self._conn()
        touched = self._last_touch
        result, changed = await self._write(
            name, lambda tx: streamlog.create(tx, name, spec, time.time(), touched)
        )
        self.watchers.notify(changed)
        return result

    async def append(self, name: str, spec: AppendSpec) -> AppendOutcome:
        self._conn()
        touched = self._last_touch
        (outcome, _), changed = await self._write(
            name, lambda tx: streamlog.append(tx, name, spec, time.time(), touched), len(spec.body)
        )
        self.watchers.notify(changed)
        return outcome

    async def read(
        self, name: str, after: Offset | Literal["now"] | None, limit: int
    ) -> ReadResult:
        self._conn()
        now = time.time()
        touched = self._last_touch
        result, _ = await self._run(lambda tx: streamlog.read(tx, name, after, limit, now, touched))
        if result.info.ttl is not None:
            self._touched[result.info.id] = (name, now)
        return result

    async def info(self, name: str) -> StreamInfo:
        self._conn()
        now = time.time()
        touched = self._last_touch
        result, _ = await self._run(lambda tx: streamlog.info(tx, name, now, touched))
        return result

    async def delete(self, name: str) -> None:
        self._conn()
        touched = self._last_touch
        _, changed = await self._write(
            name, lambda tx: streamlog.delete(tx, name, time.time(), touched)
        )
        self.watchers.notify(changed)


async def _connection_error(exc: Exception) -> None:
    log.warning("NATS connection: %r", exc)
