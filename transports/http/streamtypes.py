"""The values of the generic Durable Streams server: offsets, requests, outcomes, errors.

A *stream* is a named, append-only log of appends. Each append is one row; a
position in the stream is an `Offset`: the number of appends before it and the
number of stored bytes before it, written `0000000000000003_0000000000000042`
(both zero-padded to 16 digits, so offsets sort as strings in stream order).
The sentinels `-1` (the beginning) and `now` (the tail) are never generated.

The port that uses them is `StreamStore` (`streamstore.py`).
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Literal, NamedTuple

import msgspec

from wakeful.runtime.errors import NotFound, WakefulError

__all__ = [
    "NOW",
    "ZERO",
    "AppendOutcome",
    "AppendSpec",
    "CreateResult",
    "CreateSpec",
    "Offset",
    "Producer",
    "ReadResult",
    "Row",
    "StreamConflict",
    "StreamError",
    "StreamGone",
    "StreamInfo",
    "StreamInvalid",
    "StreamNotFound",
    "Watchers",
    "format_offset",
    "is_json",
    "media_type",
    "parse_offset",
]

OFFSET_DIGITS = 16
_OFFSET = re.compile(rb"\d{16}_\d{16}")


class Offset(NamedTuple):
    """A position in a stream: `n` appends and `m` stored bytes lie before it."""

    n: int
    m: int

    def __str__(self) -> str:
        return format_offset(self)


ZERO = Offset(0, 0)
NOW: Literal["now"] = "now"


def format_offset(offset: Offset) -> str:
    return f"{offset.n:016d}_{offset.m:016d}"


def parse_offset(text: str) -> Offset:
    """The `Offset` written as `text`; `StreamInvalid` naming the format otherwise."""
    raw = text.encode("utf-8", "surrogateescape")
    if _OFFSET.fullmatch(raw) is None:
        raise StreamInvalid(
            f"offset {text!r} is not an offset of this server; use -1 (the beginning), "
            "now (the tail) or a Stream-Next-Offset value (16 digits, '_', 16 digits)"
        )
    return Offset(int(raw[:16]), int(raw[17:]))


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json` (lower case, no parameters)."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(content_type: str | None) -> bool:
    """JSON mode (message boundaries kept, reads return an array) is `application/json`."""
    return media_type(content_type) == "application/json"


# -- errors -------------------------------------------------------------------


class StreamError(WakefulError):
    """A stream request the store refuses; `status` is the HTTP status that says so."""

    status = 400


class StreamNotFound(StreamError, NotFound):
    status = 404


class StreamGone(StreamError):
    """The stream was deleted (or expired) but forks still read from it; its name stays taken."""

    status = 410


class StreamConflict(StreamError):
    status = 409


class StreamInvalid(StreamError, ValueError):
    status = 400


# -- values ---------------------------------------------------------------------


class Row(msgspec.Struct, array_like=True):
    """One append: the `n`-th of its stream, ending after `m` stored bytes.

    `data` is the bytes as stored; in JSON mode it is the append's messages
    joined by commas (without the enclosing brackets) and `count` says how many
    messages there are (1 otherwise).
    """

    n: int
    m: int
    data: bytes
    count: int = 1


class Producer(NamedTuple):
    """An idempotent producer's claim on an append: `Producer-Id/-Epoch/-Seq`."""

    id: str
    epoch: int
    seq: int


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """What HEAD tells about a stream, and what a read was answered from."""

    id: int
    name: str
    content_type: str
    tail: Offset
    closed: bool
    ttl: int | None
    expires_at: str | None

    @property
    def json(self) -> bool:
        return is_json(self.content_type)


@dataclass(frozen=True, slots=True)
class CreateSpec:
    """A PUT: the stream's configuration, its first bytes, and where it forks from."""

    content_type: str | None = None
    ttl: int | None = None
    expires_at: float | None = None
    expires_text: str | None = None
    body: bytes = b""
    closed: bool = False
    fork_from: str | None = None
    fork_offset: Offset | None = None
    fork_sub: int | None = None


@dataclass(frozen=True, slots=True)
class CreateResult:
    info: StreamInfo
    created: bool


@dataclass(frozen=True, slots=True)
class AppendSpec:
    """A POST: bytes to append (may be empty to only close), and its guards."""

    body: bytes
    content_type: str | None = None
    close: bool = False
    stream_seq: bytes | None = None
    producer: Producer | None = None


AppendStatus = Literal["appended", "closed", "duplicate", "stale", "gap", "epoch_seq", "refused"]


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """How a POST ended.

    - `appended`: the bytes were appended (and the stream closed if asked);
    - `closed`: a close-only request closed the stream (or it was closed already);
    - `duplicate`: the producer sent this seq before; nothing was written;
    - `stale`: the producer's epoch is older than `epoch` (fenced);
    - `gap`: the producer skipped seqs; `expected` is the next one accepted;
    - `epoch_seq`: a new epoch did not start at seq 0;
    - `refused`: the stream is closed and takes no more appends.
    """

    status: AppendStatus
    tail: Offset
    closed: bool
    epoch: int | None = None
    seq: int | None = None
    expected: int | None = None


@dataclass(frozen=True, slots=True)
class ReadResult:
    """Rows after the requested offset, and the offset to read from next."""

    info: StreamInfo
    rows: list[Row]
    next: Offset
    up_to_date: bool

    @property
    def closed_at_tail(self) -> bool:
        """The reader has everything and nothing more will come."""
        return self.info.closed and self.up_to_date


# -- notifications ----------------------------------------------------------------


class Watchers:
    """In-process wake-ups for live readers (long-poll, SSE), by stream name.

    A reader registers its own `asyncio.Event` *before* it reads, so a write that
    commits between its read and its wait still wakes it. `close()` wakes all
    readers for good (the store is closing).
    """

    def __init__(self) -> None:
        self._by_name: dict[str, set[asyncio.Event]] = {}
        self.closed = False

    def watch(self, name: str, event: asyncio.Event) -> None:
        self._by_name.setdefault(name, set()).add(event)
        if self.closed:
            event.set()

    def unwatch(self, name: str, event: asyncio.Event) -> None:
        events = self._by_name.get(name)
        if events is not None:
            events.discard(event)
            if not events:
                del self._by_name[name]

    def notify(self, names: list[str] | set[str]) -> None:
        for name in names:
            for event in self._by_name.get(name, ()):
                event.set()

    def close(self) -> None:
        self.closed = True
        for events in self._by_name.values():
            for event in events:
                event.set()
