"""Flat with state, memory and restart (issue 9, targets 3 and 4): a hot-video workload the simulator cannot make.

The workload (`HotWorkload`, seeded, generated here): views and interactions in event-time order over SPAN_S (6 h)
ending now, on VIDEOS videos of CREATORS eligible creators, one video taking about half the views and the rest
spread by a power law (Zipf, exponent 1.1); each view is by a new viewer with the probability that makes about
`viewers` distinct viewers, else by an earlier one; 3 % of the events are interactions by a recent viewer of the
same video. Every viewer has one device. Nothing in it breaks an authenticity rule on purpose.

For each store (memory://, then rocksdb://) on the same published input, its own app id (group, changelog, data
directory): the scorer processes everything (rate over the first and last third of the input, from /metrics
scraped with timestamps; peak RSS); once its offsets are committed it is SIGKILLed; a small tail of new events is
published and a new worker is started on the same state (memory:// restores from the changelog, rocksdb:// from
its data directory in the same working directory plus the changelog): the restart time runs from its launch to the
moment every tail event is processed. The state bytes (changelog records) written in each third of the memory run
show whether a batch's work grows with what a video remembers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from bisect import bisect
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from stream_app.domain.events import InputTopic
from stream_app.tools.benchmark.common import (
    BenchError,
    Measurement,
    changelog_topic_names,
    committed_offsets_reach_end,
    log,
    timeout_for,
)
from stream_app.tools.benchmark.throughput import ScorerRun
from stream_app.tools.harness import input_topic_names, read_topic_bytes

SPAN_S = 6 * 3600
VIDEOS = 2_000
CREATORS = 400
HOT_SHARE = 0.5
INTERACTION_SHARE = 0.03
ZIPF_EXPONENT = 1.1
SEED = 9
TAIL_EVENTS = 2_000
PUBLISH_CHUNK_EVENTS = 20_000
COMMIT_WAIT_S = 30.0
_RECENT_VIEWS = 4_096
_REGIONS = ("US", "IN", "BR", "ID", "GB", "DE", "MX", "FR", "JP", "PH")
_KINDS = ("like", "comment", "share")


@dataclass
class HotStats:
    """What the generated workload holds (the state the scorer remembers follows from it)."""

    views: int = 0
    interactions: int = 0
    hot_views: int = 0
    viewers: int = 0  # distinct viewers
    pairs: set[int] = field(default_factory=set)  # distinct (video, viewer) of views, as video << 32 | viewer

    @property
    def remembered_viewers(self) -> int:
        """Distinct (video, viewer) pairs with a view: each is remembered (qualify-once, dedupe, engagement) 24 h."""
        return len(self.pairs)


class HotWorkload:
    """Seeded generator of the hot-video workload; `events` can be called again for a tail that continues it."""

    def __init__(self, total_events: int, viewers: int, seed: int = SEED) -> None:
        self.rng = random.Random(seed)
        self.video_ids = [f"hv-{i:012x}" for i in range(VIDEOS)]
        self.creator_ids = [f"hc-{i:06x}" for i in range(CREATORS)]
        self.video_ms = [self.rng.randrange(15_000, 90_000) for _ in range(VIDEOS)]
        # video 0 is the hot one; the others by a power law of their rank
        self.cold_cum = list(accumulate(1.0 / rank**ZIPF_EXPONENT for rank in range(1, VIDEOS)))
        expected_views = max(1, int(total_events * (1 - INTERACTION_SHARE)))
        self.new_viewer_p = min(1.0, viewers / expected_views)
        self.recent: deque[tuple[int, int]] = deque(maxlen=_RECENT_VIEWS)
        self.stats = HotStats()

    def creator_of(self, video: int) -> str:
        return self.creator_ids[video % CREATORS]

    def profiles(self, ts: int) -> list[dict[str, Any]]:
        return [
            {
                "creator_id": creator,
                "followers": 50_000,
                "views_30d": 1_000_000,
                "adult": True,
                "standing": "good",
                "ts": ts,
            }
            for creator in self.creator_ids
        ]

    def events(self, count: int, start_ms: int, end_ms: int) -> Iterator[tuple[InputTopic, dict[str, Any]]]:
        """`count` events with ts spread evenly over [start_ms, end_ms]."""
        rng, stats = self.rng, self.stats
        step = (end_ms - start_ms) / max(1, count - 1)
        for i in range(count):
            ts = start_ms + int(i * step)
            if self.recent and rng.random() < INTERACTION_SHARE:
                video, viewer = self.recent[rng.randrange(len(self.recent))]
                stats.interactions += 1
                interaction = self._event(video, viewer, ts)
                interaction["kind"] = _KINDS[rng.randrange(len(_KINDS))]
                yield InputTopic.INTERACTIONS, interaction
                continue
            yield InputTopic.VIEWS, self._view(ts)

    def _view(self, ts: int) -> dict[str, Any]:
        rng, stats = self.rng, self.stats
        if rng.random() < HOT_SHARE:
            video = 0
            stats.hot_views += 1
        else:
            video = 1 + bisect(self.cold_cum, rng.random() * self.cold_cum[-1])
        if stats.viewers == 0 or rng.random() < self.new_viewer_p:
            viewer = stats.viewers
            stats.viewers += 1
        else:
            viewer = rng.randrange(stats.viewers)
        stats.views += 1
        stats.pairs.add(video << 32 | viewer)
        self.recent.append((video, viewer))
        video_ms = self.video_ms[video]
        view = self._event(video, viewer, ts)
        view["watch_ms"] = rng.randrange(video_ms // 3, video_ms + 1)
        view["video_ms"] = video_ms
        view["source"] = "for_you" if rng.random() < 0.8 else "following"
        view["region"] = _REGIONS[rng.randrange(len(_REGIONS))]
        return view

    def _event(self, video: int, viewer: int, ts: int) -> dict[str, Any]:
        """The fields a view and an interaction share (the event id is the next draw)."""
        return {
            "event_id": f"{self.rng.getrandbits(128):032x}",
            "video_id": self.video_ids[video],
            "creator_id": self.creator_of(video),
            "viewer_id": f"hu-{viewer:010x}",
            "device_id": f"hd-{viewer:010x}",
            "ts": ts,
        }


@dataclass
class Published:
    events: int = 0
    records: int = 0
    bytes: int = 0
    seconds: float = 0.0


def publish_events(
    bootstrap: str,
    prefix: str,
    security: Mapping[str, Any],
    events: Iterator[tuple[InputTopic, dict[str, Any]]],
    profiles: list[dict[str, Any]] | None = None,
) -> Published:
    """Publish in event-time order as envelopes: chunks of PUBLISH_CHUNK_EVENTS, each chunk's views then its
    interactions (so neither topic runs hours of event time ahead of the other)."""

    async def publish() -> Published:
        from stream_app.edges.producer import RewardsProducer, SendReport

        started = time.monotonic()
        total = SendReport()
        async with RewardsProducer(bootstrap, topic_prefix=prefix, mode="envelope", client_kwargs=security) as p:
            if profiles:
                total += await p.send(InputTopic.PROFILES, profiles)
            chunk: dict[InputTopic, list[dict[str, Any]]] = {InputTopic.VIEWS: [], InputTopic.INTERACTIONS: []}
            pending = 0
            for topic, payload in events:
                chunk[topic].append(payload)
                pending += 1
                if pending >= PUBLISH_CHUNK_EVENTS:
                    for name, batch in chunk.items():
                        total += await p.send(name, batch)
                        batch.clear()
                    pending = 0
            for name, batch in chunk.items():
                if batch:
                    total += await p.send(name, batch)
        return Published(total.events, total.records, total.bytes, time.monotonic() - started)

    return asyncio.run(publish())


# ---- measuring -------------------------------------------------------------------------------------------------


@dataclass
class Thirds:
    first_rate: float
    last_rate: float
    edges: tuple[float, float, float, float]  # time.monotonic() at 0, 1/3, 2/3 and all of the input processed

    @property
    def ratio(self) -> float:
        return self.last_rate / self.first_rate if self.first_rate > 0 else 0.0


def crossing_time(timeline: list[tuple[float, int]], target: float) -> float:
    """When the processed count reached `target`, interpolated linearly between the scrapes around it."""
    previous = timeline[0]
    for point in timeline:
        if point[1] >= target:
            t0, n0 = previous
            t1, n1 = point
            return t1 if n1 == n0 else t0 + (t1 - t0) * (target - n0) / (n1 - n0)
        previous = point
    return timeline[-1][0]


def thirds_of(timeline: list[tuple[float, int]], total: int, quiet_at: float | None = None) -> Thirds | None:
    """The rates over the first and last third of the input; the last third ends at `quiet_at` (the moment the
    worker went quiet after its last event: the device judge's and the table writes' tail) when it is later than
    the last event processed."""
    if len(timeline) < 2:
        return None
    start = timeline[0][0]
    one, two, end = (crossing_time(timeline, total * k / 3) for k in (1, 2, 3))
    if quiet_at is not None and quiet_at > end:
        end = quiet_at
    third = total / 3
    first = third / (one - start) if one > start else 0.0
    last = third / (end - two) if end > two else 0.0
    return Thirds(first, last, (start, one, two, end))


@dataclass
class StoreRun:
    """One store's pass over the hot input, and its restart."""

    store: str
    measurement: Measurement
    thirds: Thirds | None
    restart_s: float | None = None  # launch of the new worker -> every tail event processed
    restart_first_s: float | None = None  # launch -> ready again (state restored, partitions assigned)
    restart_peak_rss_mib: float | None = None
    restart_failure: str | None = None
    state_bytes_by_third: tuple[int, int, int] | None = None  # changelog bytes written in each third


