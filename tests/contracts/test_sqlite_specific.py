"""What only the SQLite store has: its file, its settings, its schema version."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from wakeful.runtime import Envelope, StoreClosed
from wakeful.transports.sqlite import SQLiteStore


async def test_settings_are_checked_and_full_sync_works(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous='SOMETIMES'; use one of OFF, NORMAL"):
        SQLiteStore(tmp_path / "x.db", synchronous="sometimes")
    async with SQLiteStore(tmp_path / "full.db", synchronous="full") as store:
        offset = await store.send(Envelope(address="/counter/a", payload=1))
        assert [i.offset for i in await store.inbox("/counter/a")] == [offset]
    mode = sqlite3.connect(tmp_path / "full.db").execute("PRAGMA journal_mode").fetchone()
    assert mode == ("wal",)


async def test_a_file_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    async with SQLiteStore(path):
        pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    with pytest.raises(StoreClosed, match="has schema version 1; this wakeful reads version 2"):
        async with SQLiteStore(path):
            pass
