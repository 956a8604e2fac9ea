"""wakeful's main job on the embedded SQLite default: entities, wakes, children and a timer.

Run it with `python examples/quickstart.py [path/to/wakeful.db]`; it prints each
event of the coordinator as it commits, then the final state. Run it again and
the counters go on from where they were: the state is rebuilt from the file.
"""

from __future__ import annotations

import asyncio
import sys

from wakeful.runtime import Context, Registry, Runtime, Wake
from wakeful.transports.sqlite import SQLiteStore

registry = Registry()


@registry.entity("counter")
async def counter(ctx: Context, wake: Wake) -> object:
    totals = ctx.state["totals"]
    if wake.kind == "message":
        totals["n"] = totals.get("n", 0) + wake.payload["add"]
    return totals.get("n", 0)


@registry.entity("coordinator")
async def coordinator(ctx: Context, wake: Wake) -> object:
    progress = ctx.state["progress"]
    if wake.kind == "message":  # fan out to children, remind ourselves in 100 ms
        for i in range(wake.payload["children"]):
            ctx.spawn("counter", f"worker-{i}", {"add": i + 1})
        progress["waiting"] = wake.payload["children"]
        ctx.set_timer("report", after=0.1)
    elif wake.kind == "child":  # a child's run ended: its result wakes us
        progress["waiting"] = progress["waiting"] - 1
        progress["sum"] = progress.get("sum", 0) + wake.payload["result"]
    elif wake.kind == "timer":
        progress["reported"] = True
    return dict(progress)


async def main(path: str) -> dict[str, object]:
    async with Runtime(registry, SQLiteStore(path)) as rt:
        await rt.send("/coordinator/main", {"children": 3})
        await rt.idle()
        await asyncio.sleep(0.15)  # let the timer come due
        await rt.idle()
        for event in await rt.read("/coordinator/main"):
            print(f"{event.offset}  seq={event.seq:<3} {event.kind:<18} {event.data}")
        state = await rt.state("/coordinator/main")
        print("progress:", state["progress"])
        return state["progress"]


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "wakeful.db"))
