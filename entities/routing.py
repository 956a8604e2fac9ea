"""Route mode's building blocks: one routing decision per request, no planning loop.

```python
router = Router(
    [
        Rule("vip", [Condition("state.profile.tier", "eq", "gold")], route="concierge"),
        Rule("refund", [Condition("content", "like", "%refund%")], route="refunds",
             arguments_from={"request": "content"}),
        Rule("billing", [Condition("content", "semantic", "question about my bill",
                                   threshold=0.5)], route=None),  # the model picks
    ],
    default="chat",
    embedder=OpenAIEmbeddings(),
    model=OpenAIChat("gpt-4o-mini"),
    capabilities=[Capability("refunds", "Refund an order."), ...],
)
decision = await router.decide(text, payload, ctx.state)
```

Rules are tried in order and the first that matches decides. A rule matches when
all its conditions hold (`any=True`: at least one; no conditions: always). It
routes to a capability (a tool or a sub-agent: the router only knows names), or,
with `route=None`, lets a routing model pick one (`llm_route`). No match, or a
routing model that picks nothing, gives the `default` route.

A condition tests one field — `content` (the message text), `payload.<key>…` or
`state.<collection>.<key>…` — with one op. A field that is not there matches no
op but `exists`; a value of the wrong type for the op (a string compared with a
number, a regex on a list) is no match, never an error while routing. Everything
that can be wrong with a rule is a `ValueError` when it is built.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import msgspec

from wakeful.runtime import InvalidAddress

from .embeddings import Embedder, cosine
from .models import Model, ModelError, Reply
from .tools import NAME, Tool

__all__ = ["Capability", "Condition", "Decision", "Router", "Rule", "llm_route"]

OPS = (
    "eq",
    "ne",
    "gt",
    "ge",
    "lt",
    "le",
    "contains",
    "like",
    "regex",
    "semantic",
    "exists",
)
FIELD = re.compile(r"^(content|payload(\.[^.\s]+)*|state(\.[^.\s]+)+)$")
FIELD_RULE = (
    "fields are 'content' (the message text), 'payload' or 'payload.<key>[.<key>…]', "
    "and 'state.<collection>[.<key>…]'"
)
NONE = "none"
"""What a routing model answers when no capability fits."""

_MISSING: Any = object()
_INDEX = re.compile(r"-?[0-9]+")


# -- data ----------------------------------------------------------------------------


class Condition(msgspec.Struct, frozen=True):
    """One test of a field: `Condition("content", "contains", "refund")`.

    - `field`: `content`, `payload[.<key>…]`, `state.<collection>[.<key>…]`; keys go
      into dicts, and into lists where they are numbers (`payload.items.0.sku`).
    - `op`: `eq`, `ne`, `gt`, `ge`, `lt`, `le` (numbers with numbers, strings with
      strings; `eq`/`ne` compare anything, but a bool never equals a number);
      `contains` (a substring of a string, an item of a list, a key of a dict);
      `like` (SQL LIKE: `%` any run, `_` one character, the whole value, ASCII
      letters case-insensitive as in SQLite; `escape` makes the next character
      literal); `regex` (`re.search`; inline flags such as `(?i)` work);
      `semantic` (cosine similarity of the field's and `value`'s embeddings at
      least `threshold`); `exists` (`value` True: the field is there, False: not).
    """

    field: str
    op: str
    value: Any = None
    threshold: float | None = None
    """For `semantic` only: the least cosine similarity that matches."""
    escape: str | None = None
    """For `like` only: the escape character (`\\` for `50\\%`)."""


class Capability(msgspec.Struct, frozen=True):
    """Something a request can be routed to (a tool, a sub-agent), as a routing model
    sees it: its name, what it does, and when to use it or not."""

    name: str
    description: str
    when_to_use: str = ""
    when_not_to_use: str = ""

    def __post_init__(self) -> None:
        if not NAME.match(self.name) or self.name.lower() == NONE:
            raise ValueError(
                f"capability name {self.name!r} is not allowed; use 1-64 letters, digits, "
                f"_ or - (and not {NONE!r}, which means no capability)"
            )
        if not self.description.strip():
            raise ValueError(f"capability {self.name!r} needs a description")

    @classmethod
    def of_tool(cls, tool: Tool, when_to_use: str = "", when_not_to_use: str = "") -> Capability:
        """A tool as a capability: its name and description."""
        return cls(tool.name, tool.description, when_to_use, when_not_to_use)


class Decision(msgspec.Struct, frozen=True):
    """Where a request goes, and why.

    `route` is a capability name, or None when the default route is None. `how`
    says who decided: a rule (`rule`), the routing model (`llm`, after rule `rule`
    fell through to it), or nobody (`default`: no rule matched, or the routing model
    picked none). `arguments` are the matched rule's (None when it gives none);
    `background` names the capability to run beside the routed one, whose result
    only enriches state. `scores` has the similarity of each semantic condition
    evaluated, by `"<rule>[<condition index>]"`. It encodes with msgspec, so a
    durable run can record it as a step result.
    """

    route: str | None
    how: Literal["rule", "llm", "default"]
    rule: str | None = None
    arguments: dict[str, Any] | None = None
    background: str | None = None
    scores: dict[str, float] = {}
    reason: str = ""


# -- rules ---------------------------------------------------------------------------


class _Test:
    """A compiled condition: where its field is and how to test the value found."""

    __slots__ = ("index", "path", "phrase", "test", "threshold")

    def __init__(
        self,
        index: int,
        path: tuple[str, ...],
        test: Callable[[Any], bool] | None,
        phrase: str = "",
        threshold: float = 0.0,
    ) -> None:
        self.index = index
        self.path = path
        self.test = test  # None for semantic conditions
        self.phrase = phrase
        self.threshold = threshold


class Rule:
    """One routing rule: `Rule(name, [conditions…], route="refunds")`.

    It matches when all its `conditions` hold (`any=True`: at least one; no
    conditions: always, which makes a catch-all). `route` names the capability to
    route to; None lets the routing model pick. `arguments` are fixed arguments for
    the route, `arguments_from` maps argument names to fields of the request (an
    argument whose field is missing is left out). `background` names a capability
    to run beside the routed one.
    """

    __slots__ = (
        "_from",
        "_plain",
        "_semantic",
        "any",
        "arguments",
        "arguments_from",
        "background",
        "conditions",
        "name",
        "route",
    )

    def __init__(
        self,
        name: str,
        conditions: Iterable[Condition] = (),
        *,
        any: bool = False,
        route: str | None = None,
        arguments: Mapping[str, Any] | None = None,
        arguments_from: Mapping[str, str] | None = None,
        background: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a rule needs a name, got {name!r}")
        self.name = name
        self.conditions = tuple(conditions)
        self.any = any
        self.route = route
        self.arguments = dict(arguments) if arguments is not None else None
        self.arguments_from = dict(arguments_from) if arguments_from is not None else None
        self.background = background
        tests = [self._compile(i, c) for i, c in enumerate(self.conditions)]
        # Cheap tests first: a rule's outcome does not depend on the order.
        self._plain = [t for t in tests if t.test is not None]
        self._semantic = [t for t in tests if t.test is None]
        self._from: dict[str, tuple[str, ...]] = {}
        for argument, field in (self.arguments_from or {}).items():
            if not FIELD.match(field):
                raise ValueError(
                    f"rule {name!r}: argument {argument!r} comes from {field!r}; {FIELD_RULE}"
                )
            if argument in (self.arguments or {}):
                raise ValueError(
                    f"rule {name!r}: argument {argument!r} is both fixed and from a field; "
                    "give it one way"
                )
            self._from[argument] = tuple(field.split("."))

    def __repr__(self) -> str:
        return (
            f"Rule({self.name!r}, {list(self.conditions)!r}, any={self.any}, route={self.route!r})"
        )

    @property
    def semantic(self) -> list[Condition]:
        """The rule's semantic conditions."""
        return [self.conditions[t.index] for t in self._semantic]

    def _compile(self, index: int, condition: Condition) -> _Test:
        if not isinstance(condition, Condition):
            raise ValueError(f"rule {self.name!r}: condition {index} is not a Condition")
        where = f"rule {self.name!r}, condition {index} ({condition.field} {condition.op})"
        if not isinstance(condition.field, str) or not FIELD.match(condition.field):
            raise ValueError(f"{where}: field {condition.field!r} is not allowed; {FIELD_RULE}")
        if condition.op not in OPS:
            raise ValueError(f"{where}: unknown op {condition.op!r}; the ops are {', '.join(OPS)}")
        if condition.threshold is not None and condition.op != "semantic":
            raise ValueError(f"{where}: threshold is only for semantic conditions")
        if condition.escape is not None and condition.op != "like":
            raise ValueError(f"{where}: escape is only for like conditions")
        path = tuple(condition.field.split("."))
        op, value = condition.op, condition.value
        if op == "semantic":
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{where}: the value must be the reference phrase (a string)")
            threshold = condition.threshold
            if isinstance(threshold, bool) or not isinstance(threshold, int | float):
                raise ValueError(
                    f"{where}: give a threshold, the least cosine similarity that matches, "
                    "between -1 and 1 (its scale depends on the embedder)"
                )
            if not -1.0 <= threshold <= 1.0:
                raise ValueError(f"{where}: threshold {threshold} is not between -1 and 1")
            return _Test(index, path, None, value, float(threshold))
        return _Test(index, path, _tester(where, op, value, condition.escape))

    async def _matches(self, request: _Request) -> bool:
        if not self.conditions:
            return True
        for test in self._plain:
            assert test.test is not None
            matched = bool(test.test(request.get(test.path)))
            if matched is self.any:
                return matched
        for test in self._semantic:
            value = request.get(test.path)
            matched = False
            if isinstance(value, str) and value.strip():
                score = await request.similarity(value, test.phrase)
                request.scores[f"{self.name}[{test.index}]"] = score
                matched = score >= test.threshold
            if matched is self.any:
                return matched
        return not self.any

    def _arguments(self, request: _Request) -> dict[str, Any] | None:
        if self.arguments is None and self.arguments_from is None:
            return None
        arguments = dict(self.arguments or {})
        for name, path in self._from.items():
            value = request.get(path)
            if value is not _MISSING:
                arguments[name] = value
        return arguments


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "ge": operator.ge,
    "lt": operator.lt,
    "le": operator.le,
}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False
    return bool(a == b)


