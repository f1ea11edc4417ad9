"""Raw input record bytes -> [ValidEvent | InvalidEvent]: every SPEC §3 rule (schema, size, key, partition).

This is the hot path: one JSON parse per record, then a table-driven field check per event; it never raises.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from stream_app.domain import jsoncodec
from stream_app.domain.errors import SerializationError
from stream_app.domain.events import (
    KNOWN_KINDS,
    KNOWN_SOURCES,
    STANDINGS,
    CreatorProfile,
    Event,
    InputTopic,
    InteractionEvent,
    ViewEvent,
)

MAX_RECORD_BYTES = 1_048_576  # SPEC §3: a record (object or envelope) is at most 1 MiB
MAX_EVENT_BYTES = 65_536  # SPEC §3: an event is at most 64 KiB as serialized
MAX_ENVELOPE_EVENTS = 1000  # SPEC §3: an envelope holds 1-1,000 events
MAX_ID_CODEPOINTS = 128  # SPEC §3: identifiers are 1-128 code points
MAX_TS = 2**53  # SPEC §3: 0 <= ts < 2^53 (exact in a double, so any JSON reader keeps it)

# Longest string shown verbatim in an error; longer ones are cut so a DLQ error stays readable and bounded.
_SHOWN_CHARS = 40
_REGION = re.compile(r"[A-Z]{2}")


# ValidEvent, InvalidEvent: NamedTuples (built per event, see domain/events.py). Their `index` field shadows
# tuple.index, which nothing here calls.
class ValidEvent(NamedTuple):
    event: Event
    index: int | None  # type: ignore[assignment]  # None for a single-object record; 0..n-1 in an envelope


class InvalidEvent(NamedTuple):
    index: int | None  # type: ignore[assignment]  # None for an object record or a record that is no envelope
    error: str  # names the field and the reason
    value: bytes  # original record bytes (index None), or the envelope element re-serialized


DecodedEvent = ValidEvent | InvalidEvent
PartitionFor = Callable[[bytes, int], int]  # (key bytes, partition_count) -> partition (Kafka murmur2)


def describe(value: object) -> str:
    """Render a JSON value for an error message, in JSON's words and bounded in length."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is str:
        if len(value) > _SHOWN_CHARS:
            return f"a string of {len(value)} code points starting {value[:_SHOWN_CHARS]!r}"
        return repr(value)
    if type(value) is list:
        return f"an array of {len(value)} elements"
    if type(value) is dict:
        return "an object"
    return repr(value)  # int or float: repr keeps 1.0 distinct from 1, which is the point of the message


# --- field checks: each returns None when the value is acceptable, else the reason (with "got ...") ---


def _identifier(value: object) -> str | None:
    if type(value) is str and 0 < len(value) <= MAX_ID_CODEPOINTS:
        return None
    return f"must be a string of 1-{MAX_ID_CODEPOINTS} code points, got {describe(value)}"


def _timestamp(value: object) -> str | None:
    # type() rather than isinstance(): True is an int in Python but not a JSON integer.
    if type(value) is int and 0 <= value < MAX_TS:
        return None
    return f"must be an integer with 0 <= ts < 2**53 (epoch ms), got {describe(value)}"


def _non_negative(value: object) -> str | None:
    if type(value) is int and value >= 0:
        return None
    return f"must be an integer >= 0, got {describe(value)}"


def _positive(value: object) -> str | None:
    if type(value) is int and value > 0:
        return None
    return f"must be an integer > 0, got {describe(value)}"


def _region(value: object) -> str | None:
    # fullmatch, not match with $: "$" would accept a trailing newline ("US\n").
    if type(value) is str and _REGION.fullmatch(value) is not None:
        return None
    return f"must be two capital letters A-Z, got {describe(value)}"


def _flag(value: object) -> str | None:
    if type(value) is bool:
        return None
    return f"must be true or false, got {describe(value)}"


def _standing(value: object) -> str | None:
    if type(value) is str and value in STANDINGS:
        return None
    return f"must be one of good|restricted|banned, got {describe(value)}"


FieldCheck = Callable[[object], str | None]


@dataclass(frozen=True, slots=True)
class _Schema:
    """One topic's event type: fields in dataclass order with their checks, the field that keys it, and `accept`:
    the same checks in one expression, which builds the event when every field passes and says None otherwise
    (the field-by-field checks then name the first failure). Valid events are the common case."""

    build: Callable[..., Event]
    checks: tuple[tuple[str, FieldCheck], ...]
    key_field: str
    accept: Callable[[dict[str, object]], Event | None]


def _schema(
    build: type[Event],
    key_field: str,
    checks: dict[str, FieldCheck],
    accept: Callable[[dict[str, object]], Event | None],
) -> _Schema:
    """Order the checks as the dataclass orders its fields: that is the order errors are reported in."""
    # Events are built positionally, so the order must come from the dataclass itself, never from the table.
    return _Schema(build, tuple((name, checks[name]) for name in build._fields), key_field, accept)


