"""The entity API end to end: a real uvicorn server on a free port, on every store."""

from __future__ import annotations

import asyncio
import json

import pytest

from wakeful.runtime import EventStore
from wakeful.runtime.events import decode_events

from .apps import gates, served, sse_events


async def wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not await predicate():
            await asyncio.sleep(0.02)


async def test_send_is_accepted_once_per_key_and_shows_in_status(store: EventStore) -> None:
    async with served(store) as s:
        r1 = await s.http.post("/echo/e1", json={"payload": {"n": 1}, "key": "k1"})
        r2 = await s.http.post(
            "/echo/e1", json={"payload": {"n": 1}}, headers={"Idempotency-Key": "k1"}
        )
        assert r1.status_code == r2.status_code == 202
        assert r1.json() == r2.json() == {"address": "/echo/e1", "offset": r1.json()["offset"]}
        await s.rt.idle()
        status = (await s.http.get("/echo/e1")).json()
        assert status["status"] == "idle"
        assert status["state"]["seen"] == {"0": {"n": 1}}  # once, not twice
        assert [r["status"] for r in status["state"]["runs"].values()] == ["completed"]
        listing = (await s.http.get("/echo", params={"limit": 1})).json()
        assert listing == {"type": "echo", "ids": ["e1"], "next": None}


async def test_send_with_stream_yields_the_run_through_its_terminal_event(
    store: EventStore,
) -> None:
    async with served(store) as s:
        async with s.http.stream(
            "POST", "/echo/e2", json={"payload": "hi"}, headers={"Accept": "text/event-stream"}
        ) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [e async for e in sse_events(r)]
        assert events[0]["event"] == "accepted"
        kinds = [e["event"] for e in events[1:]]
        assert kinds[0] == "run.started" and kinds[-1] == "run.completed"
        assert "text.delta" in kinds
        run = json.loads(events[1]["data"])["run"]
        assert all(json.loads(e["data"])["run"] == run for e in events[1:])
        assert all(e["id"] == json.loads(e["data"])["offset"] for e in events[1:])


async def test_a_dropped_stream_resumes_with_last_event_id_without_gap_or_duplicate(
    store: EventStore,
) -> None:
    async with served(store) as s:
        gates["g1"] = gate = asyncio.Event()
        body = {"payload": None, "key": "resume-1"}
        seen = []
        async with s.http.stream("POST", "/gated/g1?stream=true", json=body) as r:
            async for e in sse_events(r):
                seen.append(e)
                if e["event"] == "step.completed" and '"s2"' in e["data"]:
                    break  # the client goes away mid-run
        gate.set()
        last = seen[-1]["id"]
        async with s.http.stream(
            "POST", "/gated/g1?stream=true", json=body, headers={"Last-Event-ID": last}
        ) as r:
            rest = [e async for e in sse_events(r)]
        assert rest[0]["event"] == "accepted"
        assert rest[0]["data"] == seen[0]["data"]  # the same message: the key held
        got = [json.loads(e["data"]) for e in seen[1:] + rest[1:]]
        run = got[0]["run"]
        logged = [e for e in await s.rt.read("/gated/g1") if e.run == run]
        assert [e["seq"] for e in got] == [e.seq for e in logged]
        assert got[-1]["kind"] == "run.completed"
        assert got[-1]["data"]["result"] == [0, 1, 2, 3, 4, 5]


