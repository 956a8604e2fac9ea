"""Entity addresses `/<type>/<id>` and the rules for their parts."""

from __future__ import annotations

import re

from .errors import InvalidAddress

TYPE_RULE = (
    "entity types are 1-64 characters: a lowercase letter, then lowercase letters, digits, _ or -"
)
ID_RULE = "entity ids are 1-128 characters of letters, digits and _-.:@"
NAME_RULE = "names are 1-128 characters of letters, digits and _-.:@"
ADDRESS_RULE = "addresses look like /<type>/<id>, e.g. /counter/c1"

_TYPE = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_ID = re.compile(r"[A-Za-z0-9_\-.:@]{1,128}")
_ID_CHAR = re.compile(r"[A-Za-z0-9_\-.:@]")


def _describe(value: str, allowed: re.Pattern[str], max_len: int) -> str:
    if not value:
        return "is empty"
    if len(value) > max_len:
        return f"has {len(value)} characters"
    for ch in value:
        if not allowed.fullmatch(ch):
            if ch == " ":
                return "has a space"
            return f"has the character {ch!r}"
    return "does not match"


def check_type(type: str) -> str:
    """Return `type` if it is a valid entity type, else raise `InvalidAddress`."""
    if not isinstance(type, str) or not _TYPE.fullmatch(type):
        if isinstance(type, str) and type and not type[0].islower():
            why = "does not start with a lowercase letter"
        elif isinstance(type, str):
            why = _describe(type, re.compile(r"[a-z0-9_-]"), 64)
        else:
            why = f"is a {builtin_type_name(type)}, not a string"
        raise InvalidAddress(str(type), f"entity type {type!r} {why}; {TYPE_RULE}")
    return type


def _check_token(value: str, what: str, rule: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        why = (
            _describe(value, _ID_CHAR, 128)
            if isinstance(value, str)
            else f"is a {builtin_type_name(value)}, not a string"
        )
        raise InvalidAddress(str(value), f"{what} {value!r} {why}; {rule}")
    return value


def check_id(id: str) -> str:
    """Return `id` if it is a valid entity id, else raise `InvalidAddress`."""
    return _check_token(id, "entity id", ID_RULE)


def check_name(name: str, what: str = "name") -> str:
    """Validate a timer or signal name (the same characters as entity ids)."""
    return _check_token(name, what, NAME_RULE)


def builtin_type_name(value: object) -> str:
    return type(value).__name__


def make_address(type: str, id: str) -> str:
    """Build `/<type>/<id>` from its parts, validating both."""
    return f"/{check_type(type)}/{check_id(id)}"


def parse_address(address: str) -> tuple[str, str]:
    """Split `/<type>/<id>` into `(type, id)`, or raise `InvalidAddress` naming the rule."""
    if not isinstance(address, str):
        raise InvalidAddress(
            str(address),
            f"address {address!r} is a {builtin_type_name(address)}, not a string; {ADDRESS_RULE}",
        )
    parts = address.split("/")
    if len(parts) != 3 or parts[0] != "":
        raise InvalidAddress(
            address, f"address {address!r} is not of the form /<type>/<id>; {ADDRESS_RULE}"
        )
    return check_type(parts[1]), check_id(parts[2])


def check_address(address: str) -> str:
    """Return `address` if valid, else raise `InvalidAddress`."""
    parse_address(address)
    return address
