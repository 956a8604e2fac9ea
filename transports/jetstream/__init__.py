"""The NATS JetStream store (in progress, issue 4).

What exists: the subject layout (`subjects`) and the creation and checking of
the stream (`stream`). `JetStreamStore` itself is not written yet; see
docs/jetstream-facts.md for the verified server behaviour and the planned design.
"""

from __future__ import annotations

__all__: list[str] = []
