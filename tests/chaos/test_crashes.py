"""Issue 12 part 3: SIGKILLs at random points, a second worker joining and another dying mid-stream, a producer
redelivering a slice of the input; the final money equals the oracle's undisturbed run to the micro, no replayed
event is judged again, every event has its outcome record, and the redelivered copies earn nothing.

Per seed (all seeds run at once, each on its own topics and group):
1. worker a1 starts; the first part of the traffic arrives paced; a1 is SIGKILLed at a random moment while it
   scores (inside or between batches, before or after a commit);
2. b joins and a2 restarts while the second part arrives; a2 is SIGKILLed right after it is assigned partitions
   (during its recovery or the re-emission that follows an assignment);
3. a3 starts; the third part arrives, then the last records of it again (a producer retry), then the closing
   records that settle every window at once: b is SIGKILLed as soon as the first of those settlements appears;
4. a3 finishes alone.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from stream_app.domain.events import OutputTopic
from tests.chaos import scenario as sc
from tests.chaos.runs import ASSIGNED, READY, SEEDS, Cluster, Outcome, in_background, run_seeds, wait_for_log
from tests.integration.harness import RawRecord, TopicReader

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(420)]

PACE_EVENTS_PER_S = 400
# Faust's commit interval per seed: never before the kills (every restart replays all it read), often, the default.
COMMIT_INTERVAL_S = {1: "3600", 2: "1", 3: "2.8"}


@dataclass
class KillRun:
    prefix: str
    expected: sc.Expected
    without_copies: sc.Expected
    copies: set[tuple[str, int, int]]  # (topic, partition, offset) of the redelivered records
    reader: TopicReader  # the outputs, read to the end
    story: str


def kill_run(bootstrap: str, log_dir: Path, seed: int) -> KillRun:
    rng = random.Random(seed)
    data = sc.chaos_input(seed)
    cluster = Cluster(bootstrap, log_dir, f"kill{seed}", BROKER_COMMIT_INTERVAL=COMMIT_INTERVAL_S[seed])
    prefix = cluster.prefix
    cut1, cut2 = sorted(rng.sample(range(len(data.traffic) // 5, 4 * len(data.traffic) // 5), 2))
    parts = data.traffic[:cut1], data.traffic[cut1:cut2], data.traffic[cut2:]
    copies = sc.redelivered(data.traffic)
    publisher = sc.Publisher(bootstrap, prefix)
    publisher.send(data.profiles)
    reader = sc.output_reader(bootstrap, prefix)
    settlements = prefix + OutputTopic.SETTLEMENTS.value
    try:
        a1 = cluster.start("a1")
        wait_for_log(a1, READY, 60)
        sending = in_background(lambda: publisher.send(parts[0], PACE_EVENTS_PER_S))
        time.sleep(rng.uniform(0.3, 0.8 * sum(r.events for r in parts[0]) / PACE_EVENTS_PER_S))
        cluster.kill(a1, "while scoring the first part")
        sending.join()

        b = cluster.start("b")
        a2 = cluster.start("a2")
        sending = in_background(lambda: publisher.send(parts[1], PACE_EVENTS_PER_S))
        wait_for_log(a2, ASSIGNED, 90)
        time.sleep(rng.uniform(0.0, 0.3))
        cluster.kill(a2, "right after its assignment")
        sending.join()

        a3 = cluster.start("a3")
        publisher.send(parts[2], PACE_EVENTS_PER_S)
        publisher.send(copies)
        wait_for_log(a3, READY, 90)  # a3 has partitions: b and a3 share the group
        reader.poll()
        before = len(reader.raw[settlements])
        publisher.send(data.closing)
        reader.read_until(lambda r: len(r.raw[settlements]) > before, 90, "settlements after the closing records")
        cluster.kill(b, "as the closing settlements appear")

        raw = sc.read_input(bootstrap, prefix, len(data.profiles) + len(data.traffic) + len(copies) + 2 * 4)
        policy = sc.chaos_policy(cluster.env)
        expected = sc.oracle(raw, prefix, policy)
        copy_positions = copy_offsets(raw, copies, data.closing)
        without = {topic: [r for r in records if where(r) not in copy_positions] for topic, records in raw.items()}
        sc.wait_for_money(reader, prefix, expected, 150)
        # the outcome records of the last batches may still be on their way: read until they are all there
        with contextlib.suppress(AssertionError):  # test_every_event_has_its_outcome_record_after_kills tells
            reader.read_until(lambda r: set(sc.outcome_view(r, prefix)) >= set(expected.outcomes), 15, "outcomes")
        cluster.note("converged")
        return KillRun(prefix, expected, sc.oracle(without, prefix, policy), copy_positions, reader, cluster.story())
    except Exception as exc:
        cluster.dump_stacks()
        reader.close()
        raise AssertionError(f"{exc} ({cluster.story()})") from exc
    finally:
        cluster.stop_all()


def where(record: RawRecord) -> tuple[str, int, int]:
    return record.topic, record.partition, record.offset


def copy_offsets(
    raw: dict[str, list[RawRecord]], copies: list[sc.Record], closing: list[sc.Record]
) -> set[tuple[str, int, int]]:
    """Where the redelivered records landed: on each topic-partition, just before its closing records."""
    found = set()
    for topic, records in raw.items():
        for partition in range(sc.PARTITIONS):
            here = sorted((r for r in records if r.partition == partition), key=lambda r: r.offset)
            tail = sum(1 for r in closing if topic.endswith(r.topic) and r.partition == partition)
            count = sum(1 for r in copies if topic.endswith(r.topic) and r.partition == partition)
            found |= {where(r) for r in here[len(here) - tail - count : len(here) - tail]}
    return found


@pytest.fixture(scope="module")
def kill_runs(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Outcome]:
    log_dir = tmp_path_factory.mktemp("kills")
    runs = run_seeds(lambda seed: kill_run(bootstrap, log_dir, seed))
    yield runs
    for outcome in runs.values():
        if outcome.value is not None:
            outcome.value.reader.close()


@pytest.mark.parametrize("seed", SEEDS)
def test_money_after_kills_equals_an_undisturbed_run(kill_runs: dict[int, Outcome], seed: int) -> None:
    run: KillRun = kill_runs[seed].get()
    assert sc.accrual_view(run.reader, run.prefix) == run.expected.accruals, run.story
    assert sc.settlement_view(run.reader, run.prefix) == run.expected.settlements, run.story
    # the input was rich enough to mean something: money settled, fraud caught, invalid input dead-lettered
    assert sum(a["settled_micros"] for a in run.expected.accruals.values()) > 0
    reasons = {reason for _, reason in run.expected.outcomes.values()}
    assert {"duplicate_event", "viewer_repeat", "engagement_without_view", "impossible_watch", ""} <= reasons


@pytest.mark.parametrize("seed", SEEDS)
def test_no_replayed_event_is_judged_again_after_kills(kill_runs: dict[int, Outcome], seed: int) -> None:
    run: KillRun = kill_runs[seed].get()
    found = sc.outcome_view(run.reader, run.prefix)
    # a replayed record judged again would be a duplicate_event (or a second outcome) for an event that has another
    spurious = {where: outcomes for where, outcomes in found.items() if outcomes != {run.expected.outcomes.get(where)}}
    assert spurious == {}, run.story


@pytest.mark.parametrize("seed", SEEDS)
def test_every_event_has_its_outcome_record_after_kills(kill_runs: dict[int, Outcome], seed: int) -> None:
    run: KillRun = kill_runs[seed].get()
    found = sc.outcome_view(run.reader, run.prefix)
    missing = {where: outcome for where, outcome in run.expected.outcomes.items() if where not in found}
    assert missing == {}, run.story


@pytest.mark.parametrize("seed", SEEDS)
def test_redelivered_copies_are_duplicates_and_earn_nothing(kill_runs: dict[int, Outcome], seed: int) -> None:
    run: KillRun = kill_runs[seed].get()
    copied = {where: outcome for where, outcome in run.expected.outcomes.items() if where[:3] in run.copies}
    # SPEC §4, §6: a new record carrying an event_id already seen is duplicate_event (invalid ones stay invalid)
    assert ("suspicious", "duplicate_event") in copied.values()
    assert set(copied.values()) <= {("suspicious", "duplicate_event"), ("invalid", "")}
    found = sc.outcome_view(run.reader, run.prefix)
    recorded = {where: found[where] for where in copied if where in found}
    assert recorded and all(outcomes == {copied[where]} for where, outcomes in recorded.items()), run.story

    def money(accruals: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
        fields = ("settled_micros", "clawback_micros", "provisional_micros", "qualified_views", "views")
        return {video: tuple(a[f] for f in fields) for video, a in accruals.items()}

    # the copies earn nothing: the worker's money is that of the input without them
    assert money(sc.accrual_view(run.reader, run.prefix)) == money(run.without_copies.accruals), run.story
    assert run.expected.settlements == run.without_copies.settlements
