"""IngestProcessor scores a batch in parts of about PART_EVENTS events (whole records, in order), each part sent,
acknowledged and written before the next: a batch of envelopes can hold two million events, and scored in one
piece it held the event loop, the table writes and the device agent for seconds (bench/RESULTS.md, Speed steps
17)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from prometheus_client import CollectorRegistry

from stream_app.domain.profiles import ProfileHistory
from stream_app.edges.metrics import RewardsMetrics
from stream_app.edges.settings import load_settings
from stream_app.streaming import ingest
from stream_app.streaming.ingest import IngestProcessor
from stream_app.streaming.topics import TopicNames
from tests.events import view_event

SETTINGS = load_settings({})
NAMES = TopicNames.of(SETTINGS)


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass
class Event:
    message: Message


def processor() -> IngestProcessor:
    ready = asyncio.Event()
    ready.set()
    return IngestProcessor(
        settings=SETTINGS,
        metrics=RewardsMetrics(CollectorRegistry()),
        names=NAMES,
        video_state={},
        profiles=ProfileHistory(SETTINGS.policy),
        profiles_ready=ready,
        positions=None,  # type: ignore[arg-type]  # not reached: _process_part is replaced
        counts=Counts(),  # type: ignore[arg-type]
        producer=lambda: None,
    )


class Counts:
    async def load(self) -> None:
        return None

    def __call__(self, topic: str) -> int:
        return 1


def views(offset: int, count: int) -> Event:
    """A video-views envelope of `count` views (key: the video, as the producer SDK sends it)."""
    events = [view_event(f"e{offset}-{n}", "v1", f"u{n}", 1_000 + n, device_id=f"d{n}") for n in range(count)]
    return Event(Message(NAMES.views, 0, offset, b"v1", orjson.dumps(events if count > 1 else events[0])))


def other(topic: str, offset: int, value: bytes | None = b"{}") -> Event:
    return Event(Message(topic, 0, offset, None, value))


async def parts_of(batch: list[Event], monkeypatch: pytest.MonkeyPatch, part_events: int) -> list[list[Any]]:
    """The parts process_batch hands on, in order: each a list of (record offset, decoded event count or None)."""
    monkeypatch.setattr(ingest, "PART_EVENTS", part_events)
    ingest_processor = processor()
    seen: list[list[Any]] = []

    async def record(records: list[Event], decoded: list[list[Any] | None]) -> None:
        seen.append([(r.message.offset, None if d is None else len(d)) for r, d in zip(records, decoded, strict=True)])

    monkeypatch.setattr(ingest_processor, "_process_part", record)
    await ingest_processor.process_batch(batch)
    return seen


async def test_a_batch_of_envelopes_is_scored_in_parts_of_whole_records(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = [views(offset, 400) for offset in range(10)]
    parts = await parts_of(batch, monkeypatch, part_events=1_000)
    # a part closes at the record that brings it to 1,000 events or more: 3 records of 400, then the next 3, ...
    assert parts == [
        [(0, 400), (1, 400), (2, 400)],
        [(3, 400), (4, 400), (5, 400)],
        [(6, 400), (7, 400), (8, 400)],
        [(9, 400)],
    ]


async def test_a_small_batch_is_one_part_and_every_record_is_handed_on_once(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = [views(0, 1), other(NAMES.ticks, 1), views(2, 5), other(NAMES.device_flags, 3)]
    parts = await parts_of(batch, monkeypatch, part_events=20_000)
    # single-event records, ticks and device flags count one each; the last two are not input records (None)
    assert parts == [[(0, 1), (1, None), (2, 5), (3, None)]]


async def test_a_record_that_is_not_json_counts_as_one_event(monkeypatch: pytest.MonkeyPatch) -> None:
    # decoded to one invalid event (dead-lettered by the scoring pass): one event of its part
    batch = [views(0, 3), other(NAMES.views, 1, b"not json"), views(2, 3)]
    assert await parts_of(batch, monkeypatch, part_events=4) == [[(0, 3), (1, 1)], [(2, 3)]]


async def test_one_record_above_the_part_size_is_a_part_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    batch = [views(0, 50), views(1, 2), views(2, 2)]
    assert await parts_of(batch, monkeypatch, part_events=10) == [[(0, 50)], [(1, 2), (2, 2)]]
