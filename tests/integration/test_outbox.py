"""The Outbox sends a batch's output records in aiokafka's own batches (create_batch / send_batch) on the real
broker: every record arrives, each partition's records in the order they were sent (accrual versions rely on it),
a record too big for one batch and full batches included, and `acknowledged()` returns once the broker has them."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_app.domain.partitioning import partition_for
from stream_app.streaming.emitter import Outbox

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PARTITIONS = 3


async def read_all(bootstrap: str, topic: str, count: int) -> dict[int, list[tuple[bytes | None, bytes]]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        found: dict[int, list[tuple[bytes | None, bytes]]] = {p: [] for p in range(PARTITIONS)}
        deadline = asyncio.get_running_loop().time() + 60
        while sum(map(len, found.values())) < count and asyncio.get_running_loop().time() < deadline:
            for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                found[tp.partition].extend((r.key, r.value) for r in records if r.value is not None)
        return found
    finally:
        await consumer.stop()


async def test_batched_sends_arrive_in_order_per_partition(bootstrap: str) -> None:
    topic = f"outbox-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, PARTITIONS, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=16_384)
    await producer.start()
    try:
        outbox = Outbox(producer, lambda _: PARTITIONS, producer)
        sent: dict[int, list[tuple[bytes | None, bytes]]] = {p: [] for p in range(PARTITIONS)}
        for n in range(3_000):  # many keyed records: several full batches per partition
            key = f"video-{n % 40}".encode()
            value = b"%d:" % n + b"x" * (n % 300)
            await outbox.send(topic, key, value)
            sent[partition_for(key, PARTITIONS)].append((key, value))
        big = b"b" * 40_000  # bigger than a batch on its own: sent alone, after the records before it
        await outbox.send(topic, b"video-0", big)
        sent[partition_for(b"video-0", PARTITIONS)].append((b"video-0", big))
        await outbox.send(topic, None, b"unkeyed", 2)
        sent[2].append((None, b"unkeyed"))
        await outbox.acknowledged()
        assert outbox.pending == []
    finally:
        await producer.stop()
    found = await read_all(bootstrap, topic, 3_002)
    assert found == sent
