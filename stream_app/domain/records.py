"""Every record the worker writes to an output topic, one typed definition each with its bytes on the wire:
Accrual (SPEC §7, `reward-accruals`), Settlement and Clawback (SPEC §5, `reward-settlements`), AuditRecord
(SPEC §4, `suspicious-events`) and DeadLetter (SPEC §3, `events-dlq`). `to_dict` gives the JSON object in the
SPEC's field order, `to_bytes` its bytes, `from_bytes` reads one back (readers, tests, the replay's ledger).

Raw Kafka bytes in a DeadLetter are carried as text when they are UTF-8, else as standard base64 with a
`*_encoding` marker.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, fields
from typing import Any

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
_EVENT_FIELDS: dict[type, tuple[str, ...]] = {cls: cls._fields for cls in (ViewEvent, InteractionEvent, CreatorProfile)}


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


@dataclass(frozen=True, slots=True)
class Accrual:
    """A video's running totals (SPEC §7): key video_id, compacted; the newest `version` wins."""

    video_id: str
    creator_id: str
    policy: str
    version: int
    settled_micros: int
    clawback_micros: int
    provisional_micros: int
    qualified_views: int
    views: int
    suspicious_views: int
    windows_settled: int
    eligible: bool
    updated_at: int
    currency: str = "USD"

    def to_dict(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "creator_id": self.creator_id,
            "currency": self.currency,
            "policy": self.policy,
            "version": self.version,
            "settled_micros": self.settled_micros,
            "clawback_micros": self.clawback_micros,
            "provisional_micros": self.provisional_micros,
            "qualified_views": self.qualified_views,
            "views": self.views,
            "suspicious_views": self.suspicious_views,
            "windows_settled": self.windows_settled,
            "eligible": self.eligible,
            "updated_at": self.updated_at,
        }

    def to_bytes(self) -> bytes:
        return jsoncodec.dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> Accrual:
        return cls(**jsoncodec.loads(data))


@dataclass(frozen=True, slots=True)
class Settlement:
    """One settled window of a video (SPEC §5), on `reward-settlements` keyed by video_id; readers de-duplicate on
    (video_id, window_start, kind)."""

    video_id: str
    creator_id: str
    window_start: int
    window_end: int
    qualified_views: int
    base_micros: int
    score: int
    completion_bps: int
    multiplier_bps: int
    settled_micros: int
    policy: str
    kind: str = "settlement"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: v for k, v in asdict(self).items() if k != "kind"}}

    def to_bytes(self) -> bytes:
        return jsoncodec.dumps(self.to_dict())


@dataclass(frozen=True, slots=True)
class Clawback:
    """Money taken back from a settled window (SPEC §5), on `reward-settlements`; readers de-duplicate on
    (video_id, window_start, kind, clawed_base_micros), the last only ever grows."""

    video_id: str
    creator_id: str
    window_start: int
    window_end: int
    base_micros: int
    clawed_base_micros: int
    multiplier_bps: int
    settled_micros: int
    clawback_micros: int
    policy: str
    kind: str = "clawback"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **{k: v for k, v in asdict(self).items() if k != "kind"}}

    def to_bytes(self) -> bytes:
        return jsoncodec.dumps(self.to_dict())


LedgerRecord = Settlement | Clawback


def ledger_record_from_bytes(data: bytes) -> LedgerRecord:
    """A `reward-settlements` record: a Settlement or a Clawback by its `kind`."""
    fields_ = jsoncodec.loads(data)
    kind = fields_.pop("kind")
    return Settlement(**fields_) if kind == "settlement" else Clawback(**fields_)


@dataclass(frozen=True, slots=True)
class AuditRecord:
    """Why an event was suspicious, late or clawed back (SPEC §4); identified by (source_topic, partition, offset,
    index)."""

    event: dict[str, object]
    source_topic: str
    partition: int
    offset: int
    index: int | None
    outcome: str
    reason: str
    detail: str
    detected_at: int

    def to_dict(self) -> dict[str, object]:
        return audit_record(**{f.name: getattr(self, f.name) for f in fields(self)})

    def to_bytes(self) -> bytes:
        return jsoncodec.dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> AuditRecord:
        return cls(**jsoncodec.loads(data))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An invalid input event (SPEC §3) with the original bytes and the error naming the field and the reason;
    identified by (source_topic, partition, offset, index)."""

    source_topic: str
    partition: int
    offset: int
    index: int | None
    key: bytes | None
    value: bytes
    error: str
    ts: int  # when it was dead-lettered

    def to_dict(self) -> dict[str, object]:
        return dead_letter(**{f.name: getattr(self, f.name) for f in fields(self)})

    def to_bytes(self) -> bytes:
        return jsoncodec.dumps(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> DeadLetter:
        """The record as written; a key or value cut to DEAD_LETTER_KEEP_BYTES comes back cut."""
        fields_ = jsoncodec.loads(data)
        return cls(
            source_topic=fields_["source_topic"],
            partition=fields_["partition"],
            offset=fields_["offset"],
            index=fields_["index"],
            key=_carried(fields_, "key"),
            value=_carried(fields_, "value") or b"",
            error=fields_["error"],
            ts=fields_["ts"],
        )


def _carried(fields_: dict[str, Any], name: str) -> bytes | None:
    text = fields_.get(name)
    if text is None:
        return None
    if fields_.get(f"{name}_encoding") == BASE64:
        return base64.b64decode(text)
    return str(text).encode("utf-8")
