"""Route mode in an Agent: one decision per request (rules, the routing model, the
default), the routed tool or sub-agent as the reply, a background action that only
enriches state; classic and durable, on real stores."""

from __future__ import annotations

from typing import Any

import pytest

from wakeful.entities import (
    Agent,
    Capability,
    Condition,
    HashingEmbedder,
    Reply,
    Rule,
    ScriptedModel,
    ToolCall,
    tool,
)
from wakeful.runtime import Registry, Runtime

from ..conftest import StoreFactory
from .test_agent import finished

stores = pytest.mark.parametrize("store_kind", ["memory", "sqlite"], indirect=True)


class Desk:
    """The support desk's tools and models, with what they were asked."""

    def __init__(self, refund_approval: bool = False) -> None:
        self.done: list[str] = []

        @tool(requires_approval=refund_approval)
        def refund(order: str) -> str:
            """Refund an order."""
            self.done.append(f"refund {order}")
            return f"Order {order} refunded."

        @tool
        def track(parcel: str) -> str:
            """Track a parcel."""
            self.done.append(f"track {parcel}")
            return f"Parcel {parcel} is in Lyon."

        @tool
        def fraud_check(order: str) -> dict[str, Any]:
            """Score an order for fraud."""
            self.done.append(f"fraud {order}")
            return {"order": order, "score": 0.02}

        self.tools = [refund, track, fraud_check]
        self.model = ScriptedModel(  # fills arguments the route does not give
            [Reply(tool_calls=[ToolCall("a", "track", {"parcel": "P-9"})])], repeat=True
        )
        self.router_model = ScriptedModel(
            [Reply(tool_calls=[ToolCall("r", "route", {"capability": "track"})])], repeat=True
        )
        self.chat_model = ScriptedModel(["Happy to chat!"], repeat=True)

    def registry(self, mode: str) -> Registry:
        chat = Agent("chat", model=self.chat_model, description="Small talk.", mode=mode)
        registry = Registry()
        Agent(
            "desk",
            model=self.model,
            tools=self.tools,
            subagents=[chat],
            mode=mode,
            strategy="route",
            rules=[
                Rule(
                    "refund",
                    [
                        Condition("content", "like", "%refund%"),
                        Condition("payload.order", "exists", True),
                    ],
                    route="refund",
                    arguments_from={"order": "payload.order"},
                    background="fraud_check",
                ),
                Rule(
                    "parcels",
                    [Condition("content", "semantic", "where is my parcel", threshold=0.5)],
                    route=None,  # the routing model picks
                ),
            ],
            default="chat",
            embedder=HashingEmbedder(),
            router_model=self.router_model,
            capabilities=[
                Capability("track", "Track a parcel.", when_to_use="parcel questions"),
            ],
        ).register(registry)
        return registry


@stores
@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_a_rule_routes_to_a_tool_with_a_background_action(
    store_factory: StoreFactory, mode: str
) -> None:
    desk = Desk()
    async with Runtime(desk.registry(mode), store_factory()) as rt:
        await rt.send("/desk/d1", {"text": "I want a refund please", "order": "o-17"})
        done = await finished(rt, "/desk/d1")
        assert done["result"] == {"text": "Order o-17 refunded.", "stop_reason": "end_turn"}
        assert done["record"].reason == "end_turn"
        state = await rt.state("/desk/d1")
        run = done["record"].run
        assert state["routes"][run] == {
            "route": "refund",
            "how": "rule",
            "rule": "refund",
            "background": "fraud_check",
        }
        # the background action enriched the state and not the reply
        assert state["background"]["fraud_check"] == {
            "run": run,
            "result": '{"order": "o-17", "score": 0.02}',
        }
        assert sorted(desk.done) == ["fraud o-17", "refund o-17"]
        assert (desk.model.calls, desk.router_model.calls) == (0, 0)  # no model at all
        events = await rt.read("/desk/d1")
        texts = "".join(e.data.text for e in events if e.kind == "text.delta")
        assert texts == "Order o-17 refunded."  # the reply streams to observers
        assert [m["role"] for m in state["conversation"].values()] == ["user", "assistant"]


