"""Prometheus metrics of SPEC §8: the metric names and closed label sets, one RewardsMetrics object the worker calls
(its families declared once, as a table), and the HTTP server that serves /metrics and the worker's probes (/livez,
/readyz; edges/health.py).

Label values are closed sets (topics, outcomes, reason codes, partitions), never video/creator/viewer ids.
"""

from __future__ import annotations

import socket
import threading
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Final
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import prometheus_client
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer

from stream_app.domain.errors import StreamAppError
from stream_app.edges.health import WorkerHealth, probe_routes

# Exposed metric family names (what Prometheus stores and what deploy/ queries), one per row of SPEC §8.
METRIC_NAMES: Final[tuple[str, ...]] = (
    # counter {topic, outcome}: every consumed input event, exactly once, by its single outcome (SPEC §4)
    "rewards_events_total",
    # gauge: interactions held until their window settles (their outcome is counted then)
    "rewards_pending_interactions",
    # counter {reason}: events with outcome suspicious, by the authenticity rule that rejected them (SPEC §6)
    "rewards_suspicious_events_total",
    # counter: micro-USD fixed by window settlements
    "rewards_settled_micros_total",
    # counter: micro-USD taken back from already-settled windows
    "rewards_clawback_micros_total",
    # counter {reason}: accepted views later recognised by a rule and removed (clawback audit records)
    "rewards_clawed_back_events_total",
    # gauge: micro-USD of open windows on this worker's partitions (estimated, not yet settled)
    "rewards_provisional_micros",
    # counter: windows settled
    "rewards_windows_settled_total",
    # counter: Accrual records sent to reward-accruals
    "rewards_accruals_emitted_total",
    # histogram {topic}: wall clock at processing minus event ts, in seconds
    "rewards_event_lag_seconds",
    # gauge {topic, partition}: high watermark minus consumer position
    "rewards_consumer_lag_messages",
    # gauge: creators whose profile in effect now is eligible (SPEC §5)
    "rewards_eligible_creators",
)

# Worker-health metrics beyond SPEC §8 (README, Metrics): what the probes see, for alerts and the dashboard.
HEALTH_METRIC_NAMES: Final[tuple[str, ...]] = (
    # gauge: 1 while /readyz answers 200 (partitions assigned, tables recovered, profile history caught up)
    "rewards_worker_ready",
    # counter: times readiness flipped (either way); a flapping worker raises it fast
    "rewards_readiness_changes_total",
    # gauge: seconds since the event loop last stamped its heartbeat (/livez fails above LIVENESS_TIMEOUT_S)
    "rewards_event_loop_heartbeat_age_seconds",
    # gauge: seconds since this worker got its stop signal, 0 while running (a slow shutdown shows here)
    "rewards_shutdown_seconds",
)

# Closed label value sets. Topics are named without TOPIC_PREFIX (SPEC §4), so dashboards work for any prefix.
INPUT_TOPICS: Final[tuple[str, ...]] = ("video-views", "video-interactions", "creator-profiles")
OUTCOMES: Final[tuple[str, ...]] = ("accepted", "suspicious", "late", "invalid")
SUSPICIOUS_REASONS: Final[tuple[str, ...]] = (
    "duplicate_event",
    "impossible_watch",
    "viewer_repeat",
    "device_burst",
    "device_overlap",
    "account_farm",
    "velocity_burst",
    "engagement_without_view",
    "duplicate_interaction",
)
# Label names that may appear on rewards_* series; a test checks the exposition against this.
LABEL_NAMES: Final[frozenset[str]] = frozenset({"topic", "outcome", "reason", "partition"})

# Event lag spans a healthy worker (tens of milliseconds) to a replay or a stalled upstream (an hour and more,
# which lands in +Inf). Roughly 1-2.5-5 steps keep histogram_quantile error under ~2x anywhere in the range.
EVENT_LAG_BUCKETS: Final[tuple[float, ...]] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
    1800.0,
    3600.0,
)


class UnknownLabelError(StreamAppError):
    """A metric was asked for a label value outside its closed set (a programming error, not bad input)."""


class NegativeAmountError(StreamAppError):
    """A counter was asked to go down; counters only grow, corrections are separate counters (clawback)."""


class MetricsServerError(StreamAppError):
    """The metrics endpoint could not bind its address (port in use, bad host)."""


