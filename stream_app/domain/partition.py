"""One input partition's scoring: the watermark, settling, emit pacing and per-event outcomes (SPEC §4, §5, §7).

`PartitionScorer` is pure: it keeps its videos' ledgers in memory, is told the wall clock, and collects what the
wiring must do in `Effects`: count, audit, dead-letter, send accruals, settlements and device views, and at the
end of a batch (`flush`) write its state (`StateWrite`). The wiring writes that state only once the broker has
acknowledged the batch's outputs (SPEC §4: state that makes a replay skip an event is never durable before the
event's output records are), and in the order StateWrite lists it (see domain/journal.py).

Per event the work is a few dict and list operations whatever the state holds: the watermark is recomputed from
two numbers, due settlements come off a heap, and memories forget through expiry indexes (domain/rules_state.py).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from stream_app.domain import codec, journal, rules
from stream_app.domain import policy as pol
from stream_app.domain.codec import Kind
from stream_app.domain.device_records import DeviceView
from stream_app.domain.events import InputTopic, InteractionEvent, Outcome, ViewEvent
from stream_app.domain.profiles import ProfileHistory
from stream_app.domain.records import Accrual, LedgerRecord
from stream_app.domain.rules import Reason
from stream_app.domain.rules_state import ExpiryIndex
from stream_app.domain.scoring import (
    EventOutcome,
    Position,
    VideoLedger,
    recent_views_cutoff,
    recent_views_keep_ms,
)
from stream_app.domain.windows import is_idle, settle_deadline_ms, window_bounds, window_index

VIEWS = InputTopic.VIEWS
INTERACTIONS = InputTopic.INTERACTIONS
EVENT_TOPICS = (VIEWS, INTERACTIONS)
# How often (wall clock) the memories of videos that went quiet are expired.
QUIET_SWEEP_MS = 60_000


class StateSource(Protocol):
    """A partition's stored state, as the wiring reads it back (bytes in codec format)."""

    def head(self, video_id: str) -> bytes | None: ...

    def segments(self) -> Iterable[bytes]: ...

    def meta(self) -> bytes | None: ...


@dataclass(slots=True)
class StateWrite:
    """A batch's state, to be written in this order once the batch's outputs are acknowledged: the new journal
    segment (and orphan clean-ups), the heads it touched, the partition's meta, then the dropped segments."""

    segments: list[tuple[int, bytes | None]] = field(default_factory=list)  # (seq, value; None deletes)
    heads: list[tuple[str, bytes]] = field(default_factory=list)
    meta: bytes | None = None
    dropped: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.segments or self.heads or self.meta or self.dropped)


@dataclass(slots=True)
class Effects:
    """What a batch asks the wiring to do."""

    outcomes: list[EventOutcome] = field(default_factory=list)  # every outcome but `accepted`
    accepted: dict[InputTopic, int] = field(default_factory=dict)  # accepted events, counted
    dead_letters: list[tuple[Position, str]] = field(default_factory=list)
    accruals: list[Accrual] = field(default_factory=list)
    settlements: list[LedgerRecord] = field(default_factory=list)
    # accepted views for the device rules, whose state is keyed by device (sent to the device topic)
    device_views: list[DeviceView] = field(default_factory=list)
    skipped_replays: int = 0
    pending_delta: int = 0
    state: StateWrite = field(default_factory=StateWrite)


@dataclass(slots=True)
class PartitionMeta:
    """What a partition keeps besides its videos: the largest ts accepted per event topic, the policy id its state
    was written under, the device partitions' acknowledgements, the next journal segment number."""

    latest_ts: dict[InputTopic, int | None] = field(default_factory=lambda: {t: None for t in EVENT_TOPICS})
    policy_id: str | None = None
    device_acks: dict[int, int] = field(default_factory=dict)
    next_seq: int = 0

    def to_bytes(self) -> bytes:
        acks = sorted(self.device_acks.items())
        payload = [self.latest_ts[VIEWS], self.latest_ts[INTERACTIONS], self.policy_id, self.next_seq, acks]
        return codec.encode(Kind.META, payload)

    @classmethod
    def from_bytes(cls, data: bytes | None) -> PartitionMeta:
        if data is None:
            return cls()
        views, interactions, policy_id, next_seq, acks = codec.decode(Kind.META, data)
        return cls({VIEWS: views, INTERACTIONS: interactions}, policy_id, {p: w for p, w in acks}, next_seq)


