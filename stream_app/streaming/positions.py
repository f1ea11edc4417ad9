"""Where this worker stands on each input partition it owns: the position after the last record its agent
processed, the broker's end, whether it is caught up (SPEC §5 idleness), and the consumer-lag metric.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from faust.types import TP

from stream_app.domain.events import InputTopic
from stream_app.edges.metrics import RewardsMetrics
from stream_app.streaming.faust_compat import committed_offset, fetched_offset
from stream_app.streaming.topics import TopicNames

log = logging.getLogger(__name__)

# An offset lookup goes through Faust's consumer thread, which stops answering once a shutdown has begun: ticks
# waiting on them held a SIGTERM'd worker for 10 s (measured). Unanswered, the partition counts as not caught up.
OFFSET_LOOKUP_TIMEOUT_S = 2.0


class Positions:
    """`processed` is the offset after the last record processed, per input (topic, partition): the agents
    write it, the commit clamp reads it (streaming/delivery_guard.py)."""

    def __init__(self, consumer: Callable[[], Any], names: TopicNames, stopping: Callable[[], bool]) -> None:
        self._consumer = consumer  # Faust's consumer exists only once the app runs
        self.names = names
        self._stopping = stopping
        self.processed: dict[tuple[str, int], int] = {}
        self._start_offsets: dict[tuple[str, int], int] = {}

    def owned_partitions(self, topic: str) -> list[int]:
        return sorted(tp.partition for tp in self._consumer().assignment() if tp.topic == topic)

    async def position_and_highwater(self, topic: str, partition: int) -> tuple[int | None, int | None]:
        """This worker's position on a topic-partition and the broker's high watermark.

        The position is the offset after the last record the agent has *processed* (`processed`), not what the
        consumer fetched or Faust handed to the stream's buffer: during a catch-up the buffer holds many seconds
        of work, and a partition whose records wait there is not caught up (SPEC §5 idleness). Before the first
        processed record it is where processing starts: the committed offset, else the earliest. The high
        watermark is at least the fetched position (below).
        """
        consumer = self._consumer()
        tp = TP(topic, partition)
        try:
            highwater = consumer.highwater(tp)
        except AssertionError:  # aiokafka: "Partition is not assigned" (revoked meanwhile); timers must not crash
            return None, None
        # Every record fetched (handed to the stream's buffer) is below the end: tansu reports the high watermark
        # as the last batch's base offset + 1, too low after a multi-record batch, and a fetch returns whole
        # batches, so the fetched position shows the true end (a no-op on Apache Kafka).
        read = fetched_offset(consumer, tp)
        if read is not None and (highwater is None or read + 1 > highwater):
            highwater = read + 1
        position = self.processed.get((topic, partition))
        if position is None:
            position = committed_offset(consumer, tp)
        if position is None:
            position = await self._start_offset(consumer, tp)
        return position, highwater

    async def _start_offset(self, consumer: Any, tp: TP) -> int | None:
        key = (tp.topic, tp.partition)
        start = self._start_offsets.get(key)
        if start is None:
            if self._stopping():  # shutting down: the lookup would only wait (OFFSET_LOOKUP_TIMEOUT_S)
                return None
            try:
                start = (await asyncio.wait_for(consumer.earliest_offsets(tp), OFFSET_LOOKUP_TIMEOUT_S)).get(tp)
            except Exception:  # revoked meanwhile (a rebalance): unknown, and a timer must not crash the app
                log.debug("no earliest offset for %s[%d]", tp.topic, tp.partition, exc_info=True)
                return None
            if start is not None:
                self._start_offsets[key] = start
        return start

    async def caught_up(self, topic: InputTopic, partition: int) -> bool:
        position, highwater = await self.position_and_highwater(self.names.input(topic), partition)
        return position is not None and highwater is not None and position >= highwater

    async def measure_lag(self, metrics: RewardsMetrics) -> None:
        for name, topic in self.names.inputs.items():
            for partition in self.owned_partitions(name):
                position, highwater = await self.position_and_highwater(name, partition)
                if position is not None and highwater is not None:
                    metrics.set_consumer_lag(topic.value, partition, max(0, highwater - position))

    def forget(self, revoked: set[TP], metrics: RewardsMetrics) -> None:
        inputs = self.names.inputs
        for tp in revoked:
            self.processed.pop((tp.topic, tp.partition), None)
            self._start_offsets.pop((tp.topic, tp.partition), None)
            if tp.topic in inputs:
                metrics.forget_consumer_lag(inputs[tp.topic].value, tp.partition)
