"""Input records for replay tests: (topic, key, event) triples as a producer would write them, without a broker."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.domain.events import InputTopic
from stream_app.domain.partitioning import partition_for
from stream_app.replay.engine import InputRecord

PARTITIONS = 4


def records_of(events: Sequence[tuple[str, str, dict[str, Any]]], partitions: int = PARTITIONS) -> list[InputRecord]:
    """One single-event record per event, keyed and partitioned as Kafka's murmur2 partitioner does, with record
    timestamps 1, 2, 3 ... in list order (so the replay scores them in that order)."""
    offsets: Counter[tuple[str, int]] = Counter()
    records = []
    for n, (topic, key, value) in enumerate(events, start=1):
        partition = partition_for(key.encode(), partitions)
        offset = offsets[(topic, partition)]
        offsets[(topic, partition)] += 1
        records.append(InputRecord(InputTopic(topic), partition, offset, n, key.encode(), jsoncodec.dumps(value)))
    return records
