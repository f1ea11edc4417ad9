"""The authenticity rules of SPEC §6 (and §4's future_timestamp): one pure function per reason code.

The wiring calls judge_view for each view, judge_interaction_on_arrival and judge_interaction_at_settlement for
each interaction, in event order per partition; thresholds come from Policy; memories live in rules_state.
"""

from __future__ import annotations

import enum
from bisect import bisect_left, bisect_right
from dataclasses import dataclass

from stream_app.domain.events import InteractionEvent, ViewEvent
from stream_app.domain.policy import Policy
from stream_app.domain.rules_state import (
    MINUTE_MS,
    DedupeMemory,
    DeviceState,
    TimestampsByKey,
    VelocityState,
    VideoRulesState,
    ViewRef,
)

__all__ = [
    "PASS",
    "PASS_JUDGEMENT",
    "AuthenticityVerdict",
    "DeviceState",
    "Reason",
    "VideoRulesState",
    "ViewJudgement",
    "ViewRef",
    "check_device_burst",
    "check_duplicate_event",
    "check_duplicate_interaction",
    "check_engagement_without_view",
    "check_future_timestamp",
    "check_impossible_watch",
    "check_velocity_burst",
    "check_viewer_repeat",
    "device_memory_ms",
    "expire",
    "expire_device",
    "has_supporting_view",
    "judge_interaction_at_settlement",
    "judge_interaction_on_arrival",
    "judge_view",
    "note_clawback",
]


class Reason(enum.StrEnum):
    """The reason codes of SPEC §4 and §6, spelled as the contract spells them."""

    LATE = "late"
    FUTURE_TIMESTAMP = "future_timestamp"
    DUPLICATE_EVENT = "duplicate_event"
    IMPOSSIBLE_WATCH = "impossible_watch"
    VIEWER_REPEAT = "viewer_repeat"
    DEVICE_BURST = "device_burst"
    VELOCITY_BURST = "velocity_burst"
    ENGAGEMENT_WITHOUT_VIEW = "engagement_without_view"
    DUPLICATE_INTERACTION = "duplicate_interaction"


@dataclass(frozen=True, slots=True)
class AuthenticityVerdict:
    """The outcome of the rules for one event: reason None means it passes; detail says why for the audit."""

    reason: str | None
    detail: str = ""

    @property
    def passed(self) -> bool:
        return self.reason is None


PASS = AuthenticityVerdict(None, "")


@dataclass(frozen=True, slots=True)
class ViewJudgement:
    """A view's verdict, plus the earlier accepted views the same decision now rejects (clawbacks, §5).

    A view can pass and still bring clawbacks: velocity_burst rejects each viewer's views after their first in the
    span, so the view that reveals a burst may be a first view (accepted) while earlier repeats are clawed back.
    A ref may name a view the wiring no longer counts (already clawed back by the other burst rule, whose state
    lives elsewhere): the wiring claws a view back at most once and ignores such refs.
    """

    verdict: AuthenticityVerdict
    clawbacks: tuple[ViewRef, ...] = ()
    clawback_reason: str | None = None


PASS_JUDGEMENT = ViewJudgement(PASS)


def _rejected(reason: Reason, detail: str) -> ViewJudgement:
    return ViewJudgement(AuthenticityVerdict(reason, detail))


# --- §4 -----------------------------------------------------------------------------------------------------------


def check_future_timestamp(policy: Policy, event_ts: int, record_ts_ms: int) -> bool:
    """SPEC §4: "its `ts` is more than `MAX_CLOCK_SKEW_S` *default 300* ahead of the Kafka record timestamp"."""
    return event_ts > record_ts_ms + policy.max_clock_skew_s * 1000


# --- §6, one function per reason, in SPEC order ----------------------------------------------------------------


