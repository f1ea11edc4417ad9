"""Turns a batch's Effects into output records and metrics: the one place outputs are sent from.

Every send is collected in an `Outbox`; the batch's state is written only after `Outbox.acknowledged()`, so the
state that makes a replay skip an event is never durable before the event's output records are (SPEC §4). A
send the broker refuses stops the worker before the state is written: the batch is replayed after a restart.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from stream_app.domain.events import Outcome, OutputTopic
from stream_app.domain.partition import Effects
from stream_app.domain.partitioning import partition_for
from stream_app.domain.records import AuditRecord, DeadLetter, Settlement, event_to_dict
from stream_app.edges.metrics import RewardsMetrics
from stream_app.edges.settings import Settings


class Outbox:
    """The sends of one batch, awaited together (their futures resolve when the broker acknowledges them).

    Records go straight to the producer, with the partition of a keyed record computed here, by the same murmur2
    as Kafka's default partitioner, from cached partition counts (aiokafka's own murmur2 is pure Python and
    uncached). Given aiokafka's producer (`batches`), the records of each topic-partition are appended to a batch
    of aiokafka's own (`create_batch` / `send_batch`), so a record costs an append, not a future and a trip
    through the producer's accumulator (measured: ~15 us a record through `send`); a partition's records keep
    their order (a full batch is queued before the next record, and a record too big for a batch goes through
    `send` after the records before it)."""

    __slots__ = ("_batches", "_builders", "partition_count", "pending", "producer")

    def __init__(self, producer: Any, partition_count: Callable[[str], int], batches: Any | None = None) -> None:
        self.producer = producer
        self.partition_count = partition_count
        self.pending: list[Any] = []
        self._batches = batches
        self._builders: dict[tuple[str, int], Any] = {}  # (topic, partition) -> the batch being filled

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> None:
        if partition is None and key is not None:
            partition = partition_for(key, self.partition_count(topic))
        if self._batches is None or partition is None:
            self.pending.append(await self.producer.send(topic, key, value, partition, None, None))
            return
        tp = (topic, partition)
        builder = self._builders.get(tp)
        if builder is None:
            builder = self._builders[tp] = self._batches.create_batch()
        if builder.append(timestamp=None, key=key, value=value) is not None:
            return
        del self._builders[tp]
        if builder.record_count():  # full: queue it, then start the next batch with this record
            self.pending.append(await self._batches.send_batch(builder, topic, partition=partition))
            builder = self._builders[tp] = self._batches.create_batch()
            if builder.append(timestamp=None, key=key, value=value) is not None:
                return
            del self._builders[tp]
        # bigger than a batch on its own: sent alone, after the records queued before it
        self.pending.append(await self.producer.send(topic, key, value, partition, None, None))

    async def acknowledged(self) -> None:
        """Queue the batches being filled, then wait until the broker has acknowledged every send so far (raises
        if it refused one)."""
        builders, self._builders = self._builders, {}
        batches = self._batches
        for (topic, partition), builder in builders.items():
            assert batches is not None  # builders exist only with aiokafka's producer
            self.pending.append(await batches.send_batch(builder, topic, partition=partition))
        pending, self.pending = self.pending, []
        if pending:
            await asyncio.gather(*pending)


class Emitter:
    """Sends outcomes (audit records), settlements, accruals and dead letters, and counts them."""

    def __init__(self, settings: Settings, metrics: RewardsMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.suspicious = settings.topic(OutputTopic.SUSPICIOUS)
        self.settlements = settings.topic(OutputTopic.SETTLEMENTS)
        self.accruals = settings.topic(OutputTopic.ACCRUALS)
        self.dlq = settings.topic(OutputTopic.DLQ)

    async def emit(self, effects: Effects, outbox: Outbox, now_ms: int) -> None:
        """A batch's outcomes, settlements and accruals: counted, and sent to their topics."""
        metrics = self.metrics
        for topic, n in effects.accepted.items():
            metrics.count_outcome(topic.value, Outcome.ACCEPTED, n)
        for outcome in effects.outcomes:
            if outcome.outcome is Outcome.CLAWBACK:
                metrics.count_clawed_back(outcome.reason)
            else:
                metrics.count_outcome(outcome.topic.value, outcome.outcome)
                if outcome.outcome is Outcome.SUSPICIOUS:
                    metrics.count_suspicious(outcome.reason)
            record = AuditRecord(
                event=event_to_dict(outcome.event),
                source_topic=self.settings.topic(outcome.topic),
                partition=outcome.position.partition,
                offset=outcome.position.offset,
                index=outcome.position.index_or_none,
                outcome=outcome.outcome.value,
                reason=outcome.reason,
                detail=outcome.detail,
                detected_at=now_ms,
            )
            await outbox.send(self.suspicious, outcome.event.video_id.encode(), record.to_bytes())
        for settlement in effects.settlements:
            if isinstance(settlement, Settlement):
                metrics.add_settled(settlement.settled_micros)
                metrics.count_windows_settled()
            else:
                metrics.add_clawback(settlement.clawback_micros)
        await self.send_records(effects, outbox)

    async def send_records(self, effects: Effects, outbox: Outbox) -> None:
        """Settlements and accruals only (also the re-emit after an assignment, counted as accruals emitted)."""
        for settlement in effects.settlements:
            await outbox.send(self.settlements, settlement.video_id.encode(), settlement.to_bytes())
        for accrual in effects.accruals:
            await outbox.send(self.accruals, accrual.video_id.encode(), accrual.to_bytes())
        if effects.accruals:
            self.metrics.count_accruals_emitted(len(effects.accruals))

    async def dead_letter(
        self, message: Any, index: int | None, value: bytes, error: str, outbox: Outbox, now_ms: int
    ) -> None:
        record = DeadLetter(
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            index=index,
            key=message.key,
            value=value,
            error=error,
            ts=now_ms,
        )
        await outbox.send(self.dlq, message.key, record.to_bytes())
        self.metrics.count_outcome(self.settings.unprefixed(message.topic), Outcome.INVALID)
