"""The `wakeful` command: serve an app, send messages, tail entities, list runs, approve,
and `wakeful demo`. The composition root: it picks the store and loads the user's
registry by import string (`module:attribute`)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

from wakeful.runtime import Event, EventStore, Registry, Runtime, RuntimeConfig

from .client import DEFAULT_URL, ApiError, Client
from .http.auth import is_loopback
from .http.config import ServerConfig, parse_api_key

log = logging.getLogger("wakeful")

DEFAULT_STORE = "sqlite:wakeful.db"


# -- loading -----------------------------------------------------------------------------


def load_registry(spec: str) -> Registry:
    """The `Registry` named by `module:attribute` (the current directory is importable)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{spec!r} is not module:attribute (e.g. myapp.agents:registry)")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}") from None
    value = getattr(module, attr, None)
    if not isinstance(value, Registry):
        raise click.BadParameter(
            f"{spec!r} is {type(value).__name__}, not a wakeful.runtime.Registry"
        )
    return value


def open_store(spec: str, *, partitions: int, replicas: int, ownership: str) -> EventStore:
    """The store named by `sqlite:PATH`, `memory:` or `nats://HOST:PORT[,nats://…]`."""
    if spec.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        path = spec.removeprefix("sqlite:") or "wakeful.db"
        return SQLiteStore(path)
    if spec == "memory:":
        from .memory import MemoryStore

        return MemoryStore()
    if spec.startswith(("nats://", "tls://")):
        from .jetstream import JetStreamStore

        return JetStreamStore(
            spec.split(","), partitions=partitions, replicas=replicas, ownership=ownership
        )
    raise click.BadParameter(
        f"store {spec!r} is not one of sqlite:PATH, memory: or nats://HOST:PORT[,nats://…]"
    )


def generic_streams(spec: str, *, replicas: int = 1) -> tuple[Any, Any]:
    """The generic Durable Streams app and its store, beside the entity store: in the
    same SQLite file, in memory, or in the same JetStream cluster (stream WAKEFUL_DS)."""
    from .http.streams import streams_app
    from .http.streamstore import MemoryStreams, SQLiteStreams

    store: Any
    if spec.startswith("sqlite:"):
        store = SQLiteStreams(spec.removeprefix("sqlite:") or "wakeful.db")
    elif spec == "memory:":
        store = MemoryStreams()
    else:
        from .http.streamjetstream import JetStreamStreams

        store = JetStreamStreams(spec.split(","), replicas=replicas)
    return streams_app, store


def build_app(
    registry: Registry,
    store_spec: str,
    config: ServerConfig,
    *,
    partitions: int = 16,
    replicas: int = 1,
    ownership: str = "leases",
) -> Any:
    """The ASGI app `wakeful serve` runs: the entity API on the store, and the generic
    streams where the store has a backend for them."""
    from .http.app import create_app

    store = open_store(store_spec, partitions=partitions, replicas=replicas, ownership=ownership)
    runtime = Runtime(registry, store, RuntimeConfig.from_env())
    streams_app, streams_store = generic_streams(store_spec, replicas=replicas)
    app = streams_app(
        streams_store,
        long_poll_timeout=config.long_poll_timeout or 0.001,
        sse_keepalive=config.sse_keepalive,
        sse_reconnect=config.sse_reconnect or 86400.0,
        # with keys, what a stream holds is for its key holders: no shared caches
        cache_control=("private" if config.api_keys else "public")
        + ", max-age=60, stale-while-revalidate=300",
    )
    return create_app(runtime, config, streams=app, lifespan_hooks=(streams_store,))


# -- the live view -----------------------------------------------------------------------


