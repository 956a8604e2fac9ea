"""`ctx.call`: a run messages (or spawns) a child and waits for the run that message
starts, on every store; durable calls survive restarts and never message twice."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from wakeful.runtime import CallError, Context, EventStore, Registry, Runtime, TerminalError, Wake

from .invariants import check_all_ended, check_stream

StoreFactory = Callable[[], EventStore]


def call_registry(seen: list[Any]) -> Registry:
    registry = Registry()

    @registry.entity("worker")
    async def worker(ctx: Context, wake: Wake) -> object:
        seen.append((ctx.id, wake.payload))
        task = wake.payload or {}
        if task.get("fail"):
            raise TerminalError("worker says no", reason="refused")
        if task.get("approve"):
            decision = await ctx.approval("ok")
            return {"approved": decision.approved}
        if task.get("wait"):
            await ctx.wait_signal("never")
        if task.get("sleep"):
            await ctx.step("nap", asyncio.sleep, task["sleep"])
        return {"double": 2 * task.get("n", 0)}

    @registry.entity("boss")
    async def boss(ctx: Context, wake: Wake) -> object:
        task = wake.payload
        if task == "parallel":
            results = await asyncio.gather(
                *(ctx.call("worker", f"w{n}", {"n": n, "sleep": 0.05 * (3 - n)}) for n in range(3))
            )
            return [r["double"] for r in results]
        if task == "approve":
            return await ctx.call("worker", "careful", {"approve": True}, mode="durable")
        if task == "fail":
            try:
                await ctx.call("worker", "grumpy", {"fail": True})
            except CallError as exc:
                return {"status": exc.status, "error": exc.error, "address": exc.address}
            return "no error"
        if task == "timeout":
            try:
                await ctx.call("worker", "slow", {"wait": True}, timeout=0.3)
            except TimeoutError as exc:
                return f"timeout: {exc}"
            return "answered"
        if task == "hang":
            return await ctx.call("worker", "hanging", {"wait": True})
        if task == "self":
            return await ctx.call("boss", ctx.id, "x")
        first = await ctx.call("worker", "w", {"n": 1})
        second = await ctx.call("worker", "w", {"n": 2})  # the same child, a second message
        return first["double"] + second["double"]

    return registry


async def calls_of(rt: Runtime, address: str) -> list[tuple[str, Any, Any]]:
    out = []
    for event in await rt.read(address):
        if event.kind in ("child.spawned", "child.finished"):
            out.append((event.kind, event.data.call, event.run))
    return out


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_call_returns_the_childs_result(store_factory: StoreFactory, mode: str) -> None:
    seen: list[Any] = []
    async with Runtime(call_registry(seen), store_factory()) as rt:
        await rt.send("/boss/b", "sequence", mode=mode)
        await rt.idle()
        runs = await rt.runs(address="/boss/b", status=None)
        assert [(r.status, r.mode) for r in runs] == [("completed", mode)]  # one run, no wakes
        events = await rt.read("/boss/b")
        check_stream(events)
        check_all_ended(events)
        assert events[-1].data.result == 6
        run = runs[0].run
        assert await calls_of(rt, "/boss/b") == [
            ("child.spawned", f"{run}:0", run),
            ("child.finished", f"{run}:0", run),
            ("child.spawned", f"{run}:1", run),
            ("child.finished", f"{run}:1", run),
        ]
        child_runs = await rt.runs(address="/worker/w", status=None)
        assert [r.status for r in child_runs] == ["completed", "completed"]
        assert seen == [("w", {"n": 1}), ("w", {"n": 2})]
        assert (await rt.state("/boss/b"))["children"]["/worker/w"]["result"] == {"double": 4}


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_parallel_calls(store_factory: StoreFactory, mode: str) -> None:
    seen: list[Any] = []
    async with Runtime(call_registry(seen), store_factory()) as rt:
        await rt.send("/boss/p", "parallel", mode=mode)
        await rt.idle()
        events = await rt.read("/boss/p")
        check_all_ended(events)
        assert events[-1].data.result == [0, 2, 4]  # in call order, whatever the finish order
        assert sorted(s[0] for s in seen) == ["w0", "w1", "w2"]
        finished = [e.data.address for e in events if e.kind == "child.finished"]
        assert finished == ["/worker/w2", "/worker/w1", "/worker/w0"]  # they ran concurrently


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_failed_child_raises_call_error(store_factory: StoreFactory, mode: str) -> None:
    async with Runtime(call_registry([]), store_factory()) as rt:
        await rt.send("/boss/f", "fail", mode=mode)
        await rt.idle()
        result = (await rt.read("/boss/f"))[-1].data.result
        assert result == {
            "status": "failed",
            "error": "TerminalError: worker says no",
            "address": "/worker/grumpy",
        }


@pytest.mark.parametrize("mode", ["classic", "durable"])
async def test_unanswered_call_times_out_and_the_child_is_cancelled(
    store_factory: StoreFactory, mode: str
) -> None:
    async with Runtime(call_registry([]), store_factory()) as rt:
        await rt.send("/boss/t", "timeout", mode=mode)
        await asyncio.sleep(0.6)
        await rt.idle()
        events = await rt.read("/boss/t")
        check_all_ended(events)
        (result,) = [e.data.result for e in events if e.kind == "run.completed"]
        assert result.startswith("timeout: call to /worker/slow was not answered")
        child = await rt.runs(address="/worker/slow", status=None)
        assert [(r.status, r.reason) for r in child] == [("cancelled", "cancelled")]
        # the late answer (the cancelled run's notice) is recorded but starts no run
        runs = await rt.runs(address="/boss/t", status=None)
        assert len(runs) == 1
        finished = [e for e in await rt.read("/boss/t") if e.kind == "child.finished"]
        assert [(e.data.status, e.run) for e in finished] == [("cancelled", None)]


async def test_cancelling_the_caller_cancels_the_child(store_factory: StoreFactory) -> None:
    async with Runtime(call_registry([]), store_factory()) as rt:
        await rt.send("/boss/h", "hang", mode="durable")
        await rt.idle()
        run = (await rt.runs(address="/boss/h", status=None))[0]
        assert run.status == "running"  # waiting for its child, in memory
        assert (await rt.runs(address="/worker/hanging", status=None))[0].status == "suspended"
        await rt.cancel("/boss/h", run.run)
        await rt.idle()
        child = (await rt.runs(address="/worker/hanging", status=None))[0]
        assert (child.status, child.reason) == ("cancelled", "cancelled")
        check_all_ended(await rt.read("/worker/hanging"))


async def test_durable_call_survives_restarts_and_messages_once(
    store_factory: StoreFactory,
) -> None:
    seen: list[Any] = []
    async with Runtime(call_registry(seen), store_factory()) as rt:
        await rt.send("/boss/d", "approve", mode="durable")
        await rt.idle()
        assert [r.status for r in await rt.runs(address="/worker/careful")] == ["suspended"]
    # a restart while the parent waits: its run resumes and waits again, without a second
    # message to the child
    async with Runtime(call_registry(seen), store_factory()) as rt:
        await rt.idle()
        assert (await rt.runs(address="/boss/d"))[0].status == "running"
        await rt.approve("/worker/careful", "ok", approved=True)
        await rt.idle()
        events = await rt.read("/boss/d")
        check_stream(events)
        check_all_ended(events)
        assert events[-1].kind == "run.completed"
        assert events[-1].data.result == {"approved": True}
        assert [e.kind for e in events].count("run.started") == 1
        assert [e.kind for e in events].count("child.spawned") == 1
        child = [e.kind for e in await rt.read("/worker/careful")]
        assert child.count("run.started") == 1  # messaged once, across the restart
    # the child's durable handler ran twice (before and after its approval), on one message
    assert seen == [("careful", {"approve": True})] * 2


async def test_a_run_cannot_call_its_own_entity(store_factory: StoreFactory) -> None:
    async with Runtime(call_registry([]), store_factory()) as rt:
        await rt.send("/boss/me", "self")
        await rt.idle()
        failed = (await rt.runs(address="/boss/me", status=None))[0]
        assert failed.status == "failed"
        assert "cannot call itself" in (failed.error or "")
