"""DeliveryGuard: each guarded partition's records must come as an unbroken run from where it was sought; a hole
that holds records stops the worker before the batch is acknowledged, a hole without records (a transactional
producer's markers) is let through, and records seen again (below the expected offset) are fine."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from confluent_kafka import Producer
from faust.types import TP

from stream_app.streaming import delivery_guard
from stream_app.streaming.delivery_guard import DeliveryGuard, records_in

VIEWS, TICKS = "video-views", "app-ticks"


@dataclass
class Message:
    topic: str
    partition: int
    offset: int


@dataclass
class Event:
    message: Message


def batch(*records: tuple[str, int, int]) -> list[Event]:
    return [Event(Message(*record)) for record in records]


def test_an_unbroken_run_from_the_sought_offset_has_no_hole() -> None:
    guard = DeliveryGuard([VIEWS])
    guard.sought({TP(VIEWS, 0): 10, TP(VIEWS, 1): None})
    assert guard.holes(batch((VIEWS, 0, 10), (VIEWS, 0, 11), (VIEWS, 1, 40), (TICKS, 0, 99))) == []
    assert guard.holes(batch((VIEWS, 0, 9), (VIEWS, 0, 12), (VIEWS, 1, 41))) == []  # 9: seen again, fine


@pytest.mark.parametrize(
    ("records", "holes"),
    [
        ([(VIEWS, 0, 11)], [(VIEWS, 0, 10, 11)]),  # the first record is not where the partition was sought
        ([(VIEWS, 0, 10), (VIEWS, 0, 11), (VIEWS, 0, 40), (VIEWS, 0, 42)], [(VIEWS, 0, 12, 40), (VIEWS, 0, 41, 42)]),
    ],
)
def test_holes_are_found(records: list[tuple[str, int, int]], holes: list[tuple[str, int, int, int]]) -> None:
    guard = DeliveryGuard([VIEWS])
    guard.sought({TP(VIEWS, 0): 10})
    assert guard.holes(batch(*records)) == holes


def test_a_partition_sought_again_restarts_its_run_and_a_revoked_one_is_forgotten() -> None:
    guard = DeliveryGuard([VIEWS])
    guard.sought({TP(VIEWS, 0): 10})
    assert guard.holes(batch((VIEWS, 0, 10))) == []
    guard.sought({TP(VIEWS, 0): 3})
    assert guard.holes(batch((VIEWS, 0, 3))) == []
    guard.forget([TP(VIEWS, 0)])
    assert guard.holes(batch((VIEWS, 0, 50))) == []


@pytest.mark.parametrize(("holds_records", "stopped"), [(True, True), (False, False)])
async def test_a_hole_with_records_stops_the_worker(
    monkeypatch: pytest.MonkeyPatch, holds_records: bool, stopped: bool
) -> None:
    stops: list[str] = []
    asked: list[tuple[str, int, int, int]] = []
    monkeypatch.setattr(delivery_guard, "fail_stop", stops.append)

    async def holds(topic: str, partition: int, first: int, end: int) -> bool:
        asked.append((topic, partition, first, end))
        return holds_records

    guard = DeliveryGuard([VIEWS], holds)
    guard.sought({TP(VIEWS, 2): 0})
    await guard.check(batch((VIEWS, 2, 5)))
    assert asked == [(VIEWS, 2, 0, 5)]
    expected = "the consumer skipped input records (video-views[2] offsets 0-4) before handing this batch to the agent"
    assert stops == ([expected] if stopped else [])


@pytest.mark.integration
async def test_records_in_asks_the_broker(bootstrap: str, topic_prefix: str) -> None:
    topic = f"{topic_prefix}holes"
    producer = Producer({"bootstrap.servers": bootstrap})
    for n in range(5):
        producer.produce(topic, value=b"%d" % n, partition=0)
    assert producer.flush(10) == 0
    holds = records_in(bootstrap, {})
    assert await holds(topic, 0, 1, 3) is True
    assert await holds(topic, 0, 5, 9) is False  # nothing from offset 5 on


def test_commits_never_pass_what_the_agent_processed() -> None:
    offsets = {TP(VIEWS, 0): 50, TP(VIEWS, 1): 20, TP(VIEWS, 2): 7, TP(TICKS, 0): 99}
    processed = {(VIEWS, 0): 30, (VIEWS, 1): 25}
    delivery_guard.clamp_commits(offsets, frozenset({VIEWS}), processed)
    # lowered to what was processed, kept when behind it, dropped when nothing was processed; ticks untouched
    assert offsets == {TP(VIEWS, 0): 30, TP(VIEWS, 1): 20, TP(TICKS, 0): 99}


def test_a_lowered_commit_leaves_faust_able_to_commit_the_partition_again() -> None:
    """Faust takes the acknowledged offsets it offers for a commit off its list; a commit the clamp lowers must
    not leave a hole there, or Faust never offers the partition again (the device judge's partitions, whose
    commits wait for their states to be saved, stayed at their first save). Driven through Faust's own
    bookkeeping (`Consumer._filter_committable_offsets`, `_new_offset`, `_commit_offsets`' update)."""
    from collections import defaultdict
    from types import SimpleNamespace

    from faust.transport.drivers.aiokafka import Consumer
    from intervaltree import IntervalTree

    from stream_app.streaming import faust_compat

    faust_compat._install_commit_clamp()
    tp = TP(VIEWS, 0)
    saved = {(VIEWS, 0): 12}
    consumer = Consumer.__new__(Consumer)
    consumer._acked = defaultdict(list)
    consumer._acked_index = defaultdict(set)
    consumer._gap = defaultdict(IntervalTree)
    consumer._committed_offset = defaultdict(lambda: None)
    consumer.app = SimpleNamespace(
        **{faust_compat._COMMIT_CLAMP_ATTR: lambda offsets: delivery_guard.clamp_commits(offsets, {VIEWS}, saved)}
    )

    def acknowledge(offsets: range) -> None:
        for offset in offsets:
            consumer._acked[tp].append(offset)
            consumer._acked_index[tp].add(offset)

    def commit() -> dict[TP, int]:
        offsets = Consumer._filter_committable_offsets(consumer, [tp])
        consumer._committed_offset.update(offsets)  # what _commit_offsets does once committed
        return offsets

    acknowledge(range(0, 40))
    assert commit() == {tp: 12}  # lowered to what was saved
    acknowledge(range(40, 81))
    saved[(VIEWS, 0)] = 60
    assert commit() == {tp: 60}  # offered again from 12, lowered to the new save
    saved[(VIEWS, 0)] = 81
    assert commit() == {tp: 81}
    assert consumer._acked[tp] == [] and commit() == {}  # nothing left to commit, nothing given back twice
