"""`wakeful demo`: serve the demo registry on a SQLite file and play a scenario through
the HTTP API, showing each entity's live view. Everything goes over HTTP with the
Python client, as a user's service would."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path

import click

from .cli import Renderer, build_app, serving
from .client import Client
from .demo import registry
from .http.config import ServerConfig


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
    render = Renderer(ops)
    async for event in client.send_and_follow(ops, {"region": "eu"}):
        render(event)
        if event.kind == "approval.requested":
            call = event.data.call_id
            click.echo(click.style(f"    … approving {call} over HTTP", dim=True))
            await client.approve(ops, call, True, "ok from the demo")

    _title("4. a parent spawns workers; each one's completion wakes it")
    research = f"/research/{tag}"
    await client.send(research, {"topics": ["storage", "latency", "recovery"]})
    await _follow_until(client, research, "summary")

    _title("5. a timer wakes an entity a second later")
    reminder = f"/reminder/{tag}"
    await client.send(reminder, {"after": 1.0, "text": "stand up and stretch"})
    await _follow_until(client, reminder, "fired")

    _title("try it yourself (wakeful demo --keep leaves the server up)")
    click.echo(
        f"""  curl -s -X POST {url}/chat/me -H 'content-type: application/json' \\
       -d '{{"payload": {{"text": "hi"}}}}'
  curl -N '{url}/chat/me/main?offset=-1&live=sse'      # the entity log, live
  curl -s '{url}/runs?status=all' | python -m json.tool
  wakeful --url {url} send /ops/me '{{"region": "us"}}' --follow
  wakeful --url {url} approve /ops/me clear-us

  python -c "
from wakeful.transports.client import SyncClient
c = SyncClient('{url}')
print(c.send('/chat/me', {{'text': 'from python'}}))
for e in c.send_and_follow('/chat/me', 'again'): print(e.kind)
"
"""
    )


async def run_demo(db: Path, port: int, keep: bool) -> None:
    started = time.monotonic()
    app = build_app(registry, f"sqlite:{db}", ServerConfig())
    async with serving(app, port=port) as url:
        click.echo(click.style("wakeful demo", bold=True) + f": serving {db} at {url}")
        async with Client(url) as client:
            await scenario(client, url)
        click.echo(click.style(f"demo done in {time.monotonic() - started:.1f} s", fg="green"))
        if keep:
            click.echo(f"the server stays up at {url} (Ctrl-C stops it)")
            await asyncio.Event().wait()
