"""Ready-made entity kinds on top of the runtime (the agent loop arrives with its issue)."""

from __future__ import annotations

__all__: list[str] = []
