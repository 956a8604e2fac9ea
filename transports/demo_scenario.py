"""`wakeful demo`: serve the demo registry on a SQLite file and play a scenario through
the HTTP API, showing each entity's live view. Everything goes over HTTP with the
Python client, as a user's service would.

The agents come from `wakeful.entities.demo`, loaded by import string like any
user registry (transports never import entities statically): scripted models
offline, a real model when `OPENAI_API_KEY` or `OPENAI_BASE_URL` is set."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import click

from wakeful.runtime import Registry

from .cli import Renderer, build_app, load_registry, serving
from .client import Client
from .demo import registry as basics
from .http.config import ServerConfig

AGENTS = "wakeful.entities.demo:registry"


def demo_registry() -> Registry:
    """The basic entity types and the demo's agents in one registry."""
    registry = Registry()
    for source in (basics, load_registry(AGENTS)):
        for name in source.types:
            entity_type = source.get(name)
            registry.add(name, entity_type.handler, mode=entity_type.mode, meta=entity_type.meta)
    return registry


def _title(text: str) -> None:
    click.echo()
    click.echo(
        click.style(f"── {text} ", bold=True) + click.style("─" * max(0, 60 - len(text)), dim=True)
    )


async def _follow_until(client: Client, address: str, key: str, timeout: float = 15.0) -> None:
    """Show the entity's log live until a run completes with `key` in its result."""
    render = Renderer(address)
    async with asyncio.timeout(timeout):
        async for event in client.tail(address):
            render(event)
            if event.kind == "run.completed" and key in (event.data.result or {}):
                return


async def _follow_approving(client: Client, address: str, payload: Any, reason: str) -> None:
    """Send `payload` and show the run it starts, approving what it asks for."""
    render = Renderer(address)
    async for event in client.send_and_follow(address, payload):
        render(event)
        if event.kind == "approval.requested":
            call = event.data.call_id
            click.echo(click.style(f"    … approving {call} over HTTP", dim=True))
            await client.approve(address, call, True, reason)


async def scenario(client: Client, url: str) -> None:
    tag = secrets.token_hex(3)

    _title("1. a classic run streams text (in memory, lowest latency)")
    chat = f"/chat/{tag}"
    render = Renderer(chat)
    async for event in client.send_and_follow(chat, {"text": "hello wakeful"}):
        render(event)

    _title("2. a durable run: each step committed before the next")
    pipeline = f"/pipeline/{tag}"
    render = Renderer(pipeline)
    async for event in client.send_and_follow(pipeline, {"source": "s3://reports"}):
        render(event)

    _title("3. a tool call waits for approval (the wait survives restarts)")
    ops = f"/ops/{tag}"
    await _follow_approving(client, ops, {"region": "eu"}, "ok from the demo")

    _title("4. a parent spawns workers; each one's completion wakes it")
    research = f"/research/{tag}"
    await client.send(research, {"topics": ["storage", "latency", "recovery"]})
    await _follow_until(client, research, "summary")

    _title("5. a timer wakes an entity a second later")
    reminder = f"/reminder/{tag}"
    await client.send(reminder, {"after": 1.0, "text": "stand up and stretch"})
    await _follow_until(client, reminder, "fired")

    _title("6. an agent: a model, tools, a sub-agent and an approval (durable)")
    assistant = f"/assistant/{tag}"
    await _follow_approving(client, assistant, {"text": "Please refund order o-17."}, "refund ok")
    children = (await client.state(assistant))["state"]["children"]
    for child in children:
        click.echo(click.style(f"    the sub-agent ran as its own entity: {child}", dim=True))

    _title("7. route mode: one decision per request, no planning loop")
    support = f"/support/{tag}"
    render = Renderer(support)
    message = {"text": "Where is my parcel?", "parcel": "P-42"}
    async for event in client.send_and_follow(support, message):
        render(event)
    route = (await client.state(support))["state"]["routes"]
    for decision in route.values():
        click.echo(
            click.style(
                f"    routed by {decision['how']} {decision['rule']!r} to {decision['route']}, "
                f"with {decision['background']} in the background",
                dim=True,
            )
        )


def hints(url: str) -> None:
    _title("try it yourself (wakeful demo --keep leaves the server up)")
    click.echo(
        f"""  curl -s -X POST {url}/chat/me -H 'content-type: application/json' \\
       -d '{{"payload": {{"text": "hi"}}}}'
  curl -N '{url}/chat/me/main?offset=-1&live=sse'      # the entity log, live
  curl -s '{url}/runs?status=all' | python -m json.tool
  wakeful --url {url} send /ops/me '{{"region": "us"}}' --follow
  wakeful --url {url} approve /ops/me clear-us
  curl -s {url}/v1/chat/completions -H 'content-type: application/json' \\
       -d '{{"model": "assistant", "user": "me",
            "messages": [{{"role": "user", "content": "hi"}}]}}'

  python -c "
from wakeful.transports.client import SyncClient
c = SyncClient('{url}')
print(c.send('/chat/me', {{'text': 'from python'}}))
for e in c.send_and_follow('/chat/me', 'again'): print(e.kind)
"
"""
    )


async def restart(registry: Registry, db: Path, port: int) -> str:
    """A durable agent run waits for an approval; the server stops; a new server on the
    same file takes the decision, and the run goes on from its last recorded step."""
    _title("8. a durable agent survives a restart of the server")
    address = f"/assistant/{secrets.token_hex(3)}"
    render = Renderer(address)
    call, seen = "", ""
    app = build_app(registry, f"sqlite:{db}", ServerConfig())
    async with serving(app, port=port) as url, Client(url) as client:
        async with asyncio.timeout(30):
            async for event in client.send_and_follow(address, {"text": "Refund o-17."}):
                render(event)
                seen = event.offset
                if event.kind == "approval.requested":
                    call = event.data.call_id
                    break
    click.echo(click.style("    … server stopped, with the run waiting for approval", fg="yellow"))
    app = build_app(registry, f"sqlite:{db}", ServerConfig())
    async with serving(app, port=port) as url, Client(url) as client:
        click.echo(click.style(f"    … a new server on the same file at {url}", dim=True))
        runs = await client.runs(status="active", type="assistant")
        waiting = [r for r in runs if r.address == address]
        status = f"{waiting[0].status}, {waiting[0].reason}"
        click.echo(click.style(f"    {address}: {status}", dim=True))
        await client.approve(address, call, True, "approved after the restart")
        async with asyncio.timeout(30):
            async for event in client.follow_run(waiting[0].run, after=seen):
                render(event)
    return url


async def run_demo(db: Path, port: int, keep: bool) -> None:
    started = time.monotonic()
    registry = demo_registry()
    app = build_app(registry, f"sqlite:{db}", ServerConfig())
    async with serving(app, port=port) as url:
        click.echo(click.style("wakeful demo", bold=True) + f": serving {db} at {url}")
        async with Client(url) as client:
            await scenario(client, url)
    url = await restart(registry, db, port)
    click.echo(click.style(f"demo done in {time.monotonic() - started:.1f} s", fg="green"))
    if not keep:
        hints(url)
        return
    async with serving(build_app(registry, f"sqlite:{db}", ServerConfig()), port=port) as url:
        hints(url)
        click.echo(f"the server stays up at {url} (Ctrl-C stops it)")
        await asyncio.Event().wait()
