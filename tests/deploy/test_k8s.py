"""deploy/k8s: hardened containers (requests, limits, probes, non-root, read-only root), wiring between objects."""

from __future__ import annotations

import re
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.deploy.promql import DEPLOY
from tests.deploy.test_compose import SPEC_VARIABLES

K8S = DEPLOY / "k8s"
MANIFEST_FILES = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
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
        ["Namespace", "ServiceAccount", "ConfigMap", "Job", "StatefulSet", "Service", "PodDisruptionBudget"]
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
def test_long_running_container_has_probes_on_metrics(
    cid: str, container: dict[str, Any], spec: dict[str, Any]
) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 9108
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        http = container[probe]["httpGet"]
        assert (http["path"], http["port"]) == ("/metrics", "metrics"), f"{cid} {probe}"


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
    assert set(data) <= SPEC_VARIABLES, sorted(set(data) - SPEC_VARIABLES)
    assert "KAFKA_SASL_PASSWORD" not in data
    assert data["METRICS_PORT"] == "9108"
    assert data["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"


@pytest.mark.parametrize(("cid", "container", "spec"), CONTAINERS, ids=IDS)
def test_password_comes_from_a_secret(cid: str, container: dict[str, Any], spec: dict[str, Any]) -> None:
    assert container["envFrom"] == [{"configMapRef": {"name": one("ConfigMap")["metadata"]["name"]}}]
    env = {e["name"]: e for e in container["env"]}
    assert set(env["KAFKA_SASL_PASSWORD"]["valueFrom"]) == {"secretKeyRef"}
    # The CA file the ConfigMap names is mounted.
    cafile = one("ConfigMap")["data"]["KAFKA_SSL_CAFILE"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert cafile.rsplit("/", 1)[0] in mounts


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
