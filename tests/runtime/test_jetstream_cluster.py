"""A 3-node JetStream cluster on loopback, the stream at R3, and its leader SIGKILLed
under load (issue 4, "Cluster").

No acknowledged commit is lost, publishing resumes after the election, and the
runtime reconnects by itself: every acknowledged send is processed exactly once.
The test prints the longest pause it saw in acknowledgements (the election gap).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import nats
import pytest

from wakeful.runtime import Commit, Context, NewEvent, Registry, Runtime, Wake
from wakeful.runtime import events as ev
from wakeful.transports.jetstream import JetStreamStore

from ..nats_fixtures import NatsCluster
from .invariants import check_all_ended

pytestmark = pytest.mark.timeout(180)

registry = Registry()


@registry.entity("tick")
async def tick(ctx: Context, wake: Wake) -> object:
    ctx.state["seen"][str(wake.payload["n"])] = True
    return wake.payload["n"]


@registry.entity("job", mode="durable")
async def job(ctx: Context, wake: Wake) -> object:
    a = await ctx.step("a", asyncio.sleep, 0.005, 1)
    b = await ctx.step("b", asyncio.sleep, 0.005, 2)
    return a + b


async def leader_of(urls: list[str], stream: str) -> str:
    nc = await nats.connect(urls)
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None and info.cluster.leader
        return info.cluster.leader
    finally:
        await nc.close()


async def test_sigkill_of_the_stream_leader_loses_no_acknowledged_commit(tmp_path: Path) -> None:
    async with NatsCluster(tmp_path / "cluster") as cluster:
        store = JetStreamStore(cluster.urls, replicas=3, partitions=4, request_timeout=2.0)
        async with Runtime(registry, store) as rt:
            addresses = [f"/tick/t{i}" for i in range(10)] + [f"/job/j{i}" for i in range(10)]
            acked: dict[str, list[int]] = {a: [] for a in addresses}
            ack_times: list[float] = []
            committed: list[tuple[str, int, str]] = []  # straight store commits: offset, seq
            stop = asyncio.Event()

            async def send_load() -> None:
                n = 0
                while not stop.is_set():
                    address = addresses[n % len(addresses)]
                    await rt.send(address, {"n": n}, key=f"m{n}")  # retried inside the store
                    acked[address].append(n)
                    ack_times.append(time.monotonic())
                    n += 1

            async def commit_load() -> None:
                address, seq = "/ledger/main", 0
                while not stop.is_set():
                    data = ev.StateSet("c", str(seq), seq)
                    events = await store.commit(
                        Commit(address, seq, [NewEvent("state.set", data, time.time())])
                    )
                    for e in events:
                        committed.append((e.offset, e.seq, e.kind))
                    seq = events[-1].seq

            tasks = [asyncio.create_task(send_load()), asyncio.create_task(commit_load())]
            await asyncio.sleep(1.5)
            leader = await leader_of(cluster.urls, "WAKEFUL")
            cluster.kill(leader)
            killed_at = time.monotonic()
            before = len(ack_times)
            async with asyncio.timeout(30):  # the election takes 5-7 s here
                while not [t for t in ack_times if t > killed_at + 0.1]:
                    await asyncio.sleep(0.1)
            await asyncio.sleep(2)
            stop.set()
            await asyncio.gather(*tasks)
            after = [t for t in ack_times if t > killed_at]
            assert len(after) > 50, "publishing did not resume after the election"
            gaps = [b - a for a, b in itertools.pairwise(ack_times)]
            gap = max(gaps)
            print(f"acks before kill {before}, after {len(after)}; longest pause {gap:.2f}s")

            async with asyncio.timeout(60):
                await rt.idle()
            for address in addresses:
                events = await rt.read(address)
                check_all_ended(events)
                received = [e.data.payload["n"] for e in events if e.kind == "message.received"]
                twice = [
                    (e.seq, e.offset, e.data.inbox, e.data.payload)
                    for e in events
                    if e.kind == "message.received" and received.count(e.data.payload["n"]) > 1
                ]
                assert not twice, f"{address}: received twice: {twice}"
                missing = sorted(set(acked[address]) - set(received))
                extra = sorted(set(received) - set(acked[address]))
                assert not missing and not extra, f"{address}: missing {missing}, extra {extra}"
                assert sum(1 for e in events if e.kind == "run.completed") == len(acked[address])
            ledger = [(e.offset, e.seq, e.kind) for e in await store.read("/ledger/main")]
            assert ledger[: len(committed)] == committed  # no acknowledged commit lost
            assert [seq for _, seq, _ in ledger] == list(range(1, len(ledger) + 1))
