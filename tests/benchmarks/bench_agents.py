"""Agent benchmarks: what the runtime costs per loop iteration of an `Agent`, and
sub-agents spawned as child entities against sub-agents run inline.

    python tests/benchmarks/bench_agents.py [--stores memory,sqlite,jetstream]
        [--runs 100] [--iterations 10] [--calls 5] [--sub-tool] [--flush-interval S]
        [--json out.json]

Every model is a `ScriptedModel` with no delay and every tool returns at once, so
what is measured is the runtime and the agent loop, not a model.

Loop: one message starts a run of K iterations (model step → tool call), then a
final model step that answers with text: K + 1 model steps and K tool calls. A run
asked for 0 iterations (one model step) is measured beside it, so the cost of one
iteration is also given as (run(K) - run(0)) / K, without the run's fixed cost.
Beside them, one entity per mode gets a K-iteration run every round, so its
conversation grows by 2K + 2 messages a run: the first and last tenth of its runs
show what a long history costs.

Sub-agents: a lead agent's model calls the sub-agent M times, one call per reply,
then answers; the sub-agent answers with one model step (with `--sub-tool`, after
one tool call). Spawned: a child entity per call (`ctx.call`); inline: the
sub-agent's loop inside the lead's run (`inline_subagents=True`).

Otherwise each run goes to a new entity. The clock runs from the send until an
observer tailing that entity sees the run's terminal event. Classic and durable
runs (and the variants) alternate on one store in one process; figures are
medians after the warm-up rounds. Events are counted per run afterwards: the entity's stream,
plus the streams of the children it spawned; commits are the Runtime's own count.
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

from wakeful.entities import Agent, Reply, ScriptedModel, ToolCall, tool
from wakeful.runtime import Registry, Runtime, RuntimeConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stores import Stores, write_json

MODES = ("classic", "durable")
WARMUP = 3
"""Rounds whose runs are not counted."""


@tool
def echo(value: int) -> int:
    """Return the value."""
    return value


def since_request(messages: list[dict[str, Any]]) -> tuple[int, str]:
    """The number of assistant messages after the last user message, and its text."""
    n = 0
    for message in reversed(messages):
        if message["role"] == "user":
            return n, str(message["content"])
        if message["role"] == "assistant":
            n += 1
    raise RuntimeError("the model was not shown the request")


def loop_reply(messages: list[dict[str, Any]]) -> Reply:
    """A tool call per reply until the number of iterations the request asks for."""
    n, request = since_request(messages)
    if n < int(request):
        return Reply(tool_calls=[ToolCall(f"t{n}", "echo", {"value": n})])
    return Reply(text=f"done after {n} tool calls")


def lead_reply(messages: list[dict[str, Any]]) -> Reply:
    """A call of the sub-agent per reply until the number of calls the request asks for."""
    n, request = since_request(messages)
    if n < int(request):
        return Reply(tool_calls=[ToolCall(f"s{n}", "helper", {"task": f"question {n}"})])
    return Reply(text=f"done after {n} sub-agent calls")


def helper_reply(sub_tool: bool) -> Any:
    def reply(messages: list[dict[str, Any]]) -> Reply:
        n, _ = since_request(messages)
        if sub_tool and n == 0:
            return Reply(tool_calls=[ToolCall("h0", "echo", {"value": 0})])
        return Reply(text="the answer")

    return reply


def agents(iterations: int, sub_tool: bool) -> Registry:
    registry = Registry()
    window = max(50, 2 * iterations + 4)  # the request stays in what the model is shown
    Agent(
        "looper",
        model=ScriptedModel([loop_reply], repeat=True),
        tools=[echo],
        max_messages=window,
        max_iterations=iterations + 1,
    ).register(registry)
    helper = Agent(
        "helper",
        model=ScriptedModel([helper_reply(sub_tool)], repeat=True),
        description="Answers a question.",
        tools=[echo],
    )
    for name, inline in (("lead", False), ("lead_inline", True)):
        Agent(
            name,
            model=ScriptedModel([lead_reply], repeat=True),
            subagents=[helper],
            inline_subagents=inline,
            max_messages=window,
        ).register(registry)
    return registry


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def next(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}-{self.n}"


async def one_run(
    rt: Runtime, address: str, mode: str, request: int, after: str | None
) -> tuple[dict[str, float], str]:
    """Send `request` to `address` (whose stream ends at `after`); the ms until an observer
    sees the run end, the events and commits it wrote, and the offset of its end."""
    commits = rt.metrics.commits.count
    began = time.perf_counter()
    observer = rt.tail(address, after=after)
    await rt.send(address, {"text": str(request)}, mode=mode)
    async for event in observer:
        if event.kind in ("run.completed", "run.failed", "run.cancelled"):
            elapsed = time.perf_counter() - began
            break
    await observer.aclose()  # type: ignore[attr-defined]
    if event.kind != "run.completed" or event.data.result["stop_reason"] != "end_turn":
        raise RuntimeError(f"{address}: the run ended with {event.kind} {event.data}")
    events = await rt.read(address, after=after)
    total = len(events)
    children = [e.data.address for e in events if e.kind == "child.spawned"]
    for child in children:
        total += len(await rt.read(child))
    sample = {
        "ms": elapsed * 1000,
        "events": total,
        "children": len(children),
        "commits": rt.metrics.commits.count - commits,
    }
    return sample, event.offset


def medians(samples: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(s[key] for s in samples) for key in samples[0]}


async def measure(
    rt: Runtime, variants: list[tuple[str, str, str, int, bool]], runs: int
) -> dict[str, list[dict[str, float]]]:
    """Run every variant (name, entity type, mode, request, same entity) once a round, in
    an order reversed every other round; the samples per variant after the warm-up. A
    variant runs on a new entity each time, or with `same entity` always on one."""
    fresh = Counter()
    heads: dict[str, str | None] = {}
    samples: dict[str, list[dict[str, float]]] = {name: [] for name, *_ in variants}
    for i in range(WARMUP + runs):
        for name, type_, mode, request, same in variants if i % 2 else variants[::-1]:
            address = f"/{type_}/{name if same else fresh.next(name)}"
            sample, heads[address] = await one_run(rt, address, mode, request, heads.get(address))
            if i >= WARMUP:
                samples[name].append(sample)
    return samples


async def loop_overhead(rt: Runtime, runs: int, k: int) -> dict[str, float]:
    variants = [(f"{mode}_{n}", "looper", mode, n, False) for mode in MODES for n in (k, 0)]
    variants += [(f"{mode}_same", "looper", mode, k, True) for mode in MODES]
    got = await measure(rt, variants, runs)
    out: dict[str, float] = {}
    for mode in MODES:
        whole, empty = medians(got[f"{mode}_{k}"]), medians(got[f"{mode}_0"])
        out[f"{mode}_run_ms"] = whole["ms"]
        out[f"{mode}_per_iteration_ms"] = whole["ms"] / k
        out[f"{mode}_marginal_ms"] = (whole["ms"] - empty["ms"]) / k
        out[f"{mode}_empty_run_ms"] = empty["ms"]
        out[f"{mode}_events"] = whole["events"]
        out[f"{mode}_commits"] = whole["commits"]
        # one entity: its conversation grows by 2K + 2 messages a run
        same = got[f"{mode}_same"]
        tenth = max(1, len(same) // 10)
        out[f"{mode}_same_first_ms"] = medians(same[:tenth])["ms"]
        out[f"{mode}_same_last_ms"] = medians(same[-tenth:])["ms"]
    out["per_iteration_ratio"] = out["durable_per_iteration_ms"] / out["classic_per_iteration_ms"]
    out["same_messages_at_end"] = (WARMUP + runs) * (2 * k + 2)
    return out


async def subagents(rt: Runtime, runs: int, m: int) -> dict[str, float]:
    kinds = (("spawned", "lead"), ("inline", "lead_inline"))
    variants = [(f"{mode}_{how}", type_, mode, m, False) for mode in MODES for how, type_ in kinds]
    variants += [(f"{mode}_none", "lead", mode, 0, False) for mode in MODES]
    got = {name: medians(samples) for name, samples in (await measure(rt, variants, runs)).items()}
    out: dict[str, float] = {}
    for mode in MODES:
        empty = got[f"{mode}_none"]["ms"]
        for how, _ in kinds:
            g = got[f"{mode}_{how}"]
            out[f"{mode}_{how}_run_ms"] = g["ms"]
            out[f"{mode}_{how}_per_call_ms"] = (g["ms"] - empty) / m
            out[f"{mode}_{how}_events"] = g["events"]
            out[f"{mode}_{how}_commits"] = g["commits"]
        out[f"{mode}_empty_run_ms"] = empty
        out[f"{mode}_spawned_vs_inline"] = (
            out[f"{mode}_spawned_run_ms"] / out[f"{mode}_inline_run_ms"]
        )
    return out


LOOP_ROWS = [
    ("classic_run_ms", "classic: run of K iterations (ms)", "{:.2f}"),
    ("durable_run_ms", "durable: run of K iterations (ms)", "{:.2f}"),
    ("classic_per_iteration_ms", "classic: per iteration, run / K (ms)", "{:.3f}"),
    ("durable_per_iteration_ms", "durable: per iteration, run / K (ms)", "{:.3f}"),
    ("per_iteration_ratio", "durable / classic, per iteration", "{:.2f}"),
    ("classic_marginal_ms", "classic: (run(K) - run(0)) / K (ms)", "{:.3f}"),
    ("durable_marginal_ms", "durable: (run(K) - run(0)) / K (ms)", "{:.3f}"),
    ("classic_empty_run_ms", "classic: run of 0 iterations (ms)", "{:.2f}"),
    ("durable_empty_run_ms", "durable: run of 0 iterations (ms)", "{:.2f}"),
    ("classic_events", "classic: events per run", "{:.0f}"),
    ("durable_events", "durable: events per run", "{:.0f}"),
    ("classic_commits", "classic: commits per run", "{:.0f}"),
    ("durable_commits", "durable: commits per run", "{:.0f}"),
    ("classic_same_first_ms", "classic, one entity: first tenth of runs (ms)", "{:.2f}"),
    ("classic_same_last_ms", "classic, one entity: last tenth of runs (ms)", "{:.2f}"),
    ("durable_same_first_ms", "durable, one entity: first tenth of runs (ms)", "{:.2f}"),
    ("durable_same_last_ms", "durable, one entity: last tenth of runs (ms)", "{:.2f}"),
    ("same_messages_at_end", "one entity: messages in its conversation at the end", "{:,.0f}"),
]

SUB_ROWS = [
    (f"{mode}_{key}", f"{mode}: {label}", fmt)
    for mode in MODES
    for key, label, fmt in [
        ("spawned_run_ms", "spawned, run (ms)", "{:.2f}"),
        ("inline_run_ms", "inline, run (ms)", "{:.2f}"),
        ("spawned_vs_inline", "spawned / inline", "{:.2f}"),
        ("spawned_per_call_ms", "spawned, per call (ms)", "{:.3f}"),
        ("inline_per_call_ms", "inline, per call (ms)", "{:.3f}"),
        ("empty_run_ms", "lead alone, no call (ms)", "{:.2f}"),
        ("spawned_events", "spawned, events (with children)", "{:.0f}"),
        ("inline_events", "inline, events", "{:.0f}"),
        ("spawned_commits", "spawned, commits (with children)", "{:.0f}"),
        ("inline_commits", "inline, commits", "{:.0f}"),
    ]
]


def table(title: str, rows: list[tuple[str, str, str]], results: dict[str, Any]) -> None:
    stores = list(results)
    width = max(len(label) for _, label, _ in rows)
    print(f"\n{title}\n{'':{width}}  " + "  ".join(f"{s:>10}" for s in stores))
    for key, label, fmt in rows:
        cells = "  ".join(f"{fmt.format(results[s][key]):>10}" for s in stores)
        print(f"{label:{width}}  {cells}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", default="memory,sqlite,jetstream")
    parser.add_argument("--runs", type=int, default=100, help="measured runs per variant")
    parser.add_argument("--iterations", type=int, default=10, help="K: tool calls per loop run")
    parser.add_argument("--calls", type=int, default=5, help="M: sub-agent calls per lead run")
    parser.add_argument("--sub-tool", action="store_true", help="the sub-agent calls a tool")
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=RuntimeConfig().flush_interval,
        help="RuntimeConfig.flush_interval (s): how often background events are committed",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.iterations < 1 or args.calls < 1 or args.runs < 1:
        raise SystemExit("--runs, --iterations and --calls must be at least 1")
    stores = args.stores.split(",")
    loop: dict[str, dict[str, float]] = {}
    subs: dict[str, dict[str, float]] = {}
    registry = agents(args.iterations, args.sub_tool)
    config = RuntimeConfig(flush_interval=args.flush_interval)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        async with Stores(stores, Path(tmp)) as made:
            for s in stores:
                async with Runtime(registry, await made.make(s), config) as rt:
                    loop[s] = await loop_overhead(rt, args.runs, args.iterations)
                async with Runtime(registry, await made.make(s), config) as rt:
                    subs[s] = await subagents(rt, args.runs, args.calls)
    k, m = args.iterations, args.calls
    title = f"Agent loop, K = {k} iterations (model -> tool), medians of {args.runs} runs"
    table(title, LOOP_ROWS, loop)
    sub = "one model step" + (" after one tool call" if args.sub_tool else "")
    table(f"Sub-agents, M = {m} calls per lead run, sub-agent: {sub}", SUB_ROWS, subs)
    print(f"\n({time.perf_counter() - began:.0f} s)")
    write_json(args, {"loop": loop, "subagents": subs})


if __name__ == "__main__":
    asyncio.run(main())
