"""`OpenAIChat`: the Chat Completions API (streaming, tool calls) of OpenAI or any
compatible server, over httpx."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from ._retry import HTTPModel, openai_endpoint, sse_data
from .models import ModelError, Reply, ToolCall

__all__ = ["OpenAIChat"]


class OpenAIChat(HTTPModel):
    """A `Model` on `POST {base_url}/chat/completions` with `stream: true`.

    `base_url` and `api_key` default to `OPENAI_BASE_URL` (else the OpenAI API) and
    `OPENAI_API_KEY`. Rate limits (429) and server errors are retried `max_retries`
    times with exponential backoff, honouring `Retry-After`; other errors raise
    `ModelError` with the provider's message.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        extra: dict[str, Any] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        url, headers = openai_endpoint(base_url, api_key)
        super().__init__(url, headers, timeout, max_retries, backoff, transport)
        self.model = model
        self.extra = extra or {}

    async def reply(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        on_text: Callable[[str], None],
    ) -> Reply:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [to_openai(m) for m in messages],
            "stream": True,
            **self.extra,
        }
        if tools:
            body["tools"] = tools

        async def read(response: httpx.Response) -> Reply:
            return await self._read(response, on_text)

        return await self._post("/chat/completions", body, read)

    async def _read(self, response: httpx.Response, on_text: Callable[[str], None]) -> Reply:
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        async for data in sse_data(response):
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                raise ModelError(f"{self.base_url}: {chunk['error'].get('message')}")
            for choice in chunk.get("choices", []):
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    text.append(delta["content"])
                    on_text(delta["content"])
                for part in delta.get("tool_calls") or []:
                    call = calls.setdefault(
                        part.get("index", 0), {"id": "", "name": "", "arguments": ""}
                    )
                    call["id"] = part.get("id") or call["id"]
                    function = part.get("function") or {}
                    call["name"] += function.get("name") or ""
                    call["arguments"] += function.get("arguments") or ""
        tool_calls = [
            ToolCall(c["id"] or f"call_{i}", c["name"], c["arguments"] or "{}")
            for i, c in sorted(calls.items())
        ]
        return Reply(text="".join(text), tool_calls=tool_calls)


def to_openai(message: dict[str, Any]) -> dict[str, Any]:
    """An agent conversation message in the Chat Completions shape."""
    out = {k: v for k, v in message.items() if k != "tool_calls"}
    if message.get("tool_calls"):
        out["tool_calls"] = [
            {
                "id": call["id"],
                "type": "function",
                "function": {
                    "name": call["name"],
                    "arguments": call["arguments"]
                    if isinstance(call["arguments"], str)
                    else json.dumps(call["arguments"] or {}),
                },
            }
            for call in message["tool_calls"]
        ]
    return out
