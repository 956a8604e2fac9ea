"""Route mode's router: conditions, rules in order, the default, LLM routing, semantic
conditions (with HashingEmbedder, and OpenAIEmbeddings against a real local server)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from wakeful.entities import (
    Capability,
    Condition,
    Decision,
    HashingEmbedder,
    ModelError,
    OpenAIEmbeddings,
    Reply,
    Router,
    Rule,
    ScriptedModel,
    ToolCall,
    llm_route,
    tool,
)
from wakeful.runtime import Context, Registry, Runtime, Wake
from wakeful.transports.cli import serving
from wakeful.transports.memory import MemoryStore

STATE = {
    "profile": {"tier": "gold", "age": 42, "score": 7.5, "vip": True, "tags": ["a", "b"]},
    "orders": {"last": {"id": "o-17", "total": 120, "items": [{"sku": "x1"}, {"sku": "y2"}]}},
}
PAYLOAD = {"channel": "email", "priority": 3, "meta": {"lang": "en"}, "list": [1, 2]}


async def matches(
    condition: Condition,
    text: str = "I want a refund for order 17",
    payload: Any = PAYLOAD,
    state: Any = STATE,
) -> bool:
    router = Router([Rule("r", [condition], route="hit")], default="miss")
    decision = await router.decide(text, payload, state)
    return decision.route == "hit"


# -- ops -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "op", "value", "expected"),
    [
        ("state.profile.tier", "eq", "gold", True),
        ("state.profile.tier", "eq", "silver", False),
        ("state.profile.tier", "ne", "silver", True),
        ("state.profile.tier", "ne", "gold", False),
        ("state.profile.age", "eq", 42, True),
        ("state.profile.age", "eq", 42.0, True),  # numbers compare as numbers
        ("state.profile.age", "eq", "42", False),  # a string never equals a number
        ("state.profile.age", "ne", "42", True),
        ("state.profile.vip", "eq", True, True),
        ("state.profile.vip", "eq", 1, False),  # a bool never equals a number
        ("state.profile.tags", "eq", ["a", "b"], True),
        ("state.profile.age", "gt", 41, True),
        ("state.profile.age", "gt", 42, False),
        ("state.profile.age", "ge", 42, True),
        ("state.profile.age", "lt", 42.5, True),
        ("state.profile.age", "le", 41, False),
        ("state.profile.score", "le", 7.5, True),
        ("state.profile.tier", "gt", "f", True),  # strings compare with strings
        ("state.profile.tier", "lt", "gold", False),
        ("state.profile.tier", "le", "gold", True),
        ("state.profile.age", "gt", "10", False),  # number against string: no match
        ("state.profile.tier", "lt", 5, False),  # string against number: no match
        ("state.profile.vip", "ge", 0, False),  # a bool is not a number here
        ("state.profile.tags", "gt", 1, False),
        ("payload.priority", "ge", 3, True),
        ("payload.meta.lang", "eq", "en", True),
        ("payload.list.1", "eq", 2, True),  # a number key indexes a list
        ("payload.list.-1", "eq", 2, True),
        ("state.orders.last.items.0.sku", "eq", "x1", True),
        ("state.orders.last.total", "gt", 100, True),
    ],
)
async def test_comparisons(field: str, op: str, value: Any, expected: bool) -> None:
    assert await matches(Condition(field, op, value)) is expected


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("content", "refund", True),
        ("content", "Refund", False),  # contains is case-sensitive; like is not
        ("content", "", True),
        ("content", 17, False),  # a number is not a substring
        ("state.profile.tags", "a", True),  # an item of a list
        ("state.profile.tags", "c", False),
        ("payload.list", 2, True),
        ("payload.list", True, False),  # True is not the item 1
        ("payload.meta", "lang", True),  # a key of a dict
        ("payload.meta", "en", False),
        ("state.profile.age", 4, False),  # a number contains nothing
    ],
)
async def test_contains(field: str, value: Any, expected: bool) -> None:
    assert await matches(Condition(field, "contains", value)) is expected


@pytest.mark.parametrize(
    ("pattern", "text", "expected"),
    [
        ("%refund%", "I want a REFUND now", True),  # ASCII letters in either case
        ("refund", "refund", True),
        ("refund", "a refund", False),  # LIKE matches the whole value
        ("refund%", "Refunds please", True),
        ("%order __", "refund for order 17", True),  # _ is exactly one character
        ("%order _", "refund for order 17", False),
        ("a.c", "abc", False),  # regex characters are literal
        ("a.c", "A.C", True),
        ("(%)", "(x)", True),
        ("%line two", "line one\nline two", True),  # % spans newlines
        ("%é%", "CAFÉ", False),  # non-ASCII letters are case-sensitive, as in SQLite
        ("%É%", "CAFÉ", True),
        ("", "", True),
        ("%", "", True),
    ],
)
async def test_like(pattern: str, text: str, expected: bool) -> None:
    assert await matches(Condition("content", "like", pattern), text) is expected


@pytest.mark.parametrize(
    ("pattern", "escape", "text", "expected"),
    [
        ("50\\%", "\\", "50%", True),
        ("50\\%", "\\", "500", False),
        ("%50!%%", "!", "a 50% discount", True),
        ("%50!%%", "!", "a 500 discount", False),
        ("a!_b", "!", "a_b", True),
        ("a!_b", "!", "axb", False),
        ("a!!b", "!", "a!b", True),  # the escape character escapes itself
        ("a!xb", "!", "axb", True),  # and makes any other character literal
    ],
)
async def test_like_escape(pattern: str, escape: str, text: str, expected: bool) -> None:
    assert await matches(Condition("content", "like", pattern, escape=escape), text) is expected


async def test_like_and_regex_only_match_strings() -> None:
    assert not await matches(Condition("state.profile.age", "like", "42"))
    assert not await matches(Condition("state.profile.age", "regex", "4"))
    assert not await matches(Condition("state.profile.tags", "regex", "a"))


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"order \d+", True),  # search, not match: anywhere in the text
        (r"^I want", True),
        (r"^refund", False),
        (r"(?i)REFUND", True),  # inline flags
        (r"REFUND", False),
        (r"\border 1\b", False),
    ],
)
async def test_regex(pattern: str, expected: bool) -> None:
    assert await matches(Condition("content", "regex", pattern)) is expected


async def test_exists() -> None:
    assert await matches(Condition("state.profile.tier", "exists", True))
    assert not await matches(Condition("state.profile.tier", "exists", False))
    assert await matches(Condition("state.profile.nickname", "exists", False))
    assert await matches(Condition("state.nowhere.key", "exists", False))
    assert await matches(Condition("payload.meta.lang", "exists", True))
    # a null value is there: it exists, and equals None
    assert await matches(Condition("payload.x", "exists", True), payload={"x": None})
    assert await matches(Condition("payload.x", "eq", None), payload={"x": None})


@pytest.mark.parametrize("op", ["eq", "ne", "gt", "ge", "lt", "le", "contains", "like", "regex"])
@pytest.mark.parametrize(
    "field",
    [
        "state.profile.nickname",  # no such key
        "state.nowhere.tier",  # no such collection
        "state.profile.tier.deeper",  # a string has no keys
        "state.profile.tags.5",  # past the end of a list
        "state.profile.tags.first",  # a list has no named keys
        "state.profile.tags.--1",
        "payload.missing",
        "payload.channel.x",
    ],
)
async def test_a_missing_field_matches_no_op_not_even_ne(field: str, op: str) -> None:
    value = 1 if op in ("gt", "ge", "lt", "le") else "x"
    assert not await matches(Condition(field, op, value))


async def test_missing_payload_and_state_do_not_raise() -> None:
    assert not await matches(Condition("payload.channel", "eq", "email"), payload=None)
    assert not await matches(Condition("payload.channel", "eq", "email"), payload="plain text")
    assert not await matches(Condition("state.profile.tier", "eq", "gold"), state=None)
    assert not await matches(Condition("state.profile.tier", "eq", "gold"), state={})
    # a collection name the runtime would refuse is simply not there
    assert not await matches(Condition("state.Bad-Name!.x", "eq", 1), state={})
    assert await matches(Condition("payload", "eq", "plain text"), payload="plain text")


async def test_ctx_state_of_a_real_entity_is_a_routing_state() -> None:
    """The router reads `ctx.state` as it is: a collection that was never written is
    empty, a built-in one is readable, an invalid collection name is no match."""
    router = Router(
        [
            Rule("new", [Condition("state.profile.tier", "exists", False)], route="onboarding"),
            Rule("gold", [Condition("state.profile.tier", "eq", "gold")], route="concierge"),
        ],
        default="chat",
    )
    seen: list[str | None] = []
    registry = Registry()

    @registry.entity("customer")
    async def customer(ctx: Context, wake: Wake) -> None:
        decision = await router.decide(str(wake.payload), wake.payload, ctx.state)
        seen.append(decision.route)
        assert not await matches(Condition("state.Bad-Name.x", "eq", 1), state=ctx.state)
        assert await matches(Condition("state.runs", "exists", True), state=ctx.state)
        ctx.state["profile"]["tier"] = "gold"

    async with Runtime(registry, MemoryStore()) as rt:
        await rt.send("/customer/c1", "hello")
        await rt.idle()
        await rt.send("/customer/c1", "hello again")
        await rt.idle()
    assert seen == ["onboarding", "concierge"]


# -- rules ---------------------------------------------------------------------------


async def test_rules_are_tried_in_order_and_the_first_match_wins() -> None:
    router = Router(
        [
            Rule("gold", [Condition("state.profile.tier", "eq", "gold")], route="concierge"),
            Rule("refund", [Condition("content", "like", "%refund%")], route="refunds"),
            Rule("anything", [], route="chat"),
        ],
        default="fallback",
    )
    decision = await router.decide("a refund please", None, STATE)
    assert decision == Decision(
        "concierge", "rule", "gold", reason="rule 'gold' matched", scores={}
    )
    decision = await router.decide("a refund please", None, {"profile": {"tier": "silver"}})
    assert (decision.route, decision.how, decision.rule) == ("refunds", "rule", "refund")
    decision = await router.decide("hello", None, None)
    assert (decision.route, decision.rule) == ("chat", "anything")  # no conditions: always


async def test_all_and_any() -> None:
    conditions = [
        Condition("content", "contains", "refund"),
        Condition("state.profile.tier", "eq", "gold"),
    ]
    both = Router([Rule("both", conditions, route="hit")], default="miss")
    either = Router([Rule("either", conditions, any=True, route="hit")], default="miss")
    cases = [
        ("refund", {"profile": {"tier": "gold"}}, "hit", "hit"),
        ("refund", {"profile": {"tier": "silver"}}, "miss", "hit"),
        ("hello", {"profile": {"tier": "gold"}}, "miss", "hit"),
        ("hello", {}, "miss", "miss"),
    ]
    for text, state, all_route, any_route in cases:
        assert (await both.decide(text, None, state)).route == all_route
        assert (await either.decide(text, None, state)).route == any_route
    always = Router([Rule("empty-any", [], any=True, route="hit")], default="miss")
    assert (await always.decide("x")).route == "hit"


async def test_no_match_takes_the_default_which_may_be_none() -> None:
    rules = [Rule("refund", [Condition("content", "contains", "refund")], route="refunds")]
    decision = await Router(rules, default="chat", background="remember").decide("hi")
    assert decision == Decision(
        "chat", "default", None, None, "remember", {}, reason="no rule matched"
    )
    decision = await Router(rules).decide("hi")
    assert (decision.route, decision.how) == (None, "default")


async def test_arguments_fixed_and_from_the_request() -> None:
    rule = Rule(
        "refund",
        [Condition("content", "regex", r"order \d+")],
        route="refunds",
        arguments={"currency": "EUR"},
        arguments_from={
            "request": "content",
            "channel": "payload.channel",
            "order": "state.orders.last.id",
            "sku": "state.orders.last.items.1.sku",
            "missing": "payload.nope",
        },
    )
    decision = await Router([rule]).decide("refund order 17", PAYLOAD, STATE)
    assert decision.arguments == {
        "currency": "EUR",
        "request": "refund order 17",
        "channel": "email",
        "order": "o-17",
        "sku": "y2",
    }
    plain = Rule("plain", [], route="chat")
    assert (await Router([plain]).decide("x")).arguments is None
    fixed = Rule("fixed", [], route="chat", arguments={})
    assert (await Router([fixed]).decide("x")).arguments == {}


async def test_background_of_the_rule_else_of_the_router() -> None:
    router = Router(
        [
            Rule(
                "refund",
                [Condition("content", "contains", "refund")],
                route="refunds",
                background="fraud_check",
            ),
            Rule("hello", [Condition("content", "contains", "hello")], route="chat"),
        ],
        default="chat",
        background="remember",
    )
    assert (await router.decide("refund")).background == "fraud_check"
    assert (await router.decide("hello")).background == "remember"
    assert (await router.decide("other")).background == "remember"
    assert (await Router([Rule("r", [], route="x")]).decide("x")).background is None


async def test_decisions_encode_for_a_durable_step() -> None:
    rule = Rule("r", [], route="chat", arguments={"n": 1}, background="remember")
    decision = await Router([rule]).decide("x")
    raw = msgspec.json.encode(decision)
    assert msgspec.json.decode(raw, type=Decision) == decision
    assert msgspec.to_builtins(decision)["how"] == "rule"


# -- construction errors -------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (
            Condition("content", "startswith", "x"),
            r"rule 'bad', condition 1 \(content startswith\): unknown op 'startswith'; "
            r"the ops are eq, ne, gt, ge, lt, le, contains, like, regex, semantic, exists",
        ),
        (
            Condition("content", "regex", "(unclosed"),
            r"rule 'bad', condition 1 \(content regex\): invalid regular expression "
            r"'\(unclosed': missing \), unterminated subpattern",
        ),
        (Condition("message.text", "eq", "x"), r"field 'message.text' is not allowed; fields are"),
        (Condition("state", "eq", "x"), r"field 'state' is not allowed"),
        (Condition("state..x", "eq", "x"), r"field 'state..x' is not allowed"),
        (Condition("content", "gt", [1]), r"compare with a number or a string, not \[1\]"),
        (Condition("content", "like", 5), r"the value must be a LIKE pattern"),
        (Condition("content", "like", "50!", escape="!"), r"ends with its escape character '!'"),
        (Condition("content", "like", "x", escape="!!"), r"escape must be one character"),
        (Condition("content", "eq", "x", escape="!"), r"escape is only for like conditions"),
        (Condition("content", "regex", 5), r"the value must be a regular expression"),
        (Condition("content", "exists", "yes"), r"True \(present\) or False \(absent\)"),
        (Condition("content", "semantic", "money back"), r"give a threshold"),
        (Condition("content", "semantic", "money", threshold=2), r"threshold 2 is not between"),
        (Condition("content", "semantic", "", threshold=0.5), r"the reference phrase"),
        (Condition("content", "eq", "x", threshold=0.5), r"threshold is only for semantic"),
    ],
)
def test_a_bad_condition_is_an_error_naming_the_rule(condition: Condition, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Rule("bad", [Condition("content", "eq", "ok"), condition], route="x")


def test_router_construction_errors() -> None:
    caps = [Capability("refunds", "Refund an order."), Capability("chat", "Talk.")]
    model = ScriptedModel(["chat"])
    with pytest.raises(
        ValueError,
        match="rule 'r' routes to 'refund' is not a capability; the capabilities are chat, refunds",
    ):
        Router([Rule("r", [], route="refund")], capabilities=caps)
    with pytest.raises(ValueError, match="the default route 'nope' is not a capability"):
        Router([], default="nope", capabilities=caps)
    with pytest.raises(ValueError, match="the background action 'nope' is not a capability"):
        Router([], background="nope", capabilities=caps)
    with pytest.raises(ValueError, match="rule 'r' runs in the background 'nope'"):
        Router([Rule("r", [], route="chat", background="nope")], capabilities=caps)
    with pytest.raises(ValueError, match="two rules are named 'r'"):
        Router([Rule("r", [], route="chat"), Rule("r", [], route="refunds")])
    with pytest.raises(ValueError, match=r"rule 'llm' lets the routing model pick .* a model"):
        Router([Rule("llm", [], route=None)], capabilities=caps)
    with pytest.raises(ValueError, match="needs a model and capabilities"):
        Router([Rule("llm", [], route=None)], model=model)
    with pytest.raises(ValueError, match="rule 's' has a semantic condition, so the Router needs"):
        Router([Rule("s", [Condition("content", "semantic", "hi", threshold=0.5)], route="x")])
    with pytest.raises(ValueError, match="capability names repeat"):
        Router([], capabilities=[*caps, Capability("chat", "Again.")])
    with pytest.raises(ValueError, match="a rule needs a name"):
        Rule("", [])
    with pytest.raises(ValueError, match=r"argument 'a' comes from 'body\.a'; fields are"):
        Rule("r", [], route="x", arguments_from={"a": "body.a"})
    with pytest.raises(ValueError, match="argument 'a' is both fixed and from a field"):
        Rule("r", [], route="x", arguments={"a": 1}, arguments_from={"a": "content"})
    with pytest.raises(ValueError, match="capability name 'none' is not allowed"):
        Capability("none", "Nothing.")
    with pytest.raises(ValueError, match="capability name 'a b' is not allowed"):
        Capability("a b", "Spaces.")
    with pytest.raises(ValueError, match="capability 'x' needs a description"):
        Capability("x", " ")
    # with no capabilities listed, route names are the integrator's to check
    Router([Rule("r", [], route="anything")], default="whatever")


def test_capability_of_a_tool() -> None:
    @tool
    def refund(order: str) -> str:
        """Refund an order."""
        return order

    assert Capability.of_tool(refund, when_to_use="money back") == Capability(
        "refund", "Refund an order.", "money back", ""
    )


# -- LLM routing ---------------------------------------------------------------------

CAPABILITIES = [
    Capability(
        "refunds",
        "Refund an order.",
        when_to_use="the user wants money back",
        when_not_to_use="the user only asks where a refund is",
    ),
    Capability("tracking", "Track a shipment."),
    Capability("billing-agent", "A sub-agent for invoices and payments."),
]


def route_call(arguments: Any) -> Reply:
    return Reply(tool_calls=[ToolCall("call_1", "route", arguments)])


async def test_llm_route_shows_the_capabilities_and_reads_the_tool_call() -> None:
    model = ScriptedModel([route_call({"capability": "tracking"})])
    assert await llm_route(model, "where is my parcel?", CAPABILITIES) == "tracking"
    [messages] = model.seen
    system, user = messages
    assert user == {"role": "user", "content": "where is my parcel?"}
    assert system["role"] == "system"
    prompt = system["content"]
    assert "Call the `route` tool once" in prompt
    assert (
        "- refunds: Refund an order.\n"
        "  Use when: the user wants money back\n"
        "  Do not use when: the user only asks where a refund is\n"
        "- tracking: Track a shipment.\n"
        "- billing-agent: A sub-agent for invoices and payments."
    ) in prompt


async def test_llm_route_gives_the_model_one_route_tool_with_an_enum() -> None:
    tools_seen: list[list[dict[str, Any]]] = []

    class Spy(ScriptedModel):
        async def reply(self, messages: Any, tools: Any, on_text: Any) -> Reply:
            tools_seen.append(tools)
            return await super().reply(messages, tools, on_text)

    await llm_route(Spy([route_call('{"capability": "refunds"}')]), "money back", CAPABILITIES)
    [[spec]] = tools_seen
    assert spec["function"]["name"] == "route"
    parameters = spec["function"]["parameters"]
    assert parameters["properties"]["capability"]["enum"] == [
        "refunds",
        "tracking",
        "billing-agent",
        "none",
    ]
    assert parameters["required"] == ["capability"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (route_call({"capability": "refunds"}), "refunds"),
        (route_call('{"capability": "billing-agent"}'), "billing-agent"),  # JSON text
        (route_call({"capability": "Tracking"}), "tracking"),  # case is forgiven
        (route_call({"capability": "none"}), None),
        (route_call({"capability": "teleport"}), None),  # not a capability
        (route_call("{not json"), None),
        (route_call(["refunds"]), None),
        (Reply(tool_calls=[ToolCall("c", "tracking", {})]), "tracking"),  # called it directly
        (Reply(tool_calls=[ToolCall("c", "teleport", {})]), None),
        (Reply("refunds"), "refunds"),  # plain text naming one capability
        (Reply("`tracking`."), "tracking"),
        (Reply("I would route this to billing-agent."), "billing-agent"),
        (Reply("none"), None),
        (Reply("Either refunds or tracking."), None),  # ambiguous
        (Reply("I cannot help with that."), None),
        (Reply("billing"), None),  # a part of a name is not a name
        (Reply(""), None),
    ],
)
async def test_llm_route_reads_what_the_model_said(reply: Reply, expected: str | None) -> None:
    assert await llm_route(ScriptedModel([reply]), "text", CAPABILITIES) == expected


async def test_llm_route_without_capabilities_asks_nobody() -> None:
    model = ScriptedModel(["refunds"])
    assert await llm_route(model, "x", []) is None
    assert model.calls == 0


async def test_llm_route_lets_model_errors_through() -> None:
    model = ScriptedModel(["x"])
    model.script = []  # used up: the next reply is a ModelError
    with pytest.raises(ModelError, match="used up"):
        await llm_route(model, "x", CAPABILITIES)


async def test_a_rule_without_a_route_falls_through_to_the_routing_model() -> None:
    def pick(messages: list[dict[str, Any]]) -> Reply:
        text = messages[-1]["content"]
        return route_call({"capability": "refunds" if "money" in text else "none"})

    model = ScriptedModel([pick], repeat=True)
    router = Router(
        [
            Rule("track", [Condition("content", "regex", r"(?i)\btrack")], route="tracking"),
            Rule("ask", [], route=None, background="billing-agent"),
        ],
        default="tracking",
        model=model,
        capabilities=CAPABILITIES,
    )
    decision = await router.decide("track my parcel")
    assert (decision.route, decision.how) == ("tracking", "rule")
    assert model.calls == 0  # a rule decided: nobody was asked
    decision = await router.decide("I want my money back")
    assert decision == Decision(
        "refunds",
        "llm",
        "ask",
        None,
        "billing-agent",
        {},
        "rule 'ask' matched; the routing model chose 'refunds'",
    )
    decision = await router.decide("tell me a joke")
    assert (decision.route, decision.how, decision.rule) == ("tracking", "default", "ask")
    assert decision.reason == "rule 'ask' matched; the routing model chose no capability"
    assert model.calls == 2


# -- semantic conditions -------------------------------------------------------------


class Counting:
    """An embedder that records what it was asked to embed."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls: list[list[str]] = []

    async def embed(self, texts: list[str]) -> list[list[float]]:
        self.calls.append(list(texts))
        vectors: list[list[float]] = await self.inner.embed(texts)
        return vectors


