"""Builders of the output records of SPEC §3/§4 (DeadLetter, AuditRecord) as plain dicts ready for jsoncodec.

Raw Kafka bytes are carried as text when they are UTF-8, else as standard base64 with a `*_encoding` marker.
"""

from __future__ import annotations

import base64
from dataclasses import fields

from stream_app.domain import jsoncodec
from stream_app.domain.events import CreatorProfile, Event, InteractionEvent, ViewEvent

BASE64 = "base64"  # the value of `key_encoding` / `value_encoding` when the bytes are not UTF-8
# How much of a dead-lettered record's key and of its value a DeadLetter carries. An input record can be as large as
# the broker allows (1 MiB by default, or more), and its DeadLetter must still fit one Kafka record beside its own
# key, or writing it fails and stops the worker on that record again and again. So each field carries at most
# 256 KiB of the original bytes and takes at most 4/3 of that once encoded (text that JSON escaping would make
# longer goes as base64); anything longer is cut to its first 256 KiB, base64, with `*_truncated: true` and
# `*_bytes` (the original length). Two such fields and the rest stay far under 1 MiB.
DEAD_LETTER_KEEP_BYTES = 256 * 1024
_KEEP_ENCODED = DEAD_LETTER_KEEP_BYTES * 4 // 3
# JSON escapes a byte to at most 6 (\u00XX): shorter text cannot exceed the encoded bound and is not measured.
_ALWAYS_TEXT = _KEEP_ENCODED // 6

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
        _carry(record, "key", key)
    _carry(record, "value", value)
    return record


def _carry(record: dict[str, object], name: str, data: bytes) -> None:
    """Put raw bytes into a DeadLetter field: text, base64 with `{name}_encoding`, or cut (see the limit above)."""
    if len(data) > DEAD_LETTER_KEEP_BYTES:
        record[name] = base64.b64encode(data[:DEAD_LETTER_KEEP_BYTES]).decode("ascii")
        record[f"{name}_encoding"] = BASE64
        record[f"{name}_truncated"] = True
        record[f"{name}_bytes"] = len(data)
        return
    text, is_base64 = _as_text(data)
    if not is_base64 and len(data) > _ALWAYS_TEXT and len(jsoncodec.dumps(text)) > _KEEP_ENCODED:
        text, is_base64 = base64.b64encode(data).decode("ascii"), True
    record[name] = text
    if is_base64:
        record[f"{name}_encoding"] = BASE64


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
