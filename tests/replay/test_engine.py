"""The replay engine on the hand-worked scenario of tests/integration/test_scoring_scenario.py: under the baseline
it settles what the worker settles there, to the micro; under policies/v2.toml it pays what SPEC §5 says."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from stream_app.domain.events import InputTopic
from stream_app.domain.partitioning import partition_for
from stream_app.domain.policy import Policy
from stream_app.replay.engine import ReplayEngine
from tests.events import interaction_event, view_event
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


def device_farm() -> list[Any]:
    """One device viewing 61 videos within 55 s (device_burst: more than 60 views within 60 s), each video also
    viewed by one organic viewer; then events far ahead on every partition settle window 0."""
    events: list[Any] = [("creator-profiles", "c1", _profile("c1"))]
    for i in range(61):
        video = f"farm-video-{i}"
        events.append(("video-views", video, _view(f"o{i}", video, f"organic-{i}", f"dev-organic-{i}", 1_000 + i)))
        events.append(("video-views", video, _view(f"f{i}", video, f"farm-{i}", "dev-farm", 1_000 + i * 900)))
    for p in range(PARTITIONS):  # a view and an interaction far ahead on each partition move every watermark
        video = next(f"closer-{n}" for n in range(100) if partition_for(f"closer-{n}".encode(), PARTITIONS) == p)
        events.append(("video-views", video, _view(f"z{p}", video, "z", f"dev-z{p}", 200_000)))
        events.append(
            ("video-interactions", video, interaction_event(f"zi{p}", video, "z", 200_000, device_id=f"dev-z{p}"))
        )
    return events


def _profile(creator: str) -> dict[str, Any]:
    return {
        "creator_id": creator,
        "followers": 50_000,
        "views_30d": 500_000,
        "adult": True,
        "standing": "good",
        "ts": 0,
    }


def _view(event_id: str, video: str, viewer: str, device: str, ts: int) -> dict[str, Any]:
    return view_event(event_id, video, viewer, ts, device_id=device, watch_ms=30_000)


FARM_POLICY = Policy(window_s=60, grace_s=10, idle_settle_s=600)


def run_farm(batch_events: int) -> Any:
    engine = ReplayEngine([FARM_POLICY], COUNTS, partition_for, batch_events=batch_events)
    records = records_of(device_farm())
    engine.add_profiles(r for r in records if r.topic is InputTopic.PROFILES)
    for record in records:
        if record.topic is not InputTopic.PROFILES:
            engine.add(record)
    [run] = engine.finish(200_000)
    return run


def test_device_flags_return_before_the_window_settles_as_for_a_worker_that_keeps_up() -> None:
    run = run_farm(batch_events=1)  # flags return after every event, long before window 0's deadline (70 s)
    assert run.totals.outcomes[("video-views", "clawback", "device_burst")] == 61  # the 61st too: judged per device
    farm = {r["video_id"]: r for r in run.totals.settlements if r["video_id"].startswith("farm-")}
    assert len(farm) == 61 and {r["kind"] for r in farm.values()} == {"settlement"}
    assert {(r["qualified_views"], r["base_micros"], r["settled_micros"]) for r in farm.values()} == {(1, 1_000, 500)}


def test_device_flags_after_settlement_are_clawbacks_at_the_settled_multiplier() -> None:
    run = run_farm(batch_events=10_000)  # one batch: window 0 settles (the closers) before the flags return
    clawbacks = [r for r in run.totals.settlements if r["kind"] == "clawback"]
    assert len(clawbacks) == 61
    # settled with both views: 2_000 * 0.5 = 1_000; clawback 1_000 - (2_000 - 1_000) * 5_000 // 10_000 = 500
    assert {(r["base_micros"], r["settled_micros"], r["clawback_micros"]) for r in clawbacks} == {(2_000, 1_000, 500)}
    assert sum(run.totals.device_clawed.values()) == 61


def test_a_money_only_candidate_shares_the_baselines_device_rules_and_decides_as_alone() -> None:
    """A candidate that differs from the baseline in money only (policies/v2.toml) runs no device rules of its
    own: it takes the baseline's flags, and ends exactly as a replay of the candidate alone."""
    candidate = replace(FARM_POLICY, watch_weight_bps=2_000, min_multiplier_bps=6_000)
    unshared = replace(candidate, device_memory_s=601)  # judged alike by these devices, but not money-only
    records = records_of(device_farm())

    def runs(*policies: Policy) -> list[Any]:
        engine = ReplayEngine(list(policies), COUNTS, partition_for, batch_events=7)
        engine.add_profiles(r for r in records if r.topic is InputTopic.PROFILES)
        for record in records:
            if record.topic is not InputTopic.PROFILES:
                engine.add(record)
        return engine.finish(200_000)

    baseline, shared = runs(FARM_POLICY, candidate)
    assert shared.leader is baseline and shared.devices is baseline.devices
    _, own = runs(FARM_POLICY, unshared)
    assert own.leader is None and own.devices is not baseline.devices
    [alone] = runs(candidate)
    assert shared.results() == alone.results() and shared.totals.outcomes == alone.totals.outcomes
    assert shared.totals.settlements == alone.totals.settlements and shared.totals.device_flags == 61
    assert shared.results() != baseline.results()  # the money differs


