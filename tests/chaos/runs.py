"""Running disturbed workers: several seeds at once (most of a chaos run is waiting for a group to settle, so seeds
share the wall clock), worker processes with their logs kept beside the test, and waits on what a worker logs.
"""

from __future__ import annotations

import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tests.chaos.scenario import CHAOS_ENV
from tests.integration.harness import WorkerProcess, free_port, run_cli, wait_for, worker_env

SEEDS = (1, 2, 3)
# Faust's line when the group gave this worker its partitions; the recovery that follows restores their tables.
ASSIGNED = "Setting newly assigned partitions"
READY = "Worker ready"

T = TypeVar("T")


@dataclass
class Outcome:
    """What one seed's run returned, or how it failed (with the logs to read)."""

    value: Any = None
    error: str | None = None

    def get(self) -> Any:
        if self.error is not None:
            pytest.fail(self.error, pytrace=False)
        return self.value


def run_seeds(run: Callable[[int], T], seeds: Iterable[int] = SEEDS) -> dict[int, Outcome]:
    """`run(seed)` for every seed at once, in threads; a failure is kept for that seed's tests to report."""
    seeds = list(seeds)

    def guarded(seed: int) -> Outcome:
        try:
            return Outcome(run(seed))
        except Exception:
            return Outcome(error=f"seed {seed}: {traceback.format_exc()}")

    with ThreadPoolExecutor(max_workers=len(seeds)) as pool:
        return dict(zip(seeds, pool.map(guarded, seeds), strict=True))


class Cluster:
    """The workers of one seed's run (one prefix, one group), started and stopped by the test.

    Like the deploy files' orchestrators (compose `restart: unless-stopped`, a Kubernetes StatefulSet), it restarts
    a worker that exits on its own: a worker stops itself (exit 70) when it cannot vouch for a batch, and a restart
    replays it. Each restart is in the story."""

    def __init__(self, bootstrap: str, log_dir: Path, name: str, **env: str) -> None:
        self.log_dir = log_dir
        prefix = f"c{uuid.uuid4().hex[:6]}-{name}-"
        self.env = worker_env(bootstrap, prefix, **CHAOS_ENV, **env)
        run_cli(self.env, "topics", "apply")
        self.workers: list[WorkerProcess] = []
        self.events: list[str] = []  # what the test did, for failure messages
        self.restarts = 0
        self._stopped: set[int] = set()  # ids of workers the test stopped on purpose
        self._closing = threading.Event()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()

    @property
    def prefix(self) -> str:
        return self.env["TOPIC_PREFIX"]

    def start(self, name: str) -> WorkerProcess:
        worker = WorkerProcess(
            dict(self.env, METRICS_PORT=str(free_port())), log_path=self.log_dir / f"{self.prefix}{name}.log"
        )
        worker.start()
        self.workers.append(worker)
        self.note(f"started {name}")
        return worker

    def kill(self, worker: WorkerProcess, why: str) -> None:
        self._stopped.add(id(worker))
        worker.stop(signal.SIGKILL)
        self.note(f"SIGKILL {worker.log_path.stem} {why}")

    def terminate(self, worker: WorkerProcess, timeout: float) -> int | None:
        self._stopped.add(id(worker))
        self.note(f"SIGTERM {worker.log_path.stem}")
        return worker.stop(signal.SIGTERM, timeout=timeout)

    def note(self, what: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {what}")

    def _supervise(self) -> None:
        while not self._closing.wait(0.5):
            for worker in list(self.workers):
                code = None if worker.process is None else worker.process.poll()
                if code is None or id(worker) in self._stopped:
                    continue
                self._stopped.add(id(worker))
                self.restarts += 1
                self.note(f"{worker.log_path.stem} exited {code} on its own: restarted")
                self.start(f"{worker.log_path.stem.removeprefix(self.prefix)}+")

    def dump_stacks(self) -> None:
        """Ask every live worker for the stacks of its threads and tasks (mode's SIGUSR1), into its log."""
        live = [w for w in self.workers if w.process is not None and w.process.poll() is None]
        for worker in live:
            assert worker.process is not None
            worker.process.send_signal(signal.SIGUSR1)
        if live:
            time.sleep(2.0)

    def stop_all(self) -> None:
        self._closing.set()
        self._supervisor.join(5)
        for worker in self.workers:
            worker.stop()

    def story(self) -> str:
        logs = ", ".join(str(w.log_path) for w in self.workers)
        return "; ".join(self.events) + f" (logs: {logs})"


def log_count(worker: WorkerProcess, line: str) -> int:
    return worker.log().count(line)


def wait_for_log(worker: WorkerProcess, line: str, timeout: float, *, more_than: int = 0) -> None:
    """Until `line` appears in the worker's log more than `more_than` times (it must stay alive meanwhile)."""

    def seen() -> bool:
        assert worker.process is not None and worker.process.poll() is None, f"{worker.log_path} exited"
        return log_count(worker, line) > more_than

    wait_for(seen, timeout, f"{line!r} in {worker.log_path}", interval=0.05)


def in_background(work: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread
