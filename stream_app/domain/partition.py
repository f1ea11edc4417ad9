"""One input partition's scoring: the watermark, settling, emit pacing and per-event outcomes (SPEC §4, §5, §7).

`PartitionScorer` is pure: it reads and writes `VideoLedger`s through a small store, is told the wall clock,
and collects what the wiring must do in `Effects` (count, audit, dead-letter, send accruals and settlements).
Each touched ledger is written once per batch (`flush`), which is what lets the Faust agent keep up.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from stream_app.domain import policy as pol
from stream_app.domain import rules
from stream_app.domain.device_records import DeviceView
from stream_app.domain.events import InteractionEvent, ViewEvent
from stream_app.domain.profiles import ProfileHistory
from stream_app.domain.scoring import (
    ACCEPTED,
    CLAWBACK,
    INTERACTIONS,
    LATE,
    SUSPICIOUS,
    VIEWS,
    Outcome,
    Position,
    VideoLedger,
)
from stream_app.domain.windows import (
    advance_watermark,
    partition_watermark,
    settle_deadline_ms,
    window_bounds,
    window_index,
)

EVENT_TOPICS = (VIEWS, INTERACTIONS)
# Settlement records sent shortly before a crash may not have reached the broker; after an assignment, those of
# windows settled within this span are sent again (a restart or failover normally takes seconds to a minute).
RESEND_SETTLEMENTS_MS = 600_000
# How often (wall clock) the memories of videos with no open window are expired.
QUIET_SWEEP_MS = 60_000
REASON_LATE = "late"
REASON_FUTURE = "future_timestamp"


class LedgerStore(Protocol):
    def load(self, video_id: str) -> VideoLedger | None: ...

    def save(self, ledger: VideoLedger) -> None: ...

    def video_ids(self) -> Iterable[str]: ...


@dataclass(slots=True)
class Effects:
    """What a batch asks the wiring to do, in order."""

    outcomes: list[Outcome] = field(default_factory=list)
    dead_letters: list[tuple[Position, str]] = field(default_factory=list)
    accruals: list[dict[str, Any]] = field(default_factory=list)
    settlements: list[dict[str, Any]] = field(default_factory=list)
    # accepted views for the device rules, whose state is keyed by device (sent to the device topic)
    device_views: list[DeviceView] = field(default_factory=list)
    skipped_replays: int = 0
    pending_delta: int = 0


class PartitionScorer:
    """All videos of one partition of the two co-partitioned event topics."""

    def __init__(
        self,
        policy: pol.Policy,
        policy_id: str,
        partition: int,
        store: LedgerStore,
        profiles: ProfileHistory,
        *,
        watermarks: Mapping[str, int | None] | None = None,
        now_ms: int = 0,
        device_partitions: int = 0,
    ) -> None:
        self.policy = policy
        self.policy_id = policy_id
        self.partition = partition
        self.store = store
        self.profiles = profiles
        # largest ts accepted per event topic of this partition (persisted by the wiring)
        self.latest_ts: dict[str, int | None] = {t: None for t in EVENT_TOPICS}
        if watermarks:
            self.latest_ts.update(watermarks)
        self.watermark: int | None = None
        # device_burst judged elsewhere (device_partitions > 0): each device partition's acknowledged watermark;
        # accepted views are kept for its flags until every one of them is past (on_device_ack)
        self.device_partitions = device_partitions
        self.device_acks: dict[int, int] = {}
        self._flag_safe = self._compute_flag_safe()
        # idleness: when each topic-partition was last active (or first caught up after assignment)
        self.idle_since: dict[str, int | None] = {t: None for t in EVENT_TOPICS}
        self.caught_up: dict[str, bool] = {t: False for t in EVENT_TOPICS}
        self._ledgers: dict[str, VideoLedger] = {}
        self._touched: dict[str, dict[str, Any] | None] = {}  # video_id -> accrual content before the batch
        self._open: dict[str, int] = {}  # video_id -> its earliest open window's settle deadline
        self._next_due: int | None = None  # a lower bound of those deadlines: no scan before the watermark reaches it
        self._dirty: set[str] = set()  # changed, but emitted less than EMIT_INTERVAL_S ago
        self._last_emit: dict[str, int] = {}
        self._last_sweep_ms = now_ms
        self.pending_interactions = 0
        self.provisional_micros = 0  # base micros of open windows of currently eligible creators
        self._provisional_before: dict[str, int] = {}
        for video_id in store.video_ids():
            ledger = self.ledger(video_id)
            if ledger is not None:
                self._index(ledger)
                self.pending_interactions += sum(len(w.pending) for w in ledger.windows.values())
                self.provisional_micros += ledger.provisional_micros(ledger.eligible)

    # ---- state access ----

    def ledger(self, video_id: str) -> VideoLedger | None:
        ledger = self._ledgers.get(video_id)
        if ledger is None:
            ledger = self.store.load(video_id)
            if ledger is not None:
                self._ledgers[video_id] = ledger
        return ledger

    def _touch(self, ledger: VideoLedger) -> None:
        if ledger.video_id not in self._touched:
            self._touched[ledger.video_id] = self._content(ledger) if ledger.version else None
            self._provisional_before[ledger.video_id] = ledger.provisional_micros(ledger.eligible)

    def _content(self, ledger: VideoLedger) -> dict[str, Any]:
        return ledger.accrual(self.policy_id, ledger.eligible)

    def _index(self, ledger: VideoLedger) -> None:
        deadline = ledger.next_deadline(self.policy)
        if deadline is None:
            self._open.pop(ledger.video_id, None)
        else:
            self._open[ledger.video_id] = deadline
            if self._next_due is None or deadline < self._next_due:
                self._next_due = deadline

    # ---- events ----

    def _future(self, ts: int, record_ts_ms: int) -> bool:
        return ts > record_ts_ms + self.policy.max_clock_skew_s * 1000

    def _ledger_for(
        self, event: ViewEvent | InteractionEvent, position: Position, effects: Effects, now_ms: int
    ) -> VideoLedger | None:
        ledger = self.ledger(event.video_id)
        if ledger is None:
            ledger = VideoLedger(video_id=event.video_id, creator_id=event.creator_id)
            self._ledgers[event.video_id] = ledger
        elif ledger.creator_id != event.creator_id:
            effects.dead_letters.append(
                (
                    position,
                    f"creator_id: video {event.video_id!r} belongs to creator {ledger.creator_id!r}, "
                    f"got {event.creator_id!r}",
                )
            )
            return None
        self._touch(ledger)
        ledger.eligible = self.profiles.eligible_now(ledger.creator_id)
        ledger.updated_at = now_ms
        return ledger

    def on_event(
        self,
        topic: str,
        event: ViewEvent | InteractionEvent,
        event_dict: dict[str, Any],
        position: Position,
        record_ts_ms: int,
        now_ms: int,
        effects: Effects,
    ) -> None:
        """Decide one valid event's outcome and apply it (replays of applied input are skipped, SPEC §4)."""
        existing = self.ledger(event.video_id)
        if existing is not None and existing.already_applied(topic, position.offset, position.index):
            effects.skipped_replays += 1
            return
        ledger = self._ledger_for(event, position, effects, now_ms)
        if ledger is None:
            return
        ledger.mark_applied(topic, position.offset, position.index)
        if self._future(event.ts, record_ts_ms):
            skew = event.ts - record_ts_ms
            effects.outcomes.append(
                Outcome(
                    topic,
                    LATE,
                    REASON_FUTURE,
                    f"ts is {skew} ms ahead of the record timestamp",
                    event_dict,
                    position,
                )
            )
            return
        if ledger.is_late(self.policy, event.ts, self.watermark):
            k = window_index(event.ts, self.policy.window_s)
            effects.outcomes.append(
                Outcome(topic, LATE, REASON_LATE, f"window {k} already settled", event_dict, position)
            )
            return
        if isinstance(event, ViewEvent):
            accepted = self._on_view(ledger, event, event_dict, position, effects)
        else:
            accepted = self._on_interaction(ledger, event, event_dict, position, effects)
        self._index(ledger)
        self._advance(topic, event.ts if accepted else None, now_ms, effects)

    def _on_view(
        self,
        ledger: VideoLedger,
        view: ViewEvent,
        event_dict: dict[str, Any],
        position: Position,
        effects: Effects,
    ) -> bool:
        judgement = rules.judge_view(self.policy, ledger.rules, view)
        verdict = judgement.verdict
        for ref in judgement.clawbacks:
            detail = f"{judgement.clawback_reason} recognised at view {view.event_id}: {verdict.detail}"
            self.claw_back(ledger, ref.event_id, judgement.clawback_reason or "", detail, effects)
        if verdict.reason is not None:
            ledger.suspicious_views += 1
            effects.outcomes.append(Outcome(VIEWS, SUSPICIOUS, verdict.reason, verdict.detail, event_dict, position))
            return False
        ledger.accept_view(self.policy, view, event_dict, position, self.flag_safe_ms())
        effects.outcomes.append(Outcome(VIEWS, ACCEPTED, "", "", event_dict, position))
        effects.device_views.append(
            DeviceView(view.device_id, view.video_id, view.event_id, view.viewer_id, view.ts, view.watch_ms)
        )
        return True

    def _on_interaction(
        self,
        ledger: VideoLedger,
        interaction: InteractionEvent,
        event_dict: dict[str, Any],
        position: Position,
        effects: Effects,
    ) -> bool:
        verdict = rules.judge_interaction_on_arrival(self.policy, ledger.rules, interaction)
        if verdict.reason is not None:
            effects.outcomes.append(
                Outcome(INTERACTIONS, SUSPICIOUS, verdict.reason, verdict.detail, event_dict, position)
            )
            return False
        ledger.hold_interaction(self.policy, interaction, event_dict, position)
        self.pending_interactions += 1
        effects.pending_delta += 1
        return True

    def on_device_flag(
        self, video_id: str, event_id: str, reason: str, detail: str, now_ms: int, effects: Effects
    ) -> None:
        """A device rule (judged where device state lives) rejects an accepted view of a video here: claw it back
        with that rule's reason."""
        ledger = self.ledger(video_id)
        if ledger is None:
            return
        recent = ledger.recent.get(event_id)
        if self.claw_back(ledger, event_id, reason, detail, effects) and recent is not None:
            ref = rules.ViewRef(video_id, event_id, recent.event["viewer_id"], recent.ts)
            rules.note_clawback(ledger.rules, ref)
            ledger.updated_at = now_ms

    def source_progress_ms(self) -> int | None:
        """How far this partition has come, for the device judge: the largest view ts it accepted. Never the
        watermark: an idle partition's watermark is the wall clock, which says nothing of the event time of views
        still to come (in a catch-up it runs far ahead of them) and would pull the device partitions' skew bound
        past views still being judged (measured: a farm's 250 views missed in a quality run). A view it accepts
        later may still be older; the device judge keeps GRACE_S for that."""
        return self.latest_ts[VIEWS]

    def on_device_ack(self, device_partition: int, watermark_ms: int) -> None:
        """A device partition has judged every view up to its watermark (less GRACE_S) and sent its flags for
        them, which came before this acknowledgement on the same partition."""
        if watermark_ms > self.device_acks.get(device_partition, -1):
            self.device_acks[device_partition] = watermark_ms
            self._flag_safe = self._compute_flag_safe()

    def flag_safe_ms(self) -> int | None:
        """The ts through which no device flag can still come for this partition's views (None: device_burst is
        not judged elsewhere; -1: some device partition has not acknowledged anything yet)."""
        return self._flag_safe

    def _compute_flag_safe(self) -> int | None:
        if not self.device_partitions:
            return None
        acks = [self.device_acks.get(q) for q in range(self.device_partitions)]
        if None in acks:
            return -1
        # a view can still be clawed back by the device's views up to DEVICE_BURST_SPAN later, which a source
        # may send up to GRACE_S out of order
        return min(a for a in acks if a is not None) - rules.device_flag_delay_ms(self.policy)

    def claw_back(self, ledger: VideoLedger, event_id: str, reason: str, detail: str, effects: Effects) -> bool:
        """Remove an earlier accepted view that a rule now rejects (SPEC §5 Clawback); False if it was not counted."""
        self._touch(ledger)
        result = ledger.claw_back(self.policy, event_id)
        if result is None:
            return False
        amount, recent = result
        effects.outcomes.append(Outcome(VIEWS, CLAWBACK, reason, detail, recent.event, Position(*recent.position)))
        if amount:
            effects.settlements.append(
                ledger.clawback_record(self.policy, recent.window, amount) | {"policy": self.policy_id}
            )
        self._dirty.add(ledger.video_id)
        return True

    # ---- watermark and settling ----

    def _advance(self, topic: str, accepted_ts: int | None, now_ms: int, effects: Effects) -> None:
        """An event was processed on this topic-partition: it is active; an accepted one may move its watermark
        (SPEC §5: the largest ts *accepted*; a held interaction counts as accepted until its window settles)."""
        latest = self.latest_ts[topic]
        if accepted_ts is not None and (latest is None or accepted_ts > latest):
            self.latest_ts[topic] = accepted_ts
        self.idle_since[topic] = now_ms
        self.settle_due(now_ms, effects)

    def observe_position(self, topic: str, caught_up: bool, now_ms: int) -> None:
        """Tell the scorer whether a topic-partition is caught up (position >= high watermark)."""
        if caught_up and not self.caught_up[topic] and self.idle_since[topic] is None:
            self.idle_since[topic] = now_ms
        self.caught_up[topic] = caught_up

    def idle(self, now_ms: int) -> dict[str, bool]:
        limit = self.policy.idle_settle_s * 1000
        return {
            t: self.caught_up[t] and self.idle_since[t] is not None and now_ms - self.idle_since[t] >= limit  # type: ignore[operator]
            for t in EVENT_TOPICS
        }

    def sweep_quiet_videos(self, now_ms: int, interval_ms: int = QUIET_SWEEP_MS) -> int:
        """Expire the memories of videos with no open window (a video that went quiet is otherwise never
        visited again: expiry runs when a video settles). At most once per `interval_ms`; returns how many
        ledgers were trimmed (they are written at the next flush)."""
        wm = self.watermark
        if wm is None or now_ms - self._last_sweep_ms < interval_ms:
            return 0
        self._last_sweep_ms = now_ms
        trimmed = 0
        for video_id in [v for v in self.store.video_ids() if v not in self._open]:
            ledger = self.ledger(video_id)
            if ledger is None:
                continue
            before = ledger.memory_entries()
            if not before:
                continue
            self._touch(ledger)
            ledger.expire(self.policy, wm, self.flag_safe_ms())
            trimmed += ledger.memory_entries() != before
        return trimmed

    def settle_due(self, now_ms: int, effects: Effects, *, profiles_ready: bool = True) -> None:
        candidate = partition_watermark(self.latest_ts, self.idle(now_ms), now_ms)
        self.watermark = advance_watermark(self.watermark, candidate)
        wm = self.watermark
        if wm is None or not profiles_ready or self._next_due is None or wm < self._next_due:
            return
        due = [video_id for video_id, deadline in self._open.items() if deadline <= wm]
        for video_id in due:
            ledger = self.ledger(video_id)
            if ledger is not None:
                self._settle_video(ledger, wm, now_ms, effects)
        self._next_due = min(self._open.values(), default=None)

    def _settle_video(self, ledger: VideoLedger, wm: int, now_ms: int, effects: Effects) -> None:
        self._touch(ledger)
        while ledger.windows:
            k = min(ledger.windows)
            _start_ms, end_ms = window_bounds(k, self.policy.window_s)
            if settle_deadline_ms(k, self.policy.window_s, self.policy.grace_s) > wm:
                break
            eligible = self.profiles.eligible_at(ledger.creator_id, end_ms)
            settled_pending = len(ledger.windows[k].pending)
            settlement = ledger.settle(self.policy, k, eligible, now_ms)
            self.pending_interactions -= settled_pending
            effects.pending_delta -= settled_pending
            effects.outcomes.extend(settlement.outcomes)
            effects.settlements.append(settlement.record | {"policy": self.policy_id})
            self._emit_now(ledger, now_ms, effects)
        ledger.expire(self.policy, wm, self.flag_safe_ms())
        ledger.updated_at = now_ms
        self._index(ledger)

    # ---- output ----

    def _emit_now(self, ledger: VideoLedger, now_ms: int, effects: Effects) -> None:
        self._bump_version(ledger)
        effects.accruals.append(self.accrual_record(ledger))
        self._last_emit[ledger.video_id] = now_ms
        self._dirty.discard(ledger.video_id)

    def _bump_version(self, ledger: VideoLedger) -> None:
        before = self._touched.get(ledger.video_id)
        content = self._content(ledger)
        if ledger.version == 0 or content != before:
            ledger.version += 1
        self._touched[ledger.video_id] = content

    def accrual_record(self, ledger: VideoLedger) -> dict[str, Any]:
        record = self._content(ledger)
        record["version"] = ledger.version
        record["updated_at"] = ledger.updated_at
        return record

    def flush(self, now_ms: int, effects: Effects) -> list[VideoLedger]:
        """End of a batch: version changed records, emit what is due, return the ledgers to write (each once)."""
        interval_ms = int(self.policy.emit_interval_s * 1000)
        changed: list[VideoLedger] = []
        for video_id, before in self._touched.items():
            ledger = self._ledgers[video_id]
            content = self._content(ledger)
            if before is None or content != before:
                ledger.version += 1
                self._dirty.add(video_id)
            changed.append(ledger)
            self.provisional_micros += ledger.provisional_micros(ledger.eligible) - self._provisional_before.pop(
                video_id, 0
            )
        self._touched.clear()
        for video_id in list(self._dirty):
            if now_ms - self._last_emit.get(video_id, -interval_ms) >= interval_ms:
                ledger = self._ledgers[video_id]
                effects.accruals.append(self.accrual_record(ledger))
                self._last_emit[video_id] = now_ms
                self._dirty.discard(video_id)
        for ledger in changed:
            self.store.save(ledger)
        return changed

    def republish(self, now_ms: int, resend_settlements_ms: int = RESEND_SETTLEMENTS_MS) -> Effects:
        """After an assignment: the current record of every video, unchanged, and the settlement records of the
        windows settled within `resend_settlements_ms` before now (SPEC §7: nothing lost between a state write
        and a crash; readers de-duplicate settlements on (video_id, window_start, kind))."""
        effects = Effects()
        for video_id in list(self.store.video_ids()):
            ledger = self.ledger(video_id)
            if ledger is None or ledger.version == 0:
                continue
            effects.accruals.append(self.accrual_record(ledger))
            for k, settled in sorted(ledger.settled.items()):
                if settled.settled_at >= now_ms - resend_settlements_ms:
                    effects.settlements.append(ledger.settlement_record(self.policy, k) | {"policy": self.policy_id})
        return effects
