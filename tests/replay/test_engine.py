"""The replay engine on the hand-worked scenario of tests/integration/test_scoring_scenario.py: under the baseline
it settles what the worker settles there, to the micro; under policies/v2.toml it pays what SPEC §5 says."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from stream_app.domain.events import InputTopic
from stream_app.domain.policy import Policy
from stream_app.edges.partitioner import partition_for
from stream_app.replay.engine import ReplayEngine
from tests.integration.test_scoring_scenario import EXPECTED_ACCRUALS, EXPECTED_SETTLEMENTS, A, B, C, D, Z, scenario
from tests.replay.helpers import PARTITIONS, records_of

V1 = Policy(window_s=10, grace_s=2, idle_settle_s=600, emit_interval_s=0.2)
V2 = replace(V1, watch_weight_bps=2_000)
COUNTS = {InputTopic.VIEWS: PARTITIONS, InputTopic.INTERACTIONS: PARTITIONS, InputTopic.PROFILES: PARTITIONS}


def replay(events: list[Any], present_ms: int, *policies: Policy) -> ReplayEngine:
    engine = ReplayEngine(policies, COUNTS, partition_for)
    records = records_of(events)
    engine.add_profiles(r for r in records if r.topic is InputTopic.PROFILES)
    for record in records:
        if record.topic is not InputTopic.PROFILES:
            engine.add(record)
    engine.finish(present_ms)
    return engine


def settled(records: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[int, ...]]:
    return {
        (r["video_id"], r["window_start"]): (
            r["qualified_views"],
            r["base_micros"],
            r["score"],
            r["multiplier_bps"],
            r["settled_micros"],
        )
        for r in records
        if r["kind"] == "settlement"
    }


def test_baseline_settles_what_the_worker_settles_and_candidate_follows_spec_arithmetic() -> None:
    first, second = scenario()
    # the present is the newest event time read (as with --to): Z's window 10 ends at 110_000, still provisional
    baseline, candidate = replay(first + second, 100_000, V1, V2).runs
    assert settled(baseline.totals.settlements) == EXPECTED_SETTLEMENTS
    results = baseline.results()
    assert {
        video: (r.settled_micros, r.clawback_micros, r.provisional_micros, r.windows_settled)
        for video, r in results.items()
    } == {video: (e[0], e[1], e[2], e[5]) for video, e in EXPECTED_ACCRUALS.items()}
    assert baseline.totals.outcomes[("video-views", "late", "late")] == 1
    # v2: every view watched 10 s of 120 s: completion 833 bps, + 833*2_000//10_000 = 166 bps of rate
    assert settled(candidate.totals.settlements) == {
        (A, 0): (4, 4_000, 2, 20_000, 8_000),  # 5_000 + 166 bps: still the 2x cap
        (B, 0): (20, 6_000, 1, 6_660, 3_996),  # 500 + 166 = 666 bps -> 6_660 -> 3_996
        (C, 0): (0, 0, 0, 5_000, 0),  # ineligible: no qualified view, no completion
        (D, 0): (0, 0, 0, 5_000, 0),
        (D, 10_000): (3, 2_400, 1, 20_000, 4_800),  # 3_333 + 166 bps: the cap
    }
    assert {r["completion_bps"] for r in candidate.totals.settlements if r["qualified_views"]} == {833}
    assert candidate.results()[B].net_micros - results[B].net_micros == 996
    assert candidate.results()[Z].provisional_micros == 1_000


def test_the_wall_clock_present_settles_every_window_that_has_ended() -> None:
    first, second = scenario()
    [baseline] = replay(first + second, 10**13, V1).runs
    assert settled(baseline.totals.settlements)[(Z, 100_000)] == (1, 1_000, 1, 20_000, 2_000)
    assert baseline.results()[Z].provisional_micros == 0