_CAPITALS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# One str object per known value, shared by every event that carries it: the JSON decoder makes a new str for
# each occurrence, and an accepted view is kept (with its event) until its clawback horizon passes, so a copy per
# event would cost about 100 bytes per remembered view (bench/RESULTS.md, Speed steps 14). Unknown values are
# kept as decoded (forward compatibility: any source or kind is valid, SPEC §3). _REGIONS holds every valid region
# (two capital letters A-Z, as _region checks field by field): the fast path's check and its shared str at once.
_SOURCES: dict[str, str] = {value: value for value in KNOWN_SOURCES}
_KINDS: dict[str, str] = {value: value for value in KNOWN_KINDS}
_REGIONS: dict[str, str] = {a + b: a + b for a in _CAPITALS for b in _CAPITALS}


def _accept_view(obj: dict[str, object]) -> Event | None:
    """ViewEvent when every field passes its check above (_identifier, _timestamp, ...), else None."""
    get = obj.get
    event_id, video_id, creator_id, viewer_id, device_id = (
        get("event_id"),
        get("video_id"),
        get("creator_id"),
        get("viewer_id"),
        get("device_id"),
    )
    ts, watch_ms, video_ms, source, region = get("ts"), get("watch_ms"), get("video_ms"), get("source"), get("region")
    if (
        type(event_id) is str
        and 0 < len(event_id) <= MAX_ID_CODEPOINTS
        and type(video_id) is str
        and 0 < len(video_id) <= MAX_ID_CODEPOINTS
        and type(creator_id) is str
        and 0 < len(creator_id) <= MAX_ID_CODEPOINTS
        and type(viewer_id) is str
        and 0 < len(viewer_id) <= MAX_ID_CODEPOINTS
        and type(device_id) is str
        and 0 < len(device_id) <= MAX_ID_CODEPOINTS
        and type(ts) is int
        and 0 <= ts < MAX_TS
        and type(watch_ms) is int
        and watch_ms >= 0
        and type(video_ms) is int
        and video_ms > 0
        and type(source) is str
        and 0 < len(source) <= MAX_ID_CODEPOINTS
        and type(region) is str
        and region in _REGIONS
    ):
        return ViewEvent(
            event_id,
            video_id,
            creator_id,
            viewer_id,
            device_id,
            ts,
            watch_ms,
            video_ms,
            _SOURCES.get(source, source),
            _REGIONS[region],
        )
    return None


def _accept_interaction(obj: dict[str, object]) -> Event | None:
    """InteractionEvent when every field passes its check above, else None."""
    get = obj.get
    event_id, video_id, creator_id, viewer_id, device_id = (
        get("event_id"),
        get("video_id"),
        get("creator_id"),
        get("viewer_id"),
        get("device_id"),
    )
    ts, kind = get("ts"), get("kind")
    if (
        type(event_id) is str
        and 0 < len(event_id) <= MAX_ID_CODEPOINTS
        and type(video_id) is str
        and 0 < len(video_id) <= MAX_ID_CODEPOINTS
        and type(creator_id) is str
        and 0 < len(creator_id) <= MAX_ID_CODEPOINTS
        and type(viewer_id) is str
        and 0 < len(viewer_id) <= MAX_ID_CODEPOINTS
        and type(device_id) is str
        and 0 < len(device_id) <= MAX_ID_CODEPOINTS
        and type(ts) is int
        and 0 <= ts < MAX_TS
        and type(kind) is str
        and 0 < len(kind) <= MAX_ID_CODEPOINTS
    ):
        return InteractionEvent(event_id, video_id, creator_id, viewer_id, device_id, ts, _KINDS.get(kind, kind))
    return None


def _accept_none(obj: dict[str, object]) -> Event | None:
    return None  # profiles are few: always the field-by-field path


_ID_FIELDS: dict[str, FieldCheck] = {
    "event_id": _identifier,
    "video_id": _identifier,
    "creator_id": _identifier,
    "viewer_id": _identifier,
    "device_id": _identifier,
    "ts": _timestamp,
}

# Unknown `source` and `kind` values are valid (forward compatibility, SPEC §3): only their shape is checked.
_SCHEMAS: dict[InputTopic, _Schema] = {
    InputTopic.VIEWS: _schema(
        ViewEvent,
        "video_id",
        {
            **_ID_FIELDS,
            "watch_ms": _non_negative,
            "video_ms": _positive,
            "source": _identifier,
            "region": _region,
        },
        _accept_view,
    ),
    InputTopic.INTERACTIONS: _schema(
        InteractionEvent, "video_id", {**_ID_FIELDS, "kind": _identifier}, _accept_interaction
    ),
    InputTopic.PROFILES: _schema(
        CreatorProfile,
        "creator_id",
        {
            "creator_id": _identifier,
            "followers": _non_negative,
            "views_30d": _non_negative,
            "adult": _flag,
            "standing": _standing,
            "ts": _timestamp,
        },
        _accept_none,
    ),
}

_MISSING = object()