class Renderer:
    """Prints events readably: runs, steps, text deltas inline, approvals highlighted."""

    def __init__(self, address: str | None = None, *, show_address: bool = False) -> None:
        self.address = address
        self.show_address = show_address
        self.in_text = False

    def _out(self, line: str, address: str | None = None) -> None:
        if self.in_text:
            click.echo()
            self.in_text = False
        prefix = click.style(f"{address} ", fg="blue") if self.show_address and address else ""
        click.echo(prefix + line)

    def __call__(self, event: Event, address: str | None = None) -> None:
        d = event.data
        kind = event.kind
        short = (event.run or "")[-8:]
        if kind == "text.delta":
            if not self.in_text:
                prefix = click.style(f"{address} ", fg="blue") if self.show_address else ""
                click.echo(prefix + "  " + click.style("│ ", fg="cyan"), nl=False)
                self.in_text = True
            click.echo(d.text, nl=False)
            return
        if kind == "text.completed":
            if self.in_text:
                click.echo()
                self.in_text = False
            return
        if kind == "run.started":
            self._out(
                click.style(f"▶ run …{short}", bold=True) + f" {d.mode}, woken by {d.trigger}",
                address,
            )
        elif kind == "run.completed":
            result = json.dumps(d.result)
            self._out(
                click.style(f"■ run …{short} completed", fg="green") + f" → {result}", address
            )
        elif kind == "run.failed":
            self._out(
                click.style(f"✗ run …{short} failed ({d.reason})", fg="red") + f": {d.error}",
                address,
            )
        elif kind == "run.cancelled":
            self._out(click.style(f"✗ run …{short} cancelled", fg="red"), address)
        elif kind == "run.suspended":
            self._out(
                click.style(f"  ⏸ suspended, waiting for {d.waiting_for}", fg="yellow"), address
            )
        elif kind == "run.resumed":
            self._out(f"  ⏵ resumed by {d.trigger}", address)
        elif kind == "step.completed":
            self._out(f"  ✓ step {d.name} → {json.dumps(d.result)}", address)
        elif kind == "step.failed":
            self._out(click.style(f"  ! step {d.name} failed: {d.error}", fg="red"), address)
        elif kind == "tool.called":
            self._out(f"  ⚙ tool {d.tool}({json.dumps(d.args)}) [{d.call_id}]", address)
        elif kind == "tool.result":
            value = d.result if d.status == "success" else d.error
            self._out(f"  ⚙ {d.call_id}: {d.status} → {json.dumps(value)}", address)
        elif kind == "approval.requested":
            where = address or self.address or "ADDRESS"
            self._out(
                click.style(
                    f"  ⚠ APPROVAL NEEDED: {d.call_id} ({d.tool} {json.dumps(d.args)})",
                    fg="yellow",
                    bold=True,
                )
                + f"\n    wakeful approve {where} {d.call_id}   (or --deny)",
                address,
            )
        elif kind == "approval.decided":
            verdict = "approved" if d.approved else "denied"
            reason = f" ({d.reason})" if d.reason else ""
            self._out(
                click.style(
                    f"  ✔ {d.call_id} {verdict}{reason}", fg="green" if d.approved else "red"
                ),
                address,
            )
        elif kind == "message.received":
            self._out(f"✉ message {json.dumps(d.payload)}", address)
        elif kind == "child.spawned":
            self._out(f"  ⑂ spawned {d.address}", address)
        elif kind == "child.finished":
            self._out(f"  ⑂ child {d.address} {d.status} → {json.dumps(d.result)}", address)
        elif kind in ("timer.set", "timer.fired"):
            if not d.name.startswith("wk:"):  # the runtime's own (approval timeouts)
                self._out(f"  ⏲ timer {d.name} {kind.removeprefix('timer.')}", address)
        elif kind == "signal.received":
            self._out(f"  ↯ signal {d.name} {json.dumps(d.payload)}", address)
        elif kind == "state.set":
            self._out(
                click.style(f"  · {d.collection}[{d.key}] = {json.dumps(d.value)}", dim=True),
                address,
            )
        elif kind in ("entity.created", "step.started", "state.deleted", "timer.cancelled"):
            return
        else:
            self._out(click.style(f"  {kind} {d}", dim=True), address)


def _event_json(event: Event) -> str:
    from wakeful.runtime.events import encode_event

    return encode_event(event).decode()


