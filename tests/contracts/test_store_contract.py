"""The contract every EventStore passes: written once, run on each backend (see conftest)."""

from __future__ import annotations

import asyncio
import time

import pytest

from wakeful.runtime import (
    Commit,
    ConcurrencyError,
    Envelope,
    Event,
    EventStore,
    InvalidPayload,
    NewEvent,
    Snapshot,
    StoreClosed,
    TimerArm,
)
from wakeful.runtime import events as ev

A = "/counter/a"
B = "/counter/b"


def set_event(key: str, value: object, run: str | None = "r1") -> NewEvent:
    return NewEvent(
        "state.set", ev.StateSet(collection="c", key=key, value=value), time.time(), run
    )


def commit(address: str, expected: int, n: int = 1, **kw: object) -> Commit:
    events = [set_event(f"k{expected + i}", expected + i) for i in range(n)]
    return Commit(address=address, expected=expected, events=events, **kw)  # type: ignore[arg-type]


async def head(store: EventStore, address: str) -> int:
    events = await store.read(address)
    return events[-1].seq if events else 0


async def collect(it: object, n: int, within: float = 5.0) -> list[Event]:
    out: list[Event] = []
    async with asyncio.timeout(within):
        async for e in it:  # type: ignore[attr-defined]
            out.append(e)
            if len(out) == n:
                break
    return out


# -- commit ------------------------------------------------------------------------


async def test_commit_assigns_seq_and_increasing_offsets(store: EventStore) -> None:
    first = await store.commit(commit(A, 0, 3))
    second = await store.commit(commit(A, 3, 2))
    events = first + second
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    offsets = [e.offset for e in events]
    assert offsets == sorted(offsets) and len(set(offsets)) == 5
    assert [e.data.key for e in events] == ["k0", "k1", "k2", "k3", "k4"]
    assert await store.read(A) == events
    assert events[0].run == "r1" and events[0].kind == "state.set"


async def test_read_of_entity_without_events_is_empty(store: EventStore) -> None:
    assert await store.read("/counter/nobody") == []
    assert await store.read("/counter/nobody", after=None, limit=10) == []


async def test_stale_expected_seq_raises_and_writes_nothing(store: EventStore) -> None:
    await store.send(Envelope(address=A, payload=1))
    [item] = await store.inbox(A)
    await store.commit(commit(A, 0, 2))
    bad = commit(
        A,
        1,
        3,
        outbox=[Envelope(address=B, payload="x")],
        timers=[TimerArm("t", time.time() - 1)],
        consumed=[item.offset],
    )
    with pytest.raises(ConcurrencyError) as info:
        await store.commit(bad)
    assert (info.value.address, info.value.expected, info.value.actual) == (A, 1, 2)
    assert "expected the stream at seq 1 but it is at 2" in str(info.value)
    assert await head(store, A) == 2
    assert await store.inbox(B) == []
    assert [i.offset for i in await store.inbox(A)] == [item.offset]
    await asyncio.sleep(0.05)
    assert await store.inbox(A) == [item]  # the timer was not armed


async def test_commit_ahead_of_the_stream_is_a_conflict(store: EventStore) -> None:
    with pytest.raises(ConcurrencyError) as info:
        await store.commit(commit(A, 5, 1))
    assert (info.value.expected, info.value.actual) == (5, 0)
    assert await store.read(A) == []


async def test_failed_commit_writes_nothing(store: EventStore) -> None:
    """A commit whose second event cannot be stored leaves stream, inbox and timers untouched."""
    await store.send(Envelope(address=A, payload="in"))
    [item] = await store.inbox(A)
    broken = Commit(
        address=A,
        expected=0,
        events=[set_event("ok", 1), set_event("bad", object())],
        outbox=[Envelope(address=B, payload="out")],
        timers=[TimerArm("t", time.time() + 0.01)],
        consumed=[item.offset],
    )
    with pytest.raises(InvalidPayload):
        await store.commit(broken)
    assert await store.read(A) == []
    assert await store.inbox(B) == []
    assert await store.inbox(A) == [item]
    await asyncio.sleep(0.1)
    assert await store.inbox(A) == [item]
    # and the entity is still writable from seq 0
    assert [e.seq for e in await store.commit(commit(A, 0, 1))] == [1]


