"""Window arithmetic and the partition watermark (SPEC §5), with exact millisecond values worked out by hand."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.domain.windows import (
    SourceWatermark,
    advance_watermark,
    is_idle,
    is_settleable,
    last_settleable_window,
    partition_watermark,
    settle_deadline_ms,
    window_bounds,
    window_index,
)

HOUR = 3600  # default WINDOW_S
GRACE = 300  # default GRACE_S


@pytest.mark.parametrize(
    ("ts_ms", "window_s", "expected"),
    [
        (0, HOUR, 0),
        (3_599_999, HOUR, 0),  # last ms of window 0
        (3_600_000, HOUR, 1),  # first ms of window 1: the end is exclusive
        (7_199_999, HOUR, 1),
        (59_999, 60, 0),
        (60_000, 60, 1),
        # 1_700_000_000_000 // 3_600_000 = 472_222 (472_222 * 3_600_000 = 1_699_999_200_000)
        (1_700_000_000_000, HOUR, 472_222),
        (1_700_000_000_000, 1, 1_700_000_000),
    ],
)
def test_window_index(ts_ms: int, window_s: int, expected: int) -> None:
    assert window_index(ts_ms, window_s) == expected


@pytest.mark.parametrize(
    ("k", "window_s", "expected"),
    [
        (0, HOUR, (0, 3_600_000)),
        (1, HOUR, (3_600_000, 7_200_000)),
        (3, 60, (180_000, 240_000)),
        (472_222, HOUR, (1_699_999_200_000, 1_700_002_800_000)),
    ],
)
def test_window_bounds(k: int, window_s: int, expected: tuple[int, int]) -> None:
    assert window_bounds(k, window_s) == expected


@given(ts=st.integers(min_value=0, max_value=2**53 - 1), window_s=st.integers(min_value=1, max_value=10**6))
def test_every_ts_falls_in_its_window(ts: int, window_s: int) -> None:
    start, end = window_bounds(window_index(ts, window_s), window_s)
    assert start <= ts < end
    assert end - start == window_s * 1000


@pytest.mark.parametrize(
    ("k", "window_s", "grace_s", "expected"),
    [
        (0, HOUR, GRACE, 3_900_000),  # 1*3_600_000 + 300*1000
        (1, HOUR, GRACE, 7_500_000),  # 2*3_600_000 + 300_000
        (0, HOUR, 0, 3_600_000),  # no grace: the window end itself
        (9, 60, 5, 605_000),  # 10*60_000 + 5_000
        (472_222, HOUR, GRACE, 1_700_003_100_000),  # 1_700_002_800_000 + 300_000
    ],
)
def test_settle_deadline_ms(k: int, window_s: int, grace_s: int, expected: int) -> None:
    assert settle_deadline_ms(k, window_s, grace_s) == expected


@pytest.mark.parametrize(
    ("k", "watermark_ms", "expected"),
    [
        (0, None, False),  # no watermark yet: nothing settles
        (0, 3_600_000, False),  # window end, but still in grace
        (0, 3_899_999, False),  # 1 ms before the deadline 3_900_000
        (0, 3_900_000, True),  # reaching the deadline is enough
        (0, 3_900_001, True),
        (1, 3_900_000, False),  # window 1's deadline is 7_500_000
        (1, 7_500_000, True),
    ],
)
def test_is_settleable_boundary(k: int, watermark_ms: int | None, expected: bool) -> None:
    assert is_settleable(k, watermark_ms, HOUR, GRACE) is expected


@pytest.mark.parametrize(
    ("watermark_ms", "expected"),
    [
        (3_900_000, 0),  # (3_900_000 - 300_000) // 3_600_000 - 1 = 1 - 1
        (3_899_999, -1),  # 3_599_999 // 3_600_000 - 1 = 0 - 1: nothing settles yet
        (7_499_999, 0),
        (7_500_000, 1),
        (0, -2),  # (-300_000) // 3_600_000 = -1 (floor), - 1
    ],
)
def test_last_settleable_window(watermark_ms: int, expected: int) -> None:
    assert last_settleable_window(watermark_ms, HOUR, GRACE) == expected


@given(
    watermark=st.integers(min_value=0, max_value=2**53),
    window_s=st.integers(min_value=1, max_value=86_400),
    grace_s=st.integers(min_value=0, max_value=86_400),
)
def test_last_settleable_window_agrees_with_is_settleable(watermark: int, window_s: int, grace_s: int) -> None:
    k = last_settleable_window(watermark, window_s, grace_s)
    assert is_settleable(k, watermark, window_s, grace_s)
    assert not is_settleable(k + 1, watermark, window_s, grace_s)


@pytest.mark.parametrize(
    ("idle_since_ms", "caught_up", "now_ms", "expected"),
    [
        (1_000_000, True, 1_029_999, False),  # 29_999 ms of nothing < 30 s
        (1_000_000, True, 1_030_000, True),  # exactly IDLE_SETTLE_S: idle
        (1_000_000, False, 2_000_000, False),  # still behind the high watermark: never idle
        (None, True, 2_000_000, False),  # the idle clock has not started since the assignment
    ],
)
def test_is_idle(idle_since_ms: int | None, caught_up: bool, now_ms: int, expected: bool) -> None:
    assert is_idle(idle_since_ms=idle_since_ms, caught_up=caught_up, now_ms=now_ms, idle_settle_s=30) is expected


VIEWS, INTER = "video-views", "video-interactions"
WALL = 5_000_000


@pytest.mark.parametrize(
    ("latest", "idle", "expected"),
    [
        ({VIEWS: 100, INTER: 50}, {}, 50),  # both active: the minimum
        ({VIEWS: 100, INTER: 50}, {VIEWS: False, INTER: False}, 50),
        ({VIEWS: 100, INTER: 50}, {INTER: True}, 100),  # an idle topic is left out
        ({VIEWS: 100, INTER: None}, {INTER: True}, 100),  # an idle topic that never delivered is left out too
        ({VIEWS: None, INTER: 70}, {VIEWS: True}, 70),
        ({VIEWS: 100, INTER: None}, {}, None),  # interactions not heard from and not idle: no watermark yet
        ({VIEWS: None, INTER: None}, {}, None),
        ({VIEWS: 100, INTER: 50}, {VIEWS: True, INTER: True}, WALL),  # both idle: the wall clock stands in
        ({VIEWS: None, INTER: None}, {VIEWS: True, INTER: True}, WALL),
        (
            {VIEWS: 9_000_000, INTER: 8_000_000},
            {VIEWS: True, INTER: True},
            WALL,
        ),  # even below event time (caller stays monotonic)
    ],
)
def test_partition_watermark(latest: dict[str, int | None], idle: dict[str, bool], expected: int | None) -> None:
    assert partition_watermark(latest, idle, WALL) == expected


def test_idle_interactions_let_views_settle_window_0() -> None:
    # A video with views only: once interactions are idle, the views' 3_900_000 reaches window 0's deadline.
    wm = partition_watermark({VIEWS: 3_900_000, INTER: None}, {INTER: True}, WALL)
    assert wm == 3_900_000
    assert is_settleable(0, wm, HOUR, GRACE)
    # ... while interactions are not idle yet, nothing settles.
    assert not is_settleable(0, partition_watermark({VIEWS: 3_900_000, INTER: None}, {}, WALL), HOUR, GRACE)


@pytest.mark.parametrize(
    ("previous", "candidate", "expected"),
    [
        (None, None, None),
        (None, 10, 10),
        (10, None, 10),  # no watermark now keeps the one we had
        (10, 5, 10),  # never backwards
        (10, 10, 10),
        (10, 11, 11),
    ],
)
def test_advance_watermark(previous: int | None, candidate: int | None, expected: int | None) -> None:
    assert advance_watermark(previous, candidate) == expected


# ---- SourceWatermark: the device partition's watermark over the event partitions feeding it ----

SKEW = 3_600_000


def test_source_watermark_is_the_slowest_source() -> None:
    clock = SourceWatermark(max_skew_ms=SKEW)
    assert clock.advance(3) is None  # nothing heard yet
    clock.observe(0, 600_000)
    clock.observe(1, 50_000)
    # source 2 has not reported: it may still send anything, so only the skew floor
    assert clock.advance(3) == 600_000 - SKEW
    clock.observe(2, 70_000)
    assert clock.advance(3) == 50_000
    clock.observe(1, 90_000)
    assert clock.advance(3) == 70_000
    clock.observe(2, 60_000)  # a report never moves a source back
    assert clock.advance(3) == 70_000


def test_source_watermark_never_moves_back() -> None:
    clock = SourceWatermark(max_skew_ms=SKEW)
    clock.observe(0, 500_000)
    assert clock.advance(1) == 500_000
    # a new source appears (the topic got partitions) behind: the watermark stays
    clock.observe(1, 100_000)
    assert clock.advance(2) == 500_000


def test_source_watermark_stays_within_the_skew_of_the_most_advanced_source() -> None:
    clock = SourceWatermark(max_skew_ms=60_000)
    clock.observe(0, 1_000_000)
    clock.observe(1, 10_000)  # slow, or its partition has no owner
    assert clock.advance(2) == 1_000_000 - 60_000
