"""`JetStreamStore`: the event store on a NATS JetStream stream.

Layout and design: docs/jetstream-facts.md. A commit is one guarded publish on
the entity's `.ev` subject (all its events in one message), or one atomic batch
when it also delivers messages or arms and cancels timers. Offsets of events are
`<stream seq>.<index in its message>`; inbox offsets are stream sequences. The
consumed-inbox cursor travels in the `Wk-Consumed` header of every `.ev` message.

Several worker processes share one stream: each serves the partitions it
holds a lease on (`ownership.Leases`), with one durable pull consumer per
partition on its `.in` and `.wake` subjects. A consumer's message is a wake
hint; it is acked once the entity's log records it consumed (the commit that
accepts it), so a worker that dies leaves its unaccepted messages unacked and
the next holder finds them. With `ownership="all"` one process serves every
partition without leases (a single worker; safe but wasteful with more).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Coroutine
from typing import Any, TypeVar

import msgspec
import nats
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api

from wakeful.runtime.address import parse_address
from wakeful.runtime.errors import ConcurrencyError, InvalidPayload, StoreClosed, WakefulError
from wakeful.runtime.events import Event, decode_data, encode_data
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

from .._local import Background, Signals, run_timers, tail_events
from .ownership import Leases
from .stream import direct_get, ensure_stream, parse_stamp
from .subjects import PREFIX, Layout

__all__ = ["JetStreamStore"]

CONFLICT_CODES = (10071, 10164)
SEQ_WIDTH = 20
INDEX_WIDTH = 4
DIRECT_BATCH = 256
PULL_BATCH = 512
PULL_EXPIRES = 2.0
ACK_WAIT = 30.0
SCAN_CONCURRENCY = 32

log = logging.getLogger("wakeful.jetstream")
T = TypeVar("T")
TRANSIENT = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)
"""Errors after which a request may succeed if sent again (the server is electing a
leader, or the client is reconnecting)."""

_json = msgspec.json.Encoder()
_env_decoder = msgspec.json.Decoder(Envelope)
_run_decoder = msgspec.json.Decoder(RunRecord)
_runs_decoder = msgspec.json.Decoder(list[RunRecord])
_raw_events = msgspec.json.Decoder(list[tuple[str, float, str | None, msgspec.Raw]])


class _Head(msgspec.Struct):
    stream_seq: int  # of the entity's last .ev message (0: none)
    seq: int  # entity seq after it
    cursor: int  # highest consumed inbox stream seq
    open: dict[str, tuple[str, str]] = {}  # unfinished runs: run -> (status, mode)


_open_decoder = msgspec.json.Decoder(dict[str, tuple[str, str]])


def _head_of(msg: Msg) -> _Head:
    h = msg.headers or {}
    return _head_from(h, int(h["Nats-Sequence"]))


def _head_from(h: dict[str, str], stream_seq: int) -> _Head:
    raw = h.get("Wk-Open")
    return _Head(
        stream_seq,
        int(h["Wk-Seq"]),
        int(h.get("Wk-Consumed", 0)),
        _open_decoder.decode(raw) if raw else {},
    )


def _needs_process(status: str, mode: str) -> bool:
    """Whether a run in this state lives in a process (so a new holder must recover it):
    a classic run until it ends, a durable one while it runs (not while suspended)."""
    return mode == "classic" or status == "running"


def _event_offset(stream_seq: int, index: int) -> str:
    return f"{stream_seq:0{SEQ_WIDTH}d}.{index:0{INDEX_WIDTH}d}"


def _parse_event_offset(offset: str | None) -> tuple[int, int]:
    if offset is None:
        return 0, -1
    head, _, tail = offset.partition(".") if isinstance(offset, str) else ("", "", "")
    if head.isdigit() and tail.isdigit() and len(head) == SEQ_WIDTH:
        return int(head), int(tail)
    raise ValueError(
        f"after {offset!r} is not an offset of this store; use an Event.offset value or None "
        "to start at the beginning"
    )


def _parse_inbox_offset(offset: str | None, what: str = "after") -> int:
    if offset is None:
        return 0
    if isinstance(offset, str) and offset.isdigit():
        return int(offset)
    raise ValueError(f"{what} {offset!r} is not an inbox offset of this store")


async def _connection_error(exc: Exception) -> None:
    log.warning("NATS connection: %r", exc)


async def _reconnected() -> None:
    log.warning("NATS connection back")


class _BatchError(WakefulError):
    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (err_code {err_code})")
        self.code = code
        self.err_code = err_code


class JetStreamStore(AsyncResource):
    """An `EventStore` on one JetStream stream, shared by any number of worker processes.

    `ownership="leases"` (default): the workers share the partitions evenly
    through leases with a `lease_ttl` (a dead worker's partitions are taken over
    within about `lease_ttl` + `lease_ttl`/3); `ownership="all"`: this process
    serves every partition, without leases; `ownership="none"`: it serves none
    (a process that only sends and reads, such as an API front end).
    """

    recovers_runs = True

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        stream: str = "WAKEFUL",
        partitions: int = 16,
        replicas: int = 1,
        storage: str = "file",
        poll: float = 1.0,
        request_timeout: float = 5.0,
        retry_for: float = 30.0,
        ownership: str = "leases",
        lease_ttl: float = 5.0,
        drain_timeout: float = 30.0,
        worker: str | None = None,
    ) -> None:
        if ownership not in ("leases", "all", "none"):
            raise ValueError(f"ownership={ownership!r}; use 'leases', 'all' or 'none'")
        self.servers = servers
        self.stream = stream
        self.layout = Layout(partitions)
        self.replicas = replicas
        self.storage = storage
        self.poll = poll
        self.timeout = request_timeout
        self.retry_for = retry_for
        self.ownership = ownership
        self.lease_ttl = lease_ttl
        self.drain_timeout = drain_timeout
        self.worker = worker or uuid.uuid4().hex[:12]
        self._nc: Client | None = None
        self._signals: Signals | None = None
        self._leases: Leases | None = None
        self._all: set[int] = set()
        """Partitions served under ownership="all"."""
        self._heads: dict[str, _Head] = {}
        self._inbox_last: dict[str, int] = {}
        self._timers: dict[tuple[str, str], TimerArm] = {}
        """Armed timers of the partitions we hold, fired from here when due (the
        schedules are the durable fallback: the server fires them too, and the
        runtime drops the duplicate)."""
        self._acks: dict[str, list[tuple[int, str]]] = {}
        """Per address: consumer messages (stream seq, ack subject) not acked yet."""
        self._live: dict[str, set[str]] = {}
        """Per address: runs of this process that need it (see `_needs_process`)."""
        self._consumers: dict[int, asyncio.Task[None]] = {}
        self._copies: dict[str, dict[int, InboxItem]] = {}
        """Per address: inbox messages our consumers delivered, not consumed yet."""
        self._cache_from: dict[int, int] = {}
        """Per served partition: the stream seq from which `_copies` holds every
        inbox message (so `inbox` needs no read)."""
        self._delivery_seq: dict[int, int] = {}
        """Per served partition: the consumer seq of the last delivery."""
        self._chores: set[asyncio.Task[None]] = set()
        self._indexing: dict[str, asyncio.Task[None]] = {}
        """Per address: the latest background write of run index records."""
        self._watches: dict[str, tuple[int, Any]] = {}
        """Per address tailed here: (tails, core subscription to its `.ev` subject)."""
        self._background = Background("wakeful-jetstream-store")

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        if self._nc is not None:
            return
        nc = await nats.connect(
            self.servers,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.25,
            error_cb=_connection_error,
            disconnected_cb=self._disconnected,
            reconnected_cb=_reconnected,
        )
        try:
            await ensure_stream(nc, self.stream, self.replicas, self.storage)
        except BaseException:
            await nc.close()
            raise
        self._nc = nc
        self._signals = Signals()
        if self.ownership == "leases":
            self._leases = Leases(
                nc,
                self.stream,
                self.layout.partitions,
                self.worker,
                ttl=self.lease_ttl,
                drain_timeout=self.drain_timeout,
                acquired=self._acquire,
                released=self._release,
                busy=self._busy,
                timeout=self.timeout,
            )
            leases = self._leases
            await self._retrying("taking partitions", leases.tick)  # before the runtime starts
            await self._background.start(self._timer_loop, self._leases.run)
        else:
            if self.ownership == "all":
                for p in range(self.layout.partitions):
                    self._all.add(p)
                    await self._acquire(p)
            await self._background.start(self._timer_loop)

    async def close(self) -> None:
        nc = self._nc
        if nc is None:
            return
        if self._signals is not None:
            self._signals.close()
        await self._background.stop()
        try:
            async with asyncio.timeout(self.timeout):
                await self._indexed()
        except TimeoutError:
            log.warning("run index writes still pending at close; the next holder repairs them")
        for chore in list(self._chores):
            chore.cancel()
        for task in self._consumers.values():
            task.cancel()
        await asyncio.gather(*self._consumers.values(), return_exceptions=True)
        self._consumers.clear()
        if self._leases is not None and nc.is_connected:
            try:  # hand our partitions back now rather than after their TTL
                async with asyncio.timeout(self.timeout):
                    await self._leases.release_all()
            except (TimeoutError, nats.errors.Error, nats.js.errors.Error) as exc:
                log.warning("could not release leases at close: %r", exc)
        self._nc = None
        self._signals = None
        self._leases = None
        self._all.clear()
        await nc.close()

    # -- partitions ----------------------------------------------------------------

    def held_partitions(self) -> list[int]:
        """The partitions this process holds now (serving or handing back)."""
        held = self._leases.held if self._leases is not None else self._all
        return sorted(held)

    def _serving(self) -> set[int]:
        return self._leases.serving if self._leases is not None else self._all

    def _held(self, p: int) -> bool:
        return p in self._leases.held if self._leases is not None else p in self._all

    def owns(self, address: str) -> bool:
        """Whether this process serves `address` now (holds its partition)."""
        return self._held(self.layout.partition_of(address))

    def _busy(self, p: int) -> bool:
        layout = self.layout
        return any(runs and layout.partition_of(a) == p for a, runs in self._live.items())

    def _consumer(self, p: int) -> str:
        return f"wk_p{p}"

    async def _acquire(self, p: int) -> None:
        """Start serving partition `p`: its wake consumer, its timers, the runs its last
        holder left unfinished, and the messages that holder had but never accepted."""
        js = self._conn().jetstream()
        name = self._consumer(p)
        try:
            info = await js.consumer_info(self.stream, name)
        except nats.js.errors.NotFoundError:
            info = await js.add_consumer(
                self.stream,
                durable_name=name,
                filter_subjects=self.layout.partition_inboxes(p),
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=ACK_WAIT,
                max_deliver=-1,
                max_ack_pending=-1,
                deliver_policy=api.DeliverPolicy.ALL,
            )
        floor = info.ack_floor.stream_seq if info.ack_floor else 0
        delivered = info.delivered.stream_seq if info.delivered else 0
        # From here on the consumer hands us every message of the partition in stream
        # order (first deliveries), so from `delivered + 1` our copy of what it delivered
        # is the whole inbox, as long as no delivery goes missing (see _delivered_hint).
        self._cache_from[p] = delivered + 1
        self._delivery_seq[p] = info.delivered.consumer_seq if info.delivered else 0
        self._consumers[p] = asyncio.create_task(self._consume(p), name=f"wakeful-{name}")
        await self._load_timers(p)
        await self._scan_partition(p)
        await self._hint_unacked(p, delivered, floor, copy=True)
        if self._cache_from.get(p) == delivered + 1:  # no delivery went missing meanwhile
            # With the messages between the ack floor and `delivered` copied too, the
            # copy is whole from the floor on (below it everything was consumed).
            self._cache_from[p] = floor + 1

    async def _hint_unacked(
        self, p: int, upto: int, floor: int | None = None, copy: bool = False
    ) -> None:
        """A wake for each entity with a message the consumer delivered (to an earlier
        holder, or to a request of ours that was lost) and nobody acked, up to `upto`;
        with `copy`, keep the messages as `_copies` too."""
        if floor is None:
            info = await self._conn().jetstream().consumer_info(self.stream, self._consumer(p))
            floor = info.ack_floor.stream_seq if info.ack_floor else 0
        if upto <= floor:
            return
        for subject in self.layout.partition_inboxes(p):
            for msg in await self._scan(subject, floor + 1, None, upto=upto):
                h = msg.headers or {}
                if not self._held(p):
                    return
                address = Layout.address_of(h["Nats-Subject"])
                seq = int(h["Nats-Sequence"])
                stamp = h.get("Nats-Time-Stamp")
                if copy and not self._copy(
                    address, seq, parse_stamp(stamp) if stamp else time.time(), msg.data
                ):
                    continue
                self._hint(address, seq)

    def _copy(self, address: str, seq: int, at: float, data: bytes) -> bool:
        """Keep an inbox message delivered to us; False if it is not an envelope."""
        try:
            envelope = _env_decoder.decode(data)
        except msgspec.DecodeError:
            log.warning("%s: inbox message %d is not an envelope; skipped", address, seq)
            return False
        self._copies.setdefault(address, {})[seq] = InboxItem(f"{seq:0{SEQ_WIDTH}d}", at, envelope)
        return True

    def _chore(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        """Run `coro` in the background; errors are logged; close cancels it."""
        task = asyncio.create_task(coro, name=name)
        self._chores.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._chores.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("%s failed: %r", name, t.exception())

        task.add_done_callback(done)
        return task

    async def _release(self, p: int) -> None:
        """Stop serving partition `p` (handed back or lost): forget its wakes, timers and
        cached heads (another worker may write there now); its unacked consumer
        messages go to the next holder."""
        task = self._consumers.pop(p, None)
        if task is not None:
            task.cancel()
        self._cache_from.pop(p, None)
        self._delivery_seq.pop(p, None)
        layout = self.layout
        for table in (self._acks, self._inbox_last, self._live, self._copies, self._heads):
            for address in [a for a in table if layout.partition_of(a) == p]:
                del table[address]
        for key in [k for k in self._timers if layout.partition_of(k[0]) == p]:
            del self._timers[key]

    async def _consume(self, p: int) -> None:
        """Pull the partition's wake consumer: each message is a hint for its entity."""
        nc = self._conn()
        inbox = nc.new_inbox()
        refill = asyncio.Event()
        received = 0

        async def on_msg(msg: Msg) -> None:
            nonlocal received
            if (msg.headers or {}).get("Status"):
                return  # 404/408 no messages or request expired, 409 leader change...
            received += 1
            if received >= PULL_BATCH // 2:
                received = 0
                refill.set()
            await self._delivered_hint(p, msg)

        sub = await nc.subscribe(inbox, cb=on_msg)
        request = _json.encode({"batch": PULL_BATCH, "expires": int(PULL_EXPIRES * 1e9)})
        subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.stream}.{self._consumer(p)}"
        try:
            while True:
                refill.clear()
                try:
                    await nc.publish(subject, request, reply=inbox)
                except nats.errors.Error as exc:
                    log.debug("pull request for partition %d failed: %r", p, exc)
                try:
                    async with asyncio.timeout(PULL_EXPIRES * 0.9):
                        await refill.wait()
                except TimeoutError:
                    pass
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _delivered_hint(self, p: int, msg: Msg) -> None:
        try:
            meta = msg.metadata
            seq = meta.sequence.stream
            address = Layout.address_of(msg.subject)
        except (ValueError, AttributeError):
            return
        expected = self._delivery_seq.get(p, 0) + 1
        self._delivery_seq[p] = meta.sequence.consumer
        if meta.sequence.consumer != expected:
            # A delivery went missing (a reconnect, a pull request of ours that outlived
            # its subscription): its message comes again only after ack_wait, so the
            # copy is whole from here on only, and what is unacked below gets a hint now.
            self._cache_from[p] = max(self._cache_from.get(p, 0), seq)
            self._chore(self._hint_unacked(p, seq - 1), f"wakeful-rescan-{p}")
        head = self._heads.get(address)
        if head is not None and seq <= head.cursor:
            await self._ack(msg.reply)  # accepted already (a redelivery)
            return
        if p not in self._serving() and not self._live.get(address):
            return  # handing back: left unacked for the next holder
        if not self._copy(address, seq, meta.timestamp.timestamp(), msg.data):
            await self._ack(msg.reply)
            return
        self._acks.setdefault(address, []).append((seq, msg.reply))
        self._hint(address, seq)

    def _hint(self, address: str, seq: int) -> None:
        self._inbox_last[address] = max(self._inbox_last.get(address, 0), seq)
        self._sig().wake(address)

    async def _ack(self, reply: str) -> None:
        """Ack a consumer message (a plain publish; one lost is redelivered: a spare wake)."""
        nc = self._nc
        if nc is not None and reply:
            try:
                await nc.publish(reply, b"+ACK")
            except nats.errors.Error as exc:
                log.debug("ack to %s failed: %r", reply, exc)

    async def _ack_through(self, address: str, cursor: int) -> None:
        copies = self._copies.get(address)
        if copies:
            for seq in [s for s in copies if s <= cursor]:
                del copies[seq]
            if not copies:
                del self._copies[address]
        pending = self._acks.get(address)
        if not pending:
            return
        keep = []
        for seq, reply in pending:
            if seq <= cursor:
                await self._ack(reply)
            else:
                keep.append((seq, reply))
        if keep:
            self._acks[address] = keep
        else:
            del self._acks[address]

    async def _scan_partition(self, p: int) -> None:
        """The last commit of each entity of partition `p`: cache its head, repair the run
        index update a crash can have lost after it, and wake entities whose unfinished
        runs lived in the last holder's process. One request per entity: O(entities
        of the partition) at each takeover."""
        js = self._conn().jetstream()
        info = await js.stream_info(self.stream, subjects_filter=f"{PREFIX}.{p}.*.*.ev")
        limit = asyncio.Semaphore(SCAN_CONCURRENCY)

        async def one(subject: str) -> None:
            async with limit:
                msg = await self._last(subject)
                if msg is None:
                    return
                address = Layout.address_of(subject)
                head = _head_of(msg)  # not cached: a direct get may come from a follower
                raw = (msg.headers or {}).get("Wk-Runs")
                if raw:
                    await self._repair_index(_runs_decoder.decode(raw), head.stream_seq)
                if any(_needs_process(s, m) for s, m in head.open.values()):
                    self._sig().wake(address)

        await asyncio.gather(*(one(s) for s in info.state.subjects or {}))

    async def _disconnected(self) -> None:
        if self._nc is not None:  # not our own close
            log.warning("NATS connection lost; reconnecting (writes wait and retry)")

    def _conn(self) -> Client:
        if self._nc is None:
            raise StoreClosed(
                "JetStreamStore is not open; use it as `async with JetStreamStore(...)`"
            )
        return self._nc

    def _sig(self) -> Signals:
        if self._signals is None:
            raise StoreClosed("JetStreamStore is not open")
        return self._signals

    # -- raw API ------------------------------------------------------------------

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]]) -> T:
        """`op`, tried again while the server does not answer (a leader election, a
        reconnect) for up to `retry_for` seconds. Only for operations that are safe to
        repeat: reads, and writes whose guard or msg id makes a second landing
        impossible."""
        deadline = time.monotonic() + self.retry_for
        delay = 0.05
        while True:
            try:
                return await op()
            except _BatchError as exc:
                if exc.code != 503:  # 503: JetStream has no leader for the stream yet
                    raise
                failure: Exception = exc
            except TRANSIENT as exc:
                failure = exc
            if time.monotonic() + delay > deadline:
                raise WakefulError(
                    f"{what}: no answer from JetStream within {self.retry_for}s: {failure!r}"
                ) from failure
            log.info("%s: %r; trying again in %.2fs", what, failure, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def _direct(self, request: dict[str, Any]) -> list[Msg]:
        nc = self._conn()
        return await self._retrying(
            "read", lambda: direct_get(nc, self.stream, request, self.timeout)
        )

    async def _scan(
        self, subject: str, start: int, limit: int | None, upto: int | None = None
    ) -> list[Msg]:
        """Messages on `subject` (wildcards allowed) with start <= stream seq (<= upto)."""
        out: list[Msg] = []
        seq = max(1, start)
        while limit is None or len(out) < limit:
            request: dict[str, Any] = {"seq": seq, "next_by_subj": subject, "batch": DIRECT_BATCH}
            if upto is not None:
                request["up_to_seq"] = upto
            batch = await self._direct(request)
            out.extend(batch)
            if len(batch) < DIRECT_BATCH:
                break
            seq = int(batch[-1].headers["Nats-Sequence"]) + 1  # type: ignore[index]
        return out if limit is None else out[:limit]

    async def _last(self, subject: str) -> Msg | None:
        found = await self._direct({"last_by_subj": subject})
        return found[0] if found else None

    async def _head(self, address: str, fresh: bool = False) -> _Head:
        """The entity's head: cached, or read from the stream leader (a direct get may
        be answered by a follower that is behind, and a head older than the events a
        caller folded would hand it inbox messages those events already consumed).

        The cache only moves forward: our commits, `read` (`_saw`) and leader reads
        set it; anything that may have moved it without us (a commit whose answer was
        lost, a newer snapshot) drops it."""
        head = None if fresh else self._heads.get(address)
        if head is None:
            found = await self._leader_last(self.layout.events(address))
            head = _Head(0, 0, 0) if found is None else _head_from(found[1], found[0])
            cached = self._heads.get(address)
            if cached is None or cached.stream_seq <= head.stream_seq:
                self._heads[address] = head
        return head

    async def _leader_last(self, subject: str) -> tuple[int, dict[str, str]] | None:
        """The last message on `subject` read through the stream leader: (seq, headers)."""
        if self.replicas == 1:  # the only replica is the leader: a direct get will do
            msg = await self._last(subject)
            if msg is None:
                return None
            headers = dict(msg.headers or {})
            return int(headers["Nats-Sequence"]), headers
        js = self._conn().jetstream()

        async def once() -> tuple[int, dict[str, str]] | None:
            try:
                msg = await js.get_last_msg(self.stream, subject)
            except nats.js.errors.NotFoundError:
                return None
            return int(msg.seq or 0), dict(msg.headers or {})

        return await self._retrying(f"read of {subject}", once)

    async def _publish_batch(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> int:
        """One atomic batch; returns the stream seq of its first message. Sent again
        when unanswered: only for batches whose first message is guarded."""
        return await self._retrying("atomic batch", lambda: self._batch_once(messages))

    async def _batch_once(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> int:
        nc = self._conn()
        batch = uuid.uuid4().hex
        n = len(messages)
        for i, (subject, body, headers) in enumerate(messages, 1):
            h = {**headers, "Nats-Batch-Id": batch, "Nats-Batch-Sequence": str(i)}
            if i < n:
                await nc.publish(subject, body, headers=h)
                continue
            h["Nats-Batch-Commit"] = "1"
            reply = await nc.request(subject, body, timeout=self.timeout, headers=h)
            ack = msgspec.json.decode(reply.data)
            error = ack.get("error")
            if error:
                raise _BatchError(
                    error.get("code", 0), error.get("err_code", 0), error.get("description", "")
                )
            return int(ack["seq"]) - int(ack.get("count", n)) + 1
        raise AssertionError("empty batch")

    async def _publish_one(self, subject: str, body: bytes, headers: dict[str, str]) -> int:
        """One acked publish, sent again when unanswered: only for messages that are
        guarded, carry a msg id, or replace themselves (rollups)."""
        js = self._conn().jetstream()

        async def once() -> int:
            try:
                ack = await js.publish(subject, body, timeout=self.timeout, headers=headers)
            except nats.js.errors.APIError as exc:
                raise _BatchError(exc.code or 0, exc.err_code or 0, exc.description or "") from exc
            return int(ack.seq)

        return await self._retrying(f"publish to {subject}", once)

    # -- commit -----------------------------------------------------------------------

    async def commit(self, commit: Commit) -> list[Event]:
        self._conn()
        address = commit.address
        parse_address(address)
        for env in commit.outbox:
            parse_address(env.address)
        rows = []
        for e in commit.events:
            try:
                rows.append((e.kind, e.at, e.run, msgspec.Raw(encode_data(e.data))))
            except (TypeError, ValueError) as exc:
                raise InvalidPayload("event data", str(exc)) from None
        consumed = [_parse_inbox_offset(o, "consumed offset") for o in commit.consumed]
        for attempt in range(3):
            head = await self._head(address, fresh=attempt > 0)
            if head.seq != commit.expected:
                if attempt == 0:
                    continue  # the cached head may be stale: look again
                raise ConcurrencyError(address, commit.expected, head.seq)
            try:
                return await self._commit_once(commit, head, rows, consumed)
            except _BatchError as exc:
                self._heads.pop(address, None)
                if exc.err_code not in CONFLICT_CODES:
                    raise WakefulError(f"{address}: commit refused by JetStream: {exc}") from exc
            except BaseException:
                # Unknown outcome (no answer in time): forget the head, so that nothing
                # (an inbox read, `pending`) trusts a cursor the commit may have moved.
                self._heads.pop(address, None)
                raise
        head = await self._head(address, fresh=True)
        raise ConcurrencyError(address, commit.expected, head.seq)

    async def _commit_once(
        self, commit: Commit, head: _Head, rows: list[Any], consumed: list[int]
    ) -> list[Event]:
        address = commit.address
        layout = self.layout
        seq = commit.expected + len(rows)
        cursor = max([head.cursor, *consumed])
        commit_id = uuid.uuid4().hex[:20]
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(head.stream_seq),
            "Wk-Seq": str(seq),
            "Wk-Consumed": str(cursor),
            "Wk-Commit": commit_id,
        }
        opened = dict(head.open)
        if commit.runs:
            # The run index is written after the commit (one publish per record, not
            # an atomic batch); the records ride in the log too, so the next holder of
            # the partition can repair an index update lost to a crash between the two.
            headers["Wk-Runs"] = _json.encode(commit.runs).decode()
            for record in commit.runs:
                if record.status in ACTIVE:
                    opened[record.run] = (record.status, record.mode)
                else:
                    opened.pop(record.run, None)
        if opened:
            headers["Wk-Open"] = _json.encode(opened).decode()
        messages = [(layout.events(address), _json.encode(rows), headers)]
        keyed: list[tuple[str, str]] = []
        for env in commit.outbox:
            messages.extend(await self._delivery(env, keyed))
        for name in commit.cancel_timers:
            messages.append((layout.timer(address, name), b"", {"Nats-Rollup": "sub"}))
        for arm in commit.timers:
            due = dt.datetime.fromtimestamp(arm.due, dt.UTC).isoformat().replace("+00:00", "Z")
            env = Envelope(
                address=address,
                kind="timer",
                payload=arm.payload,
                name=arm.name,
                generation=arm.generation,
            )
            messages.append(
                (
                    layout.timer(address, arm.name),
                    _json.encode(env),
                    {"Nats-Schedule": f"@at {due}", "Nats-Schedule-Target": layout.wake(address)},
                )
            )
        try:
            if len(messages) == 1:
                first = await self._publish_one(*messages[0])
            else:
                first = await self._publish_batch(messages)
        except _BatchError as exc:
            # A conflict right after a try whose answer was lost may be our own commit:
            # it landed the first time, and its guard refused the second.
            if exc.err_code not in CONFLICT_CODES:
                raise
            landed = await self._landed(address, commit_id)
            if landed is None:
                raise
            first = landed
        self._heads[address] = _Head(first, seq, cursor, opened)
        await self._ack_through(address, cursor)
        signals = self._sig()
        if rows:
            signals.committed(address)
        for offset, env_address in self._delivered(messages, first):
            if self.owns(env_address):
                self._hint(env_address, offset)
        for name in commit.cancel_timers:
            self._timers.pop((address, name), None)
        if self.owns(address):
            for arm in commit.timers:
                self._timers[(address, arm.name)] = arm
        if commit.timers or commit.cancel_timers:
            signals.timers_changed()
        if commit.runs:
            live = {r for r, (st, mode) in opened.items() if _needs_process(st, mode)}
            if live:
                self._live[address] = live
            else:
                self._live.pop(address, None)
            self._index_later(address, commit.runs, first)
        return [
            Event(
                _event_offset(first, i),
                commit.expected + i + 1,
                kind,
                at,
                run,
                decode_data(kind, data),
            )
            for i, (kind, at, run, data) in enumerate(rows)
        ]

    async def _landed(self, address: str, commit_id: str) -> int | None:
        """The stream seq of the commit `commit_id` if it is the entity's last one."""
        found = await self._leader_last(self.layout.events(address))
        return found[0] if found is not None and found[1].get("Wk-Commit") == commit_id else None

    def _delivered(
        self, messages: list[tuple[str, bytes, dict[str, str]]], first: int
    ) -> list[tuple[int, str]]:
        return [
            (first + i, Layout.address_of(subject))
            for i, (subject, _, _) in enumerate(messages)
            if subject.endswith(".in")
        ]

    async def _delivery(
        self, env: Envelope, keyed: list[tuple[str, str]]
    ) -> list[tuple[str, bytes, dict[str, str]]]:
        """The messages that deliver `env`: the inbox message, and a key record if keyed
        (nothing if that key was used already)."""
        no_headers: dict[str, str] = {}
        inbox = (self.layout.inbox(env.address), _json.encode(env), no_headers)
        if env.key is None:
            return [inbox]
        key_subject = self._key_subject(env.address, env.key)
        if (env.address, env.key) in keyed or await self._last(key_subject) is not None:
            return []
        keyed.append((env.address, env.key))
        return [inbox, (key_subject, b"", {"Nats-Expected-Last-Subject-Sequence": "0"})]

    def _key_subject(self, address: str, key: str) -> str:
        return f"{self.layout.base(address)}.key.{hashlib.sha256(key.encode()).hexdigest()[:32]}"

    # -- send ---------------------------------------------------------------------------

    async def send(self, envelope: Envelope) -> str:
        self._conn()
        address = envelope.address
        parse_address(address)
        if envelope.key is None:
            seq = await self._publish_one(
                self.layout.inbox(address),
                _json.encode(envelope),
                {"Nats-Msg-Id": uuid.uuid4().hex},  # a retry after a lost answer is dropped
            )
        else:
            key_subject = self._key_subject(address, envelope.key)
            existing = await self._last(key_subject)
            if existing is not None:
                return f"{int(existing.headers['Nats-Sequence']) - 1:0{SEQ_WIDTH}d}"  # type: ignore[index]
            try:
                seq = await self._publish_batch(
                    [
                        (self.layout.inbox(address), _json.encode(envelope), {}),
                        (key_subject, b"", {"Nats-Expected-Last-Subject-Sequence": "0"}),
                    ]
                )
            except _BatchError as exc:
                if exc.err_code not in CONFLICT_CODES:
                    raise
                existing = await self._last(key_subject)  # a concurrent send won
                assert existing is not None
                return f"{int(existing.headers['Nats-Sequence']) - 1:0{SEQ_WIDTH}d}"  # type: ignore[index]
        if self.owns(address):
            self._hint(address, seq)
        return f"{seq:0{SEQ_WIDTH}d}"

    async def save_snapshot(self, address: str, snapshot: Snapshot) -> None:
        self._conn()
        subject = self.layout.base(address) + ".snap"
        current = await self._last(subject)
        if current is not None and int((current.headers or {}).get("Wk-Seq", 0)) >= snapshot.seq:
            return
        await self._publish_one(
            subject,
            snapshot.data,
            {"Nats-Rollup": "sub", "Wk-Seq": str(snapshot.seq), "Wk-Offset": snapshot.offset},
        )

    async def load_snapshot(self, address: str) -> Snapshot | None:
        self._conn()
        msg = await self._last(self.layout.base(address) + ".snap")
        if msg is None:
            return None
        h = msg.headers or {}
        snapshot = Snapshot(int(h["Wk-Seq"]), bytes(msg.data), h.get("Wk-Offset", ""))
        cached = self._heads.get(address)
        if cached is not None and cached.seq < snapshot.seq:
            del self._heads[address]  # written by another worker after our last look
        return snapshot

    # -- reads ------------------------------------------------------------------------------

    async def read(
        self, address: str, after: str | None = None, limit: int | None = None
    ) -> list[Event]:
        self._conn()
        start, index = _parse_event_offset(after)
        out: list[Event] = []
        subject = self.layout.events(address)
        seq = start if index >= 0 else 1  # the message at `after` may hold later events
        while True:
            messages = await self._direct(
                {"seq": max(1, seq), "next_by_subj": subject, "batch": DIRECT_BATCH}
            )
            for msg in messages:
                h = msg.headers or {}
                stream_seq = int(h["Nats-Sequence"])
                self._saw(address, msg)
                rows = _raw_events.decode(msg.data)
                first = int(h["Wk-Seq"]) - len(rows) + 1
                for i, (kind, at, run, data) in enumerate(rows):
                    if stream_seq == start and i <= index:
                        continue
                    out.append(
                        Event(
                            _event_offset(stream_seq, i),
                            first + i,
                            kind,
                            at,
                            run,
                            decode_data(kind, data),
                        )
                    )
                    if limit is not None and len(out) >= limit:
                        return out
            if len(messages) < DIRECT_BATCH:
                return out
            seq = int(messages[-1].headers["Nats-Sequence"]) + 1  # type: ignore[index]
        return out

    def _saw(self, address: str, msg: Msg) -> None:
        """Keep the cached head at least as new as any commit a caller has read: whoever
        folds the events read here and then reads the inbox must get a cursor that
        covers what those events consumed."""
        cached = self._heads.get(address)
        if cached is None or int(msg.headers["Nats-Sequence"]) > cached.stream_seq:  # type: ignore[index]
            self._heads[address] = _head_of(msg)

    def tail(self, address: str, after: str | None = None) -> AsyncIterator[Event]:
        _parse_event_offset(after)
        self.layout.events(address)  # InvalidAddress now, not at the first step
        return self._tail(address, after)

    async def _tail(self, address: str, after: str | None) -> AsyncIterator[Event]:
        """`tail_events`, woken by our own commits and, through a core subscription to
        the entity's `.ev` subject held while someone tails it, by other processes'."""
        await self._watch(address)
        try:
            async for event in tail_events(self.read, self._sig(), address, after, self.poll):
                yield event
        finally:
            await self._unwatch(address)

    async def _watch(self, address: str) -> None:
        count, sub = self._watches.get(address, (0, None))
        if sub is None:
            signals = self._sig()

            async def on_commit(msg: Msg) -> None:
                signals.committed(address)

            sub = await self._conn().subscribe(self.layout.events(address), cb=on_commit)
        self._watches[address] = (count + 1, sub)

    async def _unwatch(self, address: str) -> None:
        count, sub = self._watches.pop(address, (0, None))
        if count > 1:
            self._watches[address] = (count - 1, sub)
        elif sub is not None and self._nc is not None:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def inbox(
        self, address: str, after: str | None = None, limit: int | None = None
    ) -> list[InboxItem]:
        self._conn()
        head = await self._head(address)
        start = max(head.cursor, _parse_inbox_offset(after)) + 1
        whole_from = self._cache_from.get(self.layout.partition_of(address))
        if whole_from is not None and start >= whole_from:
            # Everything from `start` on was (or will be, in order) delivered to us: the
            # messages delivered so far are the inbox's first ones. No read.
            copies = self._copies.get(address, {})
            items = [copies[s] for s in sorted(copies) if s >= start]
            await self._ack_through(address, head.cursor)
            return items if limit is None else items[:limit]
        known = self._inbox_last.get(address, 0)
        for _ in range(50):
            items = await self._inbox_from(address, start, limit)
            last = int(items[-1].offset) if items else 0
            full = limit is not None and len(items) >= limit
            if full or known < start or last >= known:
                break
            # We know of a message this read did not see: a direct get answered by a
            # replica that is behind the leader (R3). Ask again in a moment.
            await asyncio.sleep(0.02)
        await self._ack_through(address, head.cursor)
        return items

    async def _inbox_from(self, address: str, start: int, limit: int | None) -> list[InboxItem]:
        """The entity's `.in` and `.wake` messages from `start`, merged in stream order.
        Two reads on literal subjects: the server finds those through its subject
        index, where a wildcard (`<entity>.*`) would walk the stream from `start`."""
        layout = self.layout
        found = await asyncio.gather(
            self._scan(layout.inbox(address), start, limit),
            self._scan(layout.wake(address), start, limit),
        )
        messages = sorted(
            (m for batch in found for m in batch),
            key=lambda m: int(m.headers["Nats-Sequence"]),  # type: ignore[index]
        )
        items: list[InboxItem] = []
        for msg in messages[:limit]:
            h = msg.headers or {}
            stamp = h.get("Nats-Time-Stamp")
            at = parse_stamp(stamp) if stamp else time.time()
            items.append(
                InboxItem(
                    f"{int(h['Nats-Sequence']):0{SEQ_WIDTH}d}", at, _env_decoder.decode(msg.data)
                )
            )
        return items

    async def entities(self, type: str, after: str | None = None, limit: int = 100) -> list[str]:
        js = self._conn().jetstream()
        info = await js.stream_info(self.stream, subjects_filter=f"wk.*.{type}.*.ev")
        subjects = info.state.subjects or {}
        ids = sorted(Layout.address_of(s).split("/", 2)[2] for s in subjects)
        if after is not None:
            ids = [i for i in ids if i > after]
        return ids[:limit]

    async def pending(self, types: Collection[str]) -> bool:
        self._conn()
        if self._leases is not None and not self._leases.settled:
            return True  # partitions wait for a holder: their inboxes are unknown
        wanted = set(types)
        now = time.time()
        for (address, _), arm in self._timers.items():
            if arm.due <= now and parse_address(address)[0] in wanted:
                return True
        for address, last in list(self._inbox_last.items()):
            if last <= (await self._head(address)).cursor:
                del self._inbox_last[address]  # consumed: nothing pending there any more
            elif parse_address(address)[0] in wanted:
                return True
        return False

    def wakes(self) -> AsyncIterator[str]:
        return self._sig().wakes(self._initial_wakes)

    async def _initial_wakes(self) -> list[str]:
        return [
            address
            for address, last in list(self._inbox_last.items())
            if last > (await self._head(address)).cursor
        ]

    def _index_later(self, address: str, records: list[RunRecord], commit_seq: int) -> None:
        """Write the index records of a commit in the background, after the records of
        the entity's previous commits (so a run's records land in order); `run` and
        `runs` wait for these first, so this process reads its own writes."""
        before = self._indexing.get(address)

        async def write() -> None:
            if before is not None:
                await asyncio.gather(before, return_exceptions=True)
            await self._index_runs(records, commit_seq)

        task = self._chore(write(), f"run index update of {address}")
        self._indexing[address] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._indexing.get(address) is t:
                del self._indexing[address]

        task.add_done_callback(done)

    async def _indexed(self) -> None:
        """Wait for the run index writes of this process's commits so far."""
        if self._indexing:
            await asyncio.gather(*self._indexing.values(), return_exceptions=True)

    async def _index_runs(self, records: list[RunRecord], commit_seq: int) -> None:
        """Publish the run index records of a commit, right after it (acked, so a read
        that follows sees them). `Wk-Ev` names the commit they come from; one lost to a
        crash in between is written again by the partition's next holder."""
        for record in records:
            await self._publish_one(
                f"{PREFIX}.runs.{record.run}",
                _json.encode(record),
                {"Nats-Rollup": "sub", "Wk-Ev": str(commit_seq)},
            )

    async def _repair_index(self, records: list[RunRecord], commit_seq: int) -> None:
        """Write the records of an entity's last commit where the index has an older one
        (or none); guarded, so a newer record written meanwhile is never overwritten."""
        for record in records:
            subject = f"{PREFIX}.runs.{record.run}"
            current = await self._last(subject)
            if current is not None:
                h = current.headers or {}
                if int(h.get("Wk-Ev", 0)) >= commit_seq:
                    continue
                expected = int(h["Nats-Sequence"])
            else:
                expected = 0
            try:
                await self._publish_one(
                    subject,
                    _json.encode(record),
                    {
                        "Nats-Rollup": "sub",
                        "Wk-Ev": str(commit_seq),
                        "Nats-Expected-Last-Subject-Sequence": str(expected),
                    },
                )
            except _BatchError as exc:
                if exc.err_code not in CONFLICT_CODES:
                    raise

    # -- timers ------------------------------------------------------------------

    async def _load_timers(self, p: int) -> None:
        """Armed timers of partition `p`: the last message of each of its timer subjects
        that is still a schedule."""
        js = self._conn().jetstream()
        info = await js.stream_info(self.stream, subjects_filter=f"{PREFIX}.{p}.*.*.tmr.*")
        for subject in info.state.subjects or {}:
            msg = await self._last(subject)
            if msg is None or not (msg.headers or {}).get("Nats-Schedule"):
                continue
            env = _env_decoder.decode(msg.data)
            at = (msg.headers or {})["Nats-Schedule"].removeprefix("@at ").replace("Z", "+00:00")
            due = dt.datetime.fromisoformat(at).timestamp()
            arm = TimerArm(env.name or "", due, env.payload, env.generation)
            self._timers[(env.address, arm.name)] = arm
        self._sig().timers_changed()

    async def _timer_loop(self) -> None:
        await run_timers(self._next_due, self._fire_due, self._sig(), self.poll)

    async def _next_due(self) -> float | None:
        return min((arm.due for arm in self._timers.values()), default=None)

    async def _fire_due(self, now: float) -> list[str]:
        """Deliver due timers to their entities' `.wake` and disarm their schedules."""
        fired: list[str] = []
        for (address, name), arm in sorted(self._timers.items(), key=lambda kv: kv[1].due):
            if arm.due > now:
                break
            env = Envelope(
                address=address,
                kind="timer",
                payload=arm.payload,
                name=name,
                generation=arm.generation,
            )
            seq = await self._publish_one(self.layout.wake(address), _json.encode(env), {})
            self._hint(address, seq)
            if self._timers.get((address, name)) is arm:
                del self._timers[(address, name)]
            fired.append(address)
        return fired

    # -- run index (a subject per run; newest record wins) ---------------------------------

    async def run(self, run: str) -> RunRecord | None:
        await self._indexed()
        msg = await self._last(f"{PREFIX}.runs.{run}")
        return None if msg is None else _run_decoder.decode(msg.data)

    async def runs(
        self, address: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        await self._indexed()
        js = self._conn().jetstream()
        info = await js.stream_info(self.stream, subjects_filter="wk.runs.*")
        names = sorted((s.split(".", 2)[2] for s in info.state.subjects or {}), reverse=True)
        wanted = ACTIVE if status == "active" else (status,)
        out: list[RunRecord] = []
        for name in names:
            record = await self.run(name)
            if record is None:
                continue
            if address is not None and record.address != address:
                continue
            if status is not None and record.status not in wanted:
                continue
            out.append(record)
            if len(out) >= limit:
                break
        return out
