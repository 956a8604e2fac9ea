"""Entity state: the pure fold of an entity's stream, and the collection views handlers use.

`evolve(state, event)` applies one committed event and does no I/O. The runtime
applies exactly the events it committed, and a rebuild applies the same events
read back from the store, so the state in memory and the replayed state are
equal by construction.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import msgspec

from . import events as ev
from .codec import DEFAULT_MAX_PAYLOAD, normalize
from .errors import InvalidAddress, InvalidPayload
from .events import Event
from .ports import suspend_reason

BUILTIN_COLLECTIONS: tuple[str, ...] = (
    "runs",
    "steps",
    "texts",
    "tool_calls",
    "approvals",
    "errors",
    "inbox",
    "children",
    "timers",
)
"""Collections derived from the stream by the runtime; read-only for handlers."""

RUN_HISTORY = 100
"""Finished runs kept in the `runs` collection (with their steps, texts, tool calls,
approvals and errors); older ones stay in the stream only. Unfinished runs are
always kept. Bounds the state, and so snapshots and rebuilds, of long-lived entities."""

_COLLECTION = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.]{0,63}")
COLLECTION_RULE = (
    "collection names are 1-64 characters: a letter or _, then letters, digits, _, - or ."
)
MAX_KEY = 1024
CALL_TIMER = "wk:call:"
"""Name prefix of the durable timer that ends a `ctx.call` wait (followed by the call id)."""


def check_collection(name: str) -> str:
    """Return `name` if it is a valid custom collection name, else raise."""
    if not isinstance(name, str) or not _COLLECTION.fullmatch(name):
        raise InvalidAddress(str(name), f"collection name {name!r} is invalid; {COLLECTION_RULE}")
    return name


def check_key(collection: str, key: object) -> str:
    if type(key) is not str:
        raise InvalidPayload(
            f"key {key!r} of collection {collection!r}",
            f"keys are strings, not {type(key).__name__}",
        )
    if not key or len(key) > MAX_KEY:
        raise InvalidPayload(
            f"key of collection {collection!r}", f"keys are 1-{MAX_KEY} characters, got {len(key)}"
        )
    return key


class EntityState:
    """The fold of one entity's stream: custom collections plus the built-in ones."""

    __slots__ = (
        "active_run",
        "address",
        "approvals",
        "children",
        "collections",
        "created",
        "errors",
        "inbox",
        "journal",
        "offset",
        "parent",
        "runs",
        "seq",
        "steps",
        "texts",
        "timers",
        "tool_calls",
    )

    def __init__(self, address: str) -> None:
        self.address = address
        self.seq = 0
        self.offset: str | None = None
        self.created = False
        self.parent: str | None = None
        self.active_run: str | None = None
        self.collections: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}
        self.steps: dict[str, dict[str, Any]] = {}
        self.texts: dict[str, dict[str, Any]] = {}
        self.tool_calls: dict[str, dict[str, Any]] = {}
        self.approvals: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, dict[str, Any]] = {}
        self.inbox: dict[str, dict[str, Any]] = {}
        self.children: dict[str, dict[str, Any]] = {}
        self.timers: dict[str, dict[str, Any]] = {}
        self.journal: dict[str, dict[str, Any]] = {}
        """Per unfinished run: its wake, mode, recorded steps and signals (for replay)."""

    def builtin(self, name: str) -> dict[str, Any]:
        value: dict[str, Any] = getattr(self, name)
        return value

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """All collections, custom and built-in, as plain (copied) values."""
        out: dict[str, dict[str, Any]] = {
            name: deep_copy(values) for name, values in self.collections.items()
        }
        for name in BUILTIN_COLLECTIONS:
            out[name] = deep_copy(self.builtin(name))
        return out


def deep_copy(value: Any) -> Any:
    """Copy nested dicts and lists of JSON values (faster than `copy.deepcopy`)."""
    t = type(value)
    if t is dict:
        return {k: deep_copy(v) for k, v in value.items()}
    if t is list:
        return [deep_copy(v) for v in value]
    return value


# -- the fold -----------------------------------------------------------------


