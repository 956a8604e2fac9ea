"""`AnthropicMessages`: the Messages API (streaming, tool use) over httpx."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import httpx

from ._retry import RETRY_STATUSES, Retry, error_message, retry_after, with_retries
from .models import ModelError, Reply, ToolCall

__all__ = ["AnthropicMessages"]

API_VERSION = "2023-06-01"


class AnthropicMessages:
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
        self.model = model
        self.base_url = (
            base_url or os.environ.get("ANTHROPIC_BASE_URL") or "https://api.anthropic.com"
        ).rstrip("/")
        key = api_key if api_key is not None else os.environ.get("ANTHROPIC_API_KEY")
        self.max_tokens = max_tokens
        self.max_retries = max_retries
        self.backoff = backoff
        self._headers = {"anthropic-version": API_VERSION, **({"x-api-key": key} if key else {})}
        self._timeout = httpx.Timeout(timeout)
        self._transport = transport

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
        blocks: dict[int, dict[str, Any]] = {}
        try:
            async with http.stream("POST", "/v1/messages", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    message = error_message(response)
                    if response.status_code in RETRY_STATUSES:
                        raise Retry(message, retry_after(response))
                    raise ModelError(f"{self.base_url}: {response.status_code}: {message}")
                async for line in response.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:].strip())
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
        except httpx.TimeoutException as exc:
            raise Retry(f"timed out: {exc!r}", None) from exc
        except httpx.TransportError as exc:
            raise Retry(f"connection failed: {exc!r}", None) from exc
        except (json.JSONDecodeError, KeyError) as exc:
            raise ModelError(f"{self.base_url}: a stream event is malformed: {exc!r}") from exc
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
