"""The agents of `wakeful demo`: offline with scripted models, or on a real model.

- `assistant` (durable, reasoning): looks an order up, asks the `researcher`
  sub-agent about the refund policy, and refunds, a tool that needs a human's
  approval.
- `researcher`: answers policy questions (spawned by the others as a child entity).
- `support` (route mode): parcel questions go by rule to `track_parcel`, with
  `note_interest` in the background; anything else to the `researcher`.

With `OPENAI_API_KEY` (or `OPENAI_BASE_URL`, for a local OpenAI-compatible server)
set, the agents use `OpenAIChat` (model `WAKEFUL_DEMO_MODEL`, default
`gpt-4o-mini`); otherwise `ScriptedModel`s that play the same story. Serve them
with `wakeful serve --app wakeful.entities.demo:registry`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from wakeful.runtime import Registry

from .agent import Agent
from .models import Model, Reply, Script, ScriptedModel, ToolCall
from .openai import OpenAIChat
from .routing import Condition, Rule
from .tools import tool

__all__ = ["real_model", "register_agents", "registry"]

PAUSE = 0.03
"""Seconds between the scripted models' streamed words, so the live view can follow."""

ORDERS: dict[str, dict[str, Any]] = {
    "o-17": {"item": "headphones", "price": 79.0, "delivered": "2026-11-02"},
    "o-18": {"item": "kettle", "price": 35.5, "delivered": None},
}


@tool
def lookup_order(order: str) -> dict[str, Any]:
    """Look an order up by its id (like o-17): item, price, delivery date."""
    found = ORDERS.get(order)
    return {"order": order, **found} if found else {"order": order, "error": "no such order"}


@tool(requires_approval=True)
def issue_refund(order: str, amount: float) -> str:
    """Refund an amount of an order to the customer's card (a human approves it first)."""
    return f"refunded {amount:.2f} EUR for {order}"


@tool
def track_parcel(parcel: str) -> str:
    """Where a parcel is now, by its tracking number (like P-42)."""
    return f"Parcel {parcel} left the Lyon depot this morning; delivery expected tomorrow."


@tool
def note_interest(parcel: str) -> dict[str, Any]:
    """Record that a customer asked about a parcel (for the delivery team)."""
    return {"parcel": parcel, "noted": True}


def real_model() -> Model | None:
    """`OpenAIChat` when an API key or a base URL is in the environment, else None."""
    if os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL"):
        return OpenAIChat(os.environ.get("WAKEFUL_DEMO_MODEL", "gpt-4o-mini"))
    return None


def _policy(messages: list[dict[str, Any]]) -> Reply:
    question = str(messages[-1].get("content", ""))
    if "o-17" in question:
        return Reply(
            "Order o-17 was delivered on 2026-11-02, within the 30-day window: "
            "it is eligible for a full refund."
        )
    return Reply("Unopened items can be returned within 30 days for a full refund.")


ASSISTANT: list[Script] = [
    Reply("Let me look at order o-17.", [ToolCall("c1", "lookup_order", {"order": "o-17"})]),
    Reply(
        "I'll ask the policy researcher.",
        [ToolCall("c2", "researcher", {"task": "Is o-17 (delivered 2026-11-02) refundable?"})],
    ),
    Reply(
        "It is eligible: refunding 79.00 EUR needs your approval.",
        [ToolCall("c3", "issue_refund", {"order": "o-17", "amount": 79.0})],
    ),
    "Done: order o-17 is refunded, 79.00 EUR are on their way to your card.",
]


def _model(real: Model | None, script: Sequence[Script]) -> Model:
    return real if real is not None else ScriptedModel(script, delay=PAUSE, repeat=True)


def register_agents(registry: Registry, model: Model | None = None) -> Registry:
    """Register the demo's agents in `registry`, on `model` (default: `real_model()`,
    else scripted models) and return it."""
    real = model if model is not None else real_model()
    researcher = Agent(
        "researcher",
        model=_model(real, [_policy]),
        description="Answers questions about the shop's return and refund policy.",
        instructions="You know the policy: full refunds within 30 days of delivery.",
    )
    Agent(
        "assistant",
        model=_model(real, ASSISTANT),
        description="A shop assistant: orders and refunds.",
        instructions=(
            "You are a shop assistant. Look orders up, ask the researcher about the "
            "policy, and refund when the policy allows it. Be brief."
        ),
        tools=[lookup_order, issue_refund],
        subagents=[researcher],
        mode="durable",
    ).register(registry)
    Agent(
        "support",
        model=_model(real, ["Let me find the right person for that."]),
        description="The support desk: routes each request once, without planning.",
        tools=[track_parcel, note_interest],
        subagents=[researcher],
        strategy="route",
        rules=[
            Rule(
                "parcels",
                [
                    Condition("content", "like", "%parcel%"),
                    Condition("payload.parcel", "exists", True),
                ],
                route="track_parcel",
                arguments_from={"parcel": "payload.parcel"},
                background="note_interest",
            )
        ],
        default="researcher",
    ).register(registry)
    return registry


registry = register_agents(Registry())
"""The demo's agents in a registry of their own, for `wakeful serve --app`."""
