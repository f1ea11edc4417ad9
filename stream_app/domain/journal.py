"""A partition's journal: what changed its videos' memories, one segment per batch, replayed after a restart.

Video memories (domain/scoring.py VideoMemory) hold up to a day of ids and timestamps: far too much to write
whole at every batch (the previous layout did, and a hot video's ledger dominated the worker's time and the
changelog's bytes). Instead each batch appends one segment listing, in order, the operations that changed any
memory: a view or interaction that reached the rules, a device flag, a settlement, an expiry. A worker that
takes the partition over rebuilds every memory by replaying the segments through the same functions the live
path calls (`replay`), so what it rebuilds is what the live worker held.

Consistency across a crash. A segment is written before the heads of the videos it touched, and each head
records the newest segment it includes (`VideoLedger.journal_seq`); writes to one changelog partition keep
their order. On replay, a video's operations from segments newer than its head are not applied: the head that
would include them was never written, and the input they came from is read again (SPEC §4 replay positions).
Those orphaned operations are then removed from their segments, so a later head cannot adopt them.

A segment is dropped once every entry it added is older than any memory keeps (`Journal.droppable`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from stream_app.domain import codec, rules
from stream_app.domain import policy as pol
from stream_app.domain.codec import Kind
from stream_app.domain.events import InteractionEvent, ViewEvent
from stream_app.domain.scoring import VideoLedger

# Operation codes (the first element of each operation).
OP_VIEW = (
    0  # [OP_VIEW, video_id, event_id, viewer_id, device_id, ts, watch_ms, video_ms, source, region, offset, index]
)
OP_INTERACTION = 1  # [OP_INTERACTION, video_id, event_id, viewer_id, device_id, ts, kind, offset, index]
OP_FLAG = 2  # [OP_FLAG, video_id, event_id]: a device rule rejected an accepted view
OP_SETTLE = 3  # [OP_SETTLE, video_id, k]
OP_EXPIRE = 4  # [OP_EXPIRE, video_id, watermark_ms, flag_safe_ms | None]
OP_TRIM = 5  # [OP_TRIM, video_id, cutoff_ms]: accepted views kept for clawback forgotten

# A segment is one Kafka record of the state changelog: kept well under the broker's default 1 MB record size.
SEGMENT_BYTES = 512 * 1024


def view_op(view: ViewEvent, offset: int, index: int) -> list[Any]:
    return [
        OP_VIEW,
        view.video_id,
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
    ]


def interaction_op(interaction: InteractionEvent, offset: int, index: int) -> list[Any]:
    return [
        OP_INTERACTION,
        interaction.video_id,
        interaction.event_id,
        interaction.viewer_id,
        interaction.device_id,
        interaction.ts,
        interaction.kind,
        offset,
        index,
    ]


def memory_horizon_ms(policy: pol.Policy) -> int:
    """How far behind the watermark any memory keeps an entry (SPEC §5, §6: the longest of dedupe, qualify-once
    and the engagement lookback, from the earliest ts an event that is not late can carry), plus the clawback
    hold and the expiry buckets' slack."""
    longest_s = max(policy.dedupe_s, policy.qualify_once_s, policy.engagement_lookback_s)
    slack_s = policy.device_flag_hold_s + 600
    return (longest_s + policy.window_s + policy.grace_s + slack_s) * 1000


def apply_view(policy: pol.Policy, ledger: VideoLedger, view: ViewEvent, offset: int, index: int) -> None:
    """Replay a view that reached the rules: the memory side of PartitionScorer._on_view."""
    judgement = rules.judge_view(policy, ledger.memory.rules, view)
    for ref in judgement.clawbacks:
        ledger.forget_clawed(ref.event_id, judged_elsewhere=False)
    if judgement.verdict.passed:
        ledger.remember_view(policy, view, offset, index)


