"""The registry that `wakeful demo` serves: one entity type per thing to show.

- `chat` (classic): answers a message by streaming text, word by word.
- `pipeline` (durable): three steps, each committed before the next.
- `ops` (durable): a tool call that waits for an approval.
- `research` (classic): spawns workers; each one's completion wakes it.
- `worker` (classic): a child that does a little work.
- `reminder` (classic): sets a timer; the timer wakes it a second later.

Serve it yourself with `wakeful serve --app wakeful.transports.demo:registry`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from wakeful.runtime import Context, Registry, Wake

registry = Registry()

PAUSE = 0.05
"""Seconds between streamed words and between steps, so the live view can follow."""


def _text(payload: Any) -> str:
    if isinstance(payload, dict):
        return str(payload.get("text", payload))
    return str(payload)


@registry.entity("chat")
async def chat(ctx: Context, wake: Wake) -> object:
    said = _text(wake.payload)
    stats = ctx.state["stats"]
    stats["messages"] = stats.get("messages", 0) + 1
    reply = f"You said {said!r}. This is message {stats['messages']} of this conversation."
    for word in reply.split(" "):
        ctx.emit_text(word + " ")
        await asyncio.sleep(PAUSE)
    return reply


async def _work(name: str, value: Any) -> dict[str, Any]:
    await asyncio.sleep(PAUSE * 4)
    return {"step": name, "input": value}


@registry.entity("pipeline", mode="durable")
async def pipeline(ctx: Context, wake: Wake) -> object:
    fetched = await ctx.step("fetch", _work, "fetch", wake.payload)
    analysed = await ctx.step("analyse", _work, "analyse", fetched["step"])
    report = await ctx.step("report", _work, "report", analysed["step"])
    ctx.state["reports"][ctx.run] = report
    return {"steps": ["fetch", "analyse", "report"], "report": report}


def clear_cache(region: str) -> str:
    return f"cache of {region} cleared"


@registry.entity("ops", mode="durable")
async def ops(ctx: Context, wake: Wake) -> object:
    region = (wake.payload or {}).get("region", "eu") if isinstance(wake.payload, dict) else "eu"
    result = await ctx.tool_call(
        f"clear-{region}",
        "clear_cache",
        clear_cache,
        {"region": region},
        requires_approval=True,
        approval_timeout=3600,
    )
    return {"tool": "clear_cache", "status": result.status, "result": result.result}


@registry.entity("worker")
async def worker(ctx: Context, wake: Wake) -> object:
    await asyncio.sleep(PAUSE * 2)
    topic = _text(wake.payload)
    return f"notes on {topic}"


@registry.entity("research")
async def research(ctx: Context, wake: Wake) -> object:
    progress = ctx.state["progress"]
    if wake.kind == "message":
        topics = (wake.payload or {}).get("topics", ["a", "b", "c"])
        for i, topic in enumerate(topics):
            ctx.spawn("worker", f"{ctx.id}-{i}", {"text": topic})
        progress["waiting"] = len(topics)
        return {"spawned": len(topics)}
    if wake.kind == "child":
        progress["waiting"] = progress.get("waiting", 1) - 1
        notes = ctx.state["notes"]
        notes[wake.payload["address"]] = wake.payload["result"]
        if progress["waiting"] == 0:
            summary = "; ".join(str(v) for v in notes.values())
            ctx.emit_text(f"all workers done: {summary}")
            return {"summary": summary}
        return {"waiting": progress["waiting"]}
    return None


@registry.entity("reminder")
async def reminder(ctx: Context, wake: Wake) -> object:
    if wake.kind == "message":
        after = float((wake.payload or {}).get("after", 1.0))
        ctx.set_timer("remind", after=after, payload=wake.payload)
        return {"armed": after}
    if wake.kind == "timer":
        ctx.emit_text(f"reminder: {_text(wake.payload)}")
        return {"fired": wake.name}
    return None
