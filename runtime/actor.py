"""The activation of one entity: routes its inbox, owns its writer and its run in memory.

Selective receive: while a run is active (in memory, or durable and suspended),
the messages addressed to it — approvals, signals, cancel, its own timeouts —
are handled at once; other messages are accepted into the entity's log
(`message.received`, pending in the `inbox` collection) and start runs, oldest
first, when the active run ends. Accepting never waits for a run, so the
transport is never held up by a long or suspended one.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from . import events as ev
from .context import Decision, Wake
from .events import Event
from .ids import new_run_id
from .ports import InboxItem
from .run import (
    INTERNAL_TIMER,
    Abort,
    RunDriver,
    cancel_calls,
    child_notice,
    closing_events,
    open_items,
    unanswered_calls,
)
from .state import CALL_TIMER, EntityState
from .writer import Writer

if TYPE_CHECKING:
    from .runtime import Runtime, _Cached

log = logging.getLogger("wakeful.runtime")

INBOX_BATCH = 256
WORKER_LOST = "worker lost: the process running this classic run stopped before the run ended"


class Actor:
    """One entity in memory while it has work: inbox messages, a run, buffered events."""

    def __init__(self, rt: Runtime, address: str) -> None:
        self.rt = rt
        self.address = address
        self.type = address.split("/", 2)[1]
        self.cached: _Cached | None = None
        self.writer: Writer | None = None
        self.run: RunDriver | None = None
        self.dirty = True
        self.wakeup = asyncio.Event()
        self.waiting = False
        self.high = ""
        """Highest inbox offset routed; the inbox still lists messages whose
        consumption is buffered, and they must not be routed twice."""
        self.broken: BaseException | None = None

    @property
    def state(self) -> EntityState:
        assert self.cached is not None
        return self.cached.state

    @property
    def busy(self) -> bool:
        """Working now: `rt.idle()` waits for it. A run waiting for an approval or a
        signal in memory does not count."""
        if not self.waiting or self.wakeup.is_set():
            return True
        if self.run is not None and not self.run.waiting:
            return True
        return self.writer is not None and self.writer.has_pending

    def poke(self) -> None:
        self.dirty = True
        self.wakeup.set()

    # -- the loop --------------------------------------------------------------

    async def main(self) -> None:
        """Load, recover, then route inbox messages until there is nothing left to do.

        The actor is created holding one of the runtime's slots (at most
        `max_concurrency` actors load or route at once); it gives the slot back
        while it waits and takes one again to route new messages.
        """
        rt = self.rt
        holding = True
        try:
            self.cached = await rt._load(self.address)
            self.writer = Writer(
                rt.store,
                self.state,
                rt._spawn,
                rt.config.flush_interval,
                self._committed,
                self._failed,
                rt.metrics,
            )
            await self._recover()
            while self.broken is None:
                if self.dirty:
                    if not holding:
                        await rt._slots.take()
                        holding = True
                    self.dirty = False
                    await self._drain()
                    continue
                state = self.state
                if self.run is None and state.active_run is None and state.inbox:
                    self._start_pending()
                    continue
                if self.run is None and not self.writer.has_pending:
                    return
                if holding:
                    rt._give_slot()
                    holding = False
                self.wakeup.clear()
                self.waiting = True
                try:
                    await self.wakeup.wait()
                finally:
                    self.waiting = False
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s: activation failed: %r", self.address, exc)
            self.broken = exc
        finally:
            if holding:
                rt._give_slot()
            rt._actor_done(self)

    async def _drain(self) -> None:
        items = await self.rt.store.inbox(self.address, after=self.high or None, limit=INBOX_BATCH)
        if len(items) == INBOX_BATCH:
            self.dirty = True
        for item in items:
            if item.offset <= self.high:
                continue
            self.high = item.offset
            await self._route(item)
            if self.broken is not None:
                return

    def _committed(self, events: list[Event]) -> None:
        assert self.cached is not None
        self.rt._after_commit(self.cached)
        if self.run is None:
            self.wakeup.set()

    def _failed(self, exc: BaseException) -> None:
        log.warning("%s: background commit failed: %r", self.address, exc)
        self.broken = exc
        self.wakeup.set()

    # -- routing ---------------------------------------------------------------

    async def _route(self, item: InboxItem) -> None:
        env = item.envelope
        kind = env.kind
        assert self.writer is not None
        self.rt.metrics.wakes[kind] += 1
        if kind == "timer" and (env.name or "").startswith(INTERNAL_TIMER):
            await self._internal_timer(item)
        elif kind == "child" and env.name:
            await self._answer(item)
        elif kind in ("message", "child", "timer"):
            if kind == "timer" and self._stale_timer(item):
                self.writer.consume(item.offset)
            elif self._idle():
                self._start(item)
            else:
                self.writer.emit(self._accepted(item), None)
                self.writer.consume(item.offset)
        elif kind == "approval":
            await self._approval(item)
        elif kind == "signal":
            await self._signal(item)
        elif kind == "cancel":
            await self._cancel(item)
        else:
            log.warning("%s: inbox message of unknown kind %r consumed", self.address, kind)
            self.writer.consume(item.offset)

    def _idle(self) -> bool:
        """No run and nothing waiting before a new message: it may start at once. Messages
        accepted but not yet committed count as waiting, so they keep their turn."""
        assert self.writer is not None
        return (
            self.run is None
            and self.state.active_run is None
            and not self.state.inbox
            and not self.writer.has_pending
        )

    def _stale_timer(self, item: InboxItem) -> bool:
        timer = self.state.timers.get(item.envelope.name or "")
        return timer is None or timer["generation"] != item.envelope.generation

    def _accepted(self, item: InboxItem) -> ev.EventData:
        """The event that takes a run-starting message into the entity's log."""
        env = item.envelope
        if env.kind == "child":
            return ev.ChildFinished(**_child_payload(env), inbox=item.offset)
        if env.kind == "timer":
            return ev.TimerFired(name=env.name or "", payload=env.payload, inbox=item.offset)
        return ev.MessageReceived(
            inbox=item.offset,
            payload=env.payload,
            source=env.source,
            key=env.key,
            mode=env.mode,
            reply_to=env.reply_to,
            call=env.name,
        )

    # -- starting and resuming runs --------------------------------------------

    def _start(self, item: InboxItem) -> None:
        """Start a run for a message that was not accepted yet: accepting it, starting the
        run and (classic) the whole turn may share one commit."""
        assert self.writer is not None
        self.writer.hold(self._accepted(item), None)
        self.writer.consume(item.offset, flush=False)
        env = item.envelope
        self._launch(
            trigger=env.kind,
            offset=item.offset,
            payload=_child_payload(env) if env.kind == "child" else env.payload,
            source=env.source,
            name=env.name,
            mode=env.mode,
            reply_to=env.reply_to,
        )

    def _start_pending(self) -> None:
        offset, entry = next(iter(self.state.inbox.items()))
        self._launch(
            trigger=entry["kind"],
            offset=offset,
            payload=entry["payload"],
            source=entry["source"],
            name=entry["name"],
            mode=entry["mode"],
            reply_to=entry["reply_to"],
        )

    def _launch(
        self,
        *,
        trigger: str,
        offset: str,
        payload: Any,
        source: str | None,
        name: str | None,
        mode: str | None,
        reply_to: str | None,
    ) -> None:
        assert self.writer is not None
        entity_type = self.rt.registry.get(self.type)
        mode = mode or entity_type.mode
        run = new_run_id()
        call = name if trigger == "message" else None
        self.writer.hold(
            ev.RunStarted(
                mode=mode,
                trigger=trigger,
                inbox=offset,
                source=source,
                reply_to=reply_to,
                call=call,
            ),
            run,
        )
        wake = Wake(
            kind=trigger, payload=payload, source=source, offsets=(offset, offset), name=name
        )
        self.run = RunDriver(
            self, run, mode, wake, entity_type.handler, reply_to, call=call, fresh=True
        )
        self.run.start()
        self.writer.schedule()  # after the handler's first step: see Writer.schedule

    def _resume(self, run: str) -> None:
        """Run a durable run's handler again from the top, against its journal."""
        journal = self.state.journal.get(run)
        wake = journal.get("wake") if journal else None
        if journal is None or wake is None:
            log.error("%s: run %s has no journal to resume from", self.address, run)
            self.broken = RuntimeError(f"run {run} has no journal")
            return
        self.run = RunDriver(
            self,
            run,
            "durable",
            Wake(
                kind=wake["kind"],
                payload=wake["payload"],
                source=wake["source"],
                offsets=(wake["offset"], wake["offset"]),
                name=wake["name"],
            ),
            self.rt.registry.get(self.type).handler,
            journal.get("reply_to"),
            call=journal.get("call"),
        )
        self.run.start()

    async def _recover(self) -> None:
        """A run that is active in the log but not in memory was left by a process that
        stopped: a classic one is closed as `worker_lost`, a durable one resumed."""
        state = self.state
        run = state.active_run
        if run is None or self.run is not None:
            return
        info = state.runs.get(run, {})
        if info.get("mode") != "durable":
            await self._close(run, "failed", "worker_lost", WORKER_LOST, [])
        elif info.get("status") == "running":
            assert self.writer is not None
            self.writer.emit(ev.RunResumed(trigger="resume"), run)
            self._resume(run)

    async def _close(
        self, run: str, status: str, reason: str, error: str | None, consumed: list[str]
    ) -> None:
        """End a run that is not in memory (orphaned, or durable and suspended)."""
        assert self.writer is not None
        state = self.state
        approvals, calls, text = open_items(state, run)
        events = closing_events(state, run, approvals, calls, text, reason)
        if status == "cancelled":
            events.append(ev.RunCancelled(reason=reason))
        else:
            events.append(ev.RunFailed(error=error or reason, reason=reason))
        info = state.runs.get(run, {})
        outbox = child_notice(
            self.address, info.get("reply_to"), run, status, None, error or reason, info.get("call")
        )
        outbox.extend(cancel_calls(self.address, unanswered_calls(state, run)))
        await self.writer.commit([(e, run) for e in events], outbox, consumed)

    # -- messages for the active run -------------------------------------------

    async def _approval(self, item: InboxItem) -> None:
        assert self.writer is not None
        env = item.envelope
        call_id = env.name or ""
        p = env.payload if isinstance(env.payload, dict) else {}
        decision = Decision(bool(p.get("approved")), p.get("reason"))
        run = self.run
        if run is not None and not run.durable and call_id in run.pending_approvals:
            self.writer.consume(item.offset, flush=False)
            run.decide(call_id, decision, "approval")
            return
        approval = self.state.approvals.get(call_id)
        if approval is None or approval["status"] != "pending":
            self.writer.consume(item.offset)  # decided already, or unknown: a no-op
            return
        owner = approval.get("run")
        info = self.state.runs.get(owner or "", {})
        if info.get("mode") != "durable" or self.state.active_run != owner or owner is None:
            self.writer.consume(item.offset)  # a classic run that is gone: recovery closes it
            return
        events: list[ev.EventData] = [
            ev.ApprovalDecided(call_id=call_id, approved=decision.approved, reason=decision.reason)
        ]
        timer = f"{INTERNAL_TIMER}approval:{call_id}"
        if timer in self.state.timers:
            events.append(ev.TimerCancelled(name=timer))
        resume = run is None
        if resume:
            events.append(ev.RunResumed(trigger="approval"))
        await self.writer.commit([(e, owner) for e in events], consumed=[item.offset])
        if resume:
            self._resume(owner)

    async def _signal(self, item: InboxItem) -> None:
        assert self.writer is not None
        env = item.envelope
        name = env.name or ""
        run = self.run
        if run is not None and not run.durable:
            self.writer.consume(item.offset, flush=False)
            self.writer.emit(ev.SignalReceived(name=name, payload=env.payload), run.run)
            run.deliver_signal(name, env.payload)
            return
        owner = run.run if run is not None else self.state.active_run
        if owner is None:
            self.writer.consume(item.offset)  # no run to receive it
            return
        info = self.state.runs.get(owner, {})
        if info.get("mode") != "durable":
            self.writer.consume(item.offset)
            return
        events: list[ev.EventData] = [ev.SignalReceived(name=name, payload=env.payload)]
        resume = (
            run is None
            and info.get("status") == "suspended"
            and info.get("waiting_for") == f"signal:{name}"
        )
        if resume:
            timer = f"{INTERNAL_TIMER}signal:{name}"
            if timer in self.state.timers:
                events.append(ev.TimerCancelled(name=timer))
            events.append(ev.RunResumed(trigger="signal"))
        await self.writer.commit([(e, owner) for e in events], consumed=[item.offset])
        if resume:
            self._resume(owner)

    async def _answer(self, item: InboxItem) -> None:
        """A child answers a `ctx.call`: record the answer in the waiting run's journal and
        give it to the run. An answer nobody waits for any more (the call timed out, or its
        run ended) is recorded without starting a run."""
        assert self.writer is not None
        call = item.envelope.name or ""
        p = _child_payload(item.envelope)
        answer = {"status": p["status"], "result": p["result"], "error": p["error"]}
        driver = self.run
        state = self.state
        owner = state.active_run
        entry = (state.journal.get(owner or "") or {}).get("calls", {}).get(call)
        if driver is not None and call in driver.calls:
            owner = driver.run
        elif entry is None or entry["status"] != "waiting":
            owner = None
        finished = ev.ChildFinished(
            address=p["address"],
            status=p["status"],
            result=p["result"],
            error=p["error"],
            run=p["run"],
            call=call,
        )
        if owner is None:
            self.writer.emit(finished, None)
            self.writer.consume(item.offset)
        elif driver is not None and driver.run == owner and not driver.durable:
            self.writer.emit(finished, owner)
            self.writer.consume(item.offset)
            driver.answer(call, answer)
        else:
            await self.writer.commit([(finished, owner)], consumed=[item.offset])
            if self.run is not None and self.run.run == owner:
                self.run.answer(call, answer)
            elif self.run is None and state.runs.get(owner, {}).get("status") == "running":
                self._resume(owner)

    async def _cancel(self, item: InboxItem) -> None:
        assert self.writer is not None
        target = item.envelope.run
        call = item.envelope.name
        if target is None and call:  # the caller gave up on the call this entity answers
            target = next(
                (
                    r
                    for r, info in self.state.runs.items()
                    if info.get("call") == call and info["status"] in ("running", "suspended")
                ),
                None,
            )
        if self.run is not None and self.run.run == target:
            self.writer.consume(item.offset, flush=False)
            self.run.cancel("cancelled")
        elif target is not None and self.state.active_run == target:
            await self._close(target, "cancelled", "cancelled", None, [item.offset])
        else:
            self.writer.consume(item.offset)

    async def _internal_timer(self, item: InboxItem) -> None:
        assert self.writer is not None
        env = item.envelope
        name = env.name or ""
        state = self.state
        timer = state.timers.get(name)
        if timer is None or timer["generation"] != env.generation:
            self.writer.consume(item.offset)
            return
        raw = timer.get("payload")
        payload: dict[str, Any] = raw if isinstance(raw, dict) else {}
        owner = payload.get("run")
        fired = ev.TimerFired(name=name)
        events: list[ev.EventData] = []
        resume = False
        if name.startswith(f"{INTERNAL_TIMER}approval:"):
            call_id = payload.get("call_id", "")
            approval = state.approvals.get(call_id)
            if (
                approval is not None
                and approval["status"] == "pending"
                and state.active_run == owner
            ):
                events = [
                    fired,
                    ev.ApprovalDecided(call_id=call_id, approved=False, reason="timeout"),
                ]
                resume = self.run is None
        elif name.startswith(f"{INTERNAL_TIMER}signal:"):
            signal = payload.get("signal", "")
            info = state.runs.get(owner or "", {})
            if (
                self.run is None
                and info.get("status") == "suspended"
                and info.get("waiting_for") == f"signal:{signal}"
            ):
                events = [fired, ev.SignalReceived(name=signal, timed_out=True)]
                resume = True
        elif name.startswith(CALL_TIMER):
            call = payload.get("call", "")
            entry = (state.journal.get(owner or "") or {}).get("calls", {}).get(call)
            if entry is not None and entry["status"] == "waiting":
                events = [fired]  # its fold marks the call timed out
        if not events or owner is None:
            self.writer.emit(fired, owner)
            self.writer.consume(item.offset)
            return
        if resume:
            events.append(ev.RunResumed(trigger="timeout"))
        await self.writer.commit([(e, owner) for e in events], consumed=[item.offset])
        if resume:
            self._resume(owner)
        elif name.startswith(CALL_TIMER) and self.run is not None and self.run.run == owner:
            self.run.answer(payload.get("call", ""), {"status": "timed_out"})
        elif (
            name.startswith(CALL_TIMER)
            and self.run is None
            and state.runs.get(owner, {}).get("status") == "running"
        ):
            self._resume(owner)

    # -- the run tells us ------------------------------------------------------

    def run_left(self, driver: RunDriver) -> None:
        """The run ended, or (durable) suspended and left memory."""
        if self.run is driver:
            self.run = None
            if driver.durable and self.broken is None and self._answered(driver):
                assert self.writer is not None
                self.writer.emit(ev.RunResumed(trigger="resume"), driver.run)
                self._resume(driver.run)
        self.wakeup.set()

    def _answered(self, driver: RunDriver) -> bool:
        """A durable run suspended, but what it waits for was recorded while its handler
        was still unwinding (a decision or a signal routed in between): resume it now."""
        info = self.state.runs.get(driver.run, {})
        waiting = str(info.get("waiting_for") or "")
        if info.get("status") != "suspended":
            return False
        kind, _, name = waiting.partition(":")
        if kind == "approval":
            return bool(self.state.approvals.get(name, {}).get("status", "pending") != "pending")
        if kind == "signal":
            wanted = driver.signal_cursor.get(name, 0)  # the wait was the wanted-th of `name`
            received = [s for s in driver.journal["signals"] if s["name"] == name]
            return len(received) >= wanted > 0
        return False

    def run_aborted(self, driver: RunDriver) -> None:
        if self.run is driver:
            self.run = None
        if self.broken is None:
            self.broken = Abort()
        self.wakeup.set()


def _child_payload(env: Any) -> dict[str, Any]:
    p = env.payload if isinstance(env.payload, dict) else {}
    return {
        "address": p.get("address", env.source or ""),
        "status": p.get("status", ""),
        "result": p.get("result"),
        "error": p.get("error"),
        "run": p.get("run"),
    }
