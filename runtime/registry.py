"""The registry of entity types and their handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .address import check_type
from .errors import UnknownEntityType, WakefulError

if TYPE_CHECKING:
    from .context import Context, Wake

Handler = Callable[["Context", "Wake"], Awaitable[Any]]
H = TypeVar("H", bound=Handler)

MODES = ("classic", "durable")


def check_mode(mode: str | None, what: str = "mode") -> str | None:
    """Return `mode` if it is None, 'classic' or 'durable', else raise ValueError."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"{what} {mode!r} is not a mode; use 'classic' or 'durable'")
    return mode


class EntityType:
    """A registered entity type: its name, handler, default execution mode and metadata."""

    __slots__ = ("handler", "meta", "mode", "name")

    def __init__(
        self, name: str, handler: Handler, mode: str, meta: Mapping[str, Any] | None = None
    ) -> None:
        self.name = name
        self.handler = handler
        self.mode = mode
        self.meta: dict[str, Any] = dict(meta or {})
        """What the type tells interfaces about itself, e.g. `{"kind": "agent",
        "description": "..."}` for an agent (the OpenAI-compatible endpoint lists those)."""

    def __repr__(self) -> str:
        return f"EntityType({self.name!r}, mode={self.mode!r})"


class Registry:
    """Maps entity type names to handlers.

    ```python
    registry = Registry()

    @registry.entity("counter", mode="classic")
    async def counter(ctx: Context, wake: Wake) -> object: ...
    ```
    """

    def __init__(self) -> None:
        self._types: dict[str, EntityType] = {}

    def entity(
        self, type: str, *, mode: str = "classic", meta: Mapping[str, Any] | None = None
    ) -> Callable[[H], H]:
        """Register the decorated `async def handler(ctx, wake)` for entity `type`."""

        def decorate(handler: H) -> H:
            self.add(type, handler, mode=mode, meta=meta)
            return handler

        return decorate

    def add(
        self,
        type: str,
        handler: Handler,
        *,
        mode: str = "classic",
        meta: Mapping[str, Any] | None = None,
    ) -> EntityType:
        """Register `handler` for entity `type` (the non-decorator form); `meta` is free-form
        JSON-like metadata kept on the `EntityType`."""
        check_type(type)
        check_mode(mode, f"default mode of entity type {type!r}")
        if type in self._types:
            raise WakefulError(f"entity type {type!r} is already registered")
        if not callable(handler):
            raise TypeError(f"handler for {type!r} must be an async function, got {handler!r}")
        entity_type = EntityType(type, handler, mode, meta)
        self._types[type] = entity_type
        return entity_type

    def get(self, type: str) -> EntityType:
        """The registered type `type`, or `UnknownEntityType` listing the registered ones."""
        try:
            return self._types[type]
        except KeyError:
            raise UnknownEntityType(type, self._types) from None

    def __contains__(self, type: object) -> bool:
        return type in self._types

    @property
    def types(self) -> list[str]:
        """Names of the registered entity types, sorted."""
        return sorted(self._types)