async def test_concurrent_commits_exactly_one_wins(store: EventStore) -> None:
    await store.commit(commit(A, 0, 1))
    results = await asyncio.gather(
        *(store.commit(commit(A, 1, 2)) for _ in range(5)), return_exceptions=True
    )
    wins = [r for r in results if isinstance(r, list)]
    losses = [r for r in results if isinstance(r, ConcurrencyError)]
    assert len(wins) == 1 and len(losses) == 4
    assert all((e.expected, e.actual) == (1, 3) for e in losses)
    assert [e.seq for e in await store.read(A)] == [1, 2, 3]


async def test_commits_on_different_entities_do_not_conflict(store: EventStore) -> None:
    results = await asyncio.gather(
        *(store.commit(commit(f"/counter/e{i}", 0, 2)) for i in range(20))
    )
    assert all([e.seq for e in r] == [1, 2] for r in results)


async def test_commit_with_no_events_checks_seq_and_consumes(store: EventStore) -> None:
    await store.send(Envelope(address=A, payload=1))
    [item] = await store.inbox(A)
    with pytest.raises(ConcurrencyError):
        await store.commit(Commit(address=A, expected=3, consumed=[item.offset]))
    assert await store.inbox(A) == [item]
    assert await store.commit(Commit(address=A, expected=0, consumed=[item.offset])) == []
    assert await store.inbox(A) == []


# -- inbox and send -------------------------------------------------------------------


async def test_inbox_keeps_order_and_commit_consumes(store: EventStore) -> None:
    offsets = [await store.send(Envelope(address=A, payload=i)) for i in range(4)]
    assert offsets == sorted(offsets) and len(set(offsets)) == 4
    items = await store.inbox(A)
    assert [i.offset for i in items] == offsets
    assert [i.envelope.payload for i in items] == [0, 1, 2, 3]
    assert [i.envelope.payload for i in await store.inbox(A, limit=2)] == [0, 1]
    assert [i.envelope.payload for i in await store.inbox(A, after=offsets[1])] == [2, 3]
    assert [i.envelope.payload for i in await store.inbox(A, after=offsets[0], limit=1)] == [1]
    await store.commit(commit(A, 0, 1, consumed=offsets[:2]))
    assert [i.envelope.payload for i in await store.inbox(A)] == [2, 3]


async def test_send_with_key_is_idempotent(store: EventStore) -> None:
    first = await store.send(Envelope(address=A, payload="a", key="k1"))
    again = await store.send(Envelope(address=A, payload="changed", key="k1"))
    other = await store.send(Envelope(address=A, payload="b", key="k2"))
    elsewhere = await store.send(Envelope(address=B, payload="c", key="k1"))
    assert first == again and other != first and elsewhere not in (first, other)
    assert [i.envelope.payload for i in await store.inbox(A)] == ["a", "b"]
    assert [i.envelope.payload for i in await store.inbox(B)] == ["c"]
    # consumed or not, the key stays known: a late retry is still a no-op
    await store.commit(commit(A, 0, 1, consumed=[first]))
    assert await store.send(Envelope(address=A, payload="late", key="k1")) == first
    assert [i.envelope.payload for i in await store.inbox(A)] == ["b"]


async def test_envelope_round_trips(store: EventStore) -> None:
    env = Envelope(
        address=A,
        kind="child",
        payload={"nested": [1, 2.5, "x", None, True]},
        source=B,
        mode="durable",
        key="k",
        reply_to=B,
        name="n",
        run="r",
        generation=7,
    )
    await store.send(env)
    [item] = await store.inbox(A)
    assert item.envelope == env
    assert item.at == pytest.approx(time.time(), abs=5)


