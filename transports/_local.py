"""Pieces shared by the stores that live in one process (memory, SQLite).

- `Signals`: in-process notifications: live tails wait on them, the wake feed
  and the timer loop are driven by them.
- `Background`: a supervisor task owning an `asyncio.TaskGroup` for a store's
  long-lived loops, stopped by cancelling then awaiting.
- `tail_events`: the live tail built from `read` plus `Signals`.
- `run_timers`: the loop that moves due timers into inboxes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from wakeful.runtime.errors import StoreClosed
from wakeful.runtime.events import Event

log = logging.getLogger("wakeful.store")

TAIL_BATCH = 1000
OFFSET_WIDTH = 20


def format_offset(n: int) -> str:
    """A store offset: the integer zero-padded so that strings sort like numbers."""
    return f"{n:0{OFFSET_WIDTH}d}"


def parse_offset(offset: str | None, what: str = "offset") -> int:
    """The integer behind an offset string (0 for None); ValueError naming the rule."""
    if offset is None:
        return 0
    if isinstance(offset, str) and offset.isdigit() and len(offset) <= OFFSET_WIDTH:
        return int(offset)
    raise ValueError(
        f"{what} {offset!r} is not an offset of this store; use an Event.offset value "
        "(a string of digits) or None to start at the beginning"
    )


class Signals:
    """In-process notifications between a store's writers and its readers."""

    def __init__(self) -> None:
        self._tails: dict[str, asyncio.Event] = {}
        self._dirty: dict[str, None] = {}
        self._feed = asyncio.Event()
        self._timers = asyncio.Event()
        self.closed = False

    def committed(self, address: str) -> None:
        """New events for `address` are readable: wake its tails."""
        event = self._tails.pop(address, None)
        if event is not None:
            event.set()

    def waiter(self, address: str) -> asyncio.Event:
        """An event set at the next commit to `address` (take it before reading)."""
        event = self._tails.get(address)
        if event is None:
            event = self._tails[address] = asyncio.Event()
        return event

    def wake(self, address: str) -> None:
        """`address` has new inbox messages."""
        self._dirty[address] = None
        self._feed.set()

    def timers_changed(self) -> None:
        self._timers.set()

    async def wakes(self, initial: Callable[[], Awaitable[list[str]]]) -> AsyncIterator[str]:
        for address in await initial():
            self._dirty[address] = None
        while not self.closed:
            while self._dirty:
                address = next(iter(self._dirty))
                del self._dirty[address]
                yield address
            self._feed.clear()
            await self._feed.wait()

    async def wait_timers(self, delay: float | None) -> None:
        try:
            async with asyncio.timeout(delay):
                await self._timers.wait()
        except TimeoutError:
            pass

    def clear_timers(self) -> None:
        self._timers.clear()

    def close(self) -> None:
        self.closed = True
        for event in self._tails.values():
            event.set()
        self._tails.clear()
        self._feed.set()
        self._timers.set()


async def tail_events(
    read: Callable[[str, str | None, int | None], Awaitable[list[Event]]],
    signals: Signals,
    address: str,
    after: str | None,
    poll: float | None,
) -> AsyncIterator[Event]:
    """Read what is there after `after`, then wait for commits and read again.

    The waiter is taken before each read, so a commit between the read and the
    wait is never missed; reading by offset makes the result gap- and
    duplicate-free. `poll` bounds each wait, for writers in other processes.
    """
    last = after
    while not signals.closed:
        waiter = signals.waiter(address)
        batch = await read(address, last, TAIL_BATCH)
        for event in batch:
            yield event
            last = event.offset
        if len(batch) == TAIL_BATCH:
            continue
        if signals.closed:
            return
        try:
            async with asyncio.timeout(poll):
                await waiter.wait()
        except TimeoutError:
            pass


async def run_timers(
    next_due: Callable[[], Awaitable[float | None]],
    fire_due: Callable[[float], Awaitable[list[str]]],
    signals: Signals,
    poll: float | None,
) -> None:
    """Deliver due timers into their entities' inboxes, as soon as they are due."""
    while not signals.closed:
        signals.clear_timers()
        due = await next_due()
        now = time.time()
        if due is not None and due <= now:
            for address in await fire_due(now):
                signals.wake(address)
            continue
        timeout = None if due is None else due - now
        if poll is not None:
            timeout = poll if timeout is None else min(timeout, poll)
        await signals.wait_timers(timeout)


class Background:
    """Long-lived loops of a store, owned by one TaskGroup in a supervisor task."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._main: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None

    async def start(self, *loops: Callable[[], Coroutine[Any, Any, None]]) -> None:
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def supervise() -> None:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                for loop in loops:
                    tg.create_task(self._guard(loop), name=f"{self._name}-{loop.__name__}")
                ready.set_result(None)
                await asyncio.Event().wait()

        self._main = asyncio.create_task(supervise(), name=self._name)
        await ready

    async def _guard(self, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `loop`; if it fails, log and restart it, so one error stops nothing for good."""
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: %s failed; restarting it in 0.5s", self._name, loop.__name__)
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        main, self._main = self._main, None
        if main is None:
            return
        main.cancel()
        try:
            await main
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise


def closed_error(store: str) -> StoreClosed:
    return StoreClosed(f"{store} is not open; use it as `async with {store}(...)` or call open()")
