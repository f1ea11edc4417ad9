"""IngestProcessor reports each event partition's progress to the device partitions: with every batch that
accepted views, and alone (no views) on ticks, at most every PROGRESS_INTERVAL_S and only when it moved, so an
idle partition does not hold the device partitions' watermark back; and on the tick its views topic-partition
is drained (caught up) or stops being so, at once."""

from __future__ import annotations

import asyncio
import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stream_app.domain.device_records import DeviceView, DeviceViews
from stream_app.domain.events import InputTopic
from stream_app.domain.partition import Effects
from stream_app.domain.profiles import ProfileHistory
from stream_app.edges.metrics import RewardsMetrics
from stream_app.edges.settings import load_settings
from stream_app.streaming import ingest
from stream_app.streaming.ingest import IngestProcessor
from stream_app.streaming.topics import TopicNames

DEVICE_PARTITIONS = 4


@dataclass
class FakeProducer:
    sent: list[tuple[int, DeviceViews]] = field(default_factory=list)

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int, *_: Any) -> None:
        assert topic == "device-views"
        self.sent.append((partition, DeviceViews.from_bytes(value)))


class FakeApp:
    def __init__(self) -> None:
        settings = load_settings({})
        names = TopicNames.of(settings)
        self.device_views = FakeProducer()
        self.ingest = IngestProcessor(
            settings=settings,
            metrics=RewardsMetrics(CollectorRegistry()),
            names=dataclasses.replace(names, device_views="device-views"),
            video_state={},
            profiles=ProfileHistory(settings.policy),
            profiles_ready=asyncio.Event(),
            positions=None,  # type: ignore[arg-type]  # no tick here
            counts=lambda topic: DEVICE_PARTITIONS,  # type: ignore[arg-type]
            producer=lambda: self.device_views,
        )


class FakeScorer:
    def __init__(self, progress: int | None, caught_up: bool = False) -> None:
        self.progress = progress
        self.caught_up = {InputTopic.VIEWS: caught_up, InputTopic.INTERACTIONS: False}

    def source_progress_ms(self) -> int | None:
        return self.progress


def view(device: str) -> DeviceView:
    return DeviceView(device, "v", f"e-{device}", "u", 1, 7_000)


async def report(app: FakeApp, scorer: FakeScorer, views: list[DeviceView], *, tick: bool) -> list[Any]:
    before = len(app.device_views.sent)
    if tick:
        app.ingest._progress_due.add(3)
    effects = Effects(device_views=views)
    await app.ingest._report_progress(3, scorer, effects, app.ingest.outbox())  # type: ignore[arg-type]
    return app.device_views.sent[before:]


async def test_a_batch_with_views_reports_to_every_device_partition() -> None:
    app = FakeApp()
    sent = await report(app, FakeScorer(5_000), [view("d1"), view("d2")], tick=False)
    assert sorted(p for p, _ in sent) == list(range(DEVICE_PARTITIONS))
    assert {(v.source, v.through_ts, v.drained) for _, v in sent} == {(3, 5_000, False)}
    assert sorted(r for _, v in sent for r in v.views()) == [view("d1"), view("d2")]


async def test_without_views_progress_goes_on_ticks_when_it_moved(monkeypatch: pytest.MonkeyPatch) -> None:
    app = FakeApp()
    scorer = FakeScorer(5_000)
    assert await report(app, scorer, [], tick=False) == []  # no tick asked for it
    first = await report(app, scorer, [], tick=True)  # never reported: the first tick does
    assert sorted(p for p, _ in first) == list(range(DEVICE_PARTITIONS))
    assert all((v.source, v.through_ts, v.drained, len(v)) == (3, 5_000, False, 0) for _, v in first)
    scorer.progress = 9_000
    assert await report(app, scorer, [], tick=True) == []  # less than PROGRESS_INTERVAL_S since the last report
    monkeypatch.setattr(ingest, "PROGRESS_INTERVAL_S", 0.0)
    assert {v.through_ts for _, v in await report(app, scorer, [], tick=True)} == {9_000}
    assert await report(app, scorer, [], tick=True) == []  # it did not move


async def test_drained_is_reported_on_the_tick_it_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    app = FakeApp()
    scorer = FakeScorer(5_000)
    await report(app, scorer, [view("d1")], tick=False)
    scorer.caught_up[InputTopic.VIEWS] = True
    # caught up, no views in this batch: drained, reported at once (PROGRESS_INTERVAL_S has not passed)
    drained = await report(app, scorer, [], tick=True)
    assert {(v.through_ts, v.drained) for _, v in drained} == {(5_000, True)}
    assert len(drained) == DEVICE_PARTITIONS
    assert await report(app, scorer, [], tick=True) == []  # nothing changed
    # still drained PROGRESS_INTERVAL_S later: said again (a device partition may have changed hands meanwhile)
    monkeypatch.setattr(ingest, "PROGRESS_INTERVAL_S", 0.0)
    assert {(v.through_ts, v.drained) for _, v in await report(app, scorer, [], tick=True)} == {(5_000, True)}
    # a batch with views is never drained, even when the last tick found the partition caught up
    assert {v.drained for _, v in await report(app, scorer, [view("d2")], tick=False)} == {False}


async def test_a_partition_with_nothing_yet_reports_only_that_it_is_drained() -> None:
    app = FakeApp()
    assert await report(app, FakeScorer(None), [], tick=True) == []
    sent = await report(app, FakeScorer(None, caught_up=True), [], tick=True)
    # no progress (-1): it does not move the watermark, but lets the device partitions judge what they hold
    assert {(v.through_ts, v.drained) for _, v in sent} == {(-1, True)}
