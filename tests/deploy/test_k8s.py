"""deploy/k8s: hardened containers (requests, limits, probes, non-root, read-only root), wiring between objects:
the Secret's keys, the PodMonitor's port and job, the ScaledObject's group, topics and partition bound."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from typing import Any

import pytest
import yaml

from tests.deploy.promql import DEPLOY, PROMETHEUS_DIR, REPO
from tests.deploy.test_compose import SPEC_VARIABLES

K8S = DEPLOY / "k8s"
# *.example.yaml are templates an operator fills in outside the repository (secret.example.yaml), never applied.
MANIFEST_FILES = sorted(
    p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml" and not p.name.endswith(".example.yaml")
)
EXAMPLE_SECRET: dict[str, Any] = yaml.safe_load((K8S / "secret.example.yaml").read_text())
# Operational settings beyond SPEC §9, documented in README's Configuration table.
OPERATIONS_VARIABLES = {"LIVENESS_TIMEOUT_S", "SHUTDOWN_TIMEOUT_S"}
DOCS: list[dict[str, Any]] = [
    doc for path in MANIFEST_FILES for doc in yaml.safe_load_all(path.read_text()) if doc is not None
]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
# Kinds that run to completion: a liveness/readiness probe has nothing to watch there.
ONE_SHOT_KINDS = {"Job", "CronJob"}


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in DOCS if d["kind"] == kind]


def one(kind: str) -> dict[str, Any]:
    (doc,) = by_kind(kind)
    return doc


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    if workload["kind"] == "CronJob":
        return dict(workload["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(workload["spec"]["template"]["spec"])


def containers() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(id, container, its pod spec) for every container and init container of every workload."""
    found = []
    for workload in (d for d in DOCS if d["kind"] in WORKLOAD_KINDS):
        spec = pod_spec(workload)
        for c in spec.get("initContainers", []) + spec["containers"]:
            found.append((f"{workload['kind']}/{workload['metadata']['name']}/{c['name']}", c, spec))
    return found


CONTAINERS = containers()
IDS = [cid for cid, _, _ in CONTAINERS]


def test_manifests_parse_and_cover_the_expected_kinds() -> None:
    kinds = sorted(d["kind"] for d in DOCS)
    assert kinds == sorted(
        [
            "Namespace",
            "ServiceAccount",
            "ConfigMap",
            "Job",
            "StatefulSet",
            "Service",
            "PodDisruptionBudget",
            "PodMonitor",
            "ScaledObject",
            "TriggerAuthentication",
        ]
    )
    assert not by_kind("Deployment"), "RocksDB state belongs in a StatefulSet (see statefulset.yaml)"
    assert not by_kind("Secret"), "no credential is shipped in the repository"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [p.name for p in MANIFEST_FILES]


@pytest.mark.parametrize(("cid", "container", "spec"), CONTAINERS, ids=IDS)
def test_container_has_requests_and_limits(cid: str, container: dict[str, Any], spec: dict[str, Any]) -> None:
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), f"{cid}: {kind} needs cpu and memory"


def _mebibytes(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
    return int(number) * (1024 if unit == "Gi" else 1)


@pytest.mark.parametrize(("cid", "container", "spec"), CONTAINERS, ids=IDS)
def test_memory_request_not_above_limit(cid: str, container: dict[str, Any], spec: dict[str, Any]) -> None:
    resources = container["resources"]
    assert _mebibytes(resources["requests"]["memory"]) <= _mebibytes(resources["limits"]["memory"])


@pytest.mark.parametrize(("cid", "container", "spec"), CONTAINERS, ids=IDS)
def test_container_is_non_root_with_read_only_root(cid: str, container: dict[str, Any], spec: dict[str, Any]) -> None:
    security = container["securityContext"]
    pod_security = spec.get("securityContext", {})
    assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, cid
    assert security["readOnlyRootFilesystem"] is True, cid
    assert security["allowPrivilegeEscalation"] is False, cid
    assert security["capabilities"]["drop"] == ["ALL"], cid
    # The image's user is 10001 (deploy/Dockerfile); a numeric uid lets the kubelet verify non-root.
    assert pod_security.get("runAsUser") == 10001, cid
    assert spec["automountServiceAccountToken"] is False, cid


@pytest.mark.parametrize(("cid", "container", "spec"), CONTAINERS, ids=IDS)
def test_container_can_write_tmp(cid: str, container: dict[str, Any], spec: dict[str, Any]) -> None:
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], cid


