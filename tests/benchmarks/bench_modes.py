"""Execution-mode benchmarks: what durability costs per step, as an observer sees it.

    python tests/benchmarks/bench_modes.py [--stores memory,sqlite,jetstream,jetstream-r3]
        [--turns 200] [--json out.json]

The turn is 1 model step (streaming 5 text deltas) + 3 tool steps, every step a
zero-latency function. For each turn an observer tails the entity; we time the
first text delta it sees and the run's end, from the moment of the send.
Classic and durable turns alternate on the same store in one run; figures are
medians. Then durable runs/s with 16 concurrent senders, each waiting for its
run to end before sending the next (closed loop).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from wakeful.runtime import Context, EventStore, Registry, Runtime, Wake

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stores import Stores, write_json

registry = Registry()


def model() -> dict[str, Any]:
    return {"tool_calls": ["a", "b", "c"]}


def tool(name: str) -> str:
    return name


@registry.entity("agent")
async def agent(ctx: Context, wake: Wake) -> object:
    async def stream() -> dict[str, Any]:
        for piece in ("The ", "answer ", "is ", "forty", "-two"):
            ctx.emit_text(piece)
        return model()

    reply = await ctx.step("model", stream)
    for call in reply["tool_calls"]:
        await ctx.step(f"tool:{call}", tool, call)
    return "done"


STORES: Stores | None = None


async def make_store(kind: str, root: Path) -> EventStore:
    assert STORES is not None
    return (await STORES.factory(kind))()


async def one_turn(
    rt: Runtime, address: str, mode: str, after: str | None
) -> tuple[float, float, str | None]:
    """Send one message; return ms to the first delta and to the run's end as an
    observer tailing from `after` sees them, and the offset of the end."""
    first_delta = done = 0.0
    began = time.perf_counter()
    observer = rt.tail(address, after=after)
    await rt.send(address, None, mode=mode)
    async for event in observer:
        if event.kind == "text.delta" and not first_delta:
            first_delta = time.perf_counter() - began
        if event.kind in ("run.completed", "run.failed"):
            done = time.perf_counter() - began
            after = event.offset
            break
    await observer.aclose()  # type: ignore[attr-defined]
    return first_delta * 1000, done * 1000, after


async def latency(kind: str, root: Path, turns: int) -> dict[str, float]:
    samples: dict[str, list[tuple[float, float]]] = {"classic": [], "durable": []}
    heads: dict[str, str | None] = {"classic": None, "durable": None}
    async with Runtime(registry, await make_store(kind, root)) as rt:
        for i in range(turns):
            for mode in ("classic", "durable") if i % 2 else ("durable", "classic"):
                first, done, heads[mode] = await one_turn(rt, f"/agent/{mode}", mode, heads[mode])
                samples[mode].append((first, done))
    out: dict[str, float] = {}
    for mode, values in samples.items():
        values = values[5:]  # warm-up
        out[f"{mode}_first_delta_ms"] = statistics.median(v[0] for v in values)
        out[f"{mode}_done_ms"] = statistics.median(v[1] for v in values)
    out["durable_per_step_ms"] = (out["durable_done_ms"] - out["classic_done_ms"]) / 4
    out["first_delta_ratio"] = out["durable_first_delta_ms"] / out["classic_first_delta_ms"]
    return out


async def durable_runs_per_second(kind: str, root: Path, senders: int, per_sender: int) -> float:
    async with Runtime(registry, await make_store(kind, root)) as rt:

        async def sender(k: int) -> None:
            head: str | None = None
            for _ in range(per_sender):
                _, _, head = await one_turn(rt, f"/agent/load-{k}", "durable", head)

        began = time.perf_counter()
        await asyncio.gather(*(sender(k) for k in range(senders)))
        return senders * per_sender / (time.perf_counter() - began)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="memory,sqlite")
    parser.add_argument("--turns", type=int, default=200)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--per-sender", type=int, default=40)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    stores = args.stores.split(",")
    results: dict[str, dict[str, float]] = {}
    global STORES
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        async with Stores(stores, root) as STORES:
            for s in stores:
                results[s] = await latency(s, root, args.turns)
                results[s]["durable_runs_per_s"] = await durable_runs_per_second(
                    s, root, args.senders, args.per_sender
                )
    rows = [
        ("classic_first_delta_ms", "classic: first delta seen (ms)", "{:.3f}"),
        ("durable_first_delta_ms", "durable: first delta seen (ms)", "{:.3f}"),
        ("first_delta_ratio", "durable / classic, first delta", "{:.2f}"),
        ("classic_done_ms", "classic: run end seen (ms)", "{:.3f}"),
        ("durable_done_ms", "durable: run end seen (ms)", "{:.3f}"),
        ("durable_per_step_ms", "durable cost per step (ms)", "{:.3f}"),
        ("durable_runs_per_s", f"durable 4-step runs/s, {args.senders} senders", "{:,.0f}"),
    ]
    width = max(len(label) for _, label, _ in rows)
    print(f"{'':{width}}  " + "  ".join(f"{s:>10}" for s in stores))
    for key, label, fmt in rows:
        print(
            f"{label:{width}}  " + "  ".join(f"{fmt.format(results[s][key]):>10}" for s in stores)
        )
    write_json(args, results)


if __name__ == "__main__":
    asyncio.run(main())
