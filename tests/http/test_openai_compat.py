"""The OpenAI-compatible endpoint, driven by the real `openai` client against a real
uvicorn serving `Agent`s with scripted models, on memory and SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from wakeful.entities import Agent, Reply, ScriptedModel, ToolCall, tool
from wakeful.runtime import Context, Registry, Runtime, RuntimeConfig, Wake
from wakeful.transports.cli import serving
from wakeful.transports.http import ApiKey, ServerConfig, create_app

from ..conftest import StoreFactory

pytestmark = pytest.mark.parametrize("store_kind", ["memory", "sqlite"], indirect=True)

wiped: list[str] = []


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(requires_approval=True)
async def wipe(disk: str) -> str:
    """Wipe a disk."""
    wiped.append(disk)
    return f"{disk} wiped"


async def echo(ctx: Context, wake: Wake) -> object:
    return wake.payload


@dataclass
class Server:
    rt: Runtime
    client: openai.AsyncOpenAI
    model: ScriptedModel
    url: str


@contextlib.asynccontextmanager
async def agent_server(
    store_factory: StoreFactory,
    script: Sequence[Any],
    *,
    config: ServerConfig | None = None,
    api_key: str = "unused",
    delay: float = 0.0,
    **agent: Any,
) -> AsyncIterator[Server]:
    """An `assistant` agent with `script` (and an `echo` entity type that is no agent),
    served by uvicorn, and an `openai.AsyncOpenAI` client pointed at it."""
    registry = Registry()
    model = ScriptedModel(script, delay=delay)
    Agent(
        "assistant",
        model=model,
        tools=[add, wipe],
        description="Adds numbers and wipes disks.",
        **agent,
    ).register(registry)
    registry.add("echo", echo)
    rt = Runtime(registry, store_factory(), RuntimeConfig(wait_timeout=10))
    app = create_app(rt, config or ServerConfig(sse_keepalive=0.5))
    async with (
        serving(app) as url,
        openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=api_key, timeout=15) as client,
    ):
        yield Server(rt, client, model, url)


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def texts_of(rt: Runtime, address: str, run: str) -> list[str]:
    """The texts the run's model steps produced (its `text.completed` events)."""
    return [
        e.data.text for e in await rt.read(address) if e.run == run and e.kind == "text.completed"
    ]


async def test_a_completion_is_the_run_of_the_last_user_message(
    store_factory: StoreFactory,
) -> None:
    script = [
        Reply(tool_calls=[ToolCall("c1", "add", {"a": 2, "b": 3})]),
        lambda messages: Reply(text=f"The sum is {messages[-1]['content']}."),
    ]
    async with agent_server(store_factory, script) as s:
        raw = await s.client.chat.completions.with_raw_response.create(
            model="assistant",
            messages=[
                {"role": "system", "content": "client-side instructions"},
                {"role": "user", "content": "an earlier question"},
                {"role": "assistant", "content": "an earlier answer"},
                {"role": "user", "content": [{"type": "text", "text": "what is 2+3?"}]},
            ],
            temperature=0.2,  # accepted and ignored
        )
        entity = raw.headers["x-wakeful-entity"]
        completion = raw.parse()
        wakeful = completion.model_extra["wakeful"]  # type: ignore[index]
        run = wakeful["run"]
        assert wakeful == {
            "run": run,
            "address": f"/assistant/{entity}",
            "status": "completed",
            "mode": "classic",
            "waiting_for": None,
        }
        assert completion.id == f"chatcmpl-{run}"
        assert completion.object == "chat.completion"
        assert completion.model == "assistant"
        [choice] = completion.choices
        assert choice.message.role == "assistant"
        assert choice.message.content == "The sum is 5."
        assert choice.finish_reason == "stop"
        record = await s.rt.run(run)
        assert record.status == "completed" and record.reason == "end_turn"
        state = await s.rt.state(f"/assistant/{entity}")
        assert state["runs"][run]["result"]["text"] == choice.message.content
        # only the last user message reached the agent
        conversation = list(state["conversation"].values())
        assert conversation[0] == {"role": "user", "content": "what is 2+3?"}
        first_call = s.model.seen[0]
        assert first_call == [{"role": "user", "content": "what is 2+3?"}]
        # a fresh entity per request that names none
        again = await s.client.chat.completions.with_raw_response.create(
            model="assistant", messages=user("what is 2+3?")
        )
        assert again.headers["x-wakeful-entity"] != entity
        assert again.parse().choices[0].message.content == "The sum is 5."


