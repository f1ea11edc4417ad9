"""promtool on the deploy files and on a live /metrics scrape; bounded labels on that scrape. Skips without promtool."""

from __future__ import annotations

import subprocess
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream_app.edges.metrics import (
    INPUT_TOPICS,
    OUTCOMES,
    SUSPICIOUS_REASONS,
    RewardsMetrics,
    start_http_server,
)
from tests.deploy.promql import PROMETHEUS_DIR, promtool_or_skip

# Label names a rewards_* series may carry (le: histogram buckets).
ALLOWED_LABELS = {"topic", "outcome", "reason", "partition", "le"}


def run(args: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=60, cwd=PROMETHEUS_DIR)


def test_check_rules() -> None:
    result = run([promtool_or_skip(), "check", "rules", "alerts.yml"])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 10 rules found" in result.stdout


def test_rule_unit_tests() -> None:
    result = run([promtool_or_skip(), "test", "rules", "alerts_test.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_config() -> None:
    result = run([promtool_or_skip(), "check", "config", "prometheus.yml"])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture
def scraped() -> Iterator[str]:
    """/metrics text of a RewardsMetrics that every method has been called on, served on a free port."""
    metrics = RewardsMetrics()
    for topic in INPUT_TOPICS:
        for outcome in OUTCOMES:
            metrics.count_outcome(topic, outcome, 2)
        metrics.observe_event_lag(topic, 0.2)
        for partition in range(4):
            metrics.set_consumer_lag(topic, partition, partition * 10)
    for reason in SUSPICIOUS_REASONS:
        metrics.count_suspicious(reason)
        metrics.count_clawed_back(reason)
    metrics.add_settled(1_000_000)
    metrics.add_clawback(250)
    metrics.set_provisional_micros(42_000)
    metrics.set_pending_interactions(3)
    metrics.set_eligible_creators(7)
    metrics.count_windows_settled()
    metrics.count_accruals_emitted(5)
    server = start_http_server(metrics, "127.0.0.1", 0)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=5) as resp:
            yield resp.read().decode()
    finally:
        server.shutdown()


def test_promtool_check_metrics_on_a_live_scrape(scraped: str) -> None:
    result = run([promtool_or_skip(), "check", "metrics"], stdin=scraped)
    # promtool exits non-zero and prints each problem (naming, units, missing help) when it finds lint issues.
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_no_unbounded_label_on_a_live_scrape(scraped: str) -> None:
    values: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(scraped):
        if not family.name.startswith("rewards_"):
            continue
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            for label, value in sample.labels.items():
                values.setdefault(label, set()).add(value)
    assert values["topic"] == set(INPUT_TOPICS)
    assert values["outcome"] == set(OUTCOMES)
    assert values["reason"] == set(SUSPICIOUS_REASONS)
    assert values["partition"] == {"0", "1", "2", "3"}


def test_series_count_is_fixed_by_the_known_label_sets() -> None:
    # No traffic-dependent series: a fresh worker exposes exactly the pre-initialised ones.
    metrics = RewardsMetrics(CollectorRegistry())
    samples = [s for f in text_string_to_metric_families(generate_latest(metrics.registry).decode()) for s in f.samples]
    # 12 events + 1 pending + 9 suspicious + 1 settled + 1 clawback + 9 clawed back (SPEC §6's 9 reason codes)
    # + 1 provisional + 1 windows + 1 accruals + 3 topics x (17 buckets + +Inf + sum + count) + 0 consumer lag
    # + 1 eligible + 4 worker-health series (ready, readiness changes, heartbeat age, shutdown seconds)
    assert len(samples) == 12 + 1 + 9 + 1 + 1 + 9 + 1 + 1 + 1 + 3 * 20 + 0 + 1 + 4
