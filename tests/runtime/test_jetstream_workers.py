"""Several worker processes on one JetStream stream (issue 4, "Many workers").

Real processes (tests/runtime/jetstream_worker.py) and a real nats-server: the
workers share the partitions evenly, one is SIGKILLed under load and the others
take its partitions over; every message is processed exactly once and every
stream stays one gap-free history. A race test forces two workers onto every
entity at once (ownership="all" in both) and still finds one history.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from wakeful.runtime import Envelope
from wakeful.transports.jetstream import JetStreamStore

from ..nats_fixtures import NatsServer
from .invariants import check_all_ended

WORKER = str(Path(__file__).with_name("jetstream_worker.py"))
PARTITIONS = 12  # as in jetstream_worker.py

pytestmark = pytest.mark.timeout(180)


class Worker:
    def __init__(self, name: str) -> None:
        self.name = name
        self.proc: asyncio.subprocess.Process | None = None
        self.held: list[int] = []
        self.history: list[tuple[float, list[int]]] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self, url: str, ownership: str, side: Path) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            WORKER,
            url,
            self.name,
            ownership,
            str(side),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        async for line in self.proc.stdout:
            text = line.decode().strip()
            if text.startswith("held"):
                parts = text.removeprefix("held").strip()
                self.held = [int(p) for p in parts.split(",")] if parts else []
                self.history.append((time.monotonic(), self.held))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            await self._reader


async def until(check, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)


async def completed_runs(store: JetStreamStore, address: str) -> int:
    return sum(1 for e in await store.read(address) if e.kind == "run.completed")


def side_db(tmp_path: Path) -> Path:
    """The file where workers record step executions (made here, before they start)."""
    path = tmp_path / "side.db"
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("CREATE TABLE effects (key TEXT, worker TEXT)")
    return path


def effects(side: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(side) as db:
        return list(db.execute("SELECT key, worker FROM effects"))


async def test_three_workers_share_partitions_and_survive_a_sigkill(tmp_path: Path) -> None:
    side = side_db(tmp_path)
    async with NatsServer(tmp_path / "nats") as server:
        workers = [Worker(f"w{i}") for i in range(3)]
        try:
            for w in workers:
                await w.start(server.url, "leases", side)

            async def spread_evenly() -> bool:
                held = [p for w in workers for p in w.held]
                return sorted(held) == list(range(PARTITIONS)) and all(
                    len(w.held) == PARTITIONS // 3 for w in workers
                )

            await until(spread_evenly, 30, "three workers to hold 4 partitions each")

            async with JetStreamStore(server.url, partitions=PARTITIONS, ownership="none") as st:
                jobs = [f"/job/j{i}" for i in range(100)]
                ticks = [f"/tick/t{i}" for i in range(100)]
                sent = 0
                victim = workers[0]
                killed_at = 0.0
                for n in range(3):
                    for address in jobs + ticks:
                        await st.send(Envelope(address=address, payload={"n": n}, key=f"m{n}"))
                        sent += 1
                        if sent == 250:  # mid-load, with runs in flight
                            victim.kill()
                            killed_at = time.monotonic()
                            orphaned = set(victim.held)
                survivors = workers[1:]

                async def taken_over() -> bool:
                    held = [p for w in survivors for p in w.held]
                    return sorted(held) == list(range(PARTITIONS))

                await until(taken_over, 20, "the survivors to take every partition")
                takeover = max(
                    t for w in survivors for t, held in w.history if orphaned & set(held)
                )
                assert takeover - killed_at <= 10.0, f"takeover took {takeover - killed_at:.1f}s"

                async def all_done() -> bool:
                    for address in jobs + ticks:
                        if await completed_runs(st, address) < 3:
                            return False
                    return True

                await until(all_done, 60, "every message to be processed")

                for address in jobs + ticks:
                    events = await st.read(address)
                    check_all_ended(events)  # no gap, no duplicate seq, every run ended once
                    received = [e for e in events if e.kind == "message.received"]
                    assert sorted(e.data.payload["n"] for e in received) == [0, 1, 2]
                    completed = [e for e in events if e.kind == "run.completed"]
                    assert len(completed) == 3, address
                    if address.startswith("/job/"):
                        steps = Counter(
                            (e.run, e.data.name) for e in events if e.kind == "step.completed"
                        )
                        assert set(steps.values()) == {1} and len(steps) == 9, address
                    else:
                        state = {e.data.key for e in events if e.kind == "state.set"}
                        assert state == {"0", "1", "2"}, address
                # A step runs twice only when the worker that first ran it died before
                # recording it: every repeated execution involves the killed worker.
                runs_of = Counter(key for key, _ in effects(side))
                for key, count in runs_of.items():
                    if count > 1:
                        by = [w for k, w in effects(side) if k == key]
                        assert victim.name in by, (key, by)
                records = await st.runs(status="active", limit=10_000)
                assert records == [], f"runs still active in the index: {records[:3]}"
                print(f"takeover after SIGKILL: {takeover - killed_at:.2f}s")
        finally:
            for w in workers:
                await w.stop()


async def test_two_workers_forced_onto_the_same_entities_keep_one_history(
    tmp_path: Path,
) -> None:
    side = side_db(tmp_path)
    async with NatsServer(tmp_path / "nats") as server:
        workers = [Worker(f"w{i}") for i in range(2)]
        try:
            for w in workers:
                await w.start(server.url, "all", side)  # both serve every partition
            await until(
                lambda: asyncio.sleep(0, all(len(w.held) == PARTITIONS for w in workers)),
                30,
                "both workers to serve every partition",
            )
            async with JetStreamStore(server.url, partitions=PARTITIONS, ownership="none") as st:
                targets = ["/tick/hot", "/job/hot"]
                for n in range(60):
                    for address in targets:
                        await st.send(Envelope(address=address, payload={"n": n}))

                async def all_done() -> bool:
                    return all([await completed_runs(st, a) >= 60 for a in targets])

                await until(all_done, 60, "both entities to process 60 messages")
                await asyncio.sleep(0.5)  # a second history would show up by now
                for address in targets:
                    events = await st.read(address)
                    check_all_ended(events)
                    received = sorted(
                        e.data.payload["n"] for e in events if e.kind == "message.received"
                    )
                    assert received == list(range(60)), address
                    assert sum(1 for e in events if e.kind == "run.completed") == 60
                    assert sum(1 for e in events if e.kind == "entity.created") == 1
        finally:
            for w in workers:
                await w.stop()
