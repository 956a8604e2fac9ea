"""Sub-agents (spawned and inline), concurrent tool calls, and the bounded context
(token budget, summaries) on real stores."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from wakeful.entities import Agent, Reply, ScriptedModel, ToolCall, tool
from wakeful.runtime import Registry, Runtime

from ..conftest import StoreFactory
from .test_agent import finished

pytestmark = pytest.mark.parametrize("store_kind", ["memory", "sqlite"], indirect=True)


def lead_and_researcher(
    mode: str, inline: bool, researcher_tools: list[Any] | None = None
) -> tuple[Registry, ScriptedModel, ScriptedModel]:
    lead_model = ScriptedModel(
        [
            Reply(
                text="Let me ask.",
                tool_calls=[ToolCall("c1", "researcher", {"task": "Capital of France?"})],
            ),
            "The answer is Paris.",
        ]
    )
    script: list[Any] = ["Paris is the capital."]
    if researcher_tools:
        script.insert(0, Reply(tool_calls=[ToolCall("w1", "wipe", {"disk": "scratch"})]))
    researcher_model = ScriptedModel(script)
    researcher = Agent(
        "researcher",
        model=researcher_model,
        description="Looks facts up.",
        tools=researcher_tools or [],
        mode=mode,
    )
    registry = Registry()
    Agent(
        "lead",
        model=lead_model,
        subagents=[researcher],
        inline_subagents=inline,
        mode=mode,
    ).register(registry)
    return registry, lead_model, researcher_model


@pytest.mark.parametrize("mode", ["classic", "durable"])
@pytest.mark.parametrize("inline", [False, True], ids=["spawned", "inline"])
async def test_a_subagent_is_a_tool_whose_result_is_its_final_text(
    store_factory: StoreFactory, mode: str, inline: bool
) -> None:
    registry, lead_model, researcher_model = lead_and_researcher(mode, inline)
    assert ("researcher" in registry) is not inline  # inline: no entity type, no entity
    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/lead/l1", {"text": "What is the capital of France?"})
        done = await finished(rt, "/lead/l1")
        assert done["result"] == {"text": "The answer is Paris.", "stop_reason": "end_turn"}
        state = await rt.state("/lead/l1")
        assert state["tool_calls"]["c1"]["status"] == "success"
        assert state["tool_calls"]["c1"]["result"] == "Paris is the capital."
        # the lead's model saw the sub-agent's answer as the tool result
        tool_message = lead_model.seen[-1][-1]
        assert tool_message == {
            "role": "tool",
            "tool_call_id": "c1",
            "content": "Paris is the capital.",
        }
        assert researcher_model.seen[0][-1] == {"role": "user", "content": "Capital of France?"}
        lead_events = await rt.read("/lead/l1")
        steps = [e.data.name for e in lead_events if e.kind == "step.completed"]
        if inline:
            assert steps == ["model", "researcher:model", "model"]
            assert not [e for e in lead_events if e.kind == "child.spawned"]
        else:
            assert steps == ["model", "model"]
            spawned = [e.data for e in lead_events if e.kind == "child.spawned"]
            assert [s.address for s in spawned] == ["/researcher/l1.c1"]
            child = await rt.state("/researcher/l1.c1")
            assert [m["role"] for m in child["conversation"].values()] == ["user", "assistant"]
            (child_run,) = await rt.runs(address="/researcher/l1.c1", status=None)
            assert (child_run.status, child_run.mode) == ("completed", mode)
        # the lead's text is streamed; an inline sub-agent's is not
        texts = "".join(e.data.text for e in lead_events if e.kind == "text.delta")
        assert texts == "Let me ask.The answer is Paris."


@pytest.mark.parametrize("inline", [False, True], ids=["spawned", "inline"])
async def test_an_approval_inside_a_durable_subagent_survives_a_restart(
    store_factory: StoreFactory, inline: bool
) -> None:
    wiped: list[str] = []

    @tool(requires_approval=True)
    def wipe(disk: str) -> str:
        """Wipe a disk."""
        wiped.append(disk)
        return f"{disk} wiped"

    registry, lead_model, researcher_model = lead_and_researcher("durable", inline, [wipe])
    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/lead/l2", {"text": "go"})
        await rt.idle()
        approvals = (await rt.state("/researcher/l2.c1" if not inline else "/lead/l2"))["approvals"]
        assert {k: a["status"] for k, a in approvals.items()} == {
            "w1" if not inline else "c1.w1": "pending"
        }
    asked = (lead_model.calls, researcher_model.calls)
    registry, lead_model, researcher_model = lead_and_researcher("durable", inline, [wipe])
    async with Runtime(registry, store_factory()) as rt:
        where = "/researcher/l2.c1" if not inline else "/lead/l2"
        await rt.approve(where, "w1" if not inline else "c1.w1", approved=True)
        done = await finished(rt, "/lead/l2")
        assert done["result"]["text"] == "The answer is Paris."
        # after the restart: no model step that was recorded is asked again
        assert (lead_model.calls, researcher_model.calls) == (1, 1)
        assert asked == (1, 1)
        lead_events = await rt.read("/lead/l2")
        assert [e.kind for e in lead_events].count("run.started") == 1
    assert wiped == ["scratch"]


async def test_tool_calls_of_one_response_run_concurrently(store_factory: StoreFactory) -> None:
    go = asyncio.Event()

    @tool
    async def wait_for_go() -> str:
        """Wait until `give_go` ran."""
        async with asyncio.timeout(5):
            await go.wait()
        return "went"

    @tool
    async def give_go() -> str:
        """Let `wait_for_go` go on."""
        go.set()
        return "given"

    model = ScriptedModel(
        [
            Reply(tool_calls=[ToolCall("a", "wait_for_go", {}), ToolCall("b", "give_go", {})]),
            "both done",
        ]
    )
    registry = Registry()
    Agent("pair", model=model, tools=[wait_for_go, give_go], mode="durable").register(registry)
    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/pair/p", {"text": "go"})
        done = await finished(rt, "/pair/p")
        assert done["result"]["text"] == "both done"
        # the first call could only finish because the second ran beside it
        tools = [m for m in model.seen[-1] if m["role"] == "tool"]
        assert [(m["tool_call_id"], m["content"]) for m in tools] == [
            ("a", "went"),
            ("b", "given"),
        ]


async def test_parallel_calls_to_spawned_subagents(store_factory: StoreFactory) -> None:
    workers = [
        Agent(f"w{n}", model=ScriptedModel([f"answer {n}"], delay=0.01), mode="durable")
        for n in range(3)
    ]
    lead = ScriptedModel(
        [
            Reply(tool_calls=[ToolCall(f"c{n}", f"w{n}", {"task": f"q{n}"}) for n in range(3)]),
            "merged",
        ]
    )
    registry = Registry()
    Agent("boss", model=lead, subagents=workers, mode="durable").register(registry)
    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/boss/b", {"text": "fan out"})
        done = await finished(rt, "/boss/b")
        assert done["result"]["text"] == "merged"
        tools = [m["content"] for m in lead.seen[-1] if m["role"] == "tool"]
        assert tools == ["answer 0", "answer 1", "answer 2"]
        events = await rt.read("/boss/b")
        spawned = [e.seq for e in events if e.kind == "child.spawned"]
        first_answer = min(e.seq for e in events if e.kind == "child.finished")
        assert len(spawned) == 3 and max(spawned) < first_answer  # all asked before any answer


async def test_a_bad_subagent_call_goes_back_to_the_model(store_factory: StoreFactory) -> None:
    researcher = Agent("researcher", model=ScriptedModel(["never asked"]))
    lead = ScriptedModel(
        [Reply(tool_calls=[ToolCall("c1", "researcher", {"question": "x"})]), "sorry"]
    )
    registry = Registry()
    Agent("lead", model=lead, subagents=[researcher]).register(registry)
    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/lead/l", {"text": "hi"})
        await finished(rt, "/lead/l")
        content = lead.seen[-1][-1]["content"]
        assert content == "error: tool 'researcher': give the sub-agent a non-empty string `task`"
        assert researcher.model.calls == 0  # type: ignore[attr-defined]


async def test_token_budget_and_summaries_bound_what_the_model_sees(
    store_factory: StoreFactory,
) -> None:
    model = ScriptedModel(["ok " * 20], repeat=True)
    summaries = ScriptedModel(["SUMMARY-OF-OLD-TURNS"], repeat=True)
    registry = Registry()
    Agent(
        "chat",
        model=model,
        instructions="Be brief.",
        max_messages=4,
        max_tokens=40,
        summarize=True,
        summary_model=summaries,
    ).register(registry)
    async with Runtime(registry, store_factory()) as rt:
        for n in range(5):
            await rt.send("/chat/c", {"text": f"message number {n}"})
            await finished(rt, "/chat/c")
        state = await rt.state("/chat/c")
        assert len(state["conversation"]) == 10  # the stream and the state keep everything
        # 5 user messages + 4 replies before the 5th: the window holds 4 of 9, and a
        # summary was made once half a window (2 messages) had fallen out
        assert summaries.calls == 2
        assert state["memory"]["summary"] == "SUMMARY-OF-OLD-TURNS"
        assert state["memory"]["summary_upto"] == 5
        seen = model.seen[-1]
        assert seen[0]["role"] == "system"
        assert seen[0]["content"].startswith("Be brief.\n\nSummary of the earlier conversation:")
        assert "SUMMARY-OF-OLD-TURNS" in seen[0]["content"]
        # the token budget (40, about 160 characters) keeps fewer than max_messages
        assert seen[1:] == [{"role": "user", "content": "message number 4"}]
        summary_prompt = summaries.seen[-1][1]["content"]
        assert summary_prompt.startswith("Summary so far:\nSUMMARY-OF-OLD-TURNS")
        assert summary_prompt.endswith("user: message number 2")  # only what fell out since
        first = summaries.seen[0][1]["content"]
        assert first.startswith("Conversation to add:\nuser: message number 0\nassistant: ok")
