"""Producer SDK, pure parts: event encoding and the envelope plan (grouping by partition, 1,000 / 1 MiB caps)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.domain import jsoncodec
from stream_app.domain.errors import BrokerError, ConfigError, InvalidEventError
from stream_app.domain.events import CreatorProfile, InputTopic, InteractionEvent, ViewEvent
from stream_app.domain.partitioning import partition_for
from stream_app.edges.producer import (
    DEFAULT_ENVELOPE_BYTES,
    MAX_ENVELOPE_BYTES,
    EncodedEvent,
    EnvelopePlanner,
    RewardsProducer,
    SendReport,
    encode_event,
    plan_envelopes,
)

MiB = 1024 * 1024

# Keys whose partitions of 4 are known from Java's murmur2 (see tests/domain/test_partitioning.py): 0, 1, 2, 3.
K0, K1, K2, K3 = b"21", b"vid-2", b"foobar", b"abc"

VIEW = ViewEvent(
    event_id="e1",
    video_id="v1",
    creator_id="c1",
    viewer_id="u1",
    device_id="d1",
    ts=1_700_000_000_000,
    watch_ms=12_000,
    video_ms=90_000,
    source="for_you",
    region="US",
)


def ev(key: bytes, n: int) -> EncodedEvent:
    return EncodedEvent(key, b'{"n":%d}' % n)


# --- encode_event ---------------------------------------------------------------------------------------


def test_encode_view_dataclass_gives_key_and_sorted_json() -> None:
    encoded = encode_event(InputTopic.VIEWS, VIEW)
    assert encoded.key == b"v1"
    assert encoded.value == (
        b'{"creator_id":"c1","device_id":"d1","event_id":"e1","region":"US","source":"for_you",'
        b'"ts":1700000000000,"video_id":"v1","video_ms":90000,"viewer_id":"u1","watch_ms":12000}'
    )


def test_encode_profile_keys_by_creator_id() -> None:
    profile = CreatorProfile("créa-7", followers=12_000, views_30d=150_000, adult=True, standing="good", ts=5)
    encoded = encode_event(InputTopic.PROFILES, profile)
    assert encoded.key == "créa-7".encode()
    assert jsoncodec.loads(encoded.value) == {
        "creator_id": "créa-7",
        "followers": 12_000,
        "views_30d": 150_000,
        "adult": True,
        "standing": "good",
        "ts": 5,
    }


def test_encode_dict_is_sent_as_given_including_unknown_fields() -> None:
    encoded = encode_event(InputTopic.INTERACTIONS, {"video_id": "v9", "kind": "like", "extra": [1]})
    assert encoded == EncodedEvent(b"v9", b'{"extra":[1],"kind":"like","video_id":"v9"}')


@pytest.mark.parametrize(
    ("topic", "event", "message"),
    [
        (InputTopic.VIEWS, {"creator_id": "c1"}, "video_id: missing"),
        (InputTopic.VIEWS, {"video_id": None}, "video_id: missing"),
        (InputTopic.VIEWS, {"video_id": 42}, "video_id: must be a non-empty string, got 42"),
        (InputTopic.INTERACTIONS, {"video_id": ""}, "video_id: must be a non-empty string"),
        (InputTopic.PROFILES, {"video_id": "v1"}, "creator_id: missing"),
        (InputTopic.PROFILES, VIEW, "ViewEvent cannot be sent to creator-profiles"),
        (
            InputTopic.VIEWS,
            InteractionEvent("e", "v", "c", "u", "d", 1, "like"),
            "InteractionEvent cannot be sent to video-views",
        ),
    ],
)
def test_encode_refuses_events_without_a_usable_id(topic: InputTopic, event: object, message: str) -> None:
    with pytest.raises(InvalidEventError, match=message):
        encode_event(topic, event)  # type: ignore[arg-type]


# --- plan_envelopes -------------------------------------------------------------------------------------


def test_events_are_grouped_by_partition_in_their_order() -> None:
    events = [ev(K3, 1), ev(K0, 2), ev(K3, 3), ev(K1, 4), ev(K0, 5), ev(K2, 6)]
    assert plan_envelopes(events, 4) == [
        (0, b'[{"n":2},{"n":5}]'),
        (1, b'[{"n":4}]'),
        (2, b'[{"n":6}]'),
        (3, b'[{"n":1},{"n":3}]'),
    ]


def test_one_partition_topic_puts_everything_in_one_envelope() -> None:
    assert plan_envelopes([ev(K0, 1), ev(K1, 2), ev(K3, 3)], 1) == [(0, b'[{"n":1},{"n":2},{"n":3}]')]


def test_no_events_no_envelopes() -> None:
    assert plan_envelopes([], 4) == []


def test_thousand_event_cap() -> None:
    events = [ev(K2, n) for n in range(2_500)]
    plan = plan_envelopes(events, 4)
    assert [(p, len(jsoncodec.loads(v))) for p, v in plan] == [(2, 1000), (2, 1000), (2, 500)]
    # Order is kept across the split: the second envelope starts with event 1000.
    assert jsoncodec.loads(plan[1][1])[0] == {"n": 1000}


def test_smaller_event_cap() -> None:
    plan = plan_envelopes([ev(K1, n) for n in range(5)], 4, max_events=2)
    assert plan == [(1, b'[{"n":0},{"n":1}]'), (1, b'[{"n":2},{"n":3}]'), (1, b'[{"n":4}]')]


def padded(key: bytes, size: int) -> EncodedEvent:
    """An event of exactly `size` bytes: {"p":"xxx…"} has 8 bytes of framing."""
    value = b'{"p":"' + b"x" * (size - 8) + b'"}'
    assert len(value) == size
    return EncodedEvent(key, value)


def test_one_mib_split_fills_to_exactly_one_mib() -> None:
    # n events of L bytes make an envelope of 2 + n*L + (n-1) = n*(L+1) + 1 bytes.
    # 2**20 - 1 = 1_048_575 = 25 * 41_943, so 25 events of 41_942 bytes are exactly 1 MiB.
    events = [padded(K0, 41_942) for _ in range(26)]
    plan = plan_envelopes(events, 4, max_bytes=MiB)
    assert [(p, len(v)) for p, v in plan] == [(0, MiB), (0, 41_944)]
    assert len(jsoncodec.loads(plan[0][1])) == 25


def test_one_mib_split_of_larger_events() -> None:
    # 100_000-byte events: 10 fit (1_000_011 bytes), an 11th would make 1_100_012 > 1 MiB.
    plan = plan_envelopes([padded(K3, 100_000) for _ in range(25)], 4, max_bytes=MiB)
    assert [(p, len(v)) for p, v in plan] == [(3, 1_000_011), (3, 1_000_011), (3, 500_006)]


def test_event_too_large_for_any_envelope_is_refused() -> None:
    # 1 MiB - 2 bytes still fits alone (with the brackets); one byte more does not.
    assert plan_envelopes([padded(K0, MiB - 2)], 4, max_bytes=MiB)[0][1][:7] == b'[{"p":"'
    with pytest.raises(InvalidEventError, match="1048575 bytes serialized"):
        plan_envelopes([padded(K0, MiB - 1)], 4, max_bytes=MiB)


@pytest.mark.parametrize(
    ("max_events", "max_bytes", "message"),
    [
        (0, MiB, "max_batch_events must be between 1 and 1000, got 0"),
        (1001, MiB, "max_batch_events must be between 1 and 1000, got 1001"),
        (1000, MiB + 1, "max_envelope_bytes must be between 3 and 1048576, got 1048577"),
        (1000, 2, "max_envelope_bytes must be between 3 and 1048576, got 2"),
    ],
)
def test_envelope_limits_are_checked(max_events: int, max_bytes: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        EnvelopePlanner(4, max_events, max_bytes)


def test_planner_reports_event_counts_and_drains_empty() -> None:
    planner = EnvelopePlanner(4, 2, MiB)
    assert planner.add(ev(K1, 1)) == []
    [full] = planner.add(ev(K1, 2))
    assert (full.partition, full.value, full.events) == (1, b'[{"n":1},{"n":2}]', 2)
    assert planner.add(ev(K0, 3)) == []
    assert [(e.partition, e.events) for e in planner.drain()] == [(0, 1)]
    assert planner.drain() == []


@given(
    keys=st.lists(st.sampled_from([b"a", b"b", b"vid-1", b"vid-2", b"x" * 40, "é".encode()]), max_size=120),
    partitions=st.integers(1, 6),
    max_events=st.integers(1, 7),
    max_bytes=st.integers(30, 200),
)
def test_plan_invariants(keys: list[bytes], partitions: int, max_events: int, max_bytes: int) -> None:
    events = [EncodedEvent(key, b'{"video_id":"%s","n":%d}' % (key.hex().encode(), n)) for n, key in enumerate(keys)]
    events = [e for e in events if len(e.value) + 2 <= max_bytes]
    plan = plan_envelopes(events, partitions, max_events=max_events, max_bytes=max_bytes)
    seen_per_partition: dict[int, list[int]] = {}
    for partition, value in plan:
        elements = jsoncodec.loads(value)
        assert 1 <= len(elements) <= max_events
        assert len(value) <= max_bytes
        for element in elements:
            assert partition_for(bytes.fromhex(element["video_id"]), partitions) == partition
            seen_per_partition.setdefault(partition, []).append(element["n"])
    # Every event exactly once, in input order within its partition.
    for partition, ns in seen_per_partition.items():
        expected = [n for n, e in enumerate(events) if partition_for(e.key, partitions) == partition]
        assert ns == [jsoncodec.loads(events[i].value)["n"] for i in expected]
    assert sum(len(ns) for ns in seen_per_partition.values()) == len(events)


# --- RewardsProducer (no broker) ------------------------------------------------------------------------


def test_send_report_adds_up() -> None:
    assert SendReport(3, 1, 100) + SendReport(2, 2, 50) == SendReport(5, 3, 150)


def test_default_envelope_leaves_room_for_record_framing() -> None:
    assert MAX_ENVELOPE_BYTES == 1_048_576
    assert DEFAULT_ENVELOPE_BYTES == 1_047_552


async def test_producer_settings() -> None:
    producer = RewardsProducer("localhost:1", topic_prefix="t1.")
    assert producer.topic_name(InputTopic.VIEWS) == "t1.video-views"
    assert producer.topic_name("events-dlq") == "t1.events-dlq"
    assert producer.max_event_bytes == DEFAULT_ENVELOPE_BYTES - 2
    assert RewardsProducer("localhost:1", mode="single").max_event_bytes == DEFAULT_ENVELOPE_BYTES


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "batch"}, "mode must be 'envelope' or 'single', got 'batch'"),
        ({"max_batch_events": 1001}, "max_batch_events must be between 1 and 1000"),
        ({"max_envelope_bytes": MiB + 1}, "max_envelope_bytes must be between 3 and 1048576"),
        ({"compression": "brotli"}, "compression must be one of gzip, snappy, lz4, zstd or None, got 'brotli'"),
    ],
)
def test_producer_refuses_bad_settings(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RewardsProducer("localhost:1", **kwargs)  # type: ignore[arg-type]


async def test_sending_before_start_is_an_error() -> None:
    producer = RewardsProducer("localhost:1")
    with pytest.raises(BrokerError, match="not started"):
        await producer.send_views([VIEW])


async def test_unreachable_broker_is_a_broker_error() -> None:
    with pytest.raises(BrokerError, match=r"cannot connect producer to 127\.0\.0\.1:1"):
        async with RewardsProducer("127.0.0.1:1"):
            pass
