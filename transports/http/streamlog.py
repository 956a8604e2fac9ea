"""The semantics of Durable Streams, once, over a storage transaction (`Tx`).

`MemoryStreams` runs these functions on dictionaries in the event loop;
`SQLiteStreams` runs them on a `sqlite3` connection inside one `BEGIN IMMEDIATE`
transaction (writes) or one read transaction (reads). Every function checks all
it needs before it changes anything, so a refused request leaves no trace even
where there is no rollback.

Rules kept here:

- A name holds at most one stream. Deleting a stream that forks still read
  from only marks it *gone* (410, the name stays taken); it is removed when its
  last fork is, and that may in turn remove its own gone source (cascade).
- Expiry: `Stream-Expires-At` is absolute; `Stream-TTL` is a sliding window
  renewed by every read and write (HEAD does not renew). An expired stream
  reads as deleted: 404, or 410 while forks still read from it.
- A fork shares its source's offsets up to the fork point; its own appends
  continue from there. A sub-offset takes the first bytes (or JSON messages)
  of the append after the fork point as the fork's own first append.
- Producers: dedupe and fencing per (stream, Producer-Id); `Stream-Seq` is
  checked per stream, after producer dedupe.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

import msgspec

from .streamtypes import (
    NOW,
    ZERO,
    AppendOutcome,
    AppendSpec,
    CreateResult,
    CreateSpec,
    Offset,
    Producer,
    ReadResult,
    Row,
    StreamConflict,
    StreamGone,
    StreamInfo,
    StreamInvalid,
    StreamNotFound,
    is_json,
    media_type,
)

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "Meta",
    "ProducerState",
    "Tx",
    "append",
    "create",
    "delete",
    "expired",
    "info",
    "json_messages",
    "read",
    "sweep",
]

DEFAULT_CONTENT_TYPE = "application/octet-stream"

Touched = Callable[[int], float]
"""The last access of a stream by id that the store knows of beyond `Meta.accessed`."""


class Meta(msgspec.Struct):
    """One stream's row of metadata (mutable: functions here change and save it)."""

    id: int
    name: str
    content_type: str
    created: float
    accessed: float
    ttl: int | None = None
    expires_at: float | None = None
    expires_text: str | None = None
    closed: bool = False
    closer: Producer | None = None
    stream_seq: bytes | None = None
    tail_n: int = 0
    tail_m: int = 0
    fork_of: int | None = None
    fork_source: str | None = None
    fork_n: int = 0
    fork_m: int = 0
    fork_sub: int = 0
    refs: int = 0
    gone: bool = False

    @property
    def tail(self) -> Offset:
        return Offset(self.tail_n, self.tail_m)

    def info(self) -> StreamInfo:
        return StreamInfo(
            self.id,
            self.name,
            self.content_type,
            Offset(self.tail_n, self.tail_m),
            self.closed,
            self.ttl,
            self.expires_text,
        )


class ProducerState(msgspec.Struct, array_like=True):
    epoch: int
    seq: int
    updated: float


class Tx(Protocol):
    """The storage operations the semantics need, inside one transaction."""

    def get(self, name: str) -> Meta | None: ...

    def get_id(self, id: int) -> Meta | None: ...

    def insert(self, meta: Meta) -> int:
        """Store a new stream (its `id` is ignored) and return the id it got."""
        ...

    def save(self, meta: Meta) -> None: ...

    def remove(self, id: int) -> None:
        """Remove a stream with its rows and producer states."""
        ...

    def rows(self, id: int, after: int, upto: int, limit: int) -> list[Row]:
        """The stream's own rows with `after < n <= upto` in order; stop once `limit`
        bytes are taken (but take at least one row)."""
        ...

    def add_row(self, id: int, row: Row) -> None: ...

    def producer(self, id: int, producer: str) -> ProducerState | None: ...

    def set_producer(self, id: int, producer: str, state: ProducerState) -> None: ...

    def expiring(self, now: float) -> list[Meta]:
        """Streams that may have expired by `now` going by `Meta.accessed` (a superset)."""
        ...