# -- commands ----------------------------------------------------------------------------


def _client(ctx: click.Context) -> Client:
    return Client(ctx.obj["url"], api_key=ctx.obj["api_key"])


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:  # pragma: no cover - interactive
        sys.exit(130)


@click.group()
@click.option(
    "--url",
    envvar="WAKEFUL_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Server for send/tail/runs/approve (env WAKEFUL_URL).",
)
@click.option(
    "--api-key",
    "api_key",
    envvar="WAKEFUL_API_KEY",
    default=None,
    help="Bearer key for those commands (env WAKEFUL_API_KEY).",
)
@click.pass_context
def main(ctx: click.Context, url: str, api_key: str | None) -> None:
    """wakeful: entities with event streams, for durable agents."""
    ctx.obj = {"url": url, "api_key": api_key}


@main.command()
@click.option(
    "--store",
    default=DEFAULT_STORE,
    show_default=True,
    help="sqlite:PATH, memory: or nats://HOST:PORT[,nats://…] (a JetStream cluster).",
)
@click.option(
    "--app",
    "app_spec",
    default=None,
    help="Your registry as module:attribute; without it only generic streams and reads.",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=4437, show_default=True, type=int)
@click.option(
    "--key",
    "keys",
    multiple=True,
    help="An API key: TOKEN[:SCOPES[:TYPES]], scopes read,send,admin (repeatable).",
)
@click.option(
    "--keys-file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A file of API keys, one TOKEN[:SCOPES[:TYPES]] per line, or JSON.",
)
@click.option(
    "--insecure-no-auth",
    is_flag=True,
    help="Serve hosts other than loopback without API keys (never do this on a network).",
)
@click.option("--partitions", default=16, show_default=True, help="JetStream partitions.")
@click.option("--replicas", default=1, show_default=True, help="JetStream stream replicas.")
@click.option(
    "--ownership",
    default="leases",
    show_default=True,
    type=click.Choice(["leases", "all", "none"]),
    help="JetStream: share partitions with other workers (leases), serve all, or "
    "none (an API front end that runs no handlers).",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
def serve(
    store: str,
    app_spec: str | None,
    host: str,
    port: int,
    keys: tuple[str, ...],
    keys_file: str | None,
    insecure_no_auth: bool,
    partitions: int,
    replicas: int,
    ownership: str,
    log_level: str,
) -> None:
    """Serve the HTTP API (and run the handlers) on a store."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        config = ServerConfig.from_env(
            keys=[parse_api_key(k) for k in keys],
            keys_file=keys_file,
            insecure_no_auth=insecure_no_auth,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if not config.api_keys:
        if not is_loopback(host) and host != "localhost" and not insecure_no_auth:
            raise click.UsageError(
                f"refusing to serve {host} without API keys: anyone who reaches it could send "
                "messages and approve tool calls. Give --key TOKEN (or WAKEFUL_API_KEYS), or "
                "--insecure-no-auth if you really mean it."
            )
        click.echo(
            click.style("no API keys: ", fg="yellow")
            + (
                "serving loopback clients only"
                if not insecure_no_auth
                else "INSECURE: anyone who reaches this port has full access"
            ),
            err=True,
        )
    registry = load_registry(app_spec) if app_spec else Registry()
    if not app_spec:
        click.echo("no --app: no entity types; serving generic streams and reads", err=True)
    app = build_app(
        registry, store, config, partitions=partitions, replicas=replicas, ownership=ownership
    )
    click.echo(f"wakeful serving {store} on http://{host}:{port}", err=True)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning" if log_level == "info" else log_level,
        timeout_graceful_shutdown=3,
    )


def _payload(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(
            f"{text!r} is not JSON: {exc}; quote strings as '\"hi\"'"
        ) from None


@main.command()
@click.argument("address")
@click.argument("payload", default="null")
@click.option("--mode", type=click.Choice(["classic", "durable"]), default=None)
@click.option("--key", default=None, help="Idempotency key: a retry with it is sent once.")
@click.option("--follow", is_flag=True, help="Show the run this message starts, live, to its end.")
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
@click.pass_context
def send(
    ctx: click.Context,
    address: str,
    payload: str,
    mode: str | None,
    key: str | None,
    follow: bool,
    as_json: bool,
) -> None:
    """Send PAYLOAD (JSON) to the entity at ADDRESS (/type/id)."""
    value = _payload(payload)

    async def go() -> None:
        async with _client(ctx) as client:
            if not follow:
                offset = await client.send(address, value, mode=mode, key=key)
                click.echo(json.dumps({"address": address, "offset": offset}))
                return
            render = Renderer(address)
            async for event in client.send_and_follow(address, value, mode=mode, key=key):
                click.echo(_event_json(event)) if as_json else render(event)

    _run(go())


@main.command()
@click.argument("address")
@click.option("--offset", default=None, help="Start after this offset ('now': new events only).")
@click.option(
    "--from-start", is_flag=True, help="Show the whole log first (the default is new events)."
)
@click.option("--json", "as_json", is_flag=True, help="Print events as JSON lines.")
@click.pass_context
def tail(
    ctx: click.Context, address: str, offset: str | None, from_start: bool, as_json: bool
) -> None:
    """Follow the entity at ADDRESS live; Ctrl-C stops."""
    start = "-1" if from_start else (offset or "now")

    async def go() -> None:
        async with _client(ctx) as client:
            render = Renderer(address)
            async for event in client.tail(address, after=start):
                click.echo(_event_json(event)) if as_json else render(event)

    _run(go())


@main.command()
@click.option(
    "--active", "status", flag_value="active", default=True, help="Running or suspended (default)."
)
@click.option("--all", "status", flag_value="all", help="Every run.")
@click.option(
    "--status",
    "status",
    type=click.Choice(["running", "suspended", "completed", "failed", "cancelled"]),
)
@click.option("--type", "type_name", default=None, help="Only runs of this entity type.")
@click.option("--limit", default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def runs(ctx: click.Context, status: str, type_name: str | None, limit: int, as_json: bool) -> None:
    """List runs across entities, newest first."""

    async def go() -> None:
        async with _client(ctx) as client:
            records = await client.runs(status=status, type=type_name, limit=limit)
        if as_json:
            from msgspec import json as mjson

            click.echo(mjson.encode(records).decode())
            return
        if not records:
            click.echo(f"no {status} runs")
            return
        for r in records:
            why = f"  {r.reason}" if r.reason else ""
            why += f" ({r.waiting_for})" if r.waiting_for else ""
            click.echo(f"{r.run}  {r.status:<10} {r.mode:<8} {r.address}{why}")

    _run(go())


@main.command()
@click.argument("address")
@click.argument("call_id")
@click.option("--deny", is_flag=True, help="Deny instead of approve.")
@click.option("--reason", default=None)
@click.pass_context
def approve(ctx: click.Context, address: str, call_id: str, deny: bool, reason: str | None) -> None:
    """Approve (or --deny) the tool call CALL_ID of the entity at ADDRESS."""

    async def go() -> None:
        async with _client(ctx) as client:
            decision = await client.approve(address, call_id, not deny, reason)
        click.echo(f"{call_id}: {decision['status']}" + (f" ({reason})" if reason else ""))

    _run(go())


@main.command()
@click.option("--db", default="wakeful-demo.db", show_default=True, help="The SQLite file.")
@click.option("--port", default=0, help="Port (default: a free one).")
@click.option("--keep", is_flag=True, help="Leave the server running after the scenario.")
def demo(db: str, port: int, keep: bool) -> None:
    """Start a server on a local SQLite file and play a scenario in its live view."""
    from .demo_scenario import run_demo

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_demo(Path(db), port, keep))


@contextlib.asynccontextmanager
async def serving(app: Any, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
    """Run `app` with uvicorn in this event loop; yields its base URL."""
    import socket

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                await task  # raises why it could not start
                raise RuntimeError("the server stopped while starting")
            await asyncio.sleep(0.01)
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()
