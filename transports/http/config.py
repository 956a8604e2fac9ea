"""Settings of the HTTP server and its API keys; the environment is read here only."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

SCOPES = ("read", "send", "admin")
"""`read` observes (status, streams, runs); `send` sends messages, signals and approval
decisions and appends to generic streams; `admin` may do everything, including
cancelling runs, deleting streams and reading `/metrics`."""


class ApiKey(msgspec.Struct, frozen=True):
    """One bearer token and what it may do.

    `secret` is the token itself, or `sha256:<hex digest of the token>` so that a
    keys file need not hold the plain token. `types` is a glob over entity types
    (`support-*`); a key limited to some types cannot use the generic streams.
    """

    secret: str
    scopes: tuple[str, ...] = ("admin",)
    types: str = "*"
    name: str | None = None

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("an API key must not be empty")
        if any(c.isspace() for c in self.secret):
            raise ValueError("an API key must not contain spaces")
        bad = [s for s in self.scopes if s not in SCOPES]
        if bad or not self.scopes:
            raise ValueError(
                f"API key scopes {list(self.scopes)!r} are not allowed; use one or more of "
                f"{', '.join(SCOPES)}"
            )
        if self.secret.startswith("sha256:"):
            digest = self.secret.removeprefix("sha256:")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError("a sha256: API key needs 64 lowercase hex digits after the prefix")

    @property
    def digest(self) -> bytes:
        """SHA-256 of the token, what requests are compared against."""
        if self.secret.startswith("sha256:"):
            return bytes.fromhex(self.secret.removeprefix("sha256:"))
        return hashlib.sha256(self.secret.encode()).digest()

    @property
    def label(self) -> str:
        """How logs and errors name the key (never the token)."""
        return self.name or "key " + self.digest.hex()[:8]


def parse_api_keys(text: str) -> list[ApiKey]:
    """Keys from text: a JSON list of objects (`{"secret", "scopes", "types", "name"}`),
    or one key per line (or separated by spaces) as `TOKEN[:SCOPES[:TYPES]]`, where
    SCOPES is comma-separated (default `admin`) and TYPES a glob (default `*`). Lines
    starting with `#` are comments."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            return msgspec.json.decode(stripped.encode(), type=list[ApiKey])
        except msgspec.ValidationError as exc:
            raise ValueError(f"API keys JSON is not valid: {exc}") from None
        except msgspec.DecodeError as exc:
            raise ValueError(f"API keys JSON is malformed: {exc}") from None
    keys: list[ApiKey] = []
    for line in stripped.splitlines():
        line = line.split("#", 1)[0] if line.lstrip().startswith("#") else line
        for entry in line.split():
            keys.append(parse_api_key(entry))
    return keys


def parse_api_key(entry: str) -> ApiKey:
    """One key as `TOKEN[:SCOPES[:TYPES]]` (a `sha256:<hex>` token keeps its prefix)."""
    prefix = ""
    if entry.startswith("sha256:"):
        prefix, entry = "sha256:", entry.removeprefix("sha256:")
    secret, _, rest = entry.partition(":")
    scopes, _, types = rest.partition(":")
    return ApiKey(
        prefix + secret,
        tuple(s for s in scopes.split(",") if s) if scopes else ("admin",),
        types or "*",
    )


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the HTTP app (`create_app`)."""

    api_keys: tuple[ApiKey, ...] = ()
    """Bearer tokens; with none, the app serves loopback clients only (see
    `insecure_no_auth`)."""
    insecure_no_auth: bool = False
    """With no keys, also serve clients that are not on loopback (never with keys)."""
    sse_keepalive: float = 15.0
    """Seconds between SSE comment lines on an idle stream, so proxies keep it open."""
    long_poll_timeout: float = 30.0
    """Seconds a long-poll read waits for new events before answering 204."""
    sse_reconnect: float = 60.0
    """Seconds after which a Durable Streams SSE read ends so the client reconnects
    (the protocol asks for about 60 s, for CDN collapsing); 0 keeps it open."""
    max_body: int = 2 * 1024 * 1024
    """Largest request body of the entity API, in bytes."""
    read_chunk: int = 1000
    """Most events in one catch-up response of an entity stream."""

    def __post_init__(self) -> None:
        if min(self.sse_keepalive, self.long_poll_timeout, self.sse_reconnect) < 0:
            raise ValueError("ServerConfig timeouts must not be negative")
        if self.sse_keepalive == 0:
            raise ValueError("ServerConfig.sse_keepalive must be more than 0")
        if self.max_body < 1 or self.read_chunk < 1:
            raise ValueError("ServerConfig.max_body and read_chunk must be at least 1")

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        keys: Iterable[ApiKey] = (),
        keys_file: str | Path | None = None,
        **overrides: object,
    ) -> ServerConfig:
        """Settings from `WAKEFUL_API_KEYS` (keys as in `parse_api_keys`),
        `WAKEFUL_API_KEYS_FILE`, `WAKEFUL_SSE_KEEPALIVE`, `WAKEFUL_LONG_POLL_TIMEOUT`,
        `WAKEFUL_SSE_RECONNECT` and `WAKEFUL_MAX_BODY`, plus `keys`, the keys in
        `keys_file` and `overrides` given by the caller (the CLI's flags)."""
        env = os.environ if environ is None else environ
        all_keys = list(keys)
        if env.get("WAKEFUL_API_KEYS"):
            all_keys += parse_api_keys(env["WAKEFUL_API_KEYS"])
        for path in (env.get("WAKEFUL_API_KEYS_FILE"), keys_file):
            if path:
                try:
                    text = Path(path).read_text()
                except OSError as exc:
                    raise ValueError(f"cannot read the API keys file {path}: {exc}") from None
                all_keys += parse_api_keys(text)
        values: dict[str, object] = {}
        for name, kind in (
            ("sse_keepalive", float),
            ("long_poll_timeout", float),
            ("sse_reconnect", float),
            ("max_body", int),
        ):
            raw = env.get("WAKEFUL_" + name.upper())
            if raw is not None:
                try:
                    values[name] = kind(raw)
                except ValueError:
                    raise ValueError(
                        f"WAKEFUL_{name.upper()}={raw!r} is not a number of type {kind.__name__}"
                    ) from None
        values.update(overrides)
        return cls(api_keys=tuple(all_keys), **values)  # type: ignore[arg-type]
