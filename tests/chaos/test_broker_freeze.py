"""Issue 12 part 3: the broker frozen (SIGSTOP) for 20 s mid-stream, then resumed (SIGCONT): every worker rides it
out without exiting, says so in its log, resumes, and ends with the oracle's money to the micro.

The seeds share one freeze of a broker of their own (the session broker keeps serving the other tests): each
seed's worker scores its own paced traffic on its own topics while the broker stops answering.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stream_app.edges.broker import EmbeddedBroker
from tests.chaos import scenario as sc
from tests.chaos.runs import READY, SEEDS, Cluster, in_background, run_seeds, wait_for_log

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(300)]

FREEZE_S = 20.0
PACE_EVENTS_PER_S = 250


@pytest.fixture(scope="module")
def own_broker() -> Iterator[EmbeddedBroker]:
    if os.environ.get("KAFKA_BOOTSTRAP", "").strip():
        pytest.skip("freezes a broker of its own (the embedded tansu); KAFKA_BOOTSTRAP names a shared one")
    with EmbeddedBroker() as broker:
        yield broker


@dataclass
class FreezeRun:
    log: str
    exit_code: int | None
    converged_after_thaw_s: float
    story: str


def freeze_run(
    bootstrap: str, log_dir: Path, seed: int, scoring: threading.Barrier, thawed: threading.Event
) -> FreezeRun:
    data = sc.chaos_input(seed)
    cluster = Cluster(bootstrap, log_dir, f"freeze{seed}")
    prefix = cluster.prefix
    publisher = sc.Publisher(bootstrap, prefix)
    publisher.send(data.profiles)
    reader = sc.output_reader(bootstrap, prefix)
    try:
        worker = cluster.start("w")
        wait_for_log(worker, READY, 60)
        sending = in_background(lambda: publisher.send(data.traffic, PACE_EVENTS_PER_S))
        scoring.wait(60)  # the broker freezes a moment later, mid-stream
        assert thawed.wait(120), "the broker was not resumed"
        cluster.note("broker resumed")
        thawed_at = time.monotonic()
        sending.join()
        publisher.send(data.closing)
        raw = sc.read_input(bootstrap, prefix, len(data.profiles) + len(data.traffic) + len(data.closing))
        expected = sc.oracle(raw, prefix, sc.chaos_policy(cluster.env))
        sc.wait_for_money(reader, prefix, expected, 120)
        converged = time.monotonic() - thawed_at
        reader.read_until(lambda r: set(sc.outcome_view(r, prefix)) >= set(expected.outcomes), 30, "every outcome")
        found = sc.outcome_view(reader, prefix)
        assert all(found[where] == {outcome} for where, outcome in expected.outcomes.items())
        assert worker.process is not None
        return FreezeRun(worker.log(), worker.process.poll(), converged, cluster.story())
    except Exception as exc:
        cluster.dump_stacks()
        raise AssertionError(f"{exc} ({cluster.story()})") from exc
    finally:
        reader.close()
        cluster.stop_all()


def log_times(log: str, text: str) -> list[float]:
    """Wall-clock times (epoch s) of the log lines that contain `text` (text format: `YYYY-mm-dd HH:MM:SS,mmm`)."""
    times = []
    for line in log.splitlines():
        if text in line:
            stamp = time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000
            times.append(stamp)
    return times


def test_a_frozen_broker_is_ridden_out(own_broker: EmbeddedBroker, tmp_path: Path) -> None:
    scoring = threading.Barrier(len(SEEDS) + 1)
    thawed = threading.Event()
    frozen: list[float] = []  # wall clock when the broker stopped and resumed

    def freeze() -> None:
        try:
            scoring.wait(120)
            time.sleep(random.uniform(0.5, 2.5))
            os.kill(own_broker.pid, signal.SIGSTOP)
            frozen.append(time.time())
            time.sleep(FREEZE_S)
        except threading.BrokenBarrierError:
            return
        finally:
            os.kill(own_broker.pid, signal.SIGCONT)
            frozen.append(time.time())
            thawed.set()

    control = in_background(freeze)
    runs = run_seeds(lambda seed: freeze_run(own_broker.bootstrap, tmp_path, seed, scoring, thawed))
    control.join()
    assert len(frozen) == 2, "the broker was never frozen"
    stopped, resumed = frozen
    for seed, outcome in runs.items():
        run: FreezeRun = outcome.get()
        assert run.exit_code is None, f"seed {seed}: the worker exited ({run.story})"
        # it said so while the broker was silent, and again once it answered
        silent = log_times(run.log, "has not answered for")
        assert any(stopped < t <= resumed + 0.5 for t in silent), f"seed {seed}: {silent} ({run.story})"
        answers = log_times(run.log, "answers again after")
        assert any(t >= resumed - 0.5 for t in answers), f"seed {seed}: {answers} ({run.story})"
        assert run.converged_after_thaw_s < 60, run.story
