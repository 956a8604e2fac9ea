"""Durable Streams wire details: header parsing, stream names, cursors, SSE framing.

Pure functions and constants used by `streams.py`; every parse error is a
`StreamInvalid` (400) whose message names the header and the rule.
"""

from __future__ import annotations

import math
import random
import re
import time
from datetime import datetime

import msgspec

from .streamtypes import StreamInvalid

__all__ = [
    "MAX_NAME",
    "check_name",
    "closed_flag",
    "cursor",
    "parse_content_type",
    "parse_expires_at",
    "parse_nonnegative",
    "parse_ttl",
    "sse_control",
    "sse_event",
]

MAX_NAME = 512
_SEGMENT = re.compile(r"[A-Za-z0-9._~:@!$&'()*+,;=-]+")
_CONTENT_TYPE = re.compile(r"[\w.+-]+/[\w.+-]+\s*(;.*)?", re.ASCII)
_DECIMAL = re.compile(r"0|[1-9][0-9]*", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)
MAX_SAFE_INTEGER = 2**53 - 1

# Cursor intervals (protocol section 8.1): 20 s since 2024-10-09T00:00:00Z.
CURSOR_EPOCH = 1728432000.0
CURSOR_INTERVAL = 20


def check_name(name: str) -> str:
    """`name` if it can name a stream; `StreamInvalid` with the rule otherwise."""
    if not name:
        raise StreamInvalid("the stream name is empty; use /v1/stream/<name>")
    if len(name) > MAX_NAME:
        raise StreamInvalid(f"the stream name is {len(name)} characters; the limit is {MAX_NAME}")
    for segment in name.split("/"):
        if not segment:
            raise StreamInvalid(
                f"stream name {name!r} has an empty segment (a leading, trailing or double '/')"
            )
        if segment in (".", ".."):
            raise StreamInvalid(f"stream name {name!r} has a {segment!r} segment")
        if _SEGMENT.fullmatch(segment) is None:
            raise StreamInvalid(
                f"stream name {name!r} has a character outside letters, digits, '/' "
                "and -._~:@!$&'()*+,;="
            )
    return name


def parse_content_type(value: str | None, what: str = "Content-Type") -> str | None:
    if value is None or not value.strip():
        return None
    value = value.strip()
    if _CONTENT_TYPE.fullmatch(value) is None:
        raise StreamInvalid(f"{what} {value!r} is not a media type such as text/plain")
    return value


def parse_ttl(value: str) -> int:
    if _DECIMAL.fullmatch(value) is None:
        raise StreamInvalid(
            f"Stream-TTL {value!r} is not a number of seconds; use a non-negative "
            "decimal integer without sign, leading zeros or fraction (e.g. 3600)"
        )
    return int(value)


def parse_expires_at(value: str) -> float:
    try:
        at = datetime.fromisoformat(value.strip().upper())
    except ValueError:
        at = None
    if at is None or at.tzinfo is None:
        raise StreamInvalid(
            f"Stream-Expires-At {value!r} is not an RFC 3339 timestamp with a time "
            "zone (e.g. 2026-01-24T12:00:00Z)"
        )
    return at.timestamp()


def parse_nonnegative(value: str, what: str) -> int:
    if _DIGITS.fullmatch(value) is None or int(value) > MAX_SAFE_INTEGER:
        raise StreamInvalid(f"{what} {value!r} is not an integer from 0 to 2^53-1")
    return int(value)


def parse_sub_offset(value: str) -> int:
    if _DECIMAL.fullmatch(value) is None or int(value) > MAX_SAFE_INTEGER:
        raise StreamInvalid(
            f"Stream-Fork-Sub-Offset {value!r} is not a non-negative decimal integer "
            "without sign or leading zeros"
        )
    return int(value)


def closed_flag(value: str | None) -> bool:
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    raise StreamInvalid(f"Stream-Closed {value!r} is neither true nor false")


def cursor(client: str | None) -> str:
    """The cursor for a live response: the current interval, always past the client's."""
    current = int((time.time() - CURSOR_EPOCH) // CURSOR_INTERVAL)
    if client is not None and client.isdigit() and int(client) >= current:
        jitter = max(1, math.ceil(random.randint(1, 3600) / CURSOR_INTERVAL))
        return str(int(client) + jitter)
    return str(current)


_LINES = re.compile(r"\r\n|\r|\n")


def sse_event(kind: str, payload: str) -> bytes:
    """One SSE event; every line of `payload` (CR, LF or CRLF ended) gets its own
    `data:` line, so a payload can never end the event or start another one."""
    parts = [f"event: {kind}\n"]
    for line in _LINES.split(payload):
        # A reader drops one space after "data:"; give it one to drop.
        parts.append(f"data: {line}\n" if line.startswith(" ") else f"data:{line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8", "surrogateescape")


_control = msgspec.json.Encoder()


def sse_control(
    offset: str, cursor: str | None, up_to_date: bool = False, closed: bool = False
) -> bytes:
    fields: dict[str, object] = {"streamNextOffset": offset}
    if closed:
        fields["streamClosed"] = True
    else:
        fields["streamCursor"] = cursor
        if up_to_date:
            fields["upToDate"] = True
    return sse_event("control", _control.encode(fields).decode())
