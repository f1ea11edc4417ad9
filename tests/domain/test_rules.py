"""The authenticity rules (SPEC §6): each reason fires at its threshold and not one below, spans slide over
(ts - span, ts], the memories stay bounded, and the state survives a JSON round trip."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain import jsoncodec
from stream_app.domain.errors import SerializationError
from stream_app.domain.events import InputTopic, InteractionEvent, ViewEvent
from stream_app.domain.policy import Policy
from stream_app.domain.rules import (
    PASS,
    AuthenticityVerdict,
    Reason,
    ViewJudgement,
    check_device_burst,
    check_duplicate_event,
    check_duplicate_interaction,
    check_future_timestamp,
    check_impossible_watch,
    check_velocity_burst,
    check_viewer_repeat,
    expire,
    expire_device,
    has_supporting_view,
    judge_interaction_at_settlement,
    judge_interaction_on_arrival,
    judge_view,
    note_clawback,
)
from stream_app.domain.rules_state import (
    DedupeMemory,
    DeviceState,
    TimestampsByKey,
    UnknownTopicError,
    VelocityState,
    VideoRulesState,
    ViewRef,
)

POLICY = Policy()
DAY_MS = 86_400_000
MINUTE = 60_000


def view(
    event_id: str,
    ts: int,
    *,
    viewer: str = "u1",
    video: str = "vid1",
    device: str = "d1",
    watch_ms: int = 10_000,
    video_ms: int = 60_000,
) -> ViewEvent:
    return ViewEvent(
        event_id=event_id,
        video_id=video,
        creator_id="c1",
        viewer_id=viewer,
        device_id=device,
        ts=ts,
        watch_ms=watch_ms,
        video_ms=video_ms,
        source="for_you",
        region="US",
    )


def interaction(event_id: str, ts: int, *, kind: str = "like", viewer: str = "u1") -> InteractionEvent:
    return InteractionEvent(
        event_id=event_id, video_id="vid1", creator_id="c1", viewer_id=viewer, device_id="d1", ts=ts, kind=kind
    )


# --- reason codes, verdicts, §4 ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "spelled"),
    [
        (Reason.LATE, "late"),
        (Reason.FUTURE_TIMESTAMP, "future_timestamp"),
        (Reason.DUPLICATE_EVENT, "duplicate_event"),
        (Reason.IMPOSSIBLE_WATCH, "impossible_watch"),
        (Reason.VIEWER_REPEAT, "viewer_repeat"),
        (Reason.DEVICE_BURST, "device_burst"),
        (Reason.VELOCITY_BURST, "velocity_burst"),
        (Reason.ENGAGEMENT_WITHOUT_VIEW, "engagement_without_view"),
        (Reason.DUPLICATE_INTERACTION, "duplicate_interaction"),
    ],
)
def test_reason_codes_are_spelled_as_the_spec(reason: Reason, spelled: str) -> None:
    assert reason == spelled
    assert jsoncodec.dumps({"reason": reason}) == b'{"reason":"' + spelled.encode() + b'"}'


def test_verdict_passes_only_without_reason() -> None:
    assert PASS.passed
    assert not AuthenticityVerdict(Reason.VIEWER_REPEAT, "x").passed


@pytest.mark.parametrize(
    ("event_ts", "record_ts", "expected"),
    [
        (1_300_000, 1_000_000, False),  # exactly MAX_CLOCK_SKEW_S ahead: allowed
        (1_300_001, 1_000_000, True),  # one ms more
        (0, 1_000_000, False),  # behind the record timestamp is never "future"
        (1_000_000, 1_000_000, False),
    ],
)
def test_future_timestamp(event_ts: int, record_ts: int, expected: bool) -> None:
    assert check_future_timestamp(POLICY, event_ts, record_ts) is expected


# --- duplicate_event -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first_ts", "second_ts", "expected"),
    [
        (1_000, 1_000, True),  # the same record sent twice
        (1_000, 1_000 + DAY_MS - 1, True),  # last ms within DEDUPE_S
        (1_000, 1_000 + DAY_MS, False),  # DEDUPE_S after: a new event
        (2 * DAY_MS, DAY_MS + 1, True),  # the copy carries an older ts: still within DEDUPE_S
        (2 * DAY_MS, DAY_MS, False),
    ],
)
def test_duplicate_event_within_dedupe(first_ts: int, second_ts: int, expected: bool) -> None:
    seen = DedupeMemory()
    assert check_duplicate_event(POLICY, seen, "e1", first_ts) is False
    assert check_duplicate_event(POLICY, seen, "e1", second_ts) is expected


def test_duplicate_event_is_measured_from_the_first_sighting() -> None:
    seen = DedupeMemory()
    assert check_duplicate_event(POLICY, seen, "e1", 0) is False
    assert check_duplicate_event(POLICY, seen, "e1", DAY_MS - 1) is True  # a duplicate does not refresh it
    assert check_duplicate_event(POLICY, seen, "e1", DAY_MS) is False  # 1 day after the first: new again
    assert check_duplicate_event(POLICY, seen, "e1", DAY_MS + 5) is True  # ... and remembered from there
    assert check_duplicate_event(POLICY, seen, "e2", DAY_MS + 5) is False


def test_duplicate_event_is_per_topic() -> None:
    state = VideoRulesState()
    assert state.event_ids_of(InputTopic.VIEWS) is state.view_ids
    assert state.event_ids_of("video-interactions") is state.interaction_ids
    assert check_duplicate_event(POLICY, state.event_ids_of(InputTopic.VIEWS), "e1", 0) is False
    assert check_duplicate_event(POLICY, state.event_ids_of(InputTopic.INTERACTIONS), "e1", 0) is False
    assert check_duplicate_event(POLICY, state.event_ids_of(InputTopic.INTERACTIONS), "e1", 0) is True
    with pytest.raises(UnknownTopicError):
        state.event_ids_of(InputTopic.PROFILES)


# --- impossible_watch ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("watch_ms", "video_ms", "expected"),
    [
        (1_200_000, 60_000, False),  # exactly 20 x the video
        (1_200_001, 60_000, True),
        (0, 1, False),
        (21, 1, True),
    ],
)
def test_impossible_watch(watch_ms: int, video_ms: int, expected: bool) -> None:
    assert check_impossible_watch(POLICY, watch_ms, video_ms) is expected


# --- viewer_repeat ---------------------------------------------------------------------------------------------


def test_viewer_repeat_fifth_view_passes_sixth_and_later_rejected() -> None:
    repeats = TimestampsByKey()
    verdicts = [check_viewer_repeat(POLICY, repeats, "u1", ts) for ts in range(0, 7_000, 1_000)]
    assert verdicts == [False, False, False, False, False, True, True]
    assert check_viewer_repeat(POLICY, repeats, "u2", 7_000) is False  # another viewer: their own count


@pytest.mark.parametrize(
    ("sixth_ts", "expected"),
    [
        (599_999, True),  # (ts - 600 s, ts] still holds the view at 0: it is the 6th
        (600_000, False),  # the view at 0 left the span: only 4 earlier views, this is the 5th
    ],
)
def test_viewer_repeat_span_is_half_open(sixth_ts: int, expected: bool) -> None:
    repeats = TimestampsByKey()
    for ts in (0, 1_000, 2_000, 3_000, 4_000):
        assert check_viewer_repeat(POLICY, repeats, "u1", ts) is False
    assert check_viewer_repeat(POLICY, repeats, "u1", sixth_ts) is expected


def test_viewer_repeat_counts_the_views_it_rejects() -> None:
    # A bot looping every 100 s after five quick views: each later view still has 5+ views in its span.
    repeats = TimestampsByKey()
    quick = [check_viewer_repeat(POLICY, repeats, "u1", ts) for ts in (0, 1_000, 2_000, 3_000, 4_000)]
    looping = [check_viewer_repeat(POLICY, repeats, "u1", ts) for ts in range(100_000, 900_001, 100_000)]
    assert quick == [False] * 5
    assert looping == [True] * 9


# --- device_burst ----------------------------------------------------------------------------------------------


def _sixty_device_views(device: DeviceState) -> list[ViewRef]:
    refs = []
    for k in range(60):
        v = view(f"e{k}", k * 1_000, video=f"vid{k % 3}", viewer=f"u{k}")
        assert check_device_burst(POLICY, device, v).verdict is PASS
        refs.append(ViewRef(v.video_id, v.event_id, v.viewer_id, v.ts))
    return refs


def test_device_burst_61st_view_rejected_and_earlier_60_clawed_back() -> None:
    device = DeviceState()
    earlier = _sixty_device_views(device)
    judgement = check_device_burst(POLICY, device, view("e60", 59_999, video="vid9", viewer="u60"))
    assert judgement.verdict.reason == Reason.DEVICE_BURST
    assert judgement.clawbacks == tuple(earlier)
    assert judgement.clawback_reason == Reason.DEVICE_BURST
    assert judgement.clawbacks[0] == ViewRef("vid0", "e0", "u0", 0)
    assert judgement.clawbacks[59] == ViewRef("vid2", "e59", "u59", 59_000)


def test_device_burst_span_is_half_open() -> None:
    device = DeviceState()
    _sixty_device_views(device)
    # (0, 60_000] no longer holds the view at 0: 60 views, not more than 60
    assert check_device_burst(POLICY, device, view("e60", 60_000)) == ViewJudgement(PASS)


def test_device_burst_further_views_rejected_while_above_threshold() -> None:
    device = DeviceState()
    _sixty_device_views(device)  # views at 0, 1_000, ..., 59_000
    steps = [
        ("e60", 59_999, Reason.DEVICE_BURST, 60),  # 61 in (-1, 59_999]
        ("e61", 59_999, Reason.DEVICE_BURST, 0),  # 62 in the same span; nothing new to claw back
        ("e62", 61_000, Reason.DEVICE_BURST, 0),  # (1_000, 61_000]: 58 + 2 + 1 = 61
        ("e63", 63_000, None, 0),  # (3_000, 63_000]: 56 + 2 + 1 + 1 = 60: back at the threshold
    ]
    for event_id, ts, reason, clawed in steps:
        judgement = check_device_burst(POLICY, device, view(event_id, ts))
        assert (judgement.verdict.reason, len(judgement.clawbacks)) == (reason, clawed), event_id


def test_device_burst_late_view_completes_a_later_span() -> None:
    device = DeviceState()
    for k in range(1, 61):  # 60 views at 1_000 ... 60_000
        assert check_device_burst(POLICY, device, view(f"e{k}", k * 1_000)).verdict is PASS
    # arrives last, ts 500: the span (0, 60_000] now holds 61 views
    judgement = check_device_burst(POLICY, device, view("late", 500))
    assert judgement.verdict.reason == Reason.DEVICE_BURST
    assert [ref.event_id for ref in judgement.clawbacks] == [f"e{k}" for k in range(1, 61)]


def test_device_state_keeps_only_span_plus_grace() -> None:
    device = DeviceState()
    for k in range(3_600):  # one view a second for an hour: never a burst
        assert check_device_burst(POLICY, device, view(f"e{k}", k * 1_000)).verdict is PASS
    # views at 3_599_000 and the 360 s before it, excluding the cutoff itself: ts in (3_239_000, 3_599_000]
    assert len(device) == 360
    assert expire_device(POLICY, device, 3_599_000 + 360_000 - 1) is False
    assert len(device) == 1
    assert expire_device(POLICY, device, 3_599_000 + 360_000) is True


# --- velocity_burst --------------------------------------------------------------------------------------------


def _first_rejection(velocity: VelocityState, views: list[ViewEvent]) -> tuple[int | None, ViewJudgement]:
    for i, v in enumerate(views):
        judgement = check_velocity_burst(POLICY, velocity, v)
        if not judgement.verdict.passed:
            return i, judgement
    return None, ViewJudgement(PASS)


def _burst(start_ts: int, count: int, viewers: int, prefix: str = "b", step: int = 100) -> list[ViewEvent]:
    return [view(f"{prefix}{i}", start_ts + i * step, viewer=f"{prefix}v{i % viewers}") for i in range(count)]


@pytest.mark.parametrize(
    ("count", "viewers", "first_rejected", "clawed"),
    [
        (201, 100, 200, 100),  # 201 views > 200, 100 distinct < 100.5: the 201st is v0's second view
        (201, 101, None, 0),  # 101 distinct viewers are not under half of 201
        (202, 101, None, 0),  # exactly half is not under half
        (200, 10, None, 0),  # 200 views do not exceed 200
    ],
)
def test_velocity_burst_needs_volume_and_few_distinct_viewers(
    count: int, viewers: int, first_rejected: int | None, clawed: int
) -> None:
    velocity = VelocityState()
    at, judgement = _first_rejection(velocity, _burst(0, count, viewers))
    assert at == first_rejected
    assert len(judgement.clawbacks) == clawed


def test_velocity_burst_claws_back_each_viewers_views_after_their_first() -> None:
    velocity = VelocityState()
    at, judgement = _first_rejection(velocity, _burst(0, 201, 100))
    assert at == 200
    assert judgement.verdict.reason == Reason.VELOCITY_BURST
    assert judgement.clawback_reason == Reason.VELOCITY_BURST
    # the second views of bv0 ... bv99: events b100 ... b199, ts 10_000 ... 19_900
    assert judgement.clawbacks == tuple(ViewRef("vid1", f"b{i}", f"bv{i - 100}", i * 100) for i in range(100, 200))
    assert velocity.flagged_minutes == {0}
    # while the burst lasts, each further repeat is rejected with nothing more to claw back
    for event_id, ts, viewer, views in (("n1", 20_100, "bv5", 202), ("n2", 20_200, "bv6", 203)):
        assert check_velocity_burst(POLICY, velocity, view(event_id, ts, viewer=viewer)) == ViewJudgement(
            AuthenticityVerdict(
                Reason.VELOCITY_BURST,
                f"{views} views within 60s exceed max(200, 10 x baseline 0/60 per minute) with 100 distinct "
                f"viewers; viewer {viewer} already viewed in that span",
            )
        )


def test_velocity_burst_first_view_of_a_viewer_passes_but_reveals_the_burst() -> None:
    # 200 views of 99 viewers, then a new viewer's first view makes it 201 views with 100 distinct viewers
    velocity = VelocityState()
    views = [*_burst(0, 200, 99), view("new", 20_000, viewer="newcomer")]
    results = [check_velocity_burst(POLICY, velocity, v) for v in views]
    assert all(r.verdict.passed for r in results)
    assert results[-1].clawbacks == tuple(ViewRef("vid1", f"b{i}", f"bv{i % 99}", i * 100) for i in range(99, 200))
    assert velocity.flagged_minutes == {0}  # the clawed-back views' minute, though this view passed


@pytest.mark.parametrize(
    ("last_ts", "expected"),
    [
        (59_999, Reason.VELOCITY_BURST),  # (-1, 59_999] holds the 200 views at 0
        (60_000, None),  # (0, 60_000] does not
    ],
)
def test_velocity_span_is_half_open(last_ts: int, expected: Reason | None) -> None:
    velocity = VelocityState()
    for v in _burst(0, 200, 100, step=0):
        assert check_velocity_burst(POLICY, velocity, v).verdict.passed
    judgement = check_velocity_burst(POLICY, velocity, view("last", last_ts, viewer="bv0"))
    assert judgement.verdict.reason == expected


def _prior_minutes(velocity: VelocityState, first_minute: int, minutes: int, per_minute: int) -> None:
    # per_minute views from distinct viewers in the first half of each minute (0 s, 1 s, ...)
    for m in range(first_minute, first_minute + minutes):
        for k in range(per_minute):
            v = view(f"p{m}_{k}", m * MINUTE + k * 1_000, viewer=f"p{m}_{k}")
            assert check_velocity_burst(POLICY, velocity, v).verdict.passed


@pytest.mark.parametrize(
    ("per_minute", "first_rejected"),
    [
        (0, 200),  # baseline 0: max(200, 0) = 200
        (20, 200),  # baseline 20: max(200, 200) = 200
        (25, 250),  # baseline 25: 250 views do not exceed 250, the 251st does
        (30, 300),
    ],
)
def test_velocity_baseline_from_the_previous_60_minutes(per_minute: int, first_rejected: int) -> None:
    velocity = VelocityState()
    _prior_minutes(velocity, 0, 60, per_minute)  # minutes 0 ... 59, last view at 59:29
    # the burst runs in minute 60 from 60:30: its span never reaches back to minute 59's views
    at, judgement = _first_rejection(velocity, _burst(60 * MINUTE + 30_000, 400, 100, step=50))
    assert at == first_rejected
    assert len(judgement.clawbacks) == first_rejected - 100


def test_velocity_flagged_minutes_are_left_out_of_the_baseline() -> None:
    velocity = VelocityState()
    _prior_minutes(velocity, 0, 60, 30)
    first = [check_velocity_burst(POLICY, velocity, v) for v in _burst(60 * MINUTE + 30_000, 400, 100, step=50)]
    assert sum(not r.verdict.passed for r in first) == 100  # views 301 ... 400
    assert velocity.flagged_minutes == {60}
    # minute 62: baseline over minutes 2 ... 61 = 58 x 30 views in 59 unflagged minutes (61 is empty, counts 0)
    second = _burst(62 * MINUTE + 30_000, 400, 100, prefix="c", step=50)
    assert check_velocity_burst(POLICY, velocity, second[0]).verdict.passed
    assert velocity.baseline(62, 60) == (1_740, 59)
    # 295 x 59 = 17_405 > 10 x 1_740; 294 x 59 = 17_346 is not
    at, _ = _first_rejection(velocity, second[1:])
    assert at == 293  # second[294]: the 295th view


def test_velocity_view_older_than_the_span_passes() -> None:
    velocity = VelocityState()
    _first_rejection(velocity, _burst(100_000, 201, 100))
    assert check_velocity_burst(POLICY, velocity, view("old", 120_000 - 60_000, viewer="bv0")) == ViewJudgement(PASS)


# --- engagement_without_view and duplicate_interaction ----------------------------------------------------------

TS_I = 100_000_000
WINDOW_END = 100_800_000


@pytest.mark.parametrize(
    ("view_ts", "viewer", "expected"),
    [
        (TS_I - DAY_MS, "u1", True),  # first ms of [ts_i - 86_400_000, ...]
        (TS_I - DAY_MS - 1, "u1", False),
        (WINDOW_END + 300_000, "u1", True),  # last ms of [..., window_end + GRACE_S * 1000]
        (WINDOW_END + 300_001, "u1", False),
        (TS_I, "u2", False),  # another viewer's view does not count
    ],
)
def test_has_supporting_view_bounds(view_ts: int, viewer: str, expected: bool) -> None:
    accepted = TimestampsByKey()
    accepted.add(viewer, view_ts)
    assert has_supporting_view(POLICY, accepted, "u1", TS_I, WINDOW_END) is expected


@pytest.mark.parametrize(
    ("kinds_and_ts", "expected"),
    [
        ([("like", 0), ("like", DAY_MS - 1)], [False, True]),
        ([("like", 0), ("like", DAY_MS)], [False, False]),
        ([("follow", DAY_MS), ("follow", 1)], [False, True]),  # an earlier ts judged later: still within
        ([("like", 0), ("follow", 1), ("like", 2), ("follow", 3)], [False, False, True, True]),
        ([("comment", 0), ("comment", 1), ("share", 2), ("share", 3)], [False] * 4),
        ([("like", 0), ("like", 5), ("like", DAY_MS + 2)], [False, True, False]),  # measured from accepted
        ([("applause", 0), ("applause", 1)], [False, False]),  # unknown kinds may repeat
    ],
)
def test_duplicate_interaction(kinds_and_ts: list[tuple[str, int]], expected: list[bool]) -> None:
    state = VideoRulesState()
    results = [
        check_duplicate_interaction(POLICY, state.interactions, interaction(f"i{n}", ts, kind=kind))
        for n, (kind, ts) in enumerate(kinds_and_ts)
    ]
    assert results == expected


def test_interactions_judged_in_order_at_settlement() -> None:
    state = VideoRulesState()
    assert judge_view(POLICY, state, view("v1", 1_000_000, viewer="fan")).verdict is PASS
    assert judge_view(POLICY, state, view("v2", 1_000_000, viewer="cheat", watch_ms=10**9)).verdict.reason == (
        Reason.IMPOSSIBLE_WATCH
    )
    steps = [
        (interaction("i1", 1_500_000, viewer="fan"), None),
        (interaction("i2", 1_600_000, viewer="fan"), Reason.DUPLICATE_INTERACTION),
        (interaction("i3", 1_600_000, viewer="fan", kind="comment"), None),
        (interaction("i4", 1_700_000, viewer="fan", kind="comment"), None),
        (interaction("i5", 1_700_000, viewer="cheat"), Reason.ENGAGEMENT_WITHOUT_VIEW),  # rejected view only
        (interaction("i6", 1_700_000, viewer="stranger", kind="share"), Reason.ENGAGEMENT_WITHOUT_VIEW),
    ]
    for event, reason in steps:
        assert judge_interaction_on_arrival(POLICY, state, event) is PASS
        assert judge_interaction_at_settlement(POLICY, state, event, 3_600_000).reason == reason, event.event_id
    assert judge_interaction_on_arrival(POLICY, state, steps[0][0]).reason == Reason.DUPLICATE_EVENT


def test_like_rejected_for_no_view_does_not_count_as_already_liked() -> None:
    state = VideoRulesState()
    first = interaction("i1", 1_000, viewer="late_fan")
    assert judge_interaction_at_settlement(POLICY, state, first, 3_600_000).reason == Reason.ENGAGEMENT_WITHOUT_VIEW
    assert judge_view(POLICY, state, view("v1", 2_000, viewer="late_fan")).verdict is PASS
    again = interaction("i2", 3_000, viewer="late_fan")
    assert judge_interaction_at_settlement(POLICY, state, again, 3_600_000) is PASS


def test_clawed_back_view_no_longer_supports_engagement() -> None:
    state = VideoRulesState()
    assert judge_view(POLICY, state, view("v1", 1_000, viewer="farm")).verdict is PASS
    assert state.velocity.flagged == bytearray([0])
    note_clawback(state, ViewRef("vid1", "v1", "farm", 1_000))
    assert state.velocity.flagged == bytearray([1])
    like = interaction("i1", 2_000, viewer="farm")
    assert judge_interaction_at_settlement(POLICY, state, like, 3_600_000).reason == Reason.ENGAGEMENT_WITHOUT_VIEW


# --- judge_view: SPEC order ------------------------------------------------------------------------------------


def test_judge_view_applies_rules_in_spec_order() -> None:
    state = VideoRulesState()
    steps = [
        (view("e1", 0), None),
        (view("e1", 0, watch_ms=10**9), Reason.DUPLICATE_EVENT),  # duplicate first, though also impossible
        (view("e2", 1_000, watch_ms=10**9), Reason.IMPOSSIBLE_WATCH),  # not counted as a repeat view
        (view("e3", 2_000), None),
        (view("e4", 3_000), None),
        (view("e5", 4_000), None),
        (view("e6", 5_000), None),  # 5th counted view
        (view("e7", 6_000), Reason.VIEWER_REPEAT),  # 6th
        (view("e7", 6_000), Reason.DUPLICATE_EVENT),
    ]
    for v, reason in steps:
        assert judge_view(POLICY, state, v).verdict.reason == reason, v.event_id
    assert state.accepted_views.as_dict() == {"u1": [0, 2_000, 3_000, 4_000, 5_000]}
    assert state.velocity.ts == [0, 2_000, 3_000, 4_000, 5_000]  # viewer_repeat's rejects never reach it


def test_judge_view_with_device_state_across_videos() -> None:
    videos = {"vidA": VideoRulesState(), "vidB": VideoRulesState()}
    device = DeviceState()
    for k in range(60):
        v = view(f"e{k}", k * 500, video="vidA" if k % 2 else "vidB", viewer=f"u{k}")
        assert judge_view(POLICY, videos[v.video_id], v, device).verdict is PASS
    sixty_first = view("e60", 30_000, video="vidA", viewer="u60")
    judgement = judge_view(POLICY, videos["vidA"], sixty_first, device)
    assert judgement.verdict.reason == Reason.DEVICE_BURST
    assert [(r.video_id, r.event_id) for r in judgement.clawbacks] == [
        ("vidA" if k % 2 else "vidB", f"e{k}") for k in range(60)
    ]
    # rejected by device_burst: velocity_burst never saw it, and it supports no engagement
    assert len(videos["vidA"].velocity.ts) == 30
    assert "u60" not in videos["vidA"].accepted_views.by_key


def test_judge_view_marks_velocity_rejects_in_device_state() -> None:
    small = Policy(velocity_min_views=2, device_burst_max=5)
    state = VideoRulesState()
    device = DeviceState()
    steps = [
        (view("v1", 0, viewer="a"), None, []),
        (view("v2", 1, viewer="b"), None, []),
        (view("v3", 2, viewer="a"), None, []),  # 3 views, 2 distinct: not under half
        (view("v4", 3, viewer="a"), None, []),  # 4 views, 2 distinct: exactly half
        (view("v5", 4, viewer="a"), Reason.VELOCITY_BURST, ["v3", "v4"]),  # device: 5, not more than 5
        # device: 6 > 5; v5 was rejected by velocity_burst after device_burst saw it, so it is not clawed back
        (view("v6", 5, viewer="c"), Reason.DEVICE_BURST, ["v1", "v2", "v3", "v4"]),
    ]
    for v, reason, clawed in steps:
        judgement = judge_view(small, state, v, device)
        assert judgement.verdict.reason == reason, v.event_id
        assert [r.event_id for r in judgement.clawbacks] == clawed, v.event_id
    assert state.accepted_views.as_dict() == {"a": [0], "b": [1]}


# --- bounded state, expiry, round trip --------------------------------------------------------------------------


def _workload(seed: int, events: int, step_ms: int, viewers: int, devices: int) -> list[Event]:
    rng = random.Random(seed)
    out: list[Event] = []
    for n in range(events):
        ts = n * step_ms
        viewer = f"u{rng.randrange(viewers)}"
        device = f"d{rng.randrange(devices)}"
        if n % 5 == 4:
            kind = rng.choice(("like", "comment", "share", "follow"))
            out.append(InteractionEvent(f"i{n}", "vid1", "c1", viewer, device, ts, kind))
        else:
            # one event in 50 replays the id of the view 10 events earlier; some watch times are impossible
            event_id = f"v{n - 10}" if n % 50 == 0 and n else f"v{n}"
            watch = rng.choice((10_000, 10_000, 10_000, 10**8))
            out.append(view(event_id, ts, viewer=viewer, device=device, watch_ms=watch))
    return out


Event = ViewEvent | InteractionEvent
Outcome = tuple[str | None, tuple[ViewRef, ...]]


class Feeder:
    """Feeds one partition's events like the wiring would: settles a window once the watermark (the newest ts)
    passes its end + grace, then expires the memories."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.state = VideoRulesState()
        self.devices: dict[str, DeviceState] = {}
        self.pending: dict[int, list[InteractionEvent]] = {}

    def restored(self) -> Feeder:
        """A copy rebuilt from JSON, as after a restart."""
        copy = Feeder(self.policy)
        copy.state = VideoRulesState.from_dict(jsoncodec.loads(jsoncodec.dumps(self.state.to_dict())))
        copy.devices = {
            d: DeviceState.from_stored(jsoncodec.loads(jsoncodec.dumps(ds.to_stored())))
            for d, ds in self.devices.items()
        }
        copy.pending = {end: list(events) for end, events in self.pending.items()}
        return copy

    def feed(self, events: list[Event]) -> list[Outcome]:
        policy = self.policy
        window_ms = policy.window_s * 1000
        grace_ms = policy.grace_s * 1000
        outcomes: list[Outcome] = []
        for event in events:
            for end in sorted(e for e in self.pending if e + grace_ms <= event.ts):
                for waiting in self.pending.pop(end):
                    outcomes.append((judge_interaction_at_settlement(policy, self.state, waiting, end).reason, ()))
                expire(policy, self.state, event.ts)
                for device_id in [d for d, ds in self.devices.items() if expire_device(policy, ds, event.ts)]:
                    del self.devices[device_id]
            if isinstance(event, ViewEvent):
                device = self.devices.setdefault(event.device_id, DeviceState())
                judgement = judge_view(policy, self.state, event, device)
                if not device.ts:  # rejected before device_burst saw it
                    del self.devices[event.device_id]
                outcomes.append((judgement.verdict.reason, judgement.clawbacks))
            else:
                verdict = judge_interaction_on_arrival(policy, self.state, event)
                if verdict.passed:
                    self.pending.setdefault((event.ts // window_ms + 1) * window_ms, []).append(event)
                outcomes.append((verdict.reason, ()))
        return outcomes


def test_state_stays_bounded_over_simulated_days() -> None:
    step_ms = 4_320  # 100_000 events over 5 days: 20_000 a day
    events = _workload(7, 100_000, step_ms, viewers=3_000, devices=500)
    feeder = Feeder(POLICY)
    sizes = []
    for chunk in range(0, len(events), 5_000):
        feeder.feed(events[chunk : chunk + 5_000])
        sizes.append(feeder.state.entry_count())
    # Bound, by hand (4 events in 5 are views, 1 in 5 interactions, one every 4.32 s):
    # - event ids of both topics: kept at most (DEDUPE_S + WINDOW_S + GRACE_S) x 9/8 (a sweep every 1/8 of the
    #   horizon) = 101_587.5 s -> 23_516 events;
    # - accepted views: ENGAGEMENT_LOOKBACK + WINDOW_S + GRACE_S, plus one window as expire runs once per window,
    #   = 93_900 s -> 21_737 events x 4/5 = 17_390; likes/follows (DEDUPE_S, same span) at most x 1/5 = 4_348;
    # - repeats: 600 s x 9/8 -> 157 events; velocity: 60 s of views (14) + 61 minutes + flagged ones < 100.
    assert max(sizes) < 23_516 + 17_390 + 4_348 + 157 + 100
    # and it stops growing once a day of history is held: day 5 is no bigger than day 2 plus noise
    assert sizes[-1] < sizes[7] * 1.1
    assert len(feeder.devices) <= 500
    # each device holds only its views within DEVICE_BURST_SPAN + GRACE_S of its newest one
    assert all(d.ts[0] > d.max_ts - 360_000 for d in feeder.devices.values())
    # after a long idle stretch the watermark empties it
    expire(POLICY, feeder.state, events[-1].ts + 3 * DAY_MS)
    assert feeder.state.is_empty()


def test_round_trip_through_json_keeps_behaviour() -> None:
    # 10 minutes of dense traffic from few viewers and devices: repeats, bursts, duplicates, impossible watches
    events = _workload(11, 12_000, 50, viewers=300, devices=10)
    original = Feeder(POLICY)
    first = original.feed(events[:8_000])
    restored = original.restored()
    assert jsoncodec.dumps(restored.state.to_dict()) == jsoncodec.dumps(original.state.to_dict())
    assert original.state.entry_count() > 1_000
    rest = original.feed(events[8_000:])
    assert restored.feed(events[8_000:]) == rest
    assert jsoncodec.dumps(restored.state.to_dict()) == jsoncodec.dumps(original.state.to_dict())
    reasons = {reason for reason, _ in first + rest}
    assert {Reason.DUPLICATE_EVENT, Reason.IMPOSSIBLE_WATCH, Reason.VIEWER_REPEAT, Reason.DEVICE_BURST} <= reasons
    assert any(clawbacks for _, clawbacks in first + rest)


def test_from_dict_refuses_another_format() -> None:
    data = VideoRulesState().to_dict()
    data["format"] = 99
    with pytest.raises(SerializationError):
        VideoRulesState.from_dict(data)
    with pytest.raises(SerializationError):
        DeviceState.from_stored({"format": 0})


# --- the burst rules against a brute-force reading of the SPEC ---------------------------------------------------

SMALL = Policy(device_burst_max=3, device_burst_span_s=10, velocity_min_views=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=60_000), min_size=1, max_size=40))
def test_device_burst_flags_every_view_of_every_span_over_the_threshold(arrivals: list[int]) -> None:
    """Any arrival order (within GRACE_S): the views rejected or clawed back are exactly those in some span
    (e - 10 s, e], e the ts of one of the device's views, that holds more than 3 views; each is reported once."""
    device = DeviceState()
    reported: list[str] = []
    for n, ts in enumerate(arrivals):
        judgement = check_device_burst(SMALL, device, view(f"e{n}", ts))
        if not judgement.verdict.passed:
            reported.append(f"e{n}")
        reported.extend(ref.event_id for ref in judgement.clawbacks)
    expected: set[str] = set()
    for end in arrivals:
        inside = [n for n, ts in enumerate(arrivals) if end - 10_000 < ts <= end]
        if len(inside) > 3:
            expected.update(f"e{n}" for n in inside)
    assert sorted(reported) == sorted(expected)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=5_000), st.sampled_from("abcd")), min_size=1, max_size=40))
