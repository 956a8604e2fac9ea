"""The entity API: send, status, entity logs (Durable Streams reads), runs, approvals,
signals and cancel. Every endpoint calls the public `Runtime` API only."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, Literal

import msgspec
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from wakeful.runtime import EntityInfo, Event, Runtime, make_address
from wakeful.runtime.ports import RunRecord

from .auth import Auth
from .config import ApiKey, ServerConfig
from .errors import HTTPError
from .hub import Hub
from .sse import KEEPALIVE, frame, next_cursor, sse_response

TERMINAL_KINDS = frozenset(("run.completed", "run.failed", "run.cancelled"))
BEGINNING = "0"
"""The `Stream-Next-Offset` of an entity with no events: sorts before every offset a
store gives, and reads as "from the first event"."""
RESERVED_TYPES = frozenset(("runs", "v1", "healthz", "metrics"))
"""Entity type names the API's own paths take; `create_app` refuses them."""


# -- request and response bodies (their schemas go into /openapi.json) ---------------------


class SendRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A message for an entity."""

    payload: Any = None
    mode: Literal["classic", "durable"] | None = None
    """Execution mode of the run this message starts (default: the entity type's)."""
    key: str | None = None
    """Idempotency key: a retried send with the same key is accepted once."""


class Accepted(msgspec.Struct):
    address: str
    offset: str
    """The message's inbox offset."""


class EntityView(msgspec.Struct):
    address: str
    status: str
    """idle, running or suspended."""
    seq: int
    offset: str | None
    active_run: str | None
    waiting_for: str | None
    parent: str | None
    pending: int
    state: dict[str, dict[str, Any]]
    """Every collection, custom and built-in (runs, steps, approvals, …)."""


class EntityList(msgspec.Struct):
    type: str
    ids: list[str]
    next: str | None
    """Pass as `after` for the next page; null on the last page."""


class RunList(msgspec.Struct):
    runs: list[RunRecord]


class ApprovalRequest(msgspec.Struct, forbid_unknown_fields=True):
    approved: bool
    reason: str | None = None


class ApprovalView(msgspec.Struct):
    call_id: str
    status: str
    """pending, approved or denied."""
    run: str | None = None
    tool: str | None = None
    args: Any = None
    reason: str | None = None
    requested_at: float | None = None
    decided_at: float | None = None


class ApprovalList(msgspec.Struct):
    approvals: list[ApprovalView]


class Signalled(msgspec.Struct):
    address: str
    name: str
    offset: str


_encode = msgspec.json.Encoder().encode


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(value), status, headers, media_type="application/json")


