"""Entity types and a server fixture for the HTTP tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx

from wakeful.runtime import Context, EventStore, Registry, Runtime, RuntimeConfig, Wake
from wakeful.transports.cli import serving
from wakeful.transports.http.app import create_app
from wakeful.transports.http.config import ServerConfig

registry = Registry()
gates: dict[str, asyncio.Event] = {}
"""Events a `gated` handler waits on, by entity id (set by the test)."""


@registry.entity("echo")
async def echo(ctx: Context, wake: Wake) -> object:
    ctx.state["seen"][str(len(ctx.state["seen"]))] = wake.payload
    ctx.emit_text(f"echo: {wake.payload}")
    return wake.payload


@registry.entity("gated", mode="durable")
async def gated(ctx: Context, wake: Wake) -> object:
    """Emits numbered steps; waits for its gate between step 3 and step 4."""
    out = []
    for i in range(6):
        if i == 3:
            gate = gates.setdefault(ctx.id, asyncio.Event())
            await ctx.step("wait", gate.wait)
        out.append(await ctx.step(f"s{i}", _value, i))
    return out


async def _value(i: int) -> int:
    return i


@registry.entity("tooling", mode="durable")
async def tooling(ctx: Context, wake: Wake) -> object:
    result = await ctx.tool_call(
        "call-1", "dangerous", _value, {"i": 7}, requires_approval=True, approval_timeout=60
    )
    return {"status": result.status, "result": result.result}


@registry.entity("listener")
async def listener(ctx: Context, wake: Wake) -> object:
    payload = await ctx.wait_signal("callback", timeout=30)
    return {"got": payload}


@dataclass
class Served:
    url: str
    rt: Runtime
    http: httpx.AsyncClient


@contextlib.asynccontextmanager
async def served(
    store: EventStore, config: ServerConfig | None = None, headers: dict[str, str] | None = None
) -> AsyncIterator[Served]:
    """The test registry on `store`, served by a real uvicorn on a free loopback port."""
    rt = Runtime(registry, store, RuntimeConfig(wait_timeout=10))
    app = create_app(rt, config or ServerConfig(long_poll_timeout=1.0, sse_keepalive=0.5))
    async with (
        serving(app) as url,
        httpx.AsyncClient(base_url=url, timeout=15, headers=headers) as http,
    ):
        yield Served(url, rt, http)


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parsed server-sent events of a streaming response: {"event", "data", "id"}."""
    current: dict[str, Any] = {"data": []}
    async for line in response.aiter_lines():
        if not line:
            if current["data"]:
                current["data"] = "\n".join(current["data"])
                yield current
            current = {"data": []}
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                current["data"].append(value)
            else:
                current[field] = value


class DroppingProxy:
    """A TCP proxy in front of a server whose `drop()` cuts every open connection, as a
    flaky network would."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.drops = 0

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        self.drop()
        await self.server.wait_closed()

    def drop(self) -> None:
        self.drops += 1
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers -= {writer, up_writer}
