"""Positions.position_and_highwater: the position is after the last record *processed* (SPEC §5 "caught up"), not
what the consumer fetched into Faust's stream buffer; before any, where processing starts. A partition revoked
meanwhile gives no answer instead of crashing the timer that asked."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from faust.types import TP

from stream_app.edges.settings import load_settings
from stream_app.streaming.positions import Positions
from stream_app.streaming.topics import TopicNames

TOPIC = "video-views"


class FakeConsumer:
    def __init__(self, highwater: int, committed: int | None = None, earliest: int = 0) -> None:
        self._highwater = highwater
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset[TP(TOPIC, 0)] = committed
        self.earliest = earliest
        self.earliest_calls = 0
        self.assigned = True
        self._read_offset: dict[TP, int] = {}  # the last offset Faust handed to the stream's buffer

    def highwater(self, tp: TP) -> int:
        assert self.assigned, "Partition is not assigned"
        return self._highwater

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        self.earliest_calls += 1
        if not self.assigned:
            raise AssertionError("Partition is not assigned")
        return {tp: self.earliest for tp in tps}


def app_with(
    consumer: FakeConsumer, processed: dict[tuple[str, int], int] | None = None, *, stopping: bool = False
) -> Positions:
    positions = Positions(lambda: consumer, TopicNames.of(load_settings({})), lambda: stopping)
    positions.processed.update(processed or {})
    return positions


async def position(app: Positions) -> tuple[int | None, int | None]:
    return await app.position_and_highwater(TOPIC, 0)


async def test_the_position_is_after_the_last_processed_record() -> None:
    # the consumer may have fetched up to 100 already; the agent processed up to offset 41
    app = app_with(FakeConsumer(highwater=100, committed=10), {(TOPIC, 0): 42})
    assert await position(app) == (42, 100)


async def test_before_any_processed_record_it_is_the_committed_offset() -> None:
    assert await position(app_with(FakeConsumer(highwater=100, committed=10))) == (10, 100)


async def test_with_no_commit_it_is_the_earliest_offset_asked_once() -> None:
    consumer = FakeConsumer(highwater=100, committed=None, earliest=3)
    app = app_with(consumer)
    assert await position(app) == (3, 100)
    assert await position(app) == (3, 100)
    assert consumer.earliest_calls == 1


async def test_a_revoked_partition_gives_no_answer() -> None:
    consumer = FakeConsumer(highwater=100, committed=None)
    consumer.assigned = False
    assert await position(app_with(consumer)) == (None, None)


async def test_the_high_watermark_is_at_least_what_was_fetched() -> None:
    # tansu reports the last batch's base offset + 1 (here 90) though records up to 99 exist and were fetched:
    # processing up to 90 is not caught up
    consumer = FakeConsumer(highwater=90, committed=10)
    consumer._read_offset[TP(TOPIC, 0)] = 99
    assert await position(app_with(consumer, {(TOPIC, 0): 90})) == (90, 100)


async def test_no_offset_lookup_once_the_worker_is_stopping() -> None:
    # Faust's consumer thread answers no lookup during a shutdown: asking would only hold the shutdown
    consumer = FakeConsumer(highwater=100, committed=None, earliest=3)
    assert await position(app_with(consumer, stopping=True)) == (None, 100)
    assert consumer.earliest_calls == 0


async def test_an_unanswered_offset_lookup_gives_no_position_instead_of_waiting(monkeypatch: Any) -> None:
    import asyncio

    from stream_app.streaming import positions as positions_module

    class SilentConsumer(FakeConsumer):
        async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
            await asyncio.Event().wait()  # never answers
            raise AssertionError("unreachable")

    monkeypatch.setattr(positions_module, "OFFSET_LOOKUP_TIMEOUT_S", 0.05)
    assert await position(app_with(SilentConsumer(highwater=100, committed=None))) == (None, 100)
