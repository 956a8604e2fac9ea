"""The storage port of the generic Durable Streams server, and its two implementations.

A *stream* is a named, append-only log of appends; offsets, requests and
outcomes are the values of `streamtypes.py`. `StreamStore` is implemented by
`MemoryStreams` (in memory, for tests) and `SQLiteStreams` (a SQLite file);
both run the same semantics (`streamlog.py`) over their own storage.
"""

from __future__ import annotations

from types import TracebackType
from typing import Literal, Protocol, Self

from .streammemory import MemoryStreams
from .streamsqlite import SQLiteStreams
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
    StreamError,
    StreamGone,
    StreamInfo,
    StreamInvalid,
    StreamNotFound,
    Watchers,
    format_offset,
    is_json,
    media_type,
    parse_offset,
)

__all__ = [
    "NOW",
    "ZERO",
    "AppendOutcome",
    "AppendSpec",
    "CreateResult",
    "CreateSpec",
    "MemoryStreams",
    "Offset",
    "Producer",
    "ReadResult",
    "Row",
    "SQLiteStreams",
    "StreamConflict",
    "StreamError",
    "StreamGone",
    "StreamInfo",
    "StreamInvalid",
    "StreamNotFound",
    "StreamStore",
    "Watchers",
    "format_offset",
    "is_json",
    "media_type",
    "parse_offset",
]


class StreamStore(Protocol):
    """Durable Streams storage: create, append, read, delete streams by name.

    Every method raises `StreamNotFound` (no such stream, or it expired),
    `StreamGone` (deleted or expired while forks still read from it),
    `StreamConflict` or `StreamInvalid` with a message that names the problem.
    Both implementations are async context managers; `close()` is idempotent
    and wakes every live reader.
    """

    watchers: Watchers

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def create(self, name: str, spec: CreateSpec) -> CreateResult:
        """Create `name` (201) or confirm it exists with this configuration (200)."""
        ...

    async def append(self, name: str, spec: AppendSpec) -> AppendOutcome:
        """Append (and/or close) atomically with the producer's state update."""
        ...

    async def read(
        self, name: str, after: Offset | Literal["now"] | None, limit: int
    ) -> ReadResult:
        """Rows after `after` (None: from the start), about `limit` bytes at most
        (always at least one row when there is one). Counts as an access for TTL."""
        ...

    async def info(self, name: str) -> StreamInfo:
        """The stream's metadata (HEAD); not an access for TTL."""
        ...

    async def delete(self, name: str) -> None:
        """Delete `name`; while forks read from it, it is only marked gone (410)."""
        ...
