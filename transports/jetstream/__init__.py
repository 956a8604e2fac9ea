"""The NATS JetStream store (issue 4, in progress).

`JetStreamStore` passes the whole contract suite, and the runtime suites when
asked for (`WAKEFUL_TEST_STORES=jetstream`). Not there yet: several workers
sharing the partitions, the cluster tests, and the speed of run-starting
commits (see docs/jetstream-facts.md and docs/performance.md).
"""

from __future__ import annotations

from .store import JetStreamStore

__all__ = ["JetStreamStore"]
