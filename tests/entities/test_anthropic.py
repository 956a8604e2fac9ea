"""AnthropicMessages against a real local HTTP server speaking the Messages API stream."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from wakeful.entities import Agent, AnthropicMessages, ModelError, tool
from wakeful.runtime import Registry, Runtime
from wakeful.transports.cli import serving
from wakeful.transports.memory import MemoryStore


class FakeAnthropic:
    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/v1/messages", self.messages, methods=["POST"])])

    async def messages(self, request: Request) -> Response:
        self.requests.append({"body": await request.json(), "headers": dict(request.headers)})
        answer = self.answers.pop(0)
        if isinstance(answer, tuple):
            status, body, headers = answer
            return JSONResponse(body, status, headers)

        async def stream() -> Any:
            for event in answer:
                yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")


def text_events(*parts: str) -> list[dict[str, Any]]:
    return [
        {"type": "message_start", "message": {"id": "msg_1", "content": []}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *(
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}}
            for p in parts
        ),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn"}},
        {"type": "message_stop"},
    ]


def tool_events(call_id: str, name: str, args: str) -> list[dict[str, Any]]:
    block = {"type": "tool_use", "id": call_id, "name": name, "input": {}}
    return [
        {"type": "message_start", "message": {"id": "msg_2", "content": []}},
        {"type": "content_block_start", "index": 0, "content_block": block},
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": args[:5]},
        },
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "input_json_delta", "partial_json": args[5:]},
        },
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}},
        {"type": "message_stop"},
    ]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def test_text_tool_use_and_the_agent_loop() -> None:
    fake = FakeAnthropic(
        [tool_events("toolu_1", "add", '{"a": 4, "b": 5}'), text_events("nine", ".")]
    )
    async with serving(fake.app) as url:
        registry = Registry()
        model = AnthropicMessages("claude-test", base_url=url, api_key="ak")
        Agent("calc", model=model, tools=[add], instructions="Be brief.").register(registry)
        async with Runtime(registry, MemoryStore()) as rt:
            await rt.send("/calc/c1", "4+5?")
            await rt.idle()
            [run] = await rt.runs(address="/calc/c1", status=None)
            assert (run.status, run.reason) == ("completed", "end_turn")
            result = (await rt.state("/calc/c1"))["runs"][run.run]["result"]
            assert result["text"] == "nine."
    first, second = (r["body"] for r in fake.requests)
    assert first["system"] == "Be brief." and first["tools"][0]["input_schema"]["required"] == [
        "a",
        "b",
    ]
    assert fake.requests[0]["headers"]["x-api-key"] == "ak"
    assert second["messages"][-2]["content"][0] == {
        "type": "tool_use",
        "id": "toolu_1",
        "name": "add",
        "input": {"a": 4, "b": 5},
    }
    assert second["messages"][-1] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "9"}],
    }


async def test_overload_is_retried_and_a_bad_request_is_a_model_error() -> None:
    overloaded = (
        529,
        {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
        {},
    )
    bad = (
        400,
        {
            "type": "error",
            "error": {"type": "invalid_request_error", "message": "max_tokens too big"},
        },
        {},
    )
    fake = FakeAnthropic([overloaded, text_events("hi"), bad])
    async with serving(fake.app) as url:
        model = AnthropicMessages("claude-test", base_url=url, backoff=0.01)
        reply = await model.reply([{"role": "user", "content": "hi"}], [], lambda _: None)
        assert reply.text == "hi" and len(fake.requests) == 2
        with pytest.raises(ModelError, match="400: max_tokens too big"):
            await model.reply([{"role": "user", "content": "hi"}], [], lambda _: None)