# -- expiry -------------------------------------------------------------------------


def expired(meta: Meta, now: float, touched: Touched) -> bool:
    if meta.expires_at is not None and now >= meta.expires_at:
        return True
    if meta.ttl is not None:
        last = max(meta.accessed, touched(meta.id))
        return now >= last + meta.ttl
    return False


def _live(tx: Tx, name: str, now: float, touched: Touched) -> Meta:
    """The stream called `name`, or the error a request to it gets."""
    meta = tx.get(name)
    if meta is None:
        raise StreamNotFound(f"stream {name!r} does not exist")
    if meta.gone:
        raise StreamGone(f"stream {name!r} was deleted; forks still read from it")
    if expired(meta, now, touched):
        if meta.refs > 0:
            raise StreamGone(f"stream {name!r} expired; forks still read from it")
        raise StreamNotFound(f"stream {name!r} expired")
    return meta


def _remove(tx: Tx, meta: Meta, changed: set[str]) -> None:
    """Remove `meta`, release its source, and remove sources left gone and unread."""
    tx.remove(meta.id)
    changed.add(meta.name)
    source_id = meta.fork_of
    while source_id is not None:
        source = tx.get_id(source_id)
        if source is None:
            return
        source.refs = max(0, source.refs - 1)
        if source.refs > 0 or not source.gone:
            tx.save(source)
            return
        tx.remove(source.id)
        changed.add(source.name)
        source_id = source.fork_of


def _retire(tx: Tx, meta: Meta, changed: set[str]) -> None:
    """Delete (or expire) `meta`: removed, or only gone while forks read from it."""
    if meta.refs > 0:
        meta.gone = True
        tx.save(meta)
        changed.add(meta.name)
    else:
        _remove(tx, meta, changed)


def sweep(tx: Tx, now: float, touched: Touched) -> set[str]:
    """Retire every expired stream; return the names whose readers must look again."""
    changed: set[str] = set()
    for candidate in tx.expiring(now):
        meta = tx.get_id(candidate.id)  # an earlier removal may have changed it
        if meta is None or meta.gone or not expired(meta, now, touched):
            continue
        _retire(tx, meta, changed)
    return changed


# -- JSON mode ------------------------------------------------------------------------

_raw_list = msgspec.json.Decoder(list[msgspec.Raw])
_raw_one = msgspec.json.Decoder(msgspec.Raw)


def json_messages(body: bytes) -> list[bytes]:
    """The messages of a JSON-mode body: a top-level array is flattened one level.

    Each message keeps its bytes as sent. `StreamInvalid` for malformed JSON.
    """
    try:
        body.decode("utf-8")
        if body.lstrip()[:1] == b"[":
            return [bytes(raw) for raw in _raw_list.decode(body)]
        return [bytes(_raw_one.decode(body))]
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise StreamInvalid(f"the body is not valid JSON: {exc}") from None


def _split_json(data: bytes) -> list[bytes]:
    return [bytes(raw) for raw in _raw_list.decode(b"[" + data + b"]")]


def _json_row(body: bytes, allow_empty: bool) -> tuple[bytes, int] | None:
    messages = json_messages(body)
    if not messages:
        if allow_empty:
            return None
        raise StreamInvalid(
            "an empty JSON array appends nothing; send at least one message "
            "(a value, or an array of values)"
        )
    return b",".join(messages), len(messages)


# -- create ----------------------------------------------------------------------------


