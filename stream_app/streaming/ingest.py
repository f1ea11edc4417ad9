"""Turns a batch of consumed records into outcomes and outputs: validate, score (domain), write tables, send.

Every input event gets exactly one outcome (SPEC §4); a failure inside one event is caught and routed to the
DLQ, because Faust acks a message whose agent raised and would otherwise lose it silently.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stream_app.domain import jsoncodec
from stream_app.domain.device_records import DeviceFlags
from stream_app.domain.errors import PolicyMismatchError
from stream_app.domain.events import InputTopic, InteractionEvent, ViewEvent
from stream_app.domain.partition import Effects, PartitionScorer
from stream_app.domain.records import audit_record, dead_letter, event_to_dict
from stream_app.domain.scoring import ACCEPTED, CLAWBACK, SUSPICIOUS, Position
from stream_app.domain.validation import InvalidEvent, decode_record
from stream_app.edges.kafka_client import client_kwargs, partition_counts
from stream_app.edges.partitioner import partition_for
from stream_app.streaming.devices import send_device_views
from stream_app.streaming.sending import fail_stop
from stream_app.streaming.tables import PartitionStateStore, TableLedgerStore, writing_for

if TYPE_CHECKING:
    from stream_app.streaming.app import ScorerApp

log = logging.getLogger(__name__)

OUTCOME_INVALID = "invalid"
VIEWS_TOPIC = InputTopic.VIEWS.value
# How often a partition with no accepted views to forward still reports its progress to the device partitions.
PROGRESS_INTERVAL_S = 5.0


def _now_ms() -> int:
    return int(time.time() * 1000)


class IngestProcessor:
    def __init__(self, scorer: ScorerApp) -> None:
        self.app = scorer
        self.settings = scorer.settings
        self.policy = scorer.settings.policy
        self.metrics = scorer.metrics
        self._partition_counts: dict[str, int] = {}
        self._input_topics = {self.settings.topic(t): t for t in InputTopic}
        self.partitions: dict[int, PartitionScorer] = {}
        self._republish: set[int] = set()
        # per partition: the progress and drained state last reported to the device partitions, and when
        self._reported: dict[int, tuple[int, bool, float]] = {}
        self._progress_due: set[int] = set()

    # ---- partitions ----

    def partition_count(self, topic: str) -> int:
        """Partition counts are read once from the cluster (a count change is a migration, not an edit)."""
        return self._partition_counts[topic]

    async def load_partition_counts(self) -> None:
        if not self._partition_counts:
            self._partition_counts = await partition_counts(
                self.settings.kafka_bootstrap,
                [
                    *self._input_topics,
                    self.app.tick_topic_name,
                    self.app.device_flags_name,
                    self.app.device_views_name,
                ],
                client_kwargs(self.settings.env),
            )

    def scorer_for(self, partition: int, topic: str) -> PartitionScorer:
        """The scorer of a partition of the co-partitioned topics (`topic`: the one a record came from; all of
        them have the partition count of video-views)."""
        scorer = self.partitions.get(partition)
        if scorer is None:
            count = self.partition_count(topic)
            store = TableLedgerStore(self.app.video_state, partition, count)
            saved = PartitionStateStore(self.app.partition_state, count).load(partition)
            self._check_policy(partition, saved.get("policy"))
            scorer = PartitionScorer(
                self.policy,
                self.app.policy_id,
                partition,
                store,
                self.app.profiles,
                watermarks=saved.get("latest_ts"),
                now_ms=_now_ms(),
                device_partitions=self.partition_count(self.app.device_views_name),
            )
            self.partitions[partition] = scorer
            self._republish.add(partition)
            self.metrics.set_pending_interactions(self.pending_interactions())
        return scorer

    def _check_policy(self, partition: int, stored: str | None) -> None:
        if stored is None or stored == self.app.policy_id or self.settings.allow_policy_change:
            return
        error = PolicyMismatchError(
            f"partition {partition} holds state written under policy {stored}, but this worker runs "
            f"{self.app.policy_id}; refusing to continue (set ALLOW_POLICY_CHANGE=1 to score on under the new policy)"
        )
        log.critical("%s", error)
        fail_stop("policy mismatch", code=3)

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: drop their in-memory state (the tables keep the truth)."""
        for partition in partitions:
            self.partitions.pop(partition, None)
            self._reported.pop(partition, None)
            self._progress_due.discard(partition)
        self.metrics.set_pending_interactions(self.pending_interactions())

    def pending_interactions(self) -> int:
        return sum(s.pending_interactions for s in self.partitions.values())

    # ---- batches ----

    async def process_profiles(self, batch: Sequence[Any]) -> None:
        """creator-profiles in the group: count outcomes and dead-letter the invalid (the ProfileReader, outside
        the group, builds every worker's profile history)."""
        await self.load_partition_counts()
        for event in batch:
            message = event.message
            try:
                await self._process_record(message, _now_ms(), {})
            except Exception as exc:  # one bad record must never stop the worker or vanish
                log.exception("unexpected failure on %s[%s]@%s", message.topic, message.partition, message.offset)
                await self._send_dead_letter(message, None, message.value or b"", f"internal error: {exc!r}")
            self.app.processed_offsets[(message.topic, message.partition)] = message.offset + 1

    async def process_batch(self, batch: Sequence[Any]) -> None:
        """views, interactions and ticks of the partitions this worker owns (one agent: no interleaving)."""
        # Eligibility "now" needs the profile history loaded: hold events until the profile reader caught up.
        await self.app.profile_reader.caught_up.wait()
        await self.load_partition_counts()
        now_ms = _now_ms()
        touched: dict[int, Effects] = {}
        last_event: dict[int, Any] = {}  # per partition: an event of it, for table writes (tables.writing_for)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("batch of %d: %s", len(batch), sorted({(e.message.topic, e.message.partition) for e in batch}))
        for event in batch:
            message = event.message
            last_event[message.partition] = event
            try:
                if message.topic == self.app.tick_topic_name:
                    await self._on_tick(message.partition, now_ms, touched)
                    continue
                if message.topic == self.app.device_flags_name:
                    effects = touched.setdefault(message.partition, Effects())
                    flagged = self.scorer_for(message.partition, message.topic)
                    device_flags = DeviceFlags.from_bytes(message.value)
                    for flag in device_flags.flags:
                        flagged.on_device_flag(flag.video_id, flag.event_id, flag.reason, flag.detail, now_ms, effects)
                    for ack in device_flags.acks:  # after the flags: that device partition judged up to its watermark
                        flagged.on_device_ack(ack.device_partition, ack.watermark)
                    continue
                await self._process_record(message, now_ms, touched)
            except Exception as exc:  # one bad record must never stop the worker or vanish
                log.exception("unexpected failure on %s[%s]@%s", message.topic, message.partition, message.offset)
                if message.topic in self._input_topics:
                    await self._send_dead_letter(message, None, message.value or b"", f"internal error: {exc!r}")
            if message.topic in self._input_topics:
                self.app.processed_offsets[(message.topic, message.partition)] = message.offset + 1
        try:
            for partition, effects in touched.items():
                scorer = self.partitions.get(partition)
                if scorer is None:
                    continue
                with writing_for(last_event[partition]):
                    scorer.flush(now_ms, effects)
                    PartitionStateStore(self.app.partition_state, self.partition_count(self.app.tick_topic_name)).save(
                        partition, {"latest_ts": scorer.latest_ts, "policy": self.app.policy_id}
                    )
                await self._apply(effects)
                await self._report_progress(partition, scorer, effects)
        except Exception:
            fail_stop("could not write the state or outputs of a batch")
        await self._republish_assigned()

    async def _process_record(self, message: Any, now_ms: int, touched: dict[int, Effects]) -> None:
        topic = self._input_topics[message.topic]
        decoded = decode_record(
            topic,
            message.key,
            message.value,
            partition=message.partition,
            partition_count=self.partition_count(message.topic),
            partition_for=partition_for,
        )
        record_ts_ms = round(message.timestamp * 1000)  # Faust gives seconds as a float
        for item in decoded:
            if isinstance(item, InvalidEvent):
                await self._send_dead_letter(message, item.index, item.value, item.error)
                continue
            event = item.event
            lag_s = max(0.0, now_ms / 1000 - event.ts / 1000)
            if topic is InputTopic.PROFILES:
                self.metrics.observe_event_lag(topic.value, lag_s)
                self.metrics.count_outcome(topic.value, ACCEPTED)
                continue
            assert isinstance(event, ViewEvent | InteractionEvent)
            effects = touched.get(message.partition)
            if effects is None:
                effects = touched[message.partition] = Effects()
            position = Position(message.partition, message.offset, -1 if item.index is None else item.index)
            scorer = self.scorer_for(message.partition, message.topic)
            replays = effects.skipped_replays
            scorer.on_event(topic.value, event, event_to_dict(event), position, record_ts_ms, now_ms, effects)
            if effects.skipped_replays == replays:  # a replay was observed when it was first processed
                self.metrics.observe_event_lag(topic.value, lag_s)
            for dead_position, error in effects.dead_letters:
                value = message.value if item.index is None else jsoncodec.dumps(event_to_dict(event))
                await self._send_dead_letter(message, dead_position.index_or_none, value, error)
            effects.dead_letters.clear()

    async def _report_progress(self, partition: int, scorer: PartitionScorer, effects: Effects) -> None:
        """Send this batch's accepted views to the device partitions with the partition's progress. With none, on
        a tick: whether its views topic-partition is drained (caught up) at once when that changed; else, at most
        every PROGRESS_INTERVAL_S, its progress when it moved, and a drained state again (so a device partition
        that changed hands hears it). After an assignment a partition reports where it stands before it accepts a
        new view."""
        latest = scorer.source_progress_ms()
        progress = -1 if latest is None else latest
        due = partition in self._progress_due
        self._progress_due.discard(partition)
        views = effects.device_views
        drained = not views and scorer.caught_up[VIEWS_TOPIC]
        last = self._reported.get(partition)
        if not views and not self._worth_reporting(due, last, latest, drained):
            return
        await send_device_views(self.app, views, partition, progress, drained)
        self._reported[partition] = (progress, drained, time.monotonic())

    @staticmethod
    def _worth_reporting(due: bool, last: tuple[int, bool, float] | None, latest: int | None, drained: bool) -> bool:
        """A report without views: on a tick only; a first one when there is something to say; then a change of
        the drained state at once, else progress that moved, or a drained state again, every PROGRESS_INTERVAL_S."""
        if not due:
            return False
        if last is None:
            return latest is not None or drained
        if drained != last[1]:
            return True
        progress = -1 if latest is None else latest
        return time.monotonic() - last[2] >= PROGRESS_INTERVAL_S and (progress > last[0] or drained)

    async def _on_tick(self, partition: int, now_ms: int, touched: dict[int, Effects]) -> None:
        scorer = self.scorer_for(partition, self.app.tick_topic_name)
        for topic in (InputTopic.VIEWS, InputTopic.INTERACTIONS):
            scorer.observe_position(topic.value, await self.app.caught_up(topic, partition), now_ms)
        effects = touched.get(partition)
        if effects is None:
            effects = touched[partition] = Effects()
        scorer.settle_due(now_ms, effects, profiles_ready=self.app.profile_reader.caught_up.is_set())
        scorer.sweep_quiet_videos(now_ms)
        self._progress_due.add(partition)

    # ---- effects ----

    async def _apply(self, effects: Effects) -> None:
        detected_at = _now_ms()
        for outcome in effects.outcomes:
            if outcome.outcome == CLAWBACK:
                self.metrics.count_clawed_back(outcome.reason)
            else:
                self.metrics.count_outcome(outcome.topic, outcome.outcome)
                if outcome.outcome == SUSPICIOUS:
                    self.metrics.count_suspicious(outcome.reason)
            if outcome.outcome != ACCEPTED:
                record = audit_record(
                    event=outcome.event,
                    source_topic=self.settings.topic(outcome.topic),
                    partition=outcome.position.partition,
                    offset=outcome.position.offset,
                    index=outcome.position.index_or_none,
                    outcome=outcome.outcome,
                    reason=outcome.reason,
                    detail=outcome.detail,
                    detected_at=detected_at,
                )
                key = str(outcome.event.get("video_id", "")).encode()
                await self.app.topics.suspicious.send(key=key, value=jsoncodec.dumps(record), force=True)
        for settlement in effects.settlements:
            if settlement["kind"] == "settlement":
                self.metrics.add_settled(settlement["settled_micros"])
                self.metrics.count_windows_settled()
            else:
                self.metrics.add_clawback(settlement["clawback_micros"])
            await self.app.topics.settlements.send(
                key=settlement["video_id"].encode(), value=jsoncodec.dumps(settlement), force=True
            )
        for accrual in effects.accruals:
            await self.app.topics.accruals.send(
                key=accrual["video_id"].encode(), value=jsoncodec.dumps(accrual), force=True
            )
            self.metrics.count_accruals_emitted()
        if effects.pending_delta:
            self.metrics.set_pending_interactions(self.pending_interactions())
        self.metrics.set_provisional_micros(sum(s.provisional_micros for s in self.partitions.values()))

    async def _republish_assigned(self) -> None:
        """After an assignment, re-emit every video's current record unchanged and recent settlements (SPEC §7).
        Only the sends: the metrics counted these records when they were first decided."""
        while self._republish:
            partition = self._republish.pop()
            scorer = self.partitions.get(partition)
            if scorer is None:
                continue
            effects = scorer.republish(_now_ms())
            for settlement in effects.settlements:
                await self.app.topics.settlements.send(
                    key=settlement["video_id"].encode(), value=jsoncodec.dumps(settlement), force=True
                )
            for accrual in effects.accruals:
                await self.app.topics.accruals.send(
                    key=accrual["video_id"].encode(), value=jsoncodec.dumps(accrual), force=True
                )
                self.metrics.count_accruals_emitted()

    async def _send_dead_letter(self, message: Any, index: int | None, value: bytes, error: str) -> None:
        record = dead_letter(
            source_topic=message.topic,
            partition=message.partition,
            offset=message.offset,
            index=index,
            key=message.key,
            value=value,
            error=error,
            ts=_now_ms(),
        )
        await self.app.topics.dlq.send(key=message.key, value=jsoncodec.dumps(record), force=True)
        self.metrics.count_outcome(self.settings.unprefixed(message.topic), OUTCOME_INVALID)
