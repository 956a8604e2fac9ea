"""A worker process for the crash tests: it sends N keyed messages to one counter and
processes them, and SIGKILLs itself once at a chosen point.

    python crash_worker.py DB LOG POINT N K

POINT is `handler` (inside the handler, before its run's end commits) or
`after-commit` (right after the commit that ends message K's run landed) or
`none`. The handler appends the message number to LOG on each invocation, so
the test can count executions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from wakeful.runtime import Commit, Context, Event, Registry, Runtime, Wake
from wakeful.transports.sqlite import SQLiteStore

db, log_path, point, n, k = sys.argv[1], Path(sys.argv[2]), sys.argv[3], *map(int, sys.argv[4:6])
marker = Path(str(log_path) + ".killed")


def die_once() -> None:
    if not marker.exists():
        marker.write_text("killed")
        os.kill(os.getpid(), signal.SIGKILL)


registry = Registry()


@registry.entity("counter")
async def counter(ctx: Context, wake: Wake) -> object:
    i = wake.payload["i"]
    with log_path.open("a") as log:  # noqa: ASYNC230 - must be on disk before a kill
        log.write(f"{i}\n")
    totals = ctx.state["totals"]
    totals["n"] = totals.get("n", 0) + i
    totals["count"] = totals.get("count", 0) + 1
    totals["last"] = i
    if point == "handler" and i == k:
        die_once()
    return totals["n"]


class KillingStore(SQLiteStore):
    async def commit(self, commit: Commit) -> list[Event]:
        events = await super().commit(commit)
        # the commit that ends message k's run (its state change rides with run.completed)
        if point == "after-commit" and any(
            e.kind == "state.set" and e.data.key == "last" and e.data.value == k for e in events
        ):
            die_once()
        return events


async def main() -> None:
    async with Runtime(registry, KillingStore(db)) as rt:
        for i in range(n):
            await rt.send("/counter/c", {"i": i}, key=f"m{i}")
        await rt.idle()
    print("done")


asyncio.run(main())
