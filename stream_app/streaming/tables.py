"""Faust tables behind the domain's stores: one ledger per video, one small record per partition.

Writes happen inside `take_events`, where Faust has no current event, so tables use `use_partitioner=True`:
the changelog partition is then Kafka's partitioner applied to the serialized key. Keys are therefore the raw
record key bytes (the video_id), so a video's state lands on the changelog partition its events come from and
recovery restores it to the worker that owns that partition. Per-partition state uses a synthetic key chosen
so that the partitioner maps it to that partition.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.domain.scoring import VideoLedger
from stream_app.edges.partitioner import partition_for


class TableLedgerStore:
    """The `LedgerStore` of one partition over the video-state table (key: video_id bytes, value: JSON)."""

    def __init__(self, table: Any, partition: int, partition_count: int) -> None:
        self.table = table
        self.partition = partition
        self.partition_count = partition_count

    def load(self, video_id: str) -> VideoLedger | None:
        raw = self.table.get(video_id.encode())
        return None if raw is None else VideoLedger.from_dict(jsoncodec.loads(raw))

    def save(self, ledger: VideoLedger) -> None:
        self.table[ledger.video_id.encode()] = jsoncodec.dumps(ledger.to_dict())

    def video_ids(self) -> Iterator[str]:
        for key in list(self.table.keys()):
            if partition_for(key, self.partition_count) == self.partition:
                yield key.decode()


@lru_cache(maxsize=1024)
def partition_state_key(partition: int, partition_count: int) -> bytes:
    """The first key of the form `__partition-P-N` that Kafka's partitioner maps to `partition`."""
    n = 0
    while True:
        key = f"__partition-{partition}-{n}".encode()
        if partition_for(key, partition_count) == partition:
            return key
        n += 1


class PartitionStateStore:
    """Per-partition state (the largest accepted ts per event topic) in a table, on the partition it describes."""

    def __init__(self, table: Any, partition_count: int) -> None:
        self.table = table
        self.partition_count = partition_count

    def load(self, partition: int) -> dict[str, Any]:
        raw = self.table.get(partition_state_key(partition, self.partition_count))
        return {} if raw is None else dict(jsoncodec.loads(raw))

    def save(self, partition: int, state: dict[str, Any]) -> None:
        self.table[partition_state_key(partition, self.partition_count)] = jsoncodec.dumps(state)
