"""The JetStream subject layout: partitions, escaped ids, per-entity subjects.

`wk.<partition>.<type>.<id>.ev` is an entity's log, `.in` its inbox, `.wake` the
target of its timers, `.tmr.<name>` its timer holders. Ids and names may hold
`.`, which separates subject tokens, so they are escaped; the escape round-trips
exactly.
"""

from __future__ import annotations

from wakeful.runtime.address import parse_address

PREFIX = "wk"

_ESCAPES = {"~": "~7E", ".": "~2E"}
_UNESCAPES = {v: k for k, v in _ESCAPES.items()}


def escape(token: str) -> str:
    """Make an id or a name usable as one subject token (`.` and `~` escaped)."""
    if "~" not in token and "." not in token:
        return token
    return "".join(_ESCAPES.get(ch, ch) for ch in token)


def unescape(token: str) -> str:
    """The inverse of `escape`."""
    if "~" not in token:
        return token
    out: list[str] = []
    i = 0
    while i < len(token):
        if token[i] == "~":
            code = token[i : i + 3]
            if code not in _UNESCAPES:
                raise ValueError(f"subject token {token!r} has a bad escape {code!r}")
            out.append(_UNESCAPES[code])
            i += 3
        else:
            out.append(token[i])
            i += 1
    return "".join(out)


def fnv1a32(data: bytes) -> int:
    """32-bit FNV-1a."""
    h = 0x811C9DC5
    for byte in data:
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def partition(type: str, id: str, partitions: int) -> int:
    """The partition of an entity: FNV-1a-32 of type + id, modulo the partition count."""
    return fnv1a32((type + id).encode()) % partitions


class Layout:
    """Subjects of one stream with `partitions` partitions."""

    def __init__(self, partitions: int) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be at least 1, got {partitions}")
        self.partitions = partitions

    def partition_of(self, address: str) -> int:
        type, id = parse_address(address)
        return partition(type, id, self.partitions)

    def base(self, address: str) -> str:
        type, id = parse_address(address)
        return f"{PREFIX}.{partition(type, id, self.partitions)}.{type}.{escape(id)}"

    def events(self, address: str) -> str:
        return self.base(address) + ".ev"

    def inbox(self, address: str) -> str:
        return self.base(address) + ".in"

    def wake(self, address: str) -> str:
        return self.base(address) + ".wake"

    def timer(self, address: str, name: str) -> str:
        return f"{self.base(address)}.tmr.{escape(name)}"

    def partition_inboxes(self, p: int) -> list[str]:
        """Filter subjects of partition `p`'s wake consumer."""
        return [f"{PREFIX}.{p}.*.*.in", f"{PREFIX}.{p}.*.*.wake"]

    @staticmethod
    def address_of(subject: str) -> str:
        """The entity address a `wk.<p>.<type>.<id>.…` subject belongs to."""
        parts = subject.split(".")
        if len(parts) < 5 or parts[0] != PREFIX:
            raise ValueError(f"{subject!r} is not a wakeful entity subject")
        return f"/{parts[2]}/{unescape(parts[3])}"
