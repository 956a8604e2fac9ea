"""OpenAIChat against a real local HTTP server that speaks Chat Completions streaming."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from wakeful.entities import Agent, ModelError, OpenAIChat, tool
from wakeful.runtime import Registry, Runtime
from wakeful.transports.cli import serving
from wakeful.transports.memory import MemoryStore


class FakeOpenAI:
    """Answers each POST /chat/completions with the next scripted answer: a list of
    stream chunks, or (status, body, headers) for an error."""

    def __init__(self, answers: list[Any]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        self.requests.append(
            {"body": await request.json(), "auth": request.headers.get("authorization")}
        )
        answer = self.answers.pop(0)
        if isinstance(answer, tuple):
            status, body, headers = answer
            return JSONResponse(body, status, headers)

        async def stream() -> Any:
            for chunk in answer:
                yield f"data: {json.dumps(chunk)}\n\n"
                await asyncio.sleep(0)
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")


def text_chunks(*parts: str) -> list[dict[str, Any]]:
    return [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in parts] + [
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    ]


def tool_chunks(call_id: str, name: str, args: str) -> list[dict[str, Any]]:
    half = len(args) // 2
    return [
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": name, "arguments": ""},
                            }
                        ]
                    },
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": args[:half]}}]},
                }
            ]
        },
        {
            "choices": [
                {
                    "index": 0,
                    "delta": {"tool_calls": [{"index": 0, "function": {"arguments": args[half:]}}]},
                }
            ]
        },
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
    ]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def test_streams_text_and_assembles_tool_call_deltas() -> None:
    fake = FakeOpenAI([text_chunks("Hel", "lo"), tool_chunks("call_1", "add", '{"a": 2, "b": 40}')])
    async with serving(fake.app) as url:
        model = OpenAIChat("gpt-test", base_url=url + "/v1", api_key="sk-test")
        seen: list[str] = []
        reply = await model.reply([{"role": "user", "content": "hi"}], [add.spec()], seen.append)
        assert reply.text == "Hello" and seen == ["Hel", "lo"]
        reply = await model.reply([{"role": "user", "content": "add"}], [add.spec()], seen.append)
        [call] = reply.tool_calls
        assert (call.id, call.name) == ("call_1", "add")
        assert add.validate(call.arguments) == {"a": 2, "b": 40}
    body = fake.requests[0]["body"]
    assert body["model"] == "gpt-test" and body["stream"] is True
    assert body["tools"][0]["function"]["name"] == "add"
    assert fake.requests[0]["auth"] == "Bearer sk-test"


async def test_rate_limits_are_retried_after_retry_after_and_errors_carry_the_message() -> None:
    limited = (429, {"error": {"message": "slow down"}}, {"Retry-After": "0.2"})
    fake = FakeOpenAI(
        [limited, text_chunks("ok"), (400, {"error": {"message": "bad model name"}}, {})]
    )
    async with serving(fake.app) as url:
        model = OpenAIChat("gpt-test", base_url=url + "/v1", api_key="k")
        started = asyncio.get_running_loop().time()
        reply = await model.reply([{"role": "user", "content": "hi"}], [], lambda _: None)
        assert reply.text == "ok"
        assert asyncio.get_running_loop().time() - started >= 0.2
        with pytest.raises(ModelError, match="400: bad model name"):
            await model.reply([{"role": "user", "content": "hi"}], [], lambda _: None)
        fake.answers = [limited] * 3
        impatient = OpenAIChat("gpt-test", base_url=url + "/v1", max_retries=2)
        with pytest.raises(ModelError, match="after 3 attempts: slow down"):
            await impatient.reply([{"role": "user", "content": "hi"}], [], lambda _: None)


async def test_an_agent_runs_its_tool_loop_through_the_adapter() -> None:
    fake = FakeOpenAI(
        [tool_chunks("call_9", "add", '{"a": 1, "b": 2}'), text_chunks("It is ", "3.")]
    )
    async with serving(fake.app) as url:
        registry = Registry()
        Agent("calc", model=OpenAIChat("gpt-test", base_url=url + "/v1"), tools=[add]).register(
            registry
        )
        async with Runtime(registry, MemoryStore()) as rt:
            await rt.send("/calc/c1", "1+2?")
            await rt.idle()
            [run] = await rt.runs(address="/calc/c1", status=None)
            assert (run.status, run.reason) == ("completed", "end_turn")
    second = fake.requests[1]["body"]["messages"]
    assert second[-2]["tool_calls"][0]["function"] == {
        "name": "add",
        "arguments": '{"a": 1, "b": 2}',
    }
    assert second[-1] == {"role": "tool", "tool_call_id": "call_9", "content": "3"}
