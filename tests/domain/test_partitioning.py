"""partition_for / partition_of must agree with the Java client's default partitioner bit for bit (run on the
compiled core too: tests/tools/test_compile.py)."""

from __future__ import annotations

import pytest
from aiokafka.partitioner import murmur2 as aiokafka_murmur2

from stream_app.domain.device_records import DeviceView, views_by_partition
from stream_app.domain.events import InputTopic
from stream_app.domain.partitioning import KEY_FIELD, murmur2, partition_for, partition_of

# (key, Utils.murmur2(key) as Java's signed int, from Kafka's own UtilsTest.testMurmur2).
# Java's partition is toPositive(hash) % n = (hash & 0x7fffffff) % n, worked out below per row.
JAVA_MURMUR2 = [
    # key, java hash, toPositive(hash), partition of 4, partition of 12
    (b"21", -973932308, 1173551340, 0, 0),
    (b"foobar", -790332482, 1357151166, 2, 6),
    (b"a-little-bit-long-string", -985981536, 1161502112, 0, 8),
    (b"a-little-bit-longer-string", -1486304829, 661178819, 3, 11),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971, 2088585677, 1, 5),
    (b"abc", 479470107, 479470107, 3, 3),
]


@pytest.mark.parametrize(("key", "java_hash", "positive", "of_4", "of_12"), JAVA_MURMUR2)
def test_partition_matches_java_utils_murmur2(key: bytes, java_hash: int, positive: int, of_4: int, of_12: int) -> None:
    assert java_hash & 0x7FFFFFFF == positive
    assert positive % 4 == of_4 and positive % 12 == of_12
    assert partition_for(key, 4) == partition_of(key, 4) == of_4
    assert partition_for(key, 12) == partition_of(key, 12) == of_12
    assert partition_for(key, 1) == partition_of(key, 1) == 0


# kafka-python's test_murmur2_java_compatibility: partitions of 1000 computed by the Java client.
@pytest.mark.parametrize(
    ("key", "partition"),
    [(b"", 681), (b"a", 524), (b"ab", 434), (b"abc", 107), (b"123456789", 566), (b"\x00 ", 742)],
)
def test_partition_of_1000_matches_java_client(key: bytes, partition: int) -> None:
    assert partition_for(key, 1000) == partition


def test_utf8_key_bytes_are_hashed_not_code_points() -> None:
    # Keys are the UTF-8 bytes of the id ("vidéo" is 6 bytes), as the Java StringSerializer sends them.
    assert "vidéo".encode() == b"vid\xc3\xa9o"
    assert partition_for(b"vid\xc3\xa9o", 4) == 1


@pytest.mark.parametrize("count", [0, -1])
def test_partition_count_must_be_positive(count: int) -> None:
    with pytest.raises(ValueError, match="partition_count"):
        partition_for(b"abc", count)
    with pytest.raises(ValueError, match="partition_count"):
        partition_of(b"abc", count)


def test_key_field_per_input_topic() -> None:
    assert KEY_FIELD == {
        InputTopic.VIEWS: "video_id",
        InputTopic.INTERACTIONS: "video_id",
        InputTopic.PROFILES: "creator_id",
    }


def test_murmur2_equals_aiokafkas_for_every_length_and_byte() -> None:
    """Our murmur2 reads the key as words; aiokafka's (a port of the Java client's) byte by byte."""
    import random

    rng = random.Random(11)
    for length in range(300):
        for _ in range(8):
            key = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(key) == aiokafka_murmur2(key), key


def test_views_go_to_their_devices_partitions_in_order_with_every_partition_listed() -> None:
    # "foobar" and "abc" are on partitions 2 and 3 of 4 (JAVA_MURMUR2); "21" on 0; none on 1
    views = [DeviceView(device, "v", f"e{n}", "u", n, 0) for n, device in enumerate(["abc", "foobar", "21", "abc"])]
    groups = views_by_partition(views, 4)
    assert [[view.event_id for view in group] for group in groups] == [["e2"], [], ["e1"], ["e0", "e3"]]
    assert views_by_partition([], 3) == [[], [], []]
