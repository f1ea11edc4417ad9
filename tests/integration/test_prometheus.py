"""Issue 5: the SPEC §8 metrics of a real worker, read back through a real Prometheus server.

One worker runs a hand-worked scenario (below) published by a foreign client (confluent-kafka); a real Prometheus
(Debian's /usr/bin/prometheus) scrapes it every second and loads deploy/prometheus/alerts.yml. Every number is
read through Prometheus's HTTP query API, never by scraping the worker, and compared exactly.

WINDOW_S=10, GRACE_S=2: window k covers [10k, 10k+10) s and settles when the partition watermark (min over views
and interactions of the largest accepted ts) reaches (k+1)*10_000 + 2_000 ms. IDLE_SETTLE_S=600: only event time
settles windows. All videos live on partition 0, so one watermark governs them.

Phase 1 (published before the worker starts) holds window 0 of videos A and B and the closing events of video Z at
ts 100_000 on both topics, which settle window 0. Each closing event is the last of its topic-partition, so every
window-0 event is judged before the window settles. Phase 2 is published only once Prometheus shows window 0
settled, so its events are late whatever order the worker reads the two topics in.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from stream_app.domain import jsoncodec
from stream_app.edges.metrics import INPUT_TOPICS, OUTCOMES, SUSPICIOUS_REASONS
from tests.events import interaction_event, view_event
from tests.integration.harness import WorkerProcess, run_cli, worker_env
from tests.integration.prometheus_server import PrometheusServer, prometheus_or_skip, promtool_or_skip
from tests.integration.test_scoring_scenario import on_partition_zero

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

REPO = Path(__file__).resolve().parents[2]
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
ALERT_RULES = 10  # rules in alerts.yml (tests/deploy/test_promtool.py checks the same count with promtool)
JOB = "creator-rewards-scorer"  # the job name alerts.yml selects `up` on
SCENARIO = {"WINDOW_S": "10", "GRACE_S": "2", "IDLE_SETTLE_S": "600", "EMIT_INTERVAL_S": "0.2"}
PARTITIONS = 4  # topics/topics.toml: every input topic has 4 partitions

A, B, Z = (on_partition_zero(v) for v in ("PA", "PB", "PZ"))
VIEWS, ACTS, PROFILES = INPUT_TOPICS  # "video-views", "video-interactions", "creator-profiles"

Record = tuple[str, bytes | None, bytes, int | None]  # topic, key, value, explicit partition


def view(event_id: str, video: str, creator: str, viewer: str, ts: int, watch: int = 10_000) -> dict[str, Any]:
    return view_event(event_id, video, viewer, ts, creator_id=creator, device_id=f"dev-{viewer}", watch_ms=watch)


def act(event_id: str, video: str, creator: str, viewer: str, ts: int, kind: str) -> dict[str, Any]:
    return interaction_event(event_id, video, viewer, ts, kind, creator_id=creator, device_id=f"dev-{viewer}")


def profile(creator: str, followers: int) -> dict[str, Any]:
    return {
        "creator_id": creator,
        "followers": followers,
        "views_30d": 500_000,
        "adult": True,
        "standing": "good",
        "ts": 0,
    }


def obj(topic: str, key: str, value: dict[str, Any]) -> Record:
    return (topic, key.encode(), jsoncodec.dumps(value), None)


def phase_one() -> list[Record]:
    no_watch = {k: v for k, v in view("v6b", A, "c1", "f", 1_600).items() if k != "watch_ms"}
    return [
        # creator-profiles: 2 accepted, 1 invalid (followers < 0)
        obj(PROFILES, "c1", profile("c1", 50_000)),  # eligible
        obj(PROFILES, "c2", profile("c2", 9_999)),  # one follower short: never eligible
        obj(PROFILES, "c3", profile("c3", -1)),  # invalid
        # video-views, A (c1) window 0: a, b, c, e qualify (US 1000 each) -> base 4_000
        obj(VIEWS, A, view("v1", A, "c1", "a", 1_000)),
        obj(VIEWS, A, view("v2", A, "c1", "b", 1_100)),
        obj(VIEWS, A, view("v3", A, "c1", "c", 1_200)),
        obj(VIEWS, A, view("v1", A, "c1", "a", 1_300)),  # event_id of v1 again: suspicious duplicate_event
        obj(VIEWS, A, view("v5", A, "c1", "d", 1_400, watch=120_000 * 20 + 1)),  # suspicious impossible_watch
        # an envelope (null key, partition 0): element 0 accepted (viewer e), element 1 lacks watch_ms: invalid
        (VIEWS, None, jsoncodec.dumps([view("v6a", A, "c1", "e", 1_500), no_watch]), 0),
        (VIEWS, A.encode(), b"not json at all", None),  # invalid, index null
        # B (c2, ineligible) window 0: 2 accepted views, nothing qualified
        obj(VIEWS, B, view("v8", B, "c2", "x1", 2_000)),
        obj(VIEWS, B, view("v9", B, "c2", "x2", 2_100)),
        # video-interactions, A window 0 (judged when window 0 settles)
        obj(ACTS, A, act("i1", A, "c1", "a", 5_000, "like")),  # accepted: score 1
        obj(ACTS, A, act("i2", A, "c1", "b", 5_100, "comment")),  # accepted: score 2
        obj(ACTS, A, act("i3", A, "c1", "a", 5_200, "like")),  # a's second like: duplicate_interaction
        obj(ACTS, A, act("i4", A, "c1", "ghost", 5_300, "like")),  # no view by ghost: engagement_without_view
        obj(ACTS, A, act("i2", A, "c1", "b", 5_100, "comment")),  # event_id of i2 again: duplicate_event
        obj(ACTS, A, act("i6", A, "c1", "b", 5_400, "like") | {"kind": 5}),  # invalid: kind not a string
        # closing events, last on each topic-partition: the watermark reaches 100_000 and settles window 0;
        # Z's window 10 stays open with 1 qualifying view (provisional 1_000) and 1 pending like
        obj(VIEWS, Z, view("v10", Z, "c1", "z", 100_000)),
        obj(ACTS, Z, act("i7", Z, "c1", "z", 100_000, "like")),
    ]


def phase_two() -> list[Record]:
    future = int(time.time() * 1000) + 3_600_000  # an hour ahead of the record timestamp (MAX_CLOCK_SKEW_S 300)
    return [
        obj(VIEWS, A, view("v11", A, "c1", "late", 5_000)),  # window 0 settled: late (late)
        obj(VIEWS, A, view("v12", A, "c1", "g", future)),  # late (future_timestamp)
        obj(ACTS, A, act("i8", A, "c1", "b", 6_000, "share")),  # window 0 settled: late (late)
    ]


def events_in(records: list[Record]) -> dict[str, int]:
    """Input events published, counted by us: an object or a non-JSON record is one, an envelope one per element."""
    counts = dict.fromkeys(INPUT_TOPICS, 0)
    for topic, _key, value, _partition in records:
        try:
            document = jsoncodec.loads(value)
        except Exception:
            document = None
        counts[topic] += len(document) if isinstance(document, list) else 1
    return counts


# ---- worked by hand ------------------------------------------------------------------------------------------
# A window 0: qualified views a, b, c, e (US) -> base 4_000; accepted interactions: like (1) + comment (2) = 3;
# rate_bps = 3*10_000 // 4 = 7_500; multiplier = clamp(7_500*10_000 // 1_000 = 75_000, 5_000, 20_000) = 20_000;
# settled = 4_000 * 20_000 // 10_000 = 8_000. B window 0: creator c2 ineligible -> 0 qualified, settled 0.
# Windows settled: A/0 and B/0. Open: Z/10 (provisional 1_000, its like pending).
PHASE_ONE_EVENTS = {
    (VIEWS, "accepted"): 7,  # v1 v2 v3 v6a v8 v9 v10
    (VIEWS, "suspicious"): 2,  # v1 again (duplicate_event), v5 (impossible_watch)
    (VIEWS, "invalid"): 2,  # envelope element 1, the non-JSON record
    (ACTS, "accepted"): 2,  # i1, i2 (at settlement)
    (ACTS, "suspicious"): 3,  # i2 again (duplicate_event, on arrival), i3, i4 (at settlement)
    (ACTS, "invalid"): 1,  # i6
    (PROFILES, "accepted"): 2,
    (PROFILES, "invalid"): 1,
}
PHASE_TWO_EVENTS = {(VIEWS, "late"): 2, (ACTS, "late"): 1}
EXPECTED_EVENTS = {(t, o): 0.0 for t in INPUT_TOPICS for o in OUTCOMES} | {
    key: float(PHASE_ONE_EVENTS.get(key, 0) + PHASE_TWO_EVENTS.get(key, 0))
    for key in PHASE_ONE_EVENTS.keys() | PHASE_TWO_EVENTS.keys()
}
EXPECTED_SUSPICIOUS = dict.fromkeys(SUSPICIOUS_REASONS, 0.0) | {
    "duplicate_event": 2.0,
    "impossible_watch": 1.0,
    "duplicate_interaction": 1.0,
    "engagement_without_view": 1.0,
}
EXPECTED_GAUGES = {
    "rewards_settled_micros_total": 8_000.0,
    "rewards_windows_settled_total": 2.0,
    "rewards_clawback_micros_total": 0.0,
    "rewards_pending_interactions": 1.0,  # Z's like, its window open
    "rewards_provisional_micros": 1_000.0,  # Z's qualifying US view, c1 eligible now
    "rewards_eligible_creators": 1.0,  # c1
}
# Valid events (everything but invalid) each observe one event lag, whatever their outcome.
EXPECTED_LAG_COUNTS = {VIEWS: 11.0, ACTS: 7.0, PROFILES: 2.0}


@dataclass
class Snapshot:
    up: float | None
    events: dict[tuple[str, str], float]
    suspicious: dict[str, float]
    clawed_back: dict[str, float]
    gauges: dict[str, float | None]
    lag_counts: dict[str, float]
    accruals_emitted: float | None


def snapshot(prom: PrometheusServer) -> Snapshot:
    job = f'{{job="{JOB}"}}'
    return Snapshot(
        up=prom.scalar(f"up{job}"),
        events=prom.values(f"rewards_events_total{job}", "topic", "outcome"),
        suspicious=prom.values(f"rewards_suspicious_events_total{job}", "reason"),
        clawed_back=prom.values(f"rewards_clawed_back_events_total{job}", "reason"),
        gauges={name: prom.scalar(f"{name}{job}") for name in EXPECTED_GAUGES},
        lag_counts=prom.values(f"rewards_event_lag_seconds_count{job}", "topic"),
        accruals_emitted=prom.scalar(f"rewards_accruals_emitted_total{job}"),
    )


def final_state(snap: Snapshot) -> bool:
    return (
        snap.events == EXPECTED_EVENTS
        and snap.suspicious == EXPECTED_SUSPICIOUS
        and snap.gauges == EXPECTED_GAUGES
        and snap.lag_counts == EXPECTED_LAG_COUNTS
    )


def poll(prom: PrometheusServer, done: Any, timeout: float) -> Snapshot:
    """Query Prometheus until `done(snapshot)` or the deadline; return the last snapshot either way, so the
    assertions show what Prometheus held rather than a bare timeout."""
    deadline = time.monotonic() + timeout
    snap = snapshot(prom)
    while not done(snap) and time.monotonic() < deadline:
        time.sleep(0.5)
        snap = snapshot(prom)
    return snap


def publish(bootstrap: str, prefix: str, records: list[Record]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 5})
    for topic, key, value, partition in records:
        if partition is None:
            producer.produce(prefix + topic, key=key, value=value)
        else:
            producer.produce(prefix + topic, key=key, value=value, partition=partition)
    assert producer.flush(10) == 0


@dataclass
class Live:
    prom: PrometheusServer
    worker: WorkerProcess
    published: dict[str, int]
    phase_one: Snapshot
    final: Snapshot
    stable: Snapshot


@pytest.fixture(scope="module")
def live(request: pytest.FixtureRequest) -> Iterator[Live]:
    prometheus_or_skip()  # before the broker starts: without the binary there is nothing to prove
    bootstrap: str = request.getfixturevalue("bootstrap")
    prefix = f"t{uuid.uuid4().hex[:8]}-"
    env = worker_env(bootstrap, prefix, **SCENARIO)
    assert "video-views" in run_cli(env, "topics", "apply")
    first = phase_one()
    publish(bootstrap, prefix, first)
    target = f"{env['METRICS_HOST']}:{env['METRICS_PORT']}"
    with PrometheusServer(job=JOB, targets=[target], rule_files=[ALERTS]) as prom, WorkerProcess(env) as worker:
        one = poll(
            prom,
            lambda s: (
                s.gauges["rewards_windows_settled_total"] == 2.0
                and sum(s.events.values()) == sum(PHASE_ONE_EVENTS.values())
            ),
            timeout=60,
        )
        assert one.gauges["rewards_windows_settled_total"] == 2.0, (one, worker.log()[-3000:], prom.log()[-2000:])
        second = phase_two()
        publish(bootstrap, prefix, second)
        final = poll(prom, final_state, timeout=30)
        # Idle since its last event: two more scrapes must show the very same numbers.
        prom.wait_for_scrapes(2)
        stable = snapshot(prom)
        yield Live(prom, worker, events_in(first + second), one, final, stable)


def test_prometheus_scrapes_the_worker_and_loads_the_alert_rules(live: Live) -> None:
    assert live.final.up == 1.0
    assert live.prom.values(f'up{{job="{JOB}"}}', "job") == {JOB: 1.0}
    deadline = time.monotonic() + 15  # rules are evaluated every second; "unknown" until their first evaluation
    groups = live.prom.api("rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    while any(r["health"] == "unknown" for r in rules) and time.monotonic() < deadline:
        time.sleep(0.5)
        groups = live.prom.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
    assert len(rules) == ALERT_RULES, [r["name"] for r in rules]
    assert {r["file"] for r in groups} == {str(ALERTS)}
    # each rule was evaluated by the real server against real series, without an error
    assert [(r["name"], r["health"], r.get("lastError", "")) for r in rules] == [(r["name"], "ok", "") for r in rules]


def test_phase_one_counts_before_the_late_events(live: Live) -> None:
    expected = {(t, o): 0.0 for t in INPUT_TOPICS for o in OUTCOMES} | {
        k: float(v) for k, v in PHASE_ONE_EVENTS.items()
    }
    assert live.phase_one.events == expected
    assert live.phase_one.gauges["rewards_settled_micros_total"] == 8_000.0


def test_events_total_by_topic_and_outcome(live: Live) -> None:
    assert live.final.events == EXPECTED_EVENTS


def test_suspicious_events_by_reason(live: Live) -> None:
    assert live.final.suspicious == EXPECTED_SUSPICIOUS
    # outcome suspicious, counted by reason: the two counters agree
    assert sum(live.final.suspicious.values()) == sum(
        v for (_t, o), v in live.final.events.items() if o == "suspicious"
    )
    assert live.final.clawed_back == dict.fromkeys(SUSPICIOUS_REASONS, 0.0)


def test_settlement_and_state_gauges(live: Live) -> None:
    assert live.final.gauges == EXPECTED_GAUGES
    assert live.final.lag_counts == EXPECTED_LAG_COUNTS
    # at least one accrual per video (A, B, Z); the exact number depends on emit pacing
    assert live.final.accruals_emitted is not None and live.final.accruals_emitted >= 3


def test_numbers_are_stable_once_idle(live: Live) -> None:
    assert live.stable == live.final


def test_accounting_identity_holds_in_the_metrics(live: Live) -> None:
    consumed = sum(live.published.values())
    assert live.published == {VIEWS: 13, ACTS: 8, PROFILES: 3}
    counted = sum(live.stable.events.values())
    pending = live.stable.gauges["rewards_pending_interactions"]
    assert consumed == counted + (pending or 0.0)
    # and per topic, through PromQL: interactions are the only topic with pending events
    by_topic = live.prom.values(f'sum by (topic) (rewards_events_total{{job="{JOB}"}})', "topic")
    assert by_topic == {VIEWS: 13.0, ACTS: 7.0, PROFILES: 3.0}
    identity = live.prom.scalar(
        f'sum(rewards_events_total{{job="{JOB}"}}) + sum(rewards_pending_interactions{{job="{JOB}"}})'
    )
    assert identity == float(consumed)


def test_consumer_lag_is_zero_on_every_input_partition(live: Live) -> None:
    expected = {(t, str(p)): 0.0 for t in INPUT_TOPICS for p in range(PARTITIONS)}
    expr = f'rewards_consumer_lag_messages{{job="{JOB}"}}'
    deadline = time.monotonic() + 20  # computed every 5 s by the worker
    lag = live.prom.values(expr, "topic", "partition")
    while lag != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        lag = live.prom.values(expr, "topic", "partition")
    assert lag == expected


def test_promtool_check_metrics_on_the_live_worker(live: Live) -> None:
    promtool = promtool_or_skip()
    with urllib.request.urlopen(live.worker.metrics_url, timeout=5) as response:
        text = response.read().decode()
    assert "rewards_events_total" in text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    if result.stdout.strip() or result.stderr.strip():
        print(f"promtool check metrics:\n{result.stdout}{result.stderr}")
    assert result.returncode == 0, result.stdout + result.stderr
