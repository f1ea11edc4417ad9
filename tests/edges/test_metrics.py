"""RewardsMetrics: SPEC §8 names, types, labels, pre-initialised series, clamping, and the /metrics server."""

from __future__ import annotations

import urllib.request

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream_app.domain.errors import StreamAppError
from stream_app.edges.metrics import (
    HEALTH_METRIC_NAMES,
    METRIC_NAMES,
    MetricsServerError,
    NegativeAmountError,
    RewardsMetrics,
    UnknownLabelError,
    start_http_server,
)

# SPEC §8 table, written out independently of the module: exposed name -> (type, label names).
SPEC_METRICS = {
    "rewards_events_total": ("counter", {"topic", "outcome"}),
    "rewards_pending_interactions": ("gauge", set()),
    "rewards_suspicious_events_total": ("counter", {"reason"}),
    "rewards_settled_micros_total": ("counter", set()),
    "rewards_clawback_micros_total": ("counter", set()),
    "rewards_clawed_back_events_total": ("counter", {"reason"}),
    "rewards_provisional_micros": ("gauge", set()),
    "rewards_windows_settled_total": ("counter", set()),
    "rewards_accruals_emitted_total": ("counter", set()),
    "rewards_event_lag_seconds": ("histogram", {"topic"}),
    "rewards_consumer_lag_messages": ("gauge", {"topic", "partition"}),
    "rewards_eligible_creators": ("gauge", set()),
}
# Worker-health metrics beyond SPEC §8 (README, Metrics), none with labels.
HEALTH_METRICS = {
    "rewards_worker_ready": ("gauge", set()),
    "rewards_readiness_changes_total": ("counter", set()),
    "rewards_event_loop_heartbeat_age_seconds": ("gauge", set()),
    "rewards_shutdown_seconds": ("gauge", set()),
}


@pytest.fixture
def metrics() -> RewardsMetrics:
    return RewardsMetrics(CollectorRegistry())


