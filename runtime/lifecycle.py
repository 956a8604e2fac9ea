"""The async context manager shape shared by long-lived objects (runtime, stores)."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class AsyncResource:
    """`async with obj:` opens it and closes it; both idempotent, defined by subclasses."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
