"""Shared fixtures: stores, parametrized so every behaviour test runs on each backend.

A new backend joins by adding its name to STORES and a branch to `make_store`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from wakeful.runtime import EventStore
from wakeful.transports.memory import MemoryStore
from wakeful.transports.sqlite import SQLiteStore

STORES = ["memory", "sqlite"]

StoreFactory = Callable[[], EventStore]


@pytest.fixture(params=STORES)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_factory(store_kind: str, tmp_path: Path) -> StoreFactory:
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