def value(m: RewardsMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


def exposition(m: RewardsMetrics) -> dict[str, tuple[str, set[str]]]:
    """Parse the text format as Prometheus would: family name (with _total for counters) -> (type, labels)."""
    found: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        name = family.name + "_total" if family.type == "counter" else family.name
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        found[name] = (family.type, labels)
    return found


def test_metric_names_match_spec_table() -> None:
    assert set(METRIC_NAMES) == set(SPEC_METRICS)
    assert len(METRIC_NAMES) == 12


def test_exposed_types_and_labels_match_spec(metrics: RewardsMetrics) -> None:
    metrics.set_consumer_lag("video-views", 0, 5)  # consumer lag has series only once a partition is known
    assert exposition(metrics) == SPEC_METRICS | HEALTH_METRICS


def test_health_metric_names_are_listed_and_apart_from_the_spec_names() -> None:
    assert set(HEALTH_METRIC_NAMES) == set(HEALTH_METRICS)
    assert not set(HEALTH_METRIC_NAMES) & set(METRIC_NAMES)


def test_no_created_series_are_exposed(metrics: RewardsMetrics) -> None:
    assert "_created" not in generate_latest(metrics.registry).decode()


def test_default_registry_has_process_platform_and_gc_collectors() -> None:
    names = set(exposition(RewardsMetrics()))
    assert {"python_info", "python_gc_collections_total", "process_cpu_seconds_total"} <= names
    assert set(SPEC_METRICS) - {"rewards_consumer_lag_messages"} <= names


def test_two_instances_do_not_collide() -> None:
    # Each test and each embedded worker builds its own; the global registry must not be involved.
    first, second = RewardsMetrics(), RewardsMetrics()
    first.count_outcome("video-views", "accepted")
    assert value(first, "rewards_events_total", topic="video-views", outcome="accepted") == 1.0
    assert value(second, "rewards_events_total", topic="video-views", outcome="accepted") == 0.0


@pytest.mark.parametrize(
    ("topic", "outcome"),
    [(t, o) for t in ("video-views", "video-interactions", "creator-profiles") for o in
     ("accepted", "suspicious", "late", "invalid")],
)  # fmt: skip
def test_every_topic_outcome_series_exists_at_zero(metrics: RewardsMetrics, topic: str, outcome: str) -> None:
    assert value(metrics, "rewards_events_total", topic=topic, outcome=outcome) == 0.0


@pytest.mark.parametrize(
    "reason",
    [
        "duplicate_event",
        "impossible_watch",
        "viewer_repeat",
        "device_burst",
        "velocity_burst",
        "engagement_without_view",
        "duplicate_interaction",
    ],
)
def test_every_reason_series_exists_at_zero(metrics: RewardsMetrics, reason: str) -> None:
    assert value(metrics, "rewards_suspicious_events_total", reason=reason) == 0.0
    assert value(metrics, "rewards_clawed_back_events_total", reason=reason) == 0.0


def test_count_outcome_adds_only_to_its_series(metrics: RewardsMetrics) -> None:
    metrics.count_outcome("video-views", "accepted")
    metrics.count_outcome("video-views", "accepted", 4)
    metrics.count_outcome("video-interactions", "invalid", 2)
    assert value(metrics, "rewards_events_total", topic="video-views", outcome="accepted") == 5.0
    assert value(metrics, "rewards_events_total", topic="video-interactions", outcome="invalid") == 2.0
    assert value(metrics, "rewards_events_total", topic="video-views", outcome="invalid") == 0.0


@pytest.mark.parametrize(
    ("topic", "outcome"),
    [
        ("dev.video-views", "accepted"),  # topic with TOPIC_PREFIX: labels carry the bare name
        ("video-views", "clawback"),  # not an outcome of rewards_events_total
        ("reward-accruals", "accepted"),  # output topic
    ],
)
def test_count_outcome_refuses_unknown_labels(metrics: RewardsMetrics, topic: str, outcome: str) -> None:
    with pytest.raises(UnknownLabelError) as info:
        metrics.count_outcome(topic, outcome)
    assert isinstance(info.value, StreamAppError)
    assert "rewards_events_total" in str(info.value)


@pytest.mark.parametrize("reason", ["late", "future_timestamp", "unknown_rule"])
def test_suspicious_and_clawback_refuse_non_rule_reasons(metrics: RewardsMetrics, reason: str) -> None:
    with pytest.raises(UnknownLabelError):
        metrics.count_suspicious(reason)
    with pytest.raises(UnknownLabelError):
        metrics.count_clawed_back(reason)


def test_reason_counters_are_separate(metrics: RewardsMetrics) -> None:
    metrics.count_suspicious("viewer_repeat", 3)
    metrics.count_clawed_back("device_burst", 2)
    metrics.count_clawed_back("device_burst")
    assert value(metrics, "rewards_suspicious_events_total", reason="viewer_repeat") == 3.0
    assert value(metrics, "rewards_suspicious_events_total", reason="device_burst") == 0.0
    assert value(metrics, "rewards_clawed_back_events_total", reason="device_burst") == 3.0


def test_money_and_settlement_counters(metrics: RewardsMetrics) -> None:
    metrics.add_settled(1_500_000)
    metrics.add_settled(250)
    metrics.add_clawback(1_000)
    metrics.count_windows_settled()
    metrics.count_windows_settled(2)
    metrics.count_accruals_emitted(7)
    assert value(metrics, "rewards_settled_micros_total") == 1_500_250.0
    assert value(metrics, "rewards_clawback_micros_total") == 1_000.0
    assert value(metrics, "rewards_windows_settled_total") == 3.0
    assert value(metrics, "rewards_accruals_emitted_total") == 7.0


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.add_settled(-1),
        lambda m: m.add_clawback(-5),
        lambda m: m.count_outcome("video-views", "accepted", -1),
        lambda m: m.count_windows_settled(-1),
        lambda m: m.count_accruals_emitted(-2),
        lambda m: m.count_suspicious("viewer_repeat", -1),
    ],
)
def test_counters_refuse_negative_amounts(metrics: RewardsMetrics, call: object) -> None:
    with pytest.raises(NegativeAmountError):
        call(metrics)  # type: ignore[operator]


def test_gauges_are_set_not_added(metrics: RewardsMetrics) -> None:
    metrics.set_provisional_micros(9_000)
    metrics.set_provisional_micros(4_000)
    metrics.set_pending_interactions(12)
    metrics.set_eligible_creators(3)
    assert value(metrics, "rewards_provisional_micros") == 4_000.0
    assert value(metrics, "rewards_pending_interactions") == 12.0
    assert value(metrics, "rewards_eligible_creators") == 3.0


