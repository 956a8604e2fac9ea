"""An agent with tools: one needs an approval, and the durable run survives a restart.

Run it with `python examples/agent.py [path/to/agent.db]`. The model is a
`ScriptedModel` (offline, deterministic); set `OPENAI_API_KEY` (and optionally
`OPENAI_BASE_URL`, `OPENAI_MODEL`) to run the same agent on a real model.
"""

from __future__ import annotations

import asyncio
import os
import sys

from wakeful.entities import Agent, Model, OpenAIChat, Reply, ScriptedModel, ToolCall, tool
from wakeful.runtime import Registry, Runtime
from wakeful.transports.sqlite import SQLiteStore

disk = {"report.txt": "Q3 numbers", "tmp.log": "noise"}


@tool
def list_files() -> list[str]:
    """List the files on the disk."""
    return sorted(disk)


@tool(requires_approval=True)
def delete_file(path: str) -> str:
    """Delete a file from the disk."""
    disk.pop(path)
    return f"deleted {path}"


def model() -> Model:
    if os.environ.get("OPENAI_API_KEY"):
        return OpenAIChat(os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    return ScriptedModel(
        [
            Reply(tool_calls=[ToolCall("c1", "list_files", {})]),
            Reply(
                text="I will remove the log.",
                tool_calls=[ToolCall("c2", "delete_file", {"path": "tmp.log"})],
            ),
            lambda messages: Reply(text=f"Done: {messages[-1]['content']}."),
        ]
    )


registry = Registry()
Agent(
    "janitor",
    model=model(),
    instructions="You keep the disk tidy. Delete only files that are clearly junk.",
    tools=[list_files, delete_file],
    mode="durable",
).register(registry)


async def main(path: str) -> None:
    async with Runtime(registry, SQLiteStore(path)) as rt:
        await rt.send("/janitor/j1", "Tidy up the disk, please.")
        await rt.idle()
        [run] = await rt.runs(address="/janitor/j1")
        print(f"{run.status}, waiting for {run.waiting_for}")
    # the process could stop here: the durable run waits in the file
    async with Runtime(registry, SQLiteStore(path)) as rt:
        decision = await rt.approve("/janitor/j1", "c2", approved=True, reason="ok")
        print("approved:", decision.approved)
        await rt.idle()
        record = await rt.run(run.run)
        result = (await rt.state("/janitor/j1"))["runs"][run.run]["result"]
        print(f"{record.status} ({record.reason}): {result['text']}")
        print("disk:", sorted(disk))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "agent.db"))
