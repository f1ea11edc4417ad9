"""One video's state (SPEC §5, §7): windows, qualification, settlement, clawback and the running accrual.

A `VideoLedger` has two parts, stored differently because they grow differently:

- its **head**: totals, open windows' aggregates, settled windows that can still be clawed back, replay positions,
  version. Small and bounded; written whole (codec.Kind.HEAD) at the end of every batch that changed it.
- its **memories** (`VideoMemory`): what the rules and qualify-once remember about every viewer and event of the
  last day, accepted views kept for clawback, interactions waiting for their window. They grow with traffic, so
  they are never written whole: the partition's journal (domain/journal.py) records what changed them, and a
  restarted worker rebuilds them by replaying it through the same functions the live path calls (the methods
  marked *memory* below; the methods marked *head* are the live path's alone).

Pure: the caller passes events with their positions, verdicts come from rules.py, eligibility from profiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from stream_app.domain import policy as pol
from stream_app.domain import rules
from stream_app.domain.events import InputTopic, InteractionEvent, Outcome, ViewEvent
from stream_app.domain.records import Accrual, Clawback, Settlement
from stream_app.domain.rules_state import ExpiryIndex, TimestampsByKey, VideoRulesState
from stream_app.domain.windows import settle_deadline_ms, window_bounds, window_index

VIEWS = InputTopic.VIEWS
INTERACTIONS = InputTopic.INTERACTIONS
NOT_APPLIED = -1  # applied offset of a topic nothing was applied from yet


def recent_views_keep_ms(policy: pol.Policy) -> int:
    """How far behind a video's newest accepted view a view can still be clawed back by a per-video rule or a
    device flag that arrives in time (event time)."""
    span_s = max(policy.device_burst_span_s, policy.velocity_span_s)
    return (span_s + policy.flag_latency_allowance_s) * 1000


def recent_views_cutoff(policy: pol.Policy, event_cutoff_ms: int, newest_ts: int, flag_safe_ms: int | None) -> int:
    """The ts at or before which accepted views may be forgotten: `event_cutoff_ms` (the per-video rules are done
    with them) but, when device flags come from elsewhere (`flag_safe_ms` not None), no later than the ts through
    which the device judge can send no more flags, and at the latest DEVICE_FLAG_HOLD_S behind `newest_ts`."""
    if flag_safe_ms is None:
        return event_cutoff_ms
    return min(event_cutoff_ms, max(flag_safe_ms, newest_ts - policy.device_flag_hold_s * 1000))


class Position(NamedTuple):
    """Where an event came from: the replay key of SPEC §4 (index -1 stands for a single-object record). A
    NamedTuple, like the events (domain/events.py): one is built per event. `index` shadows tuple.index."""

    partition: int
    offset: int
    index: int  # type: ignore[assignment]

    @property
    def index_or_none(self) -> int | None:
        return None if self.index < 0 else self.index


class EventOutcome(NamedTuple):
    """An event's outcome to count (and, unless accepted, to audit)."""

    topic: InputTopic
    outcome: Outcome
    reason: str
    detail: str
    event: ViewEvent | InteractionEvent
    position: Position


@dataclass(slots=True)
class Window:
    """One open tumbling window of one video (SPEC §5). Interactions waiting for it are in the memories."""

    views: int = 0
    qualifying_views: int = 0
    qualifying_base_micros: int = 0
    watch_ms: int = 0
    completion_sum: int = 0  # sum of completion_bps over its qualifying views
    viewers: int = 0  # distinct viewers with an accepted view in it

    def to_list(self, k: int) -> list[int]:
        return [
            k,
            self.views,
            self.qualifying_views,
            self.qualifying_base_micros,
            self.watch_ms,
            self.completion_sum,
            self.viewers,
        ]