def test_event_lag_histogram_buckets(metrics: RewardsMetrics) -> None:
    for seconds in (0.004, 0.3, 4.0, 7200.0, -2.0):
        metrics.observe_event_lag("video-views", seconds)

    def bucket(le: str) -> float | None:
        return value(metrics, "rewards_event_lag_seconds_bucket", topic="video-views", le=le)

    assert bucket("0.01") == 2.0  # 0.004 and the negative lag clamped to 0
    assert bucket("0.25") == 2.0
    assert bucket("0.5") == 3.0
    assert bucket("5.0") == 4.0
    assert bucket("3600.0") == 4.0
    assert bucket("+Inf") == 5.0
    assert value(metrics, "rewards_event_lag_seconds_count", topic="video-views") == 5.0
    assert value(metrics, "rewards_event_lag_seconds_sum", topic="video-views") == pytest.approx(7204.304)
    assert value(metrics, "rewards_event_lag_seconds_count", topic="creator-profiles") == 0.0


def test_a_batch_of_event_lags_exposes_what_one_observe_per_event_does() -> None:
    import random

    rng = random.Random(5)
    now_ms = 1_800_000_000_000
    event_ts = [now_ms - rng.choice([0, 5, 10, 11, 250, 999, 60_000, 3_600_000, 9_000_000, -3_000]) for _ in range(500)]
    one_by_one, batched = RewardsMetrics(), RewardsMetrics()
    for ts in event_ts:
        one_by_one.observe_event_lag("video-views", (now_ms - ts) / 1000)
    batched.observe_event_lags("video-views", now_ms, event_ts[:200])
    batched.observe_event_lags("video-views", now_ms, event_ts[200:])
    batched.observe_event_lags("video-views", now_ms, [])

    def lag_lines(metrics: RewardsMetrics) -> list[str]:
        text = prometheus_client.generate_latest(metrics.registry).decode()
        return [line for line in text.splitlines() if line.startswith("rewards_event_lag_seconds")]

    def exact(lines: list[str]) -> list[str]:
        return [line for line in lines if "_sum" not in line]

    assert exact(lag_lines(batched)) == exact(lag_lines(one_by_one))  # every bucket and the count
    total = value(one_by_one, "rewards_event_lag_seconds_sum", topic="video-views")
    assert value(batched, "rewards_event_lag_seconds_sum", topic="video-views") == pytest.approx(total)
    assert value(batched, "rewards_event_lag_seconds_count", topic="video-views") == 500.0


def test_event_lag_refuses_unknown_topic(metrics: RewardsMetrics) -> None:
    with pytest.raises(UnknownLabelError):
        metrics.observe_event_lag("events-dlq", 1.0)


def test_consumer_lag_is_clamped_and_forgotten(metrics: RewardsMetrics) -> None:
    metrics.set_consumer_lag("video-views", 3, 120)
    metrics.set_consumer_lag("video-views", 3, 40)
    metrics.set_consumer_lag("video-interactions", 3, -7)
    assert value(metrics, "rewards_consumer_lag_messages", topic="video-views", partition="3") == 40.0
    assert value(metrics, "rewards_consumer_lag_messages", topic="video-interactions", partition="3") == 0.0
    metrics.forget_consumer_lag("video-views", 3)
    metrics.forget_consumer_lag("video-views", 9)  # never set: no error
    assert value(metrics, "rewards_consumer_lag_messages", topic="video-views", partition="3") is None
    metrics.set_consumer_lag("video-views", 3, 1)  # re-assigned later: series comes back
    assert value(metrics, "rewards_consumer_lag_messages", topic="video-views", partition="3") == 1.0


def test_consumer_lag_refuses_negative_partition(metrics: RewardsMetrics) -> None:
    with pytest.raises(UnknownLabelError):
        metrics.set_consumer_lag("video-views", -1, 0)


def test_http_server_serves_metrics_and_shuts_down(metrics: RewardsMetrics) -> None:
    metrics.count_outcome("creator-profiles", "accepted", 2)
    server = start_http_server(metrics, "127.0.0.1", 0)
    try:
        assert server.port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
            assert resp.status == 200
        assert 'rewards_events_total{outcome="accepted",topic="creator-profiles"} 2.0' in body
    finally:
        server.shutdown()
    # The port is released: binding it again works.
    again = start_http_server(metrics, "127.0.0.1", server.port)
    again.shutdown()


def test_http_server_reports_bind_failure(metrics: RewardsMetrics) -> None:
    server = start_http_server(metrics, "127.0.0.1", 0)
    try:
        with pytest.raises(MetricsServerError, match="METRICS_PORT"):
            start_http_server(metrics, "127.0.0.1", server.port)
    finally:
        server.shutdown()
