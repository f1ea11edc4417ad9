"""Malformed records, one kind per function: each takes a well-formed event and returns (record value, whether
the record is keyed by its video_id); the worker must dead-letter each as exactly one invalid event."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from stream_app.domain import jsoncodec


def _not_json(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    return rng.choice((b"<html><body>502 Bad Gateway</body></html>", b"video_id=abc&ts=12", b"{'ts': 1}")), False


def _invalid_utf8(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    return b'{"event_id": "\xff\xfe\xfd", "ts": ' + str(event["ts"]).encode() + b"}", False


def _truncated(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    data = jsoncodec.dumps(event)
    return data[: rng.randint(1, len(data) - 1)], True


def _missing_field(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    broken = dict(event)
    del broken[rng.choice(sorted(set(event) - {"video_id"}))]
    return jsoncodec.dumps(broken), True


def _wrong_type(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    broken = dict(event)
    field_name, value = rng.choice(
        (
            ("ts", event["ts"] + 0.5),
            ("ts", str(event["ts"])),
            ("viewer_id", 12345),
            ("device_id", None),
            ("event_id", True),
        )
        + ((("watch_ms", str(event["watch_ms"])), ("video_ms", True)) if "watch_ms" in event else ())
    )
    broken[field_name] = value
    return jsoncodec.dumps(broken), True


def _out_of_range(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    broken = dict(event)
    if "region" in event:
        broken.update(rng.choice(({"region": "usa"}, {"region": "U1"}, {"watch_ms": -1}, {"video_ms": 0})))
    else:
        broken["ts"] = -1
    return jsoncodec.dumps(broken), True


def _not_an_object(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    return rng.choice((b"[]", b"42", b'"view"', b"null", b"true")), False


MALFORMATIONS: tuple[Callable[[random.Random, dict[str, Any]], tuple[bytes, bool]], ...] = (
    _not_json,
    _invalid_utf8,
    _truncated,
    _missing_field,
    _wrong_type,
    _out_of_range,
    _not_an_object,
)