async def test_streaming_sends_every_text_delta_then_done(store_factory: StoreFactory) -> None:
    script = [
        Reply(text="Let me add these up.", tool_calls=[ToolCall("c1", "add", {"a": 2, "b": 3})]),
        lambda messages: Reply(text=f"Two and three make {messages[-1]['content']} in total."),
    ]
    # A word every 10 ms: slower than the runtime merges text deltas (5 ms), so each word
    # is its own text.delta event, and its own chunk; keepalive comments come in between.
    config = ServerConfig(sse_keepalive=0.005)
    async with agent_server(store_factory, script, delay=0.01, config=config) as s:
        stream = await s.client.chat.completions.create(
            model="assistant",
            messages=user("what is 2+3?"),
            stream=True,
            extra_headers={"X-Wakeful-Entity": "streamer"},
        )
        chunks = [chunk async for chunk in stream]
        first, last = chunks[0], chunks[-1]
        assert first.choices[0].delta.role == "assistant"
        run = first.model_extra["wakeful"]["run"]  # type: ignore[index]
        assert all(c.id == f"chatcmpl-{run}" for c in chunks)
        assert all(c.object == "chat.completion.chunk" for c in chunks)
        assert last.choices[0].finish_reason == "stop"
        assert last.model_extra["wakeful"]["status"] == "completed"  # type: ignore[index]
        assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
        pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
        assert len(pieces) > 5  # word by word, not one lump
        content = "".join(pieces)
        # both model steps' texts, the one before the tool call and the answer after it
        texts = await texts_of(s.rt, "/assistant/streamer", run)
        assert texts == ["Let me add these up.", "Two and three make 5 in total."]
        assert content == "\n\n".join(texts)
        state = await s.rt.state("/assistant/streamer")
        assert content.endswith(state["runs"][run]["result"]["text"])

        # on the wire: the role chunk first, comments in between, [DONE] last
        async with (
            httpx.AsyncClient(base_url=s.url, timeout=10) as http,
            http.stream(
                "POST",
                "/v1/chat/completions",
                json={"model": "assistant", "messages": user("what is 2+3?"), "stream": True},
            ) as response,
        ):
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in response.aiter_lines() if line]
        data = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
        assert json.loads(data[0])["choices"] == [
            {"index": 0, "delta": {"role": "assistant"}, "finish_reason": None, "logprobs": None}
        ]
        assert json.loads(data[-2])["choices"][0]["finish_reason"] == "stop"
        assert data[-1] == "[DONE]"
        assert ": keepalive" in lines


async def test_a_conversation_continues_in_the_entity_and_mode_is_recorded(
    store_factory: StoreFactory,
) -> None:
    script = [
        "Nice to meet you, Ada.",
        lambda messages: Reply(text=f"You first said: {messages[0]['content']}"),
    ]
    async with agent_server(store_factory, script) as s:
        history = user("I am Ada.")
        first = await s.client.chat.completions.create(
            model="assistant",
            messages=history,
            extra_headers={"X-Wakeful-Entity": "ada"},
            extra_body={"mode": "durable"},
        )
        reply = first.choices[0].message.content
        assert reply == "Nice to meet you, Ada."
        assert first.model_extra["wakeful"]["mode"] == "durable"  # type: ignore[index]
        record = await s.rt.run(first.model_extra["wakeful"]["run"])  # type: ignore[index]
        assert record.mode == "durable" and record.address == "/assistant/ada"
        # a client sends the whole history again; only its last message reaches the agent
        history += [{"role": "assistant", "content": reply}, *user("What did I say first?")]
        stream = await s.client.chat.completions.create(
            model="assistant",
            messages=history,
            stream=True,
            extra_headers={"X-Wakeful-Entity": "ada"},
        )
        chunks = [c async for c in stream]
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert content == "You first said: I am Ada."
        run = chunks[0].model_extra["wakeful"]["run"]  # type: ignore[index]
        assert (await s.rt.run(run)).mode == "classic"  # the second request asked for none
        state = await s.rt.state("/assistant/ada")
        assert content == state["runs"][run]["result"]["text"]
        assert s.model.seen[-1] == [
            {"role": "user", "content": "I am Ada."},
            {"role": "assistant", "content": "Nice to meet you, Ada."},
            {"role": "user", "content": "What did I say first?"},
        ]
        # `user` names the entity when there is no header
        named = await s.client.chat.completions.with_raw_response.create(
            model="assistant", messages=user("hello"), user="bob@example.com"
        )
        assert named.headers["x-wakeful-entity"] == "bob@example.com"
        body = named.parse().model_extra["wakeful"]  # type: ignore[index]
        assert body["address"] == "/assistant/bob@example.com"


