"""`Agent`: an entity type whose runs are LLM + tool loops (the reasoning strategy).

Each message starts a run: a model step (its text streamed as `text.delta`), then
for each tool call `tool.called`, an approval when the tool requires one, the tool
as a step, and `tool.result` (success, error or denied); then the model again,
until it stops calling tools. Tool calls of one model response run concurrently
when none needs an approval. The conversation is the agent's state, rebuilt from
its stream; the model sees a bounded window of it (`max_messages`, `max_tokens`),
optionally with a summary of what fell out of the window (`summarize=True`).

Other agents can be tools (`subagents=[...]`): a call spawns (or messages) the
sub-agent's entity with `ctx.call` and waits for its run, whose final text is the
tool result; with `inline_subagents=True` the sub-agent's loop runs inside this
run instead, its steps recorded in this entity's stream.

The run's result is `{"text", "stop_reason"}`, and the stop reason (`end_turn` or
`max_steps`) is the run's `reason`; a model failure fails the run with reason
`llm_api_error`. A call to an unknown tool, or with arguments that fail the tool's
schema, gets the validation error as its result (`invalid_tool_call`), and the
model may retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec

from wakeful.runtime import Context, Registry, TerminalError, Wake

from .embeddings import Embedder
from .models import Model, Reply, ToolCall
from .routing import Capability, Decision, Router, Rule
from .tools import InvalidToolCall, Tool, function_spec

__all__ = ["Agent"]

CALL_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


class Agent:
    """An agent entity type: `Agent("assistant", model=…, tools=[…]).register(registry)`."""

    def __init__(
        self,
        name: str,
        *,
        model: Model,
        instructions: str = "",
        description: str = "",
        tools: Iterable[Tool] = (),
        subagents: Iterable[Agent] = (),
        inline_subagents: bool = False,
        mode: str = "classic",
        strategy: str = "reasoning",
        rules: Iterable[Rule] = (),
        default: str | None = None,
        background: str | None = None,
        embedder: Embedder | None = None,
        router_model: Model | None = None,
        capabilities: Iterable[Capability] = (),
        max_iterations: int = 100,
        max_messages: int = 50,
        max_tokens: int | None = None,
        summarize: bool = False,
        summary_model: Model | None = None,
        parallel_tool_calls: bool = True,
        approval_timeout: float = 3600.0,
        call_timeout: float | None = None,
    ) -> None:
        if max_iterations < 1 or max_messages < 1:
            raise ValueError("max_iterations and max_messages must be at least 1")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError("max_tokens must be at least 1 (or None for no token budget)")
        self.name = name
        self.model = model
        self.instructions = instructions
        self.description = description or f"The {name} agent."
        self.tools = {t.name: t for t in tools}
        self.subagents = {a.name: a for a in subagents}
        clash = sorted(set(self.tools) & set(self.subagents))
        if clash:
            raise ValueError(f"agent {name!r}: {clash} is both a tool and a sub-agent")
        if name in self.subagents:
            raise ValueError(f"agent {name!r} cannot be its own sub-agent")
        self.inline_subagents = inline_subagents
        self.mode = mode
        if strategy not in ("reasoning", "route"):
            raise ValueError(f"strategy {strategy!r}: use 'reasoning' or 'route'")
        self.strategy = strategy
        self.router: Router | None = None
        if strategy == "route":
            if not self.tools and not self.subagents:
                raise ValueError(f"agent {name!r}: route mode needs tools or sub-agents")
            self.router = Router(
                rules,
                default=default,
                embedder=embedder,
                model=router_model or model,
                capabilities=self._capabilities(capabilities),
                background=background,
            )
        elif list(rules) or default is not None or background is not None:
            raise ValueError("rules, default and background are for strategy='route'")
        self.max_iterations = max_iterations
        self.max_messages = max_messages
        self.max_tokens = max_tokens
        self.summarize = summarize
        self.summary_model = summary_model or model
        self.parallel_tool_calls = parallel_tool_calls
        self.approval_timeout = approval_timeout
        self.call_timeout = call_timeout

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    def _capabilities(self, guidance: Iterable[Capability]) -> list[Capability]:
        """What a route may name: the tools and the sub-agents, with the when-to-use
        guidance of `guidance` (by name) for the routing model."""
        given: dict[str, Capability | None] = {c.name: c for c in guidance}
        out: list[Capability] = []
        for name, tool in self.tools.items():
            out.append(given.pop(name, None) or Capability.of_tool(tool))
        for name, sub in self.subagents.items():
            out.append(given.pop(name, None) or Capability(name, sub.description))
        if given:
            raise ValueError(
                f"capabilities {sorted(given)} are neither tools nor sub-agents of "
                f"agent {self.name!r}"
            )
        return out

    def register(self, registry: Registry) -> None:
        """Register this agent as the entity type `name`, and its sub-agents (unless they
        run inline, or are registered already)."""
        registry.add(
            self.name,
            self.handle,
            mode=self.mode,
            meta={"kind": "agent", "description": self.description},
        )
        if not self.inline_subagents:
            for sub in self.subagents.values():
                if sub.name not in registry:
                    sub.register(registry)

    def spec(self) -> dict[str, Any]:
        """This agent as a tool another agent's model can call."""
        return function_spec(self.name, self.description, TASK)

    # -- the loop --------------------------------------------------------------------

    async def handle(self, ctx: Context, wake: Wake) -> object:
        conversation = ctx.state["conversation"]
        count = len(conversation)  # keys are 0, 1, 2 … in 8 digits
        # the model sees at most the last max_messages: read no more than those
        start = max(0, count - self.max_messages)
        history = [conversation[_key(i)] for i in range(start, count)]

        def save(message: dict[str, Any]) -> None:
            nonlocal count
            conversation[_key(count)] = message
            count += 1
            history.append(message)

        save({"role": "user", "content": _content(wake)})
        if self.router is not None:
            outcome = await self.route(ctx, wake, history, save)
            ctx.stop_reason = outcome["stop_reason"]
            return outcome
        summary = await self._summary(ctx, conversation, count)
        outcome = await self.reason(ctx, history, save, summary=summary)
        ctx.stop_reason = outcome["stop_reason"]
        return outcome

    async def reason(
        self,
        ctx: Context,
        history: list[dict[str, Any]],
        save: Callable[[dict[str, Any]], None],
        *,
        scope: str = "",
        summary: str | None = None,
    ) -> dict[str, Any]:
        """The reasoning loop on `history` (the last message is the request), adding its
        messages with `save`; returns `{"text", "stop_reason"}`. `scope` is empty for
        the agent's own run and names the call when it runs inline in another's."""
        specs = [t.spec() for t in self.tools.values()] + [
            a.spec() for a in self.subagents.values()
        ]
        stream = not scope
        label = f"{self.name}:model" if scope else "model"
        taken = ctx.state["tool_calls"]
        used: set[str] = set()
        for iteration in range(self.max_iterations):
            messages = self._window(history, summary)
            try:
                raw = await ctx.step(label, self._ask, ctx, messages, specs, stream)
            except TerminalError as exc:  # the model step failed for good
                raise TerminalError(str(exc), reason="llm_api_error") from exc
            reply = _reply(raw)
            if stream:
                ctx.end_text()
            save(_assistant(reply))
            if not reply.tool_calls:
                return {"text": reply.text, "stop_reason": "end_turn"}
            calls: list[tuple[str, ToolCall]] = []
            for index, call in enumerate(reply.tool_calls):
                # the call id names the approval and the tool call in the entity's log;
                # a model may repeat or mangle one, and an inline agent's are scoped
                call_id = f"{scope}{call.id}"
                earlier = taken.get(call_id)
                if (
                    not CALL_ID.match(call_id)
                    or call_id in used
                    or (earlier is not None and earlier.get("run") != ctx.run)
                ):
                    call_id = _short(f"{scope}call-{ctx.run[4:]}-{iteration}-{index}")
                used.add(call_id)
                calls.append((call_id, call))
            for (_, call), content in zip(calls, await self._calls(ctx, calls), strict=True):
                save({"role": "tool", "tool_call_id": call.id, "content": content})
        return {"text": "", "stop_reason": "max_steps"}

    # -- route mode -----------------------------------------------------------------

    async def route(
        self,
        ctx: Context,
        wake: Wake,
        history: list[dict[str, Any]],
        save: Callable[[dict[str, Any]], None],
    ) -> dict[str, Any]:
        """One routing decision (the step `route`), then the routed tool or sub-agent,
        with the background action beside it; the routed one's output is the reply.
        With no route, the model answers once, without tools."""
        assert self.router is not None
        router = self.router
        text = str(history[-1]["content"])

        async def decide() -> dict[str, Any]:
            decision = await router.decide(text, wake.payload, ctx.state)
            return msgspec.to_builtins(decision)  # type: ignore[no-any-return]

        try:
            decision = msgspec.convert(await ctx.step("route", decide), Decision)
        except TerminalError as exc:  # the embedder or the routing model failed
            raise TerminalError(str(exc), reason="llm_api_error") from exc
        ctx.state["routes"][ctx.run] = {
            "route": decision.route,
            "how": decision.how,
            "rule": decision.rule,
            "background": decision.background,
        }
        tag = ctx.run[4:]
        routed = self._routed(ctx, decision, text, f"route-{tag}")
        if decision.background is None:
            reply = await routed
        elif self._needs_order(decision.route or "") or self._needs_order(decision.background):
            # their steps must keep their order: one after the other, the background first
            # when the routed one may wait for an approval
            background = self._background(
                ctx, decision.background, text, decision.arguments, f"background-{tag}"
            )
            tool = self.tools.get(decision.route or "")
            if tool is not None and tool.requires_approval:
                await background
                reply = await routed
            else:
                reply = await routed
                await background
        else:
            reply, _ = await asyncio.gather(
                routed,
                self._background(
                    ctx, decision.background, text, decision.arguments, f"background-{tag}"
                ),
            )
        save({"role": "assistant", "content": reply})
        return {"text": reply, "stop_reason": "end_turn"}

    async def _routed(self, ctx: Context, decision: Decision, text: str, call_id: str) -> str:
        target = decision.route
        if target is None:
            messages = self._window(ctx_history(text), None)
            try:
                raw = await ctx.step("model", self._ask, ctx, messages, [], True)
            except TerminalError as exc:
                raise TerminalError(str(exc), reason="llm_api_error") from exc
            ctx.end_text()
            return str(raw.get("text", ""))
        arguments = decision.arguments
        if target in self.subagents and not (arguments and "task" in arguments):
            arguments = {"task": text}
        elif target in self.tools and arguments is None:
            arguments = await self._fill(ctx, self.tools[target], text)
        content = await self._invoke(ctx, call_id, ToolCall(call_id, target, arguments))
        return str(await ctx.step("reply", self._say, ctx, content))

    async def _fill(self, ctx: Context, tool: Tool, text: str) -> dict[str, Any]:
        """Arguments for a tool a route names without giving them: none if it needs
        none, else the model's, offered only that tool."""
        try:
            return tool.validate({})
        except InvalidToolCall:
            pass
        messages = self._window(ctx_history(text), None)
        raw = await ctx.step("arguments", self._ask, ctx, messages, [tool.spec()], False)
        for call in raw.get("tool_calls", []):
            if call.get("name") == tool.name:
                args = call.get("arguments")
                return args if isinstance(args, dict) else {"raw": args}
        return {}

    async def _background(
        self, ctx: Context, name: str, text: str, given: dict[str, Any] | None, call_id: str
    ) -> None:
        """The background action: its outcome goes to the collection `background`, by
        capability name, and never into the reply; a failure is recorded, not raised. A
        tool gets the rule's arguments when they fit it, else the model's."""
        arguments: dict[str, Any] | None = {"task": text} if name in self.subagents else None
        tool = self.tools.get(name)
        if tool is not None:
            try:
                arguments = tool.validate(given)
            except InvalidToolCall:
                arguments = await self._fill(ctx, tool, text)
        content = await self._invoke(ctx, call_id, ToolCall(call_id, name, arguments))
        ctx.state["background"][name] = {"run": ctx.run, "result": content}

    def _say(self, ctx: Context, text: str) -> str:
        """The routed action's output as the reply, streamed to observers."""
        ctx.emit_text(text)
        return text

    async def _ask(
        self,
        ctx: Context,
        messages: list[dict[str, Any]],
        specs: list[dict[str, Any]],
        stream: bool,
    ) -> dict[str, Any]:
        reply = await self.model.reply(messages, specs, ctx.emit_text if stream else _quiet)
        return {
            "text": reply.text,
            "tool_calls": [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls
            ],
        }

    async def _calls(self, ctx: Context, calls: list[tuple[str, ToolCall]]) -> list[str]:
        """Run the calls of one model response: concurrently when none needs an approval
        and none runs a sub-agent inline (their steps must keep their order); else in
        order. The results come back in call order either way."""
        concurrent = (
            self.parallel_tool_calls
            and len(calls) > 1
            and not any(self._needs_order(call.name) for _, call in calls)
        )
        if concurrent:
            return list(await asyncio.gather(*(self._invoke(ctx, i, c) for i, c in calls)))
        return [await self._invoke(ctx, call_id, call) for call_id, call in calls]

    def _needs_order(self, name: str) -> bool:
        tool = self.tools.get(name)
        if tool is not None:
            return tool.requires_approval
        return name in self.subagents and self.inline_subagents

    async def _invoke(self, ctx: Context, call_id: str, call: ToolCall) -> str:
        """Run one tool call (a tool or a sub-agent) and return what the model reads."""
        sub = self.subagents.get(call.name)
        tool = self.tools.get(call.name)
        try:
            if sub is not None:
                kwargs = {"task": _task(call.name, call.arguments)}
            elif tool is not None:
                kwargs = tool.validate(call.arguments)
            else:
                known = ", ".join(sorted([*self.tools, *self.subagents])) or "none"
                raise InvalidToolCall(call.name, f"no such tool; the tools are: {known}")
        except InvalidToolCall as exc:
            message = str(exc)

            def refuse(**_: Any) -> None:
                raise TerminalError(message, reason="invalid_tool_call")

            args = call.arguments if isinstance(call.arguments, dict) else {"raw": call.arguments}
            await ctx.tool_call(call_id, call.name, refuse, args)
            return f"error: {message}"
        if sub is not None:
            result = await ctx.tool_call(
                call_id, sub.name, self._subagent(ctx, sub, call_id), kwargs, step=False
            )
        else:
            assert tool is not None
            result = await ctx.tool_call(
                call_id,
                tool.name,
                tool,
                kwargs,
                requires_approval=tool.requires_approval,
                approval_timeout=self.approval_timeout,
            )
        if result.status == "success":
            return _text(result.result)
        if result.status == "denied":
            return f"denied: {result.error or 'the call was not approved'}"
        return f"error: {result.error}"

    def _subagent(self, ctx: Context, sub: Agent, call_id: str) -> Callable[..., Awaitable[str]]:
        """The work of a sub-agent call: inline, its loop in this run; else a call to its
        entity, `/<sub>/<this id>.<call id>`, which answers with its final text."""
        if self.inline_subagents:

            async def inline(task: str) -> str:
                history = [{"role": "user", "content": task}]
                outcome = await sub.reason(ctx, history, history.append, scope=f"{call_id}.")
                return str(outcome["text"])

            return inline

        async def spawned(task: str) -> str:
            child = _short(f"{ctx.id}.{call_id}")
            result = await ctx.call(
                sub.name, child, {"text": task}, mode=ctx.mode, timeout=self.call_timeout
            )
            if isinstance(result, dict) and isinstance(result.get("text"), str):
                return str(result["text"])
            return _text(result)

        return spawned

    # -- what the model sees ---------------------------------------------------------

    def _window(self, history: list[dict[str, Any]], summary: str | None) -> list[dict[str, Any]]:
        """The instructions (with the summary of older turns, if any) and the last
        `max_messages` messages within `max_tokens`, never starting on a tool result
        whose call was cut off."""
        recent = history[-self.max_messages :]
        if self.max_tokens is not None:
            budget = self.max_tokens
            kept: list[dict[str, Any]] = []
            for message in reversed(recent):
                budget -= _tokens(message)
                if budget < 0 and kept:
                    break
                kept.append(message)
            recent = kept[::-1]
        while len(recent) > 1 and recent[0].get("role") == "tool":
            recent = recent[1:]
        system = self.instructions
        if summary:
            system = f"{system}\n\nSummary of the earlier conversation:\n{summary}".strip()
        return ([{"role": "system", "content": system}] if system else []) + recent

    async def _summary(self, ctx: Context, conversation: Any, count: int) -> str | None:
        """With `summarize`, a summary of the messages before the window: brought up to
        date (as the step `summarize`) once half a window's worth has fallen out, and
        kept in the collection `memory`."""
        if not self.summarize:
            return None
        memory = ctx.state["memory"]
        summary = str(memory.get("summary") or "")
        upto = int(memory.get("summary_upto") or 0)
        cut = count - self.max_messages
        if cut - upto >= max(1, self.max_messages // 2):
            prompt = [
                {"role": "system", "content": SUMMARY_PROMPT},
                {
                    "role": "user",
                    "content": (f"Summary so far:\n{summary}\n\n" if summary else "")
                    + "Conversation to add:\n"
                    + "\n".join(_line(conversation[_key(i)]) for i in range(upto, cut)),
                },
            ]
            try:
                summary = await ctx.step("summarize", self._summarize, prompt)
            except TerminalError as exc:
                raise TerminalError(str(exc), reason="llm_api_error") from exc
            memory["summary"] = summary
            memory["summary_upto"] = cut
        return summary or None

    async def _summarize(self, prompt: list[dict[str, Any]]) -> str:
        reply = await self.summary_model.reply(prompt, [], _quiet)
        return reply.text


TASK: dict[str, Any] = {
    "type": "object",
    "properties": {
        "task": {"type": "string", "description": "What to ask, with all the context it needs"}
    },
    "required": ["task"],
    "additionalProperties": False,
}
"""The arguments of a sub-agent called as a tool."""

SUMMARY_PROMPT = (
    "You keep the memory of a long conversation. Merge the summary so far with the "
    "messages given into one concise summary: facts, decisions, names, numbers and "
    "open tasks. Answer with the summary only."
)


def ctx_history(text: str) -> list[dict[str, Any]]:
    """The one message a route mode model step sees besides the instructions."""
    return [{"role": "user", "content": text}]


def _quiet(_: str) -> None:
    """Text that is not streamed (an inline sub-agent's, a summary)."""


def _short(identifier: str) -> str:
    """`identifier` if it fits an id (128 characters), else a shortened form that is
    still unique: its start and a hash of the whole."""
    if len(identifier) <= 128:
        return identifier
    digest = hashlib.sha256(identifier.encode()).hexdigest()[:16]
    return f"{identifier[:100]}-{digest}"


def _task(name: str, arguments: Any) -> str:
    """The `task` argument of a sub-agent call, or `InvalidToolCall`."""
    if isinstance(arguments, str | bytes):
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError as exc:
            raise InvalidToolCall(name, f"arguments are not valid JSON: {exc}") from None
    task = arguments.get("task") if isinstance(arguments, dict) else None
    if not isinstance(task, str) or not task.strip():
        raise InvalidToolCall(name, "give the sub-agent a non-empty string `task`")
    return task


def _tokens(message: dict[str, Any]) -> int:
    """A rough token count (4 characters a token), enough for a budget."""
    return len(json.dumps(message)) // 4 + 4


def _line(message: dict[str, Any]) -> str:
    text = message.get("content") or ""
    if message.get("tool_calls"):
        calls = ", ".join(
            f"{c['name']}({_text(c.get('arguments'))})" for c in message["tool_calls"]
        )
        text = f"{text} [calls {calls}]".strip()
    return f"{message.get('role', '?')}: {text}"


def _key(index: int) -> str:
    """The key of the conversation's `index`th message."""
    return f"{index:08d}"


def _content(wake: Wake) -> str:
    payload = wake.payload
    if wake.kind == "message":
        if isinstance(payload, dict) and isinstance(payload.get("text"), str):
            return str(payload["text"])
        return payload if isinstance(payload, str) else _text(payload)
    return f"[{wake.kind}] {_text(payload)}"


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _reply(raw: Any) -> Reply:
    calls = [ToolCall(c["id"], c["name"], c.get("arguments")) for c in raw.get("tool_calls", [])]
    return Reply(text=raw.get("text", ""), tool_calls=calls)


def _assistant(reply: Reply) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.text}
    if reply.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls
        ]
    return message
