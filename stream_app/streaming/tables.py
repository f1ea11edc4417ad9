"""The scoring state of each partition in one Faust table (changelog `{APP_ID}-video-state-changelog`).

One table holds, per partition of the event topics, the journal segments (each with the heads of the videos its
batch changed), the head keys of videos whose newest head is no longer in a live segment, and the partition's
meta (domain/partition.py StateWrite), so all of a batch's state goes to ONE changelog partition, in the order it
is written (domain/journal.py relies on it): usually one segment and the meta, whatever the batch touched.

Keys (the first byte, 0xFF, never starts a UTF-8 video id, so no key can be a bare video id of the previous
layout, which keyed whole ledgers by video id):
- ``0xFF h <video_id>``: a video's head written apart (when it left the worker's memory, or the segment holding
  its newest head was dropped), on the partition the video's events come from;
- ``0xFF j <partition>:<seq>``: a journal segment;
- ``0xFF m <partition>``: the partition's meta.

Table writes happen inside `take_events` batches, where Faust has no current event of its own;
`faust_compat.writing_for` makes an event of the partition being written the current one, so Faust sends the
changelog record to that partition (and a RocksDB store writes to that partition's database). Recovery restores a
partition's keys to the worker that owns it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stream_app.domain import codec
from stream_app.domain.errors import StateFormatError
from stream_app.domain.partition import StateWrite
from stream_app.domain.partitioning import partition_for

_PREFIX = b"\xff"
_HEAD = _PREFIX + b"h"
_SEGMENT = _PREFIX + b"j"
_META = _PREFIX + b"m"


def head_key(video_id: str) -> bytes:
    return _HEAD + video_id.encode()


def segment_key(partition: int, seq: int) -> bytes:
    return _SEGMENT + b"%d:%d" % (partition, seq)


def meta_key(partition: int) -> bytes:
    return _META + b"%d" % partition


class TableState:
    """One partition's StateSource over the table, and the writer of its StateWrites."""

    def __init__(self, table: Any, partition: int, partition_count: int) -> None:
        self.table = table
        self.partition = partition
        self.partition_count = partition_count

    # ---- StateSource ----

    def head(self, video_id: str) -> bytes | None:
        value: bytes | None = self.table.get(head_key(video_id))
        return value

    def segments(self) -> Iterable[bytes]:
        """This partition's journal segments. Refuses (StateFormatError) state of the previous layout on this
        partition: keys that are bare video ids (or their chunks)."""
        prefix = _SEGMENT + b"%d:" % self.partition
        found = []
        for key in list(self.table.keys()):
            if key.startswith(prefix):
                found.append(self.table[key])
            elif not key.startswith(_PREFIX):
                base = key.split(b"\x00", 1)[0]
                if partition_for(base, self.partition_count) == self.partition:
                    raise StateFormatError(codec.describe_foreign(self.table[key]))
        return found

    def meta(self) -> bytes | None:
        value: bytes | None = self.table.get(meta_key(self.partition))
        return value

    # ---- writing (inside writing_for an event of this partition) ----

    def write(self, state: StateWrite) -> None:
        """In StateWrite's order: segments, heads, meta, then dropped segments."""
        table = self.table
        partition = self.partition
        for seq, value in state.segments:
            if value is None:
                _delete(table, segment_key(partition, seq))
            else:
                table[segment_key(partition, seq)] = value
        for video_id, value in state.heads:
            table[head_key(video_id)] = value
        if state.meta is not None:
            table[meta_key(partition)] = state.meta
        for seq in state.dropped:
            _delete(table, segment_key(partition, seq))


def _delete(table: Any, key: bytes) -> None:
    if table.get(key) is not None:
        del table[key]  # a tombstone in the changelog
