"""Per-video scoring state: tumbling windows, qualification, settlement, clawback and the running accrual (§5, §7).

`VideoLedger` is one video's whole state, stored as one table value (JSON). It is pure: the wiring passes in
events with their source positions, the authenticity verdicts, and creator eligibility, and gets back outcomes
and output records to send.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from stream_app.domain import policy as pol
from stream_app.domain import rules
from stream_app.domain.events import InteractionEvent, ViewEvent
from stream_app.domain.rules_state import VideoRulesState
from stream_app.domain.windows import settle_deadline_ms, window_bounds, window_index

VIEWS = "video-views"
INTERACTIONS = "video-interactions"

ACCEPTED = "accepted"
SUSPICIOUS = "suspicious"
LATE = "late"
CLAWBACK = "clawback"


# Flags from device_burst reach a video's partition through the device topics a moment after the view: accepted
# views are kept (with their event, for the audit record) long enough for any burst rule to claw them back.
FLAG_LATENCY_ALLOWANCE_S = 600


# While the device judge has not acknowledged a view's time (it lags, or its partition has no owner), accepted
# views are kept for its flags; this far behind the video's newest view they are forgotten anyway (the bound on
# what waiting for the device judge may hold).
DEVICE_FLAG_HOLD_MS = 3_600_000


def recent_views_keep_ms(policy: pol.Policy) -> int:
    """How far behind a video's newest accepted view a view can still be clawed back (event time)."""
    span_s = max(policy.device_burst_span_s, policy.velocity_span_s)
    return (span_s + FLAG_LATENCY_ALLOWANCE_S) * 1000


def recent_views_cutoff(event_cutoff_ms: int, newest_ts: int, flag_safe_ms: int | None) -> int:
    """The ts at or before which accepted views may be forgotten: `event_cutoff_ms` (the per-video rules are done
    with them) but, when device flags come from elsewhere (`flag_safe_ms` not None), no later than the ts through
    which the device judge can send no more flags, and at the latest DEVICE_FLAG_HOLD_MS behind `newest_ts`."""
    if flag_safe_ms is None:
        return event_cutoff_ms
    return min(event_cutoff_ms, max(flag_safe_ms, newest_ts - DEVICE_FLAG_HOLD_MS))


# A remembered view is stored as its field values in this order (the table value is rewritten every batch).
VIEW_FIELDS = tuple(f.name for f in fields(ViewEvent))
_TS = VIEW_FIELDS.index("ts")


@dataclass(frozen=True, slots=True)
class Position:
    """Where an event came from: the replay key of SPEC §4 (index -1 stands for a single-object record)."""

    partition: int
    offset: int
    index: int

    def as_list(self) -> list[int]:
        return [self.partition, self.offset, self.index]

    @property
    def index_or_none(self) -> int | None:
        return None if self.index < 0 else self.index


@dataclass(frozen=True, slots=True)
class Outcome:
    """An event's outcome to count (and, unless accepted, to audit)."""

    topic: str
    outcome: str
    reason: str
    detail: str
    event: dict[str, Any]
    position: Position