async def test_entity_log_reads_follow_the_durable_streams_protocol(store: EventStore) -> None:
    async with served(store) as s:
        empty = await s.http.get("/echo/log1/main", params={"offset": "-1"})
        assert empty.status_code == 200 and empty.json() == []
        assert empty.headers["stream-up-to-date"] == "true"
        start = empty.headers["stream-next-offset"]
        assert start not in ("-1", "now")

        await s.http.post("/echo/log1", json={"payload": 1})
        await s.rt.idle()
        r = await s.http.get("/echo/log1/main", params={"offset": start})
        events = decode_events(r.content)
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert r.headers["stream-next-offset"] == events[-1].offset
        assert r.headers["stream-up-to-date"] == "true"
        tail = r.headers["stream-next-offset"]

        again = await s.http.get(
            "/echo/log1/main",
            params={"offset": start},
            headers={"If-None-Match": r.headers["etag"]},
        )
        assert again.status_code == 304

        now = await s.http.get("/echo/log1/main", params={"offset": "now"})
        assert now.json() == [] and now.headers["stream-next-offset"] == tail
        head = await s.http.head("/echo/log1/main")
        assert head.headers["stream-next-offset"] == tail

        timed_out = await s.http.get(
            "/echo/log1/main", params={"offset": tail, "live": "long-poll"}
        )
        assert timed_out.status_code == 204
        assert timed_out.headers["stream-next-offset"] == tail
        assert timed_out.headers["stream-cursor"]

        poll = asyncio.create_task(
            s.http.get(
                "/echo/log1/main", params={"offset": tail, "live": "long-poll", "cursor": "1"}
            )
        )
        await asyncio.sleep(0.2)
        await s.http.post("/echo/log1", json={"payload": 2})
        woke = await poll
        assert woke.status_code == 200
        fresh = decode_events(woke.content)
        assert fresh and fresh[0].seq == events[-1].seq + 1
        assert int(woke.headers["stream-cursor"]) > 1

        bad = await s.http.get("/echo/log1/main", params={"offset": "x/y"})
        assert bad.status_code == 400


async def test_entity_log_sse_sends_data_then_control_and_goes_live(store: EventStore) -> None:
    async with served(store) as s:
        await s.http.post("/echo/sse1", json={"payload": "a"})
        await s.rt.idle()
        got: list[int] = []
        controls = []
        async with s.http.stream(
            "GET", "/echo/sse1/main", params={"offset": "-1", "live": "sse"}
        ) as r:
            async for e in sse_events(r):
                if e["event"] == "data":
                    got += [ev.seq for ev in decode_events(e["data"])]
                    if len(controls) == 0:
                        await s.http.post("/echo/sse1", json={"payload": "b"})
                else:
                    controls.append(json.loads(e["data"]))
                    if len(controls) == 2:
                        break
        assert got == list(range(1, len(got) + 1))
        assert controls[0]["upToDate"] is True
        assert controls[-1]["streamNextOffset"] > controls[0]["streamNextOffset"]


