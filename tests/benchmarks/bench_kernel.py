"""Kernel benchmarks: wake throughput, replay time and memory after mass eviction.

    python tests/benchmarks/bench_kernel.py [--stores memory,sqlite,jetstream,jetstream-r3]
        [--json out.json] [--quick]

Prints one table and optionally writes the same figures as JSON. Each figure is
the median of --repeat runs (default 3), each on a fresh store, with the stores
measured side by side in one process.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wakeful.runtime import Context, Envelope, EventStore, Registry, Runtime, RuntimeConfig, Wake
from wakeful.runtime.ports import Snapshot
from wakeful.runtime.state import encode_snapshot, rebuild

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stores import Stores, write_json

SAMPLES = 5
registry = Registry()


@registry.entity("counter")
async def counter(ctx: Context, wake: Wake) -> object:
    totals = ctx.state["totals"]
    totals["n"] = totals.get("n", 0) + 1
    return None


STORES: Stores | None = None


async def store_factory(kind: str, root: Path) -> Callable[[], EventStore]:
    """A fresh data set; each call gives a store on it (a restart, for SQLite)."""
    assert STORES is not None
    return await STORES.factory(kind)


async def make_store(kind: str, root: Path) -> EventStore:
    return (await store_factory(kind, root))()


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


async def prefill(store: EventStore, entities: int, per_entity: int) -> None:
    for j in range(per_entity):
        await asyncio.gather(
            *(store.send(Envelope(address=f"/counter/e{i}", payload=j)) for i in range(entities))
        )


async def wakes_per_second(kind: str, root: Path, entities: int, per_entity: int) -> float:
    """Messages already in the inboxes; time from runtime start to idle."""
    make = await store_factory(kind, root)
    store = make()
    await store.open()
    await prefill(store, entities, per_entity)
    await store.close()
    store = make()
    await store.open()  # connecting (and, on JetStream, taking the partitions) is not timed
    rt = Runtime(registry, store)
    began = time.perf_counter()
    async with rt:
        await rt.idle()
        elapsed = time.perf_counter() - began
    return entities * per_entity / elapsed


async def send_and_process_per_second(kind: str, root: Path, entities: int, total: int) -> float:
    """Senders and handlers at once: 16 concurrent senders, then idle."""
    async with Runtime(registry, await make_store(kind, root)) as rt:
        began = time.perf_counter()

        async def sender(k: int) -> None:
            for j in range(k, total, 16):
                await rt.send(f"/counter/e{j % entities}", j)

        await asyncio.gather(*(sender(k) for k in range(16)))
        await rt.idle()
        return total / (time.perf_counter() - began)


async def build_long_entity(kind: str, root: Path, events: int) -> tuple[EventStore, str]:
    """One entity with `events` events written by real runs (4 events per message)."""
    store = await make_store(kind, root)
    config = RuntimeConfig(snapshot_every=0)
    async with Runtime(registry, store, config) as rt:
        runs = (events - 1) // 4
        for start in range(0, runs, 2000):
            for j in range(start, min(runs, start + 2000)):
                await rt.store.send(Envelope(address="/counter/long", payload=j))
            await rt.idle()
    return store, "/counter/long"


async def rebuild_times(kind: str, root: Path, events: int) -> dict[str, float]:
    store, address = await build_long_entity(kind, root, events)
    config = RuntimeConfig(snapshot_every=0)
    out: dict[str, float] = {}
    async with Runtime(registry, store, config) as rt:
        out["events"] = len(await rt.read(address))

        async def timed_state() -> tuple[float, dict[str, Any]]:
            began = time.perf_counter()
            state = await rt.state(address)  # never cached by rt.state: snapshot + replay
            return (time.perf_counter() - began) * 1000, state

        samples = [await timed_state() for _ in range(SAMPLES)]
        out["no_snapshot_ms"] = statistics.median(ms for ms, _ in samples)
        full = rebuild(address, await rt.read(address))
        snapshot = encode_snapshot(full)
        await rt.store.save_snapshot(address, Snapshot(full.seq, snapshot, full.offset or ""))
        with_snapshot = [await timed_state() for _ in range(SAMPLES)]
        out["snapshot_ms"] = statistics.median(ms for ms, _ in with_snapshot)
        assert with_snapshot[0][1] == samples[0][1]
        out["snapshot_kb"] = len(snapshot) / 1000
    return out


async def memory_after_eviction(kind: str, root: Path, entities: int) -> dict[str, float]:
    make = await store_factory(kind, root)
    store = make()
    await store.open()
    await prefill(store, entities, 1)
    await store.close()
    gc.collect()
    before = rss_mb()
    config = RuntimeConfig(idle_timeout=0.5)
    rt = Runtime(registry, make(), config)
    async with rt:
        await rt.idle()
        peak_loaded = len(rt.loaded())
        async with asyncio.timeout(30):
            while rt.loaded():
                await asyncio.sleep(0.1)
        gc.collect()
        after = rss_mb()
    return {"rss_mb": after, "rss_before_mb": before, "max_loaded": peak_loaded}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="memory,sqlite")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--evict", type=int, help="entities for the memory figure")
    args = parser.parse_args()
    q = args.quick
    sizes = {
        "entities": 100 if q else 1000,
        "per_entity": 5,
        "one_entity": 200 if q else 2000,
        "sends": 500 if q else 5000,
        "long_events": 2001 if q else 100_001,
        "evict_entities": 1000 if q else 100_000,
    }
    if args.evict:
        sizes["evict_entities"] = args.evict
    stores = args.stores.split(",")
    results: dict[str, dict[str, Any]] = {s: {} for s in stores}
    global STORES
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with Stores(stores, root) as STORES:  # servers for the JetStream columns
            await measure(stores, sizes, results, root, args.repeat)
    report(stores, sizes, results, args)


async def measure(
    stores: list[str],
    sizes: dict[str, int],
    results: dict[str, dict[str, Any]],
    root: Path,
    repeat: int,
) -> None:
    for _ in range(repeat):
        for s in stores:
            r = results[s]
            r.setdefault("wakes_per_s_1000_entities", []).append(
                await wakes_per_second(s, root, sizes["entities"], sizes["per_entity"])
            )
            r.setdefault("wakes_per_s_one_entity", []).append(
                await wakes_per_second(s, root, 1, sizes["one_entity"])
            )
            r.setdefault("send_and_process_per_s", []).append(
                await send_and_process_per_second(s, root, sizes["entities"], sizes["sends"])
            )
    for s in stores:
        r = results[s]
        for key in list(r):
            r[key] = statistics.median(r[key])
        r.update(await rebuild_times(s, root, sizes["long_events"]))
    for s in stores:  # last: it grows the process
        results[s].update(await memory_after_eviction(s, root, sizes["evict_entities"]))


def report(
    stores: list[str],
    sizes: dict[str, int],
    results: dict[str, dict[str, Any]],
    args: argparse.Namespace,
) -> None:
    whole, one, two = "{:,.0f}".format, "{:,.1f}".format, "{:,.2f}".format
    rows: list[tuple[str, str, Callable[[float], str]]] = [
        ("wakes_per_s_1000_entities", f"wakes/s, {sizes['entities']} entities x 5", whole),
        ("wakes_per_s_one_entity", f"wakes/s, one entity x {sizes['one_entity']}", whole),
        ("send_and_process_per_s", "send+process/s, 16 senders", whole),
        ("events", "events in the long entity", whole),
        ("no_snapshot_ms", "rebuild, no snapshot (ms)", one),
        ("snapshot_ms", "rebuild from snapshot (ms)", two),
        ("snapshot_kb", "snapshot size (kB)", whole),
        ("rss_mb", f"RSS after {sizes['evict_entities']:,} woken+evicted (MB)", whole),
        ("max_loaded", "entities in memory at most", whole),
    ]
    width = max(len(label) for _, label, _ in rows)
    print(f"{'':{width}}  " + "  ".join(f"{s:>12}" for s in stores))
    for key, label, fmt in rows:
        print(f"{label:{width}}  " + "  ".join(f"{fmt(results[s][key]):>12}" for s in stores))
    write_json(
        args,
        results,
        sizes=sizes,
        max_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1000,
    )


if __name__ == "__main__":
    asyncio.run(main())
