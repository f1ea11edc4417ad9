"""Issue 4 end to end: every reason code of SPEC §4/§6 reaches `suspicious-events` on the real broker with the
right outcome, and its money consequence (SPEC §5 clawback included) reaches the accruals, settlements and metrics.

WINDOW_S=10, GRACE_S=2: window k covers [10k, 10k+10) s and settles when its partition's watermark (min over views
and interactions of the largest ts taken) reaches (k+1)*10_000 + 2_000 ms. IDLE_SETTLE_S is long, so only event
time settles windows, and every phase below ends with closing events (the last records of both event topics of
partition 0) that move the watermark; a phase that needs the previous one settled waits for its output first.

Two workers in all: one per test. Every number below is worked out by hand from SPEC §5:
rate_bps = score*10_000 // max(qv, 1); mult = clamp(rate_bps*10_000 // 1_000, 5_000, 20_000);
settled = base*mult // 10_000; clawback = settled - (base - clawed_base)*mult // 10_000.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest
from confluent_kafka import Producer

from stream_app.domain import jsoncodec
from stream_app.domain.partitioning import partition_for
from tests.events import interaction_event, view_event
from tests.integration.harness import (
    WorkerProcess,
    free_port,
    jsonl,
    latest_by_key,
    owns_partitions,
    read_topic,
    run_cli,
    scrape,
    wait_for,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

SCENARIO = {"WINDOW_S": "10", "GRACE_S": "2", "IDLE_SETTLE_S": "600", "EMIT_INTERVAL_S": "0.2"}
VIEWS, INTERACTIONS, PROFILES = "video-views", "video-interactions", "creator-profiles"
REASONS = (
    "duplicate_event",
    "impossible_watch",
    "viewer_repeat",
    "device_burst",
    "device_overlap",
    "account_farm",
    "velocity_burst",
    "engagement_without_view",
    "duplicate_interaction",
)


def on_partition(name: str, partition: int) -> str:
    """The first id `name`, `name-1`, ... that Kafka's partitioner maps to `partition` of 4."""
    n = 0
    while True:
        candidate = name if n == 0 else f"{name}-{n}"
        if partition_for(candidate.encode(), 4) == partition:
            return candidate
        n += 1


def view(
    event_id: str,
    video: str,
    viewer: str,
    ts: int,
    *,
    region: str = "US",
    watch: int = 10_000,
    device: str | None = None,
) -> dict[str, Any]:
    return view_event(event_id, video, viewer, ts, region=region, watch_ms=watch, device_id=device or f"d-{viewer}")


act = interaction_event  # (event_id, video, viewer, ts, kind="like")


ELIGIBLE_C1 = {
    "creator_id": "c1",
    "followers": 50_000,
    "views_30d": 500_000,
    "adult": True,
    "standing": "good",
    "ts": 0,
}


def publish(env: dict[str, str], records: list[tuple[Any, ...]]) -> None:
    """(topic, event) or (topic, event, record timestamp ms) through librdkafka, as an upstream team would."""
    producer = Producer(
        {
            "bootstrap.servers": env["KAFKA_BOOTSTRAP"],
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "max.in.flight.requests.per.connection": 1,  # keep each partition in the order given
        }
    )
    for topic, event, *timestamp in records:
        key = event["creator_id"] if topic == PROFILES else event["video_id"]
        extra = {"timestamp": timestamp[0]} if timestamp else {}
        producer.produce(env["TOPIC_PREFIX"] + topic, key=key.encode(), value=jsoncodec.dumps(event), **extra)
    assert producer.flush(10) == 0


def input_positions(env: dict[str, str], topic: str, events: int) -> dict[str, list[tuple[int, int, int | None]]]:
    """event_id -> [(partition, offset, index)] of every copy of it on the input topic, in offset order."""

    def count(records: list[dict[str, Any]]) -> int:
        return sum(len(r["_value"]) if "_value" in r else 1 for r in records)

    records = read_topic(env["KAFKA_BOOTSTRAP"], env["TOPIC_PREFIX"] + topic, lambda r: count(r) >= events)
    assert count(records) == events
    positions: dict[str, list[tuple[int, int, int | None]]] = {}
    for r in sorted(records, key=lambda r: (r["_partition"], r["_offset"])):
        if "_value" in r:  # a batch envelope from `stream-app publish`
            for index, event in enumerate(r["_value"]):
                positions.setdefault(event["event_id"], []).append((r["_partition"], r["_offset"], index))
        else:
            positions.setdefault(r["event_id"], []).append((r["_partition"], r["_offset"], None))
    return positions


