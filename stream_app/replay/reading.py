"""The replay's own consumer (SPEC §11): reads the retained input topics and the settlement ledger without a
consumer group (it never joins the workers' group, never commits an offset, never writes), up to the end each
partition had when the replay started, so a replay while workers run is read-only and reads a fixed snapshot.

Order. Profiles are read first, whole (a worker loads its profile history before it scores). The two event topics
are merged into one stream by Kafka record timestamp (ties: views before interactions, then partition, then
offset): the order in which a worker that kept up received them, and the same order on every run.
"""

from __future__ import annotations

import datetime as dt
import heapq
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.domain.errors import ReplaySelectionError
from stream_app.domain.events import InputTopic
from stream_app.replay.engine import InputRecord

EVENT_TOPICS = (InputTopic.VIEWS, InputTopic.INTERACTIONS)
_RANK = {InputTopic.VIEWS: 0, InputTopic.INTERACTIONS: 1}
_EPOCH_MS = re.compile(r"[0-9]+")
FETCH_TIMEOUT_MS = 1_000


def parse_time(text: str, flag: str) -> int:
    """`--from`/`--to`: epoch milliseconds, or an ISO-8601 time (UTC unless it names its offset)."""
    value = text.strip()
    if _EPOCH_MS.fullmatch(value):
        return int(value)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        raise ReplaySelectionError(
            f"{flag} {text!r} is neither epoch milliseconds nor an ISO-8601 time like 2026-11-29T10:00:00Z"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def format_ms(ms: int) -> str:
    """Epoch ms as an ISO-8601 UTC time, to the millisecond."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Selection:
    """Which records to replay, by Kafka record timestamp (inclusive bounds; None: everything retained)."""

    from_ms: int | None = None
    to_ms: int | None = None

    def __post_init__(self) -> None:
        if self.from_ms is not None and self.to_ms is not None and self.from_ms > self.to_ms:
            raise ReplaySelectionError(
                f"--from {format_ms(self.from_ms)} is after --to {format_ms(self.to_ms)}: nothing to replay"
            )

    def holds(self, timestamp_ms: int) -> bool:
        return (self.from_ms is None or timestamp_ms >= self.from_ms) and (
            self.to_ms is None or timestamp_ms <= self.to_ms
        )


@dataclass(slots=True)
class Snapshot:
    """What the replay reads: per topic-partition, where it starts and the end it had when the replay began."""

    topics: dict[InputTopic, str]  # with TOPIC_PREFIX
    partitions: dict[InputTopic, int]
    start: dict[TopicPartition, int] = field(default_factory=dict)
    end: dict[TopicPartition, int] = field(default_factory=dict)
    log_start: dict[TopicPartition, int] = field(default_factory=dict)
    other_partitions: dict[str, int] = field(default_factory=dict)  # partition counts of the other topics read
    first_read: dict[TopicPartition, int] = field(default_factory=dict)  # timestamp of the first record read

    def complete_from_ms(self) -> int | None:
        """Where the input read is complete: None when nothing was deleted by retention, else the latest first
        record timestamp among the event partitions whose start was deleted (windows before it are partial)."""
        names = {self.topics[t] for t in EVENT_TOPICS}
        cut = [
            self.first_read[tp]
            for tp, start in self.log_start.items()
            if tp.topic in names and start > 0 and tp in self.first_read
        ]
        return max(cut) if cut else None

    def records(self, topic: InputTopic) -> int:
        name = self.topics[topic]
        return sum(max(0, self.end[tp] - self.start[tp]) for tp in self.end if tp.topic == name)


def new_consumer(bootstrap: str, security: Mapping[str, Any]) -> AIOKafkaConsumer:
    """A consumer outside any group: it is assigned partitions explicitly and never commits."""
    return AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        client_id="stream-app-replay",
        **dict(security),
    )


async def partitions_of(consumer: AIOKafkaConsumer, names: Mapping[Any, str], bootstrap: str) -> dict[Any, int]:
    """Partition count of each topic; a topic that does not exist is refused by name."""
    await consumer._client.force_metadata_update()
    counts: dict[Any, int] = {}
    for key, name in names.items():
        partitions = consumer.partitions_for_topic(name)
        if not partitions:
            raise ReplaySelectionError(
                f"topic {name} does not exist on {bootstrap} (check TOPIC_PREFIX; `stream-app topics apply` creates "
                "the topics)"
            )
        counts[key] = len(partitions)
    return counts


async def take_snapshot(
    consumer: AIOKafkaConsumer,
    bootstrap: str,
    prefix: str,
    selection: Selection,
    security: Mapping[str, Any],
    also_required: tuple[str, ...] = (),
) -> Snapshot:
    """Check every topic exists (the inputs and `also_required`, before any assignment narrows the metadata the
    client fetches), then fix where each input partition starts and ends."""
    topics = {topic: prefix + topic.value for topic in InputTopic}
    partitions = await partitions_of(consumer, {**topics, **{name: name for name in also_required}}, bootstrap)
    snapshot_extra = {name: partitions.pop(name) for name in also_required}
    if partitions[InputTopic.VIEWS] != partitions[InputTopic.INTERACTIONS]:
        raise ReplaySelectionError(
            f"{topics[InputTopic.VIEWS]} has {partitions[InputTopic.VIEWS]} partitions and "
            f"{topics[InputTopic.INTERACTIONS]} {partitions[InputTopic.INTERACTIONS]}: they must be co-partitioned"
        )
    snapshot = Snapshot(topics, partitions, other_partitions=snapshot_extra)
    tps = assign_snapshot(consumer, snapshot)
    snapshot.log_start = dict(await consumer.beginning_offsets(tps))
    snapshot.end = await true_ends(bootstrap, dict(await consumer.end_offsets(tps)), security)
    snapshot.start = dict(snapshot.log_start)
    if selection.from_ms is not None:
        event_tps = [tp for tp in tps if tp.topic != topics[InputTopic.PROFILES]]
        found = await consumer.offsets_for_times({tp: selection.from_ms for tp in event_tps})
        for tp in event_tps:
            at = found.get(tp)
            snapshot.start[tp] = snapshot.end[tp] if at is None else max(at.offset, snapshot.log_start[tp])
    return snapshot


def assign_snapshot(consumer: AIOKafkaConsumer, snapshot: Snapshot) -> list[TopicPartition]:
    """Assign the consumer every input partition of the snapshot (a consumer of its own may read a snapshot another
    took: stream-app replay's second process)."""
    tps = [TopicPartition(snapshot.topics[t], p) for t in InputTopic for p in range(snapshot.partitions[t])]
    consumer.assign(tps)
    return tps


async def true_ends(bootstrap: str, reported: dict[TopicPartition, int], security: Mapping[str, Any]) -> dict[Any, int]:
    """The end offset of each partition (tansu, the embedded test broker, reports it too low after a multi-record
    batch: edges/kafka_client.py; a no-op on Apache Kafka)."""
    from stream_app.edges.kafka_client import true_end_offsets

    return dict(await true_end_offsets(bootstrap, reported, security))


async def _read_partition_runs(
    consumer: AIOKafkaConsumer, snapshot: Snapshot, tps: list[TopicPartition], on_fetch: Callable[[int], None]
) -> AsyncIterator[tuple[TopicPartition, list[Any]]]:
    """Fetches of the given partitions, records below the snapshot's end only, until each reaches its end."""
    waiting = [tp for tp in tps if snapshot.start[tp] < snapshot.end[tp]]
    for tp in waiting:
        consumer.seek(tp, snapshot.start[tp])
    remaining = set(waiting)
    while remaining:
        fetched = await consumer.getmany(*sorted(remaining), timeout_ms=FETCH_TIMEOUT_MS)
        for tp in sorted(remaining):
            messages = fetched.get(tp, [])
            end = snapshot.end[tp]
            kept = [m for m in messages if m.offset < end]
            on_fetch(len(kept))
            if await _at_end(consumer, tp, messages, end):
                remaining.discard(tp)
            if kept:
                yield tp, kept


async def _at_end(consumer: AIOKafkaConsumer, tp: TopicPartition, messages: list[Any], end: int) -> bool:
    """Whether a partition has been read up to `end` (a gap at the end of a log, left by compaction or control
    records, is seen through the position)."""
    if messages:
        return bool(messages[-1].offset + 1 >= end)
    return bool(await consumer.position(tp) >= end)


async def read_profiles(
    consumer: AIOKafkaConsumer, snapshot: Snapshot, selection: Selection, on_fetch: Callable[[int], None]
) -> list[InputRecord]:
    """Every retained profile up to --to (profiles before --from are still in effect: they are state, not events)."""
    name = snapshot.topics[InputTopic.PROFILES]
    tps = [TopicPartition(name, p) for p in range(snapshot.partitions[InputTopic.PROFILES])]
    by_partition: dict[int, list[InputRecord]] = {tp.partition: [] for tp in tps}
    async for tp, messages in _read_partition_runs(consumer, snapshot, tps, on_fetch):
        for m in messages:
            if selection.to_ms is None or m.timestamp <= selection.to_ms:
                by_partition[tp.partition].append(
                    InputRecord(InputTopic.PROFILES, tp.partition, m.offset, m.timestamp, m.key, m.value)
                )
    return [record for p in sorted(by_partition) for record in by_partition[p]]


async def read_events(
    consumer: AIOKafkaConsumer, snapshot: Snapshot, selection: Selection, on_fetch: Callable[[int], None]
) -> AsyncIterator[InputRecord]:
    """The views and interactions in the snapshot and the selection, merged by record timestamp (module doc)."""
    tps = [TopicPartition(snapshot.topics[t], p) for t in EVENT_TOPICS for p in range(snapshot.partitions[t])]
    topic_of = {snapshot.topics[t]: t for t in EVENT_TOPICS}
    buffers: dict[TopicPartition, deque[Any]] = {tp: deque() for tp in tps}
    exhausted = {tp: snapshot.start[tp] >= snapshot.end[tp] for tp in tps}
    for tp in tps:
        if not exhausted[tp]:
            consumer.seek(tp, snapshot.start[tp])

    async def fill(tp: TopicPartition) -> None:
        """Fetch until `tp` has a buffered record or has reached its end."""
        end = snapshot.end[tp]
        while not buffers[tp] and not exhausted[tp]:
            fetched = await consumer.getmany(tp, timeout_ms=FETCH_TIMEOUT_MS)
            messages = fetched.get(tp, [])
            kept = [m for m in messages if m.offset < end]
            on_fetch(len(kept))
            buffers[tp].extend(kept)
            exhausted[tp] = await _at_end(consumer, tp, messages, end)

    heap: list[tuple[int, int, int, int, int]] = []
    for i, tp in enumerate(tps):
        await fill(tp)
        if buffers[tp]:
            m = buffers[tp][0]
            heap.append((m.timestamp, _RANK[topic_of[tp.topic]], tp.partition, m.offset, i))
    heapq.heapify(heap)
    while heap:
        _, _, _, _, i = heapq.heappop(heap)
        tp = tps[i]
        m = buffers[tp].popleft()
        snapshot.first_read.setdefault(tp, m.timestamp)
        if not buffers[tp]:
            await fill(tp)
        if buffers[tp]:
            nxt = buffers[tp][0]
            heapq.heappush(heap, (nxt.timestamp, _RANK[topic_of[tp.topic]], tp.partition, nxt.offset, i))
        if selection.holds(m.timestamp):
            yield InputRecord(topic_of[tp.topic], tp.partition, m.offset, m.timestamp, m.key, m.value)


async def read_settlements(
    consumer: AIOKafkaConsumer, name: str, count: int, bootstrap: str, security: Mapping[str, Any]
) -> list[tuple[int, int, bytes | None]]:
    """Every record of the settlement ledger (`count` partitions) up to its end now: (partition, offset, value)."""
    tps = [TopicPartition(name, p) for p in range(count)]
    consumer.assign(tps)
    start = dict(await consumer.beginning_offsets(tps))
    end = await true_ends(bootstrap, dict(await consumer.end_offsets(tps)), security)
    snapshot = Snapshot({}, {}, start=start, end=end)
    records: list[tuple[int, int, bytes | None]] = []
    async for tp, messages in _read_partition_runs(consumer, snapshot, tps, lambda n: None):
        records.extend((tp.partition, m.offset, m.value) for m in messages)
    return sorted(records, key=lambda r: (r[0], r[1]))
