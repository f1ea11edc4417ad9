"""A worker's life for its operators: probes that mean something, and a graceful shutdown that is timed and bounded.

The probes' inputs are stamped by a Faust sensor, because sensors start first and stop last: `/livez` and `/readyz`
answer during table recovery (Faust starts app tasks only after it) and during the shutdown.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import faust
from faust.exceptions import ConsumerNotStarted
from mode import Service

from stream_app.edges.health import HEARTBEAT_INTERVAL_S, WorkerHealth
from stream_app.edges.metrics import RewardsMetrics, start_http_server
from stream_app.edges.settings import Settings
from stream_app.streaming.faust_compat import SignalAwareWorker, table_recovery

log = logging.getLogger(__name__)

# Exit status when a shutdown outlives SHUTDOWN_TIMEOUT_S: the worker leaves without its final commit (safe,
# SPEC §7: a restart skips what the state already holds) rather than being SIGKILLed with no word in its log.
EXIT_SHUTDOWN_TIMEOUT = 1
# Test-only switch (README, Configuration): when the file this variable names exists, the heartbeat blocks the
# event loop for the seconds written in it and deletes it. It is how the tests stall a real worker's loop.
TEST_BLOCK_LOOP_FILE = "TEST_BLOCK_LOOP_FILE"


class WorkerLifecycle:
    """Health of one worker process: the probes' state, the readiness verdict, the shutdown clock."""

    def __init__(
        self,
        app: faust.App,
        *,
        settings: Settings,
        metrics: RewardsMetrics,
        profiles_ready: Any,
        views_topic: str,
    ) -> None:
        self.app = app
        self.settings = settings
        self.metrics = metrics
        self.profiles_ready = profiles_ready  # an asyncio.Event, set once the profile history caught up
        self.views_topic = views_topic
        self.metrics_server: Any = None  # started by the sensor, first thing of the worker (probes included)
        self.health = WorkerHealth(liveness_timeout_s=settings.liveness_timeout_s)
        metrics.watch_health(self.health)
        self.stop_signal: str | None = None
        self._stop_started: float | None = None
        self._watchdog: threading.Timer | None = None
        self._logged_kind: str | None = "none yet"
        self.sensor = HealthSensor(self)
        app.sensors.add(self.sensor)

    # ---- readiness ----

    def not_ready_reason(self) -> tuple[str | None, dict[str, object]]:
        """Why this worker cannot do its work yet (None when it can), and what the probe body shows."""
        app = self.app
        views = self.views_topic
        try:
            assignment = app.consumer.assignment()
        except ConsumerNotStarted:
            return "starting: the consumer has not joined the group yet", {}
        detail: dict[str, object] = {
            "partitions": sorted(tp.partition for tp in assignment if tp.topic == views),
        }
        recovery = table_recovery(app)
        # Faust recovers tables inside a rebalance: recovery is the more telling reason, so it is asked first.
        if getattr(app, "in_recovery", False):
            remaining = recovery.active_remaining_total()
            detail["changelog_records_to_recover"] = remaining
            return f"recovering tables: {remaining} changelog records to go", detail
        if getattr(app, "rebalancing", False):
            return "rebalancing: partitions are being reassigned", detail
        if not recovery.completed.is_set():
            return "waiting for the first partition assignment", detail
        if not assignment:
            return "no partitions assigned (more workers than partitions, or the group is forming)", detail
        if not self.profiles_ready.is_set():
            return "reading the creator-profiles history: not caught up yet", detail
        return None, detail

    def beat(self) -> None:
        """One heartbeat of the event loop: stamp liveness and the readiness verdict; log a change."""
        if self.stop_signal is None and self.app.should_stop:
            self.stop_requested("stop")  # `faust -A stream_app.app worker`: its Worker does not tell us first
        reason, detail = self.not_ready_reason()
        if self.health.beat(reason, detail):
            self.metrics.count_readiness_change()
        # One line per kind of reason ("recovering tables: 123 ... to go" counts down every second).
        kind = None if reason is None else reason.split(":", 1)[0]
        if kind != self._logged_kind:
            self._logged_kind = kind
            if reason is None:
                log.info("ready: partitions %s", detail.get("partitions"))
            else:
                log.info("not ready: %s", reason)

    # ---- shutdown ----

    def stop_requested(self, what: str) -> None:
        """A stop signal arrived: fail readiness, start the shutdown clock and its watchdog."""
        if not self.health.begin_stopping():
            return
        self.metrics.count_readiness_change()
        self.stop_signal = what
        self._stop_started = time.monotonic()
        timeout = self.settings.shutdown_timeout_s
        log.info(
            "%s received: stopping (fetching stops, the batch in hand finishes, outputs flush, offsets "
            "commit, the worker leaves its group; SHUTDOWN_TIMEOUT_S=%d)",
            what,
            timeout,
        )
        self._watchdog = threading.Timer(timeout, self._shutdown_overdue, args=(timeout,))
        self._watchdog.daemon = True
        self._watchdog.start()

    def _shutdown_overdue(self, timeout: float) -> None:
        log.critical(
            "shutdown did not finish within SHUTDOWN_TIMEOUT_S=%g s (broker unreachable?): exiting without the final "
            "commit; the next start skips what the state already holds",
            timeout,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EXIT_SHUTDOWN_TIMEOUT)

    def stopped(self, exit_code: int) -> None:
        """The worker is about to exit: log how long the shutdown took (the figure operators tune the grace to)."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._stop_started is not None:
            log.info(
                "worker stopped in %.2f s after %s (exit %d)",
                time.monotonic() - self._stop_started,
                self.stop_signal,
                exit_code,
            )

    # ---- the test-only stall ----

    def _maybe_block_loop(self) -> None:
        path = self.settings.env.get(TEST_BLOCK_LOOP_FILE)
        if not path or not os.path.exists(path):
            return
        seconds = float(Path(path).read_text().strip() or "0")
        os.remove(path)
        log.warning("%s: blocking the event loop for %g s (test-only switch)", TEST_BLOCK_LOOP_FILE, seconds)
        time.sleep(seconds)  # deliberately blocking: this *is* the stalled loop the liveness probe must see


class HealthSensor(faust.Sensor):
    """Starts the metrics and probe server and stamps the heartbeat; a sensor so it starts first and stops last."""

    def __init__(self, lifecycle: WorkerLifecycle, **kwargs: Any) -> None:
        self.lifecycle = lifecycle
        super().__init__(**kwargs)

    async def on_start(self) -> None:
        life = self.lifecycle
        settings = life.settings
        if life.metrics_server is None and settings.metrics_port:
            life.metrics_server = start_http_server(
                life.metrics, settings.metrics_host, settings.metrics_port, life.health
            )
        life.beat()

    @Service.task
    async def _heartbeat(self) -> None:
        while not self.should_stop:
            self.lifecycle._maybe_block_loop()
            self.lifecycle.beat()
            await self.sleep(HEARTBEAT_INTERVAL_S)


class ScorerWorker(SignalAwareWorker):
    """faust.Worker that starts the shutdown clock the moment SIGTERM or SIGINT arrives."""

    def __init__(self, app: faust.App, lifecycle: WorkerLifecycle, **kwargs: Any) -> None:
        self.lifecycle = lifecycle
        self.on_shutdown_signal = lifecycle.stop_requested
        super().__init__(app, **kwargs)
