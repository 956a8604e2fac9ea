"""The generic Durable Streams server: the protocol over HTTP for any `StreamStore`.

`streams_app(store)` is an ASGI app to mount at `/v1/stream`; inside it a stream
is `/{name}`. PUT creates (or forks, or confirms), POST appends and/or closes,
GET reads (catch-up, `live=long-poll`, `live=sse`), HEAD describes, DELETE
deletes, OPTIONS answers CORS preflights. See docs/durable-streams.md.

The app is one raw ASGI callable (no routing table, middleware or
Request/Response objects on the hot path); mount it with Starlette's `Mount`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from wakeful.runtime.errors import StoreClosed

from . import streams_protocol as wire
from .streamstore import (
    NOW,
    AppendOutcome,
    AppendSpec,
    CreateSpec,
    Offset,
    Producer,
    ReadResult,
    StreamError,
    StreamInvalid,
    StreamStore,
    format_offset,
    media_type,
    parse_offset,
)

__all__ = ["streams_app"]

log = logging.getLogger("wakeful.http.streams")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PUBLIC_CACHE = "public, max-age=60, stale-while-revalidate=300"
ALLOW_METHODS = b"GET, POST, PUT, DELETE, HEAD, OPTIONS"
ALLOW_HEADERS = (
    b"content-type, authorization, if-none-match, cache-control, stream-seq, stream-ttl, "
    b"stream-expires-at, stream-closed, producer-id, producer-epoch, producer-seq, "
    b"stream-forked-from, stream-fork-offset, stream-fork-sub-offset"
)
EXPOSE_HEADERS = (
    b"stream-next-offset, stream-cursor, stream-up-to-date, stream-closed, stream-ttl, "
    b"stream-expires-at, stream-sse-data-encoding, producer-epoch, producer-seq, "
    b"producer-expected-seq, producer-received-seq, etag, location, content-type"
)
PREFLIGHT: Headers = [
    (b"access-control-allow-methods", ALLOW_METHODS),
    (b"access-control-allow-headers", ALLOW_HEADERS),
    (b"access-control-max-age", b"86400"),
]
COMMON: Headers = [
    (b"access-control-allow-origin", b"*"),
    (b"access-control-expose-headers", EXPOSE_HEADERS),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-resource-policy", b"cross-origin"),
]
NEXT = b"stream-next-offset"
UP_TO_DATE = (b"stream-up-to-date", b"true")
CLOSED = (b"stream-closed", b"true")
NO_STORE = (b"cache-control", b"no-store")


def _b(value: object) -> bytes:
    return str(value).encode("latin-1")


class _Wake:
    """A live reader's wake-up: stream writes, the client leaving, the store closing."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.left = False


async def _watch_disconnect(receive: Receive, wake: _Wake) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            wake.left = True
            wake.event.set()
            return


