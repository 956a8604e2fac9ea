"""`AnthropicMessages`: the Messages API (streaming, tool use) over httpx."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import httpx

from ._retry import HTTPModel, Retry, sse_data
from .models import ModelError, Reply, ToolCall

__all__ = ["AnthropicMessages"]

API_VERSION = "2023-06-01"


class AnthropicMessages(HTTPModel):
    """A `Model` on `POST {base_url}/v1/messages` with `stream: true`.

    `base_url` and `api_key` default to `ANTHROPIC_BASE_URL` (else the Anthropic API)
    and `ANTHROPIC_API_KEY`. Rate limits, overloads (529) and server errors are
    retried like `OpenAIChat`; other errors raise `ModelError` with the message.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        max_tokens: int = 4096,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY")
        super().__init__(
            base_url or os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com",
            {"anthropic-version": API_VERSION, **({"x-api-key": key} if key else {})},
            timeout,
            max_retries,
            backoff,
            transport,
        )
        self.model = model
        self.max_tokens = max_tokens

    async def reply(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_text: Callable[[str], None],
    ) -> Reply:
        system, converted = to_anthropic(messages)
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "messages": converted,
            "stream": True,
        }
        if system:
            body["system"] = system
        if tools:
            body["tools"] = [
                {
                    "name": t["function"]["name"],
                    "description": t["function"]["description"],
                    "input_schema": t["function"]["parameters"],
                }
                for t in tools
            ]

        async def read(response: httpx.Response) -> Reply:
            return await self._read(response, on_text)

        return await self._post("/v1/messages", body, read)

    async def _read(self, response: httpx.Response, on_text: Callable[[str], None]) -> Reply:
        text: list[str] = []
        blocks: dict[int, dict[str, Any]] = {}
        async for data in sse_data(response):
            event = json.loads(data)
            kind = event.get("type")
            if kind == "error":
                error = event.get("error") or {}
                message = error.get("message", "stream error")
                if error.get("type") in ("overloaded_error", "rate_limit_error"):
                    raise Retry(message, None)
                raise ModelError(f"{self.base_url}: {message}")
            if kind == "content_block_start":
                block = event.get("content_block") or {}
                if block.get("type") == "tool_use":
                    blocks[event["index"]] = {
                        "id": block.get("id", ""),
                        "name": block.get("name", ""),
                        "json": "",
                    }
            elif kind == "content_block_delta":
                delta = event.get("delta") or {}
                if delta.get("type") == "text_delta":
                    text.append(delta.get("text", ""))
                    on_text(delta.get("text", ""))
                elif delta.get("type") == "input_json_delta":
                    blocks[event["index"]]["json"] += delta.get("partial_json", "")
            elif kind == "message_stop":
                break
        calls = [
            ToolCall(b["id"] or f"toolu_{i}", b["name"], b["json"] or "{}")
            for i, b in sorted(blocks.items())
        ]
        return Reply(text="".join(text), tool_calls=calls)


def to_anthropic(messages: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """The system prompt and the messages in the Messages API shape: tool calls are
    `tool_use` blocks, tool results `tool_result` blocks of one user turn."""
    system: list[str] = []
    out: list[dict[str, Any]] = []
    for m in messages:
        role = m.get("role")
        if role == "system":
            system.append(str(m.get("content", "")))
        elif role == "assistant":
            content: list[dict[str, Any]] = []
            if m.get("content"):
                content.append({"type": "text", "text": m["content"]})
            for call in m.get("tool_calls") or []:
                args = call.get("arguments")
                if isinstance(args, str):
                    try:
                        args = json.loads(args or "{}")
                    except json.JSONDecodeError:
                        args = {"raw": args}
                content.append(
                    {"type": "tool_use", "id": call["id"], "name": call["name"], "input": args}
                )
            out.append({"role": "assistant", "content": content or ""})
        elif role == "tool":
            result = {
                "type": "tool_result",
                "tool_use_id": m.get("tool_call_id"),
                "content": str(m.get("content", "")),
            }
            if out and out[-1]["role"] == "user" and isinstance(out[-1]["content"], list):
                out[-1]["content"].append(result)
            else:
                out.append({"role": "user", "content": [result]})
        else:
            out.append({"role": "user", "content": str(m.get("content", ""))})
    return "\n\n".join(system), out
