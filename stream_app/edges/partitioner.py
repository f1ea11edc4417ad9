"""Kafka's default partitioner (Java clients' murmur2): the partition a video's or creator's events are on."""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2

from stream_app.domain.events import InputTopic

# The field whose value is the record key (and so picks the partition) on each input topic (SPEC §2, §3).
KEY_FIELD: dict[InputTopic, str] = {
    InputTopic.VIEWS: "video_id",
    InputTopic.INTERACTIONS: "video_id",
    InputTopic.PROFILES: "creator_id",
}


# aiokafka's murmur2 is pure Python (~2 us a key); ids repeat a lot (every event of a video), so cache them.
@lru_cache(maxsize=65_536)
def partition_for(key: bytes, partition_count: int) -> int:
    """The partition Java's default partitioner (and librdkafka's murmur2_random) picks for `key`."""
    if partition_count < 1:
        raise ValueError(f"partition_count must be at least 1, got {partition_count}")
    # Same arithmetic as org.apache.kafka.clients.producer.internals.BuiltInPartitioner.partitionForKey:
    # toPositive(murmur2(key)) % numPartitions, where toPositive masks the sign bit.
    hashed: int = murmur2(key)
    return (hashed & 0x7FFFFFFF) % partition_count
