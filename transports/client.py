"""`Client`: the Python client of the wakeful HTTP API (httpx), async with a sync wrapper.

```python
async with Client("http://127.0.0.1:4437", api_key="…") as client:
    await client.send("/chat/c1", {"text": "hello"})
    async for event in client.tail("/chat/c1"):   # resumes by itself after a drop
        print(event.kind, event.data)
```
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any, Self
from urllib.parse import quote

import httpx
import msgspec

from wakeful.runtime import Event, WakefulError, parse_address
from wakeful.runtime.events import decode_event, decode_events
from wakeful.runtime.lifecycle import AsyncResource
from wakeful.runtime.ports import RunRecord

__all__ = ["ApiError", "Client", "SyncClient"]

log = logging.getLogger("wakeful.client")

DEFAULT_URL = "http://127.0.0.1:4437"
TERMINAL_KINDS = frozenset(("run.completed", "run.failed", "run.cancelled"))
RETRYABLE = (httpx.TransportError, httpx.RemoteProtocolError)


class ApiError(WakefulError):
    """The server answered with an error: `status`, `code` and its message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class _ErrorDetail(msgspec.Struct):
    code: str = "error"
    message: str = ""


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


_error_decoder = msgspec.json.Decoder(_ErrorBody)
_runs_decoder = msgspec.json.Decoder(dict[str, list[RunRecord]])
_run_decoder = msgspec.json.Decoder(RunRecord)


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = _error_decoder.decode(response.content).error
        code, message = detail.code, detail.message
    except (msgspec.DecodeError, msgspec.ValidationError):
        code, message = "error", response.text[:200] or response.reason_phrase
    raise ApiError(response.status_code, code, message)


def _path(address: str) -> str:
    type_name, id = parse_address(address)
    return f"/{type_name}/{quote(id, safe='')}"


async def _sse(response: httpx.Response) -> AsyncIterator[tuple[str, str, str | None]]:
    """(event, data, id) of each server-sent event; comments are skipped."""
    event, id = "message", None
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield event, "\n".join(data), id
            event, data, id = "message", [], None
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "data":
                data.append(value)
            elif field == "event":
                event = value
            elif field == "id":
                id = value