@dataclass(slots=True)
class SettledWindow:
    """A settled window while views of it can still be clawed back: its settlement and the clawbacks so far."""

    base_micros: int
    multiplier_bps: int
    settled_micros: int
    clawed_base_micros: int = 0
    qualified_views: int = 0
    score: int = 0
    settled_at: int = 0  # wall clock ms when it settled
    completion_bps: int = 0

    def to_list(self, k: int) -> list[int]:
        return [
            k,
            self.base_micros,
            self.multiplier_bps,
            self.settled_micros,
            self.clawed_base_micros,
            self.qualified_views,
            self.score,
            self.settled_at,
            self.completion_bps,
        ]


@dataclass(slots=True)
class RecentView:
    """An accepted view remembered long enough to be clawed back: the event's fields (for its audit record:
    `event_of`), where it came from, and what it counted for.

    One object per view, and the video and creator ids are its ledger's (a view naming another creator than its
    video's is rejected before it is remembered: PartitionScorer.on_event): a video keeps every accepted view for
    its clawback horizon (tens of minutes, all of them when the device judge lags), and the decoded event with its
    own copies of those ids cost about 200 bytes more per view (bench/RESULTS.md, Speed steps 14)."""

    event_id: str
    viewer_id: str
    device_id: str
    ts: int
    watch_ms: int
    video_ms: int
    source: str
    region: str
    offset: int
    index: int
    window: int
    qualifying: bool
    base_micros: int
    completion: int
    clawed: bool = False

    def event_of(self, ledger: VideoLedger) -> ViewEvent:
        """The view's event as it was read (its ledger holds the video and creator ids)."""
        return ViewEvent(
            self.event_id,
            ledger.video_id,
            ledger.creator_id,
            self.viewer_id,
            self.device_id,
            self.ts,
            self.watch_ms,
            self.video_ms,
            self.source,
            self.region,
        )


# An interaction waiting for its window to settle: (event, offset, index).
PendingInteraction = tuple[InteractionEvent, int, int]


@dataclass(slots=True)
class JudgedInteraction:
    """An interaction of a settling window with its verdict (engagement_without_view, duplicate_interaction)."""

    event: InteractionEvent
    offset: int
    index: int
    verdict: rules.AuthenticityVerdict


class VideoMemory:
    """What one video remembers beyond its head (see the module docstring)."""

    __slots__ = ("pending", "qualified", "recent", "recent_index", "recent_windows", "rules")

    def __init__(self) -> None:
        self.rules = VideoRulesState()
        # viewer -> ts of their qualifying views within QUALIFY_ONCE_S (a view counts once per account)
        self.qualified = TimestampsByKey()
        # event_id -> accepted view kept for clawback, and which ones to forget when
        self.recent: dict[str, RecentView] = {}
        self.recent_index = ExpiryIndex()
        self.recent_windows: dict[int, int] = {}  # window -> how many of its views `recent` holds
        # window -> interactions waiting for it to settle, in arrival order
        self.pending: dict[int, list[PendingInteraction]] = {}

    def pending_count(self) -> int:
        return sum(len(p) for p in self.pending.values())

    def is_empty(self) -> bool:
        return not (self.recent or self.pending or self.qualified.by_key) and self.rules.is_empty()


@dataclass(slots=True)
class WindowSettlement:
    record: Settlement
    judged: list[JudgedInteraction]