def long_running() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [c for c in CONTAINERS if c[0].split("/")[0] not in ONE_SHOT_KINDS]


@pytest.mark.parametrize(("cid", "container", "spec"), long_running(), ids=[c[0] for c in long_running()])
def test_long_running_container_probes_liveness_and_readiness(
    cid: str, container: dict[str, Any], spec: dict[str, Any]
) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 9108
    probes = {probe: (container[probe]["httpGet"]["path"], container[probe]["httpGet"]["port"]) for probe in PROBES}
    assert probes == {
        "startupProbe": ("/livez", "metrics"),
        "livenessProbe": ("/livez", "metrics"),
        "readinessProbe": ("/readyz", "metrics"),
    }, cid
    # A stuck loop is restarted: the probe's window is longer than the heartbeat timeout it watches, so one slow
    # answer never restarts a worker.
    live = container["livenessProbe"]
    liveness_timeout = int(one("ConfigMap")["data"]["LIVENESS_TIMEOUT_S"])
    assert live["periodSeconds"] * live["failureThreshold"] >= liveness_timeout
    assert live["timeoutSeconds"] < live["periodSeconds"]


PROBES = ("startupProbe", "livenessProbe", "readinessProbe")


def test_there_is_a_long_running_worker() -> None:
    assert [c[0] for c in long_running()] == ["StatefulSet/creator-rewards-scorer/worker"]


def test_statefulset_keeps_rocksdb_state_on_its_own_volume() -> None:
    sts = one("StatefulSet")
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    (worker,) = sts["spec"]["template"]["spec"]["containers"]
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    # Mounted on the image's working directory, where Faust keeps its table data.
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    workdir = re.findall(r"^WORKDIR (\S+)$", dockerfile, re.M)[-1]
    assert mounts[claim["metadata"]["name"]] == workdir
    assert one("ConfigMap")["data"]["STORE"] == "rocksdb://"
    assert sts["spec"]["serviceName"] == one("Service")["metadata"]["name"]