@dataclass(slots=True)
class Window:
    """One tumbling window of one video (SPEC §5)."""

    views: int = 0
    qualifying_views: int = 0
    qualifying_base_micros: int = 0
    watch_ms: int = 0
    viewers: set[str] = field(default_factory=set)
    # interactions wait here until the window settles: (event dict, position list)
    pending: list[tuple[dict[str, Any], list[int]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "views": self.views,
            "qv": self.qualifying_views,
            "base": self.qualifying_base_micros,
            "watch_ms": self.watch_ms,
            "viewers": sorted(self.viewers),
            "pending": [[e, p] for e, p in self.pending],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Window:
        return cls(
            views=data["views"],
            qualifying_views=data["qv"],
            qualifying_base_micros=data["base"],
            watch_ms=data["watch_ms"],
            viewers=set(data["viewers"]),
            pending=[(e, p) for e, p in data["pending"]],
        )


@dataclass(slots=True)
class SettledWindow:
    """What a settled window keeps within CLAWBACK_HORIZON_S: its settlement (to re-send) and clawbacks so far."""

    base_micros: int
    multiplier_bps: int
    settled_micros: int
    clawed_base_micros: int = 0
    qualified_views: int = 0
    score: int = 0
    settled_at: int = 0  # wall clock ms when it settled

    def to_list(self) -> list[int]:
        return [
            self.base_micros,
            self.multiplier_bps,
            self.settled_micros,
            self.clawed_base_micros,
            self.qualified_views,
            self.score,
            self.settled_at,
        ]

    @classmethod
    def from_list(cls, data: list[int]) -> SettledWindow:
        return cls(*data)


@dataclass(slots=True)
class RecentView:
    """An accepted view remembered long enough to be clawed back: its field values (VIEW_FIELDS order), where it
    came from, and what it counted for."""

    values: list[Any]
    position: list[int]
    window: int
    qualifying: bool
    base_micros: int
    clawed: bool = False

    @property
    def ts(self) -> int:
        return int(self.values[_TS])

    @property
    def event(self) -> dict[str, Any]:
        """The view as an event dict (for its audit record)."""
        return dict(zip(VIEW_FIELDS, self.values, strict=True))


@dataclass(slots=True)
class Settlement:
    record: dict[str, Any]
    outcomes: list[Outcome]


@dataclass(slots=True)
class VideoLedger:
    video_id: str
    creator_id: str
    version: int = 0
    views: int = 0
    suspicious_views: int = 0
    settled_micros: int = 0
    clawback_micros: int = 0
    settled_qualified_views: int = 0
    windows_settled: int = 0
    last_settled_window: int | None = None
    updated_at: int = 0
    eligible: bool = False  # the creator's eligibility at the video's latest event
    # replay positions (SPEC §4): per input topic, the last (offset, index) applied to this video
    applied: dict[str, list[int]] = field(default_factory=dict)
    windows: dict[int, Window] = field(default_factory=dict)
    settled: dict[int, SettledWindow] = field(default_factory=dict)
    # viewer -> ts of their qualifying views within QUALIFY_ONCE_S (a view counts once per account)
    qualified_at: dict[str, list[int]] = field(default_factory=dict)
    # event_id -> accepted view kept for clawback (bounded by the burst rules' spans plus flag latency)
    recent: dict[str, RecentView] = field(default_factory=dict)
    # what the authenticity rules remember about this video (SPEC §6)
    rules: VideoRulesState = field(default_factory=VideoRulesState)

    # ---- replay (SPEC §4) ----

    def already_applied(self, topic: str, offset: int, index: int) -> bool:
        done = self.applied.get(topic)
        return done is not None and (offset, index) <= (done[0], done[1])

    def mark_applied(self, topic: str, offset: int, index: int) -> None:
        self.applied[topic] = [offset, index]

    # ---- windows ----

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

    def accept_view(
        self,
        policy: pol.Policy,
        view: ViewEvent,
        event: dict[str, Any],
        position: Position,
        flag_safe_ms: int | None = None,
    ) -> None:
        """Count an accepted (authentic, on-time) view in its window and decide whether it qualifies.
        `flag_safe_ms`: see recent_views_cutoff."""
        k = window_index(view.ts, policy.window_s)
        window = self.window(k)
        window.views += 1
        window.watch_ms += view.watch_ms
        window.viewers.add(view.viewer_id)
        self.views += 1
        qualifying = pol.is_qualifying_view(
            policy, watch_ms=view.watch_ms, video_ms=view.video_ms, source=view.source
        ) and not self._qualified_recently(policy, view.viewer_id, view.ts)
        base = 0
        if qualifying:
            base = pol.base_rate_micros(policy, view.region)
            window.qualifying_views += 1
            window.qualifying_base_micros += base
            self.qualified_at.setdefault(view.viewer_id, []).append(view.ts)
        self.recent[view.event_id] = RecentView(list(event.values()), position.as_list(), k, qualifying, base)
        self._forget_old_views(recent_views_cutoff(view.ts - recent_views_keep_ms(policy), view.ts, flag_safe_ms))

    def _forget_old_views(self, cutoff_ts: int) -> None:
        """Views arrive roughly in ts order, so the oldest remembered ones are first: drop them from the front."""
        recent = self.recent
        while recent:
            event_id, first = next(iter(recent.items()))
            if first.ts > cutoff_ts:
                return
            del recent[event_id]

    def _qualified_recently(self, policy: pol.Policy, viewer_id: str, ts: int) -> bool:
        return any(pol.within_qualify_once(policy, ts, earlier) for earlier in self.qualified_at.get(viewer_id, ()))

    def claw_back(self, policy: pol.Policy, event_id: str) -> tuple[int, RecentView] | None:
        """Remove an accepted view that a rule now rejects; return (clawback micros, the view) or None.

        In an open window the view simply stops counting; in a settled one the multiplier stays as settled and
        the difference becomes `clawback_micros` (SPEC §5).
        """
        recent = self.recent.get(event_id)
        if recent is None or recent.clawed:
            return None
        recent.clawed = True
        self.suspicious_views += 1
        window = self.windows.get(recent.window)
        if window is not None:
            window.views -= 1
            if recent.qualifying:
                window.qualifying_views -= 1
                window.qualifying_base_micros -= recent.base_micros
            return 0, recent
        settled = self.settled.get(recent.window)
        if settled is None or not recent.qualifying:
            return 0, recent
        if settled.base_micros:
            # it was a qualified view of the settled window: the accrual's total no longer counts it, whichever
            # came first, the flag or the settlement (SPEC §7 holds qualified_views to that)
            self.settled_qualified_views -= 1
        before = pol.clawback_micros(
            settled.settled_micros, settled.base_micros, settled.clawed_base_micros, settled.multiplier_bps
        )
        settled.clawed_base_micros += recent.base_micros
        amount = (
            pol.clawback_micros(
                settled.settled_micros,
                settled.base_micros,
                settled.clawed_base_micros,
                settled.multiplier_bps,
            )
            - before
        )
        self.clawback_micros += amount
        return amount, recent

    # ---- interactions ----

    def hold_interaction(
        self, policy: pol.Policy, interaction: InteractionEvent, event: dict[str, Any], position: Position
    ) -> None:
        """Interactions are judged when their window settles (SPEC §4, §6)."""
        self.window(window_index(interaction.ts, policy.window_s)).pending.append((event, position.as_list()))

    # ---- settlement ----

    def settle(self, policy: pol.Policy, k: int, eligible: bool, now_ms: int = 0) -> Settlement:
        """Settle window k: judge its interactions (SPEC §6, in (ts, arrival) order), fix its money, and write
        the settlement record."""
        window = self.windows.pop(k)
        _, end_ms = window_bounds(k, policy.window_s)
        outcomes: list[Outcome] = []
        counts = {"like": 0, "comment": 0, "share": 0, "follow": 0}
        accepted_interactions = 0
        for event, position in sorted(window.pending, key=lambda pending: pending[0]["ts"]):
            verdict = rules.judge_interaction_at_settlement(policy, self.rules, InteractionEvent(**event), end_ms)
            reason, detail = verdict.reason, verdict.detail
            pos = Position(*position)
            if reason is None:
                accepted_interactions += 1
                if event["kind"] in counts:
                    counts[event["kind"]] += 1
                outcomes.append(Outcome(INTERACTIONS, ACCEPTED, "", "", event, pos))
            else:
                outcomes.append(Outcome(INTERACTIONS, SUSPICIOUS, reason, detail, event, pos))
        totals = pol.WindowTotals(
            qualified_views=window.qualifying_views,
            base_micros=window.qualifying_base_micros,
            likes=counts["like"],
            comments=counts["comment"],
            shares=counts["share"],
            follows=counts["follow"],
        )
        settled = pol.settle(policy, totals, eligible)
        self.settled[k] = SettledWindow(
            settled.base_micros,
            settled.multiplier_bps,
            settled.settled_micros,
            qualified_views=settled.qualified_views,
            score=settled.score,
            settled_at=now_ms,
        )
        self.settled_micros += settled.settled_micros
        self.settled_qualified_views += settled.qualified_views
        if window.views > 0 or accepted_interactions > 0:
            self.windows_settled += 1
        if self.last_settled_window is None or k > self.last_settled_window:
            self.last_settled_window = k
        return Settlement(self.settlement_record(policy, k), outcomes)

    def settlement_record(self, policy: pol.Policy, k: int) -> dict[str, Any]:
        """The `kind: "settlement"` record of settled window k (SPEC §5), without `policy`."""
        settled = self.settled[k]
        start_ms, end_ms = window_bounds(k, policy.window_s)
        return {
            "kind": "settlement",
            "video_id": self.video_id,
            "creator_id": self.creator_id,
            "window_start": start_ms,
            "window_end": end_ms,
            "qualified_views": settled.qualified_views,
            "base_micros": settled.base_micros,
            "score": settled.score,
            "multiplier_bps": settled.multiplier_bps,
            "settled_micros": settled.settled_micros,
        }

    def clawback_record(self, policy: pol.Policy, k: int, amount: int) -> dict[str, Any]:
        settled = self.settled[k]
        start_ms, end_ms = window_bounds(k, policy.window_s)
        return {
            "kind": "clawback",
            "video_id": self.video_id,
            "creator_id": self.creator_id,
            "window_start": start_ms,
            "window_end": end_ms,
            "base_micros": settled.base_micros,
            "clawed_base_micros": settled.clawed_base_micros,
            "multiplier_bps": settled.multiplier_bps,
            "settled_micros": settled.settled_micros,
            "clawback_micros": amount,
        }

    # ---- expiry ----

    def memory_entries(self) -> int:
        """How many per-viewer and per-event memories this ledger holds (its size beyond the totals)."""
        return len(self.qualified_at) + len(self.recent) + self.rules.entry_count()

    def expire(self, policy: pol.Policy, watermark_ms: int, flag_safe_ms: int | None = None) -> None:
        """Forget what no rule can need any more, so state stays bounded. `flag_safe_ms`: see
        recent_views_cutoff (the watermark may be the wall clock, far ahead of the views device flags concern)."""
        horizon_k = window_index(max(0, watermark_ms - policy.clawback_horizon_s * 1000), policy.window_s)
        for k in [k for k in self.settled if k < horizon_k]:
            del self.settled[k]
        cutoff = watermark_ms - (policy.qualify_once_s + policy.window_s + policy.grace_s) * 1000
        for viewer in list(self.qualified_at):
            kept = [ts for ts in self.qualified_at[viewer] if ts > cutoff]
            if kept:
                self.qualified_at[viewer] = kept
            else:
                del self.qualified_at[viewer]
        newest = 0 if flag_safe_ms is None else max((r.ts for r in self.recent.values()), default=0)
        recent_cutoff = recent_views_cutoff(watermark_ms - recent_views_keep_ms(policy), newest, flag_safe_ms)
        for event_id in [e for e, r in self.recent.items() if r.ts <= recent_cutoff]:
            del self.recent[event_id]
        rules.expire(policy, self.rules, watermark_ms)

    # ---- output ----

    def provisional_micros(self, eligible_now: bool) -> int:
        if not eligible_now:
            return 0
        return sum(w.qualifying_base_micros for w in self.windows.values())

    def open_qualified_views(self, eligible_now: bool) -> int:
        if not eligible_now:
            return 0
        return sum(w.qualifying_views for w in self.windows.values())

    def accrual(self, policy_id: str, eligible_now: bool) -> dict[str, Any]:
        """The Accrual content (SPEC §7) without `version` and `updated_at`."""
        return {
            "video_id": self.video_id,
            "creator_id": self.creator_id,
            "currency": "USD",
            "policy": policy_id,
            "settled_micros": self.settled_micros,
            "clawback_micros": self.clawback_micros,
            "provisional_micros": self.provisional_micros(eligible_now),
            "qualified_views": self.settled_qualified_views + self.open_qualified_views(eligible_now),
            "views": self.views,
            "suspicious_views": self.suspicious_views,
            "windows_settled": self.windows_settled,
            "eligible": eligible_now,
        }

    # ---- storage ----

    def to_dict(self) -> dict[str, Any]:
        return {
            "video_id": self.video_id,
            "creator_id": self.creator_id,
            "version": self.version,
            "views": self.views,
            "suspicious_views": self.suspicious_views,
            "settled_micros": self.settled_micros,
            "clawback_micros": self.clawback_micros,
            "settled_qv": self.settled_qualified_views,
            "windows_settled": self.windows_settled,
            "last_settled_window": self.last_settled_window,
            "updated_at": self.updated_at,
            "eligible": self.eligible,
            "applied": self.applied,
            "windows": {str(k): w.to_dict() for k, w in self.windows.items()},
            "settled": {str(k): s.to_list() for k, s in self.settled.items()},
            "qualified_at": self.qualified_at,
            "recent": [
                [r.values, r.position, r.window, r.qualifying, r.base_micros, r.clawed] for r in self.recent.values()
            ],
            "rules": self.rules.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoLedger:
        return cls(
            video_id=data["video_id"],
            creator_id=data["creator_id"],
            version=data["version"],
            views=data["views"],
            suspicious_views=data["suspicious_views"],
            settled_micros=data["settled_micros"],
            clawback_micros=data["clawback_micros"],
            settled_qualified_views=data["settled_qv"],
            windows_settled=data["windows_settled"],
            last_settled_window=data["last_settled_window"],
            updated_at=data["updated_at"],
            eligible=data["eligible"],
            applied=data["applied"],
            windows={int(k): Window.from_dict(w) for k, w in data["windows"].items()},
            settled={int(k): SettledWindow.from_list(s) for k, s in data["settled"].items()},
            qualified_at=data["qualified_at"],
            recent={values[0]: RecentView(values, *rest) for values, *rest in data["recent"]},
            rules=VideoRulesState.from_dict(data["rules"]),
        )
