"""Scores retained input under several policies in one pass (SPEC §11) with the very code the worker runs:
`validation.decode_record` once per record, then per policy a `PartitionScorer` per partition on the same batch
path as the worker (on_event, device rules, flush), and the device rules through `ReplayDeviceRules`.

Time. A replay has no wall clock of its own: the Kafka timestamp of the record being scored stands for the worker's
wall clock (`now_ms`): a replay scores as a worker that kept up would have, and a topic-partition that delivered
nothing for IDLE_SETTLE_S of record time is idle, as it was for such a worker. The end of the input stands for the
present (`finish`): every window whose end + GRACE_S is at or before `present_ms` settles, the rest stay
provisional. Deterministic: the same records in the same order give the same results (no clock, no randomness,
partitions and videos visited in sorted order).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_app.domain.events import CreatorProfile, InputTopic, InteractionEvent, Outcome, ViewEvent
from stream_app.domain.partition import Effects, PartitionScorer, StateWrite
from stream_app.domain.policy import Policy, policy_hash, same_verdicts
from stream_app.domain.profiles import ProfileHistory
from stream_app.domain.scoring import Position
from stream_app.domain.validation import InvalidEvent, PartitionFor, decode_record
from stream_app.replay.device_rules import DeviceFlag, DeviceShare, ReplayDeviceRules

VIEWS = InputTopic.VIEWS
INTERACTIONS = InputTopic.INTERACTIONS
PROFILES = InputTopic.PROFILES

# Events per batch: the worker's agent takes up to 2,000 (streaming/app.py); a batch ends with the device rules,
# their flags and one state write per partition, as the worker's does.
BATCH_EVENTS = 2_000
# The worker ticks each partition every second (idleness, settling, quiet-video sweeps); so does the replay, in
# record time.
TICK_MS = 1_000
# The single device judge acknowledges as device partition 0 of 1 (see device_rules.py).
DEVICE_PARTITION = 0
# The rules judged per device (SPEC §6), whose flags reach a video's window after a round trip in the worker.
DEVICE_REASONS = frozenset({"device_burst", "device_overlap", "account_farm"})


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One record of an input topic as read from Kafka (`topic` without TOPIC_PREFIX)."""

    topic: InputTopic
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class VideoResult:
    """One video's totals under one policy at the end of the replay (the Accrual's money fields, SPEC §7)."""

    video_id: str
    creator_id: str
    settled_micros: int
    clawback_micros: int
    qualified_views: int  # of settled windows, net of clawed-back views
    windows_settled: int
    provisional_micros: int
    views: int

    @property
    def net_micros(self) -> int:
        return self.settled_micros - self.clawback_micros


class HeadStore:
    """A partition's stored state as far as a replay needs it: the heads and meta (a ledger that left the working
    set is read back from its head). Journal segments only serve a restart, which a replay never does."""

    def __init__(self) -> None:
        self.heads: dict[str, bytes] = {}
        self.meta_value: bytes | None = None

    def head(self, video_id: str) -> bytes | None:
        return self.heads.get(video_id)

    def segments(self) -> Iterable[bytes]:
        return ()

    def meta(self) -> bytes | None:
        return self.meta_value

    def apply(self, write: StateWrite) -> None:
        self.heads.update(write.heads)
        if write.meta is not None:
            self.meta_value = write.meta


@dataclass(slots=True)
class RunTotals:
    """What one policy's run decided besides the money: outcomes by (topic, outcome, reason), ledger records."""

    outcomes: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    settlements: list[dict[str, Any]] = field(default_factory=list)  # settlement and clawback records, in order
    device_flags: int = 0
    # accepted views a device rule clawed back, by (video_id, window_start): what explains a reconciliation gap
    device_clawed: Counter[tuple[str, int]] = field(default_factory=Counter)


@dataclass(slots=True)
class RunSummary:
    """What a report reads of a PolicyRun (its policy, results() and totals) without its scorers: what the
    candidate's own process sends back when a replay scores the two policies in two (command.py)."""

    policy: Policy
    policy_id: str
    videos: dict[str, VideoResult]
    totals: RunTotals

    def results(self) -> dict[str, VideoResult]:
        return self.videos


