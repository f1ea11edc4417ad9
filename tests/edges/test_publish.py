"""publish, pure parts: the light per-line check and the operator's summary line."""

from __future__ import annotations

import pytest

from stream_app.domain.events import InputTopic
from stream_app.edges.producer import EncodedEvent
from stream_app.edges.publish import PublishReport, check_line


@pytest.mark.parametrize(
    ("topic", "line", "expected"),
    [
        (InputTopic.VIEWS, b'{"video_id":"v1","ts":1}', EncodedEvent(b"v1", b'{"video_id":"v1","ts":1}')),
        # The line's own bytes are sent, spacing and key order included (replays stay byte-exact).
        (InputTopic.VIEWS, b'{"ts": 1, "video_id": "v1"}', EncodedEvent(b"v1", b'{"ts": 1, "video_id": "v1"}')),
        (InputTopic.PROFILES, b'{"creator_id":"c\\u00e9"}', EncodedEvent(b"c\xc3\xa9", b'{"creator_id":"c\\u00e9"}')),
        (InputTopic.VIEWS, b'{"video_id":"v1"', "not valid JSON"),
        (InputTopic.VIEWS, b"\xff\xfe", "not valid JSON"),
        (InputTopic.VIEWS, b'[{"video_id":"v1"}]', "not a JSON object (got array)"),
        (InputTopic.VIEWS, b'"v1"', "not a JSON object (got string)"),
        (InputTopic.VIEWS, b"42", "not a JSON object (got number)"),
        (InputTopic.VIEWS, b"null", "not a JSON object (got null)"),
        (InputTopic.VIEWS, b"true", "not a JSON object (got boolean)"),
        (InputTopic.VIEWS, b'{"creator_id":"c1"}', "video_id: missing"),
        (InputTopic.INTERACTIONS, b'{"video_id":7}', "video_id: must be a non-empty string"),
        (InputTopic.INTERACTIONS, b'{"video_id":""}', "video_id: must be a non-empty string"),
        (InputTopic.PROFILES, b'{"video_id":"v1"}', "creator_id: missing"),
    ],
)
def test_check_line(topic: InputTopic, line: bytes, expected: EncodedEvent | str) -> None:
    checked = check_line(line, topic, max_bytes=1000)
    if isinstance(expected, str):
        assert isinstance(checked, str) and checked.startswith(expected)
    else:
        assert checked == expected


def test_check_line_refuses_what_no_record_can_carry() -> None:
    line = b'{"video_id":"v1","p":"' + b"x" * 100 + b'"}'
    assert len(line) == 124
    assert isinstance(check_line(line, InputTopic.VIEWS, max_bytes=124), EncodedEvent)
    assert check_line(line, InputTopic.VIEWS, max_bytes=123) == (
        "124 bytes, more than the 123 bytes one record can carry"
    )


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
