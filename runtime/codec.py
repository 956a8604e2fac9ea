"""JSON normalisation of user values: payloads, state values, results."""

from __future__ import annotations

from typing import Any

import msgspec

from .errors import InvalidPayload, PayloadTooLarge

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder()

DEFAULT_MAX_PAYLOAD = 1 << 20


def normalize(value: Any, what: str, limit: int = DEFAULT_MAX_PAYLOAD) -> Any:
    """Return `value` as it will read back from the stream (plain JSON values).

    Raises `InvalidPayload` if it cannot be encoded as JSON and `PayloadTooLarge`
    if its encoding exceeds `limit` bytes. Normalising up front means what a
    handler sees in memory equals what a replay rebuilds (tuples become lists,
    non-string keys become strings).
    """
    if value is None or value is True or value is False:
        return value
    if type(value) is str and len(value) <= 1024 and len(value) * 6 + 2 <= limit:
        return value
    try:
        raw = _encoder.encode(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidPayload(what, str(exc)) from None
    if len(raw) > limit:
        raise PayloadTooLarge(what, len(raw), limit)
    return _decoder.decode(raw)


def encode_json(value: Any) -> bytes:
    """Encode a (normalised) value as JSON bytes."""
    return _encoder.encode(value)


def decode_json(raw: bytes | str) -> Any:
    """Decode JSON bytes into plain values."""
    return _decoder.decode(raw)
