"""The authenticity rules of SPEC §6 (and §4's future_timestamp): one pure function per reason code.

The wiring calls judge_view for each view, judge_interaction_on_arrival and judge_interaction_at_settlement for
each interaction, in event order per partition; thresholds come from Policy; memories live in rules_state.
"""

from __future__ import annotations

import enum
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Protocol

from stream_app.domain.device_records import DeviceFlag
from stream_app.domain.events import InteractionEvent, ViewEvent
from stream_app.domain.policy import Policy
from stream_app.domain.rules_state import (
    FLAG_ACCOUNT,
    FLAG_BURST,
    FLAG_ELSEWHERE,
    FLAG_OVERLAP,
    MINUTE_MS,
    NOT_FLAGGED,
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
    "DeviceViewLike",
    "Reason",
    "VideoRulesState",
    "ViewJudgement",
    "ViewRef",
    "advance_device",
    "check_account_farm",
    "check_device_burst",
    "check_device_overlap",
    "check_duplicate_event",
    "check_duplicate_interaction",
    "check_engagement_without_view",
    "check_future_timestamp",
    "check_impossible_watch",
    "check_velocity_burst",
    "check_viewer_repeat",
    "device_burst_at",
    "device_burst_detail",
    "device_due_ms",
    "device_flag_delay_ms",
    "expire",
    "expire_device",
    "has_supporting_view",
    "judge_device_view",
    "judge_device_views",
    "judge_interaction_at_settlement",
    "judge_interaction_on_arrival",
    "judge_view",
    "kept_cutoff_ms",
    "kept_outlive_accounts",
    "note_account",
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
    DEVICE_OVERLAP = "device_overlap"
    ACCOUNT_FARM = "account_farm"
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
    first_seen = seen.seen.get(event_id)  # DedupeMemory.first_seen, inlined: this runs for every event
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
    earlier = repeats.count_then_add(viewer_id, ts, ts - span_ms + 1, repeats.max_ts - span_ms)
    repeats.maybe_sweep(span_ms)
    return earlier >= policy.viewer_repeat_max


class DeviceViewLike(Protocol):
    """What the device rules read of a view (a ViewEvent, or the DeviceView the device judge receives)."""

    @property
    def device_id(self) -> str: ...
    @property
    def video_id(self) -> str: ...
    @property
    def event_id(self) -> str: ...
    @property
    def viewer_id(self) -> str: ...
    @property
    def ts(self) -> int: ...
    @property
    def watch_ms(self) -> int: ...


def check_device_burst(
    policy: Policy, device: DeviceState, view: DeviceViewLike, *, forget_behind_newest: bool = True
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
    if forget_behind_newest:
        device.drop_through(max(device.max_ts, view.ts) - device_flag_delay_ms(policy))
    i = device.insert(view.ts, view.watch_ms, view.video_id, view.event_id, view.viewer_id)
    flagged: list[int] = []
    most = device_burst_at(policy, device, i, flagged)
    if not most:
        return PASS_JUDGEMENT
    verdict = AuthenticityVerdict(Reason.DEVICE_BURST, device_burst_detail(policy, view.device_id, most))
    clawbacks = tuple(device.ref(j) for j in flagged if j != i)
    return ViewJudgement(verdict, clawbacks, Reason.DEVICE_BURST if clawbacks else None)


def device_burst_at(policy: Policy, device: DeviceState, i: int, flagged_out: list[int]) -> int:
    """device_burst for the view just inserted at index i of `device` (check_device_burst without the objects).

    Marks every view of the spans over the threshold that no device rule flagged before, i included, and appends
    their indexes to flagged_out in ts order. Returns the most views of those spans (0: no burst). A view judged
    and kept by device_overlap / account_farm that a later view puts in a burst leaves the kept intervals."""
    span_ms = policy.device_burst_span_s * 1000
    limit = policy.device_burst_max
    times = device.ts
    flags = device.flags
    ts = times[i]
    last_end = bisect_left(times, ts + span_ms)
    most = 0
    covered = 0  # indexes below this were handled by an earlier span of this same call
    k = i
    while k < last_end:
        end_ts = times[k]
        hi = bisect_right(times, end_ts, k)
        lo = bisect_right(times, end_ts - span_ms, 0, i + 1)
        if hi - lo > limit:
            most = max(most, hi - lo)
            j = flags.find(NOT_FLAGGED, max(lo, covered), hi)
            while j != -1:
                flags[j] = FLAG_BURST
                if j != i and times[j] <= device.judged_through:  # judged and kept: no longer on the screen
                    device.unkeep_interval(times[j] - device.watch_ms[j], times[j], device.event_ids[j])
                flagged_out.append(j)
                j = flags.find(NOT_FLAGGED, j + 1, hi)
            covered = hi
        k = hi
    return most


def device_burst_detail(policy: Policy, device_id: str, most: int) -> str:
    return (
        f"device {device_id} has {most} views within {policy.device_burst_span_s}s across all videos "
        f"(more than {policy.device_burst_max})"
    )


def check_device_overlap(policy: Policy, device: DeviceState, start: int, end: int) -> int:
    """SPEC §6 device_overlap: "a view whose watch interval overlaps, by more than `OVERLAP_TOLERANCE_MS` 2000 in
    total, the watch intervals of that device's views not rejected by a device rule within the last
    `DEVICE_MEMORY_S` 600 (one screen shows one video at a time): that view, whatever order the views arrive in".

    [start, end] = [ts - watch_ms, ts] is the view's watch interval. "The device's views not rejected by a device
    rule" are the kept intervals (DeviceState): the judged views that no device rule rejected, ending within
    DEVICE_MEMORY_S before `end`. "In total": the overlaps with each of them, summed. Returns that total when it
    exceeds the tolerance (the view is rejected), else 0. Order: see judge_device_views.
    """
    if not policy.device_memory_s:
        return 0
    total = device.overlap_ms(start, end, end - policy.device_memory_s * 1000)
    return total if total > policy.overlap_tolerance_ms else 0


def check_account_farm(policy: Policy, device: DeviceState, viewer_id: str, ts: int) -> int:
    """SPEC §6 account_farm: "a `device_id` seen with more than `ACCOUNTS_PER_DEVICE` 8 distinct `viewer_id`s
    within `DEDUPE_S`, counting every account whose view reached the device rules, rejected by one or not: each
    view by the 9th and later accounts (in order of their first view of that device)".

    Records the account (see note_account) and returns its number in order of first view when that is over
    ACCOUNTS_PER_DEVICE (the view is rejected), else 0. "Within DEDUPE_S": an account counts while its latest
    view is less than DEDUPE_S before this one; when an earlier account drops out, the later ones move up.
    """
    rank = note_account(policy, device, viewer_id, ts)
    return rank if rank > policy.accounts_per_device else 0


def note_account(policy: Policy, device: DeviceState, viewer_id: str, ts: int) -> int:
    """Count an account seen on the device at ts (every view that reaches the device rules is counted, the rejected
    ones too); return its number in order of first view (0: DEDUPE_S is 0, no memory).

    Bounded memory: the first ACCOUNTS_PER_DEVICE + 1 accounts are remembered, which is all the rule needs to
    know who is allowed and who is next when an allowed one drops out; an account beyond them is numbered
    ACCOUNTS_PER_DEVICE + 2 (rejected) until a place frees up, then it takes the first free place as it next
    views."""
    dedupe_ms = policy.dedupe_s * 1000
    if not dedupe_ms:
        return 0
    device.forget_accounts_through(ts - dedupe_ms)
    accounts = device.accounts
    try:
        k = accounts.index(viewer_id)
    except ValueError:
        if len(accounts) > policy.accounts_per_device:
            return policy.accounts_per_device + 2
        accounts.append(viewer_id)
        device.account_last.append(ts)
        return len(accounts)
    if ts > device.account_last[k]:
        device.account_last[k] = ts
    return k + 1


def judge_device_view(policy: Policy, device: DeviceState, device_id: str, i: int, out: list[DeviceFlag]) -> None:
    """device_overlap then account_farm for the view at index i (SPEC order, after device_burst): appends a
    DeviceFlag to `out` when one rejects it, else keeps its watch interval for device_overlap."""
    ts = device.ts[i]
    viewer_id = device.viewer_ids[i]
    if device.flags[i] != NOT_FLAGGED:  # rejected by device_burst: not seen by the later rules, but its account
        note_account(policy, device, viewer_id, ts)  # reached the device rules and counts
        return
    start = ts - device.watch_ms[i]
    overlap = check_device_overlap(policy, device, start, ts)
    if overlap:
        device.flags[i] = FLAG_OVERLAP
        note_account(policy, device, viewer_id, ts)
        detail = (
            f"device {device_id} shows this view (watched {start}..{ts}) and others of the last "
            f"{policy.device_memory_s}s at the same time: {overlap} ms of overlap in total (more than "
            f"{policy.overlap_tolerance_ms}); one screen shows one video at a time"
        )
        out.append(DeviceFlag(device.video_ids[i], device.event_ids[i], Reason.DEVICE_OVERLAP, detail))
        return
    rank = check_account_farm(policy, device, viewer_id, ts)
    if rank:
        device.flags[i] = FLAG_ACCOUNT
        limit = policy.accounts_per_device
        which = f"its account number {rank}" if rank <= limit + 1 else f"not among its first {limit + 1} accounts"
        detail = (
            f"device {device_id} has more than {limit} distinct accounts within {policy.dedupe_s}s: account "
            f"{viewer_id} is {which} in order of first view"
        )
        out.append(DeviceFlag(device.video_ids[i], device.event_ids[i], Reason.ACCOUNT_FARM, detail))
        return
    device.keep_interval(start, ts, device.event_ids[i])


def judge_device_views(
    policy: Policy, device: DeviceState, device_id: str, through_ts: int, out: list[DeviceFlag]
) -> None:
    """Give every view of the device with ts up to through_ts its device_overlap / account_farm verdict.

    Order (our reading of "whatever order the views arrive in"; README, Authenticity): a device's views are
    judged in (ts, event_id) order, ts being when a view ended, each against the verdicts of the views before it,
    so the outcome is the same in any arrival order, a replay's included. The device judge calls this once a view
    can no longer be preceded by one still on its way: when the device partition's watermark is
    device_flag_delay_ms past it, or when every event partition has reported it is drained. A view that reaches
    the judge after its device was judged past its ts is judged at once, against the final verdicts on both
    sides of it (judge_device_view), without changing them.
    """
    if through_ts <= device.judged_through:
        return
    for i in range(device.pending_from(), bisect_right(device.ts, through_ts)):
        judge_device_view(policy, device, device_id, i, out)
    device.judged_through = through_ts


def device_flag_delay_ms(policy: Policy) -> int:
    """How far behind the device partition's watermark a view's device verdicts are final: DEVICE_BURST_SPAN (a
    later view can still put it in a burst) plus GRACE_S (views reach the device rules up to that much out of
    order). Also how long device_burst keeps a view: its recent views are those within this of the watermark."""
    return (policy.device_burst_span_s + policy.grace_s) * 1000


def advance_device(
    policy: Policy, device: DeviceState, device_id: str, watermark_ms: int, out: list[DeviceFlag]
) -> bool:
    """The device partition's watermark reached watermark_ms: judge what is final, then forget what no rule needs
    (expire_device). True when nothing is left (the wiring may delete the device's key)."""
    judge_device_views(policy, device, device_id, watermark_ms - device_flag_delay_ms(policy), out)
    return expire_device(policy, device, watermark_ms)


def expire_device(policy: Policy, device: DeviceState, now_ms: int) -> bool:
    """Forget a device's views at or before now_ms - (DEVICE_BURST_SPAN + GRACE_S), kept intervals DEVICE_MEMORY_S
    and accounts DEDUPE_S further back; True when none is left (the wiring may then delete the device's key).
    now_ms: the device partition's event-time watermark (or the newest ts seen there); views that reach the
    device rules more than GRACE_S out of order may be judged against an incomplete span (a missed flag, never a
    false one). Judge the views first (advance_device): views are forgotten judged or not."""
    cutoff = now_ms - device_flag_delay_ms(policy)
    device.drop_through(cutoff)
    device.drop_kept_through(kept_cutoff_ms(policy, now_ms))
    device.forget_accounts_through(cutoff - policy.dedupe_s * 1000)
    return device.is_empty()


def kept_cutoff_ms(policy: Policy, watermark_ms: int) -> int:
    """The kept watch intervals ending at or before this are forgotten once the device partition's watermark is at
    watermark_ms (expire_device)."""
    return watermark_ms - device_flag_delay_ms(policy) - policy.device_memory_s * 1000


def kept_outlive_accounts(policy: Policy) -> bool:
    """Whether a kept watch interval can outlive every account of its device. It cannot when DEDUPE_S is at least
    DEVICE_MEMORY_S (the defaults: 24 h and 10 min): a kept view noted its account with its own ts, so the account
    goes no sooner than the interval."""
    return policy.dedupe_s < policy.device_memory_s


def device_due_ms(policy: Policy, device: DeviceState) -> int | None:
    """The device partition watermark at which advance_device next has something to do for this device (judge or
    forget a view, forget an account); None when the device holds nothing.

    A view is due for judging exactly device_flag_delay_ms after it. Forgetting judged views waits for the last
    of them: the device judge drops the views the previous batch's watermark passed as it first reads a device in
    a batch (as it does kept intervals, below), so a device in a session of views is visited when its first view
    is due and once it has gone quiet, not once per view; until then the views it still holds change no verdict
    (device_burst looks DEVICE_BURST_SPAN back from views at most GRACE_S behind the watermark; the later rules
    read kept intervals and accounts). Measured: bench/RESULTS.md, Speed steps 19.

    A kept watch interval is not a due of its own when an account of the device outlives it
    (kept_outlive_accounts): it is forgotten when the device is next read for a view, a judgment or an account
    (the device judge drops the kept intervals through kept_cutoff_ms of the previous batch's watermark as it
    first reads the device in a batch, the state this due would have left), so a device that stops viewing is
    rewritten once when its accounts go, not once more when its intervals do. What such a due also did, judge a
    quiet device past the watermark (judged_through), is not done: late views of it wait for its next due and
    are judged in canonical order (README, Known limits)."""
    delay = device_flag_delay_ms(policy)
    due: int | None = None
    if device.ts:
        # a view still to judge is due exactly when it is final (the acknowledgement promises it); judged ones
        # are forgotten as the device is read, and all of them once the last is passed
        first = device.pending_from()
        due = device.ts[first if first < len(device.ts) else -1] + delay
    if device.kept_ends and (not device.account_last or kept_outlive_accounts(policy)):
        kept = device.kept_ends[0] + policy.device_memory_s * 1000 + delay
        due = kept if due is None else min(due, kept)
    if device.account_last:
        account = min(device.account_last) + policy.dedupe_s * 1000 + delay
        due = account if due is None else min(due, account)
    return due


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
    i = velocity.add_view(ts, view.viewer_id, view.event_id, span_ms, minutes)
    if i < 0:
        return PASS_JUDGEMENT
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
    when the caller holds it (device_burst is then judged in order, here; device_overlap and account_farm need
    the device's views in canonical order and are the device judge's, domain/device_judge.py); None when device
    state lives in another partition: the caller then sends each *accepted* view to the device judge there, and
    routes the flags it returns back to each video's partition (PartitionScorer.on_device_flag, note_clawback).
    An accepted view is remembered as support for engagement (judge_interaction_at_settlement).
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
            device.flags[at] = FLAG_ELSEWHERE
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
    (the device rules): it stops supporting engagement, and velocity_burst will not claw it back again."""
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
