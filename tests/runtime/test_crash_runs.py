"""Durable runs survive SIGKILL at random moments; classic runs in flight are closed as
worker_lost; every step is recorded once and no recorded step runs again; a durable
`ctx.call` messages its child once and gets its answer."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from wakeful.transports.sqlite import SQLiteStore

from .invariants import check_all_ended

WORKER = Path(__file__).with_name("crash_runs_worker.py")
DURABLE, CLASSIC, CALLERS, KILLS = 480, 120, 40, 20


def start(db: Path, side: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            str(db),
            str(side),
            str(DURABLE),
            str(CLASSIC),
            str(CALLERS),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def kill_after_ready(db: Path, side: Path, delay: float) -> str:
    proc = start(db, side)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line == "ready":
        import time

        time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    rest, err = proc.communicate(timeout=30)
    return line + rest + err


async def test_sigkill_twenty_times_then_everything_completes_once(tmp_path: Path) -> None:
    db, side = tmp_path / "runs.db", tmp_path / "side.db"
    rng = random.Random(7)
    for _ in range(KILLS):
        await asyncio.to_thread(kill_after_ready, db, side, rng.uniform(0.02, 0.15))
    final = start(db, side)
    out, err = await asyncio.to_thread(final.communicate, timeout=120)
    assert final.returncode == 0, err
    assert out.split() == ["ready", "done"]

    async with SQLiteStore(db) as store:
        streams = {
            f"/{t}/{i}": await store.read(f"/{t}/{i}")
            for t in ("job", "chat", "caller", "sub")
            for i in await store.entities(t, limit=10_000)
        }
        assert await store.runs(status="active") == []
    completed_at: dict[str, float] = {}
    resumed = sum(
        e.kind == "run.resumed" and e.data.trigger == "resume"
        for address, events in streams.items()
        for e in events
    )
    durable_done = 0
    worker_lost = 0
    classic_done = 0
    callers_done = 0
    for address, events in streams.items():
        check_all_ended(events)
        if address.startswith(("/caller/", "/sub/")):
            assert not [e for e in events if e.kind == "run.failed"], address
            if address.startswith("/sub/"):  # messaged once, answered once
                assert [e.kind for e in events].count("run.completed") == 1, address
                continue
            for e in events:
                if e.kind == "run.completed":
                    callers_done += 1
                    spawned = [x for x in events if x.kind == "child.spawned" and x.run == e.run]
                    answers = [x for x in events if x.kind == "child.finished" and x.run == e.run]
                    assert len(spawned) == len(answers) == 3, f"{address} {e.run}"
                    n = (spawned[0].data.payload or {})["n"]
                    assert e.data.result == 2 * n + 2 * (n + 1) + 2 * (n + 2)
            continue
        assert not [e for e in events if e.kind == "run.failed" and address.startswith("/job/")]
        if address.startswith("/job/"):
            durable_done += sum(e.kind == "run.completed" for e in events)
            steps = [(e.run, e.data.position) for e in events if e.kind == "step.completed"]
            assert len(steps) == len(set(steps)), f"{address}: a step recorded twice"
            per_run = defaultdict(int)
            for run, _ in steps:
                per_run[run] += 1
            assert set(per_run.values()) == {4}
            message = {e.run: e.data.inbox for e in events if e.kind == "run.started"}
            for e in events:
                if e.kind == "step.completed":
                    key = f"{address}@{message[e.run]}:{e.data.position}"
                    completed_at[key] = e.at
        else:
            classic_done += sum(e.kind == "run.completed" for e in events)
            lost = [e for e in events if e.kind == "run.failed"]
            assert all(e.data.reason == "worker_lost" for e in lost)
            worker_lost += len(lost)
    assert durable_done == DURABLE
    assert callers_done == CALLERS
    callers_resumed = sum(
        e.kind == "run.resumed" and e.data.trigger == "resume"
        for address, events in streams.items()
        if address.startswith("/caller/")
        for e in events
    )
    assert callers_resumed >= 1, "no caller was waiting for a call at any of the kills"
    assert len([a for a in streams if a.startswith("/sub/")]) == 3 * CALLERS
    assert classic_done + worker_lost == CLASSIC
    assert worker_lost >= 1, "no classic run was in flight at any of the kills"
    assert resumed >= 1, "no durable run was in flight at any of the kills"
    print(f"kills={KILLS} resumed={resumed} callers={callers_resumed} worker_lost={worker_lost}")

    executions = sqlite3.connect(side).execute("SELECT key, at FROM effects").fetchall()
    assert {key for key, _ in executions} == set(completed_at)
    for key, at in executions:
        assert at <= completed_at[key], f"step {key} ran again after its step.completed landed"