def test_same_input_same_results() -> None:
    a, b = run_farm(batch_events=7), run_farm(batch_events=7)
    assert a.totals.settlements == b.totals.settlements and a.results() == b.results()


def test_the_engine_is_pure_like_the_domain() -> None:
    """The replay scores with domain code only: no Kafka client, Faust or event loop behind the engine."""
    import subprocess
    import sys

    code = "import sys, stream_app.replay.engine; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert not {m for m in loaded if m.split(".")[0] in ("faust", "aiokafka", "asyncio", "mode", "prometheus_client")}


def test_two_processes_sharing_the_devices_decide_as_one_judge_of_them_all() -> None:
    """Two engines, each judging its share of the devices and swapping flags after every batch (as the two
    processes of `stream-app replay` do), end exactly as one engine that judges every device: same money, same
    outcomes, the same settlement and clawback records in the same order."""
    import multiprocessing
    import threading

    from stream_app.replay.device_rules import DeviceShare

    farm = device_farm()
    # a second farm device, in the other share than dev-farm's: flags come from both shares in the same batches
    other = next(f"dev-farm-{n}" for n in range(100) if hash(f"dev-farm-{n}") & 1 != hash("dev-farm") & 1)
    for i in range(61):
        video = f"farm2-video-{i}"
        farm.insert(1, ("video-views", video, _view(f"g{i}", video, f"farm2-{i}", other, 1_500 + i * 900)))
    records = records_of(farm)
    candidate = replace(FARM_POLICY, watch_weight_bps=2_000, min_multiplier_bps=6_000)

    def run(policy: Policy, share: DeviceShare | None, out: list[Any]) -> None:
        engine = ReplayEngine([policy], COUNTS, partition_for, batch_events=7, device_share=share)
        engine.add_profiles(r for r in records if r.topic is InputTopic.PROFILES)
        for record in records:
            if record.topic is not InputTopic.PROFILES:
                engine.add(record)
        out.extend(engine.finish(200_000))

    alone_base: list[Any] = []
    alone_cand: list[Any] = []
    run(FARM_POLICY, None, alone_base)
    run(candidate, None, alone_cand)
    ends = multiprocessing.Pipe(duplex=True)
    shared: list[list[Any]] = [[], []]
    threads = [
        # daemons: a share that failed leaves the other waiting on the pipe, which must not hold pytest's exit
        threading.Thread(target=run, args=(policy, DeviceShare(i, ends[i]), shared[i]), daemon=True)
        for i, policy in enumerate((FARM_POLICY, candidate))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a share is still waiting for the other's flags"
    [base], [cand] = shared
    assert base.totals.device_flags == alone_base[0].totals.device_flags == 122  # both farms flagged
    assert len(base.devices) + len(cand.devices) == len(alone_base[0].devices)  # each judged its share only
    for mine, alone in ((base, alone_base[0]), (cand, alone_cand[0])):
        assert mine.results() == alone.results()
        assert mine.totals == alone.totals
    assert cand.results() != base.results()
