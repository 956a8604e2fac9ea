"""Identifiers: time-ordered, random run ids."""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lowercase
_RANDOM_BITS = 80
_last = (0, 0)


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_run_id() -> str:
    """A new run id: `run_` + 10 characters of milliseconds + 16 random characters.

    ULID-like and monotonic within a process: ids made in the same millisecond
    count up from the first one's random part, so they sort in creation order.
    """
    global _last
    ms = int(time.time() * 1000)
    last_ms, last_rand = _last
    if ms <= last_ms:
        ms, rand = last_ms, (last_rand + 1) % (1 << _RANDOM_BITS)
    else:
        rand = int.from_bytes(os.urandom(_RANDOM_BITS // 8), "big") >> 1  # room to count up
    _last = (ms, rand)
    return "run_" + _b32(ms, 10) + _b32(rand, 16)
