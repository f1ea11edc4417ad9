"""Builders of the output records of SPEC §3/§4 (DeadLetter, AuditRecord) as plain dicts ready for jsoncodec.

Raw Kafka bytes are carried as text when they are UTF-8, else as standard base64 with a `*_encoding` marker.
"""

from __future__ import annotations

import base64
from dataclasses import fields

from stream_app.domain.events import CreatorProfile, Event, InteractionEvent, ViewEvent

BASE64 = "base64"  # the value of `key_encoding` / `value_encoding` when the bytes are not UTF-8

# Field names per event type, computed once: dataclasses.fields() and asdict() are too slow for the hot path.
_EVENT_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(f.name for f in fields(cls)) for cls in (ViewEvent, InteractionEvent, CreatorProfile)
}


def _as_text(data: bytes) -> tuple[str, bool]:
    """The bytes as text when they are UTF-8 (False), else as standard base64 (True)."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii"), True


def dead_letter(
    *,
    source_topic: str,
    partition: int,
    offset: int,
    index: int | None,
    key: bytes | None,
    value: bytes,
    error: str,
    ts: int,
) -> dict[str, object]:
    """A DeadLetter for `events-dlq` (SPEC §3); `ts` is when the event was dead-lettered, in epoch ms."""
    record: dict[str, object] = {
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "index": index,
        "key": None,
        "value": None,
        "error": error,
        "ts": ts,
    }
    if key is not None:
        record["key"], key_is_base64 = _as_text(key)
        if key_is_base64:
            record["key_encoding"] = BASE64
    record["value"], value_is_base64 = _as_text(value)
    if value_is_base64:
        record["value_encoding"] = BASE64
    return record


def event_to_dict(event: Event) -> dict[str, object]:
    """The event's fields, in dataclass order (the JSON object a producer would have sent)."""
    return {name: getattr(event, name) for name in _EVENT_FIELDS[type(event)]}


def audit_record(
    *,
    event: dict[str, object],
    source_topic: str,
    partition: int,
    offset: int,
    index: int | None,
    outcome: str,
    reason: str,
    detail: str,
    detected_at: int,
) -> dict[str, object]:
    """An AuditRecord for `suspicious-events` (SPEC §4): why an event was suspicious, late or clawed back."""
    return {
        "event": event,
        "source_topic": source_topic,
        "partition": partition,
        "offset": offset,
        "index": index,
        "outcome": outcome,
        "reason": reason,
        "detail": detail,
        "detected_at": detected_at,
    }
