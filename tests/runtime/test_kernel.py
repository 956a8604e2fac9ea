"""Runtime behaviour on every store: activations, state, replay, eviction, timers, children."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from wakeful.runtime import (
    Commit,
    Context,
    EventStore,
    InvalidAddress,
    InvalidPayload,
    NewEvent,
    PayloadTooLarge,
    Registry,
    Runtime,
    RuntimeConfig,
    UnknownEntityType,
    Wake,
)
from wakeful.runtime import events as ev

StoreFactory = Callable[[], EventStore]


def counter_registry(log: list[Any] | None = None, delay: float = 0.0) -> Registry:
    registry = Registry()

    @registry.entity("counter")
    async def counter(ctx: Context, wake: Wake) -> object:
        if log is not None:
            log.append(("start", ctx.address, wake.payload, time.monotonic()))
        if delay:
            await asyncio.sleep(delay)
        totals = ctx.state["totals"]
        if wake.kind == "message":
            totals["n"] = totals.get("n", 0) + wake.payload["add"]
        if log is not None:
            log.append(("end", ctx.address, wake.payload, time.monotonic()))
        return totals.get("n", 0)

    return registry


@pytest.fixture
async def rt(store_factory: StoreFactory) -> AsyncIterator[Runtime]:
    async with Runtime(counter_registry(), store_factory()) as runtime:
        yield runtime


async def kinds(rt: Runtime, address: str) -> list[str]:
    return [e.kind for e in await rt.read(address)]


# -- messages, runs and state ---------------------------------------------------------


async def test_message_runs_handler_and_commits_one_turn(rt: Runtime) -> None:
    offset = await rt.send("/counter/c1", {"add": 2}, key="req-1")
    assert await rt.send("/counter/c1", {"add": 2}, key="req-1") == offset
    await rt.idle()
    events = await rt.read("/counter/c1")
    assert [e.kind for e in events] == [
        "entity.created",
        "message.received",
        "run.started",
        "state.set",
        "run.completed",
    ]
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    received, started, completed = events[1], events[2], events[4]
    assert received.data.inbox == offset and received.data.key == "req-1"
    assert started.data.mode == "classic" and started.data.trigger == "message"
    assert completed.data.result == 2
    assert started.run is not None and completed.run == started.run == events[3].run
    state = await rt.state("/counter/c1")
    assert state["totals"] == {"n": 2}
    assert state["runs"][started.run]["status"] == "completed"
    assert state["runs"][started.run]["result"] == 2
    assert state["inbox"] == {}


async def test_wakes_of_one_entity_run_in_order_one_at_a_time(store_factory: StoreFactory) -> None:
    log: list[Any] = []
    async with Runtime(counter_registry(log, delay=0.02), store_factory()) as rt:
        for i in range(6):
            await rt.send("/counter/one", {"add": 1, "i": i})
        await rt.idle()
        assert (await rt.state("/counter/one"))["totals"] == {"n": 6}
    steps = [(kind, payload["i"]) for kind, _, payload, _ in log]
    assert steps == [(k, i) for i in range(6) for k in ("start", "end")]


async def test_different_entities_run_concurrently(store_factory: StoreFactory) -> None:
    log: list[Any] = []
    async with Runtime(counter_registry(log, delay=0.2), store_factory()) as rt:
        began = time.monotonic()
        for i in range(8):
            await rt.send(f"/counter/e{i}", {"add": 1})
        await rt.idle()
        elapsed = time.monotonic() - began
    starts = sorted(t for kind, _, _, t in log if kind == "start")
    ends = sorted(t for kind, _, _, t in log if kind == "end")
    assert len(starts) == 8
    assert starts[-1] < ends[0], "all eight handlers were running at the same time"
    assert elapsed < 8 * 0.2 / 2


async def test_state_is_rebuilt_from_the_stream_after_restart(store_factory: StoreFactory) -> None:
    async with Runtime(counter_registry(), store_factory()) as rt:
        for i in range(5):
            await rt.send("/counter/c", {"add": i})
        await rt.idle()
        before = await rt.state("/counter/c")
    async with Runtime(counter_registry(), store_factory()) as rt:
        assert rt.loaded() == []
        assert await rt.state("/counter/c") == before
        await rt.send("/counter/c", {"add": 100})
        await rt.idle()
        assert (await rt.state("/counter/c"))["totals"] == {"n": 110}


async def test_idle_entities_leave_memory_and_come_back_equal(
    store_factory: StoreFactory,
) -> None:
    config = RuntimeConfig(idle_timeout=0.1, cache_size=3)
    async with Runtime(counter_registry(), store_factory(), config) as rt:
        for i in range(5):
            await rt.send(f"/counter/e{i}", {"add": i + 1})
        await rt.idle()
        assert len(rt.loaded()) == 3  # cache_size bounds what stays
        before = {f"/counter/e{i}": await rt.state(f"/counter/e{i}") for i in range(5)}
        async with asyncio.timeout(3):
            while rt.loaded():
                await asyncio.sleep(0.02)
        for i in range(5):
            await rt.send(f"/counter/e{i}", {"add": 10})
        await rt.idle()
        for address, state in before.items():
            after = await rt.state(address)
            assert after["totals"]["n"] == state["totals"]["n"] + 10
            assert set(after["runs"]) > set(state["runs"])


async def test_snapshots_bound_replay_and_equal_full_replay(store_factory: StoreFactory) -> None:
    config = RuntimeConfig(snapshot_every=10)
    store = store_factory()
    async with Runtime(counter_registry(), store, config) as rt:
        for i in range(12):  # 4 or 5 events per run: a snapshot every 10 events or more
            await rt.send("/counter/s", {"add": i})
        await rt.idle()
        head = (await rt.read("/counter/s"))[-1].seq
        # snapshots are saved in the background, after the commit: wait for the last one
        async with asyncio.timeout(5):
            while (snapshot := await store.load_snapshot("/counter/s")) is None or (
                snapshot.seq <= head - 10
            ):
                await asyncio.sleep(0.02)
        assert head - 10 < snapshot.seq <= head
        with_snapshot = await rt.state("/counter/s")
    async with Runtime(counter_registry(), store_factory(), RuntimeConfig(snapshot_every=0)) as rt2:
        await rt2.store.save_snapshot("/counter/s", snapshot)  # no-op: never replaces newer
        assert await rt2.state("/counter/s") == with_snapshot
        # a full replay, ignoring the snapshot, gives the same state
        from wakeful.runtime.state import rebuild

        full = rebuild("/counter/s", await rt2.read("/counter/s")).to_dict()
        assert full == with_snapshot


async def test_handler_failure_records_only_the_failure(store_factory: StoreFactory) -> None:
    registry = Registry()

    @registry.entity("flaky")
    async def flaky(ctx: Context, wake: Wake) -> object:
        if wake.kind != "message" or ctx.id != "f":
            return None
        ctx.state["notes"]["seen"] = wake.payload
        ctx.send("/flaky/other", {"hello": 1})
        ctx.set_timer("t", after=60)
        if wake.payload == "boom":
            raise ValueError("boom happened")
        return "ok"

    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/flaky/f", "boom")
        await rt.idle()
        events = await rt.read("/flaky/f")
        assert [e.kind for e in events] == [
            "entity.created",
            "message.received",
            "run.started",
            "error",
            "run.failed",
        ]
        assert events[3].data.type == "ValueError" and "boom happened" in events[3].data.traceback
        assert events[4].data.error == "ValueError: boom happened"
        assert events[4].data.reason == "error"
        state = await rt.state("/flaky/f")
        assert "notes" not in state and state["timers"] == {} and state["inbox"] == {}
        assert await rt.read("/flaky/other") == []
        assert await rt.store.inbox("/flaky/other") == []
        assert next(iter(state["errors"].values()))["message"] == "boom happened"
        # the message was consumed: the next one runs normally
        await rt.send("/flaky/f", "fine")
        await rt.idle()
        assert (await rt.state("/flaky/f"))["notes"] == {"seen": "fine"}


async def test_state_values_are_normalised_and_copied(store_factory: StoreFactory) -> None:
    registry = Registry()
    seen: list[Any] = []

    @registry.entity("box")
    async def box(ctx: Context, wake: Wake) -> object:
        items = ctx.state["items"]
        if wake.payload == "put":
            items["t"] = (1, 2)
            items["d"] = {1: "one"}
            items["gone"] = 1
            del items["gone"]
        else:
            value = items["t"]
            value.append(3)  # a copy: the state does not change
            seen.append((items["t"], items["d"], "gone" in items, len(items), sorted(items)))
            with pytest.raises(TypeError, match="built-in collection 'runs' is read-only"):
                ctx.state["runs"]["x"] = 1  # type: ignore[index]
        return None

    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/box/b", "put")
        await rt.send("/box/b", "look")
        await rt.idle()
        assert seen == [([1, 2], {"1": "one"}, False, 2, ["d", "t"])]
        assert (await rt.state("/box/b"))["items"] == {"t": [1, 2], "d": {"1": "one"}}
        assert "state.deleted" not in await kinds(rt, "/box/b")


async def test_state_value_that_is_not_json_fails_the_run(store_factory: StoreFactory) -> None:
    registry = Registry()

    @registry.entity("bad")
    async def bad(ctx: Context, wake: Wake) -> object:
        ctx.state["c"]["k"] = object()
        return None

    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/bad/b", 1)
        await rt.idle()
        events = await rt.read("/bad/b")
        assert events[-1].kind == "run.failed"
        assert "InvalidPayload" in events[-1].data.error
        assert "value of c['k'] is not JSON-serialisable" in events[-1].data.error


# -- concurrency with another writer -----------------------------------------------------


async def test_conflict_reloads_and_never_forks(store_factory: StoreFactory) -> None:
    store = store_factory()
    async with Runtime(counter_registry(), store) as rt:
        await rt.send("/counter/x", {"add": 1})
        await rt.idle()
        assert "/counter/x" in rt.loaded()
        head = (await rt.read("/counter/x"))[-1].seq
        # another writer appends behind the runtime's back; its cached state is now stale
        await store.commit(
            Commit(
                address="/counter/x",
                expected=head,
                events=[
                    NewEvent("state.set", ev.StateSet(collection="totals", key="n", value=40), 0.0)
                ],
            )
        )
        await rt.send("/counter/x", {"add": 2})
        await rt.idle()
        events = await rt.read("/counter/x")
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert (await rt.state("/counter/x"))["totals"] == {"n": 42}
        assert [e.kind for e in events].count("run.completed") == 2


# -- children ----------------------------------------------------------------------------


def family_registry() -> Registry:
    registry = Registry()

    @registry.entity("parent")
    async def parent(ctx: Context, wake: Wake) -> object:
        if wake.kind == "message":
            for i, job in enumerate(wake.payload["jobs"]):
                ctx.spawn("child", f"{ctx.id}-{i}", job)
            return "spawned"
        if wake.kind == "child":
            ctx.state["results"][wake.payload["address"]] = wake.payload
            return wake.payload["status"]
        return None

    @registry.entity("child")
    async def child(ctx: Context, wake: Wake) -> object:
        if wake.payload.get("fail"):
            raise RuntimeError(f"child {ctx.id} failed on purpose")
        return wake.payload["x"] * 2

    return registry


async def test_spawned_children_wake_the_parent_with_results_and_errors(
    store_factory: StoreFactory,
) -> None:
    async with Runtime(family_registry(), store_factory()) as rt:
        await rt.send("/parent/p", {"jobs": [{"x": 1}, {"x": 5}, {"fail": True}]})
        await rt.idle()
        state = await rt.state("/parent/p")
        results = state["results"]
        assert results["/child/p-0"]["status"] == "completed"
        assert results["/child/p-0"]["result"] == 2
        assert results["/child/p-1"]["result"] == 10
        failed = results["/child/p-2"]
        assert failed["status"] == "failed" and failed["result"] is None
        assert failed["error"] == "RuntimeError: child p-2 failed on purpose"
        assert state["children"]["/child/p-2"]["status"] == "failed"
        assert state["children"]["/child/p-0"]["status"] == "completed"
        parent_kinds = await kinds(rt, "/parent/p")
        assert parent_kinds.count("child.spawned") == 3
        assert parent_kinds.count("child.finished") == 3
        child_events = await rt.read("/child/p-0")
        assert child_events[0].kind == "entity.created"
        assert child_events[0].data.parent == "/parent/p"
        assert child_events[1].data.source == "/parent/p"


# -- timers ------------------------------------------------------------------------------


def timer_registry(fired: list[tuple[str, float, float]]) -> Registry:
    registry = Registry()

    @registry.entity("alarm")
    async def alarm(ctx: Context, wake: Wake) -> object:
        if wake.kind == "message":
            if "cancel" in wake.payload:
                ctx.cancel_timer(wake.payload["cancel"])
            else:
                due = ctx.set_timer(
                    wake.payload["name"], after=wake.payload["after"], payload=wake.payload
                )
                ctx.state["due"][wake.payload["name"]] = due
        elif wake.kind == "timer":
            assert wake.name is not None
            fired.append((wake.name, ctx.state["due"][wake.name], time.time()))
        return None

    return registry


async def test_timers_fire_on_time_and_can_be_cancelled(store_factory: StoreFactory) -> None:
    fired: list[tuple[str, float, float]] = []
    async with Runtime(timer_registry(fired), store_factory()) as rt:
        await rt.send("/alarm/a", {"name": "soon", "after": 0.2})
        await rt.send("/alarm/a", {"name": "never", "after": 0.2})
        await rt.send("/alarm/a", {"name": "later", "after": 0.4})
        await rt.send("/alarm/a", {"cancel": "never"})
        await rt.idle()
        assert set((await rt.state("/alarm/a"))["timers"]) == {"soon", "later"}
        await asyncio.sleep(0.6)
        await rt.idle()
        state = await rt.state("/alarm/a")
    assert [name for name, _, _ in fired] == ["soon", "later"]
    for _, due, at in fired:
        assert due <= at < due + 0.05, f"fired {at - due:.3f}s after due"
    assert state["timers"] == {}


async def test_timer_survives_restart_and_fires_when_overdue(store_factory: StoreFactory) -> None:
    fired: list[tuple[str, float, float]] = []
    async with Runtime(timer_registry(fired), store_factory()) as rt:
        await rt.send("/alarm/r", {"name": "wake-me", "after": 0.2})
        await rt.idle()
    assert fired == []
    await asyncio.sleep(0.3)  # due while nothing runs
    async with Runtime(timer_registry(fired), store_factory()) as rt:
        async with asyncio.timeout(3):
            while not fired:
                await asyncio.sleep(0.01)
        await rt.idle()
        events = await rt.read("/alarm/r")
        assert [e.kind for e in events][-3:] == ["timer.fired", "run.started", "run.completed"]
        assert [e.kind for e in events].count("timer.fired") == 1
    assert fired[0][0] == "wake-me"


async def test_rearming_a_timer_replaces_it(store_factory: StoreFactory) -> None:
    fired: list[tuple[str, float, float]] = []
    async with Runtime(timer_registry(fired), store_factory()) as rt:
        await rt.send("/alarm/x", {"name": "t", "after": 0.1})
        await rt.send("/alarm/x", {"name": "t", "after": 0.3})
        await rt.idle()
        await asyncio.sleep(0.45)
        await rt.idle()
    assert len(fired) == 1
    _, due, at = fired[0]
    assert due <= at < due + 0.05


# -- bad input ---------------------------------------------------------------------------


async def test_bad_input_gets_a_clear_error_and_writes_nothing(rt: Runtime) -> None:
    with pytest.raises(InvalidAddress, match=r"entity id 'a b' has a space; entity ids are 1-128"):
        await rt.send("/counter/a b", {"add": 1})
    with pytest.raises(InvalidAddress, match="/<type>/<id>"):
        await rt.send("counter", {"add": 1})
    with pytest.raises(
        InvalidAddress, match="entity type 'Counter' does not start with a lowercase"
    ):
        await rt.send("/Counter/x", {"add": 1})
    with pytest.raises(InvalidPayload, match="payload of message to /counter/x is not JSON"):
        await rt.send("/counter/x", {"add": object()})
    with pytest.raises(PayloadTooLarge, match="the limit is 1048576 bytes"):
        await rt.send("/counter/x", {"blob": "x" * (1 << 20)})
    with pytest.raises(
        UnknownEntityType, match="no entity type 'nope' is registered; registered types: counter"
    ):
        await rt.send("/nope/x", {})
    with pytest.raises(ValueError, match="use 'classic' or 'durable'"):
        await rt.send("/counter/x", {}, mode="fast")
    await rt.idle()
    assert await rt.read("/counter/x") == []
    assert await rt.store.inbox("/counter/x") == []


async def test_payload_limit_is_configurable(store_factory: StoreFactory) -> None:
    async with Runtime(counter_registry(), store_factory(), RuntimeConfig(max_payload=64)) as rt:
        with pytest.raises(PayloadTooLarge, match="the limit is 64 bytes"):
            await rt.send("/counter/x", {"add": 1, "pad": "y" * 60})
        await rt.send("/counter/x", {"add": 1})
        await rt.idle()
        assert (await rt.state("/counter/x"))["totals"] == {"n": 1}


async def test_handler_effects_validate_their_targets(store_factory: StoreFactory) -> None:
    registry = Registry()

    @registry.entity("sender")
    async def sender(ctx: Context, wake: Wake) -> object:
        ctx.send(wake.payload, {})
        return None

    async with Runtime(registry, store_factory()) as rt:
        await rt.send("/sender/s", "/ghost/g")
        await rt.send("/sender/s", "not an address")
        await rt.idle()
        failures = [e.data.error for e in await rt.read("/sender/s") if e.kind == "run.failed"]
    assert failures[0].startswith("UnknownEntityType: no entity type 'ghost'")
    assert failures[1].startswith("InvalidAddress: address 'not an address'")


async def test_tail_through_the_runtime_is_live(rt: Runtime) -> None:
    seen: list[str] = []

    async def follow() -> None:
        async for event in rt.tail("/counter/live"):
            seen.append(event.kind)
            if event.kind == "run.completed" and seen.count("run.completed") == 2:
                return

    task = asyncio.create_task(follow())
    await rt.send("/counter/live", {"add": 1})
    await rt.send("/counter/live", {"add": 1})
    async with asyncio.timeout(5):
        await task
    assert seen.count("run.started") == 2


async def test_run_history_in_state_is_bounded(store_factory: StoreFactory) -> None:
    from wakeful.runtime.state import RUN_HISTORY

    async with Runtime(counter_registry(), store_factory()) as rt:
        for _ in range(RUN_HISTORY + 20):
            await rt.send("/counter/busy", {"add": 1})
        await rt.idle()
        state = await rt.state("/counter/busy")
        events = await rt.read("/counter/busy")
    started = [e.run for e in events if e.kind == "run.started"]
    assert len(started) == RUN_HISTORY + 20
    assert list(state["runs"]) == started[-RUN_HISTORY:]  # the newest, in order
    assert state["totals"] == {"n": RUN_HISTORY + 20}
