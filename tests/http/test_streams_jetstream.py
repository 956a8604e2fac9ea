"""The generic Durable Streams endpoint on JetStream (`JetStreamStreams`), on a real nats-server.

The behaviour tests of `test_streams.py` run here again on a JetStream store
(imported below, with this module's `streams_store`). The tests of this module
check what JetStream adds: several store instances (server processes) share one
stream without losing or duplicating an append, a reader on one is woken by a
write on another, producers are deduplicated across them, and everything
survives closing the store and restarting the nats-server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from wakeful.transports.http.streamjetstream import JetStreamStreams, name_token, token_name
from wakeful.transports.http.streamstore import (
    AppendSpec,
    CreateSpec,
    Offset,
    Producer,
    StreamConflict,
    StreamGone,
    StreamInvalid,
    StreamNotFound,
)

from ..nats_fixtures import NatsCluster, NatsServer
from . import test_streams as shared
from .conftest import serve, streams_test_app

TEXT = {"content-type": "text/plain"}
NEXT = "stream-next-offset"
ALL = 1 << 30

# The store-independent behaviour tests, on JetStream (collected again in this module,
# where `streams_store` below is a JetStreamStreams).
test_bytes_round_trip_and_resume = shared.test_bytes_round_trip_and_resume
test_json_mode_keeps_messages = shared.test_json_mode_keeps_messages
test_pages_resume_without_gap_or_duplicate = shared.test_pages_resume_without_gap_or_duplicate
test_long_poll_wakes_on_append_and_times_out = shared.test_long_poll_wakes_on_append_and_times_out
test_sse_delivers_appends_live_then_closes = shared.test_sse_delivers_appends_live_then_closes
test_producers_dedupe_and_fence = shared.test_producers_dedupe_and_fence
test_closed_stream_refuses_appends = shared.test_closed_stream_refuses_appends
test_fork_reads_through_its_source = shared.test_fork_reads_through_its_source
test_ttl_and_expires_at_expire = shared.test_ttl_and_expires_at_expire
test_bad_requests_name_the_rule = shared.test_bad_requests_name_the_rule
test_sse_keeps_alive_then_ends_for_reconnect = shared.test_sse_keeps_alive_then_ends_for_reconnect


@pytest.fixture
async def nats_url(tmp_path: Path) -> AsyncIterator[str]:
    async with NatsServer(tmp_path / "nats") as server:
        yield server.url


@pytest.fixture
async def streams_store(nats_url: str) -> AsyncIterator[JetStreamStreams]:
    async with JetStreamStreams(nats_url, sweep_interval=0.2) as store:
        yield store


async def test_names_round_trip_through_subject_tokens() -> None:
    for name in ["a", "notes/today", "x.y~z", "é/ü:@!$&'()*+,;=", "a" * 512]:
        token = name_token(name)
        assert "." not in token and "*" not in token and ">" not in token
        assert token_name(token) == name


async def test_round_trip_and_offsets(streams_store: JetStreamStreams) -> None:
    store = streams_store
    created = await store.create("s", CreateSpec("text/plain", body=b"one"))
    assert created.created and created.info.tail == Offset(1, 3)
    again = await store.create("s", CreateSpec("text/plain"))
    assert not again.created
    appended = await store.append("s", AppendSpec(b"two", "text/plain"))
    assert appended.status == "appended" and appended.tail == Offset(2, 6)
    result = await store.read("s", None, ALL)
    assert [(r.n, r.m, r.data) for r in result.rows] == [(1, 3, b"one"), (2, 6, b"two")]
    assert result.up_to_date and result.next == Offset(2, 6)
    rest = await store.read("s", Offset(1, 3), ALL)
    assert [r.data for r in rest.rows] == [b"two"]
    assert str(result.next) < str(Offset(10, 0))  # offsets sort as strings


async def test_an_append_larger_than_max_payload_comes_back_whole(
    streams_store: JetStreamStreams,
) -> None:
    store = streams_store
    big = bytes(range(256)) * (3 * 1024 * 1024 // 256 + 7)  # > 3 MiB, 1 MiB max_payload
    await store.create("big", CreateSpec("application/octet-stream", body=b"head"))
    await store.append("big", AppendSpec(big, "application/octet-stream"))
    await store.append("big", AppendSpec(b"tail", "application/octet-stream"))
    rows = (await store.read("big", None, ALL)).rows
    assert [r.data for r in rows] == [b"head", big, b"tail"]
    page = await store.read("big", Offset(1, 4), 10)
    assert [r.data for r in page.rows] == [big]  # at least one append per page


async def test_producer_dedupe_across_instances(nats_url: str) -> None:
    async with JetStreamStreams(nats_url) as a, JetStreamStreams(nats_url) as b:
        await a.create("p", CreateSpec("text/plain"))
        first = await a.append("p", AppendSpec(b"x", "text/plain", producer=Producer("w", 0, 0)))
        assert first.status == "appended"
        retried = await b.append("p", AppendSpec(b"x", "text/plain", producer=Producer("w", 0, 0)))
        assert retried.status == "duplicate" and retried.seq == 0
        gap = await b.append("p", AppendSpec(b"z", "text/plain", producer=Producer("w", 0, 2)))
        assert gap.status == "gap" and gap.expected == 1
        fenced = await a.append("p", AppendSpec(b"y", "text/plain", producer=Producer("w", 1, 0)))
        assert fenced.status == "appended"
        stale = await b.append("p", AppendSpec(b"y", "text/plain", producer=Producer("w", 0, 1)))
        assert stale.status == "stale" and stale.epoch == 1
        assert [r.data for r in (await b.read("p", None, ALL)).rows] == [b"x", b"y"]


async def test_two_instances_append_concurrently_without_loss_or_duplicate(
    nats_url: str,
) -> None:
    async with JetStreamStreams(nats_url) as a, JetStreamStreams(nats_url) as b:
        await a.create("shared", CreateSpec("text/plain"))

        async def writer(store: JetStreamStreams, w: str, producer: bool) -> None:
            for i in range(20):
                body = f"[{w}.{i}]".encode()
                p = Producer(w, 0, i) if producer else None
                outcome = await store.append("shared", AppendSpec(body, "text/plain", producer=p))
                assert outcome.status == "appended"
                if producer:  # a retry of the same append, through the other instance
                    other = b if store is a else a
                    dup = await other.append("shared", AppendSpec(body, "text/plain", producer=p))
                    assert dup.status == "duplicate"

        await asyncio.gather(
            *(writer(a, f"a{k}", k == 0) for k in range(3)),
            *(writer(b, f"b{k}", k == 0) for k in range(3)),
        )
        result = await b.read("shared", None, ALL)
        assert [r.n for r in result.rows] == list(range(1, 121))
        items = [r.data.decode().strip("[]") for r in result.rows]
        assert sorted(items) == sorted(
            f"{w}.{i}" for w in ("a0", "a1", "a2", "b0", "b1", "b2") for i in range(20)
        )
        ends = [r.m for r in result.rows]
        assert ends == sorted(ends) and ends[-1] == sum(len(r.data) for r in result.rows)
        for w in ("a0", "b0"):  # each writer's own appends kept their order
            mine = [int(x.split(".")[1]) for x in items if x.startswith(w + ".")]
            assert mine == list(range(20))


async def test_a_reader_on_one_instance_wakes_on_an_append_through_another(
    nats_url: str,
) -> None:
    async with JetStreamStreams(nats_url) as a, JetStreamStreams(nats_url) as b:
        app = streams_test_app(a, long_poll_timeout=10, sse_keepalive=10)
        async with serve(app) as url, httpx.AsyncClient(base_url=f"{url}/v1/stream") as http:
            tail = (await http.put("/live", headers=TEXT, content=b"old")).headers[NEXT]
            poll = asyncio.ensure_future(
                http.get("/live", params={"offset": tail, "live": "long-poll"})
            )
            await asyncio.sleep(0.2)
            started = time.monotonic()
            await b.append("live", AppendSpec(b"new", "text/plain"))
            woke = await asyncio.wait_for(poll, 5)
            assert woke.status_code == 200 and woke.content == b"new"
            assert time.monotonic() - started < 1  # woken, not timed out
            closing = asyncio.ensure_future(
                http.get("/live", params={"offset": woke.headers[NEXT], "live": "long-poll"})
            )
            await asyncio.sleep(0.2)
            await b.append("live", AppendSpec(b"", close=True))
            closed = await asyncio.wait_for(closing, 5)
            assert closed.status_code == 204 and closed.headers["stream-closed"] == "true"


async def test_streams_survive_closing_the_store_and_restarting_the_server(
    tmp_path: Path,
) -> None:
    store_dir = tmp_path / "nats"
    p = Producer("w", 0, 0)
    async with NatsServer(store_dir) as server, JetStreamStreams(server.url) as store:
        await store.create("s", CreateSpec("text/plain", body=b"one", ttl=3600))
        assert (await store.append("s", AppendSpec(b"two", "text/plain", producer=p))).status == (
            "appended"
        )
        await store.append("s", AppendSpec(b"", close=True))
        await store.create("f", CreateSpec(fork_from="s"))
        await store.append("f", AppendSpec(b"three", "text/plain"))
    async with NatsServer(store_dir) as server, JetStreamStreams(server.url) as store:
        result = await store.read("s", None, ALL)
        assert b"".join(r.data for r in result.rows) == b"onetwo"
        assert result.info.closed and result.info.ttl == 3600
        dup = await store.append("s", AppendSpec(b"two", "text/plain", producer=p))
        assert dup.status == "duplicate"
        fork = await store.read("f", None, ALL)
        assert [r.data for r in fork.rows] == [b"one", b"two", b"three"]
        await store.delete("s")
        with pytest.raises(StreamGone):  # the fork still reads from it
            await store.info("s")
        await store.delete("f")
        for name in ("s", "f"):
            with pytest.raises(StreamNotFound):
                await store.info(name)
        again = await store.create("s", CreateSpec("text/plain"))  # the name is free again
        assert again.created and (await store.read("s", None, ALL)).rows == []


async def test_expired_streams_are_swept(streams_store: Any) -> None:
    store = streams_store
    await store.create("t", CreateSpec("text/plain", body=b"x", ttl=1))
    await asyncio.sleep(1.6)  # expiry plus a few sweeps
    with pytest.raises(StreamNotFound):
        await store.info("t")
    assert (await store.create("t", CreateSpec("text/plain"))).created


async def test_three_replicas_read_your_writes_across_instances(tmp_path: Path) -> None:
    async with (
        NatsCluster(tmp_path / "cluster") as cluster,
        JetStreamStreams(cluster.urls[0], replicas=3) as a,
        JetStreamStreams(cluster.urls[1], replicas=3) as b,
    ):
        await a.create("r3", CreateSpec("application/json", body=b"[]"))

        async def writer(mine: JetStreamStreams, other: JetStreamStreams, w: str) -> None:
            for i in range(15):
                done = await mine.append("r3", AppendSpec(f'"{w}{i}"'.encode(), "application/json"))
                seen = await other.read("r3", None, ALL)  # through another node
                assert seen.info.tail.n >= done.tail.n
                assert f'"{w}{i}"'.encode() in b",".join(r.data for r in seen.rows)

        await asyncio.gather(writer(a, b, "a"), writer(b, a, "b"))
        rows = (await a.read("r3", None, ALL)).rows
        assert sorted(r.data for r in rows) == sorted(
            f'"{w}{i}"'.encode() for w in "ab" for i in range(15)
        )


async def test_concurrent_writes_commit_in_groups_with_their_own_outcomes(
    streams_store: JetStreamStreams,
) -> None:
    store = streams_store
    await store.create("g", CreateSpec("text/plain"))
    p = Producer("w", 0, 0)
    specs = [AppendSpec(f"{i};".encode(), "text/plain") for i in range(20)]
    specs += [
        AppendSpec(b"{}", "application/json"),  # refused: the stream is text/plain
        AppendSpec(b"p;", "text/plain", producer=p),
        AppendSpec(b"p;", "text/plain", producer=p),  # the same append again
        AppendSpec(b"", "text/plain", stream_seq=b"1"),  # refused: no body
    ]
    outcomes = await asyncio.gather(
        *(store.append("g", spec) for spec in specs), return_exceptions=True
    )
    assert all(o.status == "appended" for o in outcomes[:20])  # type: ignore[union-attr]
    assert isinstance(outcomes[20], StreamConflict) and "content type" in str(outcomes[20])
    assert sorted(o.status for o in outcomes[21:23]) == ["appended", "duplicate"]  # type: ignore[union-attr]
    assert isinstance(outcomes[23], StreamInvalid)
    rows = (await store.read("g", None, ALL)).rows
    assert [r.n for r in rows] == list(range(1, 22))
    assert sorted(r.data for r in rows) == sorted([f"{i};".encode() for i in range(20)] + [b"p;"])