def _tester(where: str, op: str, value: Any, escape: str | None) -> Callable[[Any], bool]:
    """A function of the field's value that says whether it matches. It is given
    `_MISSING` for a field that is not there, which only `exists False` matches."""
    if op == "exists":
        if not isinstance(value, bool):
            raise ValueError(f"{where}: the value must be True (present) or False (absent)")
        return lambda found: (found is not _MISSING) is value
    if op in ("eq", "ne"):
        want = op == "eq"
        return lambda found: found is not _MISSING and _equal(found, value) is want
    if op in _ORDER:
        compare = _ORDER[op]
        if _is_number(value):
            return lambda found: _is_number(found) and compare(found, value)
        if isinstance(value, str):
            return lambda found: isinstance(found, str) and compare(found, value)
        raise ValueError(f"{where}: compare with a number or a string, not {value!r}")
    if op == "contains":

        def contains(found: Any) -> bool:
            if isinstance(found, str):
                return isinstance(value, str) and value in found
            if isinstance(found, list | tuple):
                return any(_equal(item, value) for item in found)
            if isinstance(found, Mapping):
                return isinstance(value, str) and value in found
            return False

        return contains
    if op == "like":
        if not isinstance(value, str):
            raise ValueError(f"{where}: the value must be a LIKE pattern (a string)")
        if escape is not None and (not isinstance(escape, str) or len(escape) != 1):
            raise ValueError(f"{where}: escape must be one character, got {escape!r}")
        pattern = like_pattern(value, escape, where)
        return lambda found: isinstance(found, str) and pattern.fullmatch(found) is not None
    # regex
    if not isinstance(value, str):
        raise ValueError(f"{where}: the value must be a regular expression (a string)")
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(
            f"{where}: invalid regular expression {value!r}: {exc}; "
            "regex conditions use Python's re syntax"
        ) from None
    return lambda found: isinstance(found, str) and compiled.search(found) is not None


