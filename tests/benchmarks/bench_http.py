"""HTTP benchmarks: messages/s through the API, and live delivery to many SSE observers.

    python tests/benchmarks/bench_http.py [--stores sqlite,jetstream] [--messages 4000]
        [--senders 32] [--observers 1000] [--observer-procs 2] [--rounds 40] [--json out.json]

`wakeful serve` runs as its own process (on SQLite, or on a nats-server started
here), as in production; the load comes from this process.

1. messages/s: `--senders` concurrent HTTP clients POST `--messages` messages to
   100 entities (keep-alive connections of a raw asyncio client: httpx would measure
   itself). "accepted/s" counts 202s; "processed/s"
   runs until the server's `/metrics` shows every run ended.
2. observers: `--observers` SSE connections (spread over `--observer-procs`
   processes, raw sockets so the client side stays cheap) follow one entity's log
   (`/main?offset=now&live=sse`); then `--rounds` messages are sent 100 ms apart.
   Each run commits a few events; the delivery latency of an event is the time an
   observer read it minus the event's own timestamp (taken when the server's writer
   created it, before the commit). Median and p99 over every (observer, event).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

import httpx
import msgspec

from wakeful.runtime import Context, Registry, Wake

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _http import Connection  # noqa: E402
from _stores import Stores, write_json  # noqa: E402

sys.path.insert(0, str(ROOT))
from tests.nats_fixtures import free_port  # noqa: E402

registry = Registry()


@registry.entity("bench")
async def bench(ctx: Context, wake: Wake) -> object:
    totals = ctx.state["totals"]
    totals["n"] = totals.get("n", 0) + 1
    return totals["n"]


@registry.entity("hot")
async def hot(ctx: Context, wake: Wake) -> object:
    ctx.emit_text(f"tick {wake.payload}")
    return wake.payload


class _At(msgspec.Struct):
    at: float
    kind: str


_batch = msgspec.json.Decoder(list[_At])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Server:
    """`wakeful serve` in a subprocess."""

    def __init__(self, store: str, root: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.store = store
        self.log = (root / f"serve-{self.port}.log").open("wb")
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Server:
        env = {**os.environ, "WAKEFUL_SSE_RECONNECT": "0", "PYTHONPATH": str(ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            *[
                sys.executable,
                "-c",
                "from wakeful.transports.cli import main; main()",
                "serve",
                "--store",
                self.store,
                "--app",
                "tests.benchmarks.bench_http:registry",
                "--port",
                str(self.port),
                "--ownership",
                "all",
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=ROOT,
            stdout=self.log,
            stderr=self.log,
        )
        async with httpx.AsyncClient() as client:
            for _ in range(300):
                try:
                    if (await client.get(self.url + "/healthz")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise RuntimeError(f"wakeful serve did not start; see {self.log.name}")

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
        self.log.close()


async def runs_ended(client: httpx.AsyncClient) -> int:
    text = (await client.get("/metrics")).text
    return sum(
        int(float(line.split()[-1]))
        for line in text.splitlines()
        if line.startswith("wakeful_runs_ended_total")
    )


async def messages_per_second(url: str, messages: int, senders: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        before = await runs_ended(client)
    queue = list(range(messages))
    latencies: list[float] = []
    headers = {"Content-Type": "application/json"}

    async def sender() -> None:
        conn = await Connection.open(url)
        try:
            while queue:
                i = queue.pop()
                body = b'{"payload": %d}' % i
                t = time.perf_counter()
                status, _, content = await conn.request("POST", f"/bench/e{i % 100}", body, headers)
                latencies.append(time.perf_counter() - t)
                if status != 202:
                    raise RuntimeError(f"POST answered {status}: {content[:200]!r}")
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    accepted = time.perf_counter() - start
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while await runs_ended(client) - before < messages:
            await asyncio.sleep(0.02)
    processed = time.perf_counter() - start
    return {
        "accepted_per_s": messages / accepted,
        "processed_per_s": messages / processed,
        "post_p50_ms": statistics.median(latencies) * 1000,
        "post_p99_ms": percentile(latencies, 0.99) * 1000,
    }


async def _observe(
    port: int, path: str, rounds: int, ready: asyncio.Event, out: list[float]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    while (await reader.readline()) not in (b"\r\n", b""):
        pass
    event = b""
    done = 0
    try:
        while done < rounds:
            line = await reader.readline()
            if not line:
                raise RuntimeError("an observer's stream ended early")
            if line.startswith(b"event: "):
                event = line[7:].strip()
            elif line.startswith(b"data: "):
                now = time.time()
                if event == b"data":
                    for e in _batch.decode(line[6:]):
                        out.append(now - e.at)
                        done += e.kind == "run.completed"
                elif event == b"control":
                    ready.set()
    finally:
        writer.close()


async def _observer_group(port: int, count: int, rounds: int, conn: Pipe) -> None:
    latencies: list[float] = []
    readies = [asyncio.Event() for _ in range(count)]
    tasks = []
    for ready in readies:  # connect gradually so the accept backlog never overflows
        tasks.append(
            asyncio.create_task(
                _observe(port, "/hot/h1/main?offset=now&live=sse", rounds, ready, latencies)
            )
        )
        await asyncio.sleep(0.001)
    await asyncio.gather(*(r.wait() for r in readies))
    conn.send("ready")
    await asyncio.gather(*tasks)
    conn.send(latencies)


def _observer_process(port: int, count: int, rounds: int, conn: Pipe) -> None:
    asyncio.run(_observer_group(port, count, rounds, conn))


async def observers(url: str, port: int, count: int, procs: int, rounds: int) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    pipes = []
    workers = []
    for i in range(procs):
        parent, child = ctx.Pipe()
        share = count // procs + (1 if i < count % procs else 0)
        p = ctx.Process(target=_observer_process, args=(port, share, rounds, child))
        p.start()
        pipes.append(parent)
        workers.append(p)
    loop = asyncio.get_running_loop()
    for pipe in pipes:
        assert await loop.run_in_executor(None, pipe.recv) == "ready"
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        for i in range(rounds):
            (await client.post("/hot/h1", json={"payload": i})).raise_for_status()
            await asyncio.sleep(0.1)
    latencies: list[float] = []
    for pipe in pipes:
        latencies += await loop.run_in_executor(None, pipe.recv)
    for p in workers:
        p.join(30)
    return {
        "observers": count,
        "deliveries": len(latencies),
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies) * 1000,
    }


async def main(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kinds = args.stores.split(",")
        async with Stores([k for k in kinds if k.startswith("jetstream")], root) as stores:
            for kind in kinds:
                if kind == "sqlite":
                    spec = f"sqlite:{root / 'http.db'}"
                else:
                    await stores.factory(kind)  # a fresh stream
                    spec = ",".join(stores.urls[kind])
                async with Server(spec, root) as server:
                    rate = await messages_per_second(server.url, args.messages, args.senders)
                    seen = await observers(
                        server.url, server.port, args.observers, args.observer_procs, args.rounds
                    )
                results[kind] = {"messages": rate, "observers": seen}
                print(
                    f"{kind:<10} accepted {rate['accepted_per_s']:>7,.0f}/s  "
                    f"processed {rate['processed_per_s']:>7,.0f}/s  "
                    f"POST p50 {rate['post_p50_ms']:.1f} ms p99 {rate['post_p99_ms']:.1f} ms  |  "
                    f"{seen['observers']} SSE observers: p50 {seen['p50_ms']:.1f} ms "
                    f"p99 {seen['p99_ms']:.1f} ms max {seen['max_ms']:.1f} ms "
                    f"({seen['deliveries']:,} deliveries)"
                )
    write_json(args, results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="sqlite,jetstream")
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--senders", type=int, default=32)
    parser.add_argument("--observers", type=int, default=1000)
    parser.add_argument("--observer-procs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--json", type=Path, default=None)
    asyncio.run(main(parser.parse_args()))