def _entity_created(s: EntityState, e: Event) -> None:
    s.created = True
    s.parent = e.data.parent


def _message_received(s: EntityState, e: Event) -> None:
    d = e.data
    s.inbox[d.inbox] = {
        "kind": "message",
        "payload": d.payload,
        "source": d.source,
        "name": d.call,
        "mode": d.mode,
        "key": d.key,
        "reply_to": d.reply_to,
        "at": e.at,
    }


def _run_started(s: EntityState, e: Event) -> None:
    d = e.data
    entry = s.inbox.pop(d.inbox, None) if d.inbox is not None else None
    if e.run is None:
        return
    s.active_run = e.run
    s.runs[e.run] = {
        "status": "running",
        "mode": d.mode,
        "trigger": d.trigger,
        "source": d.source,
        "reply_to": d.reply_to,
        "started_at": e.at,
        "started_seq": e.seq,
        "inbox": d.inbox,
        "after": s.offset,
        "ended_at": None,
    }
    if d.call is not None:
        s.runs[e.run]["call"] = d.call
    wake = None
    if entry is not None:
        wake = {
            "kind": entry["kind"],
            "payload": entry["payload"],
            "source": entry["source"],
            "name": entry["name"],
            "offset": d.inbox,
        }
    s.journal[e.run] = {
        "mode": d.mode,
        "reply_to": d.reply_to,
        "wake": wake,
        "call": d.call,
        "steps": {},
        "signals": [],
        "calls": {},
    }


def _run_status(status: str) -> Callable[[EntityState, Event], None]:
    terminal = status in ("completed", "failed", "cancelled")

    def apply(s: EntityState, e: Event) -> None:
        if e.run is None:
            return
        run = s.runs.get(e.run)
        if run is None:
            run = s.runs[e.run] = {"status": status}
        run["status"] = status
        d = e.data
        if terminal:
            run["ended_at"] = e.at
            run.pop("waiting_for", None)
            run.pop("reason", None)
            s.journal.pop(e.run, None)
            if s.active_run == e.run:
                s.active_run = None
            if len(s.runs) > RUN_HISTORY:
                _forget_old_runs(s)
        if status == "completed":
            run["result"] = d.result
            if d.reason is not None:
                run["reason"] = d.reason
        elif status == "failed":
            run["error"] = d.error
            run["reason"] = d.reason
        elif status == "cancelled":
            run["reason"] = d.reason
        elif status == "suspended":
            run["waiting_for"] = d.waiting_for
            run["reason"] = suspend_reason(d.waiting_for)
        else:
            run.pop("waiting_for", None)
            run.pop("reason", None)

    return apply


TERMINAL = frozenset(("completed", "failed", "cancelled"))


def _forget_old_runs(s: EntityState) -> None:
    """Keep every unfinished run and the last RUN_HISTORY finished ones, with their
    steps, texts, tool calls, approvals and errors. Entries of a run are inserted
    after the run started, so dropping from the front of each collection is enough."""
    runs = s.runs
    while len(runs) > RUN_HISTORY:
        oldest = next((r for r, info in runs.items() if info["status"] in TERMINAL), None)
        if oldest is None:
            return
        del runs[oldest]
    for coll in (s.steps, s.tool_calls, s.approvals, s.errors):
        while coll:
            key, entry = next(iter(coll.items()))
            if entry.get("run") in runs:
                break
            del coll[key]
    while s.texts:
        key = next(iter(s.texts))
        if key in runs:
            break
        del s.texts[key]


def _step_key(e: Event) -> str:
    return f"{e.run}/{e.data.position}"


def _step_completed(s: EntityState, e: Event) -> None:
    d = e.data
    s.steps[_step_key(e)] = {
        "run": e.run,
        "name": d.name,
        "status": "completed",
        "result": d.result,
    }
    journal = s.journal.get(e.run or "")
    if journal is not None:
        journal["steps"][str(d.position)] = {
            "name": d.name,
            "status": "completed",
            "result": d.result,
        }