def _same_config(meta: Meta, spec: CreateSpec) -> str | None:
    """Why an existing stream does not match a PUT, or None when it does."""
    if spec.content_type is None:
        wanted = None if spec.fork_from else DEFAULT_CONTENT_TYPE
    else:
        wanted = spec.content_type
    if wanted is not None and media_type(wanted) != media_type(meta.content_type):
        return f"it has content type {meta.content_type!r}, not {wanted!r}"
    inherits = spec.fork_from is not None and spec.ttl is None and spec.expires_at is None
    if not inherits and (spec.ttl != meta.ttl or spec.expires_at != meta.expires_at):
        have = f"Stream-TTL {meta.ttl}" if meta.ttl is not None else None
        have = have or (f"Stream-Expires-At {meta.expires_text}" if meta.expires_text else None)
        return f"it has {have or 'no expiry'}"
    if spec.fork_from != meta.fork_source:
        have = f"a fork of {meta.fork_source!r}" if meta.fork_source else "not a fork"
        return f"it is {have}"
    if spec.fork_offset is not None and spec.fork_offset.n != meta.fork_n:
        return f"it forks at offset {Offset(meta.fork_n, meta.fork_m)}"
    if (spec.fork_sub or 0) != meta.fork_sub:
        return f"it forks with Stream-Fork-Sub-Offset {meta.fork_sub}"
    if spec.closed and not meta.closed:
        return "it is open (close it with POST and Stream-Closed: true)"
    return None


def _row_at(tx: Tx, meta: Meta, n: int) -> Row | None:
    """Row `n` of `meta` as readers see it (through its sources), if it exists."""
    if n < 1 or n > meta.tail_n:
        return None
    rows = _collect(tx, meta, n - 1, n, 1)
    return rows[0] if rows else None


def create(tx: Tx, name: str, spec: CreateSpec, now: float, touched: Touched) -> CreateResult:
    changed: set[str] = set()
    existing = tx.get(name)
    if existing is not None:
        if existing.gone:
            raise StreamConflict(
                f"stream {name!r} was deleted but forks still read from it; the name "
                "can be used again once they are deleted"
            )
        if expired(existing, now, touched):
            _retire(tx, existing, changed)
            if existing.refs > 0:
                raise StreamConflict(
                    f"stream {name!r} expired but forks still read from it; the name "
                    "can be used again once they are deleted"
                )
        else:
            why = _same_config(existing, spec)
            if why is not None:
                raise StreamConflict(f"stream {name!r} already exists and {why}")
            return CreateResult(existing.info(), created=False)

    content_type = spec.content_type
    ttl, expires_at, expires_text = spec.ttl, spec.expires_at, spec.expires_text
    source: Meta | None = None
    fork_at = ZERO
    prefix: Row | None = None
    if spec.fork_from is not None:
        source = tx.get(spec.fork_from)
        if source is None:
            raise StreamNotFound(f"fork source {spec.fork_from!r} does not exist")
        if source.gone:
            raise StreamConflict(f"fork source {spec.fork_from!r} was deleted")
        if expired(source, now, touched):
            raise StreamNotFound(f"fork source {spec.fork_from!r} expired")
        if content_type is None:
            content_type = source.content_type
        elif media_type(content_type) != media_type(source.content_type):
            raise StreamConflict(
                f"a fork has its source's content type {source.content_type!r}, "
                f"not {content_type!r}; omit Content-Type to inherit it"
            )
        fork_at = source.tail
        if spec.fork_offset is not None:
            n = spec.fork_offset.n
            if n > source.tail_n:
                raise StreamInvalid(
                    f"Stream-Fork-Offset {spec.fork_offset} is past the end of "
                    f"{spec.fork_from!r} (its tail is {source.tail})"
                )
            if n < source.tail_n:
                at = _row_at(tx, source, n) if n > 0 else None
                fork_at = Offset(n, at.m if at is not None else 0)
        if spec.fork_sub:
            prefix = _sub_prefix(tx, source, fork_at, spec.fork_sub)
        if ttl is None and expires_at is None:
            ttl, expires_at, expires_text = source.ttl, source.expires_at, source.expires_text
    if content_type is None:
        content_type = DEFAULT_CONTENT_TYPE

    body_row: tuple[bytes, int] | None = None
    if spec.body:
        body_row = _json_row(spec.body, True) if is_json(content_type) else (spec.body, 1)

    meta = Meta(
        id=0,
        name=name,
        content_type=content_type,
        created=now,
        accessed=now,
        ttl=ttl,
        expires_at=expires_at,
        expires_text=expires_text,
        closed=spec.closed,
        tail_n=fork_at.n,
        tail_m=fork_at.m,
        fork_of=source.id if source is not None else None,
        fork_source=spec.fork_from,
        fork_n=fork_at.n,
        fork_m=fork_at.m,
        fork_sub=spec.fork_sub or 0,
    )
    meta.id = tx.insert(meta)
    pending = [(prefix.data, prefix.count)] if prefix is not None else []
    if body_row is not None:
        pending.append(body_row)
    for data, count in pending:
        meta.tail_n += 1
        meta.tail_m += len(data)
        tx.add_row(meta.id, Row(meta.tail_n, meta.tail_m, data, count))
    if meta.tail_n != fork_at.n:
        tx.save(meta)
    if source is not None:
        source.refs += 1
        tx.save(source)
    return CreateResult(meta.info(), created=True)