def like_pattern(pattern: str, escape: str | None = None, where: str = "like") -> re.Pattern[str]:
    """SQL LIKE as a regular expression to `fullmatch`: `%` any run of characters,
    `_` any one, other characters themselves (ASCII letters in either case, as
    SQLite's default), and `escape` before a character makes it literal."""
    parts: list[str] = []
    chars = iter(pattern)
    for char in chars:
        if char == escape:
            literal = next(chars, None)
            if literal is None:
                raise ValueError(
                    f"{where}: the pattern {pattern!r} ends with its escape character {escape!r}"
                )
            parts.append(re.escape(literal))
        elif char == "%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.ASCII | re.IGNORECASE | re.DOTALL)


# -- the router ----------------------------------------------------------------------


class _Request:
    """One request being routed: its fields, and the embeddings and scores so far."""

    __slots__ = ("payload", "router", "scores", "state", "text", "vectors")

    def __init__(self, router: Router, text: str, payload: Any, state: Any) -> None:
        self.router = router
        self.text = text
        self.payload = payload
        self.state = state
        self.vectors: dict[str, list[float]] = {}
        self.scores: dict[str, float] = {}

    def get(self, path: tuple[str, ...]) -> Any:
        """The value at a field path, or `_MISSING`."""
        root, keys = path[0], path[1:]
        if root == "content":
            return self.text
        if root == "payload":
            value = self.payload
        else:
            if self.state is None:
                return _MISSING
            try:
                value = self.state[keys[0]]
            except (LookupError, TypeError, InvalidAddress):
                return _MISSING  # no such collection (or no valid name for one)
            keys = keys[1:]
        for key in keys:
            if isinstance(value, Mapping):
                if key not in value:
                    return _MISSING
                value = value[key]
            elif isinstance(value, list | tuple) and _INDEX.fullmatch(key):
                index = int(key)
                if not -len(value) <= index < len(value):
                    return _MISSING
                value = value[index]
            else:
                return _MISSING
        return value

    async def similarity(self, text: str, phrase: str) -> float:
        """Cosine similarity of `text` and a reference phrase. The first call embeds
        the text and every reference phrase not cached yet, in one request."""
        router = self.router
        if text not in self.vectors and text in router._references:
            self.vectors[text] = router._references[text]
        wanted = [] if text in self.vectors else [text]
        wanted += [p for p in router._phrases if p not in router._references and p != text]
        if wanted:
            vectors = await router._embed(wanted)
            for item, vector in zip(wanted, vectors, strict=True):
                if item in router._phrases:
                    router._references[item] = vector
                if item == text:
                    self.vectors[text] = vector
        return cosine(self.vectors[text], router._references[phrase])