def _step_failed(s: EntityState, e: Event) -> None:
    d = e.data
    s.steps[_step_key(e)] = {
        "run": e.run,
        "name": d.name,
        "status": "failed",
        "error": d.error,
        "attempt": d.attempt,
    }
    journal = s.journal.get(e.run or "")
    if journal is not None and d.final:
        journal["steps"][str(d.position)] = {"name": d.name, "status": "failed", "error": d.error}


def _signal_received(s: EntityState, e: Event) -> None:
    d = e.data
    journal = s.journal.get(e.run or "")
    if journal is not None:
        journal["signals"].append({"name": d.name, "payload": d.payload, "timed_out": d.timed_out})


def _text_delta(s: EntityState, e: Event) -> None:
    key = e.run or ""
    text = s.texts.get(key)
    if text is None or text["done"]:
        s.texts[key] = {"text": e.data.text, "done": False}
    else:
        text["text"] += e.data.text


def _text_completed(s: EntityState, e: Event) -> None:
    s.texts[e.run or ""] = {"text": e.data.text, "done": True}


def _tool_called(s: EntityState, e: Event) -> None:
    d = e.data
    s.tool_calls[d.call_id] = {"run": e.run, "tool": d.tool, "args": d.args, "status": "called"}


def _tool_result(s: EntityState, e: Event) -> None:
    d = e.data
    call = s.tool_calls.setdefault(d.call_id, {"run": e.run})
    call["status"] = d.status
    call["result"] = d.result
    call["error"] = d.error


def _approval_requested(s: EntityState, e: Event) -> None:
    d = e.data
    s.approvals[d.call_id] = {
        "run": e.run,
        "tool": d.tool,
        "args": d.args,
        "status": "pending",
        "requested_at": e.at,
    }


def _approval_decided(s: EntityState, e: Event) -> None:
    d = e.data
    approval = s.approvals.setdefault(d.call_id, {"run": e.run})
    approval["status"] = "approved" if d.approved else "denied"
    approval["reason"] = d.reason
    approval["decided_at"] = e.at


def _timer_set(s: EntityState, e: Event) -> None:
    d = e.data
    s.timers[d.name] = {"due": d.due, "payload": d.payload, "generation": e.seq}


def _timer_cancelled(s: EntityState, e: Event) -> None:
    s.timers.pop(e.data.name, None)


def _timer_fired(s: EntityState, e: Event) -> None:
    d = e.data
    s.timers.pop(d.name, None)
    if d.name.startswith(CALL_TIMER):
        call = _journal_call(s, e.run, d.name[len(CALL_TIMER) :])
        if call is not None and call["status"] == "waiting":
            call["status"] = "timed_out"
    if d.inbox is not None:
        s.inbox[d.inbox] = {
            "kind": "timer",
            "payload": d.payload,
            "source": None,
            "name": d.name,
            "mode": None,
            "key": None,
            "reply_to": None,
            "at": e.at,
        }


def _journal_call(s: EntityState, run: str | None, call: str) -> dict[str, Any] | None:
    journal = s.journal.get(run or "")
    if journal is None:
        return None
    found: dict[str, Any] | None = journal.setdefault("calls", {}).get(call)
    return found


def _child_spawned(s: EntityState, e: Event) -> None:
    d = e.data
    s.children[d.address] = {"status": "running", "run": e.run}
    if d.call is not None:
        s.children[d.address]["call"] = d.call
        journal = s.journal.get(e.run or "")
        if journal is not None:
            journal.setdefault("calls", {})[d.call] = {"address": d.address, "status": "waiting"}


def _child_finished(s: EntityState, e: Event) -> None:
    d = e.data
    child = s.children.setdefault(d.address, {})
    child["status"] = d.status
    child["result"] = d.result
    child["error"] = d.error
    if d.call is not None:
        call = _journal_call(s, e.run, d.call)
        if call is not None and call["status"] == "waiting":
            call.update(status=d.status, result=d.result, error=d.error)
    if d.inbox is not None:
        s.inbox[d.inbox] = {
            "kind": "child",
            "payload": {
                "address": d.address,
                "status": d.status,
                "result": d.result,
                "error": d.error,
                "run": d.run,
            },
            "source": d.address,
            "name": None,
            "mode": None,
            "key": None,
            "reply_to": None,
            "at": e.at,
        }