def _sub_prefix(tx: Tx, source: Meta, at: Offset, sub: int) -> Row:
    """The first `sub` bytes (JSON: messages) of the source's append after `at`."""
    row = _row_at(tx, source, at.n + 1)
    if row is None:
        raise StreamInvalid(
            f"Stream-Fork-Sub-Offset {sub} needs an append after the fork offset {at}, "
            f"and {source.name!r} has none"
        )
    if is_json(source.content_type):
        messages = _split_json(row.data)
        if sub > len(messages):
            raise StreamInvalid(
                f"Stream-Fork-Sub-Offset {sub} is past the {len(messages)} messages of "
                f"the append after {at}"
            )
        return Row(0, 0, b",".join(messages[:sub]), sub)
    if sub > len(row.data):
        raise StreamInvalid(
            f"Stream-Fork-Sub-Offset {sub} is past the {len(row.data)} bytes of the "
            f"append after {at}"
        )
    return Row(0, 0, row.data[:sub], 1)


# -- append ------------------------------------------------------------------------


def _check_producer(
    tx: Tx, meta: Meta, p: Producer, now: float
) -> tuple[AppendOutcome | None, ProducerState | None, AppendOutcome | None]:
    """(final outcome, new state to store, outcome to give unless the stream is closed)."""
    state = tx.producer(meta.id, p.id)
    tail, closed = meta.tail, meta.closed
    if closed and meta.closer == p:
        return AppendOutcome("duplicate", tail, True, p.epoch, p.seq), None, None
    if state is None:
        if p.seq != 0:
            return None, None, AppendOutcome("gap", tail, closed, p.epoch, p.seq, expected=0)
        return None, ProducerState(p.epoch, 0, now), None
    if p.epoch < state.epoch:
        return AppendOutcome("stale", tail, closed, state.epoch, state.seq), None, None
    if p.epoch > state.epoch:
        if p.seq != 0:
            return None, None, AppendOutcome("epoch_seq", tail, closed, p.epoch, p.seq)
        return None, ProducerState(p.epoch, 0, now), None
    if p.seq <= state.seq:
        return AppendOutcome("duplicate", tail, closed, p.epoch, state.seq), None, None
    if p.seq != state.seq + 1:
        gap = AppendOutcome("gap", tail, closed, p.epoch, p.seq, expected=state.seq + 1)
        return None, None, gap
    return None, ProducerState(p.epoch, p.seq, now), None


