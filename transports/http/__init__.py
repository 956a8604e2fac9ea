"""wakeful over HTTP: the entity API, Durable Streams reads of entity logs, and the
generic Durable Streams server at `/v1/stream/{name}`."""

from __future__ import annotations

__all__: list[str] = []