def decode_body(body: bytes, type: type[Any], what: str) -> Any:
    try:
        return msgspec.json.decode(body, type=type)
    except msgspec.ValidationError as exc:
        raise HTTPError(400, "invalid_body", f"{what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise HTTPError(400, "invalid_json", f"{what} is not valid JSON: {exc}") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes without reading them all."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(int(length), limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(size, limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, limit: int) -> HTTPError:
    return HTTPError(
        413,
        "payload_too_large",
        f"the request body is {size} bytes or more; the limit is {limit} bytes "
        "(ServerConfig.max_body, --max-body)",
    )


def _int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise HTTPError(400, "invalid_query", f"{name} must be an integer from {low} to {high}")
    return int(raw)


def _wants_sse(request: Request) -> bool:
    if request.query_params.get("stream", "").lower() in ("true", "1"):
        return True
    return "text/event-stream" in request.headers.get("accept", "")


def _event_frame(event: Event) -> bytes:
    return frame(_encode(event), event=event.kind, id=event.offset)


class EntityAPI:
    """The endpoints of the entity API, bound to one runtime."""

    def __init__(self, rt: Runtime, config: ServerConfig, auth: Auth, hub: Hub) -> None:
        self.rt = rt
        self.config = config
        self.auth = auth
        self.hub = hub

    def routes(self) -> list[Route]:
        return [
            Route("/runs", self.list_runs, methods=["GET"]),
            Route("/runs/{run_id}", self.get_run, methods=["GET"]),
            Route("/runs/{run_id}/stream", self.stream_run, methods=["GET"]),
            Route("/runs/{run_id}/cancel", self.cancel_run, methods=["POST"]),
            Route("/{type}", self.list_entities, methods=["GET"]),
            Route("/{type}/{id}", self.entity, methods=["GET", "POST"]),
            Route("/{type}/{id}/main", self.read_log, methods=["GET", "HEAD"]),
            Route("/{type}/{id}/approvals", self.list_approvals, methods=["GET"]),
            Route("/{type}/{id}/approvals/{call_id}", self.decide, methods=["POST"]),
            Route("/{type}/{id}/signals/{name}", self.signal, methods=["POST"]),
        ]

    # -- helpers -------------------------------------------------------------------------

    def _key(self, request: Request) -> ApiKey | None:
        client = request.client.host if request.client else None
        return self.auth.key_for(dict(request.headers), client)

    def _address(self, request: Request, scope: str) -> str:
        """The entity of the path, after checking the caller may `scope` it."""
        type_name = request.path_params["type"]
        address = make_address(type_name, request.path_params["id"])
        self.auth.check(self._key(request), scope, type_name)
        self.rt.registry.get(type_name)
        return address

    async def _run(self, request: Request, scope: str) -> RunRecord:
        key = self._key(request)
        record = await self.rt.run(request.path_params["run_id"])
        self.auth.check(key, scope, record.address.split("/", 2)[1])
        return record

    async def entity(self, request: Request) -> Response:
        if request.method == "POST":
            return await self.send(request)
        return await self.get_entity(request)

    # -- messages ------------------------------------------------------------------------

    async def send(self, request: Request) -> Response:
        address = self._address(request, "send")
        body = await read_body(request, self.config.max_body)
        message = (
            decode_body(body, SendRequest, "the message body") if body.strip() else SendRequest()
        )
        key = message.key or request.headers.get("idempotency-key")
        if not _wants_sse(request):
            offset = await self.rt.send(address, message.payload, key=key, mode=message.mode)
            return json_response(Accepted(address, offset), 202)
        resume = request.headers.get("last-event-id") or None
        if resume is not None:  # a bad offset is a 400, before anything is sent
            await self.rt.read(address, after=resume, limit=1)
        before = (await self.rt.describe(address)).offset
        offset = await self.rt.send(address, message.payload, key=key, mode=message.mode)
        body_iter = self._message_run(address, offset, before, resume)
        return sse_response(body_iter, self.config.sse_keepalive, {"Wakeful-Offset": offset})

    async def _message_run(
        self, address: str, offset: str, before: str | None, resume: str | None
    ) -> AsyncIterator[bytes]:
        """SSE: `accepted`, then the events of the run that message `offset` starts,
        through its terminal event. `resume` (Last-Event-ID) skips what the client has."""
        yield frame(_encode(Accepted(address, offset)), event="accepted")
        async for event in self.follow_message(address, offset, before, resume):
            yield _event_frame(event)

    async def follow_message(
        self, address: str, offset: str, before: str | None, resume: str | None = None
    ) -> AsyncGenerator[Event, None]:
        """The events of the run that the message at inbox `offset` starts, through its
        terminal event; `before` is the entity's offset from before the send (where to
        look for that run if it has not started yet), `resume` an event offset to
        continue after. A retried send (same idempotency key) finds its run again.
        The run may wait behind others in the inbox: so does this."""
        runs = (await self.rt.state(address)).get("runs", {})
        run = next((r for r, info in runs.items() if info.get("inbox") == offset), None)
        start = resume or (runs[run].get("after") if run is not None else before)
        async with contextlib.aclosing(self.hub.follow(address, start)) as events:
            async for event in events:
                if run is None:
                    if event.kind == "run.started" and event.data.inbox == offset:
                        run = event.run
                    else:
                        continue
                if event.run != run:
                    continue
                yield event
                if event.kind in TERMINAL_KINDS:
                    return

    async def signal(self, request: Request) -> Response:
        address = self._address(request, "send")
        name = request.path_params["name"]
        body = await read_body(request, self.config.max_body)
        payload = decode_body(body, Any, "the signal payload") if body.strip() else None
        offset = await self.rt.signal(address, name, payload)
        return json_response(Signalled(address, name, offset), 202)

    # -- entities ------------------------------------------------------------------------

    async def list_entities(self, request: Request) -> Response:
        type_name = request.path_params["type"]
        self.auth.check(self._key(request), "read", type_name)
        limit = _int(request, "limit", 100, 1, 1000)
        after = request.query_params.get("after") or None
        ids = await self.rt.entities(type_name, after=after, limit=limit + 1)
        more = len(ids) > limit
        ids = ids[:limit]
        return json_response(EntityList(type_name, ids, ids[-1] if more else None))

    async def get_entity(self, request: Request) -> Response:
        address = self._address(request, "read")
        info: EntityInfo = await self.rt.describe(address, state=True)
        if info.seq == 0 and info.pending == 0:
            raise HTTPError(404, "not_found", f"{address} has no events yet")
        return json_response(
            EntityView(
                address=info.address,
                status=info.status,
                seq=info.seq,
                offset=info.offset,
                active_run=info.active_run,
                waiting_for=info.waiting_for,
                parent=info.parent,
                pending=info.pending,
                state=info.state or {},
            )
        )

    # -- the entity log, read with the Durable Streams protocol ----------------------------

    async def read_log(self, request: Request) -> Response:
        address = self._address(request, "read")
        params = request.query_params
        raw = params.get("offset", "-1")
        live = params.get("live")
        if live not in (None, "long-poll", "sse"):
            raise HTTPError(400, "invalid_query", "live must be long-poll or sse")
        if raw == "now":
            offset = (await self.rt.describe(address)).offset
        elif raw in ("-1", BEGINNING):
            offset = None
        elif not raw or any(c in raw for c in ",&=?/"):
            raise HTTPError(400, "invalid_offset", f"offset {raw!r} is not an offset")
        else:
            offset = raw
        head = {
            "X-Content-Type-Options": "nosniff",
            "Cross-Origin-Resource-Policy": "cross-origin",
        }
        if request.method == "HEAD":
            tail = (await self.rt.describe(address)).offset or BEGINNING
            head.update({"Stream-Next-Offset": tail, "Cache-Control": "no-store"})
            return Response(b"", 200, head, media_type="application/json")
        if live == "sse":
            await self.rt.read(address, after=offset, limit=1)  # a bad offset is a 400 now
            return self._log_sse(address, offset, params.get("cursor"), head)
        if raw == "now" and live is None:
            head.update(
                {
                    "Stream-Next-Offset": offset or BEGINNING,
                    "Stream-Up-To-Date": "true",
                    "Cache-Control": "no-store",
                }
            )
            return Response(b"[]", 200, head, media_type="application/json")
        events, complete = await self._chunk(address, offset)
        if not events and live == "long-poll":
            events, complete = await self._long_poll(address, offset)
            if not events:
                head.update(
                    {
                        "Stream-Next-Offset": offset or BEGINNING,
                        "Stream-Up-To-Date": "true",
                        "Stream-Cursor": next_cursor(params.get("cursor")),
                    }
                )
                return Response(None, 204, head)
        end = events[-1].offset if events else (offset or BEGINNING)
        etag = f'"{address}:{offset or BEGINNING}:{end}"'
        head.update({"Stream-Next-Offset": end, "ETag": etag})
        if complete:
            head["Stream-Up-To-Date"] = "true"
        if live is not None:
            head["Stream-Cursor"] = next_cursor(params.get("cursor"))
        head["Cache-Control"] = (
            "no-store" if complete else "private, max-age=60, stale-while-revalidate=300"
        )
        if request.headers.get("if-none-match") == etag:
            return Response(None, 304, head)
        return Response(_encode(events), 200, head, media_type="application/json")

    async def _chunk(self, address: str, offset: str | None) -> tuple[list[Event], bool]:
        """Up to `read_chunk` events after `offset`, and whether that is all there is."""
        limit = self.config.read_chunk
        events = await self.rt.read(address, after=offset, limit=limit + 1)
        return events[:limit], len(events) <= limit

    async def _long_poll(self, address: str, offset: str | None) -> tuple[list[Event], bool]:
        follow = self.hub.follow(address, offset)
        try:
            async with asyncio.timeout(self.config.long_poll_timeout):
                await anext(follow)
        except TimeoutError:
            return [], True
        finally:
            await follow.aclose()
        return await self._chunk(address, offset)

    def _log_sse(
        self, address: str, offset: str | None, cursor: str | None, head: dict[str, str]
    ) -> Response:
        hub = self.hub
        reconnect = self.config.sse_reconnect

        async def body() -> AsyncIterator[bytes]:
            last = offset or BEGINNING
            ends = time.monotonic() + reconnect if reconnect else None
            async for batch, complete in hub.batches(address, offset, keepalive=True):
                if batch:
                    last = batch[-1].offset
                    data = hub.encode(address, batch)
                    yield frame(data, event="data") + _control(last, cursor, complete)
                elif complete:
                    yield _control(last, cursor, True)
                else:
                    yield KEEPALIVE
                if ends is not None and time.monotonic() >= ends:
                    return

        head.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return StreamingResponse(body(), media_type="text/event-stream", headers=head)

    # -- runs ----------------------------------------------------------------------------

    async def list_runs(self, request: Request) -> Response:
        key = self._key(request)
        self.auth.check(key, "read", filtered=True)
        status = request.query_params.get("status", "active")
        type_name = request.query_params.get("type")
        limit = _int(request, "limit", 100, 1, 1000)
        statuses = ("active", "all", "running", "suspended", "completed", "failed", "cancelled")
        if status not in statuses:
            raise HTTPError(400, "invalid_query", f"status must be one of {', '.join(statuses)}")
        if type_name is not None:
            self.rt.registry.get(type_name)
        filtered = type_name is not None or (key is not None and key.types != "*")
        records = await self.rt.runs(
            status=None if status == "all" else status, limit=10_000 if filtered else limit
        )
        out = []
        for record in records:
            type_of = record.address.split("/", 2)[1]
            if type_name is not None and type_of != type_name:
                continue
            if not self.auth.sees(key, type_of):
                continue
            out.append(record)
            if len(out) == limit:
                break
        return json_response(RunList(out))

    async def get_run(self, request: Request) -> Response:
        return json_response(await self._run(request, "read"))

    async def stream_run(self, request: Request) -> Response:
        record = await self._run(request, "read")
        resume = request.query_params.get("offset") or request.headers.get("last-event-id")
        if resume in ("-1", BEGINNING):
            resume = None
        run = record.run
        if resume is not None:
            await self.rt.read(record.address, after=resume, limit=1)  # a bad one is a 400
        else:
            runs = (await self.rt.state(record.address)).get("runs", {})
            resume = runs.get(run, {}).get("after")

        async def body() -> AsyncIterator[bytes]:
            async for event in self.hub.follow(record.address, resume):
                if event.run != run:
                    continue
                yield _event_frame(event)
                if event.kind in TERMINAL_KINDS:
                    return

        return sse_response(body(), self.config.sse_keepalive)

    async def cancel_run(self, request: Request) -> Response:
        record = await self._run(request, "send")
        return json_response(await self.rt.cancel(record.address, record.run))

    # -- approvals -----------------------------------------------------------------------

    async def list_approvals(self, request: Request) -> Response:
        address = self._address(request, "read")
        status = request.query_params.get("status")
        if status not in (None, "pending", "approved", "denied"):
            raise HTTPError(400, "invalid_query", "status must be pending, approved or denied")
        approvals = (await self.rt.state(address)).get("approvals", {})
        out = [
            msgspec.convert({"call_id": call_id, **info}, ApprovalView)
            for call_id, info in approvals.items()
            if status is None or info.get("status") == status
        ]
        return json_response(ApprovalList(out))

    async def decide(self, request: Request) -> Response:
        address = self._address(request, "send")
        call_id = request.path_params["call_id"]
        body = await read_body(request, self.config.max_body)
        decision = decode_body(body, ApprovalRequest, "the approval body")
        result = await self.rt.approve(address, call_id, decision.approved, decision.reason)
        return json_response(
            ApprovalView(
                call_id=call_id,
                status="approved" if result.approved else "denied",
                reason=result.reason,
            )
        )


def _control(offset: str, cursor: str | None, up_to_date: bool) -> bytes:
    control: dict[str, Any] = {"streamNextOffset": offset, "streamCursor": next_cursor(cursor)}
    if up_to_date:
        control["upToDate"] = True
    return frame(_encode(control), event="control")
