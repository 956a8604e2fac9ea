"""`JetStreamStore`: the event store on a NATS JetStream stream (issue 4, in progress).

Layout and design: docs/jetstream-facts.md. A commit is one guarded publish on
the entity's `.ev` subject (all its events in one message), or one atomic batch
when it also delivers messages or arms and cancels timers. Offsets of events are
`<stream seq>.<index in its message>`; inbox offsets are stream sequences. The
consumed-inbox cursor travels in the `Wk-Consumed` header of every `.ev` message.

Not yet here (issue 4): sharing partitions among several workers (leases or
pinned consumers), in-memory firing of due timers for precision, the cluster
tests. One process per stream for now.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
import uuid
from collections.abc import AsyncIterator, Collection
from typing import Any

import msgspec
import nats
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

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
from .stream import ensure_stream
from .subjects import Layout

__all__ = ["JetStreamStore"]

CONFLICT_CODES = (10071, 10164)
SEQ_WIDTH = 20
INDEX_WIDTH = 4
DIRECT_BATCH = 256

_json = msgspec.json.Encoder()
_env_decoder = msgspec.json.Decoder(Envelope)
_run_decoder = msgspec.json.Decoder(RunRecord)
_runs_decoder = msgspec.json.Decoder(list[RunRecord])
_raw_events = msgspec.json.Decoder(list[tuple[str, float, str | None, msgspec.Raw]])


class _Head(msgspec.Struct):
    stream_seq: int  # of the entity's last .ev message (0: none)
    seq: int  # entity seq after it
    cursor: int  # highest consumed inbox stream seq


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


def _parse_stamp(stamp: str) -> float:
    """`Nats-Time-Stamp` (RFC 3339 in UTC, 0 to 9 fractional digits) as epoch seconds."""
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    seconds = dt.datetime.fromisoformat(whole + "+00:00").timestamp()
    return seconds + (float("0." + fraction) if fraction else 0.0)


class _BatchError(WakefulError):
    def __init__(self, code: int, err_code: int, description: str) -> None:
        super().__init__(f"{description} (err_code {err_code})")
        self.code = code
        self.err_code = err_code


class JetStreamStore(AsyncResource):
    """An `EventStore` on one JetStream stream."""

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
    ) -> None:
        self.servers = servers
        self.stream = stream
        self.layout = Layout(partitions)
        self.replicas = replicas
        self.storage = storage
        self.poll = poll
        self.timeout = request_timeout
        self._nc: Client | None = None
        self._signals: Signals | None = None
        self._heads: dict[str, _Head] = {}
        self._inbox_last: dict[str, int] = {}
        self._timers: dict[tuple[str, str], TimerArm] = {}
        """Armed timers, fired from here when due (the schedules are the durable
        fallback: the server fires them too, and the runtime drops the duplicate)."""
        self._background = Background("wakeful-jetstream-store")
        self._tail_subs: Any = None
        self._feed_task: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def open(self) -> None:
        if self._nc is not None:
            return
        nc = await nats.connect(self.servers, max_reconnect_attempts=-1)
        try:
            await ensure_stream(nc, self.stream, self.replicas, self.storage)
        except BaseException:
            await nc.close()
            raise
        self._nc = nc
        self._signals = signals = Signals()

        async def on_event(msg: Msg) -> None:
            try:
                address = Layout.address_of(msg.subject)
            except ValueError:
                return
            if msg.subject.endswith(".ev"):
                signals.committed(address)
            elif msg.subject.endswith((".in", ".wake")):
                signals.wake(address)

        # Hints from other processes (and from timers the server fires): every read
        # goes to the stream, so a hint for a publish that failed its guard, or one
        # that arrives before its batch committed, costs a read. Our own commits and
        # sends signal after their ack.
        self._tail_subs = await nc.subscribe("wk.*.*.*.*", cb=on_event)
        await self._load_timers()
        await self._repair_run_index()
        await self._scan_inboxes()
        await self._background.start(self._timer_loop)

    async def close(self) -> None:
        nc, self._nc = self._nc, None
        if nc is None:
            return
        if self._signals is not None:
            self._signals.close()
        await self._background.stop()
        self._signals = None
        await nc.close()

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

    async def _direct(self, request: dict[str, Any]) -> list[Msg]:
        """A direct get; a batch request returns every reply up to its end marker."""
        nc = self._conn()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            await nc.publish(
                f"$JS.API.DIRECT.GET.{self.stream}", _json.encode(request), reply=inbox
            )
            out: list[Msg] = []
            while True:
                msg = await sub.next_msg(timeout=self.timeout)
                status = (msg.headers or {}).get("Status")
                if status in ("204", "404"):
                    return out
                if status:
                    raise WakefulError(f"direct get failed: {status} {msg.headers}")
                out.append(msg)
                if "batch" not in request:
                    return out
        finally:
            await sub.unsubscribe()

    async def _scan(self, subject: str, start: int, limit: int | None) -> list[Msg]:
        """Messages on `subject` (wildcards allowed) with stream seq >= start."""
        out: list[Msg] = []
        seq = max(1, start)
        while limit is None or len(out) < limit:
            batch = await self._direct({"seq": seq, "next_by_subj": subject, "batch": DIRECT_BATCH})
            out.extend(batch)
            if len(batch) < DIRECT_BATCH:
                break
            seq = int(batch[-1].headers["Nats-Sequence"]) + 1  # type: ignore[index]
        return out if limit is None else out[:limit]

    async def _last(self, subject: str) -> Msg | None:
        found = await self._direct({"last_by_subj": subject})
        return found[0] if found else None

    async def _head(self, address: str, fresh: bool = False) -> _Head:
        head = None if fresh else self._heads.get(address)
        if head is None:
            msg = await self._last(self.layout.events(address))
            if msg is None:
                head = _Head(0, 0, 0)
            else:
                h = msg.headers or {}
                head = _Head(
                    int(h["Nats-Sequence"]), int(h["Wk-Seq"]), int(h.get("Wk-Consumed", 0))
                )
            self._heads[address] = head
        return head

    async def _publish_batch(self, messages: list[tuple[str, bytes, dict[str, str]]]) -> int:
        """One atomic batch; returns the stream seq of its first message."""
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
        js = self._conn().jetstream()
        try:
            ack = await js.publish(subject, body, timeout=self.timeout, headers=headers)
        except nats.js.errors.APIError as exc:
            raise _BatchError(exc.code or 0, exc.err_code or 0, exc.description or "") from exc
        return int(ack.seq)

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
                if exc.err_code not in CONFLICT_CODES:
                    raise WakefulError(f"{address}: commit refused by JetStream: {exc}") from exc
                self._heads.pop(address, None)
        head = await self._head(address, fresh=True)
        raise ConcurrencyError(address, commit.expected, head.seq)

    async def _commit_once(
        self, commit: Commit, head: _Head, rows: list[Any], consumed: list[int]
    ) -> list[Event]:
        address = commit.address
        layout = self.layout
        seq = commit.expected + len(rows)
        cursor = max([head.cursor, *consumed])
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(head.stream_seq),
            "Wk-Seq": str(seq),
            "Wk-Consumed": str(cursor),
        }
        if commit.runs:
            # The run index is written after the commit (one publish per record, not
            # an atomic batch); the records ride in the log too, so `open` can repair
            # an index update lost to a crash between the two.
            headers["Wk-Runs"] = _json.encode(commit.runs).decode()
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
        if len(messages) == 1:
            first = await self._publish_one(*messages[0])
        else:
            first = await self._publish_batch(messages)
        self._heads[address] = _Head(first, seq, cursor)
        signals = self._sig()
        if rows:
            signals.committed(address)
        for offset, env_address in self._delivered(messages, first):
            self._inbox_last[env_address] = max(self._inbox_last.get(env_address, 0), offset)
            signals.wake(env_address)
        for name in commit.cancel_timers:
            self._timers.pop((address, name), None)
        for arm in commit.timers:
            self._timers[(address, arm.name)] = arm
        if commit.timers or commit.cancel_timers:
            signals.timers_changed()
        await self._index_runs(commit.runs)
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
            seq = await self._publish_one(self.layout.inbox(address), _json.encode(envelope), {})
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
        self._inbox_last[address] = max(self._inbox_last.get(address, 0), seq)
        self._sig().wake(address)
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
        return Snapshot(int(h["Wk-Seq"]), bytes(msg.data), h.get("Wk-Offset", ""))

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

    def tail(self, address: str, after: str | None = None) -> AsyncIterator[Event]:
        _parse_event_offset(after)
        return tail_events(self.read, self._sig(), address, after, self.poll)

    async def inbox(
        self, address: str, after: str | None = None, limit: int | None = None
    ) -> list[InboxItem]:
        self._conn()
        head = await self._head(address)
        start = max(head.cursor, _parse_inbox_offset(after)) + 1
        items: list[InboxItem] = []
        for msg in await self._scan(self.layout.base(address) + ".*", start, None):
            h = msg.headers or {}
            if not h.get("Nats-Subject", "").endswith((".in", ".wake")):
                continue
            stamp = h.get("Nats-Time-Stamp")
            at = _parse_stamp(stamp) if stamp else time.time()
            items.append(
                InboxItem(
                    f"{int(h['Nats-Sequence']):0{SEQ_WIDTH}d}", at, _env_decoder.decode(msg.data)
                )
            )
            if limit is not None and len(items) >= limit:
                break
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

    async def _index_runs(self, records: list[RunRecord]) -> None:
        """Publish the run index records of a commit, right after it (acked, so a read
        that follows sees them); one lost to a crash in between is written again by
        `_repair_run_index` when the store opens."""
        for record in records:
            await self._publish_one(
                f"wk.runs.{record.run}", _json.encode(record), {"Nats-Rollup": "sub"}
            )

    async def _repair_run_index(self) -> None:
        """Write again the run records of each entity's last commit: the only index
        update a crash can have lost (it comes right after its commit)."""
        js = self._conn().jetstream()
        info = await js.stream_info(self.stream, subjects_filter="wk.*.*.*.ev")
        for subject in info.state.subjects or {}:
            head = await self._last(subject)
            raw = (head.headers or {}).get("Wk-Runs") if head is not None else None
            if raw:
                await self._index_runs(_runs_decoder.decode(raw))

    async def _scan_inboxes(self) -> None:
        """Find every entity with unconsumed inbox messages (at open, so that `pending`
        and the wake feed know them from the start). One stream-info request per
        subject kind plus one read per entity: fine for now; the per-partition
        consumers of issue 4 replace it."""
        js = self._conn().jetstream()
        for suffix in ("in", "wake"):
            info = await js.stream_info(self.stream, subjects_filter=f"wk.*.*.*.{suffix}")
            for subject in info.state.subjects or {}:
                address = Layout.address_of(subject)
                items = await self.inbox(address)
                if items:
                    last = int(items[-1].offset)
                    self._inbox_last[address] = max(self._inbox_last.get(address, 0), last)

    # -- timers ------------------------------------------------------------------

    async def _load_timers(self) -> None:
        """Armed timers from the stream: the last message of each timer subject that is
        still a schedule."""
        js = self._conn().jetstream()
        info = await js.stream_info(self.stream, subjects_filter="wk.*.*.*.tmr.*")
        for subject in info.state.subjects or {}:
            msg = await self._last(subject)
            if msg is None or not (msg.headers or {}).get("Nats-Schedule"):
                continue
            env = _env_decoder.decode(msg.data)
            at = (msg.headers or {})["Nats-Schedule"].removeprefix("@at ").replace("Z", "+00:00")
            due = dt.datetime.fromisoformat(at).timestamp()
            arm = TimerArm(env.name or "", due, env.payload, env.generation)
            self._timers[(env.address, arm.name)] = arm

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
            await self._publish_one(self.layout.wake(address), _json.encode(env), {})
            if self._timers.get((address, name)) is arm:
                del self._timers[(address, name)]
            fired.append(address)
        return fired

    # -- run index (a subject per run; newest record wins) ---------------------------------

    async def run(self, run: str) -> RunRecord | None:
        msg = await self._last(f"wk.runs.{run}")
        return None if msg is None else _run_decoder.decode(msg.data)

    async def runs(
        self, address: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
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
