"""Reconciliation: ledger records reduced per video and window (de-duplicated, only compared windows), and the cause
named for each video that differs."""

from __future__ import annotations

from typing import Any

from stream_app.replay.ledger import (
    FLAG_NOT_APPLIED,
    FLAG_TIMING,
    NOT_IN_LEDGER,
    NOT_IN_REPLAY,
    UNEXPLAINED,
    decode_ledger,
    reconcile,
    reduce_ledger,
)

W = 60_000
GRACE = 10_000


def settlement(video: str, k: int, settled: int, qv: int = 2, policy: str = "v1-aaaa") -> dict[str, Any]:
    return {
        "kind": "settlement",
        "video_id": video,
        "creator_id": "c1",
        "window_start": k * W,
        "window_end": (k + 1) * W,
        "qualified_views": qv,
        "settled_micros": settled,
        "policy": policy,
    }


def clawback(video: str, k: int, amount: int, clawed: int) -> dict[str, Any]:
    return {
        "kind": "clawback",
        "video_id": video,
        "creator_id": "c1",
        "window_start": k * W,
        "window_end": (k + 1) * W,
        "clawed_base_micros": clawed,
        "clawback_micros": amount,
        "policy": "v1-aaaa",
    }


def reduce(records: list[dict[str, Any]], **kw: Any) -> Any:
    return reduce_ledger(
        records, covered_from_ms=kw.pop("covered", None), due_by_ms=kw.pop("due", 10 * W), grace_ms=GRACE, **kw
    )


def test_duplicates_are_dropped_and_net_is_settled_minus_clawed_back() -> None:
    view = reduce(
        [
            settlement("v", 0, 4_000),
            settlement("v", 0, 4_000),  # re-sent after a restart
            clawback("v", 0, 500, 1_000),
            clawback("v", 0, 500, 1_000),  # re-sent
            clawback("v", 0, 700, 2_000),  # a second clawback of the same window: clawed base grows
        ]
    )
    assert view.net_micros("v") == 4_000 - 500 - 700
    assert view.duplicates == 2 and view.policies == {"v1-aaaa"}


def test_only_windows_covered_and_due_are_compared() -> None:
    records = [settlement("v", 0, 100), settlement("v", 1, 200), settlement("v", 8, 400)]
    # window 8 ends at 540_000; due at 550_000 > 540_000: not compared; window 0 starts before the coverage
    view = reduce(records, covered=W, due=540_000)
    assert view.net_micros("v") == 200


def test_matching_sides() -> None:
    ledger = reduce([settlement("a", 0, 1_000), settlement("b", 0, 0)])
    replay = reduce([settlement("b", 0, 0), settlement("a", 0, 1_000)])
    result = reconcile(ledger, replay)
    assert result.matches and result.videos_compared == 2 and result.ledger_net_micros == 1_000


def test_causes() -> None:
    ledger = reduce(
        [
            settlement("timing", 0, 4_000),
            clawback("timing", 0, 1_000, 1_000),  # the flag came after the window settled ...
            settlement("missed", 0, 1_500, qv=3),  # ... or never: a view the device rule rejected is paid
            settlement("behind", 0, 1_000),
            settlement("gone", 0, 1_000),
            settlement("odd", 0, 1_000),
        ]
    )
    replay = reduce(
        [
            settlement("timing", 0, 3_500, qv=1),  # ... the replay's came before it settled
            settlement("missed", 0, 1_000, qv=2),
            settlement("behind", 0, 1_000),
            settlement("behind", 1, 700),  # the workers have not written window 1 yet
            settlement("odd", 0, 999),
        ],
        device_clawed={("missed", 0): 1, ("timing", 0): 1},
    )
    result = reconcile(ledger, replay)
    assert {d.video_id: (d.cause, d.diff_micros) for d in result.differences} == {
        "timing": (FLAG_TIMING, 500),
        "missed": (FLAG_NOT_APPLIED, -500),
        "behind": (NOT_IN_LEDGER, 700),
        "gone": (NOT_IN_REPLAY, -1_000),
        "odd": (UNEXPLAINED, -1),
    }
    assert not result.matches and result.by_cause()[FLAG_TIMING] == 1


def test_decode_ledger_counts_what_is_not_a_record() -> None:
    records, bad = decode_ledger([b'{"kind": "settlement"}', b"not json", None, b"[1]"])
    assert records == [{"kind": "settlement"}] and bad == 3
