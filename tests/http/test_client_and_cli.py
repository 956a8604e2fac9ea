"""The Python client and the `wakeful` CLI against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wakeful.runtime import EventStore
from wakeful.transports.client import ApiError, Client, SyncClient
from wakeful.transports.sqlite import SQLiteStore

from .apps import DroppingProxy, gates, served

CLI = [sys.executable, "-c", "from wakeful.transports.cli import main; main()"]


async def test_client_calls(store: EventStore) -> None:
    async with served(store) as s, Client(s.url) as client:
        offset = await client.send("/echo/c1", {"n": 1}, key="k")
        assert await client.send("/echo/c1", {"n": 1}, key="k") == offset
        await s.rt.idle()
        state = await client.state("/echo/c1")
        assert state["status"] == "idle" and state["state"]["seen"] == {"0": {"n": 1}}
        assert await client.entities("echo") == ["c1"]
        [run] = await client.runs(status="all")
        assert (await client.run(run.run)).status == "completed"
        events = await client.read("/echo/c1")
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert [e.kind for e in events][-1] == "run.completed"

        await client.send("/tooling/c1", None)
        await s.rt.idle()
        [pending] = await client.approvals("/tooling/c1")
        decision = await client.approve("/tooling/c1", pending["call_id"], False, "not today")
        assert decision["status"] == "denied"
        followed = [e async for e in client.follow_run((await client.runs(status="all"))[0].run)]
        assert followed[-1].kind == "run.completed"
        assert followed[-1].data.result["status"] == "denied"

        with pytest.raises(ApiError) as missing:
            await client.send("/nope/x", 1)
        assert missing.value.status == 404 and missing.value.code == "unknown_type"


async def test_tail_resumes_after_dropped_connections_without_gap_or_duplicate(
    store: EventStore,
) -> None:
    async with served(store) as s:
        proxy = DroppingProxy(s.url)
        async with proxy as url, Client(url, retry_for=10) as client:
            got = []

            async def follow() -> None:
                async for event in client.tail("/echo/t1"):
                    got.append(event)
                    if event.kind == "run.completed" and event.data.result == 9:
                        return

            task = asyncio.create_task(follow())
            for i in range(10):
                await s.rt.send("/echo/t1", i)
                await s.rt.idle()
                if i in (3, 6):
                    await asyncio.sleep(0.1)
                    proxy.drop()
            await asyncio.wait_for(task, 15)
        logged = await s.rt.read("/echo/t1")
        assert [e.offset for e in got] == [e.offset for e in logged]
        assert proxy.drops >= 2


async def test_send_and_follow_resumes_the_same_run_after_a_drop(tmp_path: Path) -> None:
    async with served(SQLiteStore(tmp_path / "follow.db")) as s:
        gates["f1"] = gate = asyncio.Event()
        proxy = DroppingProxy(s.url)
        async with proxy as url, Client(url, retry_for=10) as client:
            got = []
            async for event in client.send_and_follow("/gated/f1", None):
                got.append(event)
                if event.kind == "step.completed" and event.data.name == "s2":
                    proxy.drop()
                    gate.set()
        run = got[0].run
        logged = [e for e in await s.rt.read("/gated/f1") if e.run == run]
        assert [e.seq for e in got] == [e.seq for e in logged]
        assert len(await s.rt.runs(address="/gated/f1", status=None)) == 1  # sent once


async def test_sync_client_and_cli_commands(tmp_path: Path) -> None:
    async with served(SQLiteStore(tmp_path / "cli.db")) as s:
        env = {**os.environ, "WAKEFUL_URL": s.url}

        async def cli(*args: str) -> str:
            proc = await asyncio.create_subprocess_exec(
                *CLI, *args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            out, _ = await asyncio.wait_for(proc.communicate(), 30)
            assert proc.returncode == 0, out.decode()
            return out.decode()

        sent = json.loads(await cli("send", "/echo/x1", '{"hello": 1}'))
        assert sent["address"] == "/echo/x1"
        followed = await cli("send", "/echo/x1", '"again"', "--follow")
        assert "echo: again" in followed and "completed" in followed
        lines = (await cli("send", "/echo/x1", "3", "--follow", "--json")).splitlines()
        assert json.loads(lines[-1])["kind"] == "run.completed"

        await cli("send", "/tooling/x1", "null")
        await s.rt.idle()
        listed = await cli("runs")
        assert "/tooling/x1" in listed and "suspended" in listed

        approved = await cli("approve", "/tooling/x1", "call-1", "--reason", "fine")
        assert "approved" in approved

        def sync_part() -> list[str]:
            with SyncClient(s.url) as client:
                client.send("/echo/x2", "sync")
                return [e.kind for e in client.send_and_follow("/echo/x2", "more")]

        kinds = await asyncio.to_thread(sync_part)
        assert kinds[0] == "run.started" and kinds[-1] == "run.completed"

        bad = await asyncio.create_subprocess_exec(
            *CLI,
            "send",
            "/echo/x1",
            "{not json",
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = await bad.communicate()
        assert bad.returncode == 2 and b"not JSON" in out


@pytest.mark.slow
def test_demo_plays_the_whole_scenario(tmp_path: Path) -> None:
    result = subprocess.run(
        [*CLI, "demo", "--db", str(tmp_path / "demo.db")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        # the scripted models, whatever the environment holds
        env={k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in (
        "completed",  # runs end
        "│ You said",  # streamed text
        "step analyse",  # durable steps
        "APPROVAL NEEDED",
        "clear-eu approved",
        "spawned /worker/",
        "all workers done",
        "timer remind fired",
        "spawned /researcher/",  # a sub-agent
        "c3 approved (refund ok)",  # an agent's tool approval
        "routed by rule 'parcels' to track_parcel, with note_interest in the background",
        "server stopped, with the run waiting for approval",
        "suspended, requires_approval",
        "c3 approved (approved after the restart)",
        "79.00 EUR are on their way to your card",
        "demo done in",
    ):
        assert expected in out, expected
    seconds = float(out.split("demo done in ")[1].split(" s")[0])
    assert seconds < 30


async def test_serve_on_jetstream_serves_entities_and_generic_streams(tmp_path: Path) -> None:
    from wakeful.transports.cli import build_app, serving
    from wakeful.transports.http.config import ServerConfig

    from ..nats_fixtures import NatsServer
    from .apps import registry

    async with NatsServer(tmp_path / "nats") as nats:
        app = build_app(registry, nats.url, ServerConfig(), ownership="all")
        async with serving(app) as url, Client(url) as client:
            events = [e async for e in client.send_and_follow("/echo/js1", "over nats")]
            assert events[-1].kind == "run.completed" and events[-1].data.result == "over nats"
            http = client._http
            created = await http.put(
                "/v1/stream/chat-log", headers={"content-type": "application/json"}
            )
            assert created.status_code == 201
            appended = await http.post(
                "/v1/stream/chat-log",
                content=b'{"n": 1}',
                headers={"content-type": "application/json"},
            )
            assert appended.status_code in (200, 204)
            read = await http.get("/v1/stream/chat-log", params={"offset": "-1"})
            assert read.json() == [{"n": 1}]