def decode_record(
    topic: InputTopic,
    key: bytes | None,
    value: bytes | None,
    *,
    partition: int,
    partition_count: int,
    partition_for: PartitionFor,
) -> list[DecodedEvent]:
    """Decode one input record into its events. Never raises, for any input. Returns at least one item.

    A JSON object is one event (index None); a JSON array of 1-1000 elements is a batch envelope with one
    result per element (index i); anything else is one InvalidEvent with index None and the original bytes.
    """
    if value is None:
        return [InvalidEvent(None, "value: null (no record value), expected a JSON object or array", b"")]
    if len(value) > MAX_RECORD_BYTES:
        return [InvalidEvent(None, f"value: {len(value)} bytes, over the {MAX_RECORD_BYTES}-byte limit", value)]
    try:
        document = jsoncodec.loads(value)
    except SerializationError as exc:
        return [InvalidEvent(None, _unparseable(value, exc), value)]
    schema = _SCHEMAS[topic]
    if type(document) is dict:
        if len(value) > MAX_EVENT_BYTES:
            return [InvalidEvent(None, _oversized(len(value)), value)]
        judge = _Judge(schema, key, partition, partition_count, partition_for)
        return [judge.event(document, None, value)]
    if type(document) is list and 0 < len(document) <= MAX_ENVELOPE_EVENTS:
        judge = _Judge(schema, key, partition, partition_count, partition_for)
        return [judge.element(element, index, value) for index, element in enumerate(document)]
    if type(document) is list:
        reason = f"a batch envelope holds 1-{MAX_ENVELOPE_EVENTS} events, got {len(document)}"
        return [InvalidEvent(None, f"value: {reason}", value)]
    reason = f"must be a JSON object or an array of 1-{MAX_ENVELOPE_EVENTS} objects, got {describe(document)}"
    return [InvalidEvent(None, f"value: {reason}", value)]


def _unparseable(value: bytes, exc: SerializationError) -> str:
    # orjson reports bad UTF-8 as a parse error; decoding again (only on this failure path) tells them apart.
    try:
        value.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"value: not valid UTF-8 ({bad.reason} at byte {bad.start})"
    return f"value: not JSON ({exc})"


def _oversized(size: int) -> str:
    return f"event: {size} bytes serialized, over the {MAX_EVENT_BYTES}-byte limit"


class _Judge:
    """The per-record context (schema, key, partition) that every event of the record is judged against."""

    __slots__ = ("key", "partition", "partition_count", "partition_for", "schema")

    def __init__(
        self,
        schema: _Schema,
        key: bytes | None,
        partition: int,
        partition_count: int,
        partition_for: PartitionFor,
    ) -> None:
        self.schema = schema
        self.key = key
        self.partition = partition
        self.partition_count = partition_count
        self.partition_for = partition_for

    def element(self, element: object, index: int, record: bytes) -> DecodedEvent:
        """Judge one element of a batch envelope; an invalid one carries its own re-serialized bytes.

        An element holding only its schema's fields, all valid, is far under MAX_EVENT_BYTES (ids of at most 128
        code points, integers under 2^53): it is judged without being re-serialized, which is most of the cost of
        an element (the size is what the re-serialization is for). Any other element is re-serialized first, so
        the size is checked before the fields, as for an object record."""
        schema = self.schema
        if type(element) is dict and len(element) <= len(schema.checks):
            judged = self.event(element, index, b"")
            if type(judged) is ValidEvent:
                return judged
        try:
            encoded = jsoncodec.dumps(element)
        except SerializationError as exc:
            # orjson writes less nesting than it reads; such an element can only be shown as the whole record.
            return InvalidEvent(index, f"event: cannot be re-serialized ({exc}); value is the whole envelope", record)
        if type(element) is not dict:
            return InvalidEvent(index, f"event: must be a JSON object, got {describe(element)}", encoded)
        if len(encoded) > MAX_EVENT_BYTES:
            return InvalidEvent(index, _oversized(len(encoded)), encoded)
        return self.event(element, index, encoded)

    def event(self, obj: dict[str, object], index: int | None, original: bytes) -> DecodedEvent:
        """Check fields in schema order, then the record key, then the partition."""
        event = self.schema.accept(obj)
        if event is None:
            values: list[object] = []
            for name, check in self.schema.checks:
                field_value = obj.get(name, _MISSING)
                if field_value is _MISSING:
                    return InvalidEvent(index, f"{name}: missing", original)
                reason = check(field_value)
                if reason is not None:
                    return InvalidEvent(index, f"{name}: {reason}", original)
                values.append(field_value)
            event = self.schema.build(*values)
        routing_id = event.key
        routing_bytes = routing_id.encode("utf-8")
        # An object record must carry its id as key; an envelope's key is normally null and is only
        # compared when a producer set one anyway.
        if (index is None or self.key is not None) and self.key != routing_bytes:
            shown_key = "null" if self.key is None else describe(self.key.decode("utf-8", "backslashreplace"))
            error = f"key: record key {shown_key} differs from {self.schema.key_field} {describe(routing_id)}"
            return InvalidEvent(index, error, original)
        expected = self.partition_for(routing_bytes, self.partition_count)
        if expected != self.partition:
            error = (
                f"{self.schema.key_field}: {describe(routing_id)} maps to partition {expected}, "
                f"record arrived on partition {self.partition}"
            )
            return InvalidEvent(index, error, original)
        return ValidEvent(event, index)
