"""The records of the internal device topics: one typed definition each, positional on the wire, and the records
of the previous format still read."""

from __future__ import annotations

import pytest

from stream_app.domain import jsoncodec
from stream_app.domain.device_records import DeviceAck, DeviceFlag, DeviceFlags, DeviceView, DeviceViews
from stream_app.domain.errors import SerializationError

VIEWS = [DeviceView("d1", "v1", "e1", "u1", 1_000, 8_000), DeviceView("d2", "v2", "e2", "u2", 2_000, 0)]


def test_device_views_round_trip_by_column() -> None:
    record = DeviceViews.of(3, 2_000, False, VIEWS)
    assert jsoncodec.loads(record.to_bytes()) == [
        1,  # wire version
        3,
        2_000,
        False,
        ["d1", "d2"],
        ["v1", "v2"],
        ["e1", "e2"],
        ["u1", "u2"],
        [1_000, 2_000],
        [8_000, 0],
    ]
    decoded = DeviceViews.from_bytes(record.to_bytes())
    assert list(decoded.views()) == VIEWS and len(decoded) == 2
    assert (decoded.source, decoded.through_ts, decoded.drained) == (3, 2_000, False)


def test_a_progress_report_carries_no_views() -> None:
    record = DeviceViews.from_bytes(DeviceViews.of(0, -1, True, []).to_bytes())
    assert (record.source, record.through_ts, record.drained, len(record)) == (0, -1, True, 0)


def test_device_views_of_the_previous_formats_are_read() -> None:
    old = {"video_id": "v1", "event_id": "e1", "viewer_id": "u1", "device_id": "d1", "ts": 1_000}
    record = DeviceViews.from_bytes(jsoncodec.dumps({"source": 2, "through_ts": 5_000, "records": [old]}))
    # no watch time then: a view of unknown length takes no time on the screen
    assert (record.source, record.through_ts, list(record.views())) == (
        2,
        5_000,
        [DeviceView("d1", "v1", "e1", "u1", 1_000, 0)],
    )
    bare = DeviceViews.from_bytes(jsoncodec.dumps([old]))
    assert (bare.source, bare.through_ts, len(bare)) == (-1, -1, 1)


@pytest.mark.parametrize(
    "value",
    [
        b"42",
        b"not json",
        jsoncodec.dumps([1, 0, 5, False, ["d1"], ["v1"], ["e1"], ["u1"], [1, 2], [0]]),  # columns of two lengths
        jsoncodec.dumps([1, "0", 5, False, [], [], [], [], [], []]),  # a source that is not an integer
        jsoncodec.dumps([1, 0, 5, 1, [], [], [], [], [], []]),  # drained must be a boolean
        jsoncodec.dumps({"source": 1}),
    ],
)
def test_a_malformed_device_views_record_is_refused(value: bytes) -> None:
    with pytest.raises(SerializationError):
        DeviceViews.from_bytes(value)


def test_device_flags_round_trip_flags_then_acks() -> None:
    record = DeviceFlags(
        [DeviceFlag("v1", "e1", "device_overlap", "overlaps"), DeviceFlag("v2", "e2", "account_farm", "9th")],
        [DeviceAck(0, 70_000), DeviceAck(3, 65_000)],
    )
    assert jsoncodec.loads(record.to_bytes()) == [
        1,
        [["v1", "e1", "device_overlap", "overlaps"], ["v2", "e2", "account_farm", "9th"]],
        [[0, 70_000], [3, 65_000]],
    ]
    decoded = DeviceFlags.from_bytes(record.to_bytes())
    assert list(decoded.flags) == list(record.flags) and list(decoded.acks) == list(record.acks)


def test_device_flags_of_the_previous_format_are_read_as_device_burst() -> None:
    flags = DeviceFlags.from_bytes(jsoncodec.dumps([{"video_id": "v1", "event_id": "e1", "detail": "61 views"}]))
    assert list(flags.flags) == [DeviceFlag("v1", "e1", "device_burst", "61 views")] and not flags.acks
    acks = DeviceFlags.from_bytes(jsoncodec.dumps([{"ack": 2, "watermark": 9_000}]))
    assert list(acks.acks) == [DeviceAck(2, 9_000)] and not acks.flags


@pytest.mark.parametrize(
    "value",
    [
        jsoncodec.dumps([1, [["v1", "e1", "velocity_burst", "x"]], []]),  # not a device rule's reason
        jsoncodec.dumps([1, [["v1", "e1"]], []]),
        jsoncodec.dumps([1, [], [[0, "late"]]]),
        jsoncodec.dumps({"flags": []}),
    ],
)
def test_a_malformed_device_flags_record_is_refused(value: bytes) -> None:
    with pytest.raises(SerializationError):
        DeviceFlags.from_bytes(value)


def test_a_records_views_of_one_video_share_its_id() -> None:
    """A device keeps its views' video ids for minutes: one str per distinct video of a record, not per view."""
    views = [DeviceView(f"dev{n}", f"vid{n % 2}", f"e{n}", f"u{n}", 1_000 + n, 5_000) for n in range(6)]
    back = DeviceViews.from_bytes(DeviceViews.of(0, 1_005, False, views).to_bytes())
    assert list(back.views()) == views
    assert back.video_ids[0] is back.video_ids[2] is back.video_ids[4]
    assert back.video_ids[1] is back.video_ids[3] and back.video_ids[0] is not back.video_ids[1]
