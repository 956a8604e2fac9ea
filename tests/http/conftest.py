"""Shared pieces of the HTTP tests.

- `serve(app)`: any ASGI app served by a real uvicorn on a free loopback port
  in this event loop; yields the base URL (`async with serve(app) as url:`).
- `streams_store` (memory, sqlite) and `streams_http`: the generic Durable
  Streams endpoint mounted at /v1/stream on that store, with an httpx client
  whose base URL is `<server>/v1/stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from wakeful.transports.http.streams import streams_app
from wakeful.transports.http.streamstore import MemoryStreams, SQLiteStreams, StreamStore

STREAM_STORES = ("memory", "sqlite")


@contextlib.asynccontextmanager
async def serve(app: Any, host: str = "127.0.0.1") -> AsyncIterator[str]:
    """Serve `app` with uvicorn on a free port of `host` until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn")
    try:
        while not server.started:
            if task.done():
                await task  # raises why it could not start
                raise RuntimeError("uvicorn stopped while starting")
            await asyncio.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


def make_stream_store(kind: str, path: Path) -> StreamStore:
    if kind == "memory":
        return MemoryStreams(sweep_interval=0.2)
    return SQLiteStreams(path / "streams.db", sweep_interval=0.2)


@pytest.fixture(params=STREAM_STORES)
async def streams_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    store: Any = make_stream_store(str(request.param), tmp_path)
    async with store:
        yield store


def streams_test_app(store: StreamStore, **options: Any) -> Starlette:
    settings: dict[str, Any] = {"long_poll_timeout": 0.5, "sse_keepalive": 0.3} | options
    return Starlette(routes=[Mount("/v1/stream", app=streams_app(store, **settings))])


@pytest.fixture
async def streams_http(streams_store: StreamStore) -> AsyncIterator[httpx.AsyncClient]:
    async with (
        serve(streams_test_app(streams_store)) as url,
        httpx.AsyncClient(base_url=f"{url}/v1/stream", timeout=10) as http,
    ):
        yield http
