"""Each package's public names are pinned: changing them is a decision, not an accident."""

from __future__ import annotations

import wakeful.entities
import wakeful.runtime
import wakeful.transports
import wakeful.transports.client
import wakeful.transports.http
import wakeful.transports.jetstream
import wakeful.transports.memory
import wakeful.transports.sqlite


def test_runtime_all() -> None:
    assert sorted(wakeful.runtime.__all__) == [
        "CallError",
        "Commit",
        "ConcurrencyError",
        "Context",
        "EntityInfo",
        "Envelope",
        "Event",
        "EventStore",
        "InboxItem",
        "InvalidAddress",
        "InvalidPayload",
        "JournalMismatch",
        "NewEvent",
        "NotFound",
        "PayloadTooLarge",
        "Registry",
        "Runtime",
        "RuntimeConfig",
        "Snapshot",
        "StoreClosed",
        "TerminalError",
        "TimerArm",
        "UnknownEntityType",
        "Wake",
        "WakefulError",
        "make_address",
        "parse_address",
    ]
    for name in wakeful.runtime.__all__:
        assert getattr(wakeful.runtime, name) is not None


def test_transport_and_entities_all() -> None:
    assert wakeful.transports.__all__ == []
    assert wakeful.entities.__all__ == [
        "Agent",
        "AnthropicMessages",
        "Capability",
        "Condition",
        "Decision",
        "Embedder",
        "HashingEmbedder",
        "InvalidToolCall",
        "Model",
        "ModelError",
        "OpenAIChat",
        "OpenAIEmbeddings",
        "Reply",
        "Router",
        "Rule",
        "ScriptedModel",
        "Tool",
        "ToolCall",
        "WordLlamaEmbeddings",
        "llm_route",
        "tool",
    ]
    assert wakeful.transports.memory.__all__ == ["MemoryStore"]
    assert wakeful.transports.sqlite.__all__ == ["SQLiteStore"]
    assert wakeful.transports.jetstream.__all__ == ["JetStreamStore"]
    assert wakeful.transports.http.__all__ == [
        "ApiKey",
        "ServerConfig",
        "create_app",
        "streams_app",
    ]
    assert wakeful.transports.client.__all__ == ["ApiError", "Client", "SyncClient"]


def test_stores_implement_the_port() -> None:
    from wakeful.runtime import EventStore
    from wakeful.transports.memory import MemoryStore
    from wakeful.transports.sqlite import SQLiteStore

    assert isinstance(MemoryStore(), EventStore)
    assert isinstance(SQLiteStore(":memory:"), EventStore)
