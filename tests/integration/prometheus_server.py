"""A real Prometheus server for tests: Debian's `/usr/bin/prometheus` on a free loopback port, scraping given
targets every second and loading given rule files, queried through its HTTP API (/api/v1/query).

Started and stopped by its own PID; its config and TSDB live in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.harness import free_port

SKIP_REASON = "Debian package prometheus not installed: run `make tools` as root"


def prometheus_or_skip() -> str:
    """Path of the prometheus binary, or skip the test with the way to install it."""
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip(SKIP_REASON)
    return path


def promtool_or_skip() -> str:
    """Path of promtool (same Debian package), or skip the test."""
    path = shutil.which("promtool")
    if path is None:
        pytest.skip(SKIP_REASON)
    return path


def scrape_config(job: str, targets: list[str], rule_files: list[Path]) -> dict[str, Any]:
    """prometheus.yml for a test: one job scraping `targets` every second, rules evaluated every second."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": targets}]},
        ],
    }


class PrometheusError(AssertionError):
    """Prometheus did not start, or answered a query with an error."""


@dataclass
class PrometheusServer:
    job: str
    targets: list[str]
    rule_files: list[Path] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="prometheus-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, ready_timeout: float = 30) -> PrometheusServer:
        binary = prometheus_or_skip()
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(self.job, self.targets, self.rule_files)))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=info",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise PrometheusError(f"prometheus not ready after {ready_timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM by PID, SIGKILL if it does not exit in time; then remove its directory."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- HTTP API ----

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            raise PrometheusError(f"/api/v1/{path} {params}: HTTP {exc.code}: {exc.read().decode()}") from exc
        if body.get("status") != "success":
            raise PrometheusError(f"/api/v1/{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query at the present: the vector's samples, each {"metric": {...}, "value": [ts, "v"]}."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr}: expected a vector, got {data['resultType']}")
        return list(data["result"])

    def values(self, expr: str, *labels: str) -> dict[Any, float]:
        """{label value (or tuple of them, or None without labels): sample value} of an instant query."""
        out: dict[Any, float] = {}
        for sample in self.query(expr):
            metric = sample["metric"]
            key: Any = tuple(metric.get(label, "") for label in labels)
            if len(labels) == 1:
                key = key[0]
            elif not labels:
                key = None
            if key in out:
                raise PrometheusError(f"{expr}: two series for {key!r}; aggregate by {labels}")
            out[key] = float(sample["value"][1])
        return out

    def scalar(self, expr: str) -> float | None:
        """The value of a one-sample query, None when it has no sample (yet)."""
        found = self.values(expr)
        return found.get(None)

    def last_scrape_ms(self) -> float | None:
        """Timestamp of the newest sample of `up` for the job, in ms (advances once per scrape)."""
        samples = self.query(f'timestamp(up{{job="{self.job}"}})')
        return float(samples[0]["value"][1]) * 1000 if samples else None

    def wait_for_scrapes(self, count: int, timeout: float = 15) -> None:
        """Return once `count` more scrapes of the job are stored (so what we query is at least that fresh)."""
        start = self.last_scrape_ms()
        deadline = time.monotonic() + timeout
        seen = 0
        last = start
        while time.monotonic() < deadline:
            now = self.last_scrape_ms()
            if now is not None and (last is None or now > last):
                seen += 1
                last = now
                if seen >= count:
                    return
            time.sleep(0.2)
        raise PrometheusError(f"fewer than {count} scrapes of job {self.job} in {timeout}s")
