"""Every worker reads every partition of creator-profiles into a profile history (SPEC §5).

A creator's videos spread over all partitions, so each worker needs all profiles. Faust's GlobalTable has open
defects with several workers; this is a plain consumer outside the group (no commits), reading from the start
on every start. Outcomes of profile records are counted once, by the `track-profiles` agent in the group.

A settlement fixes the eligibility of the profile in effect at the window's end (SPEC §5), so before a batch may
settle a window the events agent calls `sync`: the reader has then applied every profile the broker held when it
was called. A profile acknowledged before the events that make a window due is never missed because this
consumer had not fetched it yet (seen: a window settled unpaid while its creator's profile, published with its
views, waited in the broker for the reader's next fetch).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.domain.events import CreatorProfile, InputTopic
from stream_app.domain.partitioning import partition_for
from stream_app.domain.profiles import ProfileHistory
from stream_app.domain.validation import ValidEvent, decode_record

log = logging.getLogger(__name__)

# How long a settling batch waits for the profile history to take in what the broker holds.
SYNC_TIMEOUT_S = 60.0


class ProfileReader:
    def __init__(self, bootstrap: str, topic: str, history: ProfileHistory, client_kwargs: dict[str, Any]) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.history = history
        self.client_kwargs = client_kwargs
        self.caught_up = asyncio.Event()
        self._consumer: AIOKafkaConsumer | None = None
        self._tps: list[TopicPartition] = []
        # per partition: the offset after the last record applied (the log start before the first)
        self._applied: dict[TopicPartition, int] = {}
        self._advanced = asyncio.Event()  # set after every fetch the history took in (records or none)

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
            self._applied = dict(await consumer.beginning_offsets(tps))
            self._tps = tps
            while True:
                batches = await consumer.getmany(*tps, timeout_ms=500, max_records=5000)
                for tp, messages in batches.items():
                    for message in messages:
                        self._apply(tp.partition, len(partitions), message.key, message.value)
                    if messages:
                        self._applied[tp] = messages[-1].offset + 1
                self._advanced.set()
                if not self.caught_up.is_set() and await self._at_end(consumer, tps):
                    log.info("profile history caught up: %d creators", len(self.history))
                    self.caught_up.set()
        finally:
            await consumer.stop()

    async def sync(self, timeout_s: float = SYNC_TIMEOUT_S) -> bool:
        """Wait until every profile the broker holds now is in the history (False: not within `timeout_s`, which
        is logged; the caller goes on with the profiles it has rather than stop scoring)."""
        await self.caught_up.wait()
        consumer = self._consumer
        assert consumer is not None
        ends = await consumer.end_offsets(self._tps)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout_s
        while any(self._applied.get(tp, 0) < end for tp, end in ends.items()):
            remaining = give_up - loop.time()
            if remaining <= 0:
                log.error(
                    "profile history still behind %s after %.0f s: settling with the profiles read so far",
                    self.topic,
                    timeout_s,
                )
                return False
            self._advanced.clear()
            try:
                await asyncio.wait_for(self._advanced.wait(), remaining)
            except TimeoutError:
                continue
        return True

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