async def test_approvals_runs_and_cancel_over_http(store: EventStore) -> None:
    async with served(store) as s:
        await s.http.post("/tooling/t1", json={})
        await s.http.post("/tooling/t2", json={})

        async def both_suspended() -> bool:
            runs = (await s.http.get("/runs", params={"status": "suspended"})).json()["runs"]
            return len(runs) == 2

        await wait_for(both_suspended)
        active = (await s.http.get("/runs", params={"status": "active", "type": "tooling"})).json()
        assert {r["address"] for r in active["runs"]} == {"/tooling/t1", "/tooling/t2"}
        pending = (await s.http.get("/tooling/t1/approvals", params={"status": "pending"})).json()
        assert [a["call_id"] for a in pending["approvals"]] == ["call-1"]
        assert pending["approvals"][0]["args"] == {"i": 7}

        decided = await s.http.post("/tooling/t1/approvals/call-1", json={"approved": True})
        assert decided.status_code == 200 and decided.json()["status"] == "approved"
        second = await s.http.post("/tooling/t1/approvals/call-1", json={"approved": False})
        assert second.json()["status"] == "approved"  # the first decision counts
        run1 = next(r for r in active["runs"] if r["address"] == "/tooling/t1")["run"]
        async with s.http.stream("GET", f"/runs/{run1}/stream") as r:
            events = [json.loads(e["data"]) async for e in sse_events(r)]
        assert events[0]["kind"] == "run.started" and events[-1]["kind"] == "run.completed"
        assert events[-1]["data"]["result"] == {"status": "success", "result": 7}
        record = (await s.http.get(f"/runs/{run1}")).json()
        assert record["status"] == "completed" and record["mode"] == "durable"

        run2 = next(r for r in active["runs"] if r["address"] == "/tooling/t2")["run"]
        cancelled = await s.http.post(f"/runs/{run2}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        denied = (await s.http.get("/tooling/t2/approvals")).json()["approvals"]
        assert denied[0]["status"] == "denied"

        missing = await s.http.post("/tooling/t1/approvals/nope", json={"approved": True})
        assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
        assert (await s.http.get("/runs/run_unknown")).status_code == 404


async def test_signal_reaches_the_waiting_run(store: EventStore) -> None:
    async with served(store) as s:
        none = await s.http.post("/listener/l1/signals/callback", json={"x": 1})
        assert none.status_code == 404  # no run is waiting yet
        await s.http.post("/listener/l1", json={})

        async def running() -> bool:
            return (await s.http.get("/listener/l1")).json().get("active_run") is not None

        await wait_for(running)
        r = await s.http.post("/listener/l1/signals/callback", json={"status": "paid"})
        assert r.status_code == 202
        await s.rt.idle()
        runs = (await s.http.get("/listener/l1")).json()["state"]["runs"]
        assert [r["result"] for r in runs.values()] == [{"got": {"status": "paid"}}]


async def test_metrics_count_wakes_runs_and_commits(store: EventStore) -> None:
    async with served(store) as s:
        await s.http.post("/echo/m1", json={"payload": 1})
        await s.rt.idle()
        text = (await s.http.get("/metrics")).text
        assert 'wakeful_wakes_total{kind="message"} 1' in text
        assert 'wakeful_runs_ended_total{mode="classic",outcome="completed"} 1' in text
        count = next(
            line for line in text.splitlines() if line.startswith("wakeful_commit_seconds_count")
        )
        assert int(count.split()[1]) >= 1
        assert (await s.http.get("/healthz")).json()["status"] == "ok"


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_openapi_describes_every_route(store: EventStore) -> None:
    async with served(store) as s:
        spec = (await s.http.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    expected = {
        "/healthz",
        "/metrics",
        "/openapi.json",
        "/runs",
        "/runs/{run_id}",
        "/runs/{run_id}/stream",
        "/runs/{run_id}/cancel",
        "/{type}",
        "/{type}/{id}",
        "/{type}/{id}/main",
        "/{type}/{id}/approvals",
        "/{type}/{id}/approvals/{call_id}",
        "/{type}/{id}/signals/{name}",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/{model}",
    }
    assert expected <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert schemas["SendRequest"]["properties"]["mode"]["anyOf"][0]["enum"] == [
        "classic",
        "durable",
    ]


async def test_client_disconnect_does_not_stop_the_run(store: EventStore) -> None:
    async with served(store) as s:
        gates["g2"] = gate = asyncio.Event()
        async with s.http.stream("POST", "/gated/g2?stream=true", json={}) as r:
            async for e in sse_events(r):
                if e["event"] == "run.started":
                    break
        gate.set()
        await s.rt.idle()
        [run] = await s.rt.runs(address="/gated/g2", status=None)
        assert run.status == "completed"


@pytest.mark.parametrize("store_kind", ["sqlite"], indirect=True)
async def test_idle_streams_get_keepalives_and_the_log_sse_ends_for_a_reconnect(
    store: EventStore,
) -> None:
    from wakeful.transports.http.config import ServerConfig

    config = ServerConfig(sse_keepalive=0.2, sse_reconnect=1.0, long_poll_timeout=1.0)
    async with served(store, config) as s:
        lines: list[str] = []
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with s.http.stream(
            "GET", "/echo/idle/main", params={"offset": "now", "live": "sse"}
        ) as r:
            async for line in r.aiter_lines():  # ends when the server closes the response
                lines.append(line)
        took = loop.time() - started
        assert lines.count(": keepalive") >= 2
        assert 0.9 <= took < 3.0
        gates["k1"] = asyncio.Event()
        async with s.http.stream("POST", "/gated/k1?stream=true", json={}) as r:
            seen = []
            async for line in r.aiter_lines():
                seen.append(line)
                if seen.count(": keepalive") == 2:  # the run waits on its gate: idle
                    break
        gates["k1"].set()