def test_velocity_burst_matches_a_brute_force_reading_in_order(steps: list[tuple[int, str]]) -> None:
    """In ts order: at each view, when its span (ts - 60 s, ts] holds more than max(3, 10 x baseline) views and
    fewer than half as many distinct viewers, every viewer's views after their first in it are flagged, and so
    are their minutes; the rule rejects or claws back exactly those views, each once."""
    views: list[tuple[int, str]] = []
    ts = 0
    for gap, viewer in steps:
        ts += gap * 20  # gaps of 0 ... 100 s: up to 66 minutes, so the baseline matters
        views.append((ts, viewer))
    velocity = VelocityState()
    reported: list[str] = []
    for n, (ts, viewer) in enumerate(views):
        judgement = check_velocity_burst(SMALL, velocity, view(f"e{n}", ts, viewer=viewer))
        if not judgement.verdict.passed:
            reported.append(f"e{n}")
        reported.extend(ref.event_id for ref in judgement.clawbacks)
    expected: set[str] = set()
    flagged_minutes: set[int] = set()
    for last in range(len(views)):
        end = views[last][0]
        inside = [n for n in range(last + 1) if end - 60_000 < views[n][0]]
        viewers = [views[n][1] for n in inside]
        minutes = [m for m in range(end // MINUTE - 60, end // MINUTE) if m not in flagged_minutes]
        per_minute = sum(1 for n in range(last + 1) if views[n][0] // MINUTE in minutes)
        over = len(inside) > 3 and (not minutes or len(inside) * len(minutes) > 10 * per_minute)
        if over and len(set(viewers)) * 2 < len(inside):
            for k, n in enumerate(inside):
                if viewers[k] in viewers[:k]:
                    expected.add(f"e{n}")
                    flagged_minutes.add(views[n][0] // MINUTE)
    assert sorted(reported) == sorted(expected)
