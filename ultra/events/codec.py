"""Bytes <-> events: encoding, the strict decode of the current version, and the upgrade
of older versions (ultra/events/schema.py says what each version holds)."""

from __future__ import annotations

import msgspec

from ultra.events.schema import IDENTITY_FIELDS, KNOWN_VERSIONS, SCHEMA_VERSION, Event

__all__ = ["decode", "decode_current", "encode", "from_builtins", "require_identity", "upgrade"]

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)
_any_decoder = msgspec.json.Decoder()
# The result fields that version 1 kept flat on `test.completed`.
_V1_RESULT_FIELDS = ("outcome", "error_category", "turns", "tool_calls", "tool_coverage",
                     "required_tools", "assisted_turns")
_V1_METRICS = ("workflow_score", "phase2_score", "quality_score", "final_score")


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def upgrade(obj: dict) -> dict:
    """A decoded JSON event of an older version, in the current shape (same version)."""
    if obj.get("version") == 1 and obj.get("type") == "test.completed" and "result" not in obj:
        obj = dict(obj)
        result = {k: obj.pop(k) for k in _V1_RESULT_FIELDS if k in obj}
        result["metrics"] = {k: obj.pop(k) for k in _V1_METRICS if k in obj}
        obj["result"] = result
    return obj


def decode(data: bytes | str) -> Event:
    """Decode one known event, of any known version; raises msgspec.ValidationError or
    DecodeError otherwise. Current events take one strict pass; old ones are upgraded."""
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError:
        obj = _any_decoder.decode(data)
        if not isinstance(obj, dict) or obj.get("version") == SCHEMA_VERSION:
            raise
        return from_builtins(obj)


# `decode`'s first, strict pass alone (current events): one C call, no Python frame, for
# loops that decode every row; they fall back to `decode` on ValidationError.
decode_current = _decoder.decode


def from_builtins(obj: dict) -> Event:
    """A decoded JSON object as an event, upgraded from its version, fully validated."""
    return msgspec.convert(upgrade(obj), Event)  # type: ignore[arg-type]


def require_identity(obj: dict) -> str | None:
    """What is wrong with the identity of a decoded JSON event (None if nothing): bytes
    must carry them, or a re-import would mint new ones."""
    for name in IDENTITY_FIELDS:
        if name not in obj:
            return f"event without {name!r}"
    if not isinstance(obj["version"], int) or obj["version"] not in KNOWN_VERSIONS:
        return f"unknown schema version {obj['version']!r} (known: {', '.join(map(str, KNOWN_VERSIONS))})"
    return None