class Router:
    """Decides where each request goes: `await router.decide(text, payload, state)`.

    `rules` are tried in order, the first match wins. `default` is the route when
    none matches or the routing model picks none (None: no route). `embedder` is
    needed by semantic conditions, `model` (and `capabilities`) by rules with
    `route=None`. When `capabilities` are given, every route named by a rule, the
    default and the background actions must be one of them. `background` is the
    action run beside every request whose rule names none.
    """

    def __init__(
        self,
        rules: Iterable[Rule],
        *,
        default: str | None = None,
        embedder: Embedder | None = None,
        model: Model | None = None,
        capabilities: Iterable[Capability] = (),
        background: str | None = None,
    ) -> None:
        self.rules = list(rules)
        self.default = default
        self.embedder = embedder
        self.model = model
        self.capabilities = list(capabilities)
        self.background = background
        self._references: dict[str, list[float]] = {}
        self._phrases: list[str] = []
        names = [c.name for c in self.capabilities]
        if len(set(names)) != len(names):
            raise ValueError(f"capability names repeat: {names}")
        known = set(names)
        seen: set[str] = set()

        def check(what: str, name: str | None) -> None:
            if name is not None and known and name not in known:
                raise ValueError(
                    f"{what} {name!r} is not a capability; the capabilities are "
                    f"{', '.join(sorted(known))}"
                )

        check("the default route", default)
        check("the background action", background)
        for rule in self.rules:
            if not isinstance(rule, Rule):
                raise ValueError(f"{rule!r} is not a Rule")
            if rule.name in seen:
                raise ValueError(f"two rules are named {rule.name!r}; rule names are unique")
            seen.add(rule.name)
            check(f"rule {rule.name!r} routes to", rule.route)
            check(f"rule {rule.name!r} runs in the background", rule.background)
            if rule.route is None and (model is None or not self.capabilities):
                raise ValueError(
                    f"rule {rule.name!r} lets the routing model pick (route=None), so the "
                    "Router needs a model and capabilities to pick from"
                )
            for condition in rule.semantic:
                if embedder is None:
                    raise ValueError(
                        f"rule {rule.name!r} has a semantic condition, so the Router needs "
                        "an embedder (OpenAIEmbeddings, WordLlamaEmbeddings, HashingEmbedder)"
                    )
                if condition.value not in self._phrases:
                    self._phrases.append(condition.value)

    def __repr__(self) -> str:
        return f"Router({[r.name for r in self.rules]}, default={self.default!r})"

    async def decide(
        self, text: str, payload: Any = None, state: Mapping[str, Any] | None = None
    ) -> Decision:
        """The route of one request: its text, its message payload, and the entity's
        state (collections by name, as `ctx.state`; read only)."""
        request = _Request(self, text, payload, state)
        for rule in self.rules:
            if not await rule._matches(request):
                continue
            background = rule.background or self.background
            if rule.route is not None:
                return Decision(
                    rule.route,
                    "rule",
                    rule.name,
                    rule._arguments(request),
                    background,
                    request.scores,
                    f"rule {rule.name!r} matched",
                )
            assert self.model is not None  # checked when built
            choice = await llm_route(self.model, text, self.capabilities)
            if choice is not None:
                return Decision(
                    choice,
                    "llm",
                    rule.name,
                    None,
                    background,
                    request.scores,
                    f"rule {rule.name!r} matched; the routing model chose {choice!r}",
                )
            return Decision(
                self.default,
                "default",
                rule.name,
                None,
                background,
                request.scores,
                f"rule {rule.name!r} matched; the routing model chose no capability",
            )
        return Decision(
            self.default, "default", None, None, self.background, request.scores, "no rule matched"
        )

    async def _embed(self, texts: list[str]) -> list[list[float]]:
        assert self.embedder is not None  # checked when built
        vectors = await self.embedder.embed(texts)
        if len(vectors) != len(texts):
            raise ModelError(
                f"the embedder {self.embedder!r} gave {len(vectors)} vectors for {len(texts)} texts"
            )
        return vectors