AuditKey = tuple[str, int, int, int | None]
# AuditKey -> (event, outcome, reason, detail or a pattern of it)
ExpectedAudit = Mapping[AuditKey, tuple[dict[str, Any], str, str, str | re.Pattern[str]]]


def audit_key(record: dict[str, Any]) -> AuditKey:
    return record["source_topic"], record["partition"], record["offset"], record["index"]


def check_audit(
    records: list[dict[str, Any]],
    expected: ExpectedAudit,
    since_ms: int,
) -> None:
    """Exactly one AuditRecord per expected (source_topic, partition, offset, index), with every field right."""
    keys = [audit_key(r) for r in records]
    assert len(keys) == len(set(keys)), Counter(keys).most_common(3)
    assert set(keys) == set(expected), (set(keys) - set(expected), set(expected) - set(keys))
    now = int(time.time() * 1000)
    for record in records:
        assert set(record) - {"_key", "_partition", "_offset"} == {
            "event",
            "source_topic",
            "partition",
            "offset",
            "index",
            "outcome",
            "reason",
            "detail",
            "detected_at",
        }
        event, outcome, reason, detail = expected[audit_key(record)]
        assert (record["event"], record["outcome"], record["reason"]) == (event, outcome, reason), record
        if isinstance(detail, re.Pattern):
            assert detail.fullmatch(record["detail"]), record
        else:
            assert record["detail"] == detail, record
        assert since_ms <= record["detected_at"] <= now, record
        assert record["_key"] == event["video_id"].encode()


METRIC_LINE = re.compile(r"(?P<name>[a-z_]+)(?:\{(?P<labels>.*)\})?")