async def test_models_lists_the_agents_only(store_factory: StoreFactory) -> None:
    async with agent_server(store_factory, ["hi"]) as s:
        models = [m async for m in s.client.models.list()]
        assert [(m.id, m.object, m.owned_by) for m in models] == [("assistant", "model", "wakeful")]
        assert models[0].model_extra["description"] == "Adds numbers and wipes disks."  # type: ignore[index]
        assert (await s.client.models.retrieve("assistant")).id == "assistant"
        with pytest.raises(openai.NotFoundError) as missing:
            await s.client.models.retrieve("echo")
        assert missing.value.code == "model_not_found"


async def test_unknown_models_and_bad_bodies_are_openai_errors(
    store_factory: StoreFactory,
) -> None:
    async with agent_server(store_factory, ["hi"]) as s:
        chat = s.client.chat.completions
        for name in ("gpt-4o", "echo"):
            with pytest.raises(openai.NotFoundError) as unknown:
                await chat.create(model=name, messages=user("hi"))
            assert unknown.value.code == "model_not_found"
            assert unknown.value.param == "model"
            assert "the agents are: assistant" in unknown.value.message
        bad: list[tuple[dict[str, Any], str]] = [
            ({"messages": []}, "messages"),
            (
                {"messages": [*user("hi"), {"role": "assistant", "content": "hello"}]},
                "messages[1].role",
            ),
            (
                {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
                "messages[0].content[0]",
            ),
            ({"messages": user("hi"), "extra_body": {"mode": "fast"}}, "mode"),
            ({"messages": user("hi"), "user": "has a space"}, "user"),
            ({"messages": user("hi"), "n": 2}, "n"),
        ]
        for fields, param in bad:
            with pytest.raises(openai.BadRequestError) as refused:
                await chat.create(model="assistant", **fields)
            assert refused.value.param == param, fields
            assert refused.value.type == "invalid_request_error"
        with pytest.raises(openai.BadRequestError) as header:
            await chat.create(
                model="assistant", messages=user("hi"), extra_headers={"X-Wakeful-Entity": "a/b"}
            )
        assert "X-Wakeful-Entity" in header.value.message
        assert await s.rt.entities("assistant") == []  # bad input wrote nothing


async def test_an_approval_suspends_the_answer_and_holds_the_entity(
    store_factory: StoreFactory,
) -> None:
    wiped.clear()
    script = [
        Reply(text="Wiping sdb now.", tool_calls=[ToolCall("w1", "wipe", {"disk": "sdb"})]),
        "Done: sdb is wiped.",
    ]
    async with agent_server(store_factory, script) as s:
        headers = {"X-Wakeful-Entity": "ops"}
        completion = await s.client.chat.completions.create(
            model="assistant", messages=user("wipe sdb"), extra_headers=headers
        )
        assert completion.choices[0].message.content == "Wiping sdb now."
        assert completion.choices[0].finish_reason == "stop"
        wakeful = completion.model_extra["wakeful"]  # type: ignore[index]
        assert wakeful["status"] == "suspended"
        assert wakeful["waiting_for"] == "approval:w1"
        assert wakeful["address"] == "/assistant/ops"
        assert (await s.rt.run(wakeful["run"])).status == "suspended"
        # another message would wait behind the approval: refused, and not retried
        with pytest.raises(openai.ConflictError) as busy:
            await s.client.chat.completions.create(
                model="assistant", messages=user("and sdc?"), extra_headers=headers
            )
        assert busy.value.code == "entity_suspended"
        assert "approval:w1" in busy.value.message
        info = await s.rt.describe("/assistant/ops")
        assert (
            info.pending == 0 and len(await s.rt.runs(address="/assistant/ops", status=None)) == 1
        )
        await s.rt.approve("/assistant/ops", "w1", True)
        async with asyncio.timeout(10):
            async for _ in s.rt.tail("/assistant/ops", run=wakeful["run"]):
                pass
        assert wiped == ["sdb"]
        assert (await s.rt.run(wakeful["run"])).status == "completed"

        # streaming, durable: the last chunk says the run waits
        stream = await s.client.chat.completions.create(
            model="assistant",
            messages=user("wipe sdb"),
            stream=True,
            extra_headers={"X-Wakeful-Entity": "ops2"},
            extra_body={"mode": "durable"},
        )
        chunks = [c async for c in stream]
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Wiping sdb now."
        assert chunks[-1].choices[0].finish_reason == "stop"
        last = chunks[-1].model_extra["wakeful"]  # type: ignore[index]
        assert (last["status"], last["mode"], last["waiting_for"]) == (
            "suspended",
            "durable",
            "approval:w1",
        )


async def test_a_failed_run_is_an_error_and_is_not_retried(store_factory: StoreFactory) -> None:
    # One reply only: the second message's model step fails (llm_api_error).
    async with agent_server(store_factory, ["the one reply"]) as s:
        headers = {"X-Wakeful-Entity": "f1"}
        await s.client.chat.completions.create(
            model="assistant", messages=user("one"), extra_headers=headers
        )
        with pytest.raises(openai.APIStatusError) as failed:
            await s.client.chat.completions.create(
                model="assistant", messages=user("two"), extra_headers=headers
            )
        assert failed.value.status_code == 502
        assert failed.value.code == "llm_api_error"
        assert "replies are used up" in failed.value.message
        runs = await s.rt.runs(address="/assistant/f1", status=None)
        assert sorted(r.status for r in runs) == ["completed", "failed"]  # no retry sent it again
        # streaming: the error comes as a chunk, which the client raises
        stream = await s.client.chat.completions.create(
            model="assistant", messages=user("three"), stream=True, extra_headers=headers
        )
        got: list[Any] = []
        with pytest.raises(openai.APIError) as in_stream:
            async for chunk in stream:
                got.append(chunk)
        assert "replies are used up" in in_stream.value.message
        assert got[0].choices[0].delta.role == "assistant"


async def test_step_limit_is_length_and_a_cancelled_run_is_a_conflict(
    store_factory: StoreFactory,
) -> None:
    looping = [Reply(tool_calls=[ToolCall("l", "add", {"a": 1, "b": 1})])]
    async with agent_server(store_factory, looping, max_iterations=1) as s:
        completion = await s.client.chat.completions.create(
            model="assistant", messages=user("loop")
        )
        assert completion.choices[0].finish_reason == "length"
        assert completion.choices[0].message.content == ""

    async with agent_server(store_factory, ["slow " * 200], delay=0.01) as s:
        request = asyncio.ensure_future(
            s.client.chat.completions.create(
                model="assistant", messages=user("go"), extra_headers={"X-Wakeful-Entity": "c1"}
            )
        )
        async with asyncio.timeout(10):
            while not (runs := await s.rt.runs(address="/assistant/c1")):
                await asyncio.sleep(0.02)
        await s.rt.cancel("/assistant/c1", runs[0].run)
        with pytest.raises(openai.ConflictError) as cancelled:
            await request
        assert cancelled.value.code == "run_cancelled"
        assert runs[0].run in cancelled.value.message


async def test_idempotency_key_replays_the_same_answer(store_factory: StoreFactory) -> None:
    async with agent_server(store_factory, ["only once"]) as s:
        headers = {"X-Wakeful-Entity": "k1", "Idempotency-Key": "req-1"}
        first = await s.client.chat.completions.create(
            model="assistant", messages=user("hi"), extra_headers=headers
        )
        again = await s.client.chat.completions.create(
            model="assistant", messages=user("hi"), extra_headers=headers
        )
        assert again.id == first.id
        assert again.choices[0].message.content == first.choices[0].message.content == "only once"
        assert s.model.calls == 1


async def test_keys_and_scopes_apply(store_factory: StoreFactory) -> None:
    config = ServerConfig(
        api_keys=(ApiKey("reader", scopes=("read",)), ApiKey("sender", scopes=("read", "send")))
    )
    async with agent_server(store_factory, ["hi there"], config=config, api_key="reader") as s:
        assert [m.id async for m in s.client.models.list()] == ["assistant"]
        with pytest.raises(openai.PermissionDeniedError) as denied:
            await s.client.chat.completions.create(model="assistant", messages=user("hi"))
        assert "'send'" in denied.value.message
        sender = s.client.with_options(api_key="sender")
        answer = await sender.chat.completions.create(model="assistant", messages=user("hi"))
        assert answer.choices[0].message.content == "hi there"
        with pytest.raises(openai.AuthenticationError):
            await s.client.with_options(api_key="nobody").models.list()
