"""One turn: turn an inbox message into the events, messages and timers of one commit.

A turn starts a run (or, for a stale timer, only consumes its message), calls
the handler with a fresh `Context`, and assembles everything the handler did
into a single `Commit`: accepted message, `run.started`, the effects in the
order they were made, state changes, and the terminal event. If the handler
raises, only the run's failure is recorded and none of its effects.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from . import events as ev
from .codec import normalize
from .context import Context, Wake
from .ids import new_run_id
from .ports import Commit, Envelope, InboxItem, NewEvent, TimerArm
from .registry import Registry
from .state import EntityState, changes_to_events

log = logging.getLogger("wakeful.runtime")

MAX_TRACEBACK = 8192


class TurnBuilder:
    """Collects the events and side effects of one commit, numbering events from `seq`."""

    __slots__ = ("address", "at", "events", "expected", "outbox", "run", "timers")

    def __init__(self, state: EntityState, run: str | None) -> None:
        self.address = state.address
        self.expected = state.seq
        self.at = time.time()
        self.run = run
        self.events: list[NewEvent] = []
        self.outbox: list[Envelope] = []
        self.timers: dict[str, TimerArm | None] = {}
        """Final timer operation per name in this commit: an arm, or None to disarm."""

    def add(self, data: ev.EventData, *, in_run: bool = True) -> int:
        """Append an event (of the turn's run unless `in_run` is false); return its seq."""
        self.events.append(
            NewEvent(ev.KIND_OF[type(data)], data, self.at, self.run if in_run else None)
        )
        return self.expected + len(self.events)

    def arm(self, data: ev.TimerSet) -> None:
        generation = self.add(data)
        self.timers[data.name] = TimerArm(data.name, data.due, data.payload, generation)

    def disarm(self, data: ev.TimerCancelled) -> None:
        self.add(data)
        self.timers[data.name] = None

    def build(self, consumed: list[str]) -> Commit:
        arms = [arm for arm in self.timers.values() if arm is not None]
        cancels = [name for name, arm in self.timers.items() if arm is None]
        return Commit(
            address=self.address,
            expected=self.expected,
            events=self.events,
            outbox=self.outbox,
            timers=arms,
            cancel_timers=cancels,
            consumed=consumed,
        )


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def run_turn(
    registry: Registry, state: EntityState, item: InboxItem, max_payload: int
) -> Commit:
    """Run the handler for `item` against `state` and return the commit to write."""
    env = item.envelope
    type_name, id = state.address.split("/", 2)[1:]
    if env.kind == "timer":
        timer = state.timers.get(env.name or "")
        if timer is None or timer["generation"] != env.generation:
            # Cancelled or re-armed after this firing was queued: consume it, record nothing.
            return TurnBuilder(state, None).build([item.offset])

    run = new_run_id()
    turn = TurnBuilder(state, run)
    entity_type = registry.get(type_name)
    mode = env.mode or entity_type.mode
    if not state.created:
        turn.add(ev.EntityCreated(type=type_name, id=id, parent=env.reply_to), in_run=False)

    if env.kind == "message":
        turn.add(
            ev.MessageReceived(
                inbox=item.offset,
                payload=env.payload,
                source=env.source,
                key=env.key,
                mode=env.mode,
                reply_to=env.reply_to,
            ),
            in_run=False,
        )
    elif env.kind == "child":
        p = env.payload if isinstance(env.payload, dict) else {}
        turn.add(
            ev.ChildFinished(
                address=p.get("address", env.source or ""),
                status=p.get("status", ""),
                result=p.get("result"),
                error=p.get("error"),
            ),
            in_run=False,
        )
    elif env.kind == "timer":
        turn.add(ev.TimerFired(name=env.name or "", payload=env.payload), in_run=False)
    turn.add(
        ev.RunStarted(
            mode=mode,
            trigger=env.kind,
            inbox=item.offset if env.kind == "message" else None,
            source=env.source,
            reply_to=env.reply_to,
        )
    )

    ctx = Context(
        address=state.address,
        run=run,
        mode=mode,
        entity=state,
        registry=registry,
        max_payload=max_payload,
    )
    wake = Wake(
        kind=env.kind,
        payload=env.payload,
        source=env.source,
        offsets=(item.offset, item.offset),
        name=env.name,
    )
    status = "completed"
    result: Any = None
    error: str | None = None
    try:
        result = normalize(
            await entity_type.handler(ctx, wake), f"result of run {run}", max_payload
        )
    except Exception as exc:
        status = "failed"
        error = describe_error(exc)
        tb = "".join(traceback.format_exception(exc))[-MAX_TRACEBACK:]
        log.info("%s: run %s failed: %s", state.address, run, error)
        turn.add(ev.ErrorData(type=type(exc).__name__, message=str(exc), traceback=tb))
        turn.add(ev.RunFailed(error=error, reason="error"))
    else:
        for op in ctx._ops:
            if isinstance(op, Envelope):
                turn.outbox.append(op)
            elif isinstance(op, ev.TimerSet):
                turn.arm(op)
            elif isinstance(op, ev.TimerCancelled):
                turn.disarm(op)
            else:
                turn.add(op)
        for data in changes_to_events(state, ctx._changes):
            turn.add(data)
        turn.add(ev.RunCompleted(result=result))
    if env.reply_to is not None:
        turn.outbox.append(
            Envelope(
                address=env.reply_to,
                kind="child",
                payload={
                    "address": state.address,
                    "status": status,
                    "result": result,
                    "error": error,
                    "run": run,
                },
                source=state.address,
            )
        )
    return turn.build([item.offset])
