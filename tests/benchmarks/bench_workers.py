"""Several worker processes on one JetStream stream: are 3 workers faster than 1?

    python tests/benchmarks/bench_workers.py [--workers 1,3] [--messages 20000]
        [--entities 1000] [--replicas 1] [--repeat 3] [--json out.json]

For each worker count: start a nats-server (R1; or a 3-node cluster with
--replicas 3), start the workers (each a `Runtime` with a `JetStreamStore`,
default leases, 16 partitions) and wait until they hold the partitions evenly;
then publish the whole load at once (plain publishes of inbox envelopes, so the
sender is not what is measured) and time until every partition's wake consumer
has nothing pending or unacked: a message is acked only once its entity's log
records it consumed, and the handler's turn commits with that. Medians of
--repeat runs, worker counts interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.js.errors

from wakeful.runtime import Envelope, Runtime
from wakeful.transports.jetstream import JetStreamStore
from wakeful.transports.jetstream.subjects import Layout

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stores import write_json
from bench_kernel import registry  # the same trivial `counter` entity

from tests.nats_fixtures import NatsCluster, NatsServer

PARTITIONS = 16


async def worker(urls: list[str], replicas: int) -> None:
    """One worker process: serve until SIGTERM; print the partitions held when they change."""
    store = JetStreamStore(urls, partitions=PARTITIONS, replicas=replicas)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with Runtime(registry, store):
        shown: list[int] | None = None
        while not stop.is_set():
            held = store.held_partitions()
            if held != shown:
                print("held", len(held), flush=True)
                shown = held
            try:
                async with asyncio.timeout(0.1):
                    await stop.wait()
            except TimeoutError:
                pass


async def drained(nc: Any, stream: str) -> bool:
    js = nc.jetstream()
    for p in range(PARTITIONS):
        info = await js.consumer_info(stream, f"wk_p{p}")
        if info.num_pending or info.num_ack_pending:
            return False
    return True


async def one_run(urls: list[str], replicas: int, workers: int, args: argparse.Namespace) -> float:
    procs = []
    held = [0] * workers

    async def watch(i: int, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            parts = line.decode().split()
            if parts and parts[0] == "held":
                held[i] = int(parts[1])

    nc = await nats.connect(urls)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):  # a fresh stream each run
            await nc.jetstream().delete_stream("WAKEFUL")
        async with JetStreamStore(urls, partitions=PARTITIONS, replicas=replicas, ownership="none"):
            pass  # creates the stream
        watchers = []
        for i in range(workers):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--worker",
                ",".join(urls),
                "--replicas",
                str(replicas),
                stdout=asyncio.subprocess.PIPE,
            )
            procs.append(proc)
            watchers.append(asyncio.create_task(watch(i, proc)))
        fair = -(-PARTITIONS // workers)
        async with asyncio.timeout(60):
            while sum(held) != PARTITIONS or max(held) > fair:
                await asyncio.sleep(0.05)
        layout = Layout(PARTITIONS)
        encode = msgspec.json.Encoder().encode
        began = time.perf_counter()
        for n in range(args.messages):
            address = f"/counter/e{n % args.entities}"
            await nc.publish(layout.inbox(address), encode(Envelope(address=address, payload=n)))
        await nc.flush()
        async with asyncio.timeout(600):
            while not await drained(nc, "WAKEFUL"):
                await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - began
        return args.messages / elapsed
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await nc.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,3")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        await worker(args.worker.split(","), args.replicas)
        return
    counts = [int(c) for c in args.workers.split(",")]
    rates: dict[int, list[float]] = {c: [] for c in counts}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.replicas == 3:
            server: Any = NatsCluster(root / "cluster")
        else:
            server = NatsServer(root / "nats")
        async with server:
            urls = server.urls if args.replicas == 3 else [server.url]
            for _ in range(args.repeat):
                for c in counts:
                    rates[c].append(await one_run(urls, args.replicas, c, args))
    results = {str(c): statistics.median(r) for c, r in rates.items()}
    print(f"R{args.replicas}, {args.messages:,} messages over {args.entities:,} entities")
    print(f"{'workers':>8}  {'messages/s':>12}  {'vs 1':>6}")
    base = results.get("1")
    for c in counts:
        ratio = f"{results[str(c)] / base:.2f}" if base else "-"
        print(f"{c:>8}  {results[str(c)]:>12,.0f}  {ratio:>6}")
    write_json(args, rates)


if __name__ == "__main__":
    asyncio.run(main())