async def test_outbox_lands_with_the_commit(store: EventStore) -> None:
    out = [
        Envelope(address=B, payload=1, source=A),
        Envelope(address=B, payload=2, source=A, key="once"),
        Envelope(address=B, payload=3, source=A, key="once"),
    ]
    await store.commit(commit(A, 0, 1, outbox=out))
    assert [i.envelope.payload for i in await store.inbox(B)] == [1, 2]


async def test_wake_feed_names_addresses_with_messages(store: EventStore) -> None:
    feed = store.wakes()
    await store.send(Envelope(address=A, payload=1))
    await store.commit(commit(B, 0, 1, outbox=[Envelope(address="/counter/c", payload=1)]))
    seen: set[str] = set()
    async with asyncio.timeout(5):
        async for address in feed:
            seen.add(address)
            if {A, "/counter/c"} <= seen:
                break
    assert B not in seen or await store.inbox(B) == []


async def test_wake_feed_starts_with_pending_inboxes(store_factory: object) -> None:
    make = store_factory  # type: ignore[assignment]
    s: EventStore = make()  # type: ignore[operator]
    await s.open()
    await s.send(Envelope(address=A, payload=1))
    await s.send(Envelope(address=B, payload=1))
    await s.close()
    s = make()  # type: ignore[operator]
    await s.open()
    try:
        seen: set[str] = set()
        async with asyncio.timeout(5):
            async for address in s.wakes():
                seen.add(address)
                if seen == {A, B}:
                    break
    finally:
        await s.close()


async def test_pending_reports_messages_and_due_timers(store: EventStore) -> None:
    assert not await store.pending(["counter"])
    offset = await store.send(Envelope(address=A, payload=1))
    assert await store.pending(["counter"])
    assert not await store.pending(["other"])
    await store.commit(commit(A, 0, 1, consumed=[offset]))
    assert not await store.pending(["counter"])


# -- read and tail -----------------------------------------------------------------------


async def test_read_after_any_offset_and_limit(store: EventStore) -> None:
    await store.commit(commit(B, 0, 3))  # interleave another entity's offsets
    events = await store.commit(commit(A, 0, 5))
    await store.commit(commit(B, 3, 3))
    events += await store.commit(commit(A, 5, 5))
    for i, e in enumerate(events):
        assert await store.read(A, after=e.offset) == events[i + 1 :]
        assert await store.read(A, after=e.offset, limit=2) == events[i + 1 : i + 3]
    assert await store.read(A, limit=3) == events[:3]


async def test_read_rejects_an_offset_that_is_not_one(store: EventStore) -> None:
    with pytest.raises(ValueError, match="not an offset of this store"):
        await store.read(A, after="yesterday")


async def test_tail_from_any_offset_while_writers_run(store: EventStore) -> None:
    first = await store.commit(commit(A, 0, 10))
    total = 10 + 40 * 5

    async def writer() -> None:
        seq = 10
        for _ in range(40):
            await store.commit(commit(A, seq, 5))
            await store.commit(commit(B, seq - 10, 5))
            seq += 5
            await asyncio.sleep(0)

    starts = [None, first[0].offset, first[6].offset]
    tails = [
        asyncio.create_task(collect(store.tail(A, after=s), total - skip))
        for s, skip in zip(starts, [0, 1, 7], strict=True)
    ]
    await writer()
    results = await asyncio.gather(*tails)
    for result, skip in zip(results, [0, 1, 7], strict=True):
        assert [e.seq for e in result] == list(range(skip + 1, total + 1))
    everything = await store.read(A)
    assert results[0] == everything


async def test_tail_of_entity_that_does_not_exist_yet(store: EventStore) -> None:
    tail = asyncio.create_task(collect(store.tail("/counter/later"), 3))
    await asyncio.sleep(0.05)
    assert not tail.done()
    await store.commit(commit("/counter/later", 0, 3))
    assert [e.seq for e in await tail] == [1, 2, 3]