def check_duplicate_event(policy: Policy, seen: DedupeMemory, event_id: str, ts: int) -> bool:
    """SPEC §6 duplicate_event: "a new record whose (topic, `event_id`) was already seen within `DEDUPE_S` 86400".

    `seen` is one topic's memory of one video (``VideoRulesState.event_ids_of(topic)``). Both event topics are
    keyed by video_id and an event_id names one event of one video, so per-video memory is the (topic, event_id)
    scope; an event_id reused on *another* video is read as a different event, not a duplicate. "Within" is
    measured between the two events' ts, either way round: |ts - first_seen| < DEDUPE_S. Records a new id.
    """
    dedupe_ms = policy.dedupe_s * 1000
    first_seen = seen.first_seen(event_id)
    if first_seen is not None and abs(ts - first_seen) < dedupe_ms:
        return True
    if dedupe_ms:  # DEDUPE_S 0 turns the rule off: nothing to remember
        seen.remember(event_id, ts)
    return False


def check_impossible_watch(policy: Policy, watch_ms: int, video_ms: int) -> bool:
    """SPEC §6 impossible_watch: "`watch_ms > video_ms x 20`"."""
    return watch_ms > video_ms * policy.impossible_watch_factor


def check_viewer_repeat(policy: Policy, repeats: TimestampsByKey, viewer_id: str, ts: int) -> bool:
    """SPEC §6 viewer_repeat: "a viewer's 6th and later views of one video within 600 s (looping)".

    Counts every view this rule sees (those past duplicate_event and impossible_watch), the rejected ones too: a
    bot that keeps looping stays rejected. The view is the n-th of its viewer in ``(ts - span, ts]`` (views with
    an equal ts that arrived earlier count as earlier). Records the view.
    """
    span_ms = policy.viewer_repeat_span_s * 1000
    repeats.prune_key(viewer_id, repeats.max_ts - span_ms)
    earlier = repeats.count_in(viewer_id, ts - span_ms + 1, ts)
    repeats.add(viewer_id, ts)
    repeats.maybe_sweep(span_ms)
    return earlier >= policy.viewer_repeat_max


def check_device_burst(
    policy: Policy, device: DeviceState, view: ViewEvent, *, forget_behind_newest: bool = True
) -> ViewJudgement:
    """SPEC §6 device_burst: "a `device_id` with more than 60 views within 60 s across all videos: every view of
    that device in that span, the earlier ones by clawback, and its further views while it stays above the
    threshold".

    `device` is the state of view.device_id. A span is ``(e - 60 s, e]`` ending at the ts e of one of the device's
    views; the spans that hold this view end at views with ts in ``[ts, ts + 60 s)`` (one span when views arrive
    in order). When any of them holds more than 60 views, this view is rejected and every earlier view in those
    spans not flagged before is returned for clawback. Every view counts, flagged ones too. Records the view.

    `forget_behind_newest`: first forget the device's views more than span + GRACE_S behind its newest one
    (right when the device's views arrive in ts order, give or take GRACE_S). A caller whose views come from
    sources running at different event times passes False and expires with `expire_device` at the watermark
    of its sources instead.
    """
    span_ms = policy.device_burst_span_s * 1000
    limit = policy.device_burst_max
    if forget_behind_newest:
        device.drop_through(max(device.max_ts, view.ts) - device_memory_ms(policy))
    i = device.insert(view.ts, view.video_id, view.event_id, view.viewer_id)
    times = device.ts
    flagged = device.flagged
    last_end = bisect_left(times, view.ts + span_ms)
    clawbacks: list[ViewRef] = []
    most = 0
    covered = 0  # indexes below this were handled by an earlier span of this same call
    k = i
    while k < last_end:
        end_ts = times[k]
        hi = bisect_right(times, end_ts, k)
        lo = bisect_right(times, end_ts - span_ms, 0, i + 1)
        if hi - lo > limit:
            most = max(most, hi - lo)
            j = flagged.find(0, max(lo, covered), hi)
            while j != -1:
                flagged[j] = 1
                if j != i:
                    clawbacks.append(device.ref(j))
                j = flagged.find(0, j + 1, hi)
            covered = hi
        k = hi
    if not most:
        return PASS_JUDGEMENT
    verdict = AuthenticityVerdict(
        Reason.DEVICE_BURST,
        f"device {view.device_id} has {most} views within {policy.device_burst_span_s}s across all videos "
        f"(more than {limit})",
    )
    return ViewJudgement(verdict, tuple(clawbacks), Reason.DEVICE_BURST if clawbacks else None)