class PolicyRun:
    """One policy over every partition: scorers, device rules, and what they decided.

    `leader`: a run whose policy judges every event alike (policy.same_verdicts: the two differ in money only, as
    policies/v2.toml does): its device rules' flags and watermark are this run's too, so they run once (their
    input, the accepted views, is the same). Its end of each batch must come first. `share`: this process judges
    only its share of the devices, and swaps flags with the process that judges the rest (device_rules.py)."""

    def __init__(
        self,
        policy: Policy,
        partitions: int,
        start_ms: int,
        leader: PolicyRun | None = None,
        share: DeviceShare | None = None,
    ) -> None:
        self.policy = policy
        self.policy_id = policy_hash(policy)
        self.profiles = ProfileHistory(policy)
        self.stores = [HeadStore() for _ in range(partitions)]
        self.scorers = [
            PartitionScorer(
                policy,
                self.policy_id,
                p,
                self.stores[p],
                self.profiles,
                now_ms=start_ms,
                device_partitions=1,
                journaled=False,  # a replay never restores: nothing to journal
            )
            for p in range(partitions)
        ]
        self.leader = leader
        self.devices: ReplayDeviceRules = (
            ReplayDeviceRules(policy, partitions, share) if leader is None else leader.devices
        )
        self.round: tuple[list[DeviceFlag], int | None] = ([], None)  # the last batch's device flags and watermark
        self.effects: dict[int, Effects] = {}
        self.totals = RunTotals()

    def effects_of(self, partition: int) -> Effects:
        effects = self.effects.get(partition)
        if effects is None:
            effects = self.effects[partition] = Effects()
        return effects

    def on_event(
        self,
        topic: InputTopic,
        event: ViewEvent | InteractionEvent,
        position: Position,
        record_ts_ms: int,
        now_ms: int,
    ) -> None:
        effects = self.effects_of(position.partition)
        self.scorers[position.partition].on_event(topic, event, position, record_ts_ms, now_ms, effects)
        if effects.dead_letters:  # a later event naming another creator for a video: invalid, as in the worker
            self.totals.outcomes[(topic.value, Outcome.INVALID.value, "")] += len(effects.dead_letters)
            effects.dead_letters.clear()

    def tick(self, now_ms: int) -> None:
        """What the worker does on a tick, for every partition (all caught up: record time is the present)."""
        for partition, scorer in enumerate(self.scorers):
            for topic in (VIEWS, INTERACTIONS):
                scorer.observe_position(topic, True, now_ms)
            scorer.settle_due(now_ms, self.effects_of(partition))
            scorer.sweep_quiet_videos(now_ms)

    def end_batch(self, now_ms: int, video_partition: Mapping[str, int], *, drained: bool = False) -> None:
        """The device rules over the batch's accepted views, their flags back to the videos' partitions, then each
        partition's flush and state write (streaming/ingest.py and streaming/devices.py, in-process)."""
        if self.leader is None:
            for partition in sorted(self.effects):
                views = self.effects[partition].device_views
                if views:
                    progress = self.scorers[partition].source_progress_ms()
                    self.devices.judge(partition, views, progress)
            if drained:
                self.devices.drained([scorer.source_progress_ms() for scorer in self.scorers])
            self.round = self.devices.acknowledge()
        else:  # the same accepted views went to the leader's device rules this batch
            self.round = self.leader.round
        flags, watermark = self.round
        for flag in flags:
            partition = video_partition[flag.video_id]
            self.scorers[partition].on_device_flag(
                flag.video_id, flag.event_id, flag.reason, flag.detail, now_ms, self.effects_of(partition)
            )
        self.totals.device_flags += len(flags)
        if watermark is not None:
            for scorer in self.scorers:
                scorer.on_device_ack(DEVICE_PARTITION, watermark)
        for partition in sorted(self.effects):
            effects = self.effects[partition]
            self.stores[partition].apply(self.scorers[partition].flush(now_ms, effects))
            self._count(effects)
        self.effects.clear()

    def _count(self, effects: Effects) -> None:
        outcomes = self.totals.outcomes
        for topic, n in effects.accepted.items():
            outcomes[(topic.value, Outcome.ACCEPTED.value, "")] += n
        window_ms = self.policy.window_s * 1000
        for outcome in effects.outcomes:
            outcomes[(outcome.topic.value, outcome.outcome.value, outcome.reason)] += 1
            if outcome.outcome is Outcome.CLAWBACK and outcome.reason in DEVICE_REASONS:
                event = outcome.event
                self.totals.device_clawed[(event.video_id, event.ts // window_ms * window_ms)] += 1
        self.totals.settlements.extend(record.to_dict() for record in effects.settlements)

    def settle_at_end(self, present_ms: int) -> None:
        for partition, scorer in enumerate(self.scorers):
            scorer.settle_at_end_of_input(present_ms, self.effects_of(partition))

    def results(self) -> dict[str, VideoResult]:
        """Every video's totals, by video_id."""
        results: dict[str, VideoResult] = {}
        for scorer, store in zip(self.scorers, self.stores, strict=True):
            for video_id in sorted(store.heads.keys() | {ledger.video_id for ledger in scorer.ledgers()}):
                ledger = scorer.ledger(video_id)
                if ledger is None:
                    continue
                results[video_id] = VideoResult(
                    video_id=video_id,
                    creator_id=ledger.creator_id,
                    settled_micros=ledger.settled_micros,
                    clawback_micros=ledger.clawback_micros,
                    qualified_views=ledger.settled_qualified_views,
                    windows_settled=ledger.windows_settled,
                    provisional_micros=ledger.provisional_micros(ledger.eligible),
                    views=ledger.views,
                )
        return dict(sorted(results.items()))


@dataclass(slots=True)
class ReadCounts:
    """What was read: records and events by topic, the newest event ts and record timestamps."""

    records: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    invalid: Counter[str] = field(default_factory=Counter)
    newest_event_ts: int | None = None
    first_record_ms: int | None = None
    last_record_ms: int | None = None


class ReplayEngine:
    """Feeds the same decoded events to one PolicyRun per policy. Profiles first (`add_profiles`), as a worker
    loads its profile history before scoring, then the event records in the order to score them (`add`).

    `device_share`: this engine scores one policy and judges a share of the devices only; another engine, in
    another process, scores a policy that judges alike over the same records with the other share."""

    def __init__(
        self,
        policies: Sequence[Policy],
        partition_counts: Mapping[InputTopic, int],
        partition_for: PartitionFor,
        *,
        batch_events: int = BATCH_EVENTS,
        device_share: DeviceShare | None = None,
    ) -> None:
        if device_share is not None and len(policies) != 1:
            raise ValueError("an engine that shares the devices with another scores one policy")
        self.device_share = device_share
        self.partition_counts = dict(partition_counts)
        self.partition_for = partition_for
        self.batch_events = batch_events
        self.policies = list(policies)
        self.runs: list[PolicyRun] = []
        self.counts = ReadCounts()
        self.video_partition: dict[str, int] = {}
        self._now: int | None = None
        self._last_tick = 0
        self._in_batch = 0
        self._profiles: list[CreatorProfile] = []

    def _start(self, now_ms: int) -> None:
        partitions = self.partition_counts[VIEWS]
        self.runs = []
        for policy in self.policies:
            leader = next((run for run in self.runs if same_verdicts(run.policy, policy)), None)
            self.runs.append(PolicyRun(policy, partitions, now_ms, leader, self.device_share))
        self._now = self._last_tick = now_ms
        for run in self.runs:
            for profile in self._profiles:
                run.profiles.add(profile)
            run.tick(now_ms)

    def _decode(self, record: InputRecord) -> list[Any]:
        counts = self.counts
        topic = record.topic.value
        counts.records[topic] += 1
        decoded = decode_record(
            record.topic,
            record.key,
            record.value,
            partition=record.partition,
            partition_count=self.partition_counts[record.topic],
            partition_for=self.partition_for,
        )
        counts.events[topic] += len(decoded)
        valid = [item for item in decoded if type(item) is not InvalidEvent]
        if len(valid) < len(decoded):
            counts.invalid[topic] += len(decoded) - len(valid)
        return valid

    def add_profiles(self, records: Iterable[InputRecord]) -> None:
        """Every profile record, before the first event record (SPEC §5: the profile in effect at a window's end)."""
        for record in records:
            for item in self._decode(record):
                assert isinstance(item.event, CreatorProfile)
                self._profiles.append(item.event)

    def add(self, record: InputRecord) -> None:
        """Score one record of video-views or video-interactions."""
        ts = record.timestamp_ms
        if self._now is None:
            self._start(ts)
        now = self._now = ts if self._now is None or ts > self._now else self._now
        counts = self.counts
        if counts.first_record_ms is None:
            counts.first_record_ms = ts
        counts.last_record_ms = now
        if now - self._last_tick >= TICK_MS:
            self._last_tick = now
            for run in self.runs:
                run.tick(now)
        topic = record.topic
        video_partition = self.video_partition
        newest = -1 if counts.newest_event_ts is None else counts.newest_event_ts
        partition, offset = record.partition, record.offset
        valid = self._decode(record)
        scoring = [run.on_event for run in self.runs]
        for event, index in valid:  # ValidEvents of a views or interactions record: ViewEvent | InteractionEvent
            if event.ts > newest:
                newest = event.ts
            if event.video_id not in video_partition:
                video_partition[event.video_id] = partition
            position = Position(partition, offset, -1 if index is None else index)
            for on_event in scoring:
                on_event(topic, event, position, ts, now)
        if valid:
            counts.newest_event_ts = newest
        self._in_batch += len(valid)
        if self._in_batch >= self.batch_events:
            self._in_batch = 0
            for run in self.runs:
                run.end_batch(now, video_partition)

    def finish(self, present_ms: int) -> list[PolicyRun]:
        """The end of the input is the present: settle what it makes due; the runs hold the results."""
        if self._now is None:
            return []
        for run in self.runs:  # a leader's batch before its followers' (PolicyRun)
            run.end_batch(self._now, self.video_partition, drained=True)
        for run in self.runs:
            run.settle_at_end(present_ms)
        for run in self.runs:
            run.end_batch(self._now, self.video_partition)
        return self.runs
