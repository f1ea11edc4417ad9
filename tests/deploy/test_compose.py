"""deploy/compose: files parse, every service is memory-limited, paths exist, the worker scales to 3."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.promql import DEPLOY, REPO

COMPOSE_DIR = DEPLOY / "compose"
# SPEC §9: the only variables the scorer reads.
SPEC_VARIABLES = {
    "KAFKA_BOOTSTRAP",
    "KAFKA_SECURITY_PROTOCOL",
    "KAFKA_SASL_MECHANISM",
    "KAFKA_SASL_USERNAME",
    "KAFKA_SASL_PASSWORD",
    "KAFKA_SSL_CAFILE",
    "APP_ID",
    "TOPIC_PREFIX",
    "STORE",
    "METRICS_HOST",
    "METRICS_PORT",
    "POLICY_FILE",
    "WINDOW_S",
    "GRACE_S",
    "IDLE_SETTLE_S",
    "EMIT_INTERVAL_S",
    "LOG_LEVEL",
    "LOG_FORMAT",
}


def load(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((COMPOSE_DIR / name).read_text())
    assert isinstance(doc, dict)
    return doc


def merge(base: Any, overlay: Any) -> Any:
    """Compose's merge for mappings (overlay wins, recursively); enough for these files."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for key, value in overlay.items():
            out[key] = merge(base.get(key), value) if key in base else value
        return out
    return overlay


def memory_limit(service: dict[str, Any]) -> str | None:
    limit = service.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory")
    return limit or service.get("mem_limit")


BASE = load("compose.yaml")
SCALED = merge(BASE, load("compose.scale.yaml"))


def test_base_has_the_expected_services() -> None:
    assert set(BASE["services"]) == {"kafka", "topics", "worker", "prometheus", "grafana"}


@pytest.mark.parametrize(("name", "doc"), [("compose.yaml", BASE), ("compose + scale", SCALED)])
def test_every_service_has_a_memory_limit(name: str, doc: dict[str, Any]) -> None:
    missing = [svc for svc, spec in doc["services"].items() if not memory_limit(spec)]
    assert missing == [], f"{name}: no memory limit on {missing}"


def test_scale_overlay_runs_three_workers_and_only_touches_the_worker() -> None:
    overlay = load("compose.scale.yaml")
    assert set(overlay["services"]) == {"worker"}
    assert SCALED["services"]["worker"]["deploy"]["replicas"] == 3
    # Replicas cannot share a host port.
    assert "ports" not in SCALED["services"]["worker"]


def test_kafka_is_apache_kafka_in_kraft_mode_without_auto_creation() -> None:
    kafka = BASE["services"]["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "healthcheck" in kafka


def test_worker_waits_for_topics_which_waits_for_kafka() -> None:
    services = BASE["services"]
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["topics"]["command"][:2] == ["topics", "apply"]
    assert services["worker"]["command"] == ["worker"]


def test_topics_file_given_to_topics_apply_is_in_the_image() -> None:
    command = BASE["services"]["topics"]["command"]
    in_image = Path(command[command.index("--file") + 1])
    assert in_image == Path("/opt/stream-app/topics/topics.toml")
    assert "COPY topics /opt/stream-app/topics" in (DEPLOY / "Dockerfile").read_text()
    assert (REPO / "topics" / "topics.toml").is_file()


@pytest.mark.parametrize("service", ["topics", "worker"])
def test_scorer_environment_uses_only_spec_variables(service: str) -> None:
    env = BASE["services"][service]["environment"]
    assert set(env) <= SPEC_VARIABLES, sorted(set(env) - SPEC_VARIABLES)
    assert env["KAFKA_BOOTSTRAP"] == "kafka:9092"
    assert env["METRICS_PORT"] == "9108"


def test_build_context_and_dockerfile_exist() -> None:
    for service in ("topics", "worker"):
        build = BASE["services"][service]["build"]
        context = (COMPOSE_DIR / build["context"]).resolve()
        assert context == REPO
        assert (context / build["dockerfile"]).is_file()


def test_bind_mounted_files_exist() -> None:
    sources = []
    for spec in BASE["services"].values():
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                sources.append(source)
    assert len(sources) == 4  # prometheus.yml, alerts.yml, grafana provisioning, dashboard
    for source in sources:
        assert (COMPOSE_DIR / source).exists(), source


def test_prometheus_scrapes_the_worker_service_by_dns() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "creator-rewards-scorer"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"]
    assert sd["port"] == 9108
    assert config["rule_files"] == ["alerts.yml"]


def test_grafana_datasource_uid_is_the_one_the_dashboard_uses() -> None:
    datasources = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    (source,) = datasources["datasources"]
    assert source["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    uids = {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p}
    assert uids == {source["uid"]}
    providers = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "creator-rewards.yaml").read_text()
    )
    (provider,) = providers["providers"]
    mounts = BASE["services"]["grafana"]["volumes"]
    assert f"../grafana/dashboard.json:{provider['options']['path']}/creator-rewards.json:ro" in mounts


def test_worker_grace_period_outlasts_its_shutdown_timeout() -> None:
    from stream_app.edges.settings import Settings

    grace = BASE["services"]["worker"]["stop_grace_period"]
    assert grace.endswith("s") and int(grace[:-1]) > Settings().shutdown_timeout_s
