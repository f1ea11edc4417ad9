"""TableState: a partition's state in the shared table, read back as the scorer's StateSource, and state of the
previous layout (whole JSON ledgers keyed by bare video id) refused with a message saying what it is."""

from __future__ import annotations

import pytest

from stream_app.domain.errors import StateFormatError
from stream_app.domain.partition import StateWrite
from stream_app.domain.partitioning import partition_for
from stream_app.streaming.tables import TableState, head_key, meta_key, segment_key

PARTITIONS = 4


def video_on(partition: int) -> str:
    return next(f"v{n}" for n in range(1000) if partition_for(f"v{n}".encode(), PARTITIONS) == partition)


def test_a_write_is_read_back_by_its_partition_only() -> None:
    table: dict[bytes, bytes] = {}
    zero, one = TableState(table, 0, PARTITIONS), TableState(table, 1, PARTITIONS)
    zero.write(StateWrite(segments=[(0, b"seg0"), (1, b"seg1")], heads=[(video_on(0), b"head")], meta=b"meta0"))
    one.write(StateWrite(segments=[(0, b"other")], meta=b"meta1"))
    assert sorted(zero.segments()) == [b"seg0", b"seg1"] and list(one.segments()) == [b"other"]
    assert zero.head(video_on(0)) == b"head" and zero.meta() == b"meta0" and one.meta() == b"meta1"
    zero.write(StateWrite(segments=[(0, None)], dropped=[1]))  # a rewrite to nothing, and a dropped segment
    assert list(zero.segments()) == [] and segment_key(0, 0) not in table and segment_key(1, 0) in table
    assert {head_key(video_on(0)), meta_key(0), meta_key(1)} <= set(table)


def test_state_of_the_previous_layout_on_this_partition_is_refused() -> None:
    old_video = video_on(2)
    table = {old_video.encode(): b'{"video_id": "%s", "version": 3}' % old_video.encode()}
    assert list(TableState(table, 1, PARTITIONS).segments()) == []  # another partition's keys are not its business
    with pytest.raises(StateFormatError, match="previous layout"):
        TableState(table, 2, PARTITIONS).segments()
