"""Tests of the DeadLetter / AuditRecord builders and event_to_dict: exact shapes, base64, JSON round trip."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.domain import jsoncodec
from stream_app.domain.events import CreatorProfile, Event, InteractionEvent, ViewEvent
from stream_app.domain.records import DEAD_LETTER_KEEP_BYTES, audit_record, dead_letter, event_to_dict

VIEW_EVENT = ViewEvent("e1", "v1", "c1", "u1", "d1", 1_700_000_000_000, 6_000, 60_000, "for_you", "US")


def test_dead_letter_with_text_key_and_value() -> None:
    record = dead_letter(
        source_topic="video-views",
        partition=3,
        offset=42,
        index=None,
        key=b"v1",
        value=b'{"video_id": "v1"}',
        error="viewer_id: missing",
        ts=1_700_000_000_123,
    )
    assert record == {
        "source_topic": "video-views",
        "partition": 3,
        "offset": 42,
        "index": None,
        "key": "v1",
        "value": '{"video_id": "v1"}',
        "error": "viewer_id: missing",
        "ts": 1_700_000_000_123,
    }
    assert jsoncodec.loads(jsoncodec.dumps(record)) == record


def test_dead_letter_of_envelope_element_with_null_key() -> None:
    record = dead_letter(
        source_topic="video-interactions",
        partition=0,
        offset=7,
        index=2,
        key=None,
        value=b"5",
        error="event: must be a JSON object, got 5",
        ts=5,
    )
    assert jsoncodec.dumps(record) == (
        b'{"error":"event: must be a JSON object, got 5","index":2,"key":null,"offset":7,'
        b'"partition":0,"source_topic":"video-interactions","ts":5,"value":"5"}'
    )


def test_dead_letter_with_invalid_utf8_key_is_base64() -> None:
    record = dead_letter(
        source_topic="creator-profiles",
        partition=1,
        offset=9,
        index=None,
        key=b"\xff\x00c",
        value=b"{}",
        error="creator_id: missing",
        ts=10,
    )
    assert record == {
        "source_topic": "creator-profiles",
        "partition": 1,
        "offset": 9,
        "index": None,
        "key": "/wBj",
        "key_encoding": "base64",
        "value": "{}",
        "error": "creator_id: missing",
        "ts": 10,
    }


def test_dead_letter_with_invalid_utf8_value_is_base64() -> None:
    record = dead_letter(
        source_topic="video-views",
        partition=2,
        offset=0,
        index=None,
        key=b"v1",
        value=b"\xc3(\xfb\xff",
        error="value: not valid UTF-8 (invalid continuation byte at byte 0)",
        ts=11,
    )
    assert record == {
        "source_topic": "video-views",
        "partition": 2,
        "offset": 0,
        "index": None,
        "key": "v1",
        "value": "wyj7/w==",  # standard alphabet: '/' and '+' rather than '_' and '-'
        "value_encoding": "base64",
        "error": "value: not valid UTF-8 (invalid continuation byte at byte 0)",
        "ts": 11,
    }
    assert jsoncodec.loads(jsoncodec.dumps(record)) == record


def test_dead_letter_keeps_non_ascii_utf8_as_text_and_empty_value_as_empty_text() -> None:
    record = dead_letter(
        source_topic="video-views",
        partition=0,
        offset=1,
        index=None,
        key="vé".encode(),
        value=b"",
        error="e",
        ts=0,
    )
    assert (record["key"], record["value"]) == ("vé", "")
    assert "key_encoding" not in record and "value_encoding" not in record


@given(key=st.none() | st.binary(max_size=16), value=st.binary(max_size=32))
def test_dead_letter_bytes_are_recoverable_after_a_json_round_trip(key: bytes | None, value: bytes) -> None:
    record = jsoncodec.loads(
        jsoncodec.dumps(
            dead_letter(source_topic="t", partition=0, offset=0, index=None, key=key, value=value, error="e", ts=0)
        )
    )
    assert recover(record, "key") == key
    assert recover(record, "value") == value


def recover(record: dict[str, Any], name: str) -> bytes | None:
    text = record[name]
    if text is None:
        return None
    if record.get(f"{name}_encoding") == "base64":
        return base64.b64decode(text, validate=True)
    return str(text).encode("utf-8")


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            VIEW_EVENT,
            {
                "event_id": "e1",
                "video_id": "v1",
                "creator_id": "c1",
                "viewer_id": "u1",
                "device_id": "d1",
                "ts": 1_700_000_000_000,
                "watch_ms": 6_000,
                "video_ms": 60_000,
                "source": "for_you",
                "region": "US",
            },
        ),
        (
            InteractionEvent("e2", "v1", "c1", "u1", "d1", 5, "like"),
            {
                "event_id": "e2",
                "video_id": "v1",
                "creator_id": "c1",
                "viewer_id": "u1",
                "device_id": "d1",
                "ts": 5,
                "kind": "like",
            },
        ),
        (
            CreatorProfile("c1", 10_000, 100_000, False, "banned", 6),
            {
                "creator_id": "c1",
                "followers": 10_000,
                "views_30d": 100_000,
                "adult": False,
                "standing": "banned",
                "ts": 6,
            },
        ),
    ],
)
def test_event_to_dict_gives_fields_in_dataclass_order(event: Event, expected: dict[str, object]) -> None:
    result = event_to_dict(event)
    assert result == expected
    assert list(result) == list(expected)
    assert jsoncodec.loads(jsoncodec.dumps(result)) == expected


def test_audit_record_shape_and_round_trip() -> None:
    record = audit_record(
        event=event_to_dict(VIEW_EVENT),
        source_topic="video-views",
        partition=4,
        offset=100,
        index=3,
        outcome="suspicious",
        reason="viewer_repeat",
        detail="6th view of v1 by u1 within 600 s",
        detected_at=1_700_000_000_500,
    )
    assert record == {
        "event": {
            "event_id": "e1",
            "video_id": "v1",
            "creator_id": "c1",
            "viewer_id": "u1",
            "device_id": "d1",
            "ts": 1_700_000_000_000,
            "watch_ms": 6_000,
            "video_ms": 60_000,
            "source": "for_you",
            "region": "US",
        },
        "source_topic": "video-views",
        "partition": 4,
        "offset": 100,
        "index": 3,
        "outcome": "suspicious",
        "reason": "viewer_repeat",
        "detail": "6th view of v1 by u1 within 600 s",
        "detected_at": 1_700_000_000_500,
    }
    assert jsoncodec.loads(jsoncodec.dumps(record)) == record


def test_audit_record_with_null_index_serializes_it_as_null() -> None:
    record = audit_record(
        event={"creator_id": "c1"},
        source_topic="creator-profiles",
        partition=0,
        offset=1,
        index=None,
        outcome="late",
        reason="future_timestamp",
        detail="ts 400 s ahead of the record timestamp",
        detected_at=2,
    )
    assert jsoncodec.dumps(record) == (
        b'{"detail":"ts 400 s ahead of the record timestamp","detected_at":2,"event":{"creator_id":"c1"},'
        b'"index":null,"offset":1,"outcome":"late","partition":0,"reason":"future_timestamp",'
        b'"source_topic":"creator-profiles"}'
    )


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        (b"x" * (DEAD_LETTER_KEEP_BYTES + 1), "base64"),  # over the limit: cut, base64
        (b"\x01" * DEAD_LETTER_KEEP_BYTES, "base64"),  # UTF-8, but JSON escaping would make it 6 times longer
        (b"x" * DEAD_LETTER_KEEP_BYTES, None),  # at the limit, plain text: kept as it is
        (bytes(range(256)) * 5000, "base64"),  # over 1 MiB and not UTF-8
    ],
)
def test_a_dead_letter_always_fits_one_kafka_record(value: bytes, encoding: str | None) -> None:
    record = dead_letter(source_topic="t", partition=0, offset=0, index=None, key=value, value=value, error="e", ts=0)
    # each field at most 4/3 of what it keeps: with the rest, far under the broker's default 1 MiB record
    assert len(jsoncodec.dumps(record)) <= 2 * (DEAD_LETTER_KEEP_BYTES * 4 // 3 + 4) + 300
    for name in ("key", "value"):
        assert record.get(f"{name}_encoding") == encoding
        kept = recover(record, name)
        assert kept is not None and value.startswith(kept)
        if len(value) > DEAD_LETTER_KEEP_BYTES:
            assert record[f"{name}_truncated"] is True and record[f"{name}_bytes"] == len(value)
            assert len(kept) == DEAD_LETTER_KEEP_BYTES
        else:
            assert kept == value and f"{name}_truncated" not in record


def test_every_output_record_round_trips_through_its_bytes_in_spec_field_order() -> None:
    from stream_app.domain.records import (
        Accrual,
        AuditRecord,
        Clawback,
        DeadLetter,
        Settlement,
        ledger_record_from_bytes,
    )

    accrual = Accrual("v1", "c1", "v1-abc", 3, 8_000, 1_600, 1_000, 4, 9, 2, 1, True, 1_700)
    assert Accrual.from_bytes(accrual.to_bytes()) == accrual
    assert list(accrual.to_dict()) == [  # SPEC §7
        "video_id", "creator_id", "currency", "policy", "version", "settled_micros", "clawback_micros",
        "provisional_micros", "qualified_views", "views", "suspicious_views", "windows_settled", "eligible",
        "updated_at",
    ]  # fmt: skip
    settlement = Settlement("v1", "c1", 0, 3_600_000, 4, 4_000, 2, 7_500, 20_000, 8_000, "v1-abc")
    clawback = Clawback("v1", "c1", 0, 3_600_000, 4_000, 800, 20_000, 8_000, 1_600, "v1-abc")
    assert ledger_record_from_bytes(settlement.to_bytes()) == settlement
    assert ledger_record_from_bytes(clawback.to_bytes()) == clawback
    assert (settlement.to_dict()["kind"], clawback.to_dict()["kind"]) == ("settlement", "clawback")
    audit = AuditRecord({"event_id": "e1"}, "video-views", 2, 41, None, "suspicious", "viewer_repeat", "6 views", 9)
    assert AuditRecord.from_bytes(audit.to_bytes()) == audit
    for key, value in ((b"v1", b'{"video_id": "v1"}'), (None, b"\xff\xfe not utf-8")):
        dead = DeadLetter("video-views", 0, 7, 3, key, value, "ts: missing", 99)
        assert DeadLetter.from_bytes(dead.to_bytes()) == dead