@dataclass
class HotResult:
    events: int
    span_s: float
    stats: HotStats
    published: Published
    runs: list[StoreRun]
    tail_events: int
    remembered_viewers: int  # of the input before any tail (HotStats.remembered_viewers)


def measure_hot(
    bootstrap: str,
    prefix: str,
    app_ids: Mapping[str, str],
    events: int,
    viewers: int,
    workdir: Path,
    broker_pid: int | None,
    security: Mapping[str, Any],
) -> HotResult:
    """Publish the hot workload once, then one StoreRun per store in `app_ids` (store -> app id), in order."""
    workload = HotWorkload(events, viewers)
    end_ms = int(time.time() * 1000) - 60_000
    start_ms = end_ms - SPAN_S * 1000
    log.info("hot workload: publishing %d events over %d s of event time", events, SPAN_S)
    published = publish_events(
        bootstrap, prefix, security, workload.events(events, start_ms, end_ms), workload.profiles(start_ms - 1000)
    )
    # the input's figures, before the tails add to the workload's counts
    stats = dataclasses.replace(workload.stats, pairs=set())
    remembered = workload.stats.remembered_viewers
    log.info(
        "hot workload: %d views (%.0f %% on the hot video), %d interactions, %d distinct viewers, published in %.0f s",
        stats.views,
        100 * stats.hot_views / max(1, stats.views),
        stats.interactions,
        stats.viewers,
        published.seconds,
    )
    expected = {
        InputTopic.PROFILES.value: CREATORS,
        InputTopic.VIEWS.value: stats.views,
        InputTopic.INTERACTIONS.value: stats.interactions,
    }
    runs = []
    for store, app_id in app_ids.items():
        store_dir = workdir / store.rstrip(":/")
        store_dir.mkdir(exist_ok=True)
        run, tail = _store_run(bootstrap, prefix, app_id, store, expected, store_dir, broker_pid, security, workload)
        runs.append(run)
        for topic, count in tail.items():  # the next store's pass also reads this one's tail
            expected[topic] += count
    if runs and runs[0].thirds is not None:
        runs[0].state_bytes_by_third = _state_bytes_by_third(bootstrap, prefix, app_ids[runs[0].store], runs[0])
    return HotResult(events, SPAN_S, stats, published, runs, TAIL_EVENTS, remembered)


