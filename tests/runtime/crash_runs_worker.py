"""A worker process for the run crash test: durable jobs of four steps and classic jobs,
killed at random moments by the test and restarted on the same files.

    python crash_runs_worker.py DB SIDE DURABLE CLASSIC CALLERS

Each durable step records its execution in the SIDE database, keyed by ctx.step_key,
with the time it ran; the test compares those with the step.completed events.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import sys
import time

from wakeful.runtime import Context, Registry, Runtime, Wake
from wakeful.transports.sqlite import SQLiteStore

db, side_path = sys.argv[1], sys.argv[2]
durable_jobs, classic_jobs, callers = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

side = sqlite3.connect(side_path, isolation_level=None)
side.execute("PRAGMA journal_mode = WAL")
side.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT, at REAL)")

registry = Registry()


@registry.entity("job", mode="durable")
async def job(ctx: Context, wake: Wake) -> object:
    total = 0
    for i in range(4):

        async def effect(i: int = i) -> int:
            await asyncio.sleep(random.uniform(0.001, 0.01))
            side.execute("INSERT INTO effects VALUES (?, ?)", (ctx.step_key, time.time()))
            return i + wake.payload["n"]

        total += await ctx.step(f"step-{i}", effect)
    return total


@registry.entity("chat")
async def chat(ctx: Context, wake: Wake) -> object:
    for i in range(3):
        ctx.emit_text(f"part {i} ")
        await ctx.step(f"think-{i}", asyncio.sleep, 0.02)
    return wake.payload["n"]


@registry.entity("sub", mode="durable")
async def sub(ctx: Context, wake: Wake) -> object:
    n = await ctx.step("take", lambda: wake.payload["n"])
    await ctx.step("nap", asyncio.sleep, random.uniform(0.001, 0.01))
    return 2 * n


@registry.entity("caller", mode="durable")
async def caller(ctx: Context, wake: Wake) -> object:
    """One call, then two concurrent ones, each to a child of its own."""
    n = wake.payload["n"]
    first = await ctx.call("sub", f"s{n}-a", {"n": n})
    pair = await asyncio.gather(
        ctx.call("sub", f"s{n}-b", {"n": n + 1}), ctx.call("sub", f"s{n}-c", {"n": n + 2})
    )
    return first + sum(pair)


async def main() -> None:
    async with Runtime(registry, SQLiteStore(db)) as rt:
        for n in range(durable_jobs):
            await rt.send(f"/job/j{n % 8}", {"n": n}, key=f"job-{n}")
        for n in range(classic_jobs):
            await rt.send(f"/chat/c{n % 8}", {"n": n}, key=f"chat-{n}")
        for n in range(callers):
            await rt.send(f"/caller/k{n % 8}", {"n": n}, key=f"caller-{n}")
        print("ready", flush=True)
        await rt.idle()
    print("done", flush=True)


asyncio.run(main())
