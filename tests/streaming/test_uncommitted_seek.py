"""uncommitted_seek: stream partitions without a committed offset start from their earliest offset, and the seek
runs on the consumer's own thread (Consumer.seek from the app's thread raced aiokafka's fetcher and crashed a
worker right after an assignment)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

from stream_app.streaming import uncommitted_seek

VIEWS = "video-views"


class FakeConsumer:
    def __init__(self) -> None:
        self.app = SimpleNamespace(**{uncommitted_seek.STREAM_TOPICS_ATTR: {VIEWS}})
        self._read_offset: dict[TP, int | None] = {}
        self._committed_offset: dict[TP, int | None] = {TP(VIEWS, 0): 12}
        self.waited: list[dict[TP, int]] = []

    def assignment(self) -> set[TP]:
        return {TP(VIEWS, 0), TP(VIEWS, 1), TP(VIEWS, 2), TP("elsewhere", 0)}

    async def seek_to_committed(self) -> dict[TP, int]:
        return {TP(VIEWS, 0): 12}

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: 5 if tp.partition == 1 else 0 for tp in tps}

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.waited.append(dict(partitions))

    async def seek(self, partition: TP, offset: int) -> Any:
        raise AssertionError("Consumer.seek runs on the app's thread, racing the consumer thread's fetcher")


async def test_uncommitted_stream_partitions_seek_to_earliest_on_the_consumer_thread() -> None:
    uncommitted_seek.install()
    consumer = FakeConsumer()
    await Consumer.perform_seek(consumer)  # type: ignore[arg-type]
    assert consumer.waited == [{TP(VIEWS, 1): 5, TP(VIEWS, 2): 0}]
