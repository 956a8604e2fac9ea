"""`MemoryStreams`: Durable Streams storage in process memory, for tests and demos.

Same semantics as `SQLiteStreams` (both run `streamlog`), no durability. Every
operation runs to completion in the event loop, so each is atomic.
"""

from __future__ import annotations

import asyncio
import time
from typing import Literal

import msgspec

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
    ReadResult,
    Row,
    StreamInfo,
    Watchers,
)

__all__ = ["MemoryStreams"]


class _Data:
    def __init__(self) -> None:
        self.by_name: dict[str, Meta] = {}
        self.by_id: dict[int, Meta] = {}
        self.rows: dict[int, list[Row]] = {}
        self.producers: dict[tuple[int, str], ProducerState] = {}
        self.next_id = 1


class _MemoryTx:
    """`streamlog.Tx` on dictionaries; metadata goes in and out as copies."""

    def __init__(self, data: _Data) -> None:
        self.d = data

    def get(self, name: str) -> Meta | None:
        meta = self.d.by_name.get(name)
        return None if meta is None else msgspec.structs.replace(meta)

    def get_id(self, id: int) -> Meta | None:
        meta = self.d.by_id.get(id)
        return None if meta is None else msgspec.structs.replace(meta)

    def insert(self, meta: Meta) -> int:
        id = self.d.next_id
        self.d.next_id += 1
        stored = msgspec.structs.replace(meta, id=id)
        self.d.by_name[meta.name] = stored
        self.d.by_id[id] = stored
        self.d.rows[id] = []
        return id

    def save(self, meta: Meta) -> None:
        stored = msgspec.structs.replace(meta)
        self.d.by_name[meta.name] = stored
        self.d.by_id[meta.id] = stored

    def remove(self, id: int) -> None:
        meta = self.d.by_id.pop(id, None)
        if meta is not None and self.d.by_name.get(meta.name) is meta:
            del self.d.by_name[meta.name]
        self.d.rows.pop(id, None)
        for key in [k for k in self.d.producers if k[0] == id]:
            del self.d.producers[key]

    def rows(self, id: int, after: int, upto: int, limit: int) -> list[Row]:
        own = self.d.rows.get(id, [])
        if not own:
            return []
        i = max(0, after + 1 - own[0].n)
        out: list[Row] = []
        taken = 0
        while i < len(own) and own[i].n <= upto:
            if out and taken >= limit:
                break
            out.append(own[i])
            taken += len(own[i].data)
            i += 1
        return out

    def add_row(self, id: int, row: Row) -> None:
        self.d.rows[id].append(row)

    def producer(self, id: int, producer: str) -> ProducerState | None:
        return self.d.producers.get((id, producer))

    def set_producer(self, id: int, producer: str, state: ProducerState) -> None:
        self.d.producers[(id, producer)] = state

    def expiring(self, now: float) -> list[Meta]:
        return [
            msgspec.structs.replace(m)
            for m in self.d.by_id.values()
            if m.ttl is not None or m.expires_at is not None
        ]


class MemoryStreams(AsyncResource):
    """A `StreamStore` in memory: `async with MemoryStreams() as store:`.

    `sweep_interval` is how often expired streams are removed (an expired
    stream already reads as deleted before that).
    """

    def __init__(self, *, sweep_interval: float = 1.0) -> None:
        self.sweep_interval = sweep_interval
        self.watchers = Watchers()
        self._data = _Data()
        self._tx = _MemoryTx(self._data)
        self._touched: dict[int, float] = {}
        self._open = False
        self._background = _local.Background("wakeful-memory-streams")

    async def open(self) -> None:
        if self._open:
            return
        self.watchers = Watchers()
        self._open = True
        await self._background.start(self._sweep_loop)

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self.watchers.close()
        await self._background.stop()

    def _check(self) -> None:
        if not self._open:
            raise _local.closed_error("MemoryStreams")

    def _last_touch(self, id: int) -> float:
        return self._touched.get(id, 0.0)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            changed = streamlog.sweep(self._tx, time.time(), self._last_touch)
            self.watchers.notify(changed)
            for id in [id for id in self._touched if id not in self._data.by_id]:
                del self._touched[id]

    async def create(self, name: str, spec: CreateSpec) -> CreateResult:
        self._check()
        result = streamlog.create(self._tx, name, spec, time.time(), self._last_touch)
        if result.created:
            self.watchers.notify([name])
        return result

    async def append(self, name: str, spec: AppendSpec) -> AppendOutcome:
        self._check()
        outcome, changed = streamlog.append(self._tx, name, spec, time.time(), self._last_touch)
        if changed:
            self.watchers.notify([name])
        return outcome

    async def read(
        self, name: str, after: Offset | Literal["now"] | None, limit: int
    ) -> ReadResult:
        self._check()
        now = time.time()
        result = streamlog.read(self._tx, name, after, limit, now, self._last_touch)
        if result.info.ttl is not None:
            self._touched[result.info.id] = now
        return result

    async def info(self, name: str) -> StreamInfo:
        self._check()
        return streamlog.info(self._tx, name, time.time(), self._last_touch)

    async def delete(self, name: str) -> None:
        self._check()
        changed = streamlog.delete(self._tx, name, time.time(), self._last_touch)
        self.watchers.notify(changed)
