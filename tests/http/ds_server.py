"""Serve the generic Durable Streams endpoint alone, for the conformance suite and benchmarks.

    python tests/http/ds_server.py --sqlite streams.db --port 4437
    python tests/http/ds_server.py --memory --port 4437 --long-poll-timeout 3
    python tests/http/ds_server.py --nats nats://127.0.0.1:4222 --port 4437

Serves `streams_app` mounted at `/v1/stream` on 127.0.0.1 until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount

from wakeful.transports.http.streamjetstream import JetStreamStreams
from wakeful.transports.http.streams import streams_app
from wakeful.transports.http.streamstore import MemoryStreams, SQLiteStreams, StreamStore


def build(store: StreamStore, long_poll_timeout: float) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with store:
            yield

    app = streams_app(store, long_poll_timeout=long_poll_timeout)
    return Starlette(routes=[Mount("/v1/stream", app=app)], lifespan=lifespan)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--sqlite", metavar="PATH", help="SQLite file (created if missing)")
    where.add_argument("--memory", action="store_true", help="in-memory store")
    where.add_argument("--nats", metavar="URL", help="NATS JetStream server (JetStreamStreams)")
    parser.add_argument("--nats-stream", default="WAKEFUL_DS", help="JetStream stream name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=4437)
    parser.add_argument(
        "--long-poll-timeout",
        type=float,
        default=30.0,
        help="seconds a long-poll waits (the conformance suite needs <= 4)",
    )
    args = parser.parse_args()
    store: StreamStore
    if args.nats:
        store = JetStreamStreams(args.nats, stream=args.nats_stream)
    elif args.memory:
        store = MemoryStreams()
    else:
        store = SQLiteStreams(args.sqlite)
    app = build(store, args.long_poll_timeout)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    asyncio.run(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
