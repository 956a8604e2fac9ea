"""Shared fixtures: stores, parametrized so every behaviour test runs on each backend.

A new backend joins with a branch in `store_factory` and its name in STORES (and in
the contract suite's list, tests/contracts/conftest.py).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from wakeful.runtime import EventStore
from wakeful.transports.memory import MemoryStore
from wakeful.transports.sqlite import SQLiteStore

# The runtime suites run on every store, JetStream on a real nats-server started per
# test; narrow them with e.g. WAKEFUL_TEST_STORES=sqlite. The contract suite always
# includes JetStream.
STORES = os.environ.get("WAKEFUL_TEST_STORES", "memory,sqlite,jetstream").split(",")

StoreFactory = Callable[[], EventStore]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def store_factory(store_kind: str, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    if store_kind == "jetstream":
        from wakeful.transports.jetstream.store import JetStreamStore

        from .nats_fixtures import NatsServer

        async with NatsServer(tmp_path / "nats") as server:
            yield lambda: JetStreamStore(server.url, partitions=4, poll=0.2)
        return
    yield _local_factory(store_kind, tmp_path)


def _local_factory(store_kind: str, tmp_path: Path) -> StoreFactory:
    """Makes a store on the same data each time it is called: a 'restart'.

    For memory that is the same object (closed and reopened); for SQLite a new
    store object on the same file.
    """
    memory = MemoryStore()

    def make() -> EventStore:
        if store_kind == "memory":
            return memory
        return SQLiteStore(tmp_path / "wakeful.db", poll=0.2)

    return make


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[EventStore]:
    s = store_factory()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