def test_configmap_holds_spec_settings_and_no_secret() -> None:
    data = one("ConfigMap")["data"]
    allowed = SPEC_VARIABLES | OPERATIONS_VARIABLES
    assert set(data) <= allowed, sorted(set(data) - allowed)
    assert "KAFKA_SASL_PASSWORD" not in data and "KAFKA_SASL_USERNAME" not in data
    assert data["METRICS_PORT"] == "9108"
    assert data["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"


@pytest.mark.parametrize(("cid", "container", "spec"), CONTAINERS, ids=IDS)
def test_credentials_come_from_the_secret(cid: str, container: dict[str, Any], spec: dict[str, Any]) -> None:
    assert container["envFrom"] == [{"configMapRef": {"name": one("ConfigMap")["metadata"]["name"]}}]
    env = {e["name"]: e for e in container["env"]}
    secret = EXAMPLE_SECRET["metadata"]["name"]
    for variable, key in (("KAFKA_SASL_USERNAME", "sasl-username"), ("KAFKA_SASL_PASSWORD", "sasl-password")):
        assert env[variable]["valueFrom"] == {"secretKeyRef": {"name": secret, "key": key}}, (cid, variable)
    # The CA file the ConfigMap names is mounted.
    cafile = one("ConfigMap")["data"]["KAFKA_SSL_CAFILE"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert cafile.rsplit("/", 1)[0] in mounts


def secret_key_refs() -> set[tuple[str, str]]:
    """(secret name, key) of every secretKeyRef in the workloads and secretTargetRef in TriggerAuthentications."""
    refs = set()
    for _, container, _ in CONTAINERS:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
    for auth in by_kind("TriggerAuthentication"):
        refs |= {(ref["name"], ref["key"]) for ref in auth["spec"]["secretTargetRef"]}
    return refs


def test_the_example_secret_has_every_key_the_manifests_read() -> None:
    assert EXAMPLE_SECRET["kind"] == "Secret"
    name = EXAMPLE_SECRET["metadata"]["name"]
    assert (
        EXAMPLE_SECRET["metadata"]["namespace"] == yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    )
    wanted = {key for secret, key in secret_key_refs() if secret == name}
    assert wanted == set(EXAMPLE_SECRET["stringData"]) == {"sasl-username", "sasl-password"}
    assert EXAMPLE_SECRET["stringData"]["sasl-password"] == "REPLACE-ME", "a placeholder, never a credential"
    # the other Secret read (the cluster CA) is the one the pods mount
    others = {secret for secret, _ in secret_key_refs()} - {name}
    mounted = {v["secret"]["secretName"] for _, _, spec in CONTAINERS for v in spec["volumes"] if "secret" in v}
    assert others <= mounted


def test_the_example_secret_is_never_applied() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "secret.example.yaml" not in kustomization["resources"]
    assert not kustomization.get("secretGenerator")


def test_podmonitor_scrapes_the_worker_metrics_port_under_the_alerts_job() -> None:
    monitor = one("PodMonitor")
    pod_labels = one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    (worker,) = pod_spec(one("StatefulSet"))["containers"]
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    assert ports[endpoint["port"]] == int(one("ConfigMap")["data"]["METRICS_PORT"])
    assert endpoint["path"] == "/metrics"
    # the alert rules select on the job name of prometheus.yml's scrape job
    job = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["scrape_configs"][0]["job_name"]
    assert {"action": "replace", "targetLabel": "job", "replacement": job} in endpoint["relabelings"]
    assert f'job="{job}"' in (PROMETHEUS_DIR / "alerts.yml").read_text()


def declared_partitions(topic: str) -> int:
    return int(tomllib.loads((REPO / "topics" / "topics.toml").read_text())["topics"][topic]["partitions"])


KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


def test_scaledobject_scales_the_worker_on_the_group_lag_up_to_the_partition_count() -> None:
    scaled = one("ScaledObject")
    sts = one("StatefulSet")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", sts["metadata"]["name"])
    assert "replicas" not in sts["spec"], "KEDA owns the replica count"
    # more workers than partitions idle (and never become ready): the bound is the partition count
    partitions = declared_partitions("video-views")
    assert declared_partitions("video-interactions") == partitions
    assert scaled["spec"]["maxReplicaCount"] == partitions
    assert 1 <= scaled["spec"]["minReplicaCount"] < partitions
    pdb = one("PodDisruptionBudget")["spec"]["maxUnavailable"]
    assert scaled["spec"]["minReplicaCount"] > pdb, "an eviction never takes the last worker"
    config = one("ConfigMap")["data"]
    (auth,) = by_kind("TriggerAuthentication")
    topics = set()
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["bootstrapServers"] == config["KAFKA_BOOTSTRAP"]
        assert meta["consumerGroup"] == config["APP_ID"]  # Faust's group id is the app id
        assert meta["offsetResetPolicy"] == "earliest"  # as the worker (consumer_auto_offset_reset)
        assert meta["allowIdleConsumers"] == "false"
        assert meta["sasl"] == KEDA_SASL[config["KAFKA_SASL_MECHANISM"]]
        assert (meta["tls"] == "enable") == config["KAFKA_SECURITY_PROTOCOL"].endswith("SSL")
        assert int(meta["lagThreshold"]) > int(meta["activationLagThreshold"]) > 0
        assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
        topics.add(meta["topic"])
    assert topics == {config["TOPIC_PREFIX"] + "video-views", config["TOPIC_PREFIX"] + "video-interactions"}
    assert {ref["parameter"] for ref in auth["spec"]["secretTargetRef"]} == {"username", "password", "ca"}


def test_shutdown_fits_in_the_grace_period() -> None:
    grace = pod_spec(one("StatefulSet"))["terminationGracePeriodSeconds"]
    assert int(one("ConfigMap")["data"]["SHUTDOWN_TIMEOUT_S"]) < grace


def test_service_and_pdb_select_the_worker_pods() -> None:
    pod_labels = one("StatefulSet")["spec"]["template"]["metadata"]["labels"]
    service = one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", 9108, "metrics")
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    job_labels = one("Job")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= job_labels.items(), "the topics Job is not a worker"


def test_topics_job_applies_the_packaged_declarations() -> None:
    job = one("Job")
    (container,) = pod_spec(job)["containers"]
    assert container["args"] == ["topics", "apply", "--file", "/opt/stream-app/topics/topics.toml"]
    assert pod_spec(job)["restartPolicy"] == "OnFailure"
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_kustomize_renders() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not on PATH: `kubectl kustomize deploy/k8s` not checked")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=True
    ).stdout
    rendered = [d for d in yaml.safe_load_all(out) if d]
    assert len(rendered) == len(DOCS)
    assert {d["metadata"].get("namespace") for d in rendered if d["kind"] != "Namespace"} == {"creator-rewards"}