def _state_set(s: EntityState, e: Event) -> None:
    d = e.data
    coll = s.collections.get(d.collection)
    if coll is None:
        coll = s.collections[d.collection] = {}
    coll[d.key] = d.value


def _state_deleted(s: EntityState, e: Event) -> None:
    d = e.data
    coll = s.collections.get(d.collection)
    if coll is not None:
        coll.pop(d.key, None)


def _error(s: EntityState, e: Event) -> None:
    d = e.data
    s.errors[str(e.seq)] = {"run": e.run, "type": d.type, "message": d.message, "at": e.at}


def _ignore(s: EntityState, e: Event) -> None:
    return None


_FOLD: dict[str, Callable[[EntityState, Event], None]] = {
    "entity.created": _entity_created,
    "message.received": _message_received,
    "run.started": _run_started,
    "run.suspended": _run_status("suspended"),
    "run.resumed": _run_status("running"),
    "run.completed": _run_status("completed"),
    "run.failed": _run_status("failed"),
    "run.cancelled": _run_status("cancelled"),
    "step.started": _ignore,
    "step.completed": _step_completed,
    "step.failed": _step_failed,
    "text.delta": _text_delta,
    "text.completed": _text_completed,
    "tool.called": _tool_called,
    "tool.result": _tool_result,
    "approval.requested": _approval_requested,
    "approval.decided": _approval_decided,
    "signal.received": _signal_received,
    "timer.set": _timer_set,
    "timer.cancelled": _timer_cancelled,
    "timer.fired": _timer_fired,
    "child.spawned": _child_spawned,
    "child.finished": _child_finished,
    "state.set": _state_set,
    "state.deleted": _state_deleted,
    "error": _error,
}


def evolve(state: EntityState, event: Event) -> EntityState:
    """Apply one committed event to `state` (in place) and return it. No I/O."""
    fold = _FOLD.get(event.kind)
    if fold is not None:
        fold(state, event)
    state.seq = event.seq
    state.offset = event.offset
    return state


def rebuild(address: str, events: list[Event], state: EntityState | None = None) -> EntityState:
    """Fold `events` into `state` (a fresh one if None)."""
    s = state if state is not None else EntityState(address)
    fold = _FOLD
    for event in events:
        f = fold.get(event.kind)
        if f is not None:
            f(s, event)
        s.seq = event.seq
        s.offset = event.offset
    return s


# -- snapshots ----------------------------------------------------------------


class _SnapshotBody(msgspec.Struct, array_like=True):
    version: int
    seq: int
    offset: str | None
    created: bool
    parent: str | None
    active_run: str | None
    collections: dict[str, dict[str, Any]]
    builtins: dict[str, dict[str, Any]]
    journal: dict[str, dict[str, Any]]


SNAPSHOT_VERSION = 2
_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(_SnapshotBody)


def encode_snapshot(state: EntityState) -> bytes:
    """Encode the whole state (a cache of the fold) as msgpack."""
    return _snapshot_encoder.encode(
        _SnapshotBody(
            SNAPSHOT_VERSION,
            state.seq,
            state.offset,
            state.created,
            state.parent,
            state.active_run,
            state.collections,
            {name: state.builtin(name) for name in BUILTIN_COLLECTIONS},
            state.journal,
        )
    )


def decode_snapshot(address: str, raw: bytes) -> EntityState | None:
    """Decode a snapshot; None if it was written by an incompatible version."""
    try:
        body = _snapshot_decoder.decode(raw)
    except msgspec.DecodeError:
        return None
    if body.version != SNAPSHOT_VERSION:
        return None
    s = EntityState(address)
    s.seq = body.seq
    s.offset = body.offset
    s.created = body.created
    s.parent = body.parent
    s.active_run = body.active_run
    s.collections = body.collections
    s.journal = body.journal
    for name in BUILTIN_COLLECTIONS:
        setattr(s, name, body.builtins.get(name, {}))
    return s


# -- collection views -----------------------------------------------------------


class _Deleted:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<deleted>"


DELETED: Any = _Deleted()
_MISSING: Any = object()


