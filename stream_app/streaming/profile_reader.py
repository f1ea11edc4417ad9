"""Every worker reads every partition of creator-profiles into a profile history (SPEC §5).

A creator's videos spread over all partitions, so each worker needs all profiles. Faust's GlobalTable has open
defects with several workers; this is a plain consumer outside the group (no commits), reading from the start
on every start. Outcomes of profile records are counted once, by the `track-profiles` agent in the group.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.domain.events import CreatorProfile, InputTopic
from stream_app.domain.profiles import ProfileHistory
from stream_app.domain.validation import ValidEvent, decode_record
from stream_app.edges.partitioner import partition_for

log = logging.getLogger(__name__)


class ProfileReader:
    def __init__(self, bootstrap: str, topic: str, history: ProfileHistory, client_kwargs: dict[str, Any]) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.history = history
        self.client_kwargs = client_kwargs
        self.caught_up = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            **self.client_kwargs,
        )
        self._consumer = consumer
        await consumer.start()
        try:
            partitions = await self._partitions(consumer)
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while True:
                batches = await consumer.getmany(*tps, timeout_ms=500, max_records=5000)
                for tp, messages in batches.items():
                    for message in messages:
                        self._apply(tp.partition, len(partitions), message.key, message.value)
                if not self.caught_up.is_set() and await self._at_end(consumer, tps):
                    log.info("profile history caught up: %d creators", len(self.history))
                    self.caught_up.set()
        finally:
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[int]:
        for _ in range(100):
            partitions = consumer.partitions_for_topic(self.topic)
            if partitions:
                return sorted(partitions)
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topic {self.topic!r} has no partitions: run `stream-app topics apply`")

    async def _at_end(self, consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> bool:
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            if await consumer.position(tp) < ends[tp]:
                return False
        return True

    def _apply(self, partition: int, partition_count: int, key: bytes | None, value: bytes | None) -> None:
        for item in decode_record(
            InputTopic.PROFILES,
            key,
            value,
            partition=partition,
            partition_count=partition_count,
            partition_for=partition_for,
        ):
            if isinstance(item, ValidEvent) and isinstance(item.event, CreatorProfile):
                self.history.add(item.event)