async def test_tail_after_last_offset_waits_for_new_events(store: EventStore) -> None:
    events = await store.commit(commit(A, 0, 2))
    tail = asyncio.create_task(collect(store.tail(A, after=events[-1].offset), 1))
    await asyncio.sleep(0.05)
    assert not tail.done()
    new = await store.commit(commit(A, 2, 1))
    assert await tail == new


# -- timers ------------------------------------------------------------------------------


async def test_timer_armed_in_commit_fires_into_inbox(store: EventStore) -> None:
    due = time.time() + 0.1
    await store.commit(commit(A, 0, 1, timers=[TimerArm("t", due, {"p": 1}, generation=1)]))
    assert await store.inbox(A) == []
    assert not await store.pending(["counter"])
    async with asyncio.timeout(3):
        while not (items := await store.inbox(A)):
            await asyncio.sleep(0.01)
    fired = time.time()
    [item] = items
    assert item.envelope.kind == "timer"
    assert (item.envelope.name, item.envelope.payload, item.envelope.generation) == (
        "t",
        {"p": 1},
        1,
    )
    assert due <= fired < due + 0.5


async def test_timer_cancelled_or_rearmed_in_commit(store: EventStore) -> None:
    now = time.time()
    await store.commit(
        commit(
            A,
            0,
            1,
            timers=[
                TimerArm("gone", now + 0.05, generation=1),
                TimerArm("moved", now + 0.05, generation=1),
            ],
        )
    )
    await store.commit(
        commit(A, 1, 1, cancel_timers=["gone"], timers=[TimerArm("moved", now + 0.2, generation=2)])
    )
    await asyncio.sleep(0.12)
    assert await store.inbox(A) == []
    async with asyncio.timeout(3):
        while not (items := await store.inbox(A)):
            await asyncio.sleep(0.01)
    assert [(i.envelope.name, i.envelope.generation) for i in items] == [("moved", 2)]


async def test_overdue_timer_fires_when_store_opens(store_factory: object) -> None:
    make = store_factory  # type: ignore[assignment]
    s: EventStore = make()  # type: ignore[operator]
    await s.open()
    await s.commit(commit(A, 0, 1, timers=[TimerArm("t", time.time() + 0.2, generation=1)]))
    await s.close()
    await asyncio.sleep(0.3)
    s = make()  # type: ignore[operator]
    await s.open()
    try:
        async with asyncio.timeout(3):
            while not (items := await s.inbox(A)):
                await asyncio.sleep(0.01)
        assert items[0].envelope.kind == "timer"
    finally:
        await s.close()


# -- snapshots, listing, lifecycle -------------------------------------------------------


async def test_snapshots_keep_the_newest(store: EventStore) -> None:
    assert await store.load_snapshot(A) is None
    await store.save_snapshot(A, Snapshot(10, b"ten", "o10"))
    await store.save_snapshot(A, Snapshot(5, b"five", "o5"))
    assert await store.load_snapshot(A) == Snapshot(10, b"ten", "o10")
    await store.save_snapshot(A, Snapshot(20, b"twenty", "o20"))
    assert await store.load_snapshot(A) == Snapshot(20, b"twenty", "o20")
    assert await store.load_snapshot(B) is None


async def test_entities_listed_by_type_with_pagination(store: EventStore) -> None:
    for name in ["b", "a", "c", "d"]:
        await store.commit(commit(f"/counter/{name}", 0, 1))
    await store.commit(commit("/other/x", 0, 1))
    assert await store.entities("counter") == ["a", "b", "c", "d"]
    assert await store.entities("counter", limit=2) == ["a", "b"]
    assert await store.entities("counter", after="b", limit=2) == ["c", "d"]
    assert await store.entities("nothing") == []


async def test_closed_store_refuses_work(store_factory: object) -> None:
    s: EventStore = store_factory()  # type: ignore[operator]
    await s.open()
    await s.close()
    await s.close()  # idempotent
    with pytest.raises(StoreClosed, match="not open"):
        await s.send(Envelope(address=A))