def metrics(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Scraped samples keyed by (name, labels as a set), so label order does not matter."""
    samples = {}
    for key, value in scrape(url).items():
        match = METRIC_LINE.fullmatch(key)
        assert match, key
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        samples[(match["name"], labels)] = value
    return samples


def m(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def expected_metrics(
    *,
    events: dict[tuple[str, str], int],
    suspicious: dict[str, int],
    clawed_back: dict[str, int],
    settled: int,
    clawback: int,
    windows: int,
    provisional: int,
    pending: int,
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    want: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for topic in (VIEWS, INTERACTIONS, PROFILES):
        for outcome in ("accepted", "suspicious", "late", "invalid"):
            want[m("rewards_events_total", topic=topic, outcome=outcome)] = events.get((topic, outcome), 0)
    for reason in REASONS:
        want[m("rewards_suspicious_events_total", reason=reason)] = suspicious.get(reason, 0)
        want[m("rewards_clawed_back_events_total", reason=reason)] = clawed_back.get(reason, 0)
    want[m("rewards_settled_micros_total")] = settled
    want[m("rewards_clawback_micros_total")] = clawback
    want[m("rewards_windows_settled_total")] = windows
    want[m("rewards_provisional_micros")] = provisional
    want[m("rewards_pending_interactions")] = pending
    return want


def wait_for_metrics(worker: WorkerProcess, want: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> None:
    def view_of(samples: dict[tuple[str, frozenset[tuple[str, str]]], float]) -> dict[Any, float | None]:
        return {key: samples.get(key) for key in want}

    try:
        wait_for(lambda: view_of(metrics(worker.metrics_url)) == want, timeout=30, what="final metrics")
    except AssertionError:
        got = view_of(metrics(worker.metrics_url))
        assert {k: v for k, v in got.items() if v != want[k]} == {k: v for k, v in want.items() if got[k] != v}


def accrual_view(records: list[dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {
        video: (
            r["settled_micros"],
            r["clawback_micros"],
            r["provisional_micros"],
            r["qualified_views"],
            r["views"],
            r["suspicious_views"],
            r["windows_settled"],
            r["eligible"],
        )
        for video, r in latest_by_key(records).items()
    }


def settlement_view(records: list[dict[str, Any]]) -> dict[tuple[str, int], tuple[int, ...]]:
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


def read_settlements(env: dict[str, str], count: int) -> list[dict[str, Any]]:
    return read_topic(env["KAFKA_BOOTSTRAP"], env["TOPIC_PREFIX"] + "reward-settlements", lambda r: len(r) >= count)


def read_audit(env: dict[str, str], count: int) -> list[dict[str, Any]]:
    return read_topic(env["KAFKA_BOOTSTRAP"], env["TOPIC_PREFIX"] + "suspicious-events", lambda r: len(r) >= count)


def read_accruals(env: dict[str, str], expected: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    records = read_topic(
        env["KAFKA_BOOTSTRAP"],
        env["TOPIC_PREFIX"] + "reward-accruals",
        lambda r: accrual_view(r) == expected,
        timeout=60,
    )
    return accrual_view(records)


# ---- scenario 1: the per-video rules (one partition, one watermark) ---------------------------------------------

R, W, U, E, V, Z, T = (on_partition(v, 0) for v in ("R", "W", "U", "E", "V", "Z", "T"))
VELOCITY_VIEWERS = 100
BURST = (
    "{views} views within 60s exceed max(200, 10 x baseline 0/60 per minute) with 100 distinct viewers; "
    "viewer {viewer} already viewed in that span"
)


def velocity_views() -> list[dict[str, Any]]:
    """V: 100 viewers x 3 rounds = 300 views in 7 s of window 2, in ts order, each viewer on their own device.

    No history: the baseline is 0 views over 60 unflagged minutes, so the bar is max(200, 0) = 200. View 201
    (v000's third) is the first with views > 200 and distinct viewers (100) under half of them: the burst is
    recognised there, every second view (101-200, accepted) is clawed back, and every third view is suspicious.
    Nobody has more than 3 views, so viewer_repeat (6th within 600 s) never fires first.
    """
    return [
        view(f"vel-{r}-{i:03d}", V, f"v{i:03d}", 20_000 + r * 3_000 + i * 10)
        for r in range(3)
        for i in range(VELOCITY_VIEWERS)
    ]


def per_video_phase_one() -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Window 0 of R, W, U, E (one reason each) and the closing events; V is published in between."""
    events: list[tuple[Any, ...]] = [(PROFILES, ELIGIBLE_C1)]
    # R: viewer r loops 7 times within 600 s: 5 accepted (only the first qualifies: QUALIFY_ONCE), 6th and 7th
    # viewer_repeat. Settles 1 qv x US 1_000, score 0 -> 0.5x = 500. (Each loop on a screen of its own: 7 views
    # 1 ms apart on one device would overlap, and device_overlap would claw back the later ones.)
    events += [(VIEWS, view(f"r{n}", R, "r", 1_000 + n, device=f"d-r{n}")) for n in range(1, 8)]
    # W: watch_ms exactly 20 x video_ms is allowed, one ms more is impossible_watch. 1 qv -> 500.
    events.append((VIEWS, view("w1", W, "w1", 1_500, watch=20 * 120_000)))
    events.append((VIEWS, view("w2", W, "w2", 1_501, watch=20 * 120_000 + 1)))
    # U: 20 GB viewers (16_000 base); u01's view record is sent twice, and so is u01's like: duplicate_event on
    # each topic. score 1 -> rate 10_000 // 20 = 500 -> mult 5_000: settled 8_000 (a counted duplicate like
    # would make it 10_000, a counted duplicate view 21 qv).
    events += [(VIEWS, view(f"u-{i:02d}", U, f"u{i:02d}", 2_000 + i, region="GB")) for i in range(1, 21)]
    events.append((VIEWS, view("u-01", U, "u01", 2_001, region="GB")))
    events.append((INTERACTIONS, act("u-like", U, "u01", 2_500)))
    events.append((INTERACTIONS, act("u-like", U, "u01", 2_500)))
    # E: 40 GB viewers (32_000 base). e01 likes (accepted), x likes without ever viewing E
    # (engagement_without_view), e01 likes again (duplicate_interaction), e01 comments twice (comments repeat).
    # score 1 + 2 + 2 = 5 -> rate 50_000 // 40 = 1_250 -> mult 12_500: settled 40_000.
    events += [(VIEWS, view(f"e-{i:02d}", E, f"e{i:02d}", 4_000 + i, region="GB")) for i in range(1, 41)]
    events.append((INTERACTIONS, act("e-like-1", E, "e01", 4_500)))
    events.append((INTERACTIONS, act("e-like-x", E, "x", 4_600)))
    events.append((INTERACTIONS, act("e-like-2", E, "e01", 4_700)))
    events.append((INTERACTIONS, act("e-comment-1", E, "e01", 4_800, "comment")))
    events.append((INTERACTIONS, act("e-comment-2", E, "e01", 4_900, "comment")))
    # Z closes: watermark 40_000 settles window 0 (deadline 12_000) and V's window 2 (32_000); Z stays open.
    closing = [(VIEWS, view("z1", Z, "z", 40_000)), (INTERACTIONS, act("z-like", Z, "z", 40_000))]
    return events, closing


def per_video_phase_two(record_ts: int) -> list[tuple[Any, ...]]:
    return [
        # window 0 settled in phase one: late, on both topics
        (VIEWS, view("late-view", R, "late1", 5_000)),
        (INTERACTIONS, act("late-like", E, "e02", 5_000)),
        # record timestamp one hour ago (explicit, as a producer with a wrong clock would set it): a ts 300_001 ms
        # ahead of it is future_timestamp although it is in the wall clock's past; exactly 300_000 ahead passes.
        (VIEWS, view("t-future", T, "t1", record_ts + 300_001), record_ts),
        (VIEWS, view("t-edge", T, "t2", record_ts + 300_000), record_ts),
    ]


EXPECTED_SETTLEMENTS_1 = {
    (R, 0): (1, 1_000, 0, 5_000, 500),
    (W, 0): (1, 1_000, 0, 5_000, 500),
    (U, 0): (20, 16_000, 1, 5_000, 8_000),
    (E, 0): (40, 32_000, 5, 12_500, 40_000),
    # V: the 100 first views qualify (US); the clawed-back second views never qualified (QUALIFY_ONCE), so the
    # clawback takes no money; score 0 -> 0.5x
    (V, 20_000): (100, 100_000, 0, 5_000, 50_000),
}
EXPECTED_ACCRUALS_1 = {
    # video: (settled, clawback, provisional, qualified_views, views, suspicious_views, windows_settled, eligible)
    R: (500, 0, 0, 1, 5, 2, 1, True),
    W: (500, 0, 0, 1, 1, 1, 1, True),
    U: (8_000, 0, 0, 20, 20, 1, 1, True),
    E: (40_000, 0, 0, 40, 40, 0, 1, True),  # suspicious_views counts views only
    V: (50_000, 0, 0, 100, 200, 200, 1, True),  # 200 accepted (100 clawed back) + 100 suspicious
    Z: (0, 0, 1_000, 1, 1, 0, 0, True),
    T: (0, 0, 1_000, 1, 1, 0, 0, True),  # future_timestamp is outcome late: not a suspicious view
}


def test_every_per_video_reason_reaches_the_audit_topic_with_its_money(scenario_env: dict[str, str]) -> None:
    env = dict(scenario_env, **SCENARIO)
    prefix = env["TOPIC_PREFIX"]
    started_ms = int(time.time() * 1000)
    first, closing = per_video_phase_one()
    publish(env, first)
    out = run_cli(env, "publish", "-", "--topic", VIEWS, stdin=jsonl(velocity_views()))
    assert "sent 300 events" in out
    publish(env, closing)
    record_ts = started_ms - 3_600_000
    with WorkerProcess(env) as worker:
        settlements = read_settlements(env, len(EXPECTED_SETTLEMENTS_1))
        assert settlement_view(settlements) == EXPECTED_SETTLEMENTS_1
        publish(env, per_video_phase_two(record_ts))
        wait_for_metrics(
            worker,
            expected_metrics(
                events={
                    # R 5 + W 1 + U 20 + E 40 + V 200 + Z 1 + T 1 accepted; R 2 + W 1 + U 1 + V 100 suspicious
                    (VIEWS, "accepted"): 268,
                    (VIEWS, "suspicious"): 104,
                    (VIEWS, "late"): 2,
                    # U's like, E's like and two comments; Z's like is still pending
                    (INTERACTIONS, "accepted"): 4,
                    (INTERACTIONS, "suspicious"): 3,
                    (INTERACTIONS, "late"): 1,
                    (PROFILES, "accepted"): 1,
                },
                suspicious={
                    "duplicate_event": 2,
                    "impossible_watch": 1,
                    "viewer_repeat": 2,
                    "velocity_burst": 100,
                    "engagement_without_view": 1,
                    "duplicate_interaction": 1,
                },
                clawed_back={"velocity_burst": 100},
                settled=99_000,
                clawback=0,
                windows=5,
                provisional=2_000,  # Z and T, one US view each
                pending=1,
            ),
        )
        accruals = read_accruals(env, EXPECTED_ACCRUALS_1)
    assert accruals == EXPECTED_ACCRUALS_1

    views = input_positions(env, VIEWS, 7 + 2 + 21 + 40 + 300 + 1 + 3)
    interactions = input_positions(env, INTERACTIONS, 7 + 1 + 1)
    events = {e["event_id"]: e for topic, e, *_ in first + closing + per_video_phase_two(record_ts) if topic == VIEWS}
    events.update({e["event_id"]: e for e in velocity_views()})
    acts = {e["event_id"]: e for topic, e, *_ in first + per_video_phase_two(record_ts) if topic == INTERACTIONS}
    v_topic, i_topic = prefix + VIEWS, prefix + INTERACTIONS
    expected: dict[Any, Any] = {}

    def at(topic: str, positions: dict[str, Any], event_id: str, copy: int = 0) -> tuple[str, int, int, int | None]:
        return (topic, *positions[event_id][copy])

    for n in (6, 7):
        expected[at(v_topic, views, f"r{n}")] = (
            events[f"r{n}"],
            "suspicious",
            "viewer_repeat",
            "viewer r has more than 5 views of the video within 600s",
        )
    expected[at(v_topic, views, "w2")] = (
        events["w2"],
        "suspicious",
        "impossible_watch",
        "watch_ms 2400001 > video_ms 120000 x 20",
    )
    expected[at(v_topic, views, "u-01", 1)] = (
        events["u-01"],
        "suspicious",
        "duplicate_event",
        "event_id u-01 already seen on video-views within 86400s",
    )
    expected[at(i_topic, interactions, "u-like", 1)] = (
        acts["u-like"],
        "suspicious",
        "duplicate_event",
        "event_id u-like already seen on video-interactions within 86400s",
    )
    expected[at(i_topic, interactions, "e-like-x")] = (
        acts["e-like-x"],
        "suspicious",
        "engagement_without_view",
        "viewer x has no accepted view of the video from 86400s before the like to window end + 2s",
    )
    expected[at(i_topic, interactions, "e-like-2")] = (
        acts["e-like-2"],
        "suspicious",
        "duplicate_interaction",
        "viewer e01 already has a like on the video within 86400s",
    )
    recognised = "velocity_burst recognised at view vel-2-000: " + BURST.format(views=201, viewer="v000")
    for i in range(VELOCITY_VIEWERS):
        expected[at(v_topic, views, f"vel-1-{i:03d}")] = (
            events[f"vel-1-{i:03d}"],
            "clawback",
            "velocity_burst",
            recognised,
        )
        expected[at(v_topic, views, f"vel-2-{i:03d}")] = (
            events[f"vel-2-{i:03d}"],
            "suspicious",
            "velocity_burst",
            BURST.format(views=201 + i, viewer=f"v{i:03d}"),
        )
    expected[at(v_topic, views, "late-view")] = (events["late-view"], "late", "late", "window 0 already settled")
    expected[at(i_topic, interactions, "late-like")] = (acts["late-like"], "late", "late", "window 0 already settled")
    expected[at(v_topic, views, "t-future")] = (
        events["t-future"],
        "late",
        "future_timestamp",
        "ts is 300001 ms ahead of the record timestamp",
    )
    assert len(expected) == 2 + 1 + 2 + 2 + 200 + 3
    check_audit(read_audit(env, len(expected)), expected, started_ms)
    # the velocity views came in envelopes (index set), everything else as single records (index null)
    assert {p[2] is None for p in views["vel-0-000"]} == {False}
    assert views["w2"][0][2] is None and views["w2"][0][0] == 0


# ---- scenario 2: device_burst across partitions, and the clawback of a settled window --------------------------

M, ZB, F0, Z2 = (on_partition(v, 0) for v in ("M", "ZB", "F0", "Z2"))
F1, F2, F3 = on_partition("F1", 1), on_partition("F2", 2), on_partition("F3", 3)
FARM_VIDEOS = (F0, F1, F2, F3)
FARM_DETAIL = "device farm has {n} views within 60s across all videos (more than 60)"


def device_phase_one() -> list[tuple[Any, ...]]:
    """M's window 1 settles with 7 qualified views, 3 of them from the device `farm` (one after the other: the
    device's views never overlap, and it has 8 accounts in all, so device_burst is the only device rule that
    fires)."""
    return [
        (PROFILES, ELIGIBLE_C1),
        (VIEWS, view("m-f0", M, "f0", 10_000, watch=5_000, device="farm")),  # US 1_000
        (VIEWS, view("m-f1", M, "f1", 15_000, watch=5_000, region="JP", device="farm")),  # JP 700
        (VIEWS, view("m-f2", M, "f2", 19_999, watch=5_000, region="IN", device="farm")),  # IN 100
        (VIEWS, view("m-n0", M, "n0", 10_100)),  # US 1_000
        *((VIEWS, view(f"m-n{i}", M, f"n{i}", 10_100 + i, region="BR")) for i in (1, 2, 3)),  # BR 300 each
        (INTERACTIONS, act("m-like", M, "n0", 11_000)),
        # watermark 25_000 >= 22_000: M's window 1 settles; ZB's window 2 (deadline 32_000) stays open
        (VIEWS, view("zb1", ZB, "zb", 25_000)),
        (INTERACTIONS, act("zb-like", ZB, "zb", 25_000)),
    ]


def farm_views() -> list[dict[str, Any]]:
    """62 more views of `farm` at 30_000..30_061, on four videos spread over the four partitions: with M's three
    (10_000..19_999) they are 65 views within 60 s. The 61st to reach the device rule makes the span exceed 60.
    Reports of no watch time (they take no time on the screen) by 5 accounts in turn (8 on the device in all)."""
    return [
        view(f"farm-{j:02d}", FARM_VIDEOS[j % 4], f"g{j % 5}", 30_000 + j, watch=0, device="farm") for j in range(62)
    ]


def device_phase_two() -> list[tuple[Any, ...]]:
    return [
        *((VIEWS, v) for v in farm_views()),
        # F0 also has two authentic views and a like; with the farm's views removed before settling, it settles
        # 2 qv (US 1_000 + GB 800), score 1 -> rate 5_000 -> mult 20_000 (clamped): 3_600.
        (VIEWS, view("f0-h1", F0, "h1", 30_100)),
        (VIEWS, view("f0-h2", F0, "h2", 30_101, region="GB")),
        (INTERACTIONS, act("f0-like", F0, "h1", 31_000)),
    ]


def device_phase_three() -> list[tuple[Any, ...]]:
    # watermark 45_000: ZB's window 2 (32_000) and F0's window 3 (42_000) settle; Z2's window 4 stays open
    return [(VIEWS, view("z2", Z2, "z2", 45_000)), (INTERACTIONS, act("z2-like", Z2, "z2", 45_000))]


# M window 1: qv 7, base 1_000 + 700 + 100 + 1_000 + 3 x 300 = 3_700; score 1 -> rate 10_000 // 7 = 1_428 ->
# mult 14_280; settled 3_700 x 14_280 // 10_000 = 5_283.
M_SETTLED, M_BASE, M_MULT = 5_283, 3_700, 14_280


def m_clawback(clawed_base: int) -> int:
    """SPEC §5: settled - (base - clawed_base) * multiplier_bps // 10_000."""
    return M_SETTLED - (M_BASE - clawed_base) * M_MULT // 10_000


EXPECTED_SETTLEMENTS_2 = {
    (M, 10_000): (7, M_BASE, 1, M_MULT, M_SETTLED),
    (ZB, 20_000): (1, 1_000, 1, 20_000, 2_000),  # rate 10_000 -> 100_000, clamped to 2x
    (F0, 30_000): (2, 1_800, 1, 20_000, 3_600),
}
EXPECTED_ACCRUALS_2 = {
    # video: (settled, clawback, provisional, qualified_views, views, suspicious_views, windows_settled, eligible)
    # M: its settlement fixed 7 qualified views; 3 of them were clawed back afterwards: the total counts 4
    M: (M_SETTLED, 2_570, 0, 4, 7, 3, 1, True),
    ZB: (2_000, 0, 0, 1, 1, 0, 1, True),
    F0: (3_600, 0, 0, 2, 18, 16, 1, True),  # 16 farm views clawed back before settling, 2 authentic ones
    F1: (0, 0, 0, 0, 16, 16, 0, True),  # open windows: the clawed-back views left qualified views and provisional
    F2: (0, 0, 0, 0, 15, 15, 0, True),
    F3: (0, 0, 0, 0, 15, 15, 0, True),
    Z2: (0, 0, 1_000, 1, 1, 0, 0, True),
}


@pytest.mark.parametrize("workers", [1, 2])
def test_device_burst_claws_back_views_across_partitions_and_settled_money(
    scenario_env: dict[str, str], workers: int
) -> None:
    """With two workers the device partitions, and the event partitions their flags and acknowledgements go
    back to, are split between the workers: the same numbers must come out."""
    env = dict(scenario_env, **SCENARIO)
    prefix = env["TOPIC_PREFIX"]
    assert {partition_for(v.encode(), 4) for v in FARM_VIDEOS} == {0, 1, 2, 3}
    started_ms = int(time.time() * 1000)
    with contextlib.ExitStack() as stack:
        worker = stack.enter_context(WorkerProcess(env))
        if workers == 2:
            other = stack.enter_context(WorkerProcess(dict(env, METRICS_PORT=str(free_port()))))
            # both own partitions before any input: no state moves, so no record is re-emitted by a rebalance
            wait_for(lambda: owns_partitions(worker) and owns_partitions(other), 60, "both workers to own partitions")
        publish(env, device_phase_one())
        first = read_settlements(env, 1)
        assert settlement_view(first) == {(M, 10_000): EXPECTED_SETTLEMENTS_2[(M, 10_000)]}
        # the farm's later views in the same 60 s span push it over 60: M's settled views are clawed back too
        publish(env, device_phase_two())
        read_audit(env, 65)
        publish(env, device_phase_three())
        accruals = read_accruals(env, EXPECTED_ACCRUALS_2)
        if workers == 2:  # each worker counts what it owns: its metrics are checked with one worker
            assert owns_partitions(worker) and owns_partitions(other)  # no rebalance happened meanwhile
        else:
            wait_for_metrics(
                worker,
                expected_metrics(
                    events={
                        # M 7 + ZB 1 + farm 62 + F0 2 + Z2 1: a device_burst view keeps outcome accepted (SPEC §4)
                        (VIEWS, "accepted"): 73,
                        (INTERACTIONS, "accepted"): 3,  # M, ZB, F0 likes; Z2's is pending
                        (PROFILES, "accepted"): 1,
                    },
                    suspicious={},  # device_burst is judged on the device-views repartition: it only claws back
                    clawed_back={"device_burst": 65},
                    settled=M_SETTLED + 2_000 + 3_600,
                    clawback=2_570,
                    windows=3,
                    provisional=1_000,
                    pending=1,
                ),
            )
        settlements = read_settlements(env, 3 + 3)
    assert accruals == EXPECTED_ACCRUALS_2
    assert settlement_view(settlements) == EXPECTED_SETTLEMENTS_2

    # M's three clawback records: each the difference of two cumulative SPEC §5 results, in the flags' order
    # (the device rule flags a span's earlier views in ts order: US 1_000, JP 700, IN 100). Per-view rounding
    # would have given 1_428 + 999 + 142 = 2_569; the cumulative formula gives 2_570.
    clawbacks = [r for r in settlements if r["kind"] == "clawback"]
    policy = next(r["policy"] for r in settlements if r["kind"] == "settlement")
    assert [
        {k: v for k, v in r.items() if not k.startswith("_")} for r in sorted(clawbacks, key=lambda r: r["_offset"])
    ] == [
        {
            "kind": "clawback",
            "video_id": M,
            "creator_id": "c1",
            "window_start": 10_000,
            "window_end": 20_000,
            "base_micros": M_BASE,
            "clawed_base_micros": clawed,
            "multiplier_bps": M_MULT,
            "settled_micros": M_SETTLED,
            "clawback_micros": amount,
            "policy": policy,
        }
        for clawed, amount in ((1_000, 1_428), (1_700, 999), (1_800, 143))
    ]
    assert m_clawback(1_000) == 1_428 and m_clawback(1_700) == 1_428 + 999 and m_clawback(1_800) == 2_570

    # every view of the farm in the span (3 on M, 62 on F0-F3) ends with one clawback record for device_burst;
    # the n-th view to reach the device rule (n > 60) sees n views in the span: 61 flags say 61, then one each
    views = input_positions(env, VIEWS, 8 + 62 + 2 + 1)
    farm = {
        e["event_id"]: e for topic, e, *_ in device_phase_one() + device_phase_two() if e.get("device_id") == "farm"
    }
    assert len(farm) == 65
    audit = read_audit(env, 65)
    pattern = re.compile(re.escape(FARM_DETAIL).replace(r"\{n\}", "(6[1-5])"))
    expected = {
        (prefix + VIEWS, *views[event_id][0]): (event, "clawback", "device_burst", pattern)
        for event_id, event in farm.items()
    }
    check_audit(audit, expected, started_ms)
    counts = Counter(pattern.sub(r"\1", r["detail"]) for r in audit)
    assert counts == {"61": 61, "62": 1, "63": 1, "64": 1, "65": 1}
    assert {r["partition"] for r in audit} == {0, 1, 2, 3}
    assert {r["detail"] for r in audit if r["event"]["video_id"] == M} == {FARM_DETAIL.format(n=61)}


# ---- scenario 3: device_overlap and account_farm across partitions ----------------------------------------------

O1, O2, O3, A0 = on_partition("O1", 1), on_partition("O2", 2), on_partition("O3", 3), on_partition("A0", 0)
OVERLAP_DETAIL = (
    "device tv shows this view (watched 4000..12000) and others of the last 600s at the same time: 6000 ms of "
    "overlap in total (more than 2000); one screen shows one video at a time"
)
ACCOUNT_DETAIL = (
    "device tab has more than 8 distinct accounts within 86400s: account {viewer} is {which} in order of first view"
)


def one_screen_phase() -> list[tuple[Any, ...]]:
    """One TV showing three videos of three partitions, the second while the first still plays; a tablet used by
    ten accounts in turn, one after the other. No interaction: the windows stay open (provisional money)."""
    return [
        (PROFILES, ELIGIBLE_C1),
        (VIEWS, view("t1", O1, "tv-1", 10_000, watch=9_000, device="tv")),  # [1_000, 10_000], US 1_000
        # [4_000, 12_000]: 6_000 ms over t1: device_overlap (JP 700 clawed back)
        (VIEWS, view("t2", O2, "tv-2", 12_000, watch=8_000, region="JP", device="tv")),
        # [11_000, 16_000]: over t1 by nothing, over t2 by 1_000 but t2 is rejected: kept (GB 800)
        (VIEWS, view("t3", O3, "tv-3", 16_000, watch=5_000, region="GB", device="tv")),
        # accounts a0..a9, 5 s views 5.5 s apart (US 1_000 each): a8 and a9, the 9th and 10th, are account_farm
        *((VIEWS, view(f"a{k}", A0, f"a{k}", 20_000 + 5_500 * k, watch=5_000, device="tab")) for k in range(10)),
    ]


def test_device_overlap_and_account_farm_claw_back_with_their_reasons(scenario_env: dict[str, str]) -> None:
    env = dict(scenario_env, **SCENARIO)
    prefix = env["TOPIC_PREFIX"]
    started_ms = int(time.time() * 1000)
    events = {e["event_id"]: e for topic, e in one_screen_phase() if topic == VIEWS}
    expected_accruals = {
        # video: (settled, clawback, provisional, qualified_views, views, suspicious_views, windows_settled, eligible)
        O1: (0, 0, 1_000, 1, 1, 0, 0, True),
        O2: (0, 0, 0, 0, 1, 1, 0, True),
        O3: (0, 0, 800, 1, 1, 0, 0, True),
        A0: (0, 0, 8_000, 8, 10, 2, 0, True),
    }
    with WorkerProcess(env) as worker:
        publish(env, one_screen_phase())
        # the device verdicts come once every event partition has reported it is drained (a tick after its input)
        audit = read_audit(env, 3)
        accruals = read_accruals(env, expected_accruals)
        wait_for_metrics(
            worker,
            expected_metrics(
                events={(VIEWS, "accepted"): 13, (PROFILES, "accepted"): 1},
                suspicious={},  # judged per device: clawbacks only
                clawed_back={"device_overlap": 1, "account_farm": 2},
                settled=0,
                clawback=0,
                windows=0,
                provisional=1_000 + 800 + 8_000,
                pending=0,
            ),
        )
    assert accruals == expected_accruals
    views = input_positions(env, VIEWS, 13)
    expected = {
        (prefix + VIEWS, *views["t2"][0]): (events["t2"], "clawback", "device_overlap", OVERLAP_DETAIL),
        (prefix + VIEWS, *views["a8"][0]): (
            events["a8"],
            "clawback",
            "account_farm",
            ACCOUNT_DETAIL.format(viewer="a8", which="its account number 9"),
        ),
        (prefix + VIEWS, *views["a9"][0]): (
            events["a9"],
            "clawback",
            "account_farm",
            ACCOUNT_DETAIL.format(viewer="a9", which="not among its first 9 accounts"),
        ),
    }
    check_audit(audit, expected, started_ms)
