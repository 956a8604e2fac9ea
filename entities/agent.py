"""`Agent`: an entity type whose runs are LLM + tool loops (the reasoning strategy).

Each message starts a run: a model step (its text streamed as `text.delta`), then
for each tool call `tool.called`, an approval when the tool requires one, the tool
as a step, and `tool.result` (success, error or denied); then the model again,
until it stops calling tools. The conversation is the agent's state, rebuilt from
its stream; the model sees the last `max_messages` messages of it.

The run's result is `{"text", "stop_reason"}`, and the stop reason (`end_turn` or
`max_steps`) is the run's `reason`; a model failure fails the run with reason
`llm_api_error`. A call to
an unknown tool, or with arguments that fail the tool's schema, gets the
validation error as its result (`invalid_tool_call`), and the model may retry.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from wakeful.runtime import Context, Registry, TerminalError, Wake

from .models import Model, Reply, ToolCall
from .tools import InvalidToolCall, Tool

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
        mode: str = "classic",
        max_iterations: int = 100,
        max_messages: int = 50,
        approval_timeout: float = 3600.0,
    ) -> None:
        if max_iterations < 1 or max_messages < 1:
            raise ValueError("max_iterations and max_messages must be at least 1")
        self.name = name
        self.model = model
        self.instructions = instructions
        self.description = description or f"The {name} agent."
        self.tools = {t.name: t for t in tools}
        self.mode = mode
        self.max_iterations = max_iterations
        self.max_messages = max_messages
        self.approval_timeout = approval_timeout

    def register(self, registry: Registry) -> None:
        """Register this agent as the entity type `name`."""
        registry.add(
            self.name,
            self.handle,
            mode=self.mode,
            meta={"kind": "agent", "description": self.description},
        )

    # -- the loop --------------------------------------------------------------------

    async def handle(self, ctx: Context, wake: Wake) -> object:
        conversation = ctx.state["conversation"]
        _add(conversation, {"role": "user", "content": _content(wake)})
        specs = [t.spec() for t in self.tools.values()]
        used: set[str] = set()
        for iteration in range(self.max_iterations):
            messages = self._context(conversation)
            try:
                raw = await ctx.step("model", self._ask, ctx, messages, specs)
            except TerminalError as exc:  # the model step failed for good
                raise TerminalError(str(exc), reason="llm_api_error") from exc
            reply = _reply(raw)
            ctx.end_text()
            _add(conversation, _assistant(reply))
            if not reply.tool_calls:
                ctx.stop_reason = "end_turn"
                return {"text": reply.text, "stop_reason": "end_turn"}
            for index, call in enumerate(reply.tool_calls):
                # the call id names the approval; a model may repeat or mangle one
                fresh = CALL_ID.match(call.id) and call.id not in used
                call_id = call.id if fresh else f"call-{iteration}-{index}"
                used.add(call_id)
                content = await self._run_tool(ctx, call_id, call)
                _add(conversation, {"role": "tool", "tool_call_id": call.id, "content": content})
        ctx.stop_reason = "max_steps"
        return {"text": "", "stop_reason": "max_steps"}

    async def _ask(
        self, ctx: Context, messages: list[dict[str, Any]], specs: list[dict[str, Any]]
    ) -> dict[str, Any]:
        reply = await self.model.reply(messages, specs, ctx.emit_text)
        return {
            "text": reply.text,
            "tool_calls": [
                {"id": c.id, "name": c.name, "arguments": c.arguments} for c in reply.tool_calls
            ],
        }

    async def _run_tool(self, ctx: Context, call_id: str, call: ToolCall) -> str:
        tool = self.tools.get(call.name)
        try:
            if tool is None:
                known = ", ".join(sorted(self.tools)) or "none"
                raise InvalidToolCall(call.name, f"no such tool; the tools are: {known}")
            kwargs = tool.validate(call.arguments)
        except InvalidToolCall as exc:
            message = str(exc)

            def refuse(**_: Any) -> None:
                raise TerminalError(message, reason="invalid_tool_call")

            args = call.arguments if isinstance(call.arguments, dict) else {"raw": call.arguments}
            result = await ctx.tool_call(call_id, call.name, refuse, args)
            return f"error: {result.error}"
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

    def _context(self, conversation: Any) -> list[dict[str, Any]]:
        """What the model sees: the instructions and the last `max_messages` messages,
        never starting on a tool result whose call was cut off."""
        history = [conversation[k] for k in sorted(conversation)][-self.max_messages :]
        while history and history[0].get("role") == "tool":
            history.pop(0)
        system = [{"role": "system", "content": self.instructions}] if self.instructions else []
        return system + history


def _add(conversation: Any, message: dict[str, Any]) -> None:
    conversation[f"{len(conversation):08d}"] = message


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
