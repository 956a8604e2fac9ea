"""Effectively once across a real crash: a worker process SIGKILLed between its handler and
its commit, or right after the commit, then restarted on the same SQLite file."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from wakeful.transports.sqlite import SQLiteStore

WORKER = Path(__file__).with_name("crash_worker.py")
N, K = 30, 17


def run_worker(db: Path, log: Path, point: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(WORKER), str(db), str(log), point, str(N), str(K)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("point", ["handler", "after-commit"])
async def test_sigkill_then_restart_processes_every_message_once(
    tmp_path: Path, point: str
) -> None:
    db, log = tmp_path / "crash.db", tmp_path / "invocations.log"
    first = await asyncio.to_thread(run_worker, db, log, point)
    assert first.returncode == -signal.SIGKILL, first.stderr
    second = await asyncio.to_thread(run_worker, db, log, point)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "done"

    invocations = Counter(int(line) for line in log.read_text().split())
    # killed inside the handler: that turn never committed, so it ran again;
    # killed after the commit: it had landed, so it never ran again.
    expected_k = 2 if point == "handler" else 1
    assert invocations == Counter({i: expected_k if i == K else 1 for i in range(N)})

    async with SQLiteStore(db) as store:
        events = await store.read("/counter/c")
        assert await store.inbox("/counter/c") == []
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    received = [e.data.payload["i"] for e in events if e.kind == "message.received"]
    assert sorted(received) == list(range(N))
    assert len({e.data.inbox for e in events if e.kind == "message.received"}) == N
    completed = [e for e in events if e.kind == "run.completed"]
    assert len(completed) == N
    assert completed[-1].data.result == sum(range(N))
    starts = [e.run for e in events if e.kind == "run.started"]
    assert len(starts) == len(set(starts)) == N
