"""Sustained load and write amplification (issue 9, target 5): the realtime soak.

On its own broker and topics: the scorer (`stream-app worker`, WINDOW_S=60, STORE as given) starts first; once it
serves /metrics and has joined its group, `stream-app simulate --realtime --rate R --duration S --fraud all` runs as
a subprocess (event time = wall clock, paced to R events/s, every fraud scenario injected). Every SAMPLE_S the bench
records the events processed, `rewards_consumer_lag_messages` summed over topics and partitions, and the worker's
RSS and CPU time. When the simulator is done the worker gets up to DRAIN_S to process what is left (while its count
still moves), then stops.

- offered rate: the events the simulator published / its paced seconds (its elapsed seconds less its start-up,
  the seconds before its first traffic event, when only profiles go out; it may fall short of R on a busy
  machine); achieved rate: events the scorer processed by the simulator's end / the same seconds;
- lag bounded: the least-squares growth of the summed lag over the last 5 minutes (or the last half of a shorter
  soak), in records and in seconds of input; "no growth" when it grew by less than one second of input records;
- RSS flat: the least-squares growth of RSS over the same stretch, in MiB per minute and over the stretch;
- write amplification: key + value bytes of every record in the worker's `*-changelog` topics, read back at the
  end, divided by the key + value bytes of every record the simulator published (read back the same way), times
  the share of the published events the scorer processed (1 once it drained: a scorer left behind wrote state for
  only part of the input).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_app.tools.benchmark.common import BenchError, changelog_topic_names, log
from stream_app.tools.benchmark.throughput import ScorerRun
from stream_app.tools.harness import (
    consumer_lag,
    cpu_seconds,
    input_topic_names,
    machine_busy_seconds,
    peak_rss_mib,
    processed_events,
    read_topic_bytes,
    rss_mib,
)

SAMPLE_S = 5.0
WINDOW_S = 60
STEADY_STRETCH_S = 300.0  # "over the last 5 minutes"
# The drain goes on while the worker's count still moves (it ends 15 s after the count stops), at most DRAIN_S: it
# only completes the accounting (the lag target is read during the soak). 120 s was too short on a slow machine
# (make bench of 2026-12-06 21:55 UTC: 97,215 events short, the run exited 1).
DRAIN_S = 600.0
READY_TIMEOUT_S = 90.0
_JOIN_S = 4.0  # tansu answers the group join after half the session timeout (6 s)


@dataclass
class SoakSample:
    t: float  # seconds since the simulator started
    processed: int
    lag: int
    rss_mib: float | None
    cpu_s: float
    busy_s: float | None = None  # the machine's busy CPU seconds so far (harness.machine_busy_seconds)


@dataclass
class Trend:
    start: float
    end: float
    slope_per_s: float  # least squares
    stretch_s: float

    @property
    def growth(self) -> float:
        return self.slope_per_s * self.stretch_s


@dataclass
class SoakResult:
    target_rate: float
    seconds: float
    store: str
    published_events: int = 0
    published_records: int = 0
    simulate_elapsed_s: float = 0.0
    processed_during: int = 0  # events processed by the end of the simulator's run
    processed_total: int = 0
    drain_s: float | None = None
    samples: list[SoakSample] = field(default_factory=list)
    lag: Trend | None = None
    rss: Trend | None = None
    peak_rss_mib: float | None = None
    input_bytes: int = 0
    changelog_bytes: int = 0
    changelog_records: int = 0
    failure: str | None = None

    published_profiles: int = 0  # sent before the paced traffic: not part of the offered rate
    # the simulator's start-up before its first traffic event (its report's start_delay_s): nothing but the
    # profiles is published meanwhile, so the rates are taken over the paced rest of its run
    start_delay_s: float = 0.0

    @property
    def paced_s(self) -> float:
        return max(0.0, self.simulate_elapsed_s - self.start_delay_s)

    @property
    def offered_rate(self) -> float:
        traffic = self.published_events - self.published_profiles
        return traffic / self.paced_s if self.paced_s else 0.0

    @property
    def achieved_rate(self) -> float:
        traffic = max(0, self.processed_during - self.published_profiles)
        return traffic / self.paced_s if self.paced_s else 0.0

    @property
    def sample_s(self) -> float:
        """Every SAMPLE_S, or often enough for ten samples in the steady stretch of a short soak."""
        return min(SAMPLE_S, max(0.5, self.stretch_s / 10))

    @property
    def records_per_s(self) -> float:
        return self.published_records / self.simulate_elapsed_s if self.simulate_elapsed_s else 0.0

    @property
    def processed_share(self) -> float:
        """The share of the published events the scorer processed (all of them once drained)."""
        return min(1.0, self.processed_total / self.published_events) if self.published_events else 0.0

    @property
    def amplification(self) -> float | None:
        """Changelog bytes / the input bytes of the events processed (all input bytes once drained)."""
        processed_bytes = self.input_bytes * self.processed_share
        return self.changelog_bytes / processed_bytes if processed_bytes else None

    @property
    def stretch_s(self) -> float:
        return min(STEADY_STRETCH_S, self.seconds / 2)


def trend(points: list[tuple[float, float]]) -> Trend | None:
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / var if var else 0.0
    return Trend(points[0][1], points[-1][1], slope, points[-1][0] - points[0][0])


def run_soak(
    bootstrap: str, prefix: str, app_id: str, seconds: float, rate: float, store: str, workdir: Path
) -> SoakResult:
    result = SoakResult(rate, seconds, store)
    env = {"STORE": store, "WINDOW_S": str(WINDOW_S)}
    with ScorerRun(bootstrap, prefix, app_id, workdir, log_name="soak-scorer", env=env) as scorer:
        _wait_ready(scorer)
        simulate = _start_simulate(scorer.env, seconds, rate, workdir)
        started = time.monotonic()
        _sample_until_exit(scorer, simulate, started, result)
        report = _simulate_report(simulate, workdir)
        result.published_events = int(report.get("events", 0))
        result.published_records = int(report.get("records", 0))
        result.published_profiles = int(report.get("by_topic", {}).get("creator-profiles", 0))
        result.simulate_elapsed_s = float(report.get("elapsed_s", 0.0)) or time.monotonic() - started
        result.start_delay_s = float(report.get("start_delay_s", 0.0))
        result.processed_during = result.samples[-1].processed if result.samples else 0
        _drain(scorer, started, result)
        result.peak_rss_mib = peak_rss_mib(scorer.pid)
    end = result.simulate_elapsed_s
    stretch = [s for s in result.samples if end - result.stretch_s <= s.t <= end + result.sample_s]
    result.lag = trend([(s.t, float(s.lag)) for s in stretch])
    result.rss = trend([(s.t, s.rss_mib) for s in stretch if s.rss_mib is not None])
    log.info("soak: reading the input and changelog topics back")
    result.input_bytes = read_topic_bytes(bootstrap, input_topic_names(prefix)).bytes
    changelogs = read_topic_bytes(bootstrap, changelog_topic_names(app_id, prefix))
    result.changelog_bytes, result.changelog_records = changelogs.bytes, changelogs.records
    return result


def _wait_ready(scorer: ScorerRun) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while scorer.samples() is None:
        scorer.worker.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(f"soak: the scorer served no /metrics in {READY_TIMEOUT_S:.0f} s\n{scorer.worker.tail()}")
        time.sleep(0.5)
    time.sleep(_JOIN_S)


def _start_simulate(env: dict[str, str], seconds: float, rate: float, workdir: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "stream_app.cli",
        "simulate",
        "--realtime",
        "--rate",
        f"{rate:g}",
        "--duration",
        f"{seconds:g}",
        "--fraud",
        "all",
    ]
    out = (workdir / "simulate.out").open("wb")
    err = (workdir / "simulate.log").open("wb")
    try:
        return subprocess.Popen(command, env=env, cwd=workdir, stdout=out, stderr=err)
    finally:
        out.close()
        err.close()


def _sample(scorer: ScorerRun, started: float, previous: int) -> SoakSample:
    samples = scorer.samples()
    pid = scorer.pid
    processed = processed_events(samples) if samples else previous
    lag = consumer_lag(samples) if samples else 0
    return SoakSample(
        time.monotonic() - started, processed, lag, rss_mib(pid), cpu_seconds(pid), machine_busy_seconds()
    )


def _sample_until_exit(
    scorer: ScorerRun, simulate: subprocess.Popen[bytes], started: float, result: SoakResult
) -> None:
    deadline = started + result.seconds * 2 + 120
    next_at = started
    while simulate.poll() is None:
        if time.monotonic() >= next_at:
            previous = result.samples[-1].processed if result.samples else 0
            result.samples.append(_sample(scorer, started, previous))
            next_at += result.sample_s
            if scorer.worker.exited() is not None:
                simulate.kill()
                simulate.wait()
                raise BenchError(f"soak: the scorer exited\n{scorer.worker.tail()}")
        if time.monotonic() > deadline:
            simulate.kill()
            simulate.wait()
            raise BenchError("soak: the simulator ran twice its duration; stopped")
        time.sleep(0.2)
    previous = result.samples[-1].processed if result.samples else 0
    result.samples.append(_sample(scorer, started, previous))


def _simulate_report(simulate: subprocess.Popen[bytes], workdir: Path) -> dict[str, Any]:
    if simulate.returncode != 0:
        tail = (workdir / "simulate.log").read_text(errors="replace")[-2000:]
        raise BenchError(f"soak: the simulator exited with status {simulate.returncode}\n{tail}")
    text = (workdir / "simulate.out").read_text(errors="replace").strip().splitlines()
    try:
        report: dict[str, Any] = json.loads(text[-1])
    except (IndexError, ValueError) as exc:
        raise BenchError(f"soak: no report from the simulator ({exc})") from None
    return report


def _drain(scorer: ScorerRun, started: float, result: SoakResult) -> None:
    """Up to DRAIN_S for the scorer to process what is left (its count stops at the published events, or stops
    changing for 15 s: some fraud records, such as malformed envelopes, count differently)."""
    drain_started = time.monotonic()
    last_change, last = drain_started, result.processed_during
    while time.monotonic() - drain_started < DRAIN_S:
        sample = _sample(scorer, started, last)
        if sample.processed != last:
            last, last_change = sample.processed, time.monotonic()
        if last >= result.published_events:
            result.drain_s = time.monotonic() - drain_started
            break
        if time.monotonic() - last_change > 15:
            result.drain_s = last_change - drain_started
            break
        time.sleep(1.0)
    result.processed_total = last
    if last < result.published_events:
        result.failure = f"processed {last:,} of {result.published_events:,} events after a {DRAIN_S:.0f} s drain"
