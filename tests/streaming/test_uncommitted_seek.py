"""faust_compat's seek: stream partitions without a committed offset start from their earliest offset, the seek runs
on the consumer's own thread (Consumer.seek from the app's thread raced aiokafka's fetcher and crashed a worker
right after an assignment), and Faust's resume of stream partitions waits until they are sought (records fetched
from the old position reached the agent before the seek and were scored out of order)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

from stream_app.streaming import faust_compat
from stream_app.streaming.delivery_guard import DeliveryGuard

VIEWS = "video-views"
CHANGELOG = "app-video-state-changelog"


def install(guard: DeliveryGuard | None = None) -> SimpleNamespace:
    """faust_compat's patches, and an app whose stream topic is VIEWS (its seeks reported to `guard`)."""
    app = SimpleNamespace()

    async def true_ends(reported: Any) -> Any:
        return reported

    faust_compat.install(
        app,  # type: ignore[arg-type]
        true_ends=true_ends,
        stream_topics=[VIEWS],
        on_sought=None if guard is None else guard.sought,
    )
    return app


class FakeConsumer:
    def __init__(self, app: SimpleNamespace) -> None:
        self.app = app
        self._read_offset: dict[TP, int | None] = {}
        self._committed_offset: dict[TP, int | None] = {TP(VIEWS, 0): 12}
        self._active: set[TP] = set()
        self._paused_partitions: set[TP] = set()
        self.waited: list[dict[TP, int]] = []
        self.active_when_sought: list[set[TP]] = []

    def _get_active_partitions(self) -> set[TP]:
        return self._active

    def assignment(self) -> set[TP]:
        return {TP(VIEWS, 0), TP(VIEWS, 1), TP(VIEWS, 2), TP(CHANGELOG, 0)}

    async def seek_to_committed(self) -> dict[TP, int]:
        return {TP(VIEWS, 0): 12}

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: 5 if tp.partition == 1 else 0 for tp in tps}

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.waited.append(dict(partitions))
        self.active_when_sought.append(set(self._active))

    async def seek(self, partition: TP, offset: int) -> Any:
        raise AssertionError("Consumer.seek runs on the app's thread, racing the consumer thread's fetcher")


async def test_uncommitted_stream_partitions_seek_to_earliest_on_the_consumer_thread() -> None:
    guard = DeliveryGuard([VIEWS])
    consumer = FakeConsumer(install(guard))
    await Consumer.perform_seek(consumer)  # type: ignore[arg-type]
    assert consumer.waited == [{TP(VIEWS, 1): 5, TP(VIEWS, 2): 0}]
    # the delivery guard knows where each stream partition's records start again: committed, else earliest
    assert guard.holes([event(0, 12), event(1, 5), event(2, 0)]) == []
    assert guard.holes([event(1, 7)]) == [(VIEWS, 1, 6, 7)]


def event(partition: int, offset: int) -> Any:
    return SimpleNamespace(message=SimpleNamespace(topic=VIEWS, partition=partition, offset=offset))


async def test_stream_partitions_are_resumed_only_once_sought() -> None:
    consumer = FakeConsumer(install())
    streams = {TP(VIEWS, 0), TP(VIEWS, 1), TP(VIEWS, 2)}
    Consumer.resume_partitions(consumer, streams | {TP(CHANGELOG, 0)})  # type: ignore[arg-type]
    assert consumer._active == {TP(CHANGELOG, 0)}  # changelogs resume at once, streams wait for their seek
    await Consumer.perform_seek(consumer)  # type: ignore[arg-type]
    assert consumer.active_when_sought == [{TP(CHANGELOG, 0)}]
    assert consumer._active == streams | {TP(CHANGELOG, 0)}