class _Streams:
    """The ASGI app: the path below its mount point names the stream."""

    def __init__(
        self,
        store: StreamStore,
        *,
        long_poll_timeout: float,
        sse_keepalive: float,
        sse_reconnect: float,
        max_body: int,
        read_limit: int,
        cache_control: str,
    ) -> None:
        self.store = store
        self.long_poll_timeout = long_poll_timeout
        self.sse_keepalive = sse_keepalive
        self.sse_reconnect = sse_reconnect
        self.max_body = max_body
        self.read_limit = read_limit
        self.cache = (b"cache-control", cache_control.encode("latin-1"))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await _not_http(scope, receive, send)
            return
        method = scope["method"]
        try:
            if method == "OPTIONS":
                await self._respond(send, 204, PREFLIGHT)
                return
            path: str = scope["path"]
            root: str = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            name = wire.check_name(path.removeprefix("/"))
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            if method == "GET":
                await self._get(scope, receive, send, name, headers)
            elif method == "POST":
                await self._post(receive, send, name, headers)
            elif method == "PUT":
                await self._put(scope, receive, send, name, headers)
            elif method == "HEAD":
                await self._head(send, name)
            elif method == "DELETE":
                await self.store.delete(name)
                await self._respond(send, 204, [])
            else:
                body = f"{method} is not supported; use GET, POST, PUT, HEAD or DELETE".encode()
                await self._respond(send, 405, [(b"allow", ALLOW_METHODS)], body, text=True)
        except StreamError as exc:
            await self._respond(send, exc.status, [], str(exc).encode(), text=True)
        except StoreClosed:
            body = b"the stream store is closed (the server is stopping); retry shortly"
            await self._respond(send, 503, [(b"retry-after", b"1")], body, text=True)
        except _Started:
            pass

    # -- responses -----------------------------------------------------------------

    @staticmethod
    async def _respond(
        send: Send, status: int, headers: Headers, body: bytes = b"", *, text: bool = False
    ) -> None:
        out = COMMON + headers
        if text:
            out.append((b"content-type", b"text/plain; charset=utf-8"))
        if status not in (204, 304):
            out.append((b"content-length", _b(len(body))))
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})

    async def _body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            raise _TooLarge(self.max_body)
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _Started  # the client left; nothing to answer
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body:
                    raise _TooLarge(self.max_body)
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # -- PUT -------------------------------------------------------------------------

    async def _put(
        self, scope: Scope, receive: Receive, send: Send, name: str, headers: dict[str, str]
    ) -> None:
        content_type = wire.parse_content_type(headers.get("content-type"))
        ttl_text = headers.get("stream-ttl")
        expires_text = headers.get("stream-expires-at")
        if ttl_text is not None and expires_text is not None:
            raise StreamInvalid(
                "give Stream-TTL or Stream-Expires-At, not both (a sliding window in "
                "seconds, or an absolute time)"
            )
        ttl = wire.parse_ttl(ttl_text) if ttl_text is not None else None
        expires_at = wire.parse_expires_at(expires_text) if expires_text is not None else None
        closed = wire.closed_flag(headers.get("stream-closed"))
        fork_from = headers.get("stream-forked-from")
        fork_offset_text = headers.get("stream-fork-offset")
        sub_text = headers.get("stream-fork-sub-offset")
        if fork_from is None and (fork_offset_text is not None or sub_text is not None):
            raise StreamInvalid(
                "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From "
                "(the stream to fork)"
            )
        fork_offset = parse_offset(fork_offset_text) if fork_offset_text is not None else None
        source = self._source_name(scope, fork_from) if fork_from is not None else None
        try:
            body = await self._body(receive, headers)
        except _TooLarge as exc:
            await self._too_large(send, exc)
            return
        spec = CreateSpec(
            content_type=content_type,
            ttl=ttl,
            expires_at=expires_at,
            expires_text=expires_text.strip() if expires_text is not None else None,
            body=body,
            closed=closed,
            fork_from=source,
            fork_offset=fork_offset,
            fork_sub=wire.parse_sub_offset(sub_text) if sub_text is not None else None,
        )
        result = await self.store.create(name, spec)
        info = result.info
        out: Headers = [
            (b"content-type", info.content_type.encode("latin-1")),
            (NEXT, format_offset(info.tail).encode()),
        ]
        if info.closed:
            out.append(CLOSED)
        if result.created:
            out.append((b"location", self._location(scope, name)))
        await self._respond(send, 201 if result.created else 200, out)

    @staticmethod
    def _location(scope: Scope, name: str) -> bytes:
        host = "localhost"
        for key, value in scope["headers"]:
            if key == b"host":
                host = value.decode("latin-1")
                break
        root = scope.get("root_path", "")
        return f"{scope.get('scheme', 'http')}://{host}{root}/{name}".encode("latin-1")

    @staticmethod
    def _source_name(scope: Scope, value: str) -> str:
        """The stream a `Stream-Forked-From` URL or path names on this server."""
        path = unquote(urlsplit(value.strip()).path)
        root = scope.get("root_path", "")
        if root and path.startswith(root + "/"):
            path = path[len(root) + 1 :]
        elif path.startswith("/"):
            if root:
                raise StreamInvalid(
                    f"Stream-Forked-From {value!r} is not a stream of this server; "
                    f"use its path, {root}/<name>"
                )
            path = path[1:]
        return wire.check_name(path)

    # -- POST ------------------------------------------------------------------------

    async def _post(self, receive: Receive, send: Send, name: str, headers: dict[str, str]) -> None:
        close = wire.closed_flag(headers.get("stream-closed"))
        pid = headers.get("producer-id")
        epoch = headers.get("producer-epoch")
        pseq = headers.get("producer-seq")
        producer: Producer | None = None
        if pid is not None or epoch is not None or pseq is not None:
            if pid is None or epoch is None or pseq is None:
                raise StreamInvalid(
                    "Producer-Id, Producer-Epoch and Producer-Seq go together; "
                    "give all three or none"
                )
            if not pid:
                raise StreamInvalid("Producer-Id is empty; name the producer")
            producer = Producer(
                pid,
                wire.parse_nonnegative(epoch, "Producer-Epoch"),
                wire.parse_nonnegative(pseq, "Producer-Seq"),
            )
        try:
            body = await self._body(receive, headers)
        except _TooLarge as exc:
            await self._too_large(send, exc)
            return
        content_type = None
        if body:
            content_type = wire.parse_content_type(headers.get("content-type"))
            if content_type is None:
                raise StreamInvalid("an append needs a Content-Type (the stream's)")
        elif not close:
            raise StreamInvalid(
                "the body is empty; an append needs bytes (or Stream-Closed: true to close)"
            )
        seq = headers.get("stream-seq")
        spec = AppendSpec(
            body=body,
            content_type=content_type,
            close=close,
            stream_seq=seq.encode("latin-1") if seq is not None else None,
            producer=producer,
        )
        outcome = await self.store.append(name, spec)
        await self._append_answer(send, outcome, producer is not None)

    async def _append_answer(self, send: Send, o: AppendOutcome, producer: bool) -> None:
        out: Headers = []
        epoch_seq: Headers = []
        if o.epoch is not None:
            epoch_seq = [(b"producer-epoch", _b(o.epoch)), (b"producer-seq", _b(o.seq))]
        status = o.status
        if status in ("appended", "closed"):
            out = [(NEXT, format_offset(o.tail).encode()), *epoch_seq]
            if o.closed:
                out.append(CLOSED)
            code = 200 if producer and status == "appended" else 204
            await self._respond(send, code, out)
        elif status == "duplicate":
            out = epoch_seq
            if o.closed:
                out += [(NEXT, format_offset(o.tail).encode()), CLOSED]
            await self._respond(send, 204, out)
        elif status == "stale":
            body = f"producer epoch is stale; the current epoch is {o.epoch}".encode()
            await self._respond(send, 403, [(b"producer-epoch", _b(o.epoch))], body, text=True)
        elif status == "gap":
            out = [
                (b"producer-expected-seq", _b(o.expected)),
                (b"producer-received-seq", _b(o.seq)),
            ]
            body = f"Producer-Seq {o.seq} skips ahead; the next accepted is {o.expected}".encode()
            await self._respond(send, 409, out, body, text=True)
        elif status == "epoch_seq":
            body = f"a new Producer-Epoch ({o.epoch}) starts at Producer-Seq 0".encode()
            await self._respond(send, 400, [], body, text=True)
        else:
            out = [CLOSED, (NEXT, format_offset(o.tail).encode())]
            await self._respond(send, 409, out, b"the stream is closed", text=True)

    @staticmethod
    async def _too_large(send: Send, exc: _TooLarge) -> None:
        body = f"the body is larger than {exc.limit} bytes".encode()
        await _Streams._respond(send, 413, [], body, text=True)

    # -- HEAD ------------------------------------------------------------------------

    async def _head(self, send: Send, name: str) -> None:
        info = await self.store.info(name)
        out: Headers = [
            (b"content-type", info.content_type.encode("latin-1")),
            (NEXT, format_offset(info.tail).encode()),
            NO_STORE,
            (b"etag", self._etag(info.id, "-1", format_offset(info.tail), info.closed)),
        ]
        if info.closed:
            out.append(CLOSED)
        if info.ttl is not None:
            out.append((b"stream-ttl", _b(info.ttl)))
        if info.expires_at is not None:
            out.append((b"stream-expires-at", info.expires_at.encode("latin-1")))
        await self._respond(send, 200, out)

    # -- GET -------------------------------------------------------------------------

    async def _get(
        self, scope: Scope, receive: Receive, send: Send, name: str, headers: dict[str, str]
    ) -> None:
        offsets: list[str] = []
        live: str | None = None
        client_cursor: str | None = None
        for key, value in parse_qsl(scope.get("query_string", b"").decode("latin-1"), True):
            if key == "offset":
                offsets.append(value)
            elif key == "live":
                live = value
            elif key == "cursor":
                client_cursor = value
        if len(offsets) > 1:
            raise StreamInvalid("give one offset parameter, not several")
        if live not in (None, "long-poll", "sse"):
            raise StreamInvalid(f"live={live!r} is not a read mode; use long-poll or sse")
        after: Offset | str | None = None
        start = "-1"
        if offsets:
            start = offsets[0]
            if start == "now":
                after = NOW
            elif start != "-1":
                after = parse_offset(start)
        elif live is not None:
            raise StreamInvalid(f"live={live} needs an offset (-1, now or a Stream-Next-Offset)")
        if live == "sse":
            await self._sse(receive, send, name, after, client_cursor)
            return
        if live == "long-poll":
            await self._long_poll(receive, send, name, after, start, client_cursor, headers)
            return
        result = await self.store.read(name, after, self.read_limit)  # type: ignore[arg-type]
        if after == NOW:
            await self._now(send, result)
            return
        await self._data(send, result, start, None, headers)

    async def _now(self, send: Send, result: ReadResult) -> None:
        info = result.info
        out: Headers = [
            (b"content-type", info.content_type.encode("latin-1")),
            (NEXT, format_offset(info.tail).encode()),
            UP_TO_DATE,
            NO_STORE,
        ]
        if info.closed:
            out.append(CLOSED)
        await self._respond(send, 200, out, b"[]" if info.json else b"")

    async def _data(
        self,
        send: Send,
        result: ReadResult,
        start: str,
        cursor: str | None,
        headers: dict[str, str],
    ) -> None:
        info = result.info
        end = format_offset(result.next)
        closed = result.closed_at_tail
        etag = self._etag(info.id, start, end, closed)
        if cursor is not None or not result.up_to_date or closed:
            cache = self.cache
        else:
            cache = (b"cache-control", b"no-cache")
        out: Headers = [
            (b"content-type", info.content_type.encode("latin-1")),
            (NEXT, end.encode()),
            (b"etag", etag),
            cache,
        ]
        if cursor is not None:
            out.append((b"stream-cursor", cursor.encode()))
        if result.up_to_date:
            out.append(UP_TO_DATE)
        if closed:
            out.append(CLOSED)
        if _matches(headers.get("if-none-match"), etag):
            await self._respond(send, 304, out)
            return
        await self._respond(send, 200, out, _body_of(result))

    @staticmethod
    def _etag(id: int, start: str, end: str, closed: bool) -> bytes:
        return f'"{id}:{start}:{end}{":c" if closed else ""}"'.encode("latin-1")

    async def _long_poll(
        self,
        receive: Receive,
        send: Send,
        name: str,
        after: Offset | str | None,
        start: str,
        client_cursor: str | None,
        headers: dict[str, str],
    ) -> None:
        wake = _Wake()
        watchers = self.store.watchers
        watchers.watch(name, wake.event)
        try:
            result = await self.store.read(name, after, self.read_limit)  # type: ignore[arg-type]
            if not result.rows and not result.info.closed:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + self.long_poll_timeout
                position = result.next
                async with asyncio.TaskGroup() as tg:
                    watcher = tg.create_task(_watch_disconnect(receive, wake))
                    try:
                        while not result.rows and not result.info.closed:
                            remaining = deadline - loop.time()
                            if remaining <= 0 or not await _wait(wake.event, remaining):
                                break
                            wake.event.clear()
                            if wake.left or watchers.closed:
                                break
                            result = await self.store.read(name, position, self.read_limit)
                    finally:
                        watcher.cancel()
                if wake.left:
                    return
            if not result.rows:
                out: Headers = [
                    (NEXT, format_offset(result.next).encode()),
                    UP_TO_DATE,
                    (b"stream-cursor", wire.cursor(client_cursor).encode()),
                    NO_STORE,
                ]
                if result.info.closed:
                    out.append(CLOSED)
                await self._respond(send, 204, out)
                return
            await self._data(send, result, start, wire.cursor(client_cursor), headers)
        finally:
            watchers.unwatch(name, wake.event)

    # -- SSE -------------------------------------------------------------------------

    async def _sse(
        self,
        receive: Receive,
        send: Send,
        name: str,
        after: Offset | str | None,
        client_cursor: str | None,
    ) -> None:
        wake = _Wake()
        watchers = self.store.watchers
        watchers.watch(name, wake.event)
        try:
            first = await self.store.read(name, after, self.read_limit)  # type: ignore[arg-type]
            base64_data = not (
                first.info.json or media_type(first.info.content_type).startswith("text/")
            )
            out = [
                *COMMON,
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
            ]
            if base64_data:
                out.append((b"stream-sse-data-encoding", b"base64"))
            await send({"type": "http.response.start", "status": 200, "headers": out})
            async with asyncio.TaskGroup() as tg:
                watcher = tg.create_task(_watch_disconnect(receive, wake))
                try:
                    await self._sse_loop(send, name, first, client_cursor, base64_data, wake)
                finally:
                    watcher.cancel()
            if not wake.left:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watchers.unwatch(name, wake.event)

    async def _sse_loop(
        self,
        send: Send,
        name: str,
        result: ReadResult,
        client_cursor: str | None,
        base64_data: bool,
        wake: _Wake,
    ) -> None:
        loop = asyncio.get_running_loop()
        ends = loop.time() + self.sse_reconnect
        announce = True
        while True:
            position = format_offset(result.next)
            chunk = b""
            if result.rows:
                body = _body_of(result)
                payload = (
                    base64.b64encode(body).decode()
                    if base64_data
                    else body.decode("utf-8", "surrogateescape")
                )
                chunk = wire.sse_event("data", payload)
            if result.closed_at_tail:
                chunk += wire.sse_control(position, None, closed=True)
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                return
            if result.rows or announce:
                control = wire.sse_control(position, wire.cursor(client_cursor), result.up_to_date)
                await send(
                    {"type": "http.response.body", "body": chunk + control, "more_body": True}
                )
                announce = False
            if not result.up_to_date:
                wake.event.clear()
                next_page = await self._sse_read(name, result.next)
                if next_page is None:
                    return
                result = next_page
                continue
            while True:
                remaining = ends - loop.time()
                if remaining <= 0:
                    return
                if await _wait(wake.event, min(self.sse_keepalive, remaining)):
                    break
                keepalive = wire.sse_control(position, wire.cursor(client_cursor), True)
                await send({"type": "http.response.body", "body": keepalive, "more_body": True})
            wake.event.clear()
            if wake.left or self.store.watchers.closed:
                return
            next_page = await self._sse_read(name, result.next)
            if next_page is None:
                return
            result = next_page

    async def _sse_read(self, name: str, after: Offset) -> ReadResult | None:
        """The next page for an SSE reader; None when the stream went away (deleted,
        expired) or the store is closing: the reader learns which when it reconnects."""
        try:
            return await self.store.read(name, after, self.read_limit)
        except (StreamError, StoreClosed):
            return None


