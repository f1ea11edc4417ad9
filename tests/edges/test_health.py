"""WorkerHealth on a fake clock (liveness, readiness, stopping), and the probes served beside /metrics."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from stream_app.edges.health import STARTING, STOPPING, WorkerHealth
from stream_app.edges.metrics import RewardsMetrics, start_http_server


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def health(clock: FakeClock) -> WorkerHealth:
    return WorkerHealth(liveness_timeout_s=30, clock=clock)


def test_not_live_before_the_first_heartbeat(health: WorkerHealth) -> None:
    result = health.liveness()
    assert (result.ok, result.http_status, result.reason) == (False, 503, STARTING)
    assert health.heartbeat_age_s() is None


def test_live_while_heartbeats_are_fresh_and_stalled_after_the_timeout(health: WorkerHealth, clock: FakeClock) -> None:
    health.beat(None)
    clock.advance(30)
    assert health.liveness().ok  # exactly at the timeout: still live
    clock.advance(0.5)
    result = health.liveness()
    assert (result.ok, result.status) == (False, "stalled")
    assert "no heartbeat for 30.5 s" in result.reason and "LIVENESS_TIMEOUT_S=30" in result.reason
    health.beat(None)  # the loop answers again
    assert health.liveness().ok


@pytest.mark.parametrize(
    "reason",
    [
        "starting: the consumer has not joined the group yet",
        "recovering tables: 1234 changelog records to go",
        "no partitions assigned (more workers than partitions, or the group is forming)",
        "reading the creator-profiles history: not caught up yet",
    ],
)
def test_not_ready_says_why(health: WorkerHealth, reason: str) -> None:
    health.beat(reason, {"partitions": [0, 1]})
    result = health.readiness()
    assert (result.http_status, result.status, result.reason) == (503, "not_ready", reason)
    body = json.loads(result.body())
    assert body["reason"] == reason and body["partitions"] == [0, 1]


def test_ready_needs_a_live_loop(health: WorkerHealth, clock: FakeClock) -> None:
    health.beat(None, {"partitions": [3]})
    assert health.readiness().ok and health.ready()
    clock.advance(31)  # the last verdict said ready, but it is stale: the loop stopped answering
    result = health.readiness()
    assert not result.ok and result.reason.startswith("event loop stalled")


def test_stopping_is_not_ready_but_live_and_starts_the_shutdown_clock(health: WorkerHealth, clock: FakeClock) -> None:
    health.beat(None)
    assert health.stopping_for_s() == 0.0
    assert health.begin_stopping() is True
    assert health.begin_stopping() is False  # a second signal does not restart the clock
    clock.advance(40)  # longer than the liveness timeout: a shutdown is bounded by the grace period instead
    assert (health.readiness().ok, health.readiness().reason) == (False, STOPPING)
    assert (health.liveness().ok, health.liveness().status) == (True, "stopping")
    assert health.stopping_for_s() == 40.0
    health.beat(None)  # a heartbeat during the shutdown does not make it ready again
    assert not health.readiness().ok


def test_readiness_changes_count_flips_only(health: WorkerHealth) -> None:
    assert health.beat("starting") is False  # not ready from the start: no flip
    assert health.beat(None) is True
    assert health.beat(None) is False
    assert health.beat("rebalancing") is True
    assert health.beat(None) is True
    health.begin_stopping()
    assert health.readiness_changes == 4


@pytest.fixture
def served(health: WorkerHealth) -> Iterator[tuple[str, RewardsMetrics]]:
    metrics = RewardsMetrics(CollectorRegistry())
    metrics.watch_health(health)
    server = start_http_server(metrics, "127.0.0.1", 0, health)
    try:
        yield f"http://127.0.0.1:{server.port}", metrics
    finally:
        server.shutdown()


def get(url: str, method: str = "GET") -> tuple[int, str, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read().decode()


def test_probes_are_served_beside_metrics(
    served: tuple[str, RewardsMetrics], health: WorkerHealth, clock: FakeClock
) -> None:
    base, _ = served
    code, content_type, body = get(base + "/readyz")
    assert (code, content_type, json.loads(body)["reason"]) == (503, "application/json", STARTING)
    health.beat("recovering tables: 10 changelog records to go")
    assert get(base + "/livez")[0] == 200
    code, _, body = get(base + "/readyz")
    assert code == 503 and json.loads(body) == {
        "status": "not_ready",
        "reason": "recovering tables: 10 changelog records to go",
        "heartbeat_age_s": 0.0,
    }
    health.beat(None)
    assert get(base + "/readyz")[0] == 200
    assert get(base + "/readyz", method="HEAD") == (200, "application/json", "")
    clock.advance(31)
    code, _, body = get(base + "/livez")
    assert code == 503 and json.loads(body)["status"] == "stalled"
    assert get(base + "/readyz")[0] == 503
    code, content_type, body = get(base + "/metrics")
    assert code == 200 and content_type.startswith("text/plain") and "rewards_events_total" in body


def test_health_gauges_are_read_at_scrape_time(
    served: tuple[str, RewardsMetrics], health: WorkerHealth, clock: FakeClock
) -> None:
    _, metrics = served

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name)

    assert (sample("rewards_worker_ready"), sample("rewards_event_loop_heartbeat_age_seconds")) == (0.0, 0.0)
    health.beat(None)
    clock.advance(2.5)
    assert (sample("rewards_worker_ready"), sample("rewards_event_loop_heartbeat_age_seconds")) == (1.0, 2.5)
    health.begin_stopping()
    clock.advance(7)
    assert (sample("rewards_worker_ready"), sample("rewards_shutdown_seconds")) == (0.0, 7.0)
    metrics.count_readiness_change()
    assert sample("rewards_readiness_changes_total") == 1.0


def test_a_metrics_server_without_health_has_no_probes() -> None:
    metrics = RewardsMetrics(CollectorRegistry())
    server = start_http_server(metrics, "127.0.0.1", 0)
    try:
        assert get(f"http://127.0.0.1:{server.port}/readyz")[0] == 404
        assert get(f"http://127.0.0.1:{server.port}/metrics")[0] == 200
    finally:
        server.shutdown()