# -- LLM routing ---------------------------------------------------------------------


ROUTE_TOOL = "route"

ROUTING_PROMPT = """\
You route a user's message to the one capability that should handle it. You do not \
answer the message yourself. Call the `route` tool once, with the name of the \
capability that fits best, or "none" when none of them fits.

Capabilities:
{capabilities}"""


def routing_messages(text: str, capabilities: Sequence[Capability]) -> list[dict[str, Any]]:
    """The conversation a routing model is given: a system prompt listing the
    capabilities (names, descriptions, when to use them or not) and the message."""
    lines = []
    for c in capabilities:
        lines.append(f"- {c.name}: {c.description}")
        if c.when_to_use:
            lines.append(f"  Use when: {c.when_to_use}")
        if c.when_not_to_use:
            lines.append(f"  Do not use when: {c.when_not_to_use}")
    return [
        {"role": "system", "content": ROUTING_PROMPT.format(capabilities="\n".join(lines))},
        {"role": "user", "content": text},
    ]


def routing_tool(capabilities: Sequence[Capability]) -> dict[str, Any]:
    """The one tool a routing model gets: `route(capability)`, an enum of the
    capability names and "none"."""
    return {
        "type": "function",
        "function": {
            "name": ROUTE_TOOL,
            "description": "Send the user's message to one capability, or to none.",
            "parameters": {
                "type": "object",
                "properties": {
                    "capability": {
                        "type": "string",
                        "enum": [*(c.name for c in capabilities), NONE],
                        "description": "The capability's name, or none.",
                    }
                },
                "required": ["capability"],
                "additionalProperties": False,
            },
        },
    }


async def llm_route(model: Model, text: str, capabilities: Sequence[Capability]) -> str | None:
    """Ask `model` which capability should handle `text`: the name it gives through
    the `route` tool (or a reply naming exactly one capability), None when it picks
    none or anything else. The model's errors (`ModelError`) propagate."""
    if not capabilities:
        return None
    reply = await model.reply(
        routing_messages(text, capabilities), [routing_tool(capabilities)], _discard
    )
    return _choice(reply, {c.name: c.name for c in capabilities})


def _discard(_: str) -> None:
    """Routing text is not the reply: it streams nowhere."""


def _choice(reply: Reply, names: dict[str, str]) -> str | None:
    folded = {name.lower(): name for name in names}
    for call in reply.tool_calls:
        if call.name == ROUTE_TOOL:
            arguments = call.arguments
            if isinstance(arguments, str | bytes):
                try:
                    arguments = json.loads(arguments or "{}")
                except ValueError:
                    continue
            picked = arguments.get("capability") if isinstance(arguments, dict) else None
            if isinstance(picked, str):
                if picked.strip().lower() == NONE:
                    return None
                if picked.strip().lower() in folded:
                    return folded[picked.strip().lower()]
        elif call.name in names:  # a model that called the capability itself
            return call.name
    text = reply.text.strip().strip("`'\".").strip()
    if text.lower() in folded:
        return folded[text.lower()]
    named = {
        name
        for key, name in folded.items()
        if re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", reply.text, re.IGNORECASE)
    }
    return named.pop() if len(named) == 1 else None
