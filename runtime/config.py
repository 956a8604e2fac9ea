"""Typed runtime configuration; the environment is read here and nowhere else."""

from __future__ import annotations

import os
from collections.abc import Mapping

import msgspec

from .codec import DEFAULT_MAX_PAYLOAD


class RuntimeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of a `Runtime`."""

    max_payload: int = DEFAULT_MAX_PAYLOAD
    """Largest payload, state value or result, in bytes of JSON (default 1 MiB)."""
    idle_timeout: float = 60.0
    """Seconds an entity's state stays in memory after its last wake (scale to zero)."""
    cache_size: int = 10_000
    """Most entity states kept in memory; the least recently used leave first."""
    snapshot_every: int = 1000
    """Save a snapshot after this many events since the last one (0: never)."""
    max_concurrency: int = 512
    """Most entity activations running at once."""
    retry_delay: float = 0.5
    """Seconds before an entity whose turn hit a store error is tried again."""
    flush_interval: float = 0.005
    """Background events (classic run events, text deltas) are committed at most this
    often per entity; the first one at once."""
    wait_timeout: float = 30.0
    """How long `rt.approve` and `rt.cancel` wait to see their effect recorded."""

    def __post_init__(self) -> None:
        for name in ("max_payload", "cache_size", "max_concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"RuntimeConfig.{name} must be at least 1")
        if self.snapshot_every < 0:
            raise ValueError("RuntimeConfig.snapshot_every must be 0 (off) or more")
        if min(self.idle_timeout, self.retry_delay, self.flush_interval, self.wait_timeout) < 0:
            raise ValueError("RuntimeConfig timeouts must not be negative")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
        """Read `WAKEFUL_MAX_PAYLOAD`, `WAKEFUL_IDLE_TIMEOUT`, `WAKEFUL_CACHE_SIZE`,
        `WAKEFUL_SNAPSHOT_EVERY`, `WAKEFUL_MAX_CONCURRENCY`, `WAKEFUL_RETRY_DELAY`."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for field in msgspec.structs.fields(cls):
            raw = env.get("WAKEFUL_" + field.name.upper())
            if raw is None:
                continue
            kind = float if isinstance(field.default, float) else int
            try:
                values[field.name] = kind(raw)
            except ValueError:
                raise ValueError(
                    f"WAKEFUL_{field.name.upper()}={raw!r} is not a number of type {kind.__name__}"
                ) from None
        return cls(**values)  # type: ignore[arg-type]
