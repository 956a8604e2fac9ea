"""wakeful's kernel: entities, event streams, wakes, replay and runs.

Imports only the standard library and msgspec; talks to storage through the
ports in `wakeful.runtime.ports`.
"""

from __future__ import annotations

from .address import make_address, parse_address
from .config import RuntimeConfig
from .context import Context, Wake
from .errors import (
    CallError,
    ConcurrencyError,
    InvalidAddress,
    InvalidPayload,
    JournalMismatch,
    NotFound,
    PayloadTooLarge,
    StoreClosed,
    TerminalError,
    UnknownEntityType,
    WakefulError,
)
from .events import Event
from .ports import Commit, Envelope, EventStore, InboxItem, NewEvent, Snapshot, TimerArm
from .registry import Registry
from .runtime import EntityInfo, Runtime

__all__ = [
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