@stores
async def test_the_routing_model_picks_and_the_model_fills_the_arguments(
    store_factory: StoreFactory,
) -> None:
    desk = Desk()
    async with Runtime(desk.registry("classic"), store_factory()) as rt:
        await rt.send("/desk/d2", {"text": "where is my parcel?"})
        done = await finished(rt, "/desk/d2")
        assert done["result"]["text"] == "Parcel P-9 is in Lyon."
        route = (await rt.state("/desk/d2"))["routes"][done["record"].run]
        assert (route["route"], route["how"], route["rule"]) == ("track", "llm", "parcels")
        # the routing model saw the capabilities and the guidance
        system = desk.router_model.seen[0][0]["content"]
        assert "track" in system and "parcel questions" in system and "chat" in system
        assert desk.model.calls == 1  # asked only for track's arguments
        assert desk.model.seen[0][-1] == {"role": "user", "content": "where is my parcel?"}


@stores
@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_no_match_takes_the_default_sub_agent(store_factory: StoreFactory, mode: str) -> None:
    desk = Desk()
    async with Runtime(desk.registry(mode), store_factory()) as rt:
        await rt.send("/desk/d3", {"text": "hello there"})
        done = await finished(rt, "/desk/d3")
        assert done["result"]["text"] == "Happy to chat!"
        route = (await rt.state("/desk/d3"))["routes"][done["record"].run]
        assert (route["route"], route["how"]) == ("chat", "default")
        assert desk.router_model.calls == 0
        children = [e.data.address for e in await rt.read("/desk/d3") if e.kind == "child.spawned"]
        assert len(children) == 1 and children[0].startswith("/chat/d3.route-")


@stores
async def test_a_routed_tool_that_needs_approval_survives_a_restart(
    store_factory: StoreFactory,
) -> None:
    desk = Desk(refund_approval=True)
    async with Runtime(desk.registry("durable"), store_factory()) as rt:
        await rt.send("/desk/d4", {"text": "refund this", "order": "o-5"})
        await rt.idle()
        (run,) = await rt.runs(address="/desk/d4")
        assert (run.status, run.reason) == ("suspended", "requires_approval")
        assert desk.done == ["fraud o-5"]  # the background ran; the refund waits
        call = run.waiting_for.split(":", 1)[1] if run.waiting_for else ""
    desk2 = Desk(refund_approval=True)
    async with Runtime(desk2.registry("durable"), store_factory()) as rt:
        await rt.approve("/desk/d4", call, approved=True)
        done = await finished(rt, "/desk/d4")
        assert done["result"]["text"] == "Order o-5 refunded."
        assert desk2.done == ["refund o-5"]  # the background was not run again
        assert (await rt.state("/desk/d4"))["background"]["fraud_check"]["run"] == run.run


def test_route_settings_are_checked_when_the_agent_is_built() -> None:
    model = ScriptedModel(["x"])
    with pytest.raises(ValueError, match="strategy 'plan': use 'reasoning' or 'route'"):
        Agent("a", model=model, strategy="plan")
    with pytest.raises(ValueError, match="rules, default and background are for"):
        Agent("a", model=model, default="chat")
    with pytest.raises(ValueError, match="route mode needs tools or sub-agents"):
        Agent("a", model=model, strategy="route")
    tools = Desk().tools
    with pytest.raises(ValueError, match="'nowhere' is not a capability"):
        Agent("a", model=model, tools=tools, strategy="route", default="nowhere")
    with pytest.raises(ValueError, match=r"capabilities \['ghost'\] are neither tools nor"):
        Agent(
            "a",
            model=model,
            tools=tools,
            strategy="route",
            capabilities=[Capability("ghost", "Boo.")],
        )
