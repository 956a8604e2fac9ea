"""Events: the one record type of every entity stream, and the data of each kind.

An `Event` is an envelope (`offset`, `seq`, `kind`, `at`, `run`) around `data`,
the struct of its kind. The kind is carried once, in the envelope; `data` is
decoded by kind (`DATA_TYPES`), so the JSON form is
`{"offset", "seq", "kind", "at", "run", "data": {...}}`. Every data field has a
default, so events written by older versions still decode. Unknown kinds (from
a newer version) decode to a plain dict instead of failing.
"""

from __future__ import annotations

from typing import Any

import msgspec


class Event(msgspec.Struct, frozen=True):
    """One record of an entity's append-only stream."""

    offset: str
    """Opaque, lexicographically sortable position given by the store; increasing per entity."""
    seq: int
    """The entity's version after this event: 1, 2, 3 … with no gaps."""
    kind: str
    at: float
    """Wall-clock time of the event, seconds since the epoch."""
    run: str | None = None
    """Id of the run this event belongs to, if any."""
    data: Any = None


class EventData(msgspec.Struct, frozen=True, omit_defaults=False):
    """Base of the data struct of every event kind."""


class EntityCreated(EventData, frozen=True):
    type: str = ""
    id: str = ""
    parent: str | None = None


class MessageReceived(EventData, frozen=True):
    inbox: str = ""
    """Inbox offset of the message (the store's, not the entity stream's)."""
    payload: Any = None
    source: str | None = None
    key: str | None = None
    mode: str | None = None
    reply_to: str | None = None
    call: str | None = None
    """The parent's call id when the message came from the parent's `ctx.call`."""


class RunStarted(EventData, frozen=True):
    mode: str = "classic"
    trigger: str = "message"
    inbox: str | None = None
    source: str | None = None
    reply_to: str | None = None
    call: str | None = None
    """The parent's call id this run answers (its `child.finished` carries it back)."""


class RunSuspended(EventData, frozen=True):
    waiting_for: str = ""
    """What the run waits for: `approval:<call_id>` or `signal:<name>`."""


class RunResumed(EventData, frozen=True):
    trigger: str = ""


class RunCompleted(EventData, frozen=True):
    result: Any = None
    reason: str | None = None
    """The stop reason the handler gave (`ctx.stop_reason`), e.g. an agent's `end_turn`."""


class RunFailed(EventData, frozen=True):
    error: str = ""
    reason: str = "error"


class RunCancelled(EventData, frozen=True):
    reason: str | None = None


class StepStarted(EventData, frozen=True):
    name: str = ""
    position: int = 0


class StepCompleted(EventData, frozen=True):
    name: str = ""
    position: int = 0
    result: Any = None


class StepFailed(EventData, frozen=True):
    name: str = ""
    position: int = 0
    error: str = ""
    attempt: int = 1
    final: bool = False
    """True when no retry follows: the step raised its error into the handler."""


class TextDelta(EventData, frozen=True):
    text: str = ""


class TextCompleted(EventData, frozen=True):
    text: str = ""


class ToolCalled(EventData, frozen=True):
    call_id: str = ""
    tool: str = ""
    args: Any = None


class ToolResult(EventData, frozen=True):
    call_id: str = ""
    status: str = "success"
    """success, error or denied."""
    result: Any = None
    error: str | None = None


class ApprovalRequested(EventData, frozen=True):
    call_id: str = ""
    tool: str | None = None
    args: Any = None
    timeout: float | None = None


class ApprovalDecided(EventData, frozen=True):
    call_id: str = ""
    approved: bool = False
    reason: str | None = None


class SignalReceived(EventData, frozen=True):
    name: str = ""
    payload: Any = None
    timed_out: bool = False
    """True when this records that a wait for the signal timed out instead."""


class TimerSet(EventData, frozen=True):
    name: str = ""
    due: float = 0.0
    payload: Any = None


class TimerCancelled(EventData, frozen=True):
    name: str = ""


class TimerFired(EventData, frozen=True):
    name: str = ""
    payload: Any = None
    inbox: str | None = None
    """Inbox offset of the firing when it wakes the handler (user timers)."""


