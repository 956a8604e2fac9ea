"""One run in memory: the handler's task and what its context does in each mode.

classic: the handler runs in memory and never waits on the store; its events
go to the writer's background buffer; approvals and signals are awaited in
memory, with their timeout.

durable: every step commits `step.completed` before it returns; an approval or
a signal wait commits `run.suspended` and unwinds the handler (the entity may
leave memory); when the decision, the signal or a restart comes, the handler
runs again from the top and every recorded step, decision and signal returns
what was recorded, until the first thing that was not.

Either way the run ends with exactly one terminal event, committed together
with its effects (state writes, sends, spawns, timers) when it completed, and
with the closing of whatever it left open (pending approvals, tool calls
without a result, an unfinished text).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import events as ev
from .address import check_name, make_address
from .codec import normalize
from .context import Context, Decision, Wake, step_key_var
from .errors import CallError, JournalMismatch, StepError, TerminalError
from .ports import Envelope
from .registry import Handler, check_mode
from .state import EntityState, changes_to_events

if TYPE_CHECKING:
    from .actor import Actor
    from .writer import Writer

log = logging.getLogger("wakeful.runtime")

MAX_TRACEBACK = 8192
INTERNAL_TIMER = "wk:"
"""Prefix of the timers the runtime arms for itself (approval and signal timeouts)."""


class Suspend(BaseException):
    """Unwinds a durable run that now waits (not an error; user code must not catch it)."""


class Abort(BaseException):
    """Unwinds a run whose writes failed; recovery takes it over."""


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def open_items(state: EntityState, run: str) -> tuple[list[str], dict[str, str], str | None]:
    """What `run` left open in `state`: pending approvals, tool calls without a result
    (id -> tool), and its unfinished text (or None)."""
    approvals = [
        c for c, a in state.approvals.items() if a.get("run") == run and a["status"] == "pending"
    ]
    calls = {
        c: str(t.get("tool"))
        for c, t in state.tool_calls.items()
        if t.get("run") == run and t["status"] == "called"
    }
    text = state.texts.get(run)
    return approvals, calls, (text["text"] if text is not None and not text["done"] else None)


def closing_events(
    state: EntityState,
    run: str,
    approvals: list[str],
    calls: dict[str, str],
    text: str | None,
    reason: str,
) -> list[ev.EventData]:
    """Events that close what a run left open, so every request has its answer."""
    out: list[ev.EventData] = []
    if text is not None:
        out.append(ev.TextCompleted(text=text))
    for call_id in approvals:
        out.append(ev.ApprovalDecided(call_id=call_id, approved=False, reason=reason))
    denied = set(approvals)
    for call_id in calls:
        if call_id in denied:
            out.append(ev.ToolResult(call_id=call_id, status="denied", error=reason))
        else:
            out.append(ev.ToolResult(call_id=call_id, status="error", error=reason))
    for name, timer in state.timers.items():
        payload = timer.get("payload")
        if (
            name.startswith(INTERNAL_TIMER)
            and isinstance(payload, dict)
            and payload.get("run") == run
        ):
            out.append(ev.TimerCancelled(name=name))
    return out


def child_notice(
    address: str,
    reply_to: str | None,
    run: str,
    status: str,
    result: Any,
    error: str | None,
    call: str | None = None,
) -> list[Envelope]:
    if reply_to is None:
        return []
    return [
        Envelope(
            address=reply_to,
            kind="child",
            payload={
                "address": address,
                "status": status,
                "result": result,
                "error": error,
                "run": run,
            },
            source=address,
            name=call,
        )
    ]


def cancel_calls(address: str, calls: dict[str, str]) -> list[Envelope]:
    """Cancel the children's runs that answer the calls (call id -> child address) a
    run leaves unanswered when it ends: a child's run does not outlive the call."""
    return [
        Envelope(address=child, kind="cancel", source=address, name=call)
        for call, child in calls.items()
    ]


def unanswered_calls(state: EntityState, run: str) -> dict[str, str]:
    """The calls of `run` that got no answer, still waiting or timed out (call id ->
    child address)."""
    journal = state.journal.get(run) or {}
    return {
        call: entry["address"]
        for call, entry in journal.get("calls", {}).items()
        if entry["status"] in ("waiting", "timed_out")
    }


def call_outcome(address: str, entry: dict[str, Any]) -> Any:
    """What `ctx.call` returns (or raises) for a recorded answer."""
    status = entry["status"]
    if status == "completed":
        return entry.get("result")
    if status == "timed_out":
        raise TimeoutError(f"call to {address} was not answered in time")
    raise CallError(address, status, entry.get("error"))