def semantic_router(embedder: Any) -> Router:
    return Router(
        [
            Rule("vip", [Condition("state.profile.tier", "eq", "platinum")], route="concierge"),
            Rule(
                "refund",
                [Condition("content", "semantic", "refund my order", threshold=0.5)],
                route="refunds",
            ),
            Rule(
                "track",
                [
                    Condition("content", "semantic", "track shipment", threshold=0.5),
                    Condition("content", "semantic", "where is my parcel", threshold=0.5),
                ],
                any=True,
                route="tracking",
            ),
        ],
        default="chat",
        embedder=embedder,
    )


async def test_semantic_conditions_with_the_hashing_embedder() -> None:
    embedder = Counting(HashingEmbedder())
    router = semantic_router(embedder)
    decision = await router.decide("please refund my order 17", None, STATE)
    assert (decision.route, decision.rule) == ("refunds", "refund")
    assert decision.scores["refund[0]"] >= 0.5
    # the text and every reference phrase in one request
    assert embedder.calls == [
        ["please refund my order 17", "refund my order", "track shipment", "where is my parcel"]
    ]
    decision = await router.decide("where is my parcel now?", None, STATE)
    assert decision.route == "tracking"
    assert decision.scores["refund[0]"] < 0.5 and decision.scores["track[1]"] >= 0.5
    assert embedder.calls[1] == ["where is my parcel now?"]  # the references are cached
    decision = await router.decide("tell me a joke", None, STATE)
    assert (decision.route, decision.how) == ("chat", "default")
    assert set(decision.scores) == {"refund[0]", "track[0]", "track[1]"}


