"""Identifiers: time-ordered, random run ids."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_run_id() -> str:
    """A new run id: `run_` + 10 characters of milliseconds + 16 random characters (ULID-like)."""
    ms = int(time.time() * 1000)
    rand = int.from_bytes(os.urandom(10), "big")
    return "run_" + _b32(ms, 10) + _b32(rand, 16)
