"""alerts.yml structure (for, severity, annotations, runbook anchors) and its unit-test coverage in alerts_test.yml."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.deploy.promql import PROMETHEUS_DIR

RUNBOOK = "https://github.com/creator-rewards/scorer/blob/main/README.md#runbook-"
EXPECTED_ALERTS = {
    "RewardsConsumerLagGrowing": "warning",
    "RewardsDeadLetterRateHigh": "warning",
    "RewardsSuspiciousRateSpike": "warning",
    "RewardsNoEventsConsumed": "warning",
    "RewardsWorkerDown": "critical",
    "RewardsSettlementStalled": "critical",
    "RewardsWorkerNotReady": "warning",
    "RewardsReadinessFlapping": "warning",
    "RewardsShutdownSlow": "warning",
    "RewardsLagAtMaxScale": "critical",
}

RULES: list[dict[str, Any]] = [
    rule for group in yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"] for rule in group["rules"]
]
TESTS: list[dict[str, Any]] = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())["tests"]


def test_the_expected_alerts_with_their_severities() -> None:
    assert {r["alert"]: r["labels"]["severity"] for r in RULES} == EXPECTED_ALERTS


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_alert_has_for_and_annotations(rule: dict[str, Any]) -> None:
    assert rule["for"].endswith("m")  # "0m" where the expression itself spans time (max_over_time)
    assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
    assert rule["annotations"]["runbook_url"] == RUNBOOK + rule["alert"].lower()


def _exercised(fires: bool) -> set[str]:
    names = set()
    for case in TESTS:
        for check in case["alert_rule_test"]:
            if bool(check["exp_alerts"]) == fires:
                names.add(check["alertname"])
    return names


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_every_alert_is_unit_tested_firing_and_silent(alert: str) -> None:
    assert alert in _exercised(fires=True), f"{alert}: no promtool case where it fires"
    assert alert in _exercised(fires=False), f"{alert}: no promtool case where it stays silent"


def test_firing_cases_check_the_runbook_annotation() -> None:
    for case in TESTS:
        for check in case["alert_rule_test"]:
            for alert in check["exp_alerts"]:
                url = alert["exp_annotations"]["runbook_url"]
                assert url == RUNBOOK + check["alertname"].lower()
