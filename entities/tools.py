"""Tools an agent may call: `@tool` turns a function into a `Tool` whose JSON schema
comes from its annotations (through msgspec) and whose description is its docstring.

```python
@tool(requires_approval=True)
async def delete_file(path: str, force: bool = False) -> str:
    \"\"\"Delete a file.\"\"\"
```

`Tool.validate(args)` checks the arguments a model produced against that schema
and returns them as keyword arguments, or raises `InvalidToolCall` with a message
the model can read and act on.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable
from typing import Any, overload

import msgspec

from wakeful.runtime import WakefulError

__all__ = ["InvalidToolCall", "Tool", "tool"]

NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""Tool names as the OpenAI and Anthropic APIs accept them."""


class InvalidToolCall(WakefulError):
    """A model called an unknown tool, or with arguments that fail the tool's schema."""

    def __init__(self, tool: str, reason: str) -> None:
        super().__init__(f"tool {tool!r}: {reason}")
        self.tool = tool
        self.reason = reason


class Tool:
    """A function an agent can call, with its name, description and argument schema."""

    __slots__ = ("_args", "description", "fn", "name", "parameters", "requires_approval")

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        requires_approval: bool = False,
    ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        if not NAME.match(self.name):
            raise ValueError(
                f"tool name {self.name!r} is not allowed; use 1-64 letters, digits, _ or -"
            )
        self.description = description or inspect.cleandoc(fn.__doc__ or "").strip()
        if not self.description:
            raise ValueError(f"tool {self.name!r} needs a description: give it a docstring")
        self.requires_approval = requires_approval
        self._args = _args_struct(fn, self.name)
        self.parameters = _parameters(self._args)

    def __repr__(self) -> str:
        approval = ", requires_approval=True" if self.requires_approval else ""
        return f"Tool({self.name!r}{approval})"

    def spec(self) -> dict[str, Any]:
        """The tool as the Chat Completions API describes a function tool."""
        return function_spec(self.name, self.description, self.parameters)

    def validate(self, args: Any) -> dict[str, Any]:
        """`args` (a JSON object, or its text) checked against the schema, as keyword
        arguments; `InvalidToolCall` naming the field that is wrong otherwise."""
        if isinstance(args, str | bytes):
            try:
                args = msgspec.json.decode(args or b"{}")
            except msgspec.DecodeError as exc:
                raise InvalidToolCall(self.name, f"arguments are not valid JSON: {exc}") from None
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise InvalidToolCall(
                self.name, f"arguments must be a JSON object, got {type(args).__name__}"
            )
        try:
            value = msgspec.convert(args, self._args)
        except msgspec.ValidationError as exc:
            raise InvalidToolCall(self.name, f"invalid arguments: {exc}") from None
        return {f: getattr(value, f) for f in value.__struct_fields__}

    async def __call__(self, **kwargs: Any) -> Any:
        """Run the tool (sync or async) with validated keyword arguments."""
        result = self.fn(**kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result


def function_spec(name: str, description: str, parameters: dict[str, Any]) -> dict[str, Any]:
    """A function tool as the Chat Completions API describes it."""
    return {
        "type": "function",
        "function": {"name": name, "description": description, "parameters": parameters},
    }


def _args_struct(fn: Callable[..., Any], name: str) -> type[msgspec.Struct]:
    """A msgspec Struct type with one field per parameter of `fn`."""
    try:
        hints = typing.get_type_hints(fn)
    except NameError as exc:
        raise ValueError(f"tool {name!r}: cannot resolve an annotation: {exc}") from None
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise ValueError(
                f"tool {name!r}: parameter {param.name!r} must be a plain or keyword-only "
                "parameter (tools are called with keyword arguments)"
            )
        if param.name not in hints:
            raise ValueError(
                f"tool {name!r}: parameter {param.name!r} needs a type annotation "
                "(it becomes the tool's JSON schema)"
            )
        if param.default is inspect.Parameter.empty:
            fields.append((param.name, hints[param.name]))
        else:
            fields.append((param.name, hints[param.name], param.default))
    return msgspec.defstruct(f"{name}_arguments", fields, forbid_unknown_fields=True)


def _parameters(args: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON schema of the arguments, as one object schema (other definitions it
    refers to stay under `$defs`)."""
    schema = msgspec.json.schema(args)
    defs: dict[str, Any] = schema.pop("$defs", {})
    ref = schema.get("$ref", "").rsplit("/", 1)[-1]
    parameters: dict[str, Any] = dict(defs.pop(ref, schema))
    parameters.pop("title", None)
    parameters.setdefault("properties", {})
    parameters["additionalProperties"] = False
    if defs:
        parameters["$defs"] = defs
    return parameters


@overload
def tool(fn: Callable[..., Awaitable[Any]] | Callable[..., Any], /) -> Tool: ...


@overload
def tool(
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    requires_approval: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a `Tool` of a function: `@tool` or `@tool(requires_approval=True)`."""
    if fn is not None:
        return Tool(fn)

    def decorate(f: Callable[..., Any]) -> Tool:
        return Tool(f, name=name, description=description, requires_approval=requires_approval)

    return decorate