class PartitionScorer:
    """All videos of one partition of the two co-partitioned event topics."""

    def __init__(
        self,
        policy: pol.Policy,
        policy_id: str,
        partition: int,
        source: StateSource,
        profiles: ProfileHistory,
        *,
        now_ms: int = 0,
        device_partitions: int = 0,
        journaled: bool = True,
    ) -> None:
        self.policy = policy
        self.policy_id = policy_id
        self.partition = partition
        self.source = source
        self.profiles = profiles
        meta = PartitionMeta.from_bytes(source.meta())
        self.stored_policy_id = meta.policy_id
        self.latest_ts: dict[InputTopic, int | None] = dict(meta.latest_ts)
        self.watermark: int | None = None
        # device rules judged elsewhere (device_partitions > 0): each device partition's acknowledged watermark;
        # accepted views are kept for its flags until every one of them is past (on_device_ack)
        self.device_partitions = device_partitions
        self.device_acks: dict[int, int] = dict(meta.device_acks)
        self._flag_safe = self._compute_flag_safe()
        # idleness: when each topic-partition was last active (or first caught up after assignment)
        self.idle_since: dict[InputTopic, int | None] = {t: None for t in EVENT_TOPICS}
        self.caught_up: dict[InputTopic, bool] = {t: False for t in EVENT_TOPICS}
        self._idle: dict[InputTopic, bool] = {t: False for t in EVENT_TOPICS}
        self._ledgers: dict[str, VideoLedger] = {}  # the working set; other videos' heads are loaded on demand
        self._touched: dict[str, tuple[int, ...] | None] = {}  # video_id -> accrual content before the batch
        self._provisional_before: dict[str, int] = {}
        self._deadlines: list[tuple[int, str]] = []  # heap of (settle deadline, video_id); stale entries skipped
        # changed, but emitted less than EMIT_INTERVAL_S ago (a dict: emitted in the order they changed)
        self._dirty: dict[str, None] = {}
        self._last_emit: dict[str, int] = {}
        self._quiet = ExpiryIndex()  # videos by the event time they were last touched, for quiet sweeps
        self._evict: list[str] = []  # videos left with nothing to remember: out of the working set after flush
        self._last_sweep_ms = now_ms
        self.journal = journal.Journal(next_seq=meta.next_seq)
        # False for a scorer that never restores (a replay): no memory change is journaled, no segment written;
        # heads are still written apart when a video leaves the working set (it is read back when touched)
        self.journaled = journaled
        self._rewrites: list[tuple[int, bytes | None]] = []
        self.pending_interactions = 0
        self.provisional_micros = 0  # base micros of open windows of currently eligible creators
        self._restore()

    # ---- restore: heads and the journal ----

    def _restore(self) -> None:
        """Rebuild the working set from the stored journal: each video's newest head (from the newest live
        segment holding one, else its own key), and its memories by replaying the operations that head includes
        (domain/journal.py).

        Segments are decoded one at a time, twice: first for their heads (a video's newest head says which of its
        operations to replay), then, in seq order, for their operations. Decoded all at once, a day of segments
        was held as Python objects, several times its stored size, while the memories were rebuilt from it
        (bench/RESULTS.md, Speed steps 21)."""
        raws = list(self.source.segments())
        shells: list[tuple[int, int, int, list[str]]] = []  # (seq, index in raws, newest ts, videos with a head)
        newest: dict[str, tuple[int, list[Any]]] = {}  # video -> its newest head and the segment holding it
        names: dict[str, str] = {}  # one str per video id, whichever segments name it
        for index, raw in enumerate(raws):
            seq, max_ts, _, heads = codec.decode(Kind.SEGMENT, raw)
            videos = []
            for head in heads:
                video_id = names.setdefault(head[0], head[0])
                held = newest.get(video_id)
                if held is None or held[0] < seq:
                    newest[video_id] = (seq, head)
                videos.append(video_id)
            shells.append((seq, index, max_ts, videos))
        shells.sort()
        loaded: dict[str, VideoLedger | None] = {}
        for seq, _, max_ts, videos in shells:
            self.journal.adopt(seq, max_ts, videos)
            for video_id in videos:
                if video_id not in loaded:  # in the order the heads appear, as the working set was built before
                    loaded[video_id] = VideoLedger.from_head(newest[video_id][1])
        del newest, names
        for _, index, _, _ in shells:
            segment = journal.Segment.from_payload(codec.decode(Kind.SEGMENT, raws[index]))
            orphans = False
            for op in segment.ops:
                video_id = op[1]
                if video_id in loaded:
                    ledger = loaded[video_id]
                else:
                    ledger = loaded[video_id] = self._read_head(video_id)
                if ledger is None or segment.seq > ledger.journal_seq:
                    orphans = True
                    continue
                journal.replay(self.policy, ledger, op)
            if orphans:
                self._rewrites.append((segment.seq, self._without_orphans(segment, loaded)))
        for ledger in loaded.values():
            if ledger is not None:
                self._adopt(ledger)

    def _without_orphans(self, segment: journal.Segment, loaded: dict[str, VideoLedger | None]) -> bytes | None:
        kept = []
        for op in segment.ops:
            ledger = loaded.get(op[1])
            if ledger is not None and segment.seq <= ledger.journal_seq:
                kept.append(op)
        if not kept and not segment.heads:
            return None
        payload = journal.Segment(segment.seq, segment.max_ts, kept, segment.heads).to_payload()
        return codec.encode(Kind.SEGMENT, payload)

    def _read_head(self, video_id: str) -> VideoLedger | None:
        raw = self.source.head(video_id)
        return None if raw is None else VideoLedger.from_head(codec.decode(Kind.HEAD, raw))

    def _adopt(self, ledger: VideoLedger) -> None:
        """Put a stored ledger in the working set: index its open windows and count its pending interactions."""
        self._ledgers[ledger.video_id] = ledger
        for k in ledger.windows:
            heapq.heappush(self._deadlines, (self._deadline(k), ledger.video_id))
        self.pending_interactions += ledger.memory.pending_count()
        self.provisional_micros += ledger.provisional_micros(ledger.eligible)
        newest = ledger.memory.rules.accepted_views.max_ts
        self._quiet.note(ledger.video_id, max(newest, 0))

    def ledger(self, video_id: str) -> VideoLedger | None:
        ledger = self._ledgers.get(video_id)
        if ledger is None:
            ledger = self._read_head(video_id)
            if ledger is not None:
                self._adopt(ledger)
        return ledger

    def ledgers(self) -> Iterable[VideoLedger]:
        return self._ledgers.values()

    def _deadline(self, k: int) -> int:
        return settle_deadline_ms(k, self.policy.window_s, self.policy.grace_s)

    def _touch(self, ledger: VideoLedger) -> None:
        video_id = ledger.video_id
        if video_id not in self._touched:
            self._touched[video_id] = ledger.content_key() if ledger.version else None
            self._provisional_before[video_id] = ledger.provisional_micros(ledger.eligible)

    def _open_window(self, ledger: VideoLedger, k: int) -> None:
        """*head*: make sure window k exists; a new one is scheduled to settle."""
        if k not in ledger.windows:
            ledger.window(k)
            heapq.heappush(self._deadlines, (self._deadline(k), ledger.video_id))

    # ---- events ----

    def on_event(
        self,
        topic: InputTopic,
        event: ViewEvent | InteractionEvent,
        position: Position,
        record_ts_ms: int,
        now_ms: int,
        effects: Effects,
    ) -> None:
        """Decide one valid event's outcome and apply it (replays of applied input are skipped, SPEC §4)."""
        video_id = event.video_id
        ledger = self._ledgers.get(video_id) or self.ledger(video_id)
        applied = (position.offset, position.index)  # VideoLedger.already_applied / mark_applied, inlined
        if ledger is None:
            ledger = self._ledgers[video_id] = VideoLedger(video_id=video_id, creator_id=event.creator_id)
        elif applied <= (ledger.views_applied if topic is VIEWS else ledger.interactions_applied):
            effects.skipped_replays += 1
            return
        self._touch(ledger)
        if topic is VIEWS:
            ledger.views_applied = applied
        else:
            ledger.interactions_applied = applied
        ledger.updated_at = now_ms
        if ledger.creator_id != event.creator_id:
            effects.dead_letters.append(
                (
                    position,
                    f"creator_id: video {video_id!r} belongs to creator {ledger.creator_id!r}, "
                    f"got {event.creator_id!r}",
                )
            )
            return
        ledger.eligible = self.profiles.eligible_now(ledger.creator_id)
        ts = event.ts
        if rules.check_future_timestamp(self.policy, ts, record_ts_ms):
            effects.outcomes.append(
                EventOutcome(
                    topic,
                    Outcome.LATE,
                    Reason.FUTURE_TIMESTAMP,
                    f"ts is {ts - record_ts_ms} ms ahead of the record timestamp",
                    event,
                    position,
                )
            )
            return
        if ledger.is_late(self.policy, ts, self.watermark):
            k = window_index(ts, self.policy.window_s)
            effects.outcomes.append(
                EventOutcome(topic, Outcome.LATE, Reason.LATE, f"window {k} already settled", event, position)
            )
            return
        quiet_bucket = ts // self._quiet.bucket_ms
        if quiet_bucket != ledger.quiet_bucket:  # once per bucket of event time is enough to find it quiet
            ledger.quiet_bucket = quiet_bucket
            self._quiet.note(video_id, ts)
        if type(event) is ViewEvent:
            accepted = self._on_view(ledger, event, position, effects)
        else:
            assert isinstance(event, InteractionEvent)
            accepted = self._on_interaction(ledger, event, position, effects)
        # SPEC §5: the largest ts *accepted*; a held interaction counts as accepted until its window settles
        latest_ts = self.latest_ts
        latest = latest_ts[topic]
        moved = accepted and (latest is None or ts > latest)
        if moved:
            latest_ts[topic] = ts
        self.idle_since[topic] = now_ms
        if self._idle[topic]:
            self._idle[topic] = False
            moved = True
        if moved:  # otherwise the watermark is what the last call found (a new window's deadline lies past it)
            self._settle_if_due(now_ms, effects)

    def _on_view(self, ledger: VideoLedger, view: ViewEvent, position: Position, effects: Effects) -> bool:
        if self.journaled:
            self.journal.record(journal.view_op(view, position.offset, position.index), view.ts)
        judgement = rules.judge_view(self.policy, ledger.memory.rules, view)
        verdict = judgement.verdict
        for ref in judgement.clawbacks:
            detail = f"{judgement.clawback_reason} recognised at view {view.event_id}: {verdict.detail}"
            self._claw_back(ledger, ref.event_id, judgement.clawback_reason or "", detail, effects, elsewhere=False)
        if verdict.reason is not None:
            ledger.suspicious_views += 1
            effects.outcomes.append(
                EventOutcome(VIEWS, Outcome.SUSPICIOUS, verdict.reason, verdict.detail, view, position)
            )
            return False
        recent = ledger.remember_view(self.policy, view, position.offset, position.index)
        self._open_window(ledger, recent.window)
        ledger.count_view(self.policy, recent)
        effects.accepted[VIEWS] = effects.accepted.get(VIEWS, 0) + 1
        effects.device_views.append(
            DeviceView(view.device_id, view.video_id, view.event_id, view.viewer_id, view.ts, view.watch_ms)
        )
        return True

    def _on_interaction(
        self, ledger: VideoLedger, interaction: InteractionEvent, position: Position, effects: Effects
    ) -> bool:
        if self.journaled:
            self.journal.record(journal.interaction_op(interaction, position.offset, position.index), interaction.ts)
        verdict = rules.judge_interaction_on_arrival(self.policy, ledger.memory.rules, interaction)
        if verdict.reason is not None:
            effects.outcomes.append(
                EventOutcome(INTERACTIONS, Outcome.SUSPICIOUS, verdict.reason, verdict.detail, interaction, position)
            )
            return False
        ledger.hold_interaction(self.policy, interaction, position.offset, position.index)
        self._open_window(ledger, window_index(interaction.ts, self.policy.window_s))
        self.pending_interactions += 1
        effects.pending_delta += 1
        return True

    def on_device_flag(
        self, video_id: str, event_id: str, reason: str, detail: str, now_ms: int, effects: Effects
    ) -> None:
        """A device rule (judged where device state lives) rejects an accepted view of a video here: claw it back
        with that rule's reason."""
        ledger = self.ledger(video_id)
        if ledger is None or event_id not in ledger.memory.recent:
            return
        self._touch(ledger)
        if self.journaled:
            self.journal.record([journal.OP_FLAG, video_id, event_id])
        if self._claw_back(ledger, event_id, reason, detail, effects, elsewhere=True):
            ledger.updated_at = now_ms

    def _claw_back(
        self, ledger: VideoLedger, event_id: str, reason: str, detail: str, effects: Effects, *, elsewhere: bool
    ) -> bool:
        """Remove an earlier accepted view that a rule now rejects (SPEC §5 Clawback); False if it was not
        counted (forgotten, or clawed back already)."""
        self._touch(ledger)
        recent = ledger.forget_clawed(event_id, judged_elsewhere=elsewhere)
        if recent is None:
            return False
        amount = ledger.uncount_view(self.policy, recent)
        effects.outcomes.append(
            EventOutcome(
                VIEWS,
                Outcome.CLAWBACK,
                reason,
                detail,
                recent.event_of(ledger),
                Position(self.partition, recent.offset, recent.index),
            )
        )
        if amount:
            effects.settlements.append(ledger.clawback_record(self.policy, self.policy_id, recent.window, amount))
        self._dirty[ledger.video_id] = None
        return True

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
        """The ts through which no device flag can still come for this partition's views (None: the device rules
        are not judged elsewhere; -1: some device partition has not acknowledged anything yet)."""
        return self._flag_safe

    def _compute_flag_safe(self) -> int | None:
        if not self.device_partitions:
            return None
        acks = [self.device_acks.get(q) for q in range(self.device_partitions)]
        if None in acks:
            return -1
        # a view can still be clawed back by the device's views up to the device memory later, which a source
        # may send up to GRACE_S out of order
        return min(a for a in acks if a is not None) - rules.device_flag_delay_ms(self.policy)

    # ---- watermark and settling ----

    def observe_position(self, topic: InputTopic, caught_up: bool, now_ms: int) -> None:
        """Tell the scorer whether a topic-partition is caught up (position >= high watermark)."""
        if caught_up and not self.caught_up[topic] and self.idle_since[topic] is None:
            self.idle_since[topic] = now_ms
        self.caught_up[topic] = caught_up

    def idle(self, now_ms: int) -> dict[InputTopic, bool]:
        """Which topic-partitions count as idle now (SPEC §5; windows.is_idle), remembered until the next event."""
        limit = self.policy.idle_settle_s
        for topic in EVENT_TOPICS:
            self._idle[topic] = is_idle(
                idle_since_ms=self.idle_since[topic],
                caught_up=self.caught_up[topic],
                now_ms=now_ms,
                idle_settle_s=limit,
            )
        return dict(self._idle)

    def _settle_if_due(self, now_ms: int, effects: Effects, *, settle: bool = True) -> None:
        """The watermark of SPEC §5 from the two topics' latest ts and idleness (no clock read), and the windows
        it makes due. Called per event: two comparisons unless a deadline is passed."""
        lowest: int | None = None
        waiting = False
        for topic in EVENT_TOPICS:
            if self._idle[topic]:
                continue
            latest = self.latest_ts[topic]
            if latest is None:
                waiting = True
                break
            if lowest is None or latest < lowest:
                lowest = latest
        if not waiting:
            candidate = now_ms if lowest is None else lowest
            if self.watermark is None or candidate > self.watermark:
                self.watermark = candidate
        deadlines = self._deadlines
        if settle and deadlines and self.watermark is not None and deadlines[0][0] <= self.watermark:
            self._settle_due_videos(now_ms, effects)

    def may_settle(self, batch_min_ts: int | None, batch_max_ts: int | None, now_ms: int | None) -> bool:
        """Whether a batch could settle a window here: its events' ts lie in [batch_min_ts, batch_max_ts] (None:
        no event), and `now_ms` is given when the wall clock may stand in for the watermark (a tick, or a topic
        already idle). Conservative: True whenever the watermark could reach a deadline, so that the wiring can
        bring the profile history up to date first (SPEC §5: the profile in effect at the window's end)."""
        deadline = self._deadlines[0][0] if self._deadlines else None
        if batch_min_ts is not None:
            opened = self._deadline(window_index(batch_min_ts, self.policy.window_s))
            deadline = opened if deadline is None else min(deadline, opened)
        if deadline is None:
            return False
        reach = max(
            (t for t in (self.watermark, batch_max_ts, *self.latest_ts.values()) if t is not None), default=None
        )
        if now_ms is not None or any(self._idle.values()):
            reach = now_ms if reach is None or (now_ms is not None and now_ms > reach) else reach
        return reach is not None and reach >= deadline

    def settle_due(self, now_ms: int, effects: Effects, *, profiles_ready: bool = True) -> None:
        """On a tick: recompute idleness at the wall clock, then settle what the watermark makes due (without the
        profile history no settlement may be decided; the watermark still moves)."""
        self.idle(now_ms)
        self._settle_if_due(now_ms, effects, settle=profiles_ready)

    def settle_at_end_of_input(self, present_ms: int, effects: Effects) -> None:
        """`stream-app replay` (SPEC §11): the end of the input read stands for the present. Both topic-partitions
        count as idle, so `present_ms` stands in for the watermark (never moving it back) and every window whose
        end + GRACE_S is at or before it settles."""
        for topic in EVENT_TOPICS:
            self._idle[topic] = True
        self._settle_if_due(present_ms, effects)

    def _settle_due_videos(self, now_ms: int, effects: Effects) -> None:
        wm = self.watermark
        assert wm is not None
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= wm:
            _, video_id = heapq.heappop(deadlines)
            ledger = self._ledgers.get(video_id)
            if ledger is not None and ledger.windows and self._deadline(min(ledger.windows)) <= wm:
                self._settle_video(ledger, wm, now_ms, effects)

    def _settle_video(self, ledger: VideoLedger, wm: int, now_ms: int, effects: Effects) -> None:
        self._touch(ledger)
        video_id = ledger.video_id
        for k in sorted(ledger.windows):
            if self._deadline(k) > wm:
                break
            _start_ms, end_ms = window_bounds(k, self.policy.window_s)
            eligible = self.profiles.eligible_at(ledger.creator_id, end_ms)
            if self.journaled:
                self.journal.record([journal.OP_SETTLE, video_id, k])
            judged = ledger.judge_pending(self.policy, k)
            settlement = ledger.settle(self.policy, self.policy_id, k, eligible, judged, now_ms)
            self.pending_interactions -= len(judged)
            effects.pending_delta -= len(judged)
            position = Position(self.partition, 0, 0)
            for item in judged:
                position = Position(self.partition, item.offset, item.index)
                verdict = item.verdict
                if verdict.reason is None:
                    effects.accepted[INTERACTIONS] = effects.accepted.get(INTERACTIONS, 0) + 1
                else:
                    effects.outcomes.append(
                        EventOutcome(
                            INTERACTIONS, Outcome.SUSPICIOUS, verdict.reason, verdict.detail, item.event, position
                        )
                    )
            effects.settlements.append(settlement.record)
            self._emit_now(ledger, now_ms, effects)
        self._expire(ledger, wm)
        ledger.updated_at = now_ms
        if ledger.windows:
            heapq.heappush(self._deadlines, (self._deadline(min(ledger.windows)), video_id))

    def _expire(self, ledger: VideoLedger, wm: int) -> None:
        flag_safe = self.flag_safe_ms()
        if self.journaled:
            self.journal.record([journal.OP_EXPIRE, ledger.video_id, wm, flag_safe])
        ledger.expire_memory(self.policy, wm, flag_safe)
        ledger.expire_head(self.policy, wm)

    def sweep_quiet_videos(self, now_ms: int, interval_ms: int = QUIET_SWEEP_MS) -> int:
        """Expire the memories of videos not touched for a window and its grace (expiry otherwise runs when a
        video settles), and drop from the working set those left with nothing to remember. At most once per
        `interval_ms`; costs what it visits (an expiry index by last touch), not the working set's size."""
        wm = self.watermark
        if wm is None or now_ms - self._last_sweep_ms < interval_ms:
            return 0
        self._last_sweep_ms = now_ms
        quiet_ms = (self.policy.window_s + self.policy.grace_s) * 1000 + recent_views_keep_ms(self.policy)
        visited = 0
        again: list[str] = []
        for video_id in dict.fromkeys(self._quiet.due(wm - quiet_ms)):
            ledger = self._ledgers.get(video_id)
            if ledger is None or ledger.windows or video_id in self._touched:
                continue
            visited += 1
            self._touch(ledger)
            self._expire(ledger, wm)
            if ledger.memory.is_empty() and not ledger.settled and video_id not in self._dirty:
                self._evict.append(video_id)
            else:
                again.append(video_id)
        for video_id in again:
            self._quiet.note(video_id, wm)
        return visited

    # ---- output ----

    def _emit_now(self, ledger: VideoLedger, now_ms: int, effects: Effects) -> None:
        before = self._touched.get(ledger.video_id)
        content = ledger.content_key()
        if ledger.version == 0 or content != before:
            ledger.version += 1
        self._touched[ledger.video_id] = content
        self._emit(ledger, now_ms, effects)

    def _emit(self, ledger: VideoLedger, now_ms: int, effects: Effects) -> None:
        effects.accruals.append(ledger.accrual(self.policy_id))
        ledger.published_version = ledger.version  # the wiring writes this head only once the broker acked it
        self._last_emit[ledger.video_id] = now_ms
        self._dirty.pop(ledger.video_id, None)

    def flush(self, now_ms: int, effects: Effects) -> StateWrite:
        """End of a batch: version changed records, emit what is due, and collect the state to write."""
        interval_ms = int(self.policy.emit_interval_s * 1000)
        state = effects.state
        ledgers = self._ledgers
        flag_safe = self.flag_safe_ms()
        keep_ms = recent_views_keep_ms(self.policy)
        changed: dict[str, VideoLedger] = {}
        for video_id, before in self._touched.items():
            ledger = ledgers[video_id]
            if before is None or ledger.content_key() != before:
                ledger.version += 1
                self._dirty[video_id] = None
            self.provisional_micros += ledger.provisional_micros(ledger.eligible) - self._provisional_before.pop(
                video_id, 0
            )
            newest = ledger.memory.rules.accepted_views.max_ts
            cutoff = recent_views_cutoff(self.policy, newest - keep_ms, newest, flag_safe)
            if ledger.recent_trim_due(cutoff) and ledger.trim_recent(cutoff) and self.journaled:
                self.journal.record([journal.OP_TRIM, video_id, cutoff])
            changed[video_id] = ledger
        self._touched.clear()
        for video_id in list(self._dirty):
            if now_ms - self._last_emit.get(video_id, -interval_ms) >= interval_ms:
                ledger = ledgers[video_id]
                self._emit(ledger, now_ms, effects)
                changed[video_id] = ledger
        state.segments.extend(self._rewrites)
        self._rewrites.clear()
        if self.journaled:
            state.segments.extend(self.journal.seal(changed, self.watermark))
        if self.watermark is not None and self.journaled:
            dropped, rescue = self.journal.droppable(self._journal_cutoff())
            for video_id in rescue:
                self._store_head_apart(ledgers[video_id], state)
            state.dropped.extend(dropped)
        for video_id in self._evict:
            evicted = ledgers.get(video_id)
            if evicted is not None and video_id not in self._dirty:
                self._store_head_apart(evicted, state)
                self.journal.forget_video(video_id)
                del ledgers[video_id]
                self._last_emit.pop(video_id, None)
        self._evict.clear()
        state.meta = self.meta().to_bytes()
        return state

    def _store_head_apart(self, ledger: VideoLedger, state: StateWrite) -> None:
        state.heads.append((ledger.video_id, codec.encode(Kind.HEAD, ledger.head())))
        self.journal.head_stored_apart(ledger.video_id)

    def _journal_cutoff(self) -> int:
        """Segments whose entries are all at or before this ts hold nothing a memory keeps: the longest memory
        horizon behind the watermark, and never past the start of a window still open."""
        assert self.watermark is not None
        cutoff = self.watermark - journal.memory_horizon_ms(self.policy)
        if self._deadlines:
            oldest_open = self._deadlines[0][0] - (2 * self.policy.window_s + self.policy.grace_s) * 1000
            cutoff = min(cutoff, oldest_open)
        return cutoff

    def meta(self) -> PartitionMeta:
        return PartitionMeta(dict(self.latest_ts), self.policy_id, dict(self.device_acks), self.journal.next_seq)

    def republish(self, now_ms: int) -> Effects:
        """After an assignment: the current record of every video whose newest version the broker may not have
        (SPEC §7: nothing lost between a state write and a crash), unchanged; their heads, which now say so, are
        in effects.state."""
        effects = Effects()
        republished: dict[str, VideoLedger] = {}
        for ledger in self._ledgers.values():
            if ledger.version and ledger.published_version < ledger.version:
                self._emit(ledger, now_ms, effects)
                republished[ledger.video_id] = ledger
        effects.state.segments.extend(self.journal.seal(republished, self.watermark))
        effects.state.meta = self.meta().to_bytes()
        return effects


class MemoryState:
    """A partition's stored state in a dict: the StateSource of tests, benchmarks and `stream-app replay`."""

    def __init__(self) -> None:
        self.heads: dict[str, bytes] = {}
        self.segment_values: dict[int, bytes] = {}
        self.meta_value: bytes | None = None
        self.writes = 0

    def head(self, video_id: str) -> bytes | None:
        return self.heads.get(video_id)

    def segments(self) -> Iterable[bytes]:
        return list(self.segment_values.values())

    def meta(self) -> bytes | None:
        return self.meta_value

    def apply(self, write: StateWrite) -> None:
        self.writes += 1
        for seq, value in write.segments:
            if value is None:
                self.segment_values.pop(seq, None)
            else:
                self.segment_values[seq] = value
        for video_id, value in write.heads:
            self.heads[video_id] = value
        if write.meta is not None:
            self.meta_value = write.meta
        for seq in write.dropped:
            self.segment_values.pop(seq, None)
