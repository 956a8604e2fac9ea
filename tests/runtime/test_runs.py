"""Runs and execution modes on every store: classic vs durable, steps, text, approvals,
signals, cancel, tool calls, recovery after a restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from wakeful.runtime import (
    Commit,
    Context,
    Event,
    EventStore,
    NotFound,
    Registry,
    Runtime,
    RuntimeConfig,
    TerminalError,
    Wake,
)

from .invariants import check_all_ended, check_stream

StoreFactory = Callable[[], EventStore]


async def run_events(rt: Runtime, address: str, run: str) -> list[Event]:
    return [e for e in await rt.read(address) if e.run == run]


async def last_run(rt: Runtime, address: str) -> str:
    runs = await rt.runs(address=address, status=None)
    return runs[0].run


async def wait_for(predicate: Callable[[], Any], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not await predicate():
            await asyncio.sleep(0.01)


async def status_of(rt: Runtime, run: str) -> str:
    return (await rt.run(run)).status


# -- runs and modes ------------------------------------------------------------------------


def mode_registry(calls: list[str]) -> Registry:
    registry = Registry()

    @registry.entity("plain")
    async def plain(ctx: Context, wake: Wake) -> object:
        calls.append(ctx.mode)
        a = await ctx.step("one", lambda: 1)
        b = await ctx.step("two", lambda: 2)
        ctx.state["sums"][ctx.run] = a + b
        return {"mode": ctx.mode, "sum": a + b}

    @registry.entity("sturdy", mode="durable")
    async def sturdy(ctx: Context, wake: Wake) -> object:
        calls.append(ctx.mode)
        return await ctx.step("only", lambda: "x")

    return registry


async def test_mode_resolution_and_switching(store_factory: StoreFactory) -> None:
    calls: list[str] = []
    async with Runtime(mode_registry(calls), store_factory()) as rt:
        await rt.send("/plain/p", 1)  # type default: classic
        await rt.idle()
        await rt.send("/plain/p", 2, mode="durable")  # the message decides
        await rt.idle()
        await rt.send("/plain/p", 3)  # and back
        await rt.idle()
        await rt.send("/sturdy/s", 1)  # type default: durable
        await rt.send("/sturdy/s", 2, mode="classic")
        await rt.idle()
        events = await rt.read("/plain/p")
        check_all_ended(events)
        started = [e.data.mode for e in events if e.kind == "run.started"]
        assert started == ["classic", "durable", "classic"]
        results = [e.data.result for e in events if e.kind == "run.completed"]
        assert results == [
            {"mode": "classic", "sum": 3},
            {"mode": "durable", "sum": 3},
            {"mode": "classic", "sum": 3},
        ]
        assert [e.data.name for e in events if e.kind == "step.completed"] == ["one", "two"] * 3
        sturdy = [e.data.mode for e in await rt.read("/sturdy/s") if e.kind == "run.started"]
        assert sturdy == ["durable", "classic"]
        assert calls == ["classic", "durable", "classic", "durable", "classic"]
        state = await rt.state("/plain/p")
        assert sorted(state["sums"].values()) == [3, 3, 3]
        records = await rt.runs(address="/plain/p", status=None)
        assert [r.status for r in records] == ["completed"] * 3
        assert [r.mode for r in reversed(records)] == ["classic", "durable", "classic"]
        assert await rt.runs(status="active") == []
        one = await rt.run(records[0].run)
        assert one.address == "/plain/p" and one.ended_at is not None
        with pytest.raises(NotFound):
            await rt.run("run_nope")


class SlowStore:
    """A store whose commits take `delay` seconds: shows who waits on the store."""

    def __init__(self, inner: EventStore, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    async def commit(self, commit: Commit) -> list[Event]:
        await asyncio.sleep(self.delay)
        return await self.inner.commit(commit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_classic_never_waits_on_the_store_durable_commits_each_step(
    store_factory: StoreFactory,
) -> None:
    registry = Registry()
    spent: dict[str, float] = {}
    seen_before_next: list[bool] = []

    @registry.entity("steps")
    async def steps(ctx: Context, wake: Wake) -> object:
        began = time.perf_counter()
        for i in range(3):
            await ctx.step(f"s{i}", lambda i=i: i)
            if ctx.mode == "durable":  # the step's event is in the store before the next
                events = await ctx_store.read(ctx.address)
                seen_before_next.append(
                    any(e.kind == "step.completed" and e.data.name == f"s{i}" for e in events)
                )
        spent[ctx.mode] = time.perf_counter() - began
        return None

    ctx_store = SlowStore(store_factory(), 0.05)
    async with Runtime(registry, ctx_store) as rt:  # type: ignore[arg-type]
        await rt.send("/steps/a", None, mode="classic")
        await rt.send("/steps/b", None, mode="durable")
        await rt.idle()
        for address in ("/steps/a", "/steps/b"):
            check_all_ended(await rt.read(address))
    assert spent["classic"] < 0.04, spent  # three steps and no commit waited for
    assert spent["durable"] >= 3 * 0.05, spent
    assert seen_before_next == [True, True, True]


async def test_durable_step_retries_then_raises_step_error(store_factory: StoreFactory) -> None:
    registry = Registry()
    attempts: list[str] = []
    caught: list[str] = []

    @registry.entity("flaky", mode="durable")
    async def flaky(ctx: Context, wake: Wake) -> object:
        def sometimes() -> str:
            attempts.append(ctx.step_key)
            if len(attempts) < 3:
                raise ConnectionError("try again")
            return "ok"

        def never() -> None:
            raise TerminalError("no retry for this")

        first = await ctx.step("sometimes", sometimes, retries=5, backoff=0.001)
        try:
            await ctx.step("never", never, retries=5, backoff=0.001)
        except Exception as exc:
            caught.append(f"{type(exc).__name__}: {exc}")
        return first

    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/flaky/f", None)
        await rt.idle()
        events = await rt.read("/flaky/f")
    check_all_ended(events)
    assert len(attempts) == 3 and len(set(attempts)) == 1  # one stable key per step
    assert attempts[0].startswith("/flaky/f@") and attempts[0].endswith(":0")
    failed = [
        (e.data.name, e.data.attempt, e.data.final) for e in events if e.kind == "step.failed"
    ]
    assert failed == [("sometimes", 1, False), ("sometimes", 2, False), ("never", 1, True)]
    assert caught == ["StepError: step 'never' failed: TerminalError: no retry for this"]
    assert events[-1].kind == "run.completed" and events[-1].data.result == "ok"


# -- text streaming ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_text_deltas_reach_a_tailing_observer_while_the_run_goes_on(
    store_factory: StoreFactory, mode: str
) -> None:
    registry = Registry()
    observer_saw_first = asyncio.Event()

    @registry.entity("writer")
    async def writer(ctx: Context, wake: Wake) -> object:
        async def model() -> str:
            ctx.emit_text("Hel")
            async with asyncio.timeout(5):  # the observer sees it before the step ends
                await observer_saw_first.wait()
            for piece in ["lo", ", ", "wor", "ld"]:
                ctx.emit_text(piece)
            return "Hello, world"

        return await ctx.step("model", model)

    async with Runtime(registry, store_factory()) as rt:
        seen: list[Event] = []

        async def observe() -> None:
            async for event in rt.tail("/writer/w"):
                seen.append(event)
                if event.kind == "text.delta":
                    observer_saw_first.set()
                if event.kind == "run.completed":
                    return

        observer = asyncio.create_task(observe())
        await rt.send("/writer/w", None, mode=mode)
        async with asyncio.timeout(5):
            await observer
        await rt.idle()
        check_all_ended(await rt.read("/writer/w"))
    kinds = [e.kind for e in seen]
    assert kinds.index("text.delta") < kinds.index("text.completed") < kinds.index("step.completed")
    assert "".join(e.data.text for e in seen if e.kind == "text.delta") == "Hello, world"
    assert [e.data.text for e in seen if e.kind == "text.completed"] == ["Hello, world"]
    assert seen[kinds.index("text.delta")].data.text == "Hel"


async def test_text_deltas_are_coalesced(store_factory: StoreFactory) -> None:
    registry = Registry()

    @registry.entity("chatty")
    async def chatty(ctx: Context, wake: Wake) -> object:
        for i in range(200):
            ctx.emit_text(f"{i},")
            if i % 10 == 0:
                await asyncio.sleep(0)
        ctx.end_text()
        return None

    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/chatty/c", None)
        await rt.idle()
        events = await rt.read("/chatty/c")
    deltas = [e.data.text for e in events if e.kind == "text.delta"]
    assert "".join(deltas) == "".join(f"{i}," for i in range(200))
    assert len(deltas) < 50, f"{len(deltas)} delta events for 200 deltas"
    assert (await _texts(events)) == ["".join(f"{i}," for i in range(200))]


async def _texts(events: list[Event]) -> list[str]:
    return [e.data.text for e in events if e.kind == "text.completed"]


# -- approvals -----------------------------------------------------------------------------


def approval_registry(effects: list[str], timeout: float | None = None) -> Registry:
    registry = Registry()

    @registry.entity("guarded")
    async def guarded(ctx: Context, wake: Wake) -> object:
        if wake.kind != "message" or wake.payload.get("plain"):
            return "plain"
        before = await ctx.step("prepare", lambda: effects.append("prepare") or "prepared")
        decision = await ctx.approval(
            wake.payload["call"], tool="delete_file", args={"path": "/tmp/x"}, timeout=timeout
        )
        after = await ctx.step("act", lambda: effects.append("act") or decision.approved)
        ctx.state["log"][wake.payload["call"]] = [before, decision.approved, decision.reason]
        return {"approved": after, "reason": decision.reason}

    return registry


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_approval_suspends_and_resumes_the_run(
    store_factory: StoreFactory, mode: str
) -> None:
    effects: list[str] = []
    async with Runtime(approval_registry(effects), store_factory()) as rt:
        await rt.send("/guarded/g", {"call": "c1"}, mode=mode)
        await rt.send("/guarded/g", {"plain": True})  # waits behind the suspended run
        await rt.idle()
        run = (await rt.runs(address="/guarded/g"))[0]
        assert (run.status, run.reason, run.waiting_for) == (
            "suspended",
            "requires_approval",
            "approval:c1",
        )
        state = await rt.state("/guarded/g")
        assert state["approvals"]["c1"]["status"] == "pending"
        assert state["approvals"]["c1"]["args"] == {"path": "/tmp/x"}
        assert [m["payload"] for m in state["inbox"].values()] == [{"plain": True}]
        with pytest.raises(NotFound, match="no approval 'c9'; pending approvals: c1"):
            await rt.approve("/guarded/g", "c9")
        decision = await rt.approve("/guarded/g", "c1", approved=True, reason="looks fine")
        assert (decision.approved, decision.reason) == (True, "looks fine")
        again = await rt.approve("/guarded/g", "c1", approved=False, reason="changed my mind")
        assert (again.approved, again.reason) == (True, "looks fine")
        await rt.idle()
        events = await rt.read("/guarded/g")
        check_all_ended(events)
        results = [e.data.result for e in events if e.kind == "run.completed"]
        assert results == [{"approved": True, "reason": "looks fine"}, "plain"]
        assert effects == ["prepare", "act"]  # the durable replay did not prepare twice
        run_kinds = [e.kind for e in events if e.run == run.run]
        assert run_kinds.count("run.suspended") == 1 and run_kinds.count("run.resumed") == 1
        decided = [e for e in events if e.kind == "approval.decided"]
        assert [(d.data.call_id, d.data.approved, d.data.reason) for d in decided] == [
            ("c1", True, "looks fine")
        ]
        assert (await rt.state("/guarded/g"))["inbox"] == {}


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_approval_timeout_denies(store_factory: StoreFactory, mode: str) -> None:
    effects: list[str] = []
    async with Runtime(approval_registry(effects, timeout=0.2), store_factory()) as rt:
        await rt.send("/guarded/t", {"call": "late"}, mode=mode)
        await rt.idle()
        await asyncio.sleep(0.3)
        await rt.idle()
        events = await rt.read("/guarded/t")
        check_all_ended(events)
        assert events[-1].kind == "run.completed"
        assert events[-1].data.result == {"approved": False, "reason": "timeout"}
        state = await rt.state("/guarded/t")
        assert state["approvals"]["late"]["status"] == "denied"
        assert state["timers"] == {}
        decision = await rt.approve("/guarded/t", "late", approved=True)
        assert (decision.approved, decision.reason) == (False, "timeout")


async def test_durable_approval_survives_a_restart(store_factory: StoreFactory) -> None:
    effects: list[str] = []
    async with Runtime(approval_registry(effects), store_factory()) as rt:
        await rt.send("/guarded/d", {"call": "c1"}, mode="durable")
        await rt.idle()
        assert rt.loaded() == ["/guarded/d"]
    async with Runtime(approval_registry(effects), store_factory()) as rt:
        assert (await rt.runs(status="active"))[0].status == "suspended"
        decision = await rt.approve("/guarded/d", "c1", approved=False, reason="no")
        assert not decision.approved
        await rt.idle()
        events = await rt.read("/guarded/d")
        check_all_ended(events)
        assert events[-1].data.result == {"approved": False, "reason": "no"}
    assert effects == ["prepare", "act"]


async def test_classic_run_lost_with_its_process_is_closed_and_answers_clearly(
    store_factory: StoreFactory,
) -> None:
    effects: list[str] = []
    parent = Registry()
    async with Runtime(approval_registry(effects), store_factory()) as rt:
        await rt.send("/guarded/c", {"call": "c1"}, mode="classic")
        await rt.idle()
        run = (await rt.runs(status="active"))[0]
        assert run.status == "suspended"
    del parent
    async with Runtime(approval_registry(effects), store_factory()) as rt:
        await rt.idle()
        record = await rt.run(run.run)
        assert (record.status, record.reason) == ("failed", "worker_lost")
        with pytest.raises(NotFound, match="no longer exists"):
            await rt.approve("/guarded/c", "c1")
        events = await rt.read("/guarded/c")
        check_all_ended(events)
        failed = events[-1]
        assert failed.kind == "run.failed" and failed.data.reason == "worker_lost"
        decided = [e.data for e in events if e.kind == "approval.decided"]
        assert [(d.call_id, d.approved, d.reason) for d in decided] == [
            ("c1", False, "worker_lost")
        ]


# -- signals --------------------------------------------------------------------------------


def signal_registry(got: list[Any]) -> Registry:
    registry = Registry()

    @registry.entity("hook")
    async def hook(ctx: Context, wake: Wake) -> object:
        try:
            payload = await ctx.wait_signal("paid", timeout=wake.payload.get("timeout"))
        except TimeoutError as exc:
            got.append(f"timeout: {exc}")
            return "timed out"
        got.append(payload)
        second = await ctx.step("after", lambda: payload["amount"] * 2)
        return second

    return registry


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_signal_wakes_the_waiting_run(store_factory: StoreFactory, mode: str) -> None:
    got: list[Any] = []
    async with Runtime(signal_registry(got), store_factory()) as rt:
        with pytest.raises(NotFound, match="no active run"):
            await rt.signal("/hook/h", "paid", {"amount": 1})
        await rt.send("/hook/h", {}, mode=mode)
        await rt.idle()
        waiting = (await rt.runs(address="/hook/h"))[0]
        assert (waiting.reason, waiting.waiting_for) == ("waiting_for_signal", "signal:paid")
        await rt.signal("/hook/h", "paid", {"amount": 21})
        await rt.idle()
        events = await rt.read("/hook/h")
        check_all_ended(events)
        assert events[-1].data.result == 42
        assert got == [{"amount": 21}]
        assert [e.data.payload for e in events if e.kind == "signal.received"] == [{"amount": 21}]


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_signal_wait_times_out(store_factory: StoreFactory, mode: str) -> None:
    got: list[Any] = []
    async with Runtime(signal_registry(got), store_factory()) as rt:
        await rt.send("/hook/t", {"timeout": 0.15}, mode=mode)
        await rt.idle()
        await asyncio.sleep(0.25)
        await rt.idle()
        events = await rt.read("/hook/t")
        check_all_ended(events)
        assert events[-1].data.result == "timed out"
        assert got == [
            "timeout: signal 'paid' did not arrive"
            + (" within 0.15s" if mode == "classic" else " in time")
        ]


# -- cancel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_cancel_a_running_run_and_a_suspended_durable_one(
    store_factory: StoreFactory, mode: str
) -> None:
    registry = Registry()
    started = asyncio.Event()

    @registry.entity("long")
    async def long(ctx: Context, wake: Wake) -> object:
        if wake.payload == "approve":
            await ctx.approval("a1", tool="t")
            return "approved"

        async def forever() -> None:
            started.set()
            await asyncio.sleep(60)

        await ctx.step("forever", forever)
        return "never"

    @registry.entity("boss")
    async def boss(ctx: Context, wake: Wake) -> object:
        if wake.kind == "message":
            ctx.spawn("long", "child", "approve", mode="durable")
            return None
        ctx.state["heard"]["child"] = wake.payload
        return None

    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/long/l", "sleep", mode=mode)  # a step in flight is abandoned
        async with asyncio.timeout(5):
            await started.wait()

        async def listed() -> bool:  # run.started is flushed in the background
            return bool(await rt.runs(address="/long/l"))

        await wait_for(listed)
        run = (await rt.runs(address="/long/l"))[0].run
        record = await rt.cancel("/long/l", run)
        assert (record.status, record.reason) == ("cancelled", "cancelled")
        assert (await rt.cancel("/long/l", run)).status == "cancelled"  # no-op now

        await rt.send("/boss/b", None)
        await rt.idle()
        child_run = (await rt.runs(address="/long/child"))[0]
        assert child_run.status == "suspended"
        assert (await rt.cancel("/long/child", child_run.run)).status == "cancelled"
        await rt.idle()
        child_events = await rt.read("/long/child")
        check_all_ended(child_events)
        decided = [e.data for e in child_events if e.kind == "approval.decided"]
        assert [(d.call_id, d.approved, d.reason) for d in decided] == [("a1", False, "cancelled")]
        heard = (await rt.state("/boss/b"))["heard"]["child"]
        assert heard["status"] == "cancelled"
        long_events = await rt.read("/long/l")
        check_all_ended(long_events)
        assert [e.kind for e in long_events if e.kind.startswith("step.")] == []
        with pytest.raises(NotFound):
            await rt.cancel("/long/l", "run_unknown")


# -- tool calls and journal mismatch ---------------------------------------------------------


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_tool_calls_always_end_with_a_result(store_factory: StoreFactory, mode: str) -> None:
    registry = Registry()

    @registry.entity("agent")
    async def agent(ctx: Context, wake: Wake) -> object:
        ok = await ctx.tool_call("t1", "add", lambda a, b: a + b, {"a": 1, "b": 2})
        bad = await ctx.tool_call("t2", "boom", lambda: 1 / 0)
        gated = await ctx.tool_call(
            "t3", "rm", lambda: "removed", {}, requires_approval=True, approval_timeout=5
        )
        return [ok.status, ok.result, bad.status, bad.error, gated.status, gated.result]

    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/agent/a", None, mode=mode)
        await rt.idle()
        await rt.approve("/agent/a", "t3", approved=False, reason="not today")
        await rt.idle()
        events = await rt.read("/agent/a")
        check_all_ended(events)
        assert events[-1].data.result == [
            "success",
            3,
            "error",
            "ZeroDivisionError: division by zero",
            "denied",
            None,
        ]
        results = {
            e.data.call_id: (e.data.status, e.data.error) for e in events if e.kind == "tool.result"
        }
        assert results == {
            "t1": ("success", None),
            "t2": ("error", "ZeroDivisionError: division by zero"),
            "t3": ("denied", "not today"),
        }
        state = await rt.state("/agent/a")
        assert state["tool_calls"]["t3"]["status"] == "denied"


async def test_journal_mismatch_fails_the_resumed_run(store_factory: StoreFactory) -> None:
    registry = Registry()
    version = {"n": 1}

    @registry.entity("shifty", mode="durable")
    async def shifty(ctx: Context, wake: Wake) -> object:
        await ctx.step(f"fetch-v{version['n']}", lambda: 1)
        await ctx.approval("go")
        return "done"

    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/shifty/s", None)
        await rt.idle()
    version["n"] = 2  # the code changed while the run was suspended
    async with Runtime(registry, store_factory()) as rt:
        await rt.approve("/shifty/s", "go")
        await rt.idle()
        events = await rt.read("/shifty/s")
        check_all_ended(events)
        failed = events[-1]
        assert failed.kind == "run.failed" and failed.data.reason == "journal_mismatch"
        assert "'fetch-v1'" in failed.data.error and "'fetch-v2'" in failed.data.error


async def test_tail_of_one_run_ends_with_it(store_factory: StoreFactory) -> None:
    registry = Registry()

    @registry.entity("two")
    async def two(ctx: Context, wake: Wake) -> object:
        await ctx.step("s", lambda: wake.payload)
        return wake.payload

    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/two/t", 1)
        await rt.send("/two/t", 2)
        await rt.idle()
        first, second = reversed(await rt.runs(address="/two/t", status=None))
        seen = [e async for e in rt.tail("/two/t", run=second.run)]
        assert {e.run for e in seen} == {second.run}
        assert seen[0].kind == "run.started" and seen[-1].kind == "run.completed"
        resumed = [e async for e in rt.tail("/two/t", after=seen[1].offset, run=second.run)]
        assert resumed == seen[2:]
        check_stream(await rt.read("/two/t"))
        del first


async def test_suspended_durable_run_leaves_memory_and_comes_back(
    store_factory: StoreFactory,
) -> None:
    effects: list[str] = []
    config = RuntimeConfig(idle_timeout=0.05)
    async with Runtime(approval_registry(effects), store_factory(), config) as rt:
        await rt.send("/guarded/e", {"call": "c1"}, mode="durable")
        await rt.idle()

        async def evicted() -> bool:
            return rt.loaded() == [] and "/guarded/e" not in rt._actors

        await wait_for(evicted)
        decision = await rt.approve("/guarded/e", "c1", approved=True)
        assert decision.approved
        await rt.idle()
        events = await rt.read("/guarded/e")
        check_all_ended(events)
        assert events[-1].data.result == {"approved": True, "reason": None}
    assert effects == ["prepare", "act"]


async def test_runs_start_in_message_order_while_commits_are_slow(
    store_factory: StoreFactory,
) -> None:
    """Messages arriving while a run's last commit is in flight keep their turn."""
    import random

    registry = Registry()
    order: list[int] = []

    @registry.entity("seq")
    async def seq(ctx: Context, wake: Wake) -> object:
        order.append(wake.payload)
        return wake.payload

    rng = random.Random(3)
    async with Runtime(registry, SlowStore(store_factory(), 0.004)) as rt:  # type: ignore[arg-type]
        for i in range(40):
            await rt.send("/seq/s", i)
            await asyncio.sleep(rng.uniform(0, 0.008))
        await rt.idle()
        events = await rt.read("/seq/s")
    check_all_ended(events)
    assert order == list(range(40))
    started = [e.data.inbox for e in events if e.kind == "run.started"]
    assert started == sorted(started)