def check_velocity_burst(policy: Policy, velocity: VelocityState, view: ViewEvent) -> ViewJudgement:
    """SPEC §6 velocity_burst: "a video's views within 60 s exceed max(200, 10 x its baseline: the mean views per
    minute over the previous 60 minutes, empty minutes counted as zero, flagged minutes left out) while distinct
    viewers are under half of those views: each viewer's views after their first in that span".

    Our reading, exact when views arrive in ts order:
    - the span is ``(max_ts - 60 s, max_ts]``, ending at the newest view of the video (this view's ts when in
      order); a view at or before ``max_ts - 60 s`` is outside every span still open and passes;
    - minutes are epoch-aligned (ts // 60_000); the baseline is over the 60 whole minutes before the span end's
      minute; a minute is *flagged* when a view in it was rejected or clawed back by this rule; a baseline over
      no unflagged minute is 0;
    - every view this rule sees counts (views, distinct viewers, minute counts), including the ones it rejects;
    - "after their first" is in ts order (ties: arrival order). When the burst is first recognised, the earlier
      non-first views of the span are clawed back; while it lasts, each new repeat view is rejected.
    Records the view.
    """
    span_ms = policy.velocity_span_s * 1000
    minutes = policy.velocity_baseline_minutes
    ts = view.ts
    velocity.count_minute(ts, minutes)
    if ts > velocity.max_ts:
        velocity.advance(ts, span_ms, minutes)
    elif ts <= velocity.max_ts - span_ms:
        return PASS_JUDGEMENT
    i = velocity.insert(ts, view.viewer_id, view.event_id)
    first = velocity.start
    views = len(velocity.ts) - first
    distinct = len(velocity.viewer_counts)
    if views <= policy.velocity_min_views or distinct * 100 >= views * policy.velocity_distinct_ratio_pct:
        velocity.in_burst = False
        return PASS_JUDGEMENT
    base_views, base_minutes = velocity.baseline(velocity.max_ts // MINUTE_MS, minutes)
    # views > factor x base_views / base_minutes, kept in integers
    if base_minutes and views * base_minutes <= policy.velocity_baseline_factor * base_views:
        velocity.in_burst = False
        return PASS_JUDGEMENT

    clawbacks: list[ViewRef] = []
    flagged = velocity.flagged
    if velocity.in_burst and i == len(velocity.ts) - 1:
        # In order, mid-burst: every earlier repeat of the span was flagged when it arrived; only this view is new.
        if velocity.viewer_counts[view.viewer_id] > 1:
            flagged[i] = 1
    else:
        first_seen: set[str] = set()
        span_viewers = velocity.viewers
        for k in range(first, len(span_viewers)):
            viewer = span_viewers[k]
            if viewer not in first_seen:
                first_seen.add(viewer)
            elif not flagged[k]:
                flagged[k] = 1
                if k != i:
                    k_ts = velocity.ts[k]
                    clawbacks.append(ViewRef(view.video_id, velocity.event_ids[k], viewer, k_ts))
                    velocity.flagged_minutes.add(k_ts // MINUTE_MS)
    velocity.in_burst = True
    claw_reason = Reason.VELOCITY_BURST if clawbacks else None
    if not flagged[i]:
        return ViewJudgement(PASS, tuple(clawbacks), claw_reason)
    velocity.flagged_minutes.add(ts // MINUTE_MS)
    verdict = AuthenticityVerdict(
        Reason.VELOCITY_BURST,
        f"{views} views within {policy.velocity_span_s}s exceed max({policy.velocity_min_views}, "
        f"{policy.velocity_baseline_factor} x baseline {base_views}/{base_minutes} per minute) with {distinct} "
        f"distinct viewers; viewer {view.viewer_id} already viewed in that span",
    )
    return ViewJudgement(verdict, tuple(clawbacks), claw_reason)


def has_supporting_view(
    policy: Policy, accepted_views: TimestampsByKey, viewer_id: str, ts_i: int, window_end_ms: int
) -> bool:
    """Whether viewer_id has an accepted view with ts in ``[ts_i - 86_400_000, window_end + GRACE_S·1000]``."""
    first = ts_i - policy.engagement_lookback_s * 1000
    last = window_end_ms + policy.grace_s * 1000
    return accepted_views.count_in(viewer_id, first, last) > 0


def check_engagement_without_view(
    policy: Policy, accepted_views: TimestampsByKey, interaction: InteractionEvent, window_end_ms: int
) -> bool:
    """SPEC §6 engagement_without_view: "judged at settlement: an interaction whose viewer has no accepted view
    of that video with `ts` in `[ts_i - 86_400_000, window_end + GRACE_S·1000]`".

    "Accepted" reads as accepted and not clawed back since (note_clawback forgets a clawed-back view).
    """
    return not has_supporting_view(policy, accepted_views, interaction.viewer_id, interaction.ts, window_end_ms)


def check_duplicate_interaction(
    policy: Policy, interactions: dict[str, TimestampsByKey], interaction: InteractionEvent
) -> bool:
    """SPEC §6 duplicate_interaction: "a `like` or `follow` by a viewer who already has one of that kind on that
    video within `DEDUPE_S` (comments and shares may repeat)".

    The kinds are Policy.duplicate_interaction_kinds. "Already has one": an accepted one (past every rule) whose
    ts is less than DEDUPE_S from this one, either way round (interactions are judged window by window, so an
    earlier-judged one may carry a later ts). Records an accepted one of those kinds.
    """
    kind = interaction.kind
    if kind not in policy.duplicate_interaction_kinds:  # comments, shares, unknown kinds: they may repeat
        return False
    dedupe_ms = policy.dedupe_s * 1000
    ts = interaction.ts
    memory = interactions.get(kind)
    if memory is None:
        memory = interactions[kind] = TimestampsByKey()
    elif memory.count_in(interaction.viewer_id, ts - dedupe_ms + 1, ts + dedupe_ms - 1):
        return True
    memory.add(interaction.viewer_id, ts)
    return False


# --- entry points per event ------------------------------------------------------------------------------------


def judge_view(
    policy: Policy, state: VideoRulesState, view: ViewEvent, device: DeviceState | None = None
) -> ViewJudgement:
    """Apply the view rules in SPEC order; a view rejected by one is not seen by the later ones.

    Call after the §4 checks (invalid, late, future_timestamp). `device` is the DeviceState of view.device_id
    when the caller holds it (device_burst is then judged in order, here); None when device state lives in
    another partition: the caller then sends each *accepted* view to check_device_burst there, and routes the
    clawbacks it returns back to each video's partition (note_clawback). An accepted view is remembered as
    support for engagement (judge_interaction_at_settlement).
    """
    if check_duplicate_event(policy, state.view_ids, view.event_id, view.ts):
        return _rejected(
            Reason.DUPLICATE_EVENT,
            f"event_id {view.event_id} already seen on video-views within {policy.dedupe_s}s",
        )
    if check_impossible_watch(policy, view.watch_ms, view.video_ms):
        return _rejected(
            Reason.IMPOSSIBLE_WATCH,
            f"watch_ms {view.watch_ms} > video_ms {view.video_ms} x {policy.impossible_watch_factor}",
        )
    if check_viewer_repeat(policy, state.repeats, view.viewer_id, view.ts):
        return _rejected(
            Reason.VIEWER_REPEAT,
            f"viewer {view.viewer_id} has more than {policy.viewer_repeat_max} views of the video within "
            f"{policy.viewer_repeat_span_s}s",
        )
    if device is not None:
        device_judgement = check_device_burst(policy, device, view)
        if not device_judgement.verdict.passed:
            return device_judgement
    judgement = check_velocity_burst(policy, state.velocity, view)
    for ref in judgement.clawbacks:
        state.accepted_views.discard(ref.viewer_id, ref.ts)
    if judgement.verdict.passed:
        state.accepted_views.add(view.viewer_id, view.ts)
    elif device is not None:
        # rejected after device_burst saw it: the device rule must not claw it back later
        at = device.index_of(view.event_id, view.ts)
        if at is not None:
            device.flagged[at] = 1
    return judgement


def judge_interaction_on_arrival(
    policy: Policy, state: VideoRulesState, interaction: InteractionEvent
) -> AuthenticityVerdict:
    """duplicate_event for an interaction, checked (and the id remembered) when it arrives.

    The id must be remembered at arrival, so a duplicate is known before its window settles; the wiring counts
    the outcome when the window settles (§4), or at once, as it documents.
    """
    if check_duplicate_event(policy, state.interaction_ids, interaction.event_id, interaction.ts):
        return AuthenticityVerdict(
            Reason.DUPLICATE_EVENT,
            f"event_id {interaction.event_id} already seen on video-interactions within {policy.dedupe_s}s",
        )
    return PASS


def judge_interaction_at_settlement(
    policy: Policy, state: VideoRulesState, interaction: InteractionEvent, window_end_ms: int
) -> AuthenticityVerdict:
    """engagement_without_view then duplicate_interaction, for an interaction of the window ending at
    window_end_ms, when that window settles. Judge a window's interactions in (ts, arrival) order."""
    if check_engagement_without_view(policy, state.accepted_views, interaction, window_end_ms):
        lookback_s = policy.engagement_lookback_s
        return AuthenticityVerdict(
            Reason.ENGAGEMENT_WITHOUT_VIEW,
            f"viewer {interaction.viewer_id} has no accepted view of the video from {lookback_s}s before the "
            f"{interaction.kind} to window end + {policy.grace_s}s",
        )
    if check_duplicate_interaction(policy, state.interactions, interaction):
        return AuthenticityVerdict(
            Reason.DUPLICATE_INTERACTION,
            f"viewer {interaction.viewer_id} already has a {interaction.kind} on the video within {policy.dedupe_s}s",
        )
    return PASS


def note_clawback(state: VideoRulesState, ref: ViewRef) -> None:
    """Tell a video's rules that one of its accepted views was clawed back by a rule whose state is elsewhere
    (device_burst): it stops supporting engagement, and velocity_burst will not claw it back again."""
    state.accepted_views.discard(ref.viewer_id, ref.ts)
    at = state.velocity.index_of(ref.event_id, ref.ts)
    if at is not None:
        state.velocity.flagged[at] = 1


# --- expiry ------------------------------------------------------------------------------------------------------


def expire(policy: Policy, state: VideoRulesState, watermark_ms: int) -> None:
    """Forget what no event still to come can need; call after each settlement pass and on idle sweeps.

    watermark_ms is the partition's settlement watermark (§5), never ahead of it. An event that is not late has
    ts > reach = watermark - (WINDOW_S + GRACE_S)·1000, so each memory drops what lies at or before reach minus
    its own span: DEDUPE_S for event ids and likes/follows, VIEWER_REPEAT_SPAN for repeats, VELOCITY_SPAN for
    the head span (and minute counts older than the baseline), ENGAGEMENT_LOOKBACK for accepted views. The short
    memories also forget lazily as the video's own event time moves (see rules_state). When
    state.is_empty() afterwards, the wiring may drop it.
    """
    reach = watermark_ms - (policy.window_s + policy.grace_s) * 1000
    dedupe_ms = policy.dedupe_s * 1000
    state.view_ids.expire(reach - dedupe_ms)
    state.interaction_ids.expire(reach - dedupe_ms)
    state.repeats.expire(reach - policy.viewer_repeat_span_s * 1000)
    velocity = state.velocity
    velocity.drop_through(reach - policy.velocity_span_s * 1000)
    velocity.forget_minutes_before(max(velocity.max_ts, reach) // MINUTE_MS - policy.velocity_baseline_minutes)
    state.accepted_views.expire(reach - policy.engagement_lookback_s * 1000)
    for kind, memory in list(state.interactions.items()):
        memory.expire(reach - dedupe_ms)
        if not memory.by_key:
            del state.interactions[kind]


def device_memory_ms(policy: Policy) -> int:
    """How far behind the newest view (or the device partition's watermark) a device's views still matter:
    DEVICE_BURST_SPAN, plus GRACE_S for views that reach the device rule out of order."""
    return (policy.device_burst_span_s + policy.grace_s) * 1000


def expire_device(policy: Policy, device: DeviceState, now_ms: int) -> bool:
    """Forget a device's views at or before now_ms - (DEVICE_BURST_SPAN + GRACE_S); True when none is left (the
    wiring may then delete the device's key). now_ms: the device partition's event-time watermark (or the
    newest ts seen there); views that reach the device rule more than GRACE_S out of order may be judged against
    an incomplete span (a missed flag, never a false one)."""
    device.drop_through(now_ms - device_memory_ms(policy))
    return not device.ts
