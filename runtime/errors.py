"""The error hierarchy of wakeful: one root, structured attributes."""

from __future__ import annotations

from collections.abc import Iterable


class WakefulError(Exception):
    """Root of every error that wakeful raises on purpose."""


class InvalidAddress(WakefulError, ValueError):
    """An address, entity type, entity id or name does not follow its rule."""

    def __init__(self, value: str, rule: str) -> None:
        super().__init__(rule)
        self.value = value
        self.rule = rule


class InvalidPayload(WakefulError, TypeError):
    """A payload, state value or result cannot be encoded as JSON."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} is not JSON-serialisable: {reason}")
        self.what = what
        self.reason = reason


class PayloadTooLarge(WakefulError, ValueError):
    """An encoded payload is larger than the configured limit."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(
            f"{what} is {size} bytes encoded as JSON; the limit is {limit} bytes "
            "(RuntimeConfig.max_payload)"
        )
        self.what = what
        self.size = size
        self.limit = limit


class NotFound(WakefulError, LookupError):
    """Something that was asked for by name or id does not exist."""


class UnknownEntityType(NotFound):
    """A message was addressed to an entity type that no handler is registered for."""

    def __init__(self, type: str, known: Iterable[str]) -> None:
        self.type = type
        self.known = sorted(known)
        listed = ", ".join(self.known) if self.known else "none"
        super().__init__(f"no entity type {type!r} is registered; registered types: {listed}")


class ConcurrencyError(WakefulError):
    """A commit expected the stream at one seq and found it at another; nothing was written."""

    def __init__(self, address: str, expected: int, actual: int) -> None:
        super().__init__(
            f"{address}: commit expected the stream at seq {expected} but it is at {actual}; "
            "another writer owns the entity (reload and retry)"
        )
        self.address = address
        self.expected = expected
        self.actual = actual


class JournalMismatch(WakefulError):
    """A resumed durable run asked for a different step than the one recorded."""

    def __init__(self, run: str, position: int, recorded: str, requested: str) -> None:
        super().__init__(
            f"run {run}: step {position} was recorded as {recorded!r} but the handler asked for "
            f"{requested!r}; durable handlers must call the same steps in the same order"
        )
        self.run = run
        self.position = position
        self.recorded = recorded
        self.requested = requested


class TerminalError(WakefulError):
    """Raised by user code to fail a step or run without retrying it. `reason` becomes
    the run's stop reason (`run.failed` reason) when it ends the run."""

    def __init__(self, message: str = "", *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class StepError(TerminalError):
    """A step failed for good (retries exhausted, or it raised `TerminalError`).

    `ctx.step` raises this, with the original exception as `__cause__` when it
    ran in this process; a durable run that replays a recorded failure raises it
    with the recorded message, so a handler sees the same error either way.
    """

    def __init__(self, name: str, error: str) -> None:
        super().__init__(f"step {name!r} failed: {error}")
        self.name = name
        self.error = error


class CallError(WakefulError):
    """`ctx.call` reached a child whose run did not complete (it failed or was cancelled)."""

    def __init__(self, address: str, status: str, error: str | None) -> None:
        super().__init__(f"call to {address} ended {status}: {error or 'no error given'}")
        self.address = address
        self.status = status
        self.error = error


class StoreClosed(WakefulError):
    """The store was used before `open()` or after `close()`."""
