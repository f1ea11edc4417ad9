"""Issue 12 part 3 (kept in the chaos suite): hostile input (random bytes, deep nesting, huge numbers, NaN, oversize
fields and records, 1,001-element envelopes, null values, mixed envelopes) between ordinary traffic. Every event
gets exactly one outcome, in the metrics and on the audit and dead-letter topics, and the worker never stops.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stream_app.domain.events import OutputTopic
from tests.chaos import scenario as sc
from tests.chaos.runs import READY, SEEDS, Cluster, Outcome, run_seeds, wait_for_log
from tests.integration.harness import scrape, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(240)]


@dataclass
class HostileRun:
    expected: sc.Expected
    outcomes: dict[sc.Position4, list[tuple[str, str]]]  # every record written per identity, duplicates kept
    dead_letters: list[dict[str, Any]]
    metrics: dict[str, float]
    alive: bool
    log: str
    story: str


def counted(metrics: dict[str, float]) -> dict[tuple[str, str], float]:
    prefix = "rewards_events_total{"
    found = {}
    for name, value in metrics.items():
        if name.startswith(prefix) and value:
            labels = dict(part.split("=") for part in name[len(prefix) : -1].split(","))
            found[(labels["topic"].strip('"'), labels["outcome"].strip('"'))] = value
    return found


def hostile_run(bootstrap: str, log_dir: Path, seed: int) -> HostileRun:
    rng = random.Random(seed)
    data = sc.chaos_input(seed, events=600)
    newest = max(r.max_ts for r in data.traffic if r.max_ts is not None)
    records = data.traffic + sc.hostile_records(rng, valid_ts=newest)  # valid elements of mixed envelopes last
    cluster = Cluster(bootstrap, log_dir, f"hostile{seed}")
    prefix = cluster.prefix
    publisher = sc.Publisher(bootstrap, prefix)
    try:
        publisher.send(data.profiles + records)
        raw = sc.read_input(bootstrap, prefix, len(data.profiles) + len(records))
        expected = sc.oracle(raw, prefix, sc.chaos_policy(cluster.env))
        worker = cluster.start("w")
        wait_for_log(worker, READY, 60)

        def identity_holds() -> dict[str, float] | None:
            metrics = scrape(worker.metrics_url)
            total = sum(counted(metrics).values()) + metrics.get("rewards_pending_interactions", 0)
            return metrics if total == expected.events else None

        metrics = wait_for(identity_holds, 60, "every event counted", interval=0.5)
        with sc.output_reader(bootstrap, prefix) as reader:
            reader.read_until(lambda r: set(sc.outcome_view(r, prefix)) >= set(expected.outcomes), 30, "outcomes")
            reader.poll(1.0)
            outcomes: dict[sc.Position4, list[tuple[str, str]]] = {}
            for record in reader.records(prefix + OutputTopic.SUSPICIOUS.value):
                where = (record["source_topic"], record["partition"], record["offset"], record["index"])
                outcomes.setdefault(where, []).append((record["outcome"], record["reason"]))
            dead_letters = reader.records(prefix + OutputTopic.DLQ.value)
            for record in dead_letters:
                where = (record["source_topic"], record["partition"], record["offset"], record["index"])
                outcomes.setdefault(where, []).append(("invalid", ""))
        time.sleep(1.0)  # a last look: still serving, still running
        metrics = scrape(worker.metrics_url) or metrics
        assert worker.process is not None
        alive = worker.process.poll() is None
        return HostileRun(expected, outcomes, dead_letters, metrics, alive, worker.log(), cluster.story())
    except Exception as exc:
        cluster.dump_stacks()
        raise AssertionError(f"{exc} ({cluster.story()})") from exc
    finally:
        cluster.stop_all()


@pytest.fixture(scope="module")
def hostile_runs(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Outcome]:
    log_dir = tmp_path_factory.mktemp("hostile")
    return run_seeds(lambda seed: hostile_run(bootstrap, log_dir, seed))


@pytest.mark.parametrize("seed", SEEDS)
def test_hostile_input_gets_one_outcome_per_event_and_the_worker_never_stops(
    hostile_runs: dict[int, Outcome], seed: int
) -> None:
    run: HostileRun = hostile_runs[seed].get()
    assert run.alive, run.story
    # exactly one outcome record per event that needs one, and the one the SPEC asks for
    assert {where: outcomes for where, outcomes in run.outcomes.items() if len(outcomes) > 1} == {}, run.story
    assert {where: outcomes[0] for where, outcomes in run.outcomes.items()} == run.expected.outcomes, run.story
    # and exactly one count per event
    assert counted(run.metrics) == {key: n for key, n in run.expected.counts.items() if n}
    assert run.metrics["rewards_pending_interactions"] == run.expected.pending_interactions
    # no event needed the per-event safety net, and no agent crashed on the way
    assert not [d for d in run.dead_letters if d["error"].startswith("internal error")]
    assert "Crashed reason=" not in run.log and "CRITICAL" not in run.log


@pytest.mark.parametrize("seed", SEEDS)
def test_every_kind_of_hostile_record_reached_the_dead_letter_topic(
    hostile_runs: dict[int, Outcome], seed: int
) -> None:
    run: HostileRun = hostile_runs[seed].get()
    errors = [d["error"] for d in run.dead_letters]
    for expected in (
        "value: not JSON",  # random bytes, deep nesting, NaN, huge numbers
        "value: not valid UTF-8",
        "over the 1048576-byte limit",  # a record over 1 MiB
        "a batch envelope holds 1-1000 events, got 1001",
        "value: null",  # a tombstone
        "event: must be a JSON object",  # scalars and arrays inside an envelope
        "over the 65536-byte limit",  # an event over 64 KiB
        "viewer_id",  # an identifier over 128 code points
    ):
        assert any(expected in error for error in errors), (expected, sorted(set(errors)))
    big = [d for d in run.dead_letters if "1048576-byte limit" in d["error"]]
    assert big and all(d["value_truncated"] is True and d["value_bytes"] > 1_048_576 for d in big)
