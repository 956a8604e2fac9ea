"""What an agent needs from a language model, and `ScriptedModel` for tests and demos.

A model takes the conversation (Chat Completions-style message dicts) and the tool
specs, streams text through `on_text`, and returns a `Reply`: the assistant's text
and the tool calls it asks for. Adapters for real APIs implement the same protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

from wakeful.runtime import WakefulError

__all__ = ["Model", "ModelError", "Reply", "ScriptedModel", "ToolCall"]


class ToolCall(msgspec.Struct, frozen=True):
    """One tool call a model asks for."""

    id: str
    name: str
    arguments: Any = None
    """The arguments as the model gave them: a JSON object, or its text."""


class Reply(msgspec.Struct, frozen=True):
    """One model response."""

    text: str = ""
    tool_calls: list[ToolCall] = []


class ModelError(WakefulError):
    """The model could not answer (API error, rate limit after retries, bad response)."""


class Model(Protocol):
    """A language model an `Agent` can use."""

    async def reply(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_text: Callable[[str], None],
    ) -> Reply:
        """Answer the conversation; stream the text through `on_text` as it comes."""
        ...


Script = Reply | str | Callable[[list[dict[str, Any]]], Reply]


class ScriptedModel:
    """A deterministic model: its Nth answer in a conversation is `script[N]`.

    N is the number of assistant messages in the conversation it is given, so the
    answer depends on the conversation only, not on how many calls this object
    saw: a durable run resumed in a new process gets the same answers. An entry is
    a `Reply`, a plain string (a text reply), or a function of the conversation
    returning a `Reply`. Text is streamed word by word, `delay` seconds apart. Past
    the end of the script, `ModelError` (or, with `repeat=True`, from the start
    again). `calls` counts the calls, so tests can see what was not asked again.
    """

    def __init__(self, script: Sequence[Script], *, delay: float = 0.0, repeat: bool = False):
        if not script:
            raise ValueError("a ScriptedModel needs at least one reply")
        self.script = list(script)
        self.delay = delay
        self.repeat = repeat
        self.calls = 0
        self.seen: list[list[dict[str, Any]]] = []
        """The conversation each call was given."""

    async def reply(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_text: Callable[[str], None],
    ) -> Reply:
        n = sum(1 for m in messages if m.get("role") == "assistant")
        self.calls += 1
        if n >= len(self.script) and not self.repeat:
            raise ModelError(f"the ScriptedModel's {len(self.script)} replies are used up")
        entry = self.script[n % len(self.script)]
        self.seen.append(messages)
        reply = (
            entry
            if isinstance(entry, Reply)
            else Reply(text=entry)
            if isinstance(entry, str)
            else entry(messages)
        )
        words = reply.text.split(" ")
        for i, word in enumerate(words):
            on_text(word if i == len(words) - 1 else word + " ")
            if self.delay:
                await asyncio.sleep(self.delay)
        return reply