def apply_interaction(
    policy: pol.Policy, ledger: VideoLedger, interaction: InteractionEvent, offset: int, index: int
) -> None:
    """Replay an interaction that reached the rules: the memory side of PartitionScorer._on_interaction."""
    if rules.judge_interaction_on_arrival(policy, ledger.memory.rules, interaction).passed:
        ledger.hold_interaction(policy, interaction, offset, index)


def replay(policy: pol.Policy, ledger: VideoLedger, op: list[Any]) -> None:
    """Apply one journal operation to a ledger's memories (never to its head, which is stored)."""
    code = op[0]
    if code == OP_VIEW:
        _, video_id, event_id, viewer_id, device_id, ts, watch_ms, video_ms, source, region, offset, index = op
        event = ViewEvent(
            event_id, video_id, ledger.creator_id, viewer_id, device_id, ts, watch_ms, video_ms, source, region
        )
        apply_view(policy, ledger, event, offset, index)
    elif code == OP_INTERACTION:
        _, video_id, event_id, viewer_id, device_id, ts, kind, offset, index = op
        interaction = InteractionEvent(event_id, video_id, ledger.creator_id, viewer_id, device_id, ts, kind)
        apply_interaction(policy, ledger, interaction, offset, index)
    elif code == OP_FLAG:
        ledger.forget_clawed(op[2], judged_elsewhere=True)
    elif code == OP_SETTLE:
        ledger.judge_pending(policy, op[2])
    elif code == OP_EXPIRE:
        ledger.expire_memory(policy, op[2], op[3])
    elif code == OP_TRIM:
        ledger.trim_recent(op[2])
    else:
        raise ValueError(f"unknown journal operation {code!r}")


@dataclass(slots=True)
class Segment:
    """One batch's operations on one partition's memories."""

    seq: int
    max_ts: int  # the newest event time it concerns (its views', interactions' or watermark's)
    ops: list[list[Any]]

    def to_payload(self) -> list[Any]:
        return [self.seq, self.max_ts, self.ops]

    @classmethod
    def from_payload(cls, payload: list[Any]) -> Segment:
        seq, max_ts, ops = payload
        return cls(seq, max_ts, ops)


@dataclass(slots=True)
class Journal:
    """The live segments of one partition (seq, newest ts), oldest first, and the segment being written."""

    next_seq: int = 0
    live: deque[tuple[int, int]] = field(default_factory=deque)
    ops: list[list[Any]] = field(default_factory=list)
    max_ts: int = -1

    def record(self, op: list[Any], ts: int = -1) -> None:
        self.ops.append(op)
        if ts > self.max_ts:
            self.max_ts = ts

    def seal(self, watermark_ms: int | None) -> list[tuple[int, bytes]]:
        """The batch's segments, encoded and numbered (none if no memory changed): one, or as many as keep each
        under SEGMENT_BYTES (a batch of envelopes can hold millions of events). The next batch starts anew."""
        if not self.ops:
            return []
        max_ts = max(self.max_ts, watermark_ms if watermark_ms is not None else -1)
        sealed: list[tuple[int, bytes]] = []
        pending = [self.ops]
        while pending:
            ops = pending.pop(0)
            value = codec.encode(Kind.SEGMENT, Segment(self.next_seq, max_ts, ops).to_payload())
            if len(value) > SEGMENT_BYTES and len(ops) > 1:
                half = len(ops) // 2
                pending[:0] = [ops[:half], ops[half:]]
                continue
            sealed.append((self.next_seq, value))
            self.live.append((self.next_seq, max_ts))
            self.next_seq += 1
        self.ops = []
        self.max_ts = -1
        return sealed

    def droppable(self, cutoff_ms: int) -> list[int]:
        """Segments whose every entry is at or before cutoff_ms, from the oldest on (forgotten here)."""
        dropped = []
        live = self.live
        while live and live[0][1] <= cutoff_ms:
            dropped.append(live.popleft()[0])
        return dropped
