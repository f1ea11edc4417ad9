"""Publishes the simulator's traffic (`stream-app simulate`, SPEC §10) through the producer SDK, labels to a side file.

Fast mode replays event time from `start_ms` as fast as the broker takes it; realtime mode stamps events with the
wall clock and paces them to `rate_per_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from stream_app.domain import jsoncodec
from stream_app.domain.events import InputTopic
from stream_app.edges.producer import RewardsProducer, SendMode, SendReport
from stream_app.tools.simulator.generate import generate
from stream_app.tools.simulator.scenarios import SimEvent, SimulationConfig, label_record

log = logging.getLogger(__name__)

DEFAULT_BATCH_EVENTS = 500
# Realtime mode sends what is due every tick rather than sleeping per event (thousands of events per second).
_TICK_MS = 50
# SPEC §4 MAX_CLOCK_SKEW_S default: an event more than this ahead of its Kafka timestamp is `future_timestamp`.
_CLOCK_SKEW_MS = 300_000


class SimulationProducer(Protocol):
    """What the runner needs of RewardsProducer (a fake stands in for it in tests)."""

    async def send(self, topic: InputTopic, events: Iterable[Mapping[str, object]]) -> SendReport: ...

    async def send_raw_records(
        self, topic: InputTopic, records: Iterable[tuple[bytes | None, bytes]]
    ) -> SendReport: ...


ProducerFactory = Callable[..., AbstractAsyncContextManager[SimulationProducer]]


@dataclass
class SimulationReport:
    """What a run published: events by topic, label and expected reason, Kafka records and bytes, timing."""

    events: int = 0
    records: int = 0
    bytes: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)
    by_label: dict[str, int] = field(default_factory=dict)
    expected_reasons: dict[str, int] = field(default_factory=dict)
    first_ts: int | None = None
    last_ts: int | None = None
    elapsed_s: float = 0.0
    labels_path: Path | None = None
    stopped_early: bool = False
    # realtime: how late the first traffic event was ready (the generator's start-up); the run is paced that much
    # behind event time instead of sending the backlog at once
    start_delay_s: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def count(self, event: SimEvent) -> None:
        self.events += 1
        _bump(self.by_topic, event.topic.value)
        _bump(self.by_label, event.label)
        if event.expected_reason is not None:
            _bump(self.expected_reasons, event.expected_reason)
        if self.first_ts is None:
            self.first_ts = event.at_ms
        self.last_ts = event.at_ms

    def add(self, sent: SendReport) -> None:
        self.records += sent.records
        self.bytes += sent.bytes

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (for the CLI)."""
        summary = dataclasses.asdict(self)
        summary["labels_path"] = str(self.labels_path) if self.labels_path else None
        summary["elapsed_s"] = round(self.elapsed_s, 3)
        summary["events_per_s"] = round(self.events_per_s, 1)
        return summary


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def fast_start_ms(duration_s: float, now_ms: int | None = None) -> int:
    """The start_ms that makes a fast-mode run end now, so no event is ahead of its Kafka timestamp."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return now - int(duration_s * 1000)


class _Batches:
    """Per-topic buffers of event objects and of raw (malformed) records, sent a batch at a time."""

    def __init__(self, producer: SimulationProducer, report: SimulationReport, batch_events: int) -> None:
        self._producer = producer
        self._report = report
        self._batch_events = batch_events
        self._events: dict[InputTopic, list[dict[str, Any]]] = {topic: [] for topic in InputTopic}
        self._raw: dict[InputTopic, list[tuple[bytes | None, bytes]]] = {topic: [] for topic in InputTopic}

    async def add(self, event: SimEvent) -> None:
        if isinstance(event.payload, bytes):
            raw = self._raw[event.topic]
            raw.append((event.raw_key, event.payload))
            if len(raw) >= self._batch_events:
                await self._send_raw(event.topic)
            return
        pending = self._events[event.topic]
        pending.append(event.payload)
        if len(pending) >= self._batch_events:
            await self._send(event.topic)

    async def flush(self) -> None:
        for topic in InputTopic:
            if self._events[topic]:
                await self._send(topic)
            if self._raw[topic]:
                await self._send_raw(topic)

    async def _send(self, topic: InputTopic) -> None:
        batch, self._events[topic] = self._events[topic], []
        self._report.add(await self._producer.send(topic, batch))

    async def _send_raw(self, topic: InputTopic) -> None:
        batch, self._raw[topic] = self._raw[topic], []
        self._report.add(await self._producer.send_raw_records(topic, batch))


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _sleep_until(at_ms: int, stop: asyncio.Event | None) -> None:
    """Wait until the wall clock reaches `at_ms`, or until `stop` is set (a quiet stretch can be long)."""
    delay = max(0, at_ms - _now_ms()) / 1000
    if stop is None:
        await asyncio.sleep(delay)
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay)


async def run_simulation(
    config: SimulationConfig,
    *,
    bootstrap: str,
    topic_prefix: str = "",
    mode: SendMode = "envelope",
    labels_path: Path | None = None,
    realtime: bool = False,
    batch_events: int = DEFAULT_BATCH_EVENTS,
    client_kwargs: Mapping[str, Any] | None = None,
    stop: asyncio.Event | None = None,
    on_progress: Callable[[SimulationReport], None] | None = None,
    producer_factory: ProducerFactory = RewardsProducer,
    events: Iterable[SimEvent] | None = None,
) -> SimulationReport:
    """Generate `config`'s traffic and publish it; returns what was sent. Labels go to `labels_path` (JSON lines).

    Realtime: the run starts now (event ts = wall clock) and each event is sent when its time comes (later by the
    generator's start-up, `start_delay_s`, when that made the first traffic event late). Otherwise
    event time starts at `config.start_ms` and events go out as fast as the broker acknowledges them. Setting
    `stop` ends the run early (after sending what was generated so far). `events`, when given, are published
    instead of `generate(config)` (a part of the generated stream: the quality report's baseline run).
    """
    if realtime:
        config = dataclasses.replace(config, start_ms=_now_ms())
    elif config.end_ms > _now_ms() + _CLOCK_SKEW_MS:
        log.warning(
            "simulated events run up to %d s ahead of the wall clock: the worker will count them as "
            "future_timestamp; start earlier (start_ms = now - duration) or use realtime",
            (config.end_ms - _now_ms()) // 1000,
        )
    report = SimulationReport(labels_path=labels_path)
    started = time.monotonic()
    labels = open(labels_path, "wb") if labels_path is not None else None  # noqa: SIM115 (closed below)
    try:
        async with producer_factory(
            bootstrap, topic_prefix=topic_prefix, mode=mode, client_kwargs=client_kwargs
        ) as producer:
            batches = _Batches(producer, report, batch_events)
            stream = generate(config) if events is None else events
            await _publish(stream, batches, report, labels, realtime, stop, on_progress)
            await batches.flush()
    finally:
        if labels is not None:
            labels.close()
        report.elapsed_s = time.monotonic() - started
    return report


async def _publish(
    events: Iterable[SimEvent],
    batches: _Batches,
    report: SimulationReport,
    labels: IO[bytes] | None,
    realtime: bool,
    stop: asyncio.Event | None,
    on_progress: Callable[[SimulationReport], None] | None,
) -> None:
    progress_every = 10_000
    in_profiles = True
    delay_ms = 0  # realtime: each event is due at its at_ms + delay_ms (see SimulationReport.start_delay_s)
    for index, event in enumerate(events):
        if in_profiles and event.topic is not InputTopic.PROFILES:
            # Profiles first, so the worker knows the creators before their first views arrive.
            in_profiles = False
            await batches.flush()
            if realtime:
                # A high rate's generator takes seconds to set up (millions of viewers, the sessions already in
                # flight) after the run's start; sending what fell due meanwhile at once would be a burst, not
                # the rate asked for. The run is paced from here instead, its events stamped that much earlier.
                delay_ms = max(0, _now_ms() - event.at_ms)
                report.start_delay_s = delay_ms / 1000
        if realtime and event.at_ms + delay_ms > _now_ms() + _TICK_MS:
            await batches.flush()
            if labels is not None:
                labels.flush()
            await _sleep_until(event.at_ms + delay_ms, stop)
        if stop is not None and stop.is_set():
            report.stopped_early = True
            return
        if labels is not None:
            labels.write(jsoncodec.dumps(label_record(index, event)) + b"\n")
        report.count(event)
        await batches.add(event)
        if on_progress is not None and report.events % progress_every == 0:
            on_progress(report)
