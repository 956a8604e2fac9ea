"""`@tool`: schema from annotations, description from the docstring, argument checks."""

from __future__ import annotations

from typing import Literal

import msgspec
import pytest

from wakeful.entities import InvalidToolCall, Tool, tool


class Point(msgspec.Struct):
    x: float
    y: float


@tool(requires_approval=True)
async def delete_file(path: str, force: bool = False) -> str:
    """Delete a file."""
    return f"deleted {path}{' (forced)' if force else ''}"


@tool
def nearest(to: Point, unit: Literal["m", "km"] = "m", limit: int = 3) -> list[str]:
    """Find the places nearest to a point.

    Returns their names.
    """
    return [f"{to.x},{to.y} in {unit}"] * limit


def test_schema_and_description_come_from_the_function() -> None:
    assert isinstance(delete_file, Tool) and delete_file.requires_approval
    assert delete_file.description == "Delete a file."
    assert delete_file.parameters == {
        "type": "object",
        "properties": {"path": {"type": "string"}, "force": {"type": "boolean", "default": False}},
        "required": ["path"],
        "additionalProperties": False,
    }
    spec = nearest.spec()
    assert spec["function"]["name"] == "nearest"
    assert spec["function"]["description"].startswith("Find the places nearest to a point.")
    params = spec["function"]["parameters"]
    assert params["properties"]["unit"] == {"enum": ["km", "m"], "default": "m"}  # sorted
    assert params["properties"]["to"] == {"$ref": "#/$defs/Point"}
    assert params["$defs"]["Point"]["required"] == ["x", "y"]
    assert not nearest.requires_approval


async def test_validated_arguments_call_the_tool() -> None:
    kwargs = delete_file.validate('{"path": "/tmp/a"}')
    assert kwargs == {"path": "/tmp/a", "force": False}
    assert await delete_file(**kwargs) == "deleted /tmp/a"
    args = nearest.validate({"to": {"x": 1, "y": 2}, "limit": 1})
    assert await nearest(**args) == ["1.0,2.0 in m"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({}, "missing required field `path`"),
        ({"path": 3}, "Expected `str`, got `int` - at `$.path`"),
        ({"path": "a", "recursive": True}, "unknown field `recursive`"),
    ],
)
def test_bad_arguments_say_what_is_wrong(args: object, message: str) -> None:
    with pytest.raises(InvalidToolCall) as err:
        delete_file.validate(args)
    assert message in str(err.value) and err.value.tool == "delete_file"


def test_tools_must_be_describable() -> None:
    def nodoc(x: int) -> int:
        return x

    with pytest.raises(ValueError, match="docstring"):
        tool(nodoc)

    def untyped(x):  # type: ignore[no-untyped-def]
        """Untyped."""

    with pytest.raises(ValueError, match="needs a type annotation"):
        tool(untyped)
    with pytest.raises(ValueError, match="letters, digits"):
        tool(name="bad name")(nearest.fn)
