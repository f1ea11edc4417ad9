"""Worker health for probes: `/livez` (the event loop answered lately) and `/readyz` (the worker can do its work).

The event loop stamps a heartbeat and a readiness verdict about once a second (`beat`); the HTTP thread only reads
them, so a stuck loop shows as a stale stamp instead of a probe that hangs along with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream_app.domain import jsoncodec

# LIVENESS_TIMEOUT_S default: /livez fails once the loop has not stamped its heartbeat for this long. A batch of
# 2,000 events holds the loop well under a second (README, Throughput); 30 s leaves room for a slow disk or a
# garbage-collection pause without restarting a worker that is only slow.
DEFAULT_LIVENESS_TIMEOUT_S = 30.0
# How often the event loop stamps its heartbeat and readiness (streaming/lifecycle.py).
HEARTBEAT_INTERVAL_S = 1.0

Clock = Callable[[], float]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

STARTING = "starting: the event loop has not reported yet"
STOPPING = "stopping: shutting down after a stop signal"


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe's answer: 200 with `ok`, else 503, and a short JSON body saying why."""

    ok: bool
    status: str  # live | stalled | stopping | ready | not_ready
    reason: str
    detail: Mapping[str, object] = field(default_factory=dict)

    @property
    def http_status(self) -> int:
        return 200 if self.ok else 503

    def body(self) -> bytes:
        return jsoncodec.dumps({"status": self.status, "reason": self.reason, **self.detail}) + b"\n"


class WorkerHealth:
    """What the probes answer. The event loop writes (`beat`, `begin_stopping`); any thread reads.

    Readiness is the loop's last verdict, and also needs a live loop: a verdict from a stalled loop is stale.
    """

    def __init__(self, *, liveness_timeout_s: float = DEFAULT_LIVENESS_TIMEOUT_S, clock: Clock = time.monotonic):
        self.liveness_timeout_s = liveness_timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_beat: float | None = None
        self._not_ready: str | None = STARTING
        self._detail: Mapping[str, object] = {}
        self._stopping_since: float | None = None
        self._was_ready = False
        self.readiness_changes = 0

    # ---- written by the event loop ----

    def beat(self, not_ready: str | None, detail: Mapping[str, object] | None = None) -> bool:
        """The loop is alive now; it is ready unless `not_ready` says why not. True when readiness flipped."""
        with self._lock:
            self._last_beat = self._clock()
            self._not_ready = not_ready
            self._detail = dict(detail or {})
            return self._note_readiness(not_ready is None and self._stopping_since is None)

    def begin_stopping(self) -> bool:
        """A stop signal arrived: not ready from now on, and the shutdown clock starts. True the first time."""
        with self._lock:
            if self._stopping_since is not None:
                return False
            self._stopping_since = self._clock()
            self._note_readiness(False)
            return True

    def _note_readiness(self, ready: bool) -> bool:
        if ready == self._was_ready:
            return False
        self._was_ready = ready
        self.readiness_changes += 1
        return True

    # ---- read by the probes and the metrics ----

    def heartbeat_age_s(self) -> float | None:
        """Seconds since the loop last stamped its heartbeat (None before the first stamp)."""
        last = self._last_beat
        return None if last is None else max(0.0, self._clock() - last)

    def stopping_for_s(self) -> float:
        """Seconds since the stop signal, 0 while running."""
        since = self._stopping_since
        return 0.0 if since is None else max(0.0, self._clock() - since)

    def liveness(self) -> ProbeResult:
        """Live while the loop stamped its heartbeat within `liveness_timeout_s`.

        Stopping counts as live: the deployment's grace period bounds a shutdown, and a liveness kill in the
        middle of one would only lose the final commit.
        """
        age = self.heartbeat_age_s()
        detail = {"heartbeat_age_s": _rounded(age), "timeout_s": self.liveness_timeout_s}
        if self._stopping_since is not None:
            return ProbeResult(
                True, "stopping", STOPPING, {**detail, "stopping_for_s": _rounded(self.stopping_for_s())}
            )
        if age is None:
            # Before the first stamp (a few ms after start): the startup probe gives a worker its time.
            return ProbeResult(False, "stalled", STARTING, detail)
        if age > self.liveness_timeout_s:
            reason = (
                f"event loop stalled: no heartbeat for {age:.1f} s (LIVENESS_TIMEOUT_S={self.liveness_timeout_s:g})"
            )
            return ProbeResult(False, "stalled", reason, detail)
        return ProbeResult(True, "live", "event loop answering", detail)

    def readiness(self) -> ProbeResult:
        """Ready when the loop is live and its last verdict found nothing missing (see streaming/lifecycle.py)."""
        live = self.liveness()
        with self._lock:
            not_ready, detail = self._not_ready, dict(self._detail)
        detail["heartbeat_age_s"] = live.detail.get("heartbeat_age_s")
        if self._stopping_since is not None:
            return ProbeResult(False, "not_ready", STOPPING, detail)
        if not live.ok:
            return ProbeResult(False, "not_ready", live.reason, detail)
        if not_ready is not None:
            return ProbeResult(False, "not_ready", not_ready, detail)
        return ProbeResult(True, "ready", "partitions assigned, tables recovered, profile history caught up", detail)

    def ready(self) -> bool:
        return self.readiness().ok


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


_REASONS = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}


def probe_routes(health: WorkerHealth | None, fallback: WsgiApp) -> WsgiApp:
    """A WSGI app answering /livez and /readyz from `health` (404 without one) and everything else by `fallback`."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/livez", "/readyz"):
            return fallback(environ, start_response)
        if health is None:
            code, body = 404, b'{"status": "unknown", "reason": "no health checks on this server"}\n'
        else:
            result = health.liveness() if path == "/livez" else health.readiness()
            code, body = result.http_status, result.body()
        headers = [
            ("Content-Type", "application/json"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-store"),
        ]
        start_response(f"{code} {_REASONS[code]}", headers)
        return [b""] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    return app
