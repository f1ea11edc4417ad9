"""faust_compat 10: an agent's stream queue pauses the partitions putting into it once it holds `max_bytes` of record
values, not only once it holds Faust's 4,096 records, and resumes them once it has drained to 40 % of both (a
worker catching up on envelopes of ~190 KB held its whole fetched backlog: bench/RESULTS.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import faust
import pytest
from faust.channels import Channel
from faust.transport import conductor
from faust.types import TP, Message

from stream_app.streaming import faust_compat
from stream_app.streaming.faust_compat import ByteBoundedQueue

TOPIC = "video-views"
MAX_BYTES = 1_000


@pytest.fixture
def app() -> Iterator[faust.App]:
    """A Faust app (never started) with patch 10 installed at MAX_BYTES; the patch as it was afterwards."""
    queue, bound = Channel.__dict__["queue"], faust_compat._stream_buffer_bytes
    faust_compat._install_byte_bounded_streams(MAX_BYTES)
    app = faust.App("test-stream-buffer", broker="kafka://127.0.0.1:1", autodiscover=False, web_enabled=False)
    app.flow_control.resume()
    try:
        yield app
    finally:
        Channel.queue = queue  # type: ignore[method-assign]
        faust_compat._stream_buffer_bytes = bound


class Pauses:
    """The consumer's view of flow control: which partitions were paused (on_buffer_full) and resumed."""

    def __init__(self, app: faust.App) -> None:
        self.calls: list[tuple[str, TP]] = []
        consumer: Any = app.consumer
        consumer.on_buffer_full = lambda tp: self.calls.append(("paused", tp))
        consumer.on_buffer_drop = lambda tp: self.calls.append(("resumed", tp))


def message(offset: int, value_bytes: int) -> Message:
    value = b"x" * value_bytes
    return Message(
        TOPIC,
        0,
        offset,
        0.0,
        0,
        headers=None,
        checksum=None,
        key=b"video",
        value=value,
        serialized_key_size=5,
        serialized_value_size=len(value),
    )


async def deliver(app: faust.App, channel: Any, values: list[int]) -> None:
    """Each value size as a record of TOPIC partition 0, through the conductor handler Faust itself uses (its
    Cython one when built, else the Python one)."""
    tp, channels, topics = TP(TOPIC, 0), {channel}, cast(Any, app.topics)
    cython: Any = getattr(conductor, "ConductorHandler", None)
    handler = cython(topics, tp, channels) if cython else conductor.ConductorCompiler().build(topics, tp, channels)
    for offset, size in enumerate(values):
        await handler(message(offset, size))


async def test_an_agents_stream_queue_is_bounded_in_bytes(app: faust.App) -> None:
    channel: Any = app.topic(TOPIC, key_serializer="raw", value_serializer="raw").clone(is_iterator=True)
    queue = channel.queue
    assert isinstance(queue, ByteBoundedQueue)
    assert queue.maxsize == app.conf.stream_buffer_maxsize
    assert queue.max_bytes == MAX_BYTES


async def test_heavy_records_pause_their_partition_before_the_record_count_does(app: faust.App) -> None:
    pauses = Pauses(app)
    channel: Any = app.topic(TOPIC, key_serializer="raw", value_serializer="raw").clone(is_iterator=True)
    await deliver(app, channel, [300] * 6)
    queue = channel.queue
    # the fifth record found 1,200 bytes buffered: its partition is paused; the record itself is kept (fetched)
    assert pauses.calls == [("paused", TP(TOPIC, 0))]
    assert (queue.qsize(), queue.buffered_bytes) == (6, 1_800)
    drained = []
    while queue.qsize():
        queue.get_nowait()
        drained.append((queue.buffered_bytes, len(pauses.calls)))
    # resumed once at most 40 % of the bytes were left (checked as the next record is taken), not before
    assert drained == [(1_500, 1), (1_200, 1), (900, 1), (600, 1), (300, 1), (0, 2)]
    assert pauses.calls[-1] == ("resumed", TP(TOPIC, 0))


async def test_light_records_are_bounded_by_faust_record_count_alone(app: faust.App) -> None:
    app.conf.stream_buffer_maxsize = 10
    pauses = Pauses(app)
    channel: Any = app.topic(TOPIC, key_serializer="raw", value_serializer="raw").clone(is_iterator=True)
    await deliver(app, channel, [10] * 9)
    # Faust's own bound: pressure is high at maxsize / 1.25 = 8 records, whatever they weigh
    assert pauses.calls == [("paused", TP(TOPIC, 0))]
    assert channel.queue.buffered_bytes == 90


async def test_a_cleared_queue_holds_no_bytes(app: faust.App) -> None:
    channel: Any = app.topic(TOPIC, key_serializer="raw", value_serializer="raw").clone(is_iterator=True)
    await deliver(app, channel, [400, 400])
    channel.queue.clear()  # Faust clears stream queues on a rebalance (clear_on_resume)
    assert (channel.queue.qsize(), channel.queue.buffered_bytes) == (0, 0)
    await deliver(app, channel, [300] * 3)
    assert channel.queue.buffered_bytes == 900
