"""Every alert's runbook_url points at an anchor that exists in the README's runbook."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_every_runbook_url_has_its_anchor_in_the_readme() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', (ROOT / "README.md").read_text()))
    assert len(alerts) == 10
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        assert url.split("#")[1] in anchors, f"{alert['alert']}: {url}"
        assert url.split("#")[1] == f"runbook-{alert['alert'].lower()}"