async def test_semantic_conditions_are_not_embedded_when_not_needed() -> None:
    embedder = Counting(HashingEmbedder())
    router = semantic_router(embedder)
    # an earlier rule decided
    decision = await router.decide("refund my order", None, {"profile": {"tier": "platinum"}})
    assert decision.route == "concierge" and decision.scores == {}
    # an empty text is no match, and nothing is embedded for it
    assert (await router.decide("   ", None, None)).route == "chat"
    assert embedder.calls == []
    # a cheap condition that fails spares the embedding
    rule = Rule(
        "both",
        [
            Condition("content", "semantic", "refund my order", threshold=0.1),
            Condition("payload.channel", "eq", "phone"),
        ],
        route="refunds",
    )
    router = Router([rule], embedder=embedder)
    assert (await router.decide("refund my order", PAYLOAD)).route is None
    assert embedder.calls == []


async def test_a_semantic_field_other_than_the_content() -> None:
    rule = Rule(
        "subject",
        [Condition("payload.subject", "semantic", "invoice overdue", threshold=0.6)],
        route="billing",
    )
    router = Router([rule], default="chat", embedder=HashingEmbedder())
    assert (await router.decide("hi", {"subject": "Invoice 12 overdue"})).route == "billing"
    assert (await router.decide("hi", {"subject": 12})).route == "chat"  # not text
    assert (await router.decide("hi", {})).route == "chat"