class RunDriver:
    """Runs one execution of a handler for one run (a replay after a restart is another)."""

    def __init__(
        self,
        actor: Actor,
        run: str,
        mode: str,
        wake: Wake,
        handler: Handler,
        reply_to: str | None,
        *,
        call: str | None = None,
        fresh: bool = False,
    ) -> None:
        assert actor.writer is not None
        self.actor = actor
        self.writer: Writer = actor.writer
        self.run = run
        self.mode = mode
        self.durable = mode == "durable"
        self.wake = wake
        self.handler = handler
        self.reply_to = reply_to
        self.answers = call
        """The parent's call id this run answers, if it was started by `ctx.call`."""
        self.position = 0
        self.task: asyncio.Task[None] | None = None
        self.cancel_reason: str | None = None
        self.calls: dict[str, str] = {}
        """Calls waiting for an answer in memory: call id -> child address."""
        self.waiters: dict[str, asyncio.Future[Any]] = {}
        self.signals: dict[str, deque[Any]] = {}
        self.signal_cursor: dict[str, int] = {}
        state = actor.state
        # A fresh run has nothing open yet; a resumed one finds what it opened in the log.
        approvals, calls, text = ([], {}, None) if fresh else open_items(state, run)
        self.pending_approvals: set[str] = set(approvals)
        self.open_calls: dict[str, str] = calls
        self.text: str | None = text
        self.ctx = Context(
            address=state.address,
            run=run,
            mode=mode,
            entity=state,
            registry=actor.rt.registry,
            max_payload=actor.rt.config.max_payload,
            driver=self,
        )

    @property
    def waiting(self) -> bool:
        """The handler waits in memory for an approval, a signal or a call that has not
        been answered yet (an answered wait counts as working at once)."""
        return any(not future.done() for future in self.waiters.values())

    @property
    def key_prefix(self) -> str:
        """`<address>@<inbox offset of the message that started the run>`: the same for
        every execution of the run's work, even one that died before its run was
        recorded and ran again under a new run id."""
        offset = self.wake.offsets[0] if self.wake.offsets else self.run
        return f"{self.ctx.address}@{offset}"

    @property
    def limit(self) -> int:
        return self.actor.rt.config.max_payload

    def start(self) -> None:
        self.task = self.actor.rt._spawn(self._execute(), name=f"wakeful-run-{self.run}")

    def cancel(self, reason: str) -> None:
        """End the run as cancelled: the handler is interrupted where it waits."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
            if self.task is not None:
                self.task.cancel()

    # -- the handler's task ----------------------------------------------------

    async def _execute(self) -> None:
        status, result, error, reason = "completed", None, None, None
        failure: BaseException | None = None
        try:
            result = normalize(
                await self.handler(self.ctx, self.wake), f"result of run {self.run}", self.limit
            )
        except Suspend:
            self.actor.run_left(self)
            return
        except Abort:
            self.actor.run_aborted(self)
            return
        except asyncio.CancelledError:
            if self.cancel_reason is None:
                raise  # the runtime is stopping: nothing more is written
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            status, reason = "cancelled", self.cancel_reason
        except Exception as exc:
            status, failure = "failed", exc
            error = describe_error(exc)
            reason = (
                "journal_mismatch"
                if isinstance(exc, JournalMismatch)
                else exc.reason
                if isinstance(exc, TerminalError)
                else "error"
            )
            log.info("%s: run %s failed: %s", self.ctx.address, self.run, error)
        try:
            await self._finish(status, result, error, reason, failure)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s: could not record the end of run %s", self.ctx.address, self.run)
            self.actor.run_aborted(self)
            return
        self.actor.run_left(self)

    async def _finish(
        self,
        status: str,
        result: Any,
        error: str | None,
        reason: str | None,
        failure: BaseException | None,
    ) -> None:
        run, state = self.run, self.actor.state
        out: list[tuple[ev.EventData, str | None]] = []
        outbox: list[Envelope] = []
        close_reason = {"completed": "run ended", "cancelled": "cancelled"}.get(
            status, "run failed"
        )
        for data in closing_events(
            state, run, sorted(self.pending_approvals), self.open_calls, self.text, close_reason
        ):
            out.append((data, run))
        if status == "completed":
            for op in self.ctx._ops:
                if isinstance(op, Envelope):
                    outbox.append(op)
                else:
                    out.append((op, run))
            out.extend((data, run) for data in changes_to_events(state, self.ctx._changes))
            out.append((ev.RunCompleted(result=result, reason=self.ctx.stop_reason), run))
        elif status == "cancelled":
            out.append((ev.RunCancelled(reason=reason), run))
        else:
            assert failure is not None
            tb = "".join(traceback.format_exception(failure))[-MAX_TRACEBACK:]
            out.append(
                (ev.ErrorData(type=type(failure).__name__, message=str(failure), traceback=tb), run)
            )
            out.append((ev.RunFailed(error=error or "", reason=reason or "error"), run))
        outbox.extend(
            child_notice(
                state.address,
                self.reply_to,
                run,
                status,
                result,
                error or reason if status != "completed" else None,
                self.answers,
            )
        )
        unanswered = unanswered_calls(state, run) if self.durable else self.calls
        outbox.extend(cancel_calls(state.address, unanswered))
        await self.writer.commit(out, outbox)

    async def _commit_now(
        self, events: list[ev.EventData], outbox: list[Envelope] | None = None
    ) -> None:
        """Commit for a durable run; a cancel waits for it, so nothing is recorded twice."""
        try:
            await asyncio.shield(self.writer.commit([(e, self.run) for e in events], outbox or ()))
        except Exception as exc:  # a conflict or a store error: recovery takes the run over
            log.warning("%s: run %s could not commit: %s", self.ctx.address, self.run, exc)
            raise Abort() from exc

    def _timeout(self, what: str, timeout: float, **payload: str) -> ev.TimerSet:
        """The durable timer that ends a durable wait (the actor routes its firing)."""
        return ev.TimerSet(
            name=f"{INTERNAL_TIMER}{what}",
            due=time.time() + timeout,
            payload={"run": self.run, **payload},
        )

    def _emit(self, data: ev.EventData) -> None:
        self.writer.emit(data, self.run)

    # -- steps -----------------------------------------------------------------

    @property
    def journal(self) -> dict[str, Any]:
        return self.actor.state.journal.get(self.run) or {"steps": {}, "signals": []}

    async def step(
        self,
        name: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        retries: int,
        backoff: float,
    ) -> Any:
        if not isinstance(name, str) or not name or len(name) > 256:
            raise ValueError("step names are non-empty strings of up to 256 characters")
        position = self.position
        self.position += 1
        if self.durable:
            called = self.journal.get("calls", {}).get(f"{self.run}:{position}")
            if called is not None:
                raise JournalMismatch(self.run, position, f"call {called['address']}", name)
            recorded = self.journal["steps"].get(str(position))
            if recorded is not None:
                if recorded["name"] != name:
                    raise JournalMismatch(self.run, position, recorded["name"], name)
                if recorded["status"] == "completed":
                    return recorded["result"]
                raise StepError(name, recorded.get("error") or "")
        attempt = 0
        while True:
            attempt += 1
            token = step_key_var.set(f"{self.key_prefix}:{position}")
            try:
                value = fn(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
                result = normalize(value, f"result of step {name!r}", self.limit)
            except Exception as exc:
                final = attempt > retries or isinstance(exc, TerminalError)
                failed = ev.StepFailed(
                    name=name,
                    position=position,
                    error=describe_error(exc),
                    attempt=attempt,
                    final=final,
                )
                if self.durable:
                    await self._commit_now([failed])
                else:
                    self._emit(failed)
                if final:
                    raise StepError(name, describe_error(exc)) from exc
                await asyncio.sleep(backoff * (2 ** (attempt - 1)))
                continue
            finally:
                step_key_var.reset(token)
            done: list[ev.EventData] = []
            if self.text is not None:
                done.append(ev.TextCompleted(text=self.text))
                self.text = None
            done.append(ev.StepCompleted(name=name, position=position, result=result))
            if self.durable:
                await self._commit_now(done)
            else:
                for data in done:
                    self._emit(data)
            return result

    # -- text ------------------------------------------------------------------

    def emit_text(self, delta: str) -> None:
        if not isinstance(delta, str):
            raise TypeError(f"emit_text takes a str, not {type(delta).__name__}")
        if not delta:
            return
        self.text = delta if self.text is None else self.text + delta
        self._emit(ev.TextDelta(text=delta))

    def end_text(self) -> None:
        if self.text is not None:
            self._emit(ev.TextCompleted(text=self.text))
            self.text = None

    # -- approvals -------------------------------------------------------------

    async def approval(
        self, call_id: str, tool: str | None, args: Any, timeout: float | None
    ) -> Decision:
        check_name(call_id, "call id")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"approval {call_id!r}: timeout must be positive, got {timeout}")
        existing = self.actor.state.approvals.get(call_id)
        if existing is not None:
            if existing.get("run") != self.run:
                raise ValueError(
                    f"call id {call_id!r} was already used by run {existing.get('run')}"
                )
            if existing["status"] != "pending":
                return Decision(existing["status"] == "approved", existing.get("reason"))
            if self.durable:  # replayed while still undecided: wait again
                await self._commit_now([ev.RunSuspended(waiting_for=f"approval:{call_id}")])
                raise Suspend()
        if call_id in self.pending_approvals:
            raise ValueError(f"approval {call_id!r} is already pending in this run")
        args = normalize(args, f"args of approval {call_id!r}", self.limit)
        requested = ev.ApprovalRequested(call_id=call_id, tool=tool, args=args, timeout=timeout)
        suspended = ev.RunSuspended(waiting_for=f"approval:{call_id}")
        self.pending_approvals.add(call_id)
        if self.durable:
            events: list[ev.EventData] = [requested]
            if timeout is not None:
                events.append(self._timeout(f"approval:{call_id}", timeout, call_id=call_id))
            events.append(suspended)
            await self._commit_now(events)
            raise Suspend()
        self._emit(requested)
        self._emit(suspended)
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        self.waiters[f"approval:{call_id}"] = future
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            decision = Decision(False, "timeout")
            self.decide(call_id, decision, "timeout")
            return decision
        finally:
            self.waiters.pop(f"approval:{call_id}", None)

    def decide(self, call_id: str, decision: Decision, trigger: str) -> bool:
        """Record a decision for a pending classic approval and wake the handler."""
        if call_id not in self.pending_approvals:
            return False
        self.pending_approvals.discard(call_id)
        self._emit(
            ev.ApprovalDecided(call_id=call_id, approved=decision.approved, reason=decision.reason)
        )
        self._emit(ev.RunResumed(trigger=trigger))
        future = self.waiters.get(f"approval:{call_id}")
        if future is not None and not future.done():
            future.set_result(decision)
        return True

    # -- signals ---------------------------------------------------------------

    async def wait_signal(self, name: str, timeout: float | None) -> Any:
        check_name(name, "signal name")
        if name.startswith(INTERNAL_TIMER):
            raise ValueError(f"signal names starting with {INTERNAL_TIMER!r} are reserved")
        if self.durable:
            k = self.signal_cursor.get(name, 0)
            self.signal_cursor[name] = k + 1
            received = [s for s in self.journal["signals"] if s["name"] == name]
            if len(received) > k:
                entry = received[k]
                if entry["timed_out"]:
                    raise TimeoutError(f"signal {name!r} did not arrive in time")
                return entry["payload"]
            events: list[ev.EventData] = []
            if timeout is not None:
                events.append(self._timeout(f"signal:{name}", timeout, signal=name))
            events.append(ev.RunSuspended(waiting_for=f"signal:{name}"))
            await self._commit_now(events)
            raise Suspend()
        buffered = self.signals.get(name)
        if buffered:
            return buffered.popleft()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiters[f"signal:{name}"] = future
        self._emit(ev.RunSuspended(waiting_for=f"signal:{name}"))
        try:
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            self._emit(ev.RunResumed(trigger="timeout"))
            raise TimeoutError(f"signal {name!r} did not arrive within {timeout}s") from None
        finally:
            self.waiters.pop(f"signal:{name}", None)

    def deliver_signal(self, name: str, payload: Any) -> None:
        """A signal for this classic run arrived (its event is already emitted)."""
        future = self.waiters.get(f"signal:{name}")
        if future is not None and not future.done():
            self._emit(ev.RunResumed(trigger="signal"))
            future.set_result(payload)
        else:
            self.signals.setdefault(name, deque()).append(payload)

    # -- tool calls ------------------------------------------------------------

    async def tool_call(
        self,
        call_id: str,
        tool: str,
        fn: Callable[..., Awaitable[Any] | Any],
        args: dict[str, Any],
        requires_approval: bool,
        timeout: float | None,
        retries: int,
        step: bool = True,
    ) -> ev.ToolResult:
        check_name(call_id, "call id")
        state = self.actor.state
        args = normalize(args, f"args of tool call {call_id!r}", self.limit)
        known = state.tool_calls.get(call_id)
        if known is not None and known.get("run") != self.run:
            raise ValueError(f"call id {call_id!r} was already used by run {known.get('run')}")
        if known is None and call_id not in self.open_calls:
            self._emit(ev.ToolCalled(call_id=call_id, tool=tool, args=args))
            self.open_calls[call_id] = tool
        if requires_approval:
            decision = await self.approval(call_id, tool, args, timeout)
            if not decision.approved:
                return self._tool_result(call_id, "denied", None, decision.reason or "denied")
        if known is not None and known["status"] != "called":  # recorded before a restart
            if step:
                self.position += 1
            else:  # replayed, so that what it did takes the same positions again
                try:
                    value = fn(**args)
                    if inspect.isawaitable(value):
                        await value
                except Exception:
                    pass  # the recorded result counts
            return ev.ToolResult(
                call_id=call_id,
                status=known["status"],
                result=known.get("result"),
                error=known.get("error"),
            )
        if not step:
            try:
                value = fn(**args)
                if inspect.isawaitable(value):
                    value = await value
                result = normalize(value, f"result of tool call {call_id!r}", self.limit)
            except Exception as exc:
                return self._tool_result(call_id, "error", None, describe_error(exc))
            return self._tool_result(call_id, "success", result, None)
        try:
            result = await self.step(f"tool:{tool}", fn, (), args, retries, 0.1)
        except StepError as exc:
            return self._tool_result(call_id, "error", None, exc.error)
        return self._tool_result(call_id, "success", result, None)

    def _tool_result(
        self, call_id: str, status: str, result: Any, error: str | None
    ) -> ev.ToolResult:
        data = ev.ToolResult(call_id=call_id, status=status, result=result, error=error)
        if (
            self.open_calls.pop(call_id, None) is not None
            or call_id not in self.actor.state.tool_calls
        ):
            self._emit(data)
        return data

    # -- calls -----------------------------------------------------------------

    async def call(
        self, type: str, id: str, payload: Any, mode: str | None, timeout: float | None
    ) -> Any:
        address = make_address(type, id)
        if address == self.ctx.address:
            raise ValueError(f"{address} cannot call itself: the call would wait for its own run")
        self.actor.rt.registry.get(type)
        check_mode(mode)
        if timeout is not None and timeout <= 0:
            raise ValueError(f"call to {address}: timeout must be positive, got {timeout}")
        position = self.position
        self.position += 1
        call = f"{self.run}:{position}"
        entry = self.journal.get("calls", {}).get(call) if self.durable else None
        if self.durable:
            step = self.journal["steps"].get(str(position))
            if step is not None:
                raise JournalMismatch(self.run, position, step["name"], f"call {address}")
        if entry is not None:
            if entry["address"] != address:
                raise JournalMismatch(
                    self.run, position, f"call {entry['address']}", f"call {address}"
                )
            if entry["status"] != "waiting":
                return call_outcome(address, entry)
        else:
            value = normalize(payload, f"payload of call to {address}", self.limit)
            spawned = ev.ChildSpawned(address=address, payload=value, call=call)
            envelope = Envelope(
                address=address,
                payload=value,
                source=self.ctx.address,
                mode=mode,
                reply_to=self.ctx.address,
                name=call,
            )
            if self.durable:
                events: list[ev.EventData] = [spawned]
                if timeout is not None:
                    events.append(self._timeout(f"call:{call}", timeout, call=call))
                await self._commit_now(events, [envelope])
                entry = self.journal.get("calls", {}).get(call)
                if entry is not None and entry["status"] != "waiting":
                    return call_outcome(address, entry)
            else:
                self._emit(spawned)
                self.writer.send(envelope)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters[f"call:{call}"] = future
        self.calls[call] = address
        try:  # durable: the timeout is the durable timer armed above
            async with asyncio.timeout(None if self.durable else timeout):
                answer = await future
        except TimeoutError:
            raise TimeoutError(f"call to {address} was not answered within {timeout}s") from None
        finally:
            self.waiters.pop(f"call:{call}", None)
            if future.done() and not future.cancelled():  # else the child's run is cancelled
                self.calls.pop(call, None)
        return call_outcome(address, answer)

    def answer(self, call: str, entry: dict[str, Any]) -> bool:
        """The answer to a call this run waits for in memory arrived (and is recorded)."""
        future = self.waiters.get(f"call:{call}")
        if future is None or future.done():
            return False
        future.set_result(entry)
        return True
