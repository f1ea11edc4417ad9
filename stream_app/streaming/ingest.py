"""Turns a batch of consumed records into outcomes and outputs: validate, score (domain), write tables, send.

Every input event gets exactly one outcome (SPEC §4); a failure inside one event is caught and routed to the
DLQ, because Faust acks a message whose agent raised and would otherwise lose it silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.domain.device_records import DeviceFlags
from stream_app.domain.errors import PolicyMismatchError, StateFormatError
from stream_app.domain.events import InputTopic, InteractionEvent, Outcome, ViewEvent
from stream_app.domain.partition import Effects, PartitionMeta, PartitionScorer
from stream_app.domain.partitioning import partition_for
from stream_app.domain.policy import policy_hash
from stream_app.domain.profiles import ProfileHistory
from stream_app.domain.records import event_to_dict
from stream_app.domain.scoring import Position
from stream_app.domain.validation import InvalidEvent, decode_record
from stream_app.edges.metrics import RewardsMetrics
from stream_app.edges.settings import Settings
from stream_app.streaming.devices import send_device_views
from stream_app.streaming.emitter import Emitter, Outbox
from stream_app.streaming.faust_compat import writing_for
from stream_app.streaming.positions import Positions
from stream_app.streaming.sending import fail_stop
from stream_app.streaming.tables import TableState
from stream_app.streaming.topics import PartitionCounts, TopicNames

log = logging.getLogger(__name__)

# How often a partition with no accepted views to forward still reports its progress to the device partitions.
PROGRESS_INTERVAL_S = 5.0
# A batch (up to BATCH_MAX_EVENTS records, streaming/app.py) of envelopes can hold two million events: it is scored in
# parts of about this many events, each sent, acknowledged and written before the next starts. Without it a
# catch-up's batch ran for seconds without yielding to the event loop (measured: 245,000 events in one 5 s batch on
# the hot-video workload), so Faust's producer buffer held the batches' table writes until the input ran out (the
# changelog received them after the pass), and the device agent and the event loop's heartbeat waited as long
# (/livez answers 503 after LIVENESS_TIMEOUT_S, 30 s, without one: a batch of 2,000 full envelopes takes longer).
PART_EVENTS = 20_000
_SCORED = (ViewEvent, InteractionEvent)  # a tuple: `A | B` in an isinstance builds a union type per call


def _now_ms() -> int:
    return int(time.time() * 1000)


class IngestProcessor:
    """The score-events and track-profiles agents' work, over exactly what it uses."""

    def __init__(
        self,
        *,
        settings: Settings,
        metrics: RewardsMetrics,
        names: TopicNames,
        video_state: Any,
        profiles: ProfileHistory,
        profiles_ready: asyncio.Event,
        positions: Positions,
        counts: PartitionCounts,
        producer: Callable[[], Any],
        batches: Callable[[], Any] | None = None,
        sync_profiles: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        self.settings = settings
        self.policy = settings.policy
        self.policy_id = policy_hash(settings.policy)
        self.metrics = metrics
        self.names = names
        self.video_state = video_state
        self.profiles = profiles
        self.profiles_ready = profiles_ready  # set once the profile reader caught up (eligibility needs it)
        self._sync_profiles = sync_profiles  # the profile reader takes in what the broker holds (before settling)
        self.positions = positions
        self.partition_count = counts
        self._producer = producer  # Faust's producer exists only once the app runs
        self._batches = batches  # aiokafka's producer under it, for sends in aiokafka's batches (emitter.Outbox)
        self.emitter = Emitter(settings, metrics)
        self._input_topics = names.inputs
        self.partitions: dict[int, PartitionScorer] = {}
        self._republish: set[int] = set()
        # per partition: the progress and drained state last reported to the device partitions, and when
        self._reported: dict[int, tuple[int, bool, float]] = {}
        self._progress_due: set[int] = set()
        self._lag_ts: dict[InputTopic, list[int]] = {}  # per event topic: ts of the batch's events (event lag)

    # ---- partitions ----

    def scorer_for(self, partition: int, topic: str) -> PartitionScorer:
        """The scorer of a partition of the co-partitioned topics (`topic`: the one a record came from; all of
        them have the partition count of video-views), restored from the table on first use."""
        scorer = self.partitions.get(partition)
        if scorer is None:
            count = self.partition_count(topic)
            state = TableState(self.video_state, partition, count)
            try:
                self._check_policy(partition, PartitionMeta.from_bytes(state.meta()).policy_id)
                started = time.monotonic()
                scorer = PartitionScorer(
                    self.policy,
                    self.policy_id,
                    partition,
                    state,
                    self.profiles,
                    now_ms=_now_ms(),
                    device_partitions=self.partition_count(self.names.device_views),
                )
            except StateFormatError as exc:
                log.critical(
                    "partition %d of %s holds %s; this release keeps state as journal segments and video heads "
                    "and cannot read it. Either keep running the previous release on this APP_ID, or run this one "
                    "under a new APP_ID (its state is rebuilt from the retained input; accrual versions start "
                    "again at 1, so readers of reward-accruals must drop what they hold for this app)",
                    partition,
                    self.settings.internal_topic("video-state-changelog"),
                    exc,
                )
                fail_stop("state written by another layout", code=3)
            log.info(
                "partition %d restored in %.2f s: %d videos in memory, %d journal segments",
                partition,
                time.monotonic() - started,
                sum(1 for _ in scorer.ledgers()),
                len(scorer.journal.live),
            )
            self.partitions[partition] = scorer
            self._republish.add(partition)
            self.metrics.set_pending_interactions(self.pending_interactions())
        return scorer

    def _check_policy(self, partition: int, stored: str | None) -> None:
        if stored is None or stored == self.policy_id or self.settings.allow_policy_change:
            return
        error = PolicyMismatchError(
            f"partition {partition} holds state written under policy {stored}, but this worker runs "
            f"{self.policy_id}; refusing to continue (set ALLOW_POLICY_CHANGE=1 to score on under the new policy)"
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
        await self.partition_count.load()
        outbox = self.outbox()
        now_ms = _now_ms()
        for event in batch:
            message = event.message
            try:
                await self._process_record(message, now_ms, {}, outbox, None)
            except Exception as exc:  # one bad record must never stop the worker or vanish
                log.exception("unexpected failure on %s[%s]@%s", message.topic, message.partition, message.offset)
                await self.emitter.dead_letter(
                    message, None, message.value or b"", f"internal error: {exc!r}", outbox, now_ms
                )
            self.positions.processed[(message.topic, message.partition)] = message.offset + 1
        try:
            await outbox.acknowledged()
        except Exception:
            fail_stop("the broker refused an output record")

    async def process_batch(self, batch: Sequence[Any]) -> None:
        """views, interactions, ticks and device flags of the partitions this worker owns (one agent: no
        interleaving), scored in parts of about PART_EVENTS events (`_parts`): each part's outputs are sent and
        acknowledged before its state is written (SPEC §4)."""
        # Eligibility "now" needs the profile history loaded: hold events until the profile reader caught up.
        await self.profiles_ready.wait()
        await self.partition_count.load()
        for records, decoded in self._parts(batch):
            await self._process_part(records, decoded)

    def _parts(self, batch: Sequence[Any]) -> Iterator[tuple[list[Any], list[list[Any] | None]]]:
        """The batch in consecutive parts of whole records, each decoded, a part closed once it holds PART_EVENTS
        events or more (a record that is not an input record, or does not decode, counts as one)."""
        records: list[Any] = []
        decoded: list[list[Any] | None] = []
        events = 0
        for event in batch:
            items = self._decode_input(event.message)
            records.append(event)
            decoded.append(items)
            events += len(items) if items else 1
            if events >= PART_EVENTS:
                yield records, decoded
                records, decoded, events = [], [], 0
        if records:
            yield records, decoded

    async def _process_part(self, batch: Sequence[Any], decoded: Sequence[list[Any] | None]) -> None:
        """One part of a batch: every record scored, then outputs sent and acknowledged, then the state written."""
        now_ms = _now_ms()
        touched: dict[int, Effects] = {}
        last_event: dict[int, Any] = {}  # per partition: an event of it, for table writes (faust_compat.writing_for)
        outbox = self.outbox()
        input_topics = self._input_topics
        processed = self.positions.processed
        self._lag_ts = {InputTopic.VIEWS: [], InputTopic.INTERACTIONS: []}
        await self._sync_profiles_if_settling(batch, decoded, now_ms)
        for n, event in enumerate(batch):
            message = event.message
            last_event[message.partition] = event
            try:
                if message.topic == self.names.ticks:
                    await self._on_tick(message.partition, now_ms, touched)
                    continue
                if message.topic == self.names.device_flags:
                    self._on_device_flags(message, now_ms, touched)
                    continue
                await self._process_record(message, now_ms, touched, outbox, decoded[n])
            except Exception as exc:  # one bad record must never stop the worker or vanish
                log.exception("unexpected failure on %s[%s]@%s", message.topic, message.partition, message.offset)
                if message.topic in input_topics:
                    await self.emitter.dead_letter(
                        message, None, message.value or b"", f"internal error: {exc!r}", outbox, now_ms
                    )
            if message.topic in input_topics:
                processed[(message.topic, message.partition)] = message.offset + 1
        try:
            for partition, effects in touched.items():
                scorer = self.partitions.get(partition)
                if scorer is None:
                    continue
                scorer.flush(now_ms, effects)
                await self.emitter.emit(effects, outbox, now_ms)
                await self._report_progress(partition, scorer, effects, outbox)
            for topic, event_ts in self._lag_ts.items():
                self.metrics.observe_event_lags(topic.value, now_ms, event_ts)
            republished = await self._republish_assigned(outbox, now_ms)
            await outbox.acknowledged()
            for partition, effects in [*touched.items(), *republished.items()]:
                if effects.state and partition in self.partitions:
                    with writing_for(last_event[partition]):
                        TableState(self.video_state, partition, self.partition_count(self.names.ticks)).write(
                            effects.state
                        )
            self._publish_gauges(touched)
        except Exception:
            fail_stop("could not send the outputs or write the state of a batch")

    def outbox(self) -> Outbox:
        """An Outbox for one batch's sends (this agent's and the device judge's)."""
        return Outbox(self._producer(), self.partition_count, None if self._batches is None else self._batches())

    def _on_device_flags(self, message: Any, now_ms: int, touched: dict[int, Effects]) -> None:
        effects = touched.get(message.partition)
        if effects is None:
            effects = touched[message.partition] = Effects()
        flagged = self.scorer_for(message.partition, message.topic)
        device_flags = DeviceFlags.from_bytes(message.value)
        for flag in device_flags.flags:
            flagged.on_device_flag(flag.video_id, flag.event_id, flag.reason, flag.detail, now_ms, effects)
        for ack in device_flags.acks:  # after the flags: that device partition judged up to its watermark
            flagged.on_device_ack(ack.device_partition, ack.watermark)

    def _publish_gauges(self, touched: dict[int, Effects]) -> None:
        if any(effects.pending_delta for effects in touched.values()):
            self.metrics.set_pending_interactions(self.pending_interactions())
        self.metrics.set_provisional_micros(sum(s.provisional_micros for s in self.partitions.values()))

    def _decode(self, message: Any) -> list[Any]:
        return decode_record(
            self._input_topics[message.topic],
            message.key,
            message.value,
            partition=message.partition,
            partition_count=self.partition_count(message.topic),
            partition_for=partition_for,
        )

    def _decode_input(self, message: Any) -> list[Any] | None:
        """An input record decoded (None: not an input record, or its decoding failed, which the scoring pass
        meets again and dead-letters)."""
        if message.topic not in self._input_topics:
            return None
        try:
            return self._decode(message)
        except Exception:  # decoded again, and dead-lettered, where it is scored
            return None

    async def _sync_profiles_if_settling(
        self, batch: Sequence[Any], decoded: Sequence[list[Any] | None], now_ms: int
    ) -> None:
        """Before a batch that may settle a window, bring the profile history up to what the broker holds (SPEC
        §5: a settlement fixes the eligibility of the profile in effect at the window's end)."""
        if self._sync_profiles is None:
            return
        spans: dict[int, list[Any]] = {}  # partition -> [smallest event ts, largest event ts, a tick came]
        ticks = self.names.ticks
        for event, items in zip(batch, decoded, strict=True):
            message = event.message
            span = spans.get(message.partition)
            if span is None:
                span = spans[message.partition] = [None, None, False]
            if message.topic == ticks:
                span[2] = True
            elif items:
                low, high = span[0], span[1]
                for item in items:
                    if isinstance(item, InvalidEvent):
                        continue
                    ts = item.event.ts
                    if low is None or ts < low:
                        low = ts
                    if high is None or ts > high:
                        high = ts
                span[0], span[1] = low, high
        for partition, (low, high, ticked) in spans.items():
            if low is None and not ticked:
                continue
            scorer = self.scorer_for(partition, ticks)
            if scorer.may_settle(low, high, now_ms if ticked else None):
                await self._sync_profiles()
                return

    async def _process_record(
        self, message: Any, now_ms: int, touched: dict[int, Effects], outbox: Outbox, decoded: list[Any] | None
    ) -> None:
        topic = self._input_topics[message.topic]
        if decoded is None:
            decoded = self._decode(message)
        record_ts_ms = round(message.timestamp * 1000)  # Faust gives seconds as a float
        metrics = self.metrics
        for item in decoded:
            if isinstance(item, InvalidEvent):
                await self.emitter.dead_letter(message, item.index, item.value, item.error, outbox, now_ms)
                continue
            event = item.event
            if topic is InputTopic.PROFILES:
                metrics.observe_event_lag(topic.value, (now_ms - event.ts) / 1000)
                metrics.count_outcome(topic.value, Outcome.ACCEPTED)
                continue
            assert isinstance(event, _SCORED)
            effects = touched.get(message.partition)
            if effects is None:
                effects = touched[message.partition] = Effects()
            position = Position(message.partition, message.offset, -1 if item.index is None else item.index)
            scorer = self.scorer_for(message.partition, message.topic)
            replays = effects.skipped_replays
            scorer.on_event(topic, event, position, record_ts_ms, now_ms, effects)
            if effects.skipped_replays == replays:  # a replay was observed when it was first processed
                self._lag_ts[topic].append(event.ts)
            if effects.dead_letters:
                for dead_position, error in effects.dead_letters:
                    value = message.value if item.index is None else jsoncodec.dumps(event_to_dict(event))
                    await self.emitter.dead_letter(message, dead_position.index_or_none, value, error, outbox, now_ms)
                effects.dead_letters.clear()

    async def _report_progress(self, partition: int, scorer: PartitionScorer, effects: Effects, outbox: Outbox) -> None:
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
        drained = not views and scorer.caught_up[InputTopic.VIEWS]
        last = self._reported.get(partition)
        if not views and not self._worth_reporting(due, last, latest, drained):
            return
        await send_device_views(
            outbox,
            self.names.device_views,
            self.partition_count(self.names.device_views),
            views,
            partition,
            progress,
            drained,
        )
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
        scorer = self.scorer_for(partition, self.names.ticks)
        for topic in (InputTopic.VIEWS, InputTopic.INTERACTIONS):
            scorer.observe_position(topic, await self.positions.caught_up(topic, partition), now_ms)
        effects = touched.get(partition)
        if effects is None:
            effects = touched[partition] = Effects()
        scorer.settle_due(now_ms, effects, profiles_ready=self.profiles_ready.is_set())
        scorer.sweep_quiet_videos(now_ms)
        self._progress_due.add(partition)

    # ---- after an assignment ----

    async def _republish_assigned(self, outbox: Outbox, now_ms: int) -> dict[int, Effects]:
        """After an assignment, re-emit every video's current record the broker may not have (SPEC §7). Only the
        sends: the metrics counted these records when they were first decided."""
        republished: dict[int, Effects] = {}
        while self._republish:
            partition = self._republish.pop()
            scorer = self.partitions.get(partition)
            if scorer is None:
                continue
            effects = republished[partition] = scorer.republish(now_ms)
            await self.emitter.send_records(effects, outbox)
        return republished