async def test_an_embedder_that_miscounts_is_a_model_error() -> None:
    class Broken:
        async def embed(self, texts: list[str]) -> list[list[float]]:
            return [[1.0]]

    with pytest.raises(ModelError, match="gave 1 vectors for 4 texts"):
        await semantic_router(Broken()).decide("refund", None, {})


class FakeEmbeddings:
    """POST /v1/embeddings, answered with HashingEmbedder vectors (or scripted errors)."""

    def __init__(self, errors: list[tuple[int, dict[str, Any], dict[str, str]]]) -> None:
        self.errors = errors
        self.requests: list[dict[str, Any]] = []
        self.hashing = HashingEmbedder()
        self.app = Starlette(routes=[Route("/v1/embeddings", self.embeddings, methods=["POST"])])

    async def embeddings(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        if self.errors:
            status, error, headers = self.errors.pop(0)
            return JSONResponse(error, status, headers)
        vectors = await self.hashing.embed(body["input"])
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return JSONResponse({"object": "list", "data": data[::-1], "model": body["model"]})


async def test_semantic_routing_through_openai_embeddings_on_a_real_server() -> None:
    limited = (429, {"error": {"message": "slow down"}}, {"Retry-After": "0.1"})
    fake = FakeEmbeddings([limited])
    async with serving(fake.app) as url:
        embedder = OpenAIEmbeddings(base_url=url + "/v1", api_key="k")
        router = semantic_router(embedder)
        decision = await router.decide("where is my parcel?", None, {})
        assert (decision.route, decision.rule) == ("tracking", "track")
        assert decision.scores["track[1]"] >= 0.5
        assert (await router.decide("refund my order now", None, {})).route == "refunds"
        fake.errors = [(400, {"error": {"message": "input is too long"}}, {})]
        with pytest.raises(ModelError, match="400: input is too long"):
            await router.decide("hello", None, {})
    assert len(fake.requests) == 4  # the 429, its retry, then one per request
    assert fake.requests[1]["input"][0] == "where is my parcel?"
    assert fake.requests[2]["input"] == ["refund my order now"]


def docs_example() -> tuple[str, str]:
    """The router example of docs/agents.md's route mode section, and its comment."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "agents.md").read_text()
    code = re.findall(r"```python\n(.*?)```", docs[docs.index("## Route mode") :], re.S)[1]
    code, comment = code.split("decision = await router.decide(text, payload, ctx.state)\n")
    return code, comment


async def test_the_route_mode_example_in_the_docs_decides_as_it_says() -> None:
    code, comment = docs_example()
    scope: dict[str, Any] = {}
    exec(code, scope)
    router: Router = scope["router"]
    decision = await router.decide("I want a refund", {"order": "o-17"}, {})
    assert decision == Decision(
        "refunds", "rule", "refund", {"order": "o-17"}, "fraud_check", {}, "rule 'refund' matched"
    )
    assert 'Decision(route="refunds", how="rule", rule="refund", arguments={"order": "o-17"},' in (
        comment
    )
    gold = await router.decide("I want a refund", {"order": "o-17"}, {"profile": {"tier": "gold"}})
    assert gold.route == "concierge"
    assert (await router.decide("where is my parcel now", None, {})).route == "tracking"
    asked = await router.decide("can you help?", None, {})
    assert (asked.route, asked.how) == ("tracking", "llm")
    assert (await router.decide("hello", None, {})).how == "default"
