"""What a handler sees: the `Wake` that woke it and the `Context` of its turn."""

from __future__ import annotations

import contextvars
import datetime as _dt
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

import msgspec

from .address import check_name, make_address, parse_address
from .codec import normalize
from .events import ChildSpawned, TimerCancelled, TimerSet
from .ports import Envelope
from .registry import check_mode
from .state import EntityState, StateView

if TYPE_CHECKING:
    from .events import ToolResult
    from .registry import Registry
    from .run import RunDriver

T = TypeVar("T")

step_key_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "wakeful_step_key", default=None
)

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


class Decision(msgspec.Struct, frozen=True):
    """The answer to an approval request."""

    approved: bool
    reason: str | None = None


class Context:
    """A handler's view of its entity during one turn.

    Effects (state writes, sends, spawns, timers) are buffered here and
    committed atomically with the run's terminal event; if the handler raises,
    none of them happen.
    """

    __slots__ = (
        "_changes",
        "_driver",
        "_limit",
        "_ops",
        "_registry",
        "address",
        "id",
        "mode",
        "run",
        "state",
        "stop_reason",
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
        driver: RunDriver | None = None,
    ) -> None:
        self.address = address
        self.type, self.id = parse_address(address)
        self.run = run
        self.mode = mode
        self._registry = registry
        self._limit = max_payload
        self._driver = driver
        self._changes: dict[tuple[str, str], Any] = {}
        self._ops: list[Envelope | ChildSpawned | TimerSet | TimerCancelled] = []
        self.stop_reason: str | None = None
        """Why the run ended, recorded with `run.completed` and shown as the run's
        `reason` (an agent sets `end_turn` or `max_steps`); None by default."""
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
        _check_user_timer(name)
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
        _check_user_timer(name)
        self._ops.append(TimerCancelled(name=name))

    # -- runs: steps, text, approvals, signals, tool calls ---------------------

    def _run(self) -> RunDriver:
        if self._driver is None:
            raise RuntimeError("this Context has no run")
        return self._driver

    @overload
    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retries: int = 0,
        backoff: float = 0.1,
        **kwargs: Any,
    ) -> T: ...

    @overload
    async def step(
        self,
        name: str,
        fn: Callable[..., T],
        *args: Any,
        retries: int = 0,
        backoff: float = 0.1,
        **kwargs: Any,
    ) -> T: ...

    async def step(
        self,
        name: str,
        fn: Callable[..., Awaitable[T] | T],
        *args: Any,
        retries: int = 0,
        backoff: float = 0.1,
        **kwargs: Any,
    ) -> T:
        """Run `fn(*args, **kwargs)` as the step `name` and return its result.

        durable: `step.completed` with the result is committed before this
        returns, and after a restart the recorded result is returned without
        calling `fn` again. classic: `fn` is called and its event recorded in the
        background. A failure is retried `retries` times (after `backoff`,
        doubling); then, or at once for a `TerminalError`, `StepError` is raised.
        The result must be JSON-serialisable.
        """
        if retries < 0 or backoff < 0:
            raise ValueError("retries and backoff must not be negative")
        result: T = await self._run().step(name, fn, args, kwargs, retries, backoff)
        return result

    @property
    def step_key(self) -> str:
        """A stable idempotency key for the step running now:
        `<address>@<inbox offset of the run's message>:<position>`. The same on every
        attempt and after every restart, also when the process died before the run
        was first recorded. Use it for external effects."""
        key = step_key_var.get()
        if key is None:
            raise RuntimeError("ctx.step_key is only available inside a step")
        return key

    def emit_text(self, delta: str) -> None:
        """Stream `delta` to observers as `text.delta` (coalesced, in the background); the
        text is closed with `text.completed` when the step or the run ends, or `end_text()`."""
        self._run().emit_text(delta)

    def end_text(self) -> None:
        """Close the text being streamed with `text.completed`."""
        self._run().end_text()

    async def approval(
        self,
        call_id: str,
        *,
        tool: str | None = None,
        args: Any = None,
        timeout: float | None = None,
    ) -> Decision:
        """Ask for an approval and wait for `rt.approve(...)`; a timeout denies it with
        reason `timeout`. durable: the wait survives restarts (the handler runs again
        from the top when the decision comes). classic: the wait is in memory."""
        return await self._run().approval(call_id, tool, args, timeout)

    async def wait_signal(self, name: str, *, timeout: float | None = None) -> Any:
        """Wait for `rt.signal(address, name, payload)` and return the payload;
        `TimeoutError` after `timeout` seconds. Signals that arrive before the wait
        are kept for it."""
        return await self._run().wait_signal(name, timeout)

    async def tool_call(
        self,
        call_id: str,
        tool: str,
        fn: Callable[..., Awaitable[Any] | Any],
        args: dict[str, Any] | None = None,
        *,
        requires_approval: bool = False,
        approval_timeout: float | None = None,
        retries: int = 0,
        step: bool = True,
    ) -> ToolResult:
        """Record `tool.called`, ask for approval if needed, run `fn(**args)` as a step,
        and record `tool.result` (success, error or denied), which it returns.

        With `step=False`, `fn` is not a step: it is awaited as it is, and must itself be
        deterministic the way a durable handler is (its work in `ctx.step`, `ctx.call`,
        `ctx.tool_call`), since a durable run replays it; use it for a tool that calls
        another entity (`ctx.call`) or runs steps of its own."""
        return await self._run().tool_call(
            call_id, tool, fn, args or {}, requires_approval, approval_timeout, retries, step
        )

    async def call(
        self,
        type: str,
        id: str,
        payload: Any = None,
        *,
        mode: str | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send `payload` to the entity `/<type>/<id>` (spawning it if it is new) and wait
        for the run that message starts to end; return that run's result.

        Raises `CallError` when the child's run failed or was cancelled, and
        `TimeoutError` after `timeout` seconds. durable: the message is committed
        (`child.spawned`) before the wait and the answer (`child.finished`) is recorded
        in this run's journal, so after a restart the run resumes, the call returns the
        recorded answer or waits again, and the child is never messaged twice; the
        timeout is a durable timer. classic: the wait is in memory. Calls may run
        concurrently (`asyncio.gather`); a call the run leaves unanswered when it ends
        (cancelled, failed, or timed out) cancels the child's run.
        """
        return await self._run().call(type, id, payload, mode, timeout)


def _check_user_timer(name: str) -> None:
    check_name(name, "timer name")
    if name.startswith("wk:"):
        raise ValueError(f"timer name {name!r}: names starting with 'wk:' are the runtime's own")
