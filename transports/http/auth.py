"""Bearer-token authentication and scope checks for the HTTP API."""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import ipaddress

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .config import ApiKey, ServerConfig
from .errors import HTTPError, error_response

REALM = 'Bearer realm="wakeful"'


def is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class Auth:
    """Who a request comes from and what it may do.

    With keys configured every request but `/healthz` and CORS preflights needs
    `Authorization: Bearer <key>`: none or an unknown one is a 401, a key without
    the scope (or the entity type) is a 403. With no keys, only loopback clients are
    served, unless `insecure_no_auth`.
    """

    def __init__(self, config: ServerConfig) -> None:
        self.keys = list(config.api_keys)
        self._by_digest = {key.digest: key for key in self.keys}
        self.open = not self.keys
        self.insecure = config.insecure_no_auth

    def key_for(self, headers: dict[str, str], client: str | None) -> ApiKey | None:
        """The caller's key (None when the server runs without keys); HTTPError if refused."""
        if self.open:
            if self.insecure or is_loopback(client):
                return None
            raise HTTPError(
                403,
                "forbidden",
                "this server has no API keys and serves loopback clients only; "
                "configure keys (--api-key, WAKEFUL_API_KEYS) to serve other hosts",
            )
        header = headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPError(
                401,
                "unauthorized",
                "this endpoint needs an API key: send 'Authorization: Bearer <key>'",
                {"WWW-Authenticate": REALM},
            )
        digest = hashlib.sha256(token.strip().encode()).digest()
        key = self._by_digest.get(digest)
        # compare_digest keeps the comparison constant-time for the key that matched
        if key is None or not hmac.compare_digest(key.digest, digest):
            raise HTTPError(
                401,
                "unauthorized",
                "the API key is not valid",
                {"WWW-Authenticate": REALM + ', error="invalid_token"'},
            )
        return key

    @staticmethod
    def check(
        key: ApiKey | None, scope: str, type: str | None = None, *, filtered: bool = False
    ) -> None:
        """Raise 403 unless `key` has `scope` (admin has all) for entity type `type`.
        `type=None` is a request about no one type (generic streams), which a key
        limited to some types may not make, unless the caller `filtered` what it
        returns by `sees`."""
        if key is None:
            return
        if scope not in key.scopes and "admin" not in key.scopes:
            raise HTTPError(
                403,
                "forbidden",
                f"{key.label} lacks the {scope!r} scope (it has {', '.join(key.scopes)})",
            )
        if filtered or key.types == "*":
            return
        if type is None or not fnmatch.fnmatchcase(type, key.types):
            what = f"entity type {type!r}" if type else "this endpoint"
            raise HTTPError(
                403, "forbidden", f"{key.label} may use entity types {key.types!r} only: not {what}"
            )

    @staticmethod
    def sees(key: ApiKey | None, type: str) -> bool:
        """Whether `key` may read entities of `type` (for filtering lists)."""
        return key is None or key.types == "*" or fnmatch.fnmatchcase(type, key.types)


class GuardStreams:
    """ASGI wrapper that checks the key of every request to the generic streams:
    GET/HEAD need `read`, PUT/POST need `send`, DELETE needs `admin`; CORS preflights
    (OPTIONS) pass, as browsers send them without credentials."""

    SCOPE_OF = {"GET": "read", "HEAD": "read", "PUT": "send", "POST": "send", "DELETE": "admin"}

    def __init__(self, app: ASGIApp, auth: Auth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            client = scope.get("client")
            try:
                key = self.auth.key_for(headers, client[0] if client else None)
                self.auth.check(key, self.SCOPE_OF.get(scope["method"], "admin"))
            except HTTPError as err:
                response = error_response(err.status, err.code, err.message, err.headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class CORS:
    """Cross-origin access to the entity API for browser clients (keys travel as bearer
    headers, not cookies, so any origin may call): answers preflights and exposes the
    Durable Streams headers. The generic streams under `skip` set their own."""

    PREFLIGHT = [
        (b"access-control-allow-origin", b"*"),
        (b"access-control-allow-methods", b"GET, POST, HEAD, OPTIONS"),
        (
            b"access-control-allow-headers",
            b"authorization, content-type, idempotency-key, last-event-id, if-none-match, "
            b"x-wakeful-entity",
        ),
        (b"access-control-max-age", b"86400"),
    ]
    EXPOSE = [
        (b"access-control-allow-origin", b"*"),
        (
            b"access-control-expose-headers",
            b"stream-next-offset, stream-up-to-date, stream-cursor, etag, wakeful-offset, "
            b"x-wakeful-entity",
        ),
    ]

    def __init__(self, app: ASGIApp, skip: str = "/v1/stream/") -> None:
        self.app = app
        self.skip = skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            await send({"type": "http.response.start", "status": 204, "headers": self.PREFLIGHT})
            await send({"type": "http.response.body", "body": b""})
            return
        if b"origin" not in headers:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.EXPOSE]}
            await send(message)

        await self.app(scope, receive, send_with_cors)
