"""Producer SDK and publish against a real broker: envelopes and keyed records land on the partition Java's
murmur2 picks, and a librdkafka client with partitioner=murmur2_random agrees with partition_for.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_app.domain import jsoncodec
from stream_app.domain.events import InputTopic, ViewEvent
from stream_app.domain.partitioning import partition_for
from stream_app.edges.producer import RewardsProducer, SendReport
from stream_app.edges.publish import publish_lines
from tests.events import view_event

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PARTITIONS = 4


@pytest.fixture
async def prefix(bootstrap: str, topic_prefix: str) -> AsyncIterator[str]:
    """This test's own TOPIC_PREFIX, with the three input topics created at 4 partitions each."""
    unique = topic_prefix
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(unique + topic.value, PARTITIONS, 1) for topic in InputTopic],
        )
    finally:
        await admin.close()
    yield unique


async def read_all(bootstrap: str, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record now in `topic`, partition by partition in offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        records: list[ConsumerRecord[bytes, bytes]] = []
        # position() is a coroutine; all partitions are read up to the end offsets taken above.
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
    finally:
        await consumer.stop()
    return sorted(records, key=lambda r: (r.partition, r.offset))


def view(n: int, video: str) -> dict[str, object]:
    return view_event(f"e{n}", video, f"u{n}", 1_700_000_000_000 + n, device_id=f"d{n}", video_ms=90_000)


VIDEOS = [f"vid-{i}" for i in range(10)]


def by_event_id(event: dict[str, object]) -> str:
    return str(event["event_id"])


def raw_order(record: tuple[int, bytes | None, bytes]) -> tuple[int, bytes, bytes]:
    partition, key, value = record
    return partition, key or b"", value


async def test_envelopes_land_on_the_partition_of_every_element(bootstrap: str, prefix: str) -> None:
    events = [view(n, VIDEOS[n % len(VIDEOS)]) for n in range(40)]
    async with RewardsProducer(bootstrap, topic_prefix=prefix, max_batch_events=3) as producer:
        report = await producer.send_views(events)
    records = await read_all(bootstrap, prefix + "video-views")

    per_partition = {p: [v for v in VIDEOS if partition_for(v.encode(), PARTITIONS) == p] for p in range(4)}
    # 4 events per video; at most 3 per envelope: ceil(4 * videos_on_partition / 3) envelopes each.
    expected_records = sum(-(-4 * len(videos) // 3) for videos in per_partition.values())
    assert report == SendReport(events=40, records=expected_records, bytes=sum(len(r.value) for r in records))
    assert len(records) == expected_records
    seen: list[dict[str, object]] = []
    for record in records:
        assert record.key is None
        elements = jsoncodec.loads(record.value)
        assert 1 <= len(elements) <= 3
        for element in elements:
            assert partition_for(element["video_id"].encode(), PARTITIONS) == record.partition
        seen.extend(elements)
    # Nothing lost or duplicated, and each video's events in the order they were given.
    assert sorted(seen, key=by_event_id) == sorted(events, key=by_event_id)
    for video in VIDEOS:
        assert [e["event_id"] for e in seen if e["video_id"] == video] == [
            e["event_id"] for e in events if e["video_id"] == video
        ]
    assert producer.totals == report


async def test_envelopes_over_one_mib_are_split_and_accepted_by_the_broker(bootstrap: str, prefix: str) -> None:
    # 20 events of ~60 KB to one video: 1.2 MB, so two envelopes, the first as full as the SDK allows.
    pad = "x" * 60_000
    events = [{**view(n, "vid-big"), "pad": pad} for n in range(20)]
    async with RewardsProducer(bootstrap, topic_prefix=prefix) as producer:
        report = await producer.send_views(events)
    records = await read_all(bootstrap, prefix + "video-views")
    assert report.events == 20 and report.records == 2
    assert [len(jsoncodec.loads(r.value)) for r in records] == [17, 3]
    assert all(r.partition == partition_for(b"vid-big", PARTITIONS) for r in records)
    assert max(len(r.value) for r in records) <= producer.max_envelope_bytes


async def test_single_mode_keys_each_event_by_its_id(bootstrap: str, prefix: str) -> None:
    views = [ViewEvent(f"e{n}", VIDEOS[n % 5], "c1", "u1", "d1", n, 6_000, 61_000, "for_you", "GB") for n in range(10)]
    profiles = [{"creator_id": f"creator-{n}", "followers": n, "ts": 1} for n in range(6)]
    async with RewardsProducer(bootstrap, topic_prefix=prefix, mode="single") as producer:
        assert await producer.send_views(views) == SendReport(10, 10, producer.totals.bytes)
        profile_report = await producer.send_profiles(profiles)
    assert (profile_report.events, profile_report.records) == (6, 6)

    view_records = await read_all(bootstrap, prefix + "video-views")
    assert len(view_records) == 10
    for record in view_records:
        event = jsoncodec.loads(record.value)
        assert record.key == event["video_id"].encode()
        assert record.partition == partition_for(record.key, PARTITIONS)
    profile_records = await read_all(bootstrap, prefix + "creator-profiles")
    assert sorted(r.key for r in profile_records) == sorted(f"creator-{n}".encode() for n in range(6))
    assert all(r.partition == partition_for(r.key, PARTITIONS) for r in profile_records)


async def test_send_raw_goes_where_asked(bootstrap: str, prefix: str) -> None:
    async with RewardsProducer(bootstrap, topic_prefix=prefix) as producer:
        explicit = await producer.send_raw(InputTopic.INTERACTIONS, b"vid-1", b"not json", partition=2)
        by_key = await producer.send_raw("video-interactions", b"vid-1", b"{}")
        null_key = await producer.send_raw(InputTopic.INTERACTIONS, None, b"\xff")
    topic = prefix + "video-interactions"
    assert (explicit.topic, explicit.partition) == (topic, 2)
    assert by_key.partition == partition_for(b"vid-1", PARTITIONS)
    assert null_key.partition == 0
    records = {(r.partition, r.offset): (r.key, r.value) for r in await read_all(bootstrap, topic)}
    assert records[(2, explicit.offset)] == (b"vid-1", b"not json")
    assert records[(0, null_key.offset)] == (None, b"\xff")


async def test_publish_lines_checks_lines_and_sends_envelopes(bootstrap: str, prefix: str) -> None:
    good = [jsoncodec.dumps(view(n, VIDEOS[n % 3])) for n in range(6)]
    lines: list[bytes | str] = [
        good[0] + b"\n",
        b"\n",
        good[1].decode() + "\r\n",  # str lines work too
        b"{not json\n",
        b'[{"video_id":"vid-0"}]\n',
        b"   \n",
        *good[2:],
        b'{"creator_id":"c1"}',
    ]
    err = io.StringIO()
    async with RewardsProducer(bootstrap, topic_prefix=prefix) as producer:
        report = await publish_lines(lines, topic=InputTopic.VIEWS, producer=producer, stderr=err)
    records = await read_all(bootstrap, prefix + "video-views")
    partitions_used = {partition_for(v.encode(), PARTITIONS) for v in VIDEOS[:3]}
    assert (report.read, report.sent_events, report.rejected) == (9, 6, 3)
    assert report.records == len(records) == len(partitions_used)
    assert report.summary() == (
        f"read 9 lines: sent 6 events in {len(partitions_used)} records to {prefix}video-views, rejected 3"
    )
    rejections = err.getvalue().splitlines()
    assert [line.split(": rejected: ")[0] for line in rejections] == ["line 4", "line 5", "line 11"]
    assert rejections[0].startswith("line 4: rejected: value: not JSON")
    assert (
        rejections[1]
        == "line 5: rejected: not a JSON object (got array): one event per line, publish builds the envelopes"
    )
    assert rejections[2] == "line 11: rejected: event_id: missing"
    # The lines' own bytes are inside the envelopes.
    sent = [element for r in records for element in jsoncodec.loads(r.value)]
    assert sorted(sent, key=by_event_id) == [jsoncodec.loads(line) for line in good]


async def test_publish_lines_raw_sends_malformed_records_as_they_are(bootstrap: str, prefix: str) -> None:
    lines = [
        b'{"video_id":"vid-7","junk":true}\n',
        b"{not json\n",
        b"\xff\xfe binary\n",
        b"\n",
        b'[{"video_id":"vid-7"}]\n',
        b' {"video_id": "vid-2"} \n',
    ]
    err = io.StringIO()
    async with RewardsProducer(bootstrap, topic_prefix=prefix) as producer:
        report = await publish_lines(lines, topic=InputTopic.VIEWS, producer=producer, raw=True, stderr=err)
    assert (report.read, report.sent_events, report.records, report.rejected) == (5, 5, 5, 0)
    assert err.getvalue() == ""
    records = await read_all(bootstrap, prefix + "video-views")
    got = sorted(((r.partition, r.key, r.value) for r in records), key=raw_order)
    assert got == sorted(
        [
            (partition_for(b"vid-7", PARTITIONS), b"vid-7", b'{"video_id":"vid-7","junk":true}'),
            (0, None, b"{not json"),
            (0, None, b"\xff\xfe binary"),
            (0, None, b'[{"video_id":"vid-7"}]'),
            (partition_for(b"vid-2", PARTITIONS), b"vid-2", b' {"video_id": "vid-2"} '),
        ],
        key=raw_order,
    )


def _produce_with_librdkafka(bootstrap: str, topic: str, keys: list[bytes]) -> None:
    confluent_kafka = pytest.importorskip("confluent_kafka")
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "acks": "all", "linger.ms": 5}
    )
    errors: list[object] = []
    for key in keys:
        producer.produce(topic, value=b"{}", key=key, on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(20) == 0
    assert errors == [None] * len(keys)


async def test_librdkafka_murmur2_random_agrees_with_partition_for(bootstrap: str, prefix: str) -> None:
    keys = [f"vid-{n}".encode() for n in range(40)] + ["créateur-é".encode(), b"21", b"abc"]
    topic = prefix + "creator-profiles"
    await asyncio.to_thread(_produce_with_librdkafka, bootstrap, topic, keys)
    records = await read_all(bootstrap, topic)
    assert sorted(r.key for r in records) == sorted(keys)
    placed = {r.key: r.partition for r in records}
    assert placed == {key: partition_for(key, PARTITIONS) for key in keys}
    # The sample really spreads over the partitions, so agreement is not trivial.
    assert set(placed.values()) == set(range(PARTITIONS))
