"""The generic Durable Streams endpoint, over real HTTP, on memory and SQLite.

What a user relies on: bytes and JSON messages come back as written, offsets
resume without gap or duplicate, live readers (long-poll, SSE) wake on appends,
producers are deduplicated and fenced, closed streams refuse appends, forks
read through their source, TTLs expire, and SQLite keeps all of it across a
restart. The whole protocol is checked by the conformance suite (.ci/conformance).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from wakeful.transports.http.streamstore import (
    AppendSpec,
    CreateSpec,
    MemoryStreams,
    Producer,
    SQLiteStreams,
    StreamNotFound,
)
from wakeful.transports.sqlite import SQLiteStore

from .conftest import serve, streams_test_app

TEXT = {"content-type": "text/plain"}
JSON = {"content-type": "application/json"}
NEXT = "stream-next-offset"


async def sse_events(response: httpx.Response) -> AsyncIterator[tuple[str, str]]:
    """(event, data) pairs of an SSE response, data lines joined by newlines."""
    kind, data = "", list[str]()
    async for line in response.aiter_lines():
        if not line:
            if kind:
                yield kind, "\n".join(data)
            kind, data = "", list[str]()
        elif line.startswith("event:"):
            kind = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


async def test_bytes_round_trip_and_resume(streams_http: httpx.AsyncClient) -> None:
    http = streams_http
    created = await http.put("/notes/today", headers=TEXT, content=b"hello")
    assert created.status_code == 201
    assert created.headers["location"].endswith("/v1/stream/notes/today")
    assert (await http.put("/notes/today", headers=TEXT)).status_code == 200
    offsets = [created.headers[NEXT]]
    for word in (b" big", b" wide", b"\x00\xff world"):
        appended = await http.post("/notes/today", headers=TEXT, content=word)
        assert appended.status_code == 204
        offsets.append(appended.headers[NEXT])
    assert offsets == sorted(offsets) and len(set(offsets)) == 4

    whole = await http.get("/notes/today")
    assert whole.content == b"hello big wide\x00\xff world"
    assert whole.headers["stream-up-to-date"] == "true"
    assert whole.headers[NEXT] == offsets[-1]
    rest = await http.get("/notes/today", params={"offset": offsets[1]})
    assert rest.content == b" wide\x00\xff world"
    at_tail = await http.get("/notes/today", params={"offset": offsets[-1]})
    assert at_tail.content == b"" and at_tail.headers[NEXT] == offsets[-1]
    again = await http.get("/notes/today", headers={"if-none-match": whole.headers["etag"]})
    assert again.status_code == 304
    head = await http.head("/notes/today")
    assert head.headers[NEXT] == offsets[-1] and head.headers["content-type"] == "text/plain"


async def test_json_mode_keeps_messages(streams_http: httpx.AsyncClient) -> None:
    http = streams_http
    assert (await http.put("/j", headers=JSON, content=b'[{"a":1},{"b":2}]')).status_code == 201
    assert (await http.post("/j", headers=JSON, content=b'{"c": [3]}')).status_code == 204
    assert (await http.post("/j", headers=JSON, content=b"[[4,5]]")).status_code == 204
    assert (await http.get("/j")).json() == [{"a": 1}, {"b": 2}, {"c": [3]}, [4, 5]]
    bad = await http.post("/j", headers=JSON, content=b"{nope}")
    assert bad.status_code == 400 and "not valid JSON" in bad.text
    assert (await http.post("/j", headers=JSON, content=b"[]")).status_code == 400
    assert (await http.post("/j", headers=TEXT, content=b"x")).status_code == 409
    now = await http.get("/j", params={"offset": "now"})
    assert now.text == "[]" and now.headers["cache-control"] == "no-store"


async def test_pages_resume_without_gap_or_duplicate(streams_store: Any) -> None:
    app = streams_test_app(streams_store, read_limit=40)
    async with serve(app) as url, httpx.AsyncClient(base_url=f"{url}/v1/stream") as http:
        await http.put("/log", headers=TEXT)

        async def writer(w: int) -> None:
            for i in range(15):
                r = await http.post("/log", headers=TEXT, content=f"[{w}.{i}]".encode())
                assert r.status_code == 204

        await asyncio.gather(*(writer(w) for w in range(4)))
        seen, offset, pages = b"", "-1", 0
        while True:
            page = await http.get("/log", params={"offset": offset})
            seen += page.content
            offset, pages = page.headers[NEXT], pages + 1
            if page.headers.get("stream-up-to-date") == "true":
                break
        items = seen.decode().strip("[]").split("][")
        assert sorted(items) == sorted(f"{w}.{i}" for w in range(4) for i in range(15))
        assert pages > 5  # the read limit split the log into pages


async def test_long_poll_wakes_on_append_and_times_out(streams_http: httpx.AsyncClient) -> None:
    http = streams_http
    tail = (await http.put("/lp", headers=TEXT, content=b"old")).headers[NEXT]
    waiting = asyncio.ensure_future(http.get("/lp", params={"offset": tail, "live": "long-poll"}))
    await asyncio.sleep(0.1)
    await http.post("/lp", headers=TEXT, content=b"new")
    woke = await waiting
    assert woke.status_code == 200 and woke.content == b"new"
    assert woke.headers["stream-cursor"].isdigit()
    started = time.monotonic()
    idle = await http.get("/lp", params={"offset": woke.headers[NEXT], "live": "long-poll"})
    assert idle.status_code == 204 and time.monotonic() - started >= 0.4
    assert idle.headers["stream-up-to-date"] == "true"
    assert idle.headers[NEXT] == woke.headers[NEXT]


async def test_sse_delivers_appends_live_then_closes(streams_http: httpx.AsyncClient) -> None:
    http = streams_http
    await http.put("/live", headers=JSON, content=b'{"n":0}')
    got: list[tuple[str, Any]] = []
    async with http.stream("GET", "/live", params={"offset": "-1", "live": "sse"}) as response:
        assert response.headers["content-type"] == "text/event-stream"
        events = sse_events(response)
        async for kind, data in events:
            got.append((kind, data))
            if kind == "control" and '"upToDate":true' in data:
                break
        await http.post("/live", headers=JSON, content=b'{"n":1}')
        await http.post("/live", headers={**JSON, "stream-closed": "true"}, content=b'{"n":2}')
        async for kind, data in events:
            got.append((kind, data))
    messages = [m for k, d in got if k == "data" for m in json.loads(d)]
    assert messages == [{"n": 0}, {"n": 1}, {"n": 2}]
    kinds = [k for k, _ in got]
    assert all(kinds[i + 1] == "control" for i, k in enumerate(kinds) if k == "data")
    assert '"streamClosed":true' in got[-1][1]  # and the server ended the response


async def test_producers_dedupe_and_fence(streams_http: httpx.AsyncClient) -> None:
    http = streams_http
    await http.put("/p", headers=TEXT)

    def send(epoch: int, seq: int, body: bytes) -> Any:
        headers = {**TEXT, "producer-id": "w1", "producer-epoch": str(epoch)}
        return http.post("/p", headers={**headers, "producer-seq": str(seq)}, content=body)

    assert (await send(0, 0, b"a")).status_code == 200
    assert (await send(0, 1, b"b")).status_code == 200
    dup = await send(0, 0, b"a")
    assert dup.status_code == 204 and dup.headers["producer-seq"] == "1"
    gap = await send(0, 5, b"x")
    assert gap.status_code == 409
    assert (gap.headers["producer-expected-seq"], gap.headers["producer-received-seq"]) == (
        "2",
        "5",
    )
    assert (await send(1, 3, b"x")).status_code == 400  # a new epoch starts at 0
    assert (await send(1, 0, b"c")).status_code == 200
    stale = await send(0, 2, b"zombie")
    assert stale.status_code == 403 and stale.headers["producer-epoch"] == "1"
    assert (await http.get("/p")).content == b"abc"
    partial = await http.post("/p", headers={**TEXT, "producer-id": "w1"}, content=b"x")
    assert partial.status_code == 400 and "go together" in partial.text


async def test_closed_stream_refuses_appends(streams_http: httpx.AsyncClient) -> None:
    http = streams_http
    await http.put("/c", headers=TEXT, content=b"one")
    closed = await http.post("/c", headers={**TEXT, "stream-closed": "true"}, content=b"two")
    assert closed.status_code == 204 and closed.headers["stream-closed"] == "true"
    refused = await http.post("/c", headers=TEXT, content=b"three")
    assert refused.status_code == 409 and refused.headers["stream-closed"] == "true"
    assert refused.headers[NEXT] == closed.headers[NEXT]
    assert (await http.post("/c", headers={"stream-closed": "true"})).status_code == 204
    read = await http.get("/c")
    assert read.content == b"onetwo" and read.headers["stream-closed"] == "true"
    started = time.monotonic()
    at_end = await http.get("/c", params={"offset": closed.headers[NEXT], "live": "long-poll"})
    assert at_end.status_code == 204 and at_end.headers["stream-closed"] == "true"
    assert time.monotonic() - started < 0.3  # no waiting on a stream that cannot grow


async def test_fork_reads_through_its_source(streams_http: httpx.AsyncClient) -> None:
    http = streams_http
    first = await http.put("/src", headers=TEXT, content=b"A")
    await http.post("/src", headers=TEXT, content=b"B")
    fork = await http.put(
        "/fork",
        headers={
            "stream-forked-from": "/v1/stream/src",
            "stream-fork-offset": first.headers[NEXT],
        },
    )
    assert fork.status_code == 201 and fork.headers["content-type"] == "text/plain"
    await http.post("/fork", headers=TEXT, content=b"x")
    await http.post("/src", headers=TEXT, content=b"C")
    assert (await http.get("/fork")).content == b"Ax"
    assert (await http.get("/fork", params={"offset": first.headers[NEXT]})).content == b"x"
    assert (await http.get("/src")).content == b"ABC"
    assert (await http.delete("/src")).status_code == 204
    assert (await http.get("/src")).status_code == 410  # forks still read from it
    assert (await http.put("/src", headers=TEXT)).status_code == 409
    assert (await http.get("/fork")).content == b"Ax"
    assert (await http.delete("/fork")).status_code == 204
    assert (await http.head("/src")).status_code == 404  # the last fork released it


async def test_ttl_and_expires_at_expire(streams_http: httpx.AsyncClient) -> None:
    http = streams_http
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    assert (await http.put("/ttl", headers={**TEXT, "stream-ttl": "1"})).status_code == 201
    assert (await http.put("/exp", headers={**TEXT, "stream-expires-at": soon})).status_code == 201
    both = await http.put("/both", headers={"stream-ttl": "1", "stream-expires-at": soon})
    assert both.status_code == 400 and "not both" in both.text
    assert (await http.head("/ttl")).headers["stream-ttl"] == "1"
    await asyncio.sleep(1.1)
    assert (await http.get("/ttl")).status_code == 404
    assert (await http.post("/exp", headers=TEXT, content=b"x")).status_code == 404
    assert (await http.put("/ttl", headers=TEXT)).status_code == 201  # the name is free again


async def test_bad_requests_name_the_rule(streams_http: httpx.AsyncClient) -> None:
    http = streams_http
    for path in ("/a//b", "/a/%2E%2E/b", "/a%20b", "/"):
        response = await http.put(path, headers=TEXT)
        assert response.status_code == 400, path
    assert "empty segment" in (await http.put("/a//b")).text
    await http.put("/ok", headers=TEXT, content=b"x")
    for offset in ("", "0,1", "abc", "../x"):
        response = await http.get("/ok", params={"offset": offset})
        assert response.status_code == 400, offset
    assert (await http.get("/ok", params={"live": "long-poll"})).status_code == 400
    assert (await http.put("/t", headers={"stream-ttl": "01"})).status_code == 400
    assert (await http.post("/ok", headers=TEXT)).status_code == 400
    assert (await http.post("/missing", headers=TEXT, content=b"x")).status_code == 404
    preflight = await http.options("/ok", headers={"access-control-request-method": "GET"})
    assert preflight.status_code == 204
    assert "if-none-match" in preflight.headers["access-control-allow-headers"]
    assert (await http.get("/missing")).headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_closing_the_store_ends_live_reads(kind: str, tmp_path: Path) -> None:
    from .conftest import make_stream_store

    store: Any = make_stream_store(kind, tmp_path)
    await store.open()
    try:
        app = streams_test_app(store, long_poll_timeout=30, sse_keepalive=30)
        async with serve(app) as url, httpx.AsyncClient(base_url=f"{url}/v1/stream") as http:
            tail = (await http.put("/s", headers=TEXT)).headers[NEXT]
            poll = asyncio.ensure_future(
                http.get("/s", params={"offset": tail, "live": "long-poll"})
            )
            await asyncio.sleep(0.1)
            await store.close()
            answered = await asyncio.wait_for(poll, 5)
            assert answered.status_code == 204
    finally:
        await store.close()


async def test_sqlite_keeps_streams_across_restart(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    async with SQLiteStore(path), SQLiteStreams(path) as store:  # one file, two stores
        await store.create("s", CreateSpec("text/plain", body=b"one", ttl=3600))
        p = Producer("w", 0, 0)
        first = await store.append("s", AppendSpec(b"two", "text/plain", producer=p))
        assert first.status == "appended"
        await store.append("s", AppendSpec(b"", close=True))
        await store.create("f", CreateSpec(fork_from="s"))
    async with SQLiteStreams(path) as store:
        result = await store.read("s", None, 1 << 20)
        assert b"".join(r.data for r in result.rows) == b"onetwo"
        assert result.info.closed and result.info.ttl == 3600
        dup = await store.append("s", AppendSpec(b"two", "text/plain", producer=p))
        assert dup.status == "duplicate"
        assert [r.data for r in (await store.read("f", None, 1 << 20)).rows] == [b"one", b"two"]
        await store.delete("s")
        await store.delete("f")
        with pytest.raises(StreamNotFound):
            await store.info("s")


async def test_memory_store_is_reusable_after_close() -> None:
    store = MemoryStreams()
    async with store:
        await store.create("m", CreateSpec("text/plain", body=b"x"))
    async with store:
        assert (await store.info("m")).tail.n == 1


async def test_sse_keeps_alive_then_ends_for_reconnect(streams_store: Any) -> None:
    app = streams_test_app(streams_store, sse_keepalive=0.1, sse_reconnect=0.45, max_body=10)
    async with serve(app) as url, httpx.AsyncClient(base_url=f"{url}/v1/stream") as http:
        tail = (await http.put("/k", headers=TEXT, content=b"x")).headers[NEXT]
        too_big = await http.post("/k", headers=TEXT, content=b"0123456789!")
        assert too_big.status_code == 413
        started = time.monotonic()
        params = {"offset": tail, "live": "sse"}
        async with http.stream("GET", "/k", params=params) as response:
            got = [(kind, json.loads(data)) async for kind, data in sse_events(response)]
        assert 0.4 < time.monotonic() - started < 3  # the server ended the response
        assert [kind for kind, _ in got] == ["control"] * len(got) and len(got) >= 3
        assert all(c["streamNextOffset"] == tail and c["upToDate"] for _, c in got)