class ChildSpawned(EventData, frozen=True):
    address: str = ""
    payload: Any = None
    call: str | None = None
    """Set when the run waits for the child's answer (`ctx.call`): `<run>:<position>`."""


class ChildFinished(EventData, frozen=True):
    address: str = ""
    status: str = ""
    result: Any = None
    error: str | None = None
    run: str | None = None
    """The child's run that finished."""
    inbox: str | None = None
    """Inbox offset of the notification that woke the parent."""
    call: str | None = None
    """The call this answers, when the child was started by `ctx.call`."""


class StateSet(EventData, frozen=True):
    collection: str = ""
    key: str = ""
    value: Any = None


class StateDeleted(EventData, frozen=True):
    collection: str = ""
    key: str = ""


class ErrorData(EventData, frozen=True):
    type: str = ""
    message: str = ""
    traceback: str | None = None


DATA_TYPES: dict[str, type[EventData]] = {
    "entity.created": EntityCreated,
    "message.received": MessageReceived,
    "run.started": RunStarted,
    "run.suspended": RunSuspended,
    "run.resumed": RunResumed,
    "run.completed": RunCompleted,
    "run.failed": RunFailed,
    "run.cancelled": RunCancelled,
    "step.started": StepStarted,
    "step.completed": StepCompleted,
    "step.failed": StepFailed,
    "text.delta": TextDelta,
    "text.completed": TextCompleted,
    "tool.called": ToolCalled,
    "tool.result": ToolResult,
    "approval.requested": ApprovalRequested,
    "approval.decided": ApprovalDecided,
    "signal.received": SignalReceived,
    "timer.set": TimerSet,
    "timer.cancelled": TimerCancelled,
    "timer.fired": TimerFired,
    "child.spawned": ChildSpawned,
    "child.finished": ChildFinished,
    "state.set": StateSet,
    "state.deleted": StateDeleted,
    "error": ErrorData,
}
"""Every event kind and the struct of its data."""

KIND_OF: dict[type[EventData], str] = {cls: kind for kind, cls in DATA_TYPES.items()}
KINDS: frozenset[str] = frozenset(DATA_TYPES)

# Encoders and decoders are built once and reused.
_json_encoder = msgspec.json.Encoder()
_data_decoders: dict[str, msgspec.json.Decoder[Any]] = {
    kind: msgspec.json.Decoder(cls) for kind, cls in DATA_TYPES.items()
}
_any_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()


def kind_of(data: EventData) -> str:
    """The kind name of an event data struct."""
    return KIND_OF[type(data)]


def encode_data(data: Any) -> bytes:
    """Encode the data of an event (a data struct, or a plain value for unknown kinds)."""
    return _json_encoder.encode(data)


def decode_data(kind: str, raw: bytes | str) -> Any:
    """Decode the data of an event of `kind`; unknown kinds decode to plain values."""
    decoder = _data_decoders.get(kind)
    if decoder is None:
        return _any_decoder.decode(raw)
    return decoder.decode(raw)


class _WireEvent(msgspec.Struct, frozen=True):
    offset: str
    seq: int
    kind: str
    at: float
    run: str | None = None
    data: msgspec.Raw = msgspec.Raw(b"null")


_wire_decoder = msgspec.json.Decoder(_WireEvent)
_wire_list_decoder = msgspec.json.Decoder(list[_WireEvent])


def encode_event(event: Event) -> bytes:
    """The JSON form of an event."""
    return _json_encoder.encode(event)


def _from_wire(w: _WireEvent) -> Event:
    return Event(w.offset, w.seq, w.kind, w.at, w.run, decode_data(w.kind, w.data))


def decode_event(raw: bytes | str) -> Event:
    """Decode the JSON form of one event, with its data typed by kind."""
    return _from_wire(_wire_decoder.decode(raw))


def decode_events(raw: bytes | str) -> list[Event]:
    """Decode a JSON array of events, with their data typed by kind."""
    return [_from_wire(w) for w in _wire_list_decoder.decode(raw)]