@dataclass(slots=True)
class VideoLedger:
    video_id: str
    creator_id: str
    version: int = 0
    published_version: int = 0  # the newest version whose accrual the broker acknowledged
    views: int = 0
    suspicious_views: int = 0
    settled_micros: int = 0
    clawback_micros: int = 0
    settled_qualified_views: int = 0
    windows_settled: int = 0
    last_settled_window: int | None = None
    updated_at: int = 0
    eligible: bool = False  # the creator's eligibility at the video's latest event
    # replay positions (SPEC §4): the last (offset, index) applied per input event topic
    views_applied: tuple[int, int] = (NOT_APPLIED, 0)
    interactions_applied: tuple[int, int] = (NOT_APPLIED, 0)
    journal_seq: int = -1  # the newest journal segment whose operations on this video this head includes
    quiet_bucket: int = -1  # not stored: the last bucket of PartitionScorer's quiet-video index it was noted in
    windows: dict[int, Window] = field(default_factory=dict)
    settled: dict[int, SettledWindow] = field(default_factory=dict)
    memory: VideoMemory = field(default_factory=VideoMemory)

    # ---- replay (SPEC §4) · head ----

    def already_applied(self, topic: InputTopic, offset: int, index: int) -> bool:
        done = self.views_applied if topic is VIEWS else self.interactions_applied
        return (offset, index) <= done

    def mark_applied(self, topic: InputTopic, offset: int, index: int) -> None:
        if topic is VIEWS:
            self.views_applied = (offset, index)
        else:
            self.interactions_applied = (offset, index)

    # ---- windows · head ----

    def is_late(self, policy: pol.Policy, ts: int, watermark_ms: int | None) -> bool:
        """A window already settled for this video, or whose settle deadline the watermark has passed."""
        k = window_index(ts, policy.window_s)
        if self.last_settled_window is not None and k <= self.last_settled_window and k not in self.windows:
            return True
        return watermark_ms is not None and watermark_ms >= settle_deadline_ms(k, policy.window_s, policy.grace_s)

    def window(self, k: int) -> Window:
        window = self.windows.get(k)
        if window is None:
            window = self.windows[k] = Window()
        return window

    def next_deadline(self, policy: pol.Policy) -> int | None:
        if not self.windows:
            return None
        return settle_deadline_ms(min(self.windows), policy.window_s, policy.grace_s)

    # ---- views ----

    def remember_view(self, policy: pol.Policy, view: ViewEvent, offset: int, index: int) -> RecentView:
        """*memory*: an accepted view (rules.judge_view passed it): decide whether it qualifies (once per viewer
        within QUALIFY_ONCE_S) and keep it for clawback."""
        memory = self.memory
        k = window_index(view.ts, policy.window_s)
        qualifying = pol.is_qualifying_view(
            policy, watch_ms=view.watch_ms, video_ms=view.video_ms, source=view.source
        ) and not self._qualified_recently(policy, view.viewer_id, view.ts)
        base = 0
        completion = 0
        if qualifying:
            base = pol.base_rate_micros(policy, view.region)
            completion = pol.view_completion_bps(view.watch_ms, view.video_ms)
            memory.qualified.add(view.viewer_id, view.ts)
        recent = RecentView(
            view.event_id,
            view.viewer_id,
            view.device_id,
            view.ts,
            view.watch_ms,
            view.video_ms,
            view.source,
            view.region,
            offset,
            index,
            k,
            qualifying,
            base,
            completion,
        )
        memory.recent[view.event_id] = recent
        recent_index = memory.recent_index  # ExpiryIndex.note, inlined: this runs for every accepted view
        keys = recent_index.buckets.get(view.ts // recent_index.bucket_ms)
        if keys is None:
            recent_index.note(view.event_id, view.ts)
        else:
            keys.append(view.event_id)
        memory.recent_windows[k] = memory.recent_windows.get(k, 0) + 1
        return recent

    def count_view(self, policy: pol.Policy, recent: RecentView) -> None:
        """*head*: count a remembered accepted view in its window and the totals."""
        window = self.window(recent.window)
        window.views += 1
        window.watch_ms += recent.watch_ms
        if self._first_in_window(policy, recent.viewer_id, recent.window):
            window.viewers += 1
        self.views += 1
        if recent.qualifying:
            window.qualifying_views += 1
            window.qualifying_base_micros += recent.base_micros
            window.completion_sum += recent.completion

    def _first_in_window(self, policy: pol.Policy, viewer_id: str, k: int) -> bool:
        # rules.judge_view has already remembered this view among the viewer's accepted views
        held = self.memory.rules.accepted_views.by_key.get(viewer_id)
        if type(held) is int:  # the viewer's only accepted view of the video: this one (the common case)
            return True
        start_ms, end_ms = window_bounds(k, policy.window_s)
        return self.memory.rules.accepted_views.count_in(viewer_id, start_ms, end_ms - 1) == 1

    def _qualified_recently(self, policy: pol.Policy, viewer_id: str, ts: int) -> bool:
        span_ms = policy.qualify_once_s * 1000
        return self.memory.qualified.count_in(viewer_id, ts - span_ms + 1, ts + span_ms - 1) > 0

    def forget_clawed(self, event_id: str, *, judged_elsewhere: bool) -> RecentView | None:
        """*memory*: an accepted view a rule now rejects stops counting; None when it is not remembered or was
        clawed back already. `judged_elsewhere`: the rule's state is not this video's (a device rule), so the
        video's own rules learn of it here (rules.judge_view handles velocity_burst's own)."""
        recent = self.memory.recent.get(event_id)
        if recent is None or recent.clawed:
            return None
        recent.clawed = True
        if judged_elsewhere:
            rules.note_clawback(self.memory.rules, rules.ViewRef(self.video_id, event_id, recent.viewer_id, recent.ts))
        return recent

    def uncount_view(self, policy: pol.Policy, recent: RecentView) -> int:
        """*head*: remove a clawed-back view from its window or, once settled, claw back its money; returns the
        clawback micros (SPEC §5: in an open window the view simply stops counting; in a settled one the
        multiplier stays as settled)."""
        self.suspicious_views += 1
        window = self.windows.get(recent.window)
        if window is not None:
            window.views -= 1
            window.watch_ms -= recent.watch_ms
            if recent.qualifying:
                window.qualifying_views -= 1
                window.qualifying_base_micros -= recent.base_micros
                window.completion_sum -= recent.completion
            return 0
        settled = self.settled.get(recent.window)
        if settled is None or not recent.qualifying:
            return 0
        if settled.base_micros:
            # it was a qualified view of the settled window: the accrual's total no longer counts it, whichever
            # came first, the flag or the settlement (SPEC §7 holds qualified_views to that)
            self.settled_qualified_views -= 1
        before = pol.clawback_micros(
            settled.settled_micros, settled.base_micros, settled.clawed_base_micros, settled.multiplier_bps
        )
        settled.clawed_base_micros += recent.base_micros
        after = pol.clawback_micros(
            settled.settled_micros, settled.base_micros, settled.clawed_base_micros, settled.multiplier_bps
        )
        self.clawback_micros += after - before
        return after - before

    # ---- interactions ----

    def hold_interaction(self, policy: pol.Policy, interaction: InteractionEvent, offset: int, index: int) -> None:
        """*memory*: interactions are judged when their window settles (SPEC §4, §6)."""
        k = window_index(interaction.ts, policy.window_s)
        self.memory.pending.setdefault(k, []).append((interaction, offset, index))

    def judge_pending(self, policy: pol.Policy, k: int) -> list[JudgedInteraction]:
        """*memory*: judge window k's interactions (SPEC §6, in (ts, arrival) order) as it settles."""
        _, end_ms = window_bounds(k, policy.window_s)
        state = self.memory.rules
        judged = []
        for event, offset, index in sorted(self.memory.pending.pop(k, ()), key=lambda p: p[0].ts):
            verdict = rules.judge_interaction_at_settlement(policy, state, event, end_ms)
            judged.append(JudgedInteraction(event, offset, index, verdict))
        return judged

    # ---- settlement · head ----

    def settle(
        self,
        policy: pol.Policy,
        policy_id: str,
        k: int,
        eligible: bool,
        judged: list[JudgedInteraction],
        now_ms: int = 0,
    ) -> WindowSettlement:
        """Fix window k's money from its counts and its judged interactions, and write the settlement record."""
        window = self.windows.pop(k, None) or Window()
        accepted_interactions = 0
        likes = comments = shares = follows = 0
        for item in judged:
            if item.verdict.reason is not None:
                continue
            accepted_interactions += 1
            kind = item.event.kind
            if kind == "like":
                likes += 1
            elif kind == "comment":
                comments += 1
            elif kind == "share":
                shares += 1
            elif kind == "follow":
                follows += 1
        totals = pol.WindowTotals(
            qualified_views=window.qualifying_views,
            base_micros=window.qualifying_base_micros,
            likes=likes,
            comments=comments,
            shares=shares,
            follows=follows,
            completion_bps_sum=window.completion_sum,
        )
        settled = pol.settle(policy, totals, eligible)
        self.settled[k] = SettledWindow(
            settled.base_micros,
            settled.multiplier_bps,
            settled.settled_micros,
            qualified_views=settled.qualified_views,
            score=settled.score,
            settled_at=now_ms,
            completion_bps=settled.completion_bps,
        )
        self.settled_micros += settled.settled_micros
        self.settled_qualified_views += settled.qualified_views
        if window.views > 0 or accepted_interactions > 0:
            self.windows_settled += 1
        if self.last_settled_window is None or k > self.last_settled_window:
            self.last_settled_window = k
        return WindowSettlement(self.settlement_record(policy, policy_id, k), judged)

    def settlement_record(self, policy: pol.Policy, policy_id: str, k: int) -> Settlement:
        """The settlement record of settled window k (SPEC §5)."""
        settled = self.settled[k]
        start_ms, end_ms = window_bounds(k, policy.window_s)
        return Settlement(
            video_id=self.video_id,
            creator_id=self.creator_id,
            window_start=start_ms,
            window_end=end_ms,
            qualified_views=settled.qualified_views,
            base_micros=settled.base_micros,
            score=settled.score,
            completion_bps=settled.completion_bps,
            multiplier_bps=settled.multiplier_bps,
            settled_micros=settled.settled_micros,
            policy=policy_id,
        )

    def clawback_record(self, policy: pol.Policy, policy_id: str, k: int, amount: int) -> Clawback:
        """The clawback record of one rejection in settled window k (SPEC §5)."""
        settled = self.settled[k]
        start_ms, end_ms = window_bounds(k, policy.window_s)
        return Clawback(
            video_id=self.video_id,
            creator_id=self.creator_id,
            window_start=start_ms,
            window_end=end_ms,
            base_micros=settled.base_micros,
            clawed_base_micros=settled.clawed_base_micros,
            multiplier_bps=settled.multiplier_bps,
            settled_micros=settled.settled_micros,
            clawback_micros=amount,
            policy=policy_id,
        )

    # ---- expiry ----

    def expire_memory(self, policy: pol.Policy, watermark_ms: int, flag_safe_ms: int | None) -> None:
        """*memory*: forget what no rule can need any more at this watermark. `flag_safe_ms`: see
        recent_views_cutoff (the watermark may be the wall clock, far ahead of the views device flags concern)."""
        memory = self.memory
        memory.qualified.expire(watermark_ms - (policy.qualify_once_s + policy.window_s + policy.grace_s) * 1000)
        newest = memory.rules.accepted_views.max_ts
        self.trim_recent(recent_views_cutoff(policy, watermark_ms - recent_views_keep_ms(policy), newest, flag_safe_ms))
        rules.expire(policy, memory.rules, watermark_ms)

    def trim_recent(self, cutoff_ms: int) -> bool:
        """*memory*: forget accepted views at or before cutoff_ms; True when some were forgotten."""
        memory = self.memory
        recent = memory.recent
        windows = memory.recent_windows
        before = len(recent)
        for event_id in memory.recent_index.due(cutoff_ms):
            view = recent.get(event_id)
            if view is not None and view.ts <= cutoff_ms:
                del recent[event_id]
                left = windows[view.window] - 1
                if left:
                    windows[view.window] = left
                else:
                    del windows[view.window]
        return len(recent) != before

    def recent_trim_due(self, cutoff_ms: int) -> bool:
        """Whether trim_recent(cutoff_ms) would look at anything (cheap: no scan)."""
        index = self.memory.recent_index
        return (cutoff_ms + 1) // index.bucket_ms - 1 >= index.first

    def expire_head(self, policy: pol.Policy, watermark_ms: int) -> None:
        """*head*: settled windows are kept while a view of theirs can still be clawed back: within
        CLAWBACK_HORIZON_S and while the memories still hold an accepted view of theirs."""
        if not self.settled:
            return
        horizon_k = window_index(max(0, watermark_ms - policy.clawback_horizon_s * 1000), policy.window_s)
        recent_windows = self.memory.recent_windows
        for k in [k for k in self.settled if k < horizon_k or k not in recent_windows]:
            del self.settled[k]

    # ---- output ----

    def provisional_micros(self, eligible_now: bool) -> int:
        base = 0
        for window in self.windows.values():
            base += window.qualifying_base_micros
        return pol.provisional_micros(base, eligible_now)

    def open_qualified_views(self, eligible_now: bool) -> int:
        if not eligible_now:
            return 0
        views = 0
        for window in self.windows.values():
            views += window.qualifying_views
        return views

    def content_key(self) -> tuple[int, ...]:
        """What the accrual says (SPEC §7, besides version and updated_at): a change here is a new version."""
        eligible = self.eligible
        return (
            self.settled_micros,
            self.clawback_micros,
            self.provisional_micros(eligible),
            self.settled_qualified_views + self.open_qualified_views(eligible),
            self.views,
            self.suspicious_views,
            self.windows_settled,
            int(eligible),
        )

    def accrual(self, policy_id: str) -> Accrual:
        """The Accrual record (SPEC §7)."""
        eligible = self.eligible
        return Accrual(
            video_id=self.video_id,
            creator_id=self.creator_id,
            policy=policy_id,
            version=self.version,
            settled_micros=self.settled_micros,
            clawback_micros=self.clawback_micros,
            provisional_micros=self.provisional_micros(eligible),
            qualified_views=self.settled_qualified_views + self.open_qualified_views(eligible),
            views=self.views,
            suspicious_views=self.suspicious_views,
            windows_settled=self.windows_settled,
            eligible=eligible,
            updated_at=self.updated_at,
        )

    # ---- the head as stored (codec.Kind.HEAD) ----

    def head(self) -> list[Any]:
        return [
            self.video_id,
            self.creator_id,
            self.version,
            self.published_version,
            self.views,
            self.suspicious_views,
            self.settled_micros,
            self.clawback_micros,
            self.settled_qualified_views,
            self.windows_settled,
            self.last_settled_window,
            self.updated_at,
            self.eligible,
            list(self.views_applied),
            list(self.interactions_applied),
            self.journal_seq,
            [w.to_list(k) for k, w in self.windows.items()],
            [s.to_list(k) for k, s in self.settled.items()],
        ]

    @classmethod
    def from_head(cls, head: list[Any]) -> VideoLedger:
        (
            video_id,
            creator_id,
            version,
            published_version,
            views,
            suspicious_views,
            settled_micros,
            clawback_micros,
            settled_qv,
            windows_settled,
            last_settled_window,
            updated_at,
            eligible,
            views_applied,
            interactions_applied,
            journal_seq,
            windows,
            settled,
        ) = head
        return cls(
            video_id=video_id,
            creator_id=creator_id,
            version=version,
            published_version=published_version,
            views=views,
            suspicious_views=suspicious_views,
            settled_micros=settled_micros,
            clawback_micros=clawback_micros,
            settled_qualified_views=settled_qv,
            windows_settled=windows_settled,
            last_settled_window=last_settled_window,
            updated_at=updated_at,
            eligible=eligible,
            views_applied=(views_applied[0], views_applied[1]),
            interactions_applied=(interactions_applied[0], interactions_applied[1]),
            journal_seq=journal_seq,
            windows={w[0]: Window(*w[1:]) for w in windows},
            settled={s[0]: SettledWindow(*s[1:]) for s in settled},
        )
