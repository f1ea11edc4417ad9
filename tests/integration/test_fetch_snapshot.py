"""faust_compat.fetch_active on a real aiokafka consumer and broker: a fetch asks for the partitions active when it
started, never for every partition because Faust's live set of active partitions emptied while it waited, and the
records of a partition paused while they were fetched are put back rather than lost.

The trap it closes, measured: a worker restarted after SIGTERM kept consumer lag 3 on one input partition for good.
Table recovery paused the changelogs it had read while a fetch of them waited, the stream partitions were still held
until sought, so Faust's set was empty; aiokafka read it as every partition and returned the input records it had
fetched after the seek; Faust dropped them (not active) and aiokafka's position was past them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_app.streaming.faust_compat import fetch_active

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


@pytest.fixture
async def two_partitions(bootstrap: str) -> AsyncIterator[tuple[str, AIOKafkaConsumer, AIOKafkaProducer]]:
    """A topic of two partitions, a consumer assigned both from the start, and a producer."""
    topic = f"fetch-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 2, 1)])
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0), TopicPartition(topic, 1)])
        await consumer.seek_to_beginning()
        yield topic, consumer, producer
    finally:
        await consumer.stop()
        await producer.stop()


async def produce(producer: AIOKafkaProducer, topic: str, partition: int, count: int) -> None:
    for n in range(count):
        await producer.send(topic, b"%d" % n, partition=partition)
    await producer.flush()


def fetch_of(fetcher: Any, timeout: float) -> Any:
    """aiokafka's fetch of the partitions asked for, as Faust's `_fetch_records` makes it."""
    return lambda asked: fetcher.fetched_records(asked, timeout=timeout)


async def fetch_offsets(consumer: AIOKafkaConsumer, tp: TopicPartition, count: int) -> list[int]:
    """The offsets of the next `count` records of `tp` (fetch_active with `tp` active)."""
    offsets: list[int] = []
    while len(offsets) < count:
        records = await fetch_active(fetch_of(consumer._fetcher, 5.0), consumer._fetcher, {tp}, set())
        assert records, f"no records of {tp} within 5 s"
        offsets.extend(r.offset for r in records[tp])
    return offsets


async def empty_while_waiting(fetch: Any, active: set[TopicPartition], arrive: Any) -> Any:
    """Start `fetch` of `active` (a partition without records), empty `active` while it waits, let records arrive."""
    task = asyncio.ensure_future(fetch)
    await asyncio.sleep(0.3)
    assert not task.done()
    active.clear()  # what table recovery's pause of the changelogs it read does to Faust's set
    await arrive()
    return await task


async def test_a_fetch_whose_active_set_empties_while_it_waits_returns_nothing(
    two_partitions: tuple[str, AIOKafkaConsumer, AIOKafkaProducer],
) -> None:
    topic, consumer, producer = two_partitions
    held = TopicPartition(topic, 1)  # a stream partition not yet resumed: its records must stay where they are
    active = {TopicPartition(topic, 0)}
    records = await empty_while_waiting(
        fetch_active(fetch_of(consumer._fetcher, 2.0), consumer._fetcher, active, set()),
        active,
        lambda: produce(producer, topic, 1, 3),
    )
    assert records == {}
    assert await consumer.position(held) == 0
    # resumed, the partition's records come from where it was: none lost
    assert await fetch_offsets(consumer, held, 3) == [0, 1, 2]


async def test_aiokafka_alone_reads_the_emptied_set_as_every_partition(
    two_partitions: tuple[str, AIOKafkaConsumer, AIOKafkaProducer],
) -> None:
    """What Faust's own fetch does (it hands aiokafka its live set): the held partition's records come back, its
    position moves past them, and Faust drops them. If aiokafka changes this, the patch may go."""
    topic, consumer, producer = two_partitions
    held = TopicPartition(topic, 1)
    active = {TopicPartition(topic, 0)}
    records = await empty_while_waiting(
        consumer._fetcher.fetched_records(active, timeout=2.0),
        active,
        lambda: produce(producer, topic, 1, 3),
    )
    assert [r.offset for r in records[held]] == [0, 1, 2]
    assert await consumer.position(held) == 3


class PausedWhileFetched:
    """The real fetcher, with `tp` taken out of Faust's active set while its records were being fetched."""

    def __init__(self, fetcher: Any, active: set[TopicPartition], tp: TopicPartition) -> None:
        self.fetcher, self.active, self.tp = fetcher, active, tp

    async def fetched_records(self, partitions: set[TopicPartition], **kwargs: Any) -> Any:
        records = await self.fetcher.fetched_records(partitions, **kwargs)
        self.active.discard(self.tp)
        return records


@pytest.mark.parametrize("buffered", [False, True], ids=["paused", "buffer-full"])
async def test_records_of_a_partition_paused_while_fetched_are_put_back(
    two_partitions: tuple[str, AIOKafkaConsumer, AIOKafkaProducer], buffered: bool
) -> None:
    """A paused partition's records go back to the consumer; one whose stream buffer is full keeps them (Faust
    hands records of `buffered` partitions to the stream)."""
    topic, consumer, producer = two_partitions
    tp = TopicPartition(topic, 0)
    await produce(producer, topic, 0, 4)
    active = {tp}
    paused_while_fetched = PausedWhileFetched(consumer._fetcher, active, tp)
    got = await fetch_active(
        fetch_of(paused_while_fetched, 5.0), consumer._fetcher, active, {tp} if buffered else set()
    )
    if buffered:
        first = [r.offset for r in got[tp]]
        assert first and first == list(range(len(first)))
        assert await consumer.position(tp) == len(first)
        assert first + await fetch_offsets(consumer, tp, 4 - len(first)) == [0, 1, 2, 3]
    else:
        assert got == {}
        assert await consumer.position(tp) == 0
        assert await fetch_offsets(consumer, tp, 4) == [0, 1, 2, 3]
