"""publish, pure parts: the per-line check (the worker's own validation) and the operator's summary line."""

from __future__ import annotations

import pytest

from stream_app.domain import jsoncodec
from stream_app.domain.events import InputTopic
from stream_app.edges.producer import EncodedEvent
from stream_app.edges.publish import PublishReport, check_line

VIEW = (
    b'{"event_id":"e1","video_id":"v1","creator_id":"c1","viewer_id":"u1","device_id":"d1","ts":1764000000000,'
    b'"watch_ms":12000,"video_ms":90000,"source":"for_you","region":"US"}'
)
PROFILE = b'{"creator_id":"c\\u00e9","followers":1,"views_30d":2,"adult":true,"standing":"good","ts":0}'


def with_field(line: bytes, name: str, value: bytes | None) -> bytes:
    """The event of `line` with field `name` set to the JSON text `value`, or removed (None)."""
    obj = jsoncodec.loads(line)
    if value is None:
        del obj[name]
    else:
        obj[name] = jsoncodec.loads(value)
    return jsoncodec.dumps(obj)


@pytest.mark.parametrize(
    ("topic", "line", "expected"),
    [
        (InputTopic.VIEWS, VIEW, EncodedEvent(b"v1", VIEW)),
        # The line's own bytes are sent, spacing, key order and unknown fields included (replays stay byte-exact).
        (
            InputTopic.VIEWS,
            b" " + VIEW[:-1] + b', "extra": [1]} ',
            EncodedEvent(b"v1", b" " + VIEW[:-1] + b', "extra": [1]} '),
        ),
        (InputTopic.PROFILES, PROFILE, EncodedEvent(b"c\xc3\xa9", PROFILE)),
        # the worker's own messages (domain/validation.py), so publish and the dead-letter topic agree
        (InputTopic.VIEWS, b'{"event_id": "e2", "video_id": "v2"}', "creator_id: missing"),
        (InputTopic.VIEWS, with_field(VIEW, "watch_ms", b"-5"), "watch_ms: must be an integer >= 0, got -5"),
        (InputTopic.VIEWS, with_field(VIEW, "ts", b"1.0"), "ts: must be an integer with 0 <= ts < 2**53"),
        (InputTopic.VIEWS, with_field(VIEW, "region", b'"usa"'), "region: must be two capital letters A-Z"),
        (InputTopic.VIEWS, with_field(VIEW, "video_id", None), "video_id: missing"),
        (InputTopic.VIEWS, with_field(VIEW, "video_id", b"7"), "video_id: must be a string of 1-128 code points"),
        (InputTopic.PROFILES, with_field(PROFILE, "adult", b'"yes"'), "adult: must be true or false"),
        (InputTopic.INTERACTIONS, VIEW, "kind: missing"),
        (InputTopic.VIEWS, b'{"video_id":"v1"', "value: not JSON"),
        (InputTopic.VIEWS, b"\xff\xfe", "value: not valid UTF-8"),
        (InputTopic.VIEWS, b"[" + VIEW + b"]", "not a JSON object (got array)"),
        (InputTopic.VIEWS, b'"v1"', "value: must be a JSON object or an array of 1-1000 objects, got 'v1'"),
        (InputTopic.VIEWS, b"null", "value: must be a JSON object"),
    ],
)
def test_check_line(topic: InputTopic, line: bytes, expected: EncodedEvent | str) -> None:
    checked = check_line(line, topic, max_bytes=100_000)
    if isinstance(expected, str):
        assert isinstance(checked, str) and checked.startswith(expected), checked
    else:
        assert checked == expected


def test_check_line_refuses_what_no_record_can_carry() -> None:
    assert isinstance(check_line(VIEW, InputTopic.VIEWS, max_bytes=len(VIEW)), EncodedEvent)
    assert check_line(VIEW, InputTopic.VIEWS, max_bytes=len(VIEW) - 1) == (
        f"{len(VIEW)} bytes, more than the {len(VIEW) - 1} bytes one record can carry"
    )
    big = VIEW[:-1] + b',"pad":"' + b"x" * 70_000 + b'"}'
    assert str(check_line(big, InputTopic.VIEWS, max_bytes=1_000_000)).startswith("event: ")  # over 64 KiB


@pytest.mark.parametrize(
    ("report", "summary"),
    [
        (
            PublishReport(read=10, sent_events=9, records=3, rejected=1, topic="video-views"),
            "read 10 lines: sent 9 events in 3 records to video-views, rejected 1",
        ),
        (
            PublishReport(read=1, sent_events=1, records=1, rejected=0, topic="p.creator-profiles"),
            "read 1 line: sent 1 event in 1 record to p.creator-profiles, rejected 0",
        ),
        (
            PublishReport(read=0, sent_events=0, records=0, rejected=0, topic="video-interactions"),
            "read 0 lines: sent 0 events in 0 records to video-interactions, rejected 0",
        ),
    ],
)
def test_summary(report: PublishReport, summary: str) -> None:
    assert report.summary() == summary