class Collection(MutableMapping[str, Any]):
    """A dict-like custom collection of an entity's state, as a handler sees it.

    Writes are buffered in the turn and become `state.set` / `state.deleted`
    events when it commits; a turn that fails leaves the state untouched.
    Values are normalised to JSON on write, and reads return copies, so
    changing a value you read does nothing until you assign it back.
    """

    __slots__ = ("_base", "_changes", "_limit", "_name")

    def __init__(
        self,
        name: str,
        base: dict[str, Any] | None,
        changes: dict[tuple[str, str], Any],
        limit: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        self._name = name
        self._base = base if base is not None else {}
        self._changes = changes
        self._limit = limit

    @property
    def name(self) -> str:
        return self._name

    def _lookup(self, key: str) -> Any:
        if self._changes:
            value = self._changes.get((self._name, key), _MISSING)
            if value is not _MISSING:
                return value
        return self._base.get(key, DELETED)

    def __getitem__(self, key: str) -> Any:
        value = self._lookup(key)
        if value is DELETED:
            raise KeyError(key)
        return deep_copy(value)

    def __setitem__(self, key: str, value: Any) -> None:
        check_key(self._name, key)
        self._changes[(self._name, key)] = normalize(
            value, f"value of {self._name}[{key!r}]", self._limit
        )

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._changes[(self._name, key)] = DELETED

    def _keys(self) -> list[str]:
        keys = dict.fromkeys(self._base)
        for (coll, key), value in self._changes.items():
            if coll != self._name:
                continue
            if value is DELETED:
                keys.pop(key, None)
            else:
                keys[key] = None
        return list(keys)

    def __contains__(self, key: object) -> bool:
        return type(key) is str and self._lookup(key) is not DELETED

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    def __repr__(self) -> str:
        return f"Collection({self._name!r}, {dict(self.items())!r})"


class ReadOnlyCollection(Mapping[str, Any]):
    """A built-in collection (runs, timers, …) as a handler sees it: read-only copies."""

    __slots__ = ("_base", "_name")

    def __init__(self, name: str, base: dict[str, Any]) -> None:
        self._name = name
        self._base = base

    def __getitem__(self, key: str) -> Any:
        return deep_copy(self._base[key])

    def __setitem__(self, key: str, value: Any) -> None:
        raise TypeError(
            f"built-in collection {self._name!r} is read-only: the runtime derives it from "
            "the stream; keep your own data in a custom collection"
        )

    def __delitem__(self, key: str) -> None:
        self.__setitem__(key, None)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._base))

    def __len__(self) -> int:
        return len(self._base)

    def __repr__(self) -> str:
        return f"ReadOnlyCollection({self._name!r}, {len(self._base)} entries)"


class StateView(Mapping[str, Any]):
    """`ctx.state`: collections by name. Custom ones are created on first use."""

    __slots__ = ("_changes", "_limit", "_state")

    def __init__(self, state: EntityState, changes: dict[tuple[str, str], Any], limit: int) -> None:
        self._state = state
        self._changes = changes
        self._limit = limit

    def __getitem__(self, name: str) -> Any:
        if name in BUILTIN_COLLECTIONS:
            return ReadOnlyCollection(name, self._state.builtin(name))
        check_collection(name)
        return Collection(name, self._state.collections.get(name), self._changes, self._limit)

    def __iter__(self) -> Iterator[str]:
        names = dict.fromkeys(self._state.collections)
        for coll, _ in self._changes:
            names[coll] = None
        return iter([*names, *BUILTIN_COLLECTIONS])

    def __len__(self) -> int:
        return len(list(iter(self)))


def changes_to_events(
    state: EntityState, changes: dict[tuple[str, str], Any]
) -> list[ev.EventData]:
    """Turn a turn's buffered writes into `state.set` / `state.deleted` data, in order."""
    out: list[ev.EventData] = []
    for (coll, key), value in changes.items():
        base = state.collections.get(coll)
        if value is DELETED:
            if base is not None and key in base:
                out.append(ev.StateDeleted(collection=coll, key=key))
        else:
            out.append(ev.StateSet(collection=coll, key=key, value=value))
    return out
