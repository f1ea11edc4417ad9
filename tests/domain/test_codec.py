"""The stored-value codec: plain JSON under COMPRESS_MIN_BYTES, one zstd frame from there (format 3), both read
back; values of format 2 (written before compression) still read; damaged or foreign values refused by name."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from stream_app.domain import codec, jsoncodec
from stream_app.domain.codec import Kind
from stream_app.domain.errors import StateFormatError


def segment_like(entries: int, seed: int = 1) -> list[object]:
    """A payload shaped like a journal segment: random event ids, repeated viewer ids, near timestamps."""
    rng = random.Random(seed)
    return [
        7,
        [
            [f"{rng.getrandbits(128):032x}", f"u-{rng.randrange(500):07d}", 1_700_000_000_000 + i * 13, 12_000]
            for i in range(entries)
        ],
    ]


def test_a_large_value_is_compressed_and_reads_back_equal() -> None:
    payload = segment_like(2_000)
    plain_bytes = len(jsoncodec.dumps(payload))
    stored = codec.encode(Kind.SEGMENT, payload)
    assert stored[:3] == bytes([codec.MAGIC, codec.COMPRESSED]) + Kind.SEGMENT.value
    assert len(stored) * 2 < plain_bytes  # random 128-bit ids bound the ratio; the rest compresses well
    assert codec.decode(Kind.SEGMENT, stored) == payload


def test_a_small_value_stays_plain_json() -> None:
    payload = [1, 2, "policy", [[0, 5]]]
    stored = codec.encode(Kind.META, payload)
    assert stored == bytes([codec.MAGIC, codec.PLAIN]) + Kind.META.value + jsoncodec.dumps(payload)
    assert codec.decode(Kind.META, stored) == payload


def test_the_threshold_decides_per_value() -> None:
    just_under = ["x" * (codec.COMPRESS_MIN_BYTES - 5)]  # ["…"]: 4 bytes of JSON around it
    at = ["x" * (codec.COMPRESS_MIN_BYTES - 4)]
    assert len(jsoncodec.dumps(just_under)) == codec.COMPRESS_MIN_BYTES - 1
    assert codec.encode(Kind.HEAD, just_under)[1] == codec.PLAIN
    assert codec.encode(Kind.HEAD, at)[1] == codec.COMPRESSED
    assert codec.decode(Kind.HEAD, codec.encode(Kind.HEAD, at)) == at


def test_values_written_before_compression_still_read() -> None:
    """Format 2 is what the previous release wrote for every value: a worker upgraded on its state reads it."""
    payload = segment_like(500)
    format_2 = bytes([codec.MAGIC, 2]) + Kind.DEVICE_LOG.value + jsoncodec.dumps(payload)
    assert codec.decode(Kind.DEVICE_LOG, format_2) == payload


def test_a_damaged_compressed_value_is_refused_by_name() -> None:
    stored = codec.encode(Kind.SEGMENT, segment_like(1_000))
    damaged = stored[:40] + bytes(b ^ 0xFF for b in stored[40:60]) + stored[60:]
    with pytest.raises(StateFormatError, match="stored segment value does not decompress"):
        codec.decode(Kind.SEGMENT, damaged)


def test_a_compressed_value_of_another_kind_is_refused() -> None:
    stored = codec.encode(Kind.SEGMENT, segment_like(1_000))
    with pytest.raises(StateFormatError, match=r"stored device_log value holds kind b'j'"):
        codec.decode(Kind.DEVICE_LOG, stored)


@pytest.mark.parametrize("version", [1, 4, 9])
def test_a_format_this_worker_does_not_know_is_refused_naming_the_ones_it_reads(version: int) -> None:
    foreign = bytes([codec.MAGIC, version]) + Kind.SEGMENT.value + b"[]"
    with pytest.raises(StateFormatError, match=f"state written in format {version}, this worker reads formats 2 and 3"):
        codec.decode(Kind.SEGMENT, foreign)


def test_threads_of_one_process_encode_and_decode_at_once() -> None:
    """zstd contexts are per thread: one shared by threads crashed the interpreter (the chaos tests run their
    oracles in threads of one process)."""
    payloads = [segment_like(3_000, seed) for seed in range(8)]

    def round_trips(payload: list[object]) -> bool:
        return all(codec.decode(Kind.SEGMENT, codec.encode(Kind.SEGMENT, payload)) == payload for _ in range(20))

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(round_trips, payloads))
