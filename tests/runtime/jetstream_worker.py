"""A worker process for the multi-worker JetStream tests.

    python jetstream_worker.py URL NAME OWNERSHIP SIDE_DB

Serves two entity types: `job` (durable, three steps that take a few ms, each
execution recorded in the SIDE_DB SQLite file with the worker's NAME) and `tick`
(classic, a turn that commits at once). Prints `held p,q,...` whenever the
partitions it holds change. Stops cleanly on SIGTERM.
"""

from __future__ import annotations

import asyncio
import random
import signal
import sqlite3
import sys

from wakeful.runtime import Context, Registry, Runtime, Wake
from wakeful.transports.jetstream import JetStreamStore

url, name, ownership, side_path = sys.argv[1:5]
PARTITIONS = 12

side = sqlite3.connect(side_path, isolation_level=None, timeout=30)  # made by the test

registry = Registry()


@registry.entity("job", mode="durable")
async def job(ctx: Context, wake: Wake) -> object:
    total = 0
    for i in range(3):

        async def effect(i: int = i) -> int:
            await asyncio.sleep(random.uniform(0.002, 0.02))
            side.execute("INSERT INTO effects VALUES (?, ?)", (ctx.step_key, name))
            return i + wake.payload["n"]

        total += await ctx.step(f"step-{i}", effect)
    return total


@registry.entity("tick")
async def tick(ctx: Context, wake: Wake) -> object:
    ctx.state["seen"][str(wake.payload["n"])] = name
    return wake.payload["n"]


async def main() -> None:
    store = JetStreamStore(url, partitions=PARTITIONS, ownership=ownership, worker=name)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Runtime(registry, store):
        shown = None
        while not stop.is_set():
            held = store.held_partitions()
            if held != shown:
                print("held " + ",".join(map(str, held)), flush=True)
                shown = held
            try:
                async with asyncio.timeout(0.1):
                    await stop.wait()
            except TimeoutError:
                pass
    print("stopped", flush=True)


asyncio.run(main())
