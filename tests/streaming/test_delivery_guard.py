"""DeliveryGuard: each guarded partition's records must come as an unbroken run from where it was sought; a hole
stops the worker before the batch is acknowledged. Records seen again (below the expected offset) are fine."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from faust.types import TP

from stream_app.streaming import delivery_guard
from stream_app.streaming.delivery_guard import DeliveryGuard

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


def test_an_unbroken_run_from_the_sought_offset_passes() -> None:
    guard = DeliveryGuard([VIEWS])
    guard.sought({TP(VIEWS, 0): 10, TP(VIEWS, 1): None})
    assert guard.hole(batch((VIEWS, 0, 10), (VIEWS, 0, 11), (VIEWS, 1, 40), (TICKS, 0, 99))) is None
    assert guard.hole(batch((VIEWS, 0, 9), (VIEWS, 0, 12), (VIEWS, 1, 41))) is None  # 9: seen again, fine


@pytest.mark.parametrize(
    ("records", "hole"),
    [
        ([(VIEWS, 0, 11)], "video-views[0] offsets 10-10"),  # the first record is not where it was sought
        ([(VIEWS, 0, 10), (VIEWS, 0, 11), (VIEWS, 0, 40)], "video-views[0] offsets 12-39"),
    ],
)
def test_a_hole_is_named(records: list[tuple[str, int, int]], hole: str) -> None:
    guard = DeliveryGuard([VIEWS])
    guard.sought({TP(VIEWS, 0): 10})
    assert guard.hole(batch(*records)) == hole


def test_a_partition_sought_again_restarts_its_run_and_a_revoked_one_is_forgotten() -> None:
    guard = DeliveryGuard([VIEWS])
    guard.sought({TP(VIEWS, 0): 10})
    assert guard.hole(batch((VIEWS, 0, 10))) is None
    guard.sought({TP(VIEWS, 0): 3})
    assert guard.hole(batch((VIEWS, 0, 3))) is None
    guard.forget([TP(VIEWS, 0)])
    assert guard.hole(batch((VIEWS, 0, 50))) is None


def test_a_hole_stops_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    stops: list[str] = []
    monkeypatch.setattr(delivery_guard, "fail_stop", stops.append)
    guard = DeliveryGuard([VIEWS])
    guard.sought({TP(VIEWS, 2): 0})
    guard.check(batch((VIEWS, 2, 5)))
    assert stops == [
        "the consumer skipped input records (video-views[2] offsets 0-4) before handing this batch to the agent"
    ]
