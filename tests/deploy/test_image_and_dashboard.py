"""deploy/Dockerfile conventions, and the Grafana dashboard's shape (ids, layout, units)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from stream_app.edges.health import WorkerHealth
from stream_app.edges.metrics import RewardsMetrics, start_http_server
from tests.deploy.promql import DEPLOY, REPO

DOCKERFILE = (DEPLOY / "Dockerfile").read_text()
DASHBOARD: dict[str, Any] = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())


def instructions(name: str) -> list[str]:
    """Arguments of every `NAME ...` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", joined, re.M)]


def test_runtime_stage_is_python_311_slim() -> None:
    assert instructions("FROM")[-1] == "python:3.11-slim"


def test_runs_as_a_numeric_non_root_user() -> None:
    (user,) = instructions("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 1000


def test_entrypoint_command_port_and_healthcheck() -> None:
    assert instructions("ENTRYPOINT") == ['["stream-app"]']
    assert instructions("CMD") == ['["worker"]']
    assert instructions("EXPOSE") == ["9108"]
    (healthcheck,) = instructions("HEALTHCHECK")
    assert "/livez" in healthcheck and "METRICS_PORT" in healthcheck


@pytest.mark.parametrize(("beats", "healthy"), [(True, True), (False, False)], ids=["live", "loop-stuck"])
def test_healthcheck_command_follows_livez(beats: bool, healthy: bool) -> None:
    """The image's HEALTHCHECK command, run as Docker would, against a probe server whose loop is or is not live."""
    (healthcheck,) = instructions("HEALTHCHECK")
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command[0] == "python"
    health = WorkerHealth(liveness_timeout_s=30)
    if beats:
        health.beat(None)
    server = start_http_server(RewardsMetrics(CollectorRegistry()), "127.0.0.1", 0, health)
    try:
        done = subprocess.run(
            [sys.executable, *command[1:]],
            env={**os.environ, "METRICS_PORT": str(server.port)},
            capture_output=True,
            timeout=30,
            check=False,
        )
    finally:
        server.shutdown()
    assert (done.returncode == 0) == healthy, done.stderr


@pytest.mark.parametrize("source", ["pyproject.toml", "README.md", "stream_app", "topics"])
def test_copied_sources_are_named(source: str) -> None:
    copies = " ".join(instructions("COPY"))
    assert re.search(rf"(^|\s){re.escape(source)}(\s|$)", copies), source
    # README.md is written by the project owner; the others exist already.
    if source != "README.md":
        assert (REPO / source).exists()


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(_panels(p.get("panels", [])))
    return out


PANELS = _panels(DASHBOARD["panels"])


def test_dashboard_identity() -> None:
    assert DASHBOARD["uid"] == "creator-rewards"
    ids = [p["id"] for p in PANELS]
    assert len(ids) == len(set(ids))


def test_panels_do_not_overlap_and_fit_24_columns() -> None:
    cells: set[tuple[int, int]] = set()
    for p in PANELS:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine


def test_money_panels_show_usd() -> None:
    money = [p for p in PANELS if any("micros" in t["expr"] for t in p.get("targets", []))]
    assert {p["title"] for p in money} >= {
        "Settled and clawed-back money (USD per hour)",
        "Settled in range",
        "Clawed back in range",
    }
    for p in money:
        assert p["fieldConfig"]["defaults"]["unit"] == "currencyUSD", p["title"]


def test_lag_quantile_panel_is_in_seconds() -> None:
    (panel,) = [p for p in PANELS if p["title"].startswith("Event lag quantiles")]
    assert [t["legendFormat"] for t in panel["targets"]] == ["p50", "p95", "p99"]
    assert panel["fieldConfig"]["defaults"]["unit"] == "s"
