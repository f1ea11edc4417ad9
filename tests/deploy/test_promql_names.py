"""Every PromQL expression in deploy/ (alerts and dashboard) names only metrics and labels the worker exposes."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream_app.edges.metrics import (
    HEALTH_METRIC_NAMES,
    INPUT_TOPICS,
    METRIC_NAMES,
    OUTCOMES,
    SUSPICIOUS_REASONS,
    RewardsMetrics,
)
from tests.deploy.promql import DEPLOY, PROMETHEUS_DIR, grouping_labels, label_matchers, metric_names

# Labels Prometheus adds to every scraped series (target labels), plus the histogram bucket bound.
TARGET_LABELS = {"job", "instance"}


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("up", {"up"}),
        ('up{job="creator-rewards-scorer"} == 0', {"up"}),
        ('sum by (topic) (rate(rewards_events_total{outcome="invalid"}[5m]))', {"rewards_events_total"}),
        ("sum(rate(x_total[$__rate_interval])) * 3600 / 1e6", {"x_total"}),
        (
            "histogram_quantile(0.99, sum by (topic, le) (rate(lag_seconds_bucket[5m])))",
            {"lag_seconds_bucket"},
        ),
        ("rate(a_total[6h] offset 10m) > 3 * rate(b_total[1h])", {"a_total", "b_total"}),
        ("a and on (job) b or c unless ignoring (x) group_left (y) d", {"a", "b", "c", "d"}),
        ('absent(up{job="x"}) or vector(0)', {"up"}),
        ("sum(a) without (instance) / bool 2.5e3", {"a"}),
        ("label_replace(m, 'dst', '$1', 'src', '(.*)')", {"m"}),
        ("max_over_time(m[10m:1m]) - m offset 1h", {"m"}),
    ],
)
def test_metric_names_extraction(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@pytest.mark.parametrize(
    ("expr", "labels"),
    [
        ("sum by (topic, le) (x)", {"topic", "le"}),
        ("sum(x) without (instance)", {"instance"}),
        ("a and on (job) b", {"job"}),
        ("sum(x)", set()),
    ],
)
def test_grouping_labels_extraction(expr: str, labels: set[str]) -> None:
    assert grouping_labels(expr) == labels


@functools.cache
def exposed() -> tuple[set[str], dict[str, set[str]]]:
    """Series names a worker's /metrics has, and for each the label names it carries (le included)."""
    metrics = RewardsMetrics()
    metrics.set_consumer_lag("video-views", 0, 1)  # consumer-lag series exist only for assigned partitions
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry).decode()):
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names | {"up"}, labels


def alert_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return [(rule["alert"], rule["expr"]) for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[tuple[str, str]]:
    doc = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((f"{panel['title']} {target['refId']}", target["expr"]))
            walk(panel.get("panels", []))

    walk(doc["panels"])
    return found


ALL_EXPRS = alert_exprs() + dashboard_exprs()


def test_there_are_expressions_to_check() -> None:
    assert len(alert_exprs()) == 10
    assert len(dashboard_exprs()) >= 20


def test_exposed_rewards_families_are_metric_names() -> None:
    names, _ = exposed()
    rewards = {n for n in names if n.startswith("rewards_")}
    # The histogram is exposed only through its suffixed series.
    expected = (
        (set(METRIC_NAMES) - {"rewards_event_lag_seconds"})
        | set(HEALTH_METRIC_NAMES)
        | {
            "rewards_event_lag_seconds_bucket",
            "rewards_event_lag_seconds_sum",
            "rewards_event_lag_seconds_count",
        }
    )
    assert rewards == expected


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_expression_names_only_exposed_metrics(where: str, expr: str) -> None:
    names, _ = exposed()
    used = metric_names(expr)
    assert used, f"{where}: no metric found in {expr!r}"
    assert used <= names, f"{where}: unknown metrics {sorted(used - names)}"


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_expression_labels_exist_on_its_metrics(where: str, expr: str) -> None:
    _, labels = exposed()
    available = set(TARGET_LABELS)
    for name in metric_names(expr):
        available |= labels.get(name, set())
    used = grouping_labels(expr) | {label for label, _, _ in label_matchers(expr)}
    assert used <= available, f"{where}: labels {sorted(used - available)} not on {sorted(metric_names(expr))}"


KNOWN_VALUES = {"topic": set(INPUT_TOPICS), "outcome": set(OUTCOMES), "reason": set(SUSPICIOUS_REASONS)}


@pytest.mark.parametrize(("where", "expr"), ALL_EXPRS, ids=[w for w, _ in ALL_EXPRS])
def test_expression_label_values_are_known(where: str, expr: str) -> None:
    for label, op, value in label_matchers(expr):
        if label in KNOWN_VALUES and op in ("=", "!="):
            assert value in KNOWN_VALUES[label], f"{where}: {label}{op}{value!r} can never match"
        if label == "job":
            assert value == "creator-rewards-scorer", f"{where}: job must be the scrape job of prometheus.yml"


def test_dashboard_shows_every_worker_health_metric() -> None:
    used = set().union(*(metric_names(expr) for _, expr in dashboard_exprs()))
    assert set(HEALTH_METRIC_NAMES) <= used, sorted(set(HEALTH_METRIC_NAMES) - used)


def test_dashboard_covers_required_panels() -> None:
    exprs = [expr for _, expr in dashboard_exprs()]
    joined = "\n".join(exprs)
    assert "sum by (outcome) (rate(rewards_events_total" in joined
    assert "sum by (reason) (rate(rewards_suspicious_events_total" in joined
    assert "rewards_consumer_lag_messages" in joined
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(rewards_event_lag_seconds_bucket" in joined
    # Money: micros are converted to USD on the panel only, by dividing by 1e6.
    money = [e for e in exprs if "micros" in e]
    assert len(money) >= 4
    assert all(e.rstrip().endswith("/ 1e6") for e in money), money
