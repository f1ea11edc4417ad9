"""`stream-app bench` (SPEC §10, issue 9) end to end at small sizes: every measurement runs and produces numbers,
and the results land in the `## Throughput` section of the output, other sections left alone.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from stream_app.tools.benchmark import run_bench
from stream_app.tools.benchmark.common import FAST_SCRAPE_S, SLOW_SCRAPE_S, Measurement, median_measurement
from stream_app.tools.benchmark.hot import HotWorkload, StoreRun, crossing_time, thirds_of
from stream_app.tools.benchmark.profile import summarize_folded
from stream_app.tools.benchmark.report import memory_targets
from stream_app.tools.benchmark.soak import SoakResult, trend
from stream_app.tools.benchmark.throughput import Moment, Span, next_scrape_s, quiet_from
from stream_app.tools.harness import (
    machine_busy_seconds,
    processed_by_topic,
    processed_events,
    progress_toward,
    replace_section,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# 2,000 view and interaction events plus one profile for each of the simulator's 400 default creators.
SMOKE_EVENTS = 2_000
PROFILES = 400

ROW = re.compile(r"^\| (?P<name>[^|]+?) \| (?P<events>[\d,]+) \| (?P<seconds>[\d.,]+) \| (?P<rate>[\d,]+) \|", re.M)
TARGET = re.compile(
    r"^\| (?P<label>\d\. [^|]+?) \| (?P<goal>[^|]+) \| (?P<measured>[^|]+) \| (?P<status>[^|]+) \|$", re.M
)


def test_bench_runs_every_measurement_and_reports_every_target(tmp_path: Path) -> None:
    # Like `make bench`: KAFKA_BOOTSTRAP when set, else a fresh embedded broker per measurement (not the session's
    # broker, which the other tests load while the bench kills and restarts workers).
    output = tmp_path / "RESULTS.md"
    output.write_text("# Benchmark results\n\n## Quality\n\nkept as it was\n", encoding="utf-8")
    argv = ["--events", str(SMOKE_EVENTS), "--hot-events", "3000", "--hot-viewers", "2500", "--soak", "15"]
    argv += ["--rate", "300", "--profile", "--output", str(output)]

    status = run_bench(argv)

    text = output.read_text(encoding="utf-8")
    assert status == 0, text
    # Another benchmark's section is left alone; ours is appended after it.
    assert text.startswith("# Benchmark results\n\n## Quality\n\nkept as it was\n\n## Throughput\n")
    rows = {m["name"]: m for m in ROW.finditer(text)}
    for name in (
        "raw consumer ceiling",
        "no-op Faust agent",
        "scorer (`stream-app worker`)",
        "Quix Streams tumbling-window count",
        "scorer under py-spy (profile pass)",
        "`stream-app replay` (baseline + v2, device rules), to the last record",
        "`stream-app replay` (baseline + v2, device rules), with the end of the input",
    ):
        assert name in rows, name
        assert int(rows[name]["rate"].replace(",", "")) > 0
    assert f"Input: {SMOKE_EVENTS + PROFILES:,} events (creator-profiles {PROFILES}," in text
    targets = {m["label"]: m for m in TARGET.finditer(text)}
    # Every target of issue 9 is reported with a figure; small sizes are flagged as such.
    for label in (
        "1. envelopes vs Quix Streams",
        "1. envelopes vs raw ceiling",
        "2. single-event records",
        "3. flat with state (memory://)",
        "3. flat with state (rocksdb://)",
        "4. RSS, rocksdb://",
        "4. restart, memory://",
        "4. restart, rocksdb://",
        "5. soak: lag",
        "5. soak: RSS",
        "5. soak: write amplification",
    ):
        assert label in targets, label
        assert targets[label]["measured"].strip() != "n/a", label
        assert "not run" not in targets[label]["status"], label
    assert "reduced size" in targets["3. flat with state (memory://)"]["status"]
    # state bytes per third need thirds longer than the 1 s between end-offset samples: reported, maybe n/a here
    assert "3. no batch's work grows with memory" in targets
    assert "### Where the scorer's time goes" in text
    assert "| part of the program | own samples | share |" in text
    assert "did not finish" not in text
    assert "| replay (two policies) / scorer (one) |" in text
    assert "| replay with the end of the input / scorer |" in text
    # the soak's rows say how busy the scorer and the machine were (a scorer behind for want of CPU, or not)
    soak_rows = re.findall(
        r"^\| [\d,]+ \| [\d,]+ \| [\d,]+ \| [\d,]+ \| [\d,]+ \| (\d+\.\d\d) \| (\d+)% \|$", text, re.M
    )
    assert soak_rows and all(float(cpu) > 0 and 0 < int(busy) <= 100 for cpu, busy in soak_rows), text


def test_passes_run_each_consumer_in_turn_and_report_the_median(tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    argv = ["--only", "envelope", "--events", str(SMOKE_EVENTS), "--passes", "2", "--output", str(output)]

    status = run_bench(argv)

    text = output.read_text(encoding="utf-8")
    assert status == 0, text
    line = next(line for line in text.splitlines() if line.startswith("- Passes: "))
    assert "each consumer ran 2 times" in line
    rates = {
        name: [int(rate.replace(",", "")) for rate in re.findall(r"([\d,]+) \([\d.]+\)", rates)]
        for name, rates in re.findall(r"(raw|no-op|scorer) ([\d,]+ \([\d.]+\) / [\d,]+ \([\d.]+\))", line)
    }
    assert all(len(measured) == 2 for measured in rates.values())
    assert set(rates) == {"raw", "no-op", "scorer"}
    rows = {m["name"]: int(m["rate"].replace(",", "")) for m in ROW.finditer(text)}
    # the lower of two passes is the median of an even count
    assert rows["scorer (`stream-app worker`)"] == min(rates["scorer"])
    assert rows["no-op Faust agent"] == min(rates["no-op"])


def test_the_median_pass_is_taken_among_the_complete_ones() -> None:
    def run(rate: float, failure: str | None = None) -> Measurement:
        return Measurement("scorer", 1_000, 1_000 / rate, failure=failure)

    passes = [run(300), run(100), run(200)]
    assert median_measurement(passes) is passes[2]
    assert median_measurement([run(300), run(100)]).events_per_s == pytest.approx(100)
    # a pass that did not process everything is no candidate, unless none did
    stalled = [run(900, "stalled"), run(100), run(200)]
    assert median_measurement(stalled) is stalled[1]
    assert median_measurement(stalled[:1]) is stalled[0]


def test_only_the_throughput_section_is_replaced() -> None:
    before = "# Benchmark results\n\n## Quality\n\nq1\n\n## Throughput\n\nold\n\n### sub\n\nx\n\n## Latency\n\nl1\n"

    after = replace_section(before, "## Throughput\n\nnew\n")

    assert after == "# Benchmark results\n\n## Quality\n\nq1\n\n## Throughput\n\nnew\n\n## Latency\n\nl1\n"
    assert replace_section("", "## Throughput\n\nnew\n") == "# Benchmark results\n\n## Throughput\n\nnew\n"


SAMPLES = {
    'rewards_events_total{outcome="accepted",topic="video-views"}': 2900.0,
    'rewards_events_total{outcome="invalid",topic="video-views"}': 3.0,
    'rewards_events_total{outcome="accepted",topic="creator-profiles"}': 400.0,
    'rewards_events_total{outcome="suspicious",topic="video-interactions"}': 5.0,
    'rewards_events_created{outcome="accepted",topic="video-views"}': 1.7e9,
    "rewards_pending_interactions": 97.0,
    "rewards_windows_settled_total": 5.0,
}


def test_processed_events_sums_every_outcome_and_pending_interactions() -> None:
    assert processed_events(SAMPLES) == 2903 + 400 + 5 + 97
    assert processed_by_topic(SAMPLES) == {"video-views": 2903, "creator-profiles": 400, "video-interactions": 102}


def test_progress_is_capped_per_topic_and_done_when_every_topic_is() -> None:
    expected = {"video-views": 2903, "creator-profiles": 400, "video-interactions": 100}

    assert progress_toward(SAMPLES, expected) == (2903 + 400 + 100, True)
    assert progress_toward(SAMPLES, {**expected, "video-views": 3000}) == (2903 + 400 + 100, False)


def test_thirds_interpolate_between_scrapes() -> None:
    timeline = [(10.0, 0), (11.0, 100), (12.0, 200), (14.0, 300)]

    assert crossing_time(timeline, 150) == pytest.approx(11.5)
    thirds = thirds_of(timeline, 300)
    assert thirds is not None
    assert thirds.first_rate == pytest.approx(100.0)
    assert thirds.last_rate == pytest.approx(50.0)
    assert thirds.ratio == pytest.approx(0.5)
    # the worker went quiet 2 s after its last event: the last third pays for the tail
    tail = thirds_of(timeline, 300, quiet_at=16.0)
    assert tail is not None and tail.last_rate == pytest.approx(25.0) and tail.edges[3] == 16.0
    assert thirds_of(timeline, 300, quiet_at=13.0) == thirds  # not before the last event


def test_scrapes_are_fast_at_both_ends_of_a_measurement_and_slow_between() -> None:
    fast, slow = FAST_SCRAPE_S, SLOW_SCRAPE_S
    assert next_scrape_s(0, 100_000, [(10.0, 0)]) == fast  # nothing processed yet: the start is being timed
    assert next_scrape_s(1_000, 100_000, [(10.0, 0)]) == fast  # no rate known yet
    timeline = [(10.0, 0), (11.0, 1_000), (20.0, 10_000)]  # 1,000 events/s
    assert next_scrape_s(10_000, 100_000, timeline) == slow  # 90 s left
    assert next_scrape_s(98_000, 100_000, timeline) == pytest.approx(0.5)  # 2 s left: a quarter of it
    assert next_scrape_s(99_900, 100_000, timeline) == fast  # 0.1 s left: the end is being timed
    assert next_scrape_s(100_000, 100_000, timeline) == fast
    assert next_scrape_s(10_000, 100_000, [(10.0, 5), (12.0, 5)]) == fast  # no progress between the points


def _scrapes(span: Span, scrapes: list[tuple[float, bool, int]]) -> Span:
    """Feed `span` scrapes of (time, ready, processed); a moment's CPU is its time x 0.5 (the broker's x 0.1)."""
    for at, ready, processed in scrapes:
        span.scraped(Moment(at, at / 2, at / 10), ready, processed, lambda at=at: Moment(at + 0.01, at / 2, at / 10))
    return span


def test_a_scorer_span_starts_when_the_worker_is_ready_so_its_first_batch_is_timed() -> None:
    # Ready at 5 s; the first batch (100 events) takes until 7 s, the counter moving only at its end.
    span = _scrapes(Span(Moment(0.0, 0.0, 0.0)), [(4.0, False, 0), (5.0, True, 0), (6.9, True, 0), (7.0, True, 100)])
    span = _scrapes(span, [(8.0, True, 200)])
    assert (span.zero.at, span.end.at, span.processed) == (5.0, 8.01, 200)
    assert span.end.cpu - span.zero.cpu == pytest.approx(1.5)  # the first batch's CPU counts
    assert span.timeline == [(5.0, 0), (7.01, 100), (8.01, 200)]


def test_a_scorer_span_of_a_worker_never_seen_ready_starts_at_the_last_scrape_with_nothing_processed() -> None:
    span = _scrapes(Span(Moment(0.0, 0.0, 0.0)), [(4.0, False, 0), (6.9, False, 0), (7.0, False, 100)])
    assert (span.zero.at, span.end.at, span.processed, span.timeline) == (6.9, 7.01, 100, [(6.9, 0), (7.01, 100)])
    stalled = _scrapes(Span(Moment(0.0, 0.0, 0.0)), [(1.0, True, 0), (2.0, True, 50), (9.0, True, 50)])
    assert (stalled.zero.at, stalled.end.at) == (1.0, 2.01)  # ends at the last change, not the last scrape


def test_a_scorer_span_ends_when_the_worker_goes_quiet_after_its_last_event() -> None:
    # (seconds, CPU seconds) polled every 0.1 s from the last event counted: busy for 0.3 s more (its device judge
    # and table writes), then a tick's 0.01 s now and then
    busy = [Moment(10.0 + 0.1 * k, 5.0 + 0.09 * k, 0.0) for k in range(4)]
    idle = [Moment(10.4 + 0.1 * k, busy[-1].cpu + (0.01 if k >= 3 else 0.0), 0.0) for k in range(8)]
    assert quiet_from(busy + idle, 0.5, 0.1) == busy[-1]  # 10.3 s: from there 0.01 CPU s in 0.5 s
    # the window is an average: from 10.2 s, 0.09 CPU s in 0.5 s is quiet at 20 % of a CPU
    assert quiet_from(busy + idle, 0.5, 0.2) == busy[-2]
    assert quiet_from(busy + idle[:3], 0.5, 0.1) is None  # not 0.5 s of quiet seen yet
    assert quiet_from(busy, 0.5, 0.1) is None  # still busy
    # a worker already quiet at its last event: the span ends there
    assert quiet_from(idle, 0.5, 0.1) == idle[0]
    # a half-busy stretch is not quiet at 20 % of a CPU
    half = [Moment(0.1 * k, 0.05 * k, 0.0) for k in range(20)]
    assert quiet_from(half, 0.5, 0.2) is None


def test_hot_workload_has_a_hot_video_and_mostly_new_viewers() -> None:
    workload = HotWorkload(20_000, 15_000)
    events = list(workload.events(20_000, 0, 6 * 3_600_000))

    stats = workload.stats
    assert len(events) == 20_000 == stats.views + stats.interactions
    assert 0.45 < stats.hot_views / stats.views < 0.55
    assert 13_500 < stats.viewers < 16_500
    assert [e[1]["ts"] for e in events] == sorted(e[1]["ts"] for e in events)
    assert events[-1][1]["ts"] == 6 * 3_600_000


def test_trend_is_least_squares_growth_over_the_stretch() -> None:
    flat = trend([(0.0, 5.0), (10.0, 7.0), (20.0, 7.0), (30.0, 5.0)])
    growing = trend([(0.0, 0.0), (10.0, 10.0), (20.0, 20.0)])

    assert flat is not None and flat.growth == pytest.approx(0.0)
    assert growing is not None and growing.growth == pytest.approx(20.0)


def test_machine_busy_seconds_grow_while_this_process_computes() -> None:
    before = machine_busy_seconds()
    assert before is not None  # Linux: /proc/stat
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    after = machine_busy_seconds()
    assert after is not None and after - before >= 0.25


def test_soak_rates_are_taken_over_the_simulators_paced_seconds() -> None:
    """The simulator's start-up (before its first traffic event, only profiles out) is not part of the offered
    or achieved rate."""
    soak = SoakResult(target_rate=1000, seconds=60, store="memory://", published_events=60_400)
    soak.published_profiles, soak.processed_during = 400, 30_400
    soak.simulate_elapsed_s, soak.start_delay_s = 66.0, 6.0
    assert soak.paced_s == 60.0
    assert soak.offered_rate == 1000.0 and soak.achieved_rate == 500.0


def test_profile_groups_own_time_by_part_of_the_program() -> None:
    folded = "\n".join(
        [
            "main (x.py:1);judge_view (stream_app/domain/rules.py:10) 6",
            "main (x.py:1);loads (stream_app/domain/jsoncodec.py:5) 3",
            "main (x.py:1);_run_once (asyncio/base_events.py:1900) 1",
        ]
    )

    summary = summarize_folded(folded)

    assert summary.samples == 10
    assert summary.by_group["rules"] == 6
    assert summary.by_group["JSON"] == 3
    assert summary.by_group["Faust/aiokafka/asyncio"] == 1
    assert summary.by_function.most_common(1)[0] == (("judge_view", "stream_app/domain/rules.py"), 6)


@pytest.mark.parametrize(
    ("scoring", "restarted", "met"), [(900.0, 1_100.0, False), (1_100.0, 600.0, False), (900.0, 950.0, True)]
)
def test_the_rss_bound_holds_for_the_scoring_and_the_restarted_worker(
    scoring: float, restarted: float, met: bool
) -> None:
    """Target 4 bounds the worker's RSS whenever it runs: a restarted one restoring its state counts too."""
    rocks = StoreRun("rocksdb://", Measurement("scorer", 1_000, 1.0, peak_rss_mib=scoring), None)
    rocks.restart_peak_rss_mib = restarted
    row = next(t for t in memory_targets(None, None, rocks) if t.label == "4. RSS, rocksdb://")
    assert row.measured.startswith(f"{max(scoring, restarted):,.0f} MiB peak")
    assert f"scoring {scoring:,.0f} MiB, restarted {restarted:,.0f} MiB" in row.measured
    assert (row.status == "met") == met, row.status
