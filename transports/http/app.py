"""`create_app`: the Starlette application that serves a Runtime over HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.types import ASGIApp

from wakeful.runtime import Runtime, WakefulError

from .auth import CORS, Auth, GuardStreams
from .config import ServerConfig
from .entities import RESERVED_TYPES, EntityAPI, json_response
from .errors import HTTPError, handle
from .hub import Hub
from .openai_compat import OpenAICompat
from .openapi import build_openapi


def _version() -> str:
    try:
        return version("wakeful")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0"


def create_app(
    runtime: Runtime,
    config: ServerConfig | None = None,
    *,
    streams: ASGIApp | None = None,
    manage: bool = True,
    lifespan_hooks: tuple[contextlib.AbstractAsyncContextManager[Any], ...] = (),
) -> Starlette:
    """The HTTP app of `runtime`.

    `streams` is the generic Durable Streams app, mounted at `/v1/stream` behind the
    API keys. The agents (entity types with `meta["kind"] == "agent"`) are also served
    as models of an OpenAI-compatible API at `/v1/chat/completions` and `/v1/models`.
    With `manage`, the app opens the runtime when it starts and closes it when it stops;
    `lifespan_hooks` are entered after it and left before it (a streams store, say).
    """
    config = config or ServerConfig()
    reserved = RESERVED_TYPES.intersection(runtime.registry.types)
    if reserved:
        raise ValueError(
            f"entity type(s) {', '.join(sorted(reserved))} cannot be served over HTTP: "
            f"the API uses the paths /{', /'.join(sorted(RESERVED_TYPES))}; rename the type"
        )
    auth = Auth(config)
    hub = Hub(runtime, keepalive=config.sse_keepalive)
    api = EntityAPI(runtime, config, auth, hub)
    spec = build_openapi(_version(), streams is not None)

    async def healthz(request: Request) -> Response:
        if not runtime.running:
            raise HTTPError(503, "unavailable", "the runtime is not running")
        return json_response({"status": "ok", "types": runtime.registry.types})

    async def metrics(request: Request) -> Response:
        client = request.client.host if request.client else None
        auth.check(auth.key_for(dict(request.headers), client), "admin")
        return PlainTextResponse(
            render_metrics(runtime, hub), media_type="text/plain; version=0.0.4"
        )

    async def openapi(request: Request) -> Response:
        return json_response(spec)

    routes: list[BaseRoute] = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ]
    if streams is not None:
        routes.append(Mount("/v1/stream", app=GuardStreams(streams, auth)))
    # The OpenAI-compatible endpoint; every other /v1 path ends here too (a 404), never
    # in the entity routes (`v1` is a reserved type name).
    routes.append(Mount("/v1", routes=OpenAICompat(api).routes()))
    routes += api.routes()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            if manage:
                await stack.enter_async_context(runtime)
            for hook in lifespan_hooks:
                await stack.enter_async_context(hook)
            stack.push_async_callback(hub.close)
            yield

    handlers: dict[Any, Any] = {
        HTTPError: handle,
        HTTPException: handle,
        WakefulError: handle,
        ValueError: handle,
        TimeoutError: handle,
        Exception: handle,
    }
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.add_middleware(CORS)
    return app


def _line(name: str, value: float, labels: dict[str, str] | None = None) -> str:
    if labels:
        inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
        return f"{name}{{{inner}}} {value:g}"
    return f"{name} {value:g}"


def render_metrics(runtime: Runtime, hub: Hub) -> str:
    """The runtime's counters in the Prometheus text format."""
    m = runtime.metrics
    out = [
        "# HELP wakeful_wakes_total Inbox messages routed to handlers, by wake kind.",
        "# TYPE wakeful_wakes_total counter",
    ]
    out += [_line("wakeful_wakes_total", n, {"kind": k}) for k, n in sorted(m.wakes.items())]
    out += [
        "# HELP wakeful_runs_started_total Runs started, by mode.",
        "# TYPE wakeful_runs_started_total counter",
    ]
    out += [
        _line("wakeful_runs_started_total", n, {"mode": k})
        for k, n in sorted(m.runs_started.items())
    ]
    out += [
        "# HELP wakeful_runs_ended_total Runs ended, by mode and outcome.",
        "# TYPE wakeful_runs_ended_total counter",
    ]
    out += [
        _line("wakeful_runs_ended_total", n, {"mode": mode, "outcome": outcome})
        for (mode, outcome), n in sorted(m.runs_ended.items())
    ]
    out += [
        "# HELP wakeful_commit_seconds Time each store commit took.",
        "# TYPE wakeful_commit_seconds histogram",
    ]
    for bound, n in m.commits.cumulative():
        le = "+Inf" if bound == float("inf") else f"{bound:g}"
        out.append(_line("wakeful_commit_seconds_bucket", n, {"le": le}))
    out += [
        _line("wakeful_commit_seconds_sum", m.commits.sum),
        _line("wakeful_commit_seconds_count", m.commits.count),
        "# HELP wakeful_commit_errors_total Store commits that failed.",
        "# TYPE wakeful_commit_errors_total counter",
        _line("wakeful_commit_errors_total", m.commit_errors),
        "# HELP wakeful_active_tails Observers following an entity stream now.",
        "# TYPE wakeful_active_tails gauge",
        _line("wakeful_active_tails", hub.observers),
        "# HELP wakeful_entities_loaded Entity states held in memory.",
        "# TYPE wakeful_entities_loaded gauge",
        _line("wakeful_entities_loaded", len(runtime.loaded())),
    ]
    return "\n".join(out) + "\n"
