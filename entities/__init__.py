"""Ready-made entity kinds on top of the runtime: tools now; the agent loop, router and
model adapters next (issue 6). Uses only the public API of `wakeful.runtime`."""

from __future__ import annotations

from .tools import InvalidToolCall, Tool, tool

__all__ = ["InvalidToolCall", "Tool", "tool"]
