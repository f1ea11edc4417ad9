"""A partition's journal: what changed its videos' memories, one segment per batch, replayed after a restart.

Video memories (domain/scoring.py VideoMemory) hold up to a day of ids and timestamps: far too much to write
whole at every batch (the previous layout did, and a hot video's ledger dominated the worker's time and the
changelog's bytes). Instead each batch appends one segment listing, in order, the operations that changed any
memory: a view or interaction that reached the rules, a device flag, a settlement, an expiry. A worker that
takes the partition over rebuilds every memory by replaying the segments through the same functions the live
path calls (`replay`), so what it rebuilds is what the live worker held.

A segment also carries the heads of the videos its batch changed (`VideoLedger.head()`), so a batch's whole
state is one Kafka record: one table write per batch and partition, however many videos it touched. A video's
head is also written to a key of its own when the segment holding its newest head is dropped, or when the video
leaves the worker's memory; restore takes each video's head from the newest live segment holding one, else
from its key.

Consistency across a crash. Each head records the newest segment it includes (`VideoLedger.journal_seq`). A
batch too big for one record is split in parts, a video's head in the part with its last operations; the parts
go to one changelog partition, in order. On replay, a video's operations from segments newer than its newest
head are not applied: the head that would include them was never written, and the input they came from is read
again (SPEC §4 replay positions). Those orphaned operations are then removed from their segments, so a later
head cannot adopt them.

A segment is dropped once every entry it added is older than any memory keeps (`Journal.droppable`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
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
# What a video head takes in a segment, at most (ids of up to 128 code points, a few windows): room kept per head.
HEAD_BYTES = 4096
# The least an operation or a head is estimated to take (a view of short ids takes about 150 bytes).
MIN_ENTRY_BYTES = 64


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
    """One batch's operations on one partition's memories, and the heads of the videos the batch changed."""

    seq: int
    max_ts: int  # the newest event time it concerns (its views', interactions' or watermark's)
    ops: list[list[Any]]
    heads: list[list[Any]]  # VideoLedger.head() of each video the batch changed, journal_seq = this seq

    def to_payload(self) -> list[Any]:
        return [self.seq, self.max_ts, self.ops, self.heads]

    @classmethod
    def from_payload(cls, payload: list[Any]) -> Segment:
        seq, max_ts, ops, heads = payload
        return cls(seq, max_ts, ops, heads)


@dataclass(slots=True)
class Journal:
    """One partition's journal: the operations of the batch being processed, the live segments (seq, newest ts),
    oldest first, and where each video's newest head is stored (a segment, or its own head key: -1)."""

    next_seq: int = 0
    live: deque[tuple[int, int]] = field(default_factory=deque)
    ops: list[list[Any]] = field(default_factory=list)
    max_ts: int = -1
    head_seq: dict[str, int] = field(default_factory=dict)  # video -> segment holding its newest head
    heads_in: dict[int, set[str]] = field(default_factory=dict)  # segment -> videos whose newest head it holds
    entry_bytes: int = 256  # what an operation or a head took in the last segment, on average (size estimates)

    def record(self, op: list[Any], ts: int = -1) -> None:
        self.ops.append(op)
        if ts > self.max_ts:
            self.max_ts = ts

    def seal(self, changed: dict[str, VideoLedger], watermark_ms: int | None) -> list[tuple[int, bytes]]:
        """The batch's segments, encoded and numbered: its operations and the heads of `changed` (none if both
        are empty). One segment, or, for a batch too big for one record (a batch of envelopes can hold millions
        of events), several under SEGMENT_BYTES, each with whole videos where it can: a video's head goes in the
        last segment holding its operations (a segment written without the ones after it is still consistent:
        replay follows each video's head). The next batch starts anew.

        Sizes are estimated from the bytes per entry of the previous segments, so a big batch is encoded about
        once (encoding it whole to find it too big, then each video on its own to cut it, cost three times)."""
        if not self.ops and not changed:
            return []
        max_ts = max(self.max_ts, watermark_ms if watermark_ms is not None else -1)
        ops, self.ops, self.max_ts = self.ops, [], -1
        ledgers = list(changed.values())
        entries = len(ops) + len(ledgers)
        if entries * self.entry_bytes <= SEGMENT_BYTES * 3 // 4:
            value = self._encode(self.next_seq, ops, ledgers, max_ts)
            if len(value) <= SEGMENT_BYTES:
                return [self._commit(value, max_ts, ledgers, entries)]
        budget = SEGMENT_BYTES // 2  # room for the estimate to be off
        while True:
            parts = _split(ops, changed, budget, self.entry_bytes)
            values = [
                self._encode(self.next_seq + n, part_ops, part_ledgers, max_ts)
                for n, (part_ops, part_ledgers) in enumerate(parts)
            ]
            if all(len(value) <= SEGMENT_BYTES for value in values) or budget < HEAD_BYTES:
                return [
                    self._commit(value, max_ts, part_ledgers, len(part_ops) + len(part_ledgers))
                    for value, (part_ops, part_ledgers) in zip(values, parts, strict=True)
                ]
            budget //= 2  # entries far bigger than the estimate: cut finer

    def _encode(self, seq: int, ops: list[list[Any]], ledgers: list[VideoLedger], max_ts: int) -> bytes:
        for ledger in ledgers:
            ledger.journal_seq = seq
        return codec.encode(Kind.SEGMENT, Segment(seq, max_ts, ops, [ledger.head() for ledger in ledgers]).to_payload())

    def _commit(self, value: bytes, max_ts: int, ledgers: list[VideoLedger], entries: int) -> tuple[int, bytes]:
        seq = self.next_seq
        self.next_seq += 1
        self.live.append((seq, max_ts))
        for ledger in ledgers:
            self._head_at(ledger.video_id, seq)
        if entries:
            self.entry_bytes = max(MIN_ENTRY_BYTES, len(value) // entries)
        return seq, value

    def _head_at(self, video_id: str, seq: int) -> None:
        old = self.head_seq.get(video_id)
        if old is not None and old >= 0:
            holders = self.heads_in.get(old)
            if holders is not None:
                holders.discard(video_id)
                if not holders:
                    del self.heads_in[old]
        self.head_seq[video_id] = seq
        if seq >= 0:
            self.heads_in.setdefault(seq, set()).add(video_id)

    def head_stored_apart(self, video_id: str) -> None:
        """The video's newest head was written to its own head key (it leaves the working set, or the segment
        holding it is dropped)."""
        self._head_at(video_id, -1)

    def forget_video(self, video_id: str) -> None:
        self._head_at(video_id, -1)
        del self.head_seq[video_id]

    def adopt(self, seq: int, max_ts: int, head_videos: Iterable[str]) -> None:
        """A stored segment found at restore (in seq order): its seq, newest ts and the videos it holds heads of."""
        self.live.append((seq, max_ts))
        self.next_seq = max(self.next_seq, seq + 1)
        for video_id in head_videos:
            self._head_at(video_id, seq)

    def droppable(self, cutoff_ms: int) -> tuple[list[int], list[str]]:
        """Segments whose every entry is at or before cutoff_ms, from the oldest on (forgotten here), and the
        videos whose newest head is in one of them: their head must be written to its own key first."""
        dropped: list[int] = []
        rescue: list[str] = []
        live = self.live
        while live and live[0][1] <= cutoff_ms:
            seq = live.popleft()[0]
            dropped.append(seq)
            rescue.extend(sorted(self.heads_in.pop(seq, ())))
        return dropped, rescue


def _split(
    ops: list[list[Any]], changed: dict[str, VideoLedger], budget: int, entry_bytes: int
) -> list[tuple[list[list[Any]], list[VideoLedger]]]:
    """A batch's operations and heads in parts of about `budget` bytes (each entry estimated at `entry_bytes`):
    whole videos per part where a video fits, each video's operations in order, its head in the part with its last
    operations."""
    by_video: dict[str, list[list[Any]]] = {}
    for op in ops:
        by_video.setdefault(op[1], []).append(op)
    for video_id in changed:
        by_video.setdefault(video_id, [])
    per_part = max(1, budget // entry_bytes - 1)
    parts: list[tuple[list[list[Any]], list[VideoLedger]]] = []
    part_ops: list[list[Any]] = []
    part_heads: list[VideoLedger] = []
    size = 0
    for video_id, video_ops in by_video.items():
        last = video_ops
        while len(last) > per_part:  # a video too big for one part: its first operations in parts of their own
            parts.append((last[:per_part], []))
            last = last[per_part:]
        last_size = (len(last) + 1) * entry_bytes
        if (part_ops or part_heads) and size + last_size > budget:
            parts.append((part_ops, part_heads))
            part_ops, part_heads, size = [], [], 0
        part_ops.extend(last)
        ledger = changed.get(video_id)
        if ledger is not None:
            part_heads.append(ledger)
        size += last_size
    if part_ops or part_heads:
        parts.append((part_ops, part_heads))
    return parts