class Client(AsyncResource):
    """Async client of one wakeful server; an async context manager.

    Errors from the server raise `ApiError` (with `status` and `code`); `tail` and
    `follow_run` reconnect by themselves after a dropped connection, with no gap and
    no duplicate, retrying for up to `retry_for` seconds.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        timeout: float = 30.0,
        retry_for: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = url.rstrip("/")
        self.retry_for = retry_for
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers=headers,
            timeout=httpx.Timeout(timeout, read=None),
            transport=transport,
        )

    async def open(self) -> None:
        """Nothing to do: connections open on the first request."""

    async def close(self) -> None:
        """Close the connections; idempotent."""
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = await self._http.request(method, path, **kwargs)
        _raise_for(response)
        return response

    # -- messages ----------------------------------------------------------------------

    async def send(
        self,
        address: str,
        payload: Any = None,
        *,
        mode: str | None = None,
        key: str | None = None,
    ) -> str:
        """Send a message; returns its inbox offset. With `key`, a retry is a no-op."""
        body = {"payload": payload, "mode": mode, "key": key}
        response = await self._request("POST", _path(address), json=body)
        offset: str = response.json()["offset"]
        return offset

    async def send_and_follow(
        self,
        address: str,
        payload: Any = None,
        *,
        mode: str | None = None,
        key: str | None = None,
    ) -> AsyncIterator[Event]:
        """Send a message and yield the events of the run it starts, through its terminal
        event. A dropped connection is resumed (the send is retried with the same
        idempotency key, so it is not sent twice)."""
        key = key or _new_key()
        body = {"payload": payload, "mode": mode, "key": key}
        at = _Resume(None)
        async for kind, data, id in self._resilient_sse(
            "POST", _path(address) + "?stream=true", at, json=body
        ):
            if kind == "accepted":
                continue
            event = decode_event(data)
            at.offset = id or event.offset
            yield event
            if event.kind in TERMINAL_KINDS:
                return

    async def signal(self, address: str, name: str, payload: Any = None) -> str:
        """Deliver signal `name` to the entity's active run; returns its inbox offset."""
        response = await self._request(
            "POST", f"{_path(address)}/signals/{quote(name, safe='')}", json=payload
        )
        offset: str = response.json()["offset"]
        return offset

    # -- approvals and cancel ----------------------------------------------------------

    async def approve(
        self, address: str, call_id: str, approved: bool = True, reason: str | None = None
    ) -> dict[str, Any]:
        """Decide an approval; returns the decision that counts (a second one is a no-op)."""
        response = await self._request(
            "POST",
            f"{_path(address)}/approvals/{quote(call_id, safe='')}",
            json={"approved": approved, "reason": reason},
        )
        decision: dict[str, Any] = response.json()
        return decision

    async def approvals(self, address: str, status: str | None = "pending") -> list[dict[str, Any]]:
        """The entity's approvals (pending ones by default)."""
        params = {"status": status} if status else {}
        response = await self._request("GET", f"{_path(address)}/approvals", params=params)
        approvals: list[dict[str, Any]] = response.json()["approvals"]
        return approvals

    async def cancel(self, run: str) -> RunRecord:
        """Cancel a run; returns its final record."""
        response = await self._request("POST", f"/runs/{quote(run, safe='')}/cancel")
        return _run_decoder.decode(response.content)

    # -- reading -----------------------------------------------------------------------

    async def state(self, address: str) -> dict[str, Any]:
        """Status, active run, stream position and collections of an entity."""
        response = await self._request("GET", _path(address))
        state: dict[str, Any] = response.json()
        return state

    async def entities(self, type: str, after: str | None = None, limit: int = 100) -> list[str]:
        """Ids of the entities of `type`, sorted, after id `after`."""
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        response = await self._request("GET", f"/{type}", params=params)
        ids: list[str] = response.json()["ids"]
        return ids

    async def runs(
        self, status: str = "active", type: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """Runs across entities, newest first: `status` is active, all, or one status."""
        params: dict[str, Any] = {"status": status, "limit": limit}
        if type:
            params["type"] = type
        response = await self._request("GET", "/runs", params=params)
        return _runs_decoder.decode(response.content)["runs"]

    async def run(self, run: str) -> RunRecord:
        """One run's record."""
        response = await self._request("GET", f"/runs/{quote(run, safe='')}")
        return _run_decoder.decode(response.content)

    async def read(self, address: str, after: str | None = None) -> list[Event]:
        """The entity's events after offset `after` (all if None), up to the tail."""
        out: list[Event] = []
        offset = after or "-1"
        while True:
            response = await self._request(
                "GET", f"{_path(address)}/main", params={"offset": offset}
            )
            out += decode_events(response.content)
            offset = response.headers["stream-next-offset"]
            if response.headers.get("stream-up-to-date") == "true":
                return out

    async def tail(self, address: str, after: str | None = None) -> AsyncIterator[Event]:
        """The entity's events after offset `after` (from the first if None; `"now"` for
        new ones only), then live ones, forever. Reconnects by itself."""
        at = _Resume(after or "-1")
        async for kind, data, _ in self._resilient_sse(
            "GET", f"{_path(address)}/main", at, live=True
        ):
            if kind == "data":
                for event in decode_events(data):
                    at.offset = event.offset
                    yield event
            elif kind == "control":
                at.offset = msgspec.json.decode(data)["streamNextOffset"]

    async def follow_run(self, run: str, after: str | None = None) -> AsyncIterator[Event]:
        """A run's events (after offset `after`), through its terminal event."""
        at = _Resume(after)
        async for _, data, id in self._resilient_sse(
            "GET", f"/runs/{quote(run, safe='')}/stream", at
        ):
            event = decode_event(data)
            at.offset = id or event.offset
            yield event
            if event.kind in TERMINAL_KINDS:
                return

    async def _resilient_sse(
        self,
        method: str,
        path: str,
        at: _Resume,
        *,
        live: bool = False,
        json: Any = None,
    ) -> AsyncIterator[tuple[str, str, str | None]]:
        """Server-sent events of a request, reconnecting after a drop from `at.offset`:
        as `?offset=…&live=sse` for a Durable Streams read (`live`), else as Last-Event-ID."""
        failed_since: float | None = None
        delay = 0.1
        loop = asyncio.get_running_loop()
        while True:
            headers = {"Accept": "text/event-stream"}
            params = {"offset": at.offset or "-1", "live": "sse"} if live else None
            if at.offset and not live:
                headers["Last-Event-ID"] = at.offset
            try:
                async with self._http.stream(
                    method, path, params=params, json=json, headers=headers
                ) as response:
                    if response.status_code in (502, 503, 504):
                        raise _Unavailable(response.status_code)  # a restart: retry
                    if not response.is_success:
                        await response.aread()
                        _raise_for(response)
                    failed_since, delay = None, 0.1
                    async for item in _sse(response):
                        yield item
                # The server ended the stream: a Durable Streams read does every minute,
                # and a run's stream ends before its terminal event only when the server
                # stops. Either way, go on from where we are.
            except (*RETRYABLE, _Unavailable) as exc:
                now = loop.time()
                failed_since = failed_since or now
                if now - failed_since > self.retry_for:
                    raise ApiError(0, "unreachable", f"{self.url}: {exc!r}") from exc
                log.info("stream %s dropped (%r); reconnecting", path, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)


class _Unavailable(Exception):
    """The server answered 502/503/504: it is starting, stopping or behind a proxy that
    lost it; a stream retries."""


class _Resume:
    """Where a stream resumes after a drop."""

    __slots__ = ("offset",)

    def __init__(self, offset: str | None) -> None:
        self.offset = offset


def _new_key() -> str:
    return "client-" + secrets.token_hex(12)


class SyncClient:
    """The same calls, blocking: for scripts and the CLI. `tail` and `send_and_follow`
    return plain iterators."""

    def __init__(self, url: str = DEFAULT_URL, **kwargs: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = self._runner.run(_make(url, kwargs))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and the private event loop; idempotent."""
        if self._runner.get_loop().is_closed():
            return
        self._runner.run(self._client.close())
        self._runner.close()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._client, name)
        if name in ("tail", "send_and_follow", "follow_run"):

            def iterate(*args: Any, **kwargs: Any) -> Iterator[Any]:
                agen = method(*args, **kwargs)
                try:
                    while True:
                        try:
                            yield self._runner.run(anext(agen))
                        except StopAsyncIteration:
                            return
                finally:
                    self._runner.run(agen.aclose())

            return iterate

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(method(*args, **kwargs))

        return call


async def _make(url: str, kwargs: dict[str, Any]) -> Client:
    return Client(url, **kwargs)
