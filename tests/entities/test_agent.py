"""The agent loop on real stores: text, tools, approvals, bad tool calls, limits."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from wakeful.entities import Agent, Reply, ScriptedModel, ToolCall, tool
from wakeful.runtime import Registry, Runtime

from ..conftest import StoreFactory

pytestmark = pytest.mark.parametrize("store_kind", ["memory", "sqlite"], indirect=True)

calls: list[str] = []


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    calls.append(f"add({a},{b})")
    return a + b


@tool(requires_approval=True)
async def wipe(disk: str) -> str:
    """Wipe a disk."""
    calls.append(f"wipe({disk})")
    return f"{disk} wiped"


def make(model: ScriptedModel, mode: str = "classic", **kw: Any) -> Registry:
    registry = Registry()
    Agent("assistant", model=model, tools=[add, wipe], mode=mode, **kw).register(registry)
    return registry


async def finished(rt: Runtime, address: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            await rt.idle()
            runs = [r for r in await rt.runs(address=address, status=None)]
            if runs and runs[0].status in ("completed", "failed", "cancelled"):
                state = await rt.state(address)
                return {"record": runs[0], "result": state["runs"][runs[0].run].get("result")}
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_a_reply_streams_text_and_the_conversation_is_the_state(
    store_factory: StoreFactory, mode: str
) -> None:
    model = ScriptedModel(["Hello there, human."])
    async with Runtime(make(model, mode), store_factory()) as rt:
        await rt.send("/assistant/a1", {"text": "hi"})
        done = await finished(rt, "/assistant/a1")
        assert done["result"] == {"text": "Hello there, human.", "stop_reason": "end_turn"}
        assert done["record"].reason == "end_turn"
        assert (await rt.state("/assistant/a1"))["runs"][done["record"].run]["reason"] == "end_turn"
        events = await rt.read("/assistant/a1")
        deltas = "".join(e.data.text for e in events if e.kind == "text.delta")
        assert deltas == "Hello there, human."
        conversation = (await rt.state("/assistant/a1"))["conversation"]
        assert [m["role"] for m in conversation.values()] == ["user", "assistant"]
        assert model.seen[0][-1] == {"role": "user", "content": "hi"}


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_tool_calls_loop_until_the_model_stops(
    store_factory: StoreFactory, mode: str
) -> None:
    calls.clear()
    model = ScriptedModel(
        [
            Reply(tool_calls=[ToolCall("c1", "add", {"a": 2, "b": 3})]),
            lambda messages: Reply(text=f"the sum is {messages[-1]['content']}"),
        ]
    )
    async with Runtime(make(model, mode), store_factory()) as rt:
        await rt.send("/assistant/a2", "what is 2+3?")
        done = await finished(rt, "/assistant/a2")
        assert done["result"] == {"text": "the sum is 5", "stop_reason": "end_turn"}
        kinds = [e.kind for e in await rt.read("/assistant/a2")]
        assert kinds.index("tool.called") < kinds.index("tool.result")
        assert calls == ["add(2,3)"]


async def test_an_approval_suspends_a_durable_agent_across_a_restart(
    store_factory: StoreFactory,
) -> None:
    calls.clear()
    model = ScriptedModel(
        [Reply(tool_calls=[ToolCall("w1", "wipe", '{"disk": "sdb"}')]), "done wiping"]
    )
    async with Runtime(make(model, "durable"), store_factory()) as rt:
        await rt.send("/assistant/a3", "wipe sdb")
        await rt.idle()
        [run] = await rt.runs(address="/assistant/a3")
        assert (run.status, run.reason, run.waiting_for) == (
            "suspended",
            "requires_approval",
            "approval:w1",
        )
    async with Runtime(make(model, "durable"), store_factory()) as rt:
        await rt.approve("/assistant/a3", "w1", True)
        done = await finished(rt, "/assistant/a3")
        assert done["result"]["text"] == "done wiping"
    assert calls == ["wipe(sdb)"]
    assert model.calls == 2  # the first model step was not asked again after the restart


async def test_a_denied_call_and_a_bad_call_go_back_to_the_model(
    store_factory: StoreFactory,
) -> None:
    calls.clear()
    model = ScriptedModel(
        [
            Reply(
                tool_calls=[
                    ToolCall("x1", "launch", {}),
                    ToolCall("x2", "add", {"a": "two", "b": 1}),
                    ToolCall("x3", "wipe", {"disk": "sda"}),
                ]
            ),
            lambda messages: Reply(text=" | ".join(m["content"] for m in messages[-3:])),
        ]
    )
    async with Runtime(make(model), store_factory()) as rt:
        await rt.send("/assistant/a4", "go")

        async def pending() -> bool:
            approvals = (await rt.state("/assistant/a4"))["approvals"]
            return approvals.get("x3", {}).get("status") == "pending"

        async with asyncio.timeout(10):
            while not await pending():
                await asyncio.sleep(0.02)
        await rt.approve("/assistant/a4", "x3", False, "not that disk")
        done = await finished(rt, "/assistant/a4")
        text = done["result"]["text"]
        assert "no such tool; the tools are: add, wipe" in text
        assert "Expected `int`, got `str` - at `$.a`" in text
        assert "denied: not that disk" in text
        results = [e.data for e in await rt.read("/assistant/a4") if e.kind == "tool.result"]
        assert [r.status for r in results] == ["error", "error", "denied"]
    assert calls == []


async def test_limits_and_model_failures_are_stop_reasons(store_factory: StoreFactory) -> None:
    calls.clear()
    looping = ScriptedModel(
        [Reply(tool_calls=[ToolCall("l", "add", {"a": 1, "b": 1})])], repeat=True
    )
    registry = make(looping, max_iterations=3)
    broken = ScriptedModel(["only one reply"])
    Agent("fragile", model=broken).register(registry)
    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/assistant/a5", "loop")
        done = await finished(rt, "/assistant/a5")
        assert done["result"] == {"text": "", "stop_reason": "max_steps"}
        assert done["record"].reason == "max_steps"
        assert looping.calls == 3
        assert calls == ["add(1,1)"] * 3  # a repeated call id still runs the tool each time
        await rt.send("/fragile/f1", "one")
        await rt.send("/fragile/f1", "two")
        await rt.idle()
        runs = await rt.runs(address="/fragile/f1", status=None)
        assert sorted((r.status, r.reason) for r in runs) == [
            ("completed", "end_turn"),
            ("failed", "llm_api_error"),
        ]
        failed = next(r for r in runs if r.status == "failed")
        assert "replies are used up" in (failed.error or "")


async def test_a_call_id_reused_in_a_later_turn_gets_a_fresh_one(
    store_factory: StoreFactory,
) -> None:
    def call_add(messages: list[dict[str, Any]]) -> Reply:
        return Reply(tool_calls=[ToolCall("call_0", "add", {"a": 1, "b": 2})])

    script: list[Any] = [call_add, "three", call_add, "three again"]
    model = ScriptedModel(script)
    async with Runtime(make(model), store_factory()) as rt:
        for text in ("first", "second"):
            await rt.send("/assistant/reuse", {"text": text})
            done = await finished(rt, "/assistant/reuse")
            assert done["record"].status == "completed"
        state = await rt.state("/assistant/reuse")
        ids = list(state["tool_calls"])
        assert ids[0] == "call_0" and ids[1].startswith("call-") and len(ids) == 2
        assert all(c["status"] == "success" for c in state["tool_calls"].values())
