"""The stores the benchmarks compare, side by side in one process.

    memory        MemoryStore
    sqlite        SQLiteStore on a file in a temporary directory
    jetstream     JetStreamStore on one nats-server (R1, file storage) started here
    jetstream-r3  JetStreamStore on a 3-node loopback cluster started here (R3, file)

Each `factory(kind)` call starts a fresh data set (a new SQLite file, or the
stream deleted) and returns a function that makes a store on it; calling that
again gives a store on the same data (a restart).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import nats
import nats.js.errors

from wakeful.runtime import EventStore
from wakeful.transports.jetstream import JetStreamStore
from wakeful.transports.memory import MemoryStore
from wakeful.transports.sqlite import SQLiteStore

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.nats_fixtures import NatsCluster, NatsServer

KINDS = ("memory", "sqlite", "jetstream", "jetstream-r3")


class Stores:
    def __init__(self, kinds: list[str], root: Path) -> None:
        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            raise SystemExit(f"unknown store {unknown}; use {', '.join(KINDS)}")
        self.kinds = kinds
        self.root = root
        self.urls: dict[str, list[str]] = {}
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Stores:
        if "jetstream" in self.kinds:
            server = await self._stack.enter_async_context(NatsServer(self.root / "nats"))
            self.urls["jetstream"] = [server.url]
        if "jetstream-r3" in self.kinds:
            cluster = await self._stack.enter_async_context(NatsCluster(self.root / "cluster"))
            self.urls["jetstream-r3"] = cluster.urls
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stack.aclose()

    async def factory(self, kind: str, partitions: int = 16) -> Callable[[], EventStore]:
        if kind == "memory":
            memory = MemoryStore()
            return lambda: memory
        if kind == "sqlite":
            path = self.root / f"bench-{time.monotonic_ns()}.db"
            return lambda: SQLiteStore(path)
        urls = self.urls[kind]
        nc = await nats.connect(urls)
        try:
            with contextlib.suppress(nats.js.errors.NotFoundError):
                await nc.jetstream().delete_stream("WAKEFUL")
        finally:
            await nc.close()
        replicas = 3 if kind == "jetstream-r3" else 1
        return lambda: JetStreamStore(urls, partitions=partitions, replicas=replicas)

    async def make(self, kind: str) -> EventStore:
        return (await self.factory(kind))()


def write_json(args: argparse.Namespace, results: Any, **meta: Any) -> None:
    """Write `results` to `args.json` (if given) with the machine and the arguments."""
    if not args.json:
        return
    about = {
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        **meta,
    }
    out = {"meta": about, "args": vars(args) | {"json": str(args.json)}, "results": results}
    args.json.write_text(json.dumps(out, indent=2))
