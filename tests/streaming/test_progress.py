"""IngestProcessor reports each event partition's progress to the device partitions: with every batch that
accepted views, and alone (no views) on ticks, at most every PROGRESS_INTERVAL_S and only when it moved, so an
idle partition does not hold the device partitions' watermark back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from stream_app.domain import jsoncodec
from stream_app.domain.events import InputTopic, ViewEvent
from stream_app.domain.partition import Effects
from stream_app.domain.policy import Policy
from stream_app.streaming import ingest
from stream_app.streaming.emitter import Outbox
from stream_app.streaming.ingest import IngestProcessor

DEVICE_PARTITIONS = 4


@dataclass
class FakeProducer:
    sent: list[tuple[int, Any]] = field(default_factory=list)

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int, *_: Any) -> None:
        assert topic == "device-views"
        self.sent.append((partition, jsoncodec.loads(value)))


class FakeSettings:
    policy = Policy()
    env: dict[str, str] = {}

    def topic(self, topic: InputTopic) -> str:
        return topic.value


class FakeApp:
    def __init__(self) -> None:
        self.settings = FakeSettings()
        self.metrics = object()
        self.topics = object()
        self.device_views = FakeProducer()
        self.device_views_name = "device-views"
        self.ingest = IngestProcessor(self)  # type: ignore[arg-type]
        self.ingest._partition_counts = {self.device_views_name: DEVICE_PARTITIONS}


class FakeScorer:
    def __init__(self, progress: int | None) -> None:
        self.progress = progress

    def source_progress_ms(self) -> int | None:
        return self.progress


def view(device: str) -> ViewEvent:
    return ViewEvent(f"e-{device}", "v", "c", "u", device, 1, 10_000, 90_000, "for_you", "US")


async def report(app: FakeApp, scorer: FakeScorer, views: list[ViewEvent], *, tick: bool) -> list[Any]:
    before = len(app.device_views.sent)
    if tick:
        app.ingest._progress_due.add(3)
    effects = Effects(device_views=views)
    outbox = Outbox(app.device_views, lambda topic: DEVICE_PARTITIONS)
    await app.ingest._report_progress(3, scorer, effects, outbox)  # type: ignore[arg-type]
    return app.device_views.sent[before:]


async def test_a_batch_with_views_reports_to_every_device_partition() -> None:
    app = FakeApp()
    sent = await report(app, FakeScorer(5_000), [view("d1"), view("d2")], tick=False)
    assert sorted(p for p, _ in sent) == list(range(DEVICE_PARTITIONS))
    assert {(v["source"], v["through_ts"]) for _, v in sent} == {(3, 5_000)}
    assert sorted(r["device_id"] for _, v in sent for r in v["records"]) == ["d1", "d2"]


async def test_without_views_progress_goes_on_ticks_when_it_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    app = FakeApp()
    scorer = FakeScorer(5_000)
    assert await report(app, scorer, [], tick=False) == []  # no tick asked for it
    first = await report(app, scorer, [], tick=True)  # never reported: the first tick does
    assert sorted(p for p, _ in first) == list(range(DEVICE_PARTITIONS))
    assert all(v == {"source": 3, "through_ts": 5_000, "records": []} for _, v in first)
    scorer.progress = 9_000
    assert await report(app, scorer, [], tick=True) == []  # less than PROGRESS_INTERVAL_S since the last report
    monkeypatch.setattr(ingest, "PROGRESS_INTERVAL_S", 0.0)
    assert {v["through_ts"] for _, v in await report(app, scorer, [], tick=True)} == {9_000}
    assert await report(app, scorer, [], tick=True) == []  # it did not move


async def test_a_partition_with_nothing_yet_reports_nothing() -> None:
    app = FakeApp()
    assert await report(app, FakeScorer(None), [], tick=True) == []
