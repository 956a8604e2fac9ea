"""`OpenAIChat`: the Chat Completions API (streaming, tool calls) of OpenAI or any
compatible server, over httpx."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import httpx

from ._retry import RETRY_STATUSES, Retry, error_message, retry_after, with_retries
from .models import ModelError, Reply, ToolCall

__all__ = ["OpenAIChat"]


class OpenAIChat:
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
        self.model = model
        self.base_url = (
            base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        ).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_retries = max_retries
        self.backoff = backoff
        self.extra = extra or {}
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._timeout = httpx.Timeout(timeout)
        self._headers = headers
        self._transport = transport

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
        async with httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self._timeout,
            transport=self._transport,
        ) as http:
            return await with_retries(
                self.base_url,
                self.max_retries,
                self.backoff,
                lambda: self._stream(http, body, on_text),
            )

    async def _stream(
        self, http: httpx.AsyncClient, body: dict[str, Any], on_text: Callable[[str], None]
    ) -> Reply:
        text: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        try:
            async with http.stream("POST", "/chat/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    message = error_message(response)
                    if response.status_code in RETRY_STATUSES:
                        raise Retry(message, retry_after(response))
                    raise ModelError(f"{self.base_url}: {response.status_code}: {message}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
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
        except httpx.TimeoutException as exc:
            raise Retry(f"timed out: {exc!r}", None) from exc
        except httpx.TransportError as exc:
            raise Retry(f"connection failed: {exc!r}", None) from exc
        except json.JSONDecodeError as exc:
            raise ModelError(f"{self.base_url}: a stream chunk is not JSON: {exc}") from exc
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
