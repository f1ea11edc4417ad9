"""Faust tables behind the domain's stores: one ledger per video, one small record per partition.

Table writes happen inside `take_events` batches, where Faust has no current event of its own; `writing_for`
makes an event of the partition being written the current one, so Faust sends the changelog record to that
partition (and a RocksDB store writes to that partition's database). Keys are the raw record key bytes (the
video_id): a video's state lands on the changelog partition its events come from, and recovery restores it to the
worker that owns that partition. A ledger larger than one Kafka record allows is split into chunk keys
(`video_id NUL index`), written to the same partition.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from faust.streams import _current_event

from stream_app.domain import jsoncodec
from stream_app.domain.scoring import VideoLedger
from stream_app.edges.partitioner import partition_for

# Kafka's default max.message.bytes is about 1 MB: ledgers above this size are written in chunks of it.
CHUNK_BYTES = 512 * 1024
_CHUNKED = b"\x00chunks:"  # header of a chunked ledger (a JSON document never starts with NUL)
_SEPARATOR = b"\x00"


@contextmanager
def writing_for(event: Any) -> Iterator[None]:
    """Table writes inside this block go to the partition of `event` (Faust reads the current event)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


class TableLedgerStore:
    """The `LedgerStore` of one partition over the video-state table (key: video_id bytes, value: JSON)."""

    def __init__(self, table: Any, partition: int, partition_count: int) -> None:
        self.table = table
        self.partition = partition
        self.partition_count = partition_count

    def load(self, video_id: str) -> VideoLedger | None:
        key = video_id.encode()
        raw = self.table.get(key)
        if raw is None:
            return None
        if raw.startswith(_CHUNKED):
            chunks = int(raw[len(_CHUNKED) :])
            raw = b"".join(self.table[key + _SEPARATOR + b"%d" % i] for i in range(chunks))
        return VideoLedger.from_dict(jsoncodec.loads(raw))

    def save(self, ledger: VideoLedger) -> None:
        key = ledger.video_id.encode()
        data = jsoncodec.dumps(ledger.to_dict())
        before = self._chunks(key)
        if len(data) <= CHUNK_BYTES:
            self.table[key] = data
            after = 0
        else:
            after = -(-len(data) // CHUNK_BYTES)
            for i in range(after):
                self.table[key + _SEPARATOR + b"%d" % i] = data[i * CHUNK_BYTES : (i + 1) * CHUNK_BYTES]
            self.table[key] = _CHUNKED + b"%d" % after
        for i in range(after, before):
            del self.table[key + _SEPARATOR + b"%d" % i]

    def _chunks(self, key: bytes) -> int:
        raw = self.table.get(key)
        return int(raw[len(_CHUNKED) :]) if raw is not None and raw.startswith(_CHUNKED) else 0

    def video_ids(self) -> Iterator[str]:
        for key in list(self.table.keys()):
            if _SEPARATOR not in key and partition_for(key, self.partition_count) == self.partition:
                yield key.decode()


@lru_cache(maxsize=1024)
def partition_state_key(partition: int, partition_count: int) -> bytes:
    """The first key of the form `__partition-P-N` that Kafka's partitioner maps to `partition` (so a compacted
    changelog reader can tell which partition a record describes from its key alone)."""
    n = 0
    while True:
        key = f"__partition-{partition}-{n}".encode()
        if partition_for(key, partition_count) == partition:
            return key
        n += 1


class PartitionStateStore:
    """Per-partition state (the largest accepted ts per event topic, the policy id) in a table."""

    def __init__(self, table: Any, partition_count: int) -> None:
        self.table = table
        self.partition_count = partition_count

    def load(self, partition: int) -> dict[str, Any]:
        raw = self.table.get(partition_state_key(partition, self.partition_count))
        return {} if raw is None else dict(jsoncodec.loads(raw))

    def save(self, partition: int, state: dict[str, Any]) -> None:
        self.table[partition_state_key(partition, self.partition_count)] = jsoncodec.dumps(state)