def append(
    tx: Tx, name: str, spec: AppendSpec, now: float, touched: Touched
) -> tuple[AppendOutcome, bool]:
    """The outcome, and whether readers of `name` must look again."""
    meta = _live(tx, name, now, touched)
    p = spec.producer
    new_state: ProducerState | None = None
    refusal: AppendOutcome | None = None
    if p is not None:
        final, new_state, refusal = _check_producer(tx, meta, p, now)
        if final is not None:
            return final, False
    if meta.closed:
        if spec.close and not spec.body and p is None:
            return AppendOutcome("closed", meta.tail, True), False  # closing again is a no-op
        return AppendOutcome("refused", meta.tail, True), False
    if refusal is not None:
        return refusal, False
    row: tuple[bytes, int] | None = None
    if spec.body:
        if media_type(spec.content_type) != media_type(meta.content_type):
            raise StreamConflict(
                f"stream {name!r} has content type {meta.content_type!r}; this append "
                f"is {spec.content_type!r}"
            )
        if spec.stream_seq is not None and (
            meta.stream_seq is not None and spec.stream_seq <= meta.stream_seq
        ):
            raise StreamConflict(
                f"Stream-Seq {spec.stream_seq.decode('latin-1')!r} is not after the last "
                f"one, {meta.stream_seq.decode('latin-1')!r} (compared byte by byte)"
            )
        row = _json_row(spec.body, False) if is_json(meta.content_type) else (spec.body, 1)
    elif not spec.close:
        raise StreamInvalid("an append needs a body (or Stream-Closed: true to close)")
    if row is not None:
        data, count = row
        meta.tail_n += 1
        meta.tail_m += len(data)
        tx.add_row(meta.id, Row(meta.tail_n, meta.tail_m, data, count))
        if spec.stream_seq is not None:
            meta.stream_seq = spec.stream_seq
    if spec.close:
        meta.closed = True
        meta.closer = p
    meta.accessed = now
    tx.save(meta)
    if p is not None and new_state is not None:
        tx.set_producer(meta.id, p.id, new_state)
    status: Literal["appended", "closed"] = "appended" if row is not None else "closed"
    epoch = p.epoch if p is not None else None
    seq = p.seq if p is not None else None
    return AppendOutcome(status, meta.tail, meta.closed, epoch, seq), True


# -- read, info, delete ---------------------------------------------------------------


def _collect(tx: Tx, meta: Meta, after: int, upto: int, limit: int) -> list[Row]:
    """Rows `after < n <= upto` of `meta` through its chain of sources, about `limit` bytes."""
    out: list[Row] = []
    if meta.fork_of is not None and after < meta.fork_n:
        cap = min(upto, meta.fork_n)
        source = tx.get_id(meta.fork_of)
        if source is not None:
            out = _collect(tx, source, after, cap, limit)
        taken = sum(len(r.data) for r in out)
        if out and (taken >= limit or out[-1].n < cap):
            return out
        after, limit = cap, limit - taken
    if after >= upto:
        return out
    own = tx.rows(meta.id, max(after, meta.fork_n), upto, limit)
    if out and own and len(own[0].data) > limit:
        return out  # the next read takes it; this page stays within the limit
    return out + own


def read(
    tx: Tx,
    name: str,
    after: Offset | Literal["now"] | None,
    limit: int,
    now: float,
    touched: Touched,
) -> ReadResult:
    meta = _live(tx, name, now, touched)
    info = meta.info()
    if after == NOW:
        return ReadResult(info, [], info.tail, True)
    start = after.n if isinstance(after, Offset) else 0
    if start > meta.tail_n:
        raise StreamInvalid(
            f"offset {after} is past the end of stream {name!r} (its tail is {info.tail})"
        )
    rows = _collect(tx, meta, start, meta.tail_n, limit) if start < meta.tail_n else []
    if not rows:
        return ReadResult(info, [], info.tail, True)
    last = rows[-1]
    return ReadResult(info, rows, Offset(last.n, last.m), last.n >= meta.tail_n)


def info(tx: Tx, name: str, now: float, touched: Touched) -> StreamInfo:
    return _live(tx, name, now, touched).info()


def delete(tx: Tx, name: str, now: float, touched: Touched) -> set[str]:
    """Delete `name`; return the names whose readers must look again."""
    meta = tx.get(name)
    if meta is not None and meta.gone:
        raise StreamGone(f"stream {name!r} was already deleted; forks still read from it")
    meta = _live(tx, name, now, touched)
    changed: set[str] = set()
    _retire(tx, meta, changed)
    return changed
