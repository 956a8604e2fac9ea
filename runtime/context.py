"""What a handler sees: the `Wake` that woke it and the `Context` of its turn."""

from __future__ import annotations

import datetime as _dt
import time
from typing import TYPE_CHECKING, Any

import msgspec

from .address import check_name, make_address, parse_address
from .codec import normalize
from .events import ChildSpawned, TimerCancelled, TimerSet
from .ports import Envelope
from .registry import check_mode
from .state import EntityState, StateView

if TYPE_CHECKING:
    from .registry import Registry

WAKE_KINDS = ("message", "approval", "signal", "timer", "child", "resume", "cancel")


class Wake(msgspec.Struct, frozen=True):
    """Why a handler was woken."""

    kind: str
    """One of message, approval, signal, timer, child, resume, cancel."""
    payload: Any = None
    """The message payload; for `child`, `{"address", "status", "result", "error"}`."""
    source: str | None = None
    """The sending entity's address, or None when the message came from outside."""
    offsets: tuple[str, str] | None = None
    """First and last inbox offsets this wake covers."""
    name: str | None = None
    """The timer, signal or call id this wake is about, if any."""


class Context:
    """A handler's view of its entity during one turn.

    Effects (state writes, sends, spawns, timers) are buffered here and
    committed atomically with the run's terminal event; if the handler raises,
    none of them happen.
    """

    __slots__ = (
        "_changes",
        "_limit",
        "_ops",
        "_registry",
        "_state",
        "address",
        "id",
        "mode",
        "run",
        "state",
        "type",
    )

    def __init__(
        self,
        *,
        address: str,
        run: str,
        mode: str,
        entity: EntityState,
        registry: Registry,
        max_payload: int,
    ) -> None:
        self.address = address
        self.type, self.id = parse_address(address)
        self.run = run
        self.mode = mode
        self._state = entity
        self._registry = registry
        self._limit = max_payload
        self._changes: dict[tuple[str, str], Any] = {}
        self._ops: list[Envelope | ChildSpawned | TimerSet | TimerCancelled] = []
        self.state = StateView(entity, self._changes, max_payload)
        """Collections by name: `ctx.state["notes"]["k"] = v`; built-ins are read-only."""

    def send(
        self, address: str, payload: Any = None, *, mode: str | None = None, key: str | None = None
    ) -> None:
        """Send a message to the entity at `address` when this turn commits."""
        type, _ = parse_address(address)
        self._registry.get(type)
        check_mode(mode)
        self._ops.append(
            Envelope(
                address=address,
                payload=normalize(payload, f"payload of message to {address}", self._limit),
                source=self.address,
                mode=mode,
                key=key,
            )
        )

    def spawn(self, type: str, id: str, payload: Any = None, *, mode: str | None = None) -> str:
        """Start a child entity with a first message; when the run it starts ends,
        this entity wakes with `wake.kind == "child"`. Returns the child's address."""
        address = make_address(type, id)
        self._registry.get(type)
        check_mode(mode)
        value = normalize(payload, f"payload of spawn of {address}", self._limit)
        self._ops.append(ChildSpawned(address=address, payload=value))
        self._ops.append(
            Envelope(
                address=address,
                payload=value,
                source=self.address,
                mode=mode,
                reply_to=self.address,
            )
        )
        return address

    def set_timer(
        self,
        name: str,
        at: float | _dt.datetime | None = None,
        after: float | _dt.timedelta | None = None,
        payload: Any = None,
    ) -> float:
        """Arm the durable timer `name` (replacing one of the same name) to wake this
        entity with `wake.kind == "timer"` at `at` (epoch seconds or an aware
        datetime) or `after` seconds. Returns the due time in epoch seconds."""
        check_name(name, "timer name")
        if (at is None) == (after is None):
            raise ValueError(f"timer {name!r}: give exactly one of at= or after=")
        if at is not None:
            if isinstance(at, _dt.datetime):
                if at.tzinfo is None:
                    raise ValueError(f"timer {name!r}: at= must be timezone-aware")
                due = at.timestamp()
            else:
                due = float(at)
        else:
            delay = after.total_seconds() if isinstance(after, _dt.timedelta) else float(after)  # type: ignore[arg-type]
            if delay < 0:
                raise ValueError(f"timer {name!r}: after= must not be negative, got {delay}")
            due = time.time() + delay
        value = normalize(payload, f"payload of timer {name!r}", self._limit)
        self._ops.append(TimerSet(name=name, due=due, payload=value))
        return due

    def cancel_timer(self, name: str) -> None:
        """Disarm the timer `name` when this turn commits (no error if it is not armed)."""
        check_name(name, "timer name")
        self._ops.append(TimerCancelled(name=name))
