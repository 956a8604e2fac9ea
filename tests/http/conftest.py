"""Shared pieces of the HTTP tests.

- `serve(app)`: any ASGI app served by a real uvicorn on a free loopback port
  in this event loop; yields the base URL (`async with serve(app) as url:`).
- `streams_store` (memory, sqlite) and `streams_http`: the generic Durable
  Streams endpoint mounted at /v1/stream on that store, with an httpx client
  whose base URL is `<server>/v1/stream`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from wakeful.transports.cli import serving
from wakeful.transports.http.streams import streams_app
from wakeful.transports.http.streamstore import MemoryStreams, SQLiteStreams, StreamStore

STREAM_STORES = ("memory", "sqlite")


serve = serving
"""Serve any ASGI app with uvicorn on a free loopback port (the CLI's own helper)."""


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
