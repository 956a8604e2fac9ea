"""A durable run that asks for an approval, survives a restart, and resumes.

Run it with `python examples/durable_approval.py [path/to/approvals.db]`. The
first runtime starts the run: a step, then an approval request, and the run is
suspended. That runtime stops, as if the process had died. A second runtime on
the same file approves the call, and the run resumes where it left off: the
recorded step is not run again.
"""

from __future__ import annotations

import asyncio
import sys

from wakeful.runtime import Context, Registry, Runtime, Wake
from wakeful.transports.sqlite import SQLiteStore

registry = Registry()
executed: list[str] = []


def plan_cleanup(path: str) -> dict[str, object]:
    executed.append("plan")
    return {"path": path, "files": 3}


def delete_files(plan: dict[str, object]) -> str:
    executed.append("delete")
    return f"deleted {plan['files']} files under {plan['path']}"


@registry.entity("janitor", mode="durable")
async def janitor(ctx: Context, wake: Wake) -> object:
    plan = await ctx.step("plan", plan_cleanup, wake.payload["path"])
    decision = await ctx.approval(
        f"cleanup-{ctx.run}", tool="delete_files", args=plan, timeout=3600
    )
    if not decision.approved:
        return f"not deleted: {decision.reason}"
    return await ctx.step("delete", delete_files, plan)


async def main(path: str) -> str:
    async with Runtime(registry, SQLiteStore(path)) as rt:
        await rt.send("/janitor/tmp", {"path": "/tmp/cache"})
        await rt.idle()
        [run] = await rt.runs(address="/janitor/tmp")
        print(f"{run.run}: {run.status}, waiting for {run.waiting_for}")
    # the process could have died here; the suspension is in the file
    async with Runtime(registry, SQLiteStore(path)) as rt:
        approvals = (await rt.state("/janitor/tmp"))["approvals"]
        [call] = [c for c, a in approvals.items() if a["status"] == "pending"]
        await rt.approve("/janitor/tmp", call, approved=True, reason="ok by ops")
        await rt.idle()
        record = await rt.run(run.run)
        events = await rt.read("/janitor/tmp")
        result = next(e.data.result for e in reversed(events) if e.kind == "run.completed")
        print(f"{record.run}: {record.status}: {result}")
        print("steps executed:", executed)
        return str(result)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "approvals.db"))