def _store_run(
    bootstrap: str,
    prefix: str,
    app_id: str,
    store: str,
    expected: Mapping[str, int],
    workdir: Path,
    broker_pid: int | None,
    security: Mapping[str, Any],
    workload: HotWorkload,
) -> tuple[StoreRun, dict[str, int]]:
    """The store's pass over the input, the kill, the tail and the restart; also the tail's events by topic."""
    env = {"STORE": store}
    name = f"scorer, hot workload, {store}"
    total = sum(expected.values())
    with ScorerRun(bootstrap, prefix, app_id, workdir, broker_pid=broker_pid, log_name="scorer", env=env) as run:
        measurement = run.watch(expected, timeout_for(total), name)
        log.info("%s: %.0f events/s", name, measurement.events_per_s)
        if measurement.failure is not None:
            return StoreRun(store, measurement, thirds_of(measurement.timeline, total)), {}
        if not committed_offsets_reach_end(bootstrap, app_id, input_topic_names(prefix), COMMIT_WAIT_S):
            log.warning("%s: offsets not all committed after %.0f s; killing it anyway", name, COMMIT_WAIT_S)
        run.kill()
    quiet_at = measurement.timeline[0][0] + measurement.seconds if measurement.timeline else None
    result = StoreRun(store, measurement, thirds_of(measurement.timeline, total, quiet_at))
    before = (workload.stats.views, workload.stats.interactions)
    now_ms = int(time.time() * 1000)
    publish_events(bootstrap, prefix, security, workload.events(TAIL_EVENTS, now_ms - 2_000, now_ms))
    tail = {
        InputTopic.VIEWS.value: workload.stats.views - before[0],
        InputTopic.INTERACTIONS.value: workload.stats.interactions - before[1],
    }
    with ScorerRun(bootstrap, prefix, app_id, workdir, broker_pid=broker_pid, log_name="restart", env=env) as again:
        restart = again.watch(tail, timeout_for(TAIL_EVENTS), f"{name}, restarted", until_quiet=False)
        # its peak once every partition is restored: the device judge restores after the tail is scored
        settled = again.peak_rss_once_settled() if restart.failure is None else None
    result.restart_peak_rss_mib = settled or restart.peak_rss_mib
    if restart.failure is None:
        result.restart_first_s = restart.startup_s
        result.restart_s = (restart.startup_s or 0.0) + restart.seconds
    else:
        result.restart_failure = restart.failure
    log.info("%s: restarted and scoring again in %s s", name, result.restart_s)
    return result, tail


def _state_bytes_by_third(bootstrap: str, prefix: str, app_id: str, run: StoreRun) -> tuple[int, int, int] | None:
    """Changelog bytes written in each third of the pass: the records whose timestamp (the worker's producer's
    create time) falls between the moments the pass reached 0, 1/3, 2/3 and all of the input. (Not by end offsets
    sampled during the pass: tansu reports a partition's end as its last batch's base offset + 1, too low after a
    batch of several records.)"""
    if run.thirds is None:
        return None
    wall = time.time() - time.monotonic()  # the thirds' edges are time.monotonic(); records carry wall-clock ms
    edges_ms = [round((moment + wall) * 1000) for moment in run.thirds.edges]
    try:
        read = read_topic_bytes(bootstrap, changelog_topic_names(app_id, prefix), edges_ms)
    except Exception as exc:  # a figure missing from the report must not lose the rest of the run
        raise BenchError(f"reading the changelog back failed: {exc}") from exc
    log.info("hot workload: state bytes (before, thirds, after): %s", sorted(read.by_bucket.items()))
    return read.by_bucket.get(1, 0), read.by_bucket.get(2, 0), read.by_bucket.get(3, 0)