async def _not_http(scope: Scope, receive: Receive, send: Send) -> None:
    """Lifespan (when served on its own) has nothing to do; websockets are refused."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1003})


class _TooLarge(Exception):
    def __init__(self, limit: int) -> None:
        self.limit = limit


class _Started(Exception):
    """The client went away before an answer; nothing more to send."""


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True


def _matches(if_none_match: str | None, etag: bytes) -> bool:
    if not if_none_match:
        return False
    tag = etag.decode("latin-1")
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == tag:
            return True
    return False


def _body_of(result: ReadResult) -> bytes:
    rows = result.rows
    if result.info.json:
        return b"[" + b",".join(r.data for r in rows) + b"]"
    if len(rows) == 1:
        return rows[0].data
    return b"".join(r.data for r in rows)


def streams_app(
    store: StreamStore,
    *,
    long_poll_timeout: float = 30.0,
    sse_keepalive: float = 15.0,
    sse_reconnect: float = 60.0,
    max_body: int = 16 * 1024 * 1024,
    read_limit: int = 1024 * 1024,
    cache_control: str = PUBLIC_CACHE,
) -> ASGIApp:
    """The Durable Streams protocol for `store` as an ASGI app: mount it at
    `/v1/stream` (`Mount("/v1/stream", app=streams_app(store))`); the path below
    the mount is the stream's name. The store's lifecycle is the caller's.

    - `long_poll_timeout`: how long `live=long-poll` waits before 204;
    - `sse_keepalive`: seconds between keep-alive control events on an idle SSE
      connection; `sse_reconnect`: the server ends an SSE response after this
      long (clients reconnect from the last offset; lets CDNs collapse);
    - `max_body`: the largest PUT/POST body (413 beyond);
    - `read_limit`: about how many bytes one read returns (a read always
      returns at least one append);
    - `cache_control`: for reads whose answer cannot change (ranges below the
      tail, long-poll answers keyed by cursor); use "private, ..." for streams
      with user-specific data. Reads that reach an open stream's tail are
      `no-cache` (revalidate with the ETag); HEAD and `offset=now` are `no-store`.
    """
    if long_poll_timeout <= 0 or sse_keepalive <= 0 or sse_reconnect <= 0:
        raise ValueError("long_poll_timeout, sse_keepalive and sse_reconnect are seconds > 0")
    return _Streams(
        store,
        long_poll_timeout=long_poll_timeout,
        sse_keepalive=sse_keepalive,
        sse_reconnect=sse_reconnect,
        max_body=max_body,
        read_limit=read_limit,
        cache_control=cache_control,
    )