def new_registry() -> CollectorRegistry:
    """A fresh registry with the client library's process, platform and GC collectors (SPEC §8)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


@dataclass(frozen=True)
class _Family:
    """One metric family of RewardsMetrics: the attribute that holds it, its type, the name it is registered under
    (prometheus_client appends _total to a counter's: "rewards_events" is exposed rewards_events_total), its help
    text and label names."""

    attribute: str
    kind: type[Counter] | type[Gauge] | type[Histogram]
    name: str
    documentation: str
    labels: tuple[str, ...] = ()

    def create(self, registry: CollectorRegistry) -> Counter | Gauge | Histogram:
        if self.kind is Histogram:
            return Histogram(self.name, self.documentation, self.labels, buckets=EVENT_LAG_BUCKETS, registry=registry)
        return self.kind(self.name, self.documentation, self.labels, registry=registry)


# Every family, in the order it is registered (and exposed): SPEC §8's, then the worker-health ones.
_FAMILIES: Final[tuple[_Family, ...]] = (
    _Family(
        "_events",
        Counter,
        "rewards_events",
        "Input events consumed, each counted once by its outcome (accepted, suspicious, late, invalid).",
        ("topic", "outcome"),
    ),
    _Family(
        "_pending_interactions",
        Gauge,
        "rewards_pending_interactions",
        "Interactions waiting for their window to settle; their outcome is counted when it does.",
    ),
    _Family(
        "_suspicious",
        Counter,
        "rewards_suspicious_events",
        "Events with outcome suspicious, by the authenticity rule (reason code) that rejected them.",
        ("reason",),
    ),
    _Family(
        "_settled_micros",
        Counter,
        "rewards_settled_micros",
        "Money fixed by window settlements, in micro-USD (divide by 1e6 for USD).",
    ),
    _Family(
        "_clawback_micros",
        Counter,
        "rewards_clawback_micros",
        "Money taken back from already-settled windows, in micro-USD (divide by 1e6 for USD).",
    ),
    _Family(
        "_clawed_back",
        Counter,
        "rewards_clawed_back_events",
        "Accepted views later rejected by an authenticity rule and removed from their window, by reason.",
        ("reason",),
    ),
    _Family(
        "_provisional_micros",
        Gauge,
        "rewards_provisional_micros",
        "Provisional money (base micros) of open windows on this worker's partitions, in micro-USD.",
    ),
    _Family("_windows_settled", Counter, "rewards_windows_settled", "Per-video windows settled."),
    _Family(
        "_accruals_emitted", Counter, "rewards_accruals_emitted", "Accrual records sent to the reward-accruals topic."
    ),
    _Family(
        "_event_lag",
        Histogram,
        "rewards_event_lag_seconds",
        "Wall clock at processing minus the event's ts, in seconds (negative lag is counted as 0).",
        ("topic",),
    ),
    _Family(
        "_consumer_lag",
        Gauge,
        "rewards_consumer_lag_messages",
        "Messages between the consumer position and the partition's high watermark.",
        ("topic", "partition"),
    ),
    _Family(
        "_eligible_creators",
        Gauge,
        "rewards_eligible_creators",
        "Creators whose profile in effect now makes them eligible to earn.",
    ),
    _Family(
        "_worker_ready",
        Gauge,
        "rewards_worker_ready",
        "1 while the worker is ready (/readyz answers 200): partitions assigned, tables recovered, profiles read.",
    ),
    _Family(
        "_readiness_changes", Counter, "rewards_readiness_changes", "Times the worker's readiness flipped, either way."
    ),
    _Family(
        "_heartbeat_age",
        Gauge,
        "rewards_event_loop_heartbeat_age_seconds",
        "Seconds since the event loop last stamped its heartbeat; /livez fails above LIVENESS_TIMEOUT_S.",
    ),
    _Family(
        "_shutdown_seconds",
        Gauge,
        "rewards_shutdown_seconds",
        "Seconds since this worker got its stop signal (SIGTERM/SIGINT); 0 while it runs.",
    ),
)


class RewardsMetrics:
    """Every SPEC §8 metric, with methods named for what the worker did; cheap enough per event."""

    # the families, built from _FAMILIES
    _events: Counter
    _pending_interactions: Gauge
    _suspicious: Counter
    _settled_micros: Counter
    _clawback_micros: Counter
    _clawed_back: Counter
    _provisional_micros: Gauge
    _windows_settled: Counter
    _accruals_emitted: Counter
    _event_lag: Histogram
    _consumer_lag: Gauge
    _eligible_creators: Gauge
    _worker_ready: Gauge
    _readiness_changes: Counter
    _heartbeat_age: Gauge
    _shutdown_seconds: Gauge

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # The *_created series are a second family per counter/histogram that no query here uses; they double
        # the series count. The switch is process-wide and read at scrape time, which suits a one-app process.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else new_registry()
        for family in _FAMILIES:
            setattr(self, family.attribute, family.create(self.registry))
        # Labelled children are created once here, so every known series is exposed at 0 from the first
        # scrape (rate() and absent() need the series to exist) and the hot path is a dict lookup.
        self._events_by: dict[tuple[str, str], Counter] = {
            (t, o): self._events.labels(topic=t, outcome=o) for t in INPUT_TOPICS for o in OUTCOMES
        }
        self._suspicious_by = {reason: self._suspicious.labels(reason=reason) for reason in SUSPICIOUS_REASONS}
        self._clawed_back_by = {reason: self._clawed_back.labels(reason=reason) for reason in SUSPICIOUS_REASONS}
        self._event_lag_by = {t: self._event_lag.labels(topic=t) for t in INPUT_TOPICS}
        # bucket bounds in whole milliseconds (lags are integer ms), for observe_event_lags
        self._lag_bounds_ms = [round(b * 1000) for b in EVENT_LAG_BUCKETS]
        # Partitions are only known after assignment; children are cached as they appear.
        self._consumer_lag_by: dict[tuple[str, int], Gauge] = {}
        self._consumer_lag_lock = threading.Lock()

    # -- input outcomes (SPEC §4, §6) ---------------------------------------------------------------------

    def count_outcome(self, topic: str, outcome: str, n: int = 1) -> None:
        """Count n input events of `topic` (no TOPIC_PREFIX) with `outcome`; each event exactly once."""
        try:
            child = self._events_by[(topic, outcome)]
        except KeyError:
            raise UnknownLabelError(
                f"rewards_events_total: topic {topic!r} / outcome {outcome!r} not in {INPUT_TOPICS} x {OUTCOMES}"
            ) from None
        child.inc(_non_negative("rewards_events_total", n))

    def count_suspicious(self, reason: str, n: int = 1) -> None:
        """Count n events rejected by rule `reason`; the caller also counts their outcome (count_outcome)."""
        try:
            child = self._suspicious_by[reason]
        except KeyError:
            raise UnknownLabelError(
                f"rewards_suspicious_events_total: reason {reason!r} not in {SUSPICIOUS_REASONS}"
            ) from None
        child.inc(_non_negative("rewards_suspicious_events_total", n))

    def count_clawed_back(self, reason: str, n: int = 1) -> None:
        """Count n accepted views that rule `reason` recognised later (they keep outcome accepted)."""
        try:
            child = self._clawed_back_by[reason]
        except KeyError:
            raise UnknownLabelError(
                f"rewards_clawed_back_events_total: reason {reason!r} not in {SUSPICIOUS_REASONS}"
            ) from None
        child.inc(_non_negative("rewards_clawed_back_events_total", n))

    def set_pending_interactions(self, count: int) -> None:
        """Interactions held now, waiting for their window to settle."""
        self._pending_interactions.set(count)

    def observe_event_lag(self, topic: str, seconds: float) -> None:
        """Record processing lag of one event of `topic`.

        Negative lag (event ts ahead of our clock, within MAX_CLOCK_SKEW_S) is clamped to 0: a negative
        observation would make _sum go down, which Prometheus' rate() reads as a counter reset.
        """
        try:
            child = self._event_lag_by[topic]
        except KeyError:
            raise UnknownLabelError(f"rewards_event_lag_seconds: topic {topic!r} not in {INPUT_TOPICS}") from None
        child.observe(seconds if seconds > 0.0 else 0.0)

    def observe_event_lags(self, topic: str, now_ms: int, event_ts: list[int]) -> None:
        """observe_event_lag for each event of a batch (ts in epoch ms), in one update of the histogram: the
        per-event cost is a bisect, not a locked update per bucket (the batch path handles ~100k events/s)."""
        if not event_ts:
            return
        try:
            child = self._event_lag_by[topic]
        except KeyError:
            raise UnknownLabelError(f"rewards_event_lag_seconds: topic {topic!r} not in {INPUT_TOPICS}") from None
        bounds_ms = self._lag_bounds_ms
        counts = [0] * (len(bounds_ms) + 1)
        total_ms = 0
        for ts in event_ts:
            lag = now_ms - ts
            if lag < 0:
                lag = 0
            total_ms += lag
            counts[bisect_left(bounds_ms, lag)] += 1
        histogram_add(child, counts, total_ms / 1000)

    # -- money and settlement (SPEC §5, §7) ---------------------------------------------------------------

    def add_settled(self, micros: int) -> None:
        """Add the settled_micros of one settlement."""
        self._settled_micros.inc(_non_negative("rewards_settled_micros_total", micros))

    def add_clawback(self, micros: int) -> None:
        """Add the clawback_micros of one clawback (always >= 0)."""
        self._clawback_micros.inc(_non_negative("rewards_clawback_micros_total", micros))

    def set_provisional_micros(self, micros: int) -> None:
        """Base micros of every open window this worker holds now."""
        self._provisional_micros.set(micros)

    def count_windows_settled(self, n: int = 1) -> None:
        """Count n windows that just settled."""
        self._windows_settled.inc(_non_negative("rewards_windows_settled_total", n))

    def count_accruals_emitted(self, n: int = 1) -> None:
        """Count n Accrual records sent."""
        self._accruals_emitted.inc(_non_negative("rewards_accruals_emitted_total", n))

    def set_eligible_creators(self, count: int) -> None:
        """Creators eligible now, by the profile in effect."""
        self._eligible_creators.set(count)

    # -- worker health (edges/health.py) ------------------------------------------------------------------

    def watch_health(self, health: WorkerHealth) -> None:
        """Read the health gauges from `health` at scrape time, so a stalled event loop still shows."""
        self._worker_ready.set_function(lambda: 1.0 if health.ready() else 0.0)
        self._heartbeat_age.set_function(lambda: health.heartbeat_age_s() or 0.0)
        self._shutdown_seconds.set_function(health.stopping_for_s)

    def count_readiness_change(self) -> None:
        """Readiness flipped (counted by the event loop when its verdict changes)."""
        self._readiness_changes.inc()

    # -- consumer position --------------------------------------------------------------------------------

    def set_consumer_lag(self, topic: str, partition: int, lag: int) -> None:
        """Lag of one assigned topic-partition (`topic` without TOPIC_PREFIX), clamped at 0.

        High watermark and position are read at different moments, so their difference can briefly be
        negative; a negative lag would only confuse alerts.
        """
        key = (topic, partition)
        child = self._consumer_lag_by.get(key)
        if child is None:
            if partition < 0:
                raise UnknownLabelError(f"rewards_consumer_lag_messages: partition {partition} < 0")
            with self._consumer_lag_lock:
                child = self._consumer_lag_by.setdefault(
                    key, self._consumer_lag.labels(topic=topic, partition=str(partition))
                )
        child.set(lag if lag > 0 else 0)

    def forget_consumer_lag(self, topic: str, partition: int) -> None:
        """Drop the series of a revoked partition, so a worker does not report lag it no longer owns."""
        with self._consumer_lag_lock:
            if self._consumer_lag_by.pop((topic, partition), None) is not None:
                self._consumer_lag.remove(topic, str(partition))


def histogram_add(child: Histogram, counts: list[int], total: float) -> None:
    """Add many observations to a histogram child at once: counts[i] observations in bucket i (the last one is
    +Inf), summing to `total`. prometheus_client has no bulk observe, so this updates the child's values as its
    observe() does (non-cumulative bucket values, then the sum); tests/edges/test_metrics.py holds it to the same
    exposition as one observe() per value."""
    buckets = child._buckets  # no public bulk update
    for i, n in enumerate(counts):
        if n:
            buckets[i].inc(n)
    child._sum.inc(total)


def _non_negative(metric: str, amount: int) -> int:
    if amount < 0:
        raise NegativeAmountError(f"{metric}: cannot add {amount}; counters only grow")
    return amount


@dataclass
class MetricsServer:
    """A running /metrics endpoint; `port` is the bound port (useful when started on port 0)."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def shutdown(self) -> None:
        """Stop serving and release the port (tests; the worker just exits)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _QuietHandler(WSGIRequestHandler):
    """No access log line per scrape or probe."""

    def log_message(self, format: str, *args: Any) -> None:
        return


def start_http_server(
    metrics: RewardsMetrics, host: str, port: int, health: WorkerHealth | None = None
) -> MetricsServer:
    """Serve the registry at http://host:port/metrics (METRICS_HOST/METRICS_PORT, default 0.0.0.0:9108), and
    /livez and /readyz from `health`, from a thread of its own (a thread per request)."""

    class Server(ThreadingWSGIServer):
        pass

    app = probe_routes(health, make_wsgi_app(metrics.registry))
    try:
        # The address family follows the host (an IPv6 METRICS_HOST works), as prometheus_client does.
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        Server.address_family = family
        server = make_server(str(sockaddr[0]), port, app, Server, handler_class=_QuietHandler)
    except OSError as exc:
        raise MetricsServerError(f"cannot serve metrics on {host}:{port} (METRICS_HOST/METRICS_PORT): {exc}") from exc
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    bound_port = int(server.server_address[1])
    return MetricsServer(host=host, port=bound_port, _server=server, _thread=thread)
