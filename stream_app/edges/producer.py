"""Producer SDK for upstream teams: sends view, interaction and profile events to the input topics (SPEC §3)
as batch envelopes (a JSON array per partition, null key) or single keyed records, always partitioned by the
Java clients' murmur2 so every video lives in one partition of both event topics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NamedTuple, get_args

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from stream_app.domain import jsoncodec
from stream_app.domain.errors import BrokerError, ConfigError, InvalidEventError
from stream_app.domain.events import CreatorProfile, Event, InputTopic, InteractionEvent, ViewEvent
from stream_app.domain.partitioning import KEY_FIELD, partition_for
from stream_app.domain.records import event_to_dict

SendMode = Literal["envelope", "single"]
COMPRESSIONS = (None, "gzip", "snappy", "lz4", "zstd")  # aiokafka's codecs; None is Kafka's default

# SPEC §3: an envelope holds 1-1,000 events and is at most 1 MiB.
MAX_ENVELOPE_EVENTS = 1000
MAX_ENVELOPE_BYTES = 1024 * 1024
# Kafka's default message.max.bytes is 1 MiB + 12 bytes for the whole record batch (header ~61 bytes plus
# the record's own framing), and aiokafka's max_request_size is 1 MiB: an envelope of exactly 1 MiB would be
# refused by a default broker. The SDK therefore fills envelopes to 1 MiB minus this headroom.
RECORD_OVERHEAD_BYTES = 1024
DEFAULT_ENVELOPE_BYTES = MAX_ENVELOPE_BYTES - RECORD_OVERHEAD_BYTES

# How many undelivered records send() lets pile up before it waits for their acknowledgements.
_MAX_PENDING_RECORDS = 512

_EVENT_TYPES: dict[InputTopic, type[ViewEvent | InteractionEvent | CreatorProfile]] = {
    InputTopic.VIEWS: ViewEvent,
    InputTopic.INTERACTIONS: InteractionEvent,
    InputTopic.PROFILES: CreatorProfile,
}


class EncodedEvent(NamedTuple):
    """One event ready to send: its record key (video_id or creator_id, UTF-8) and its JSON object bytes."""

    key: bytes
    value: bytes


class Envelope(NamedTuple):
    """One batch envelope: the partition its events' keys map to, its JSON array bytes, how many events."""

    partition: int
    value: bytes
    events: int


@dataclass(frozen=True, slots=True)
class SendReport:
    """What a send delivered: events, Kafka records (envelopes or single records) and record value bytes."""

    events: int = 0
    records: int = 0
    bytes: int = 0

    def __add__(self, other: SendReport) -> SendReport:
        return SendReport(self.events + other.events, self.records + other.records, self.bytes + other.bytes)


@dataclass(frozen=True, slots=True)
class RecordPosition:
    """Where one record was written."""

    topic: str
    partition: int
    offset: int


def encode_event(topic: InputTopic, event: Event | Mapping[str, object]) -> EncodedEvent:
    """The record key and JSON bytes of one event; InvalidEventError when it has no usable id for `topic`.

    Only the key is checked here: the worker validates everything else and dead-letters what it refuses.
    """
    field = KEY_FIELD[topic]
    if isinstance(event, ViewEvent | InteractionEvent | CreatorProfile):
        expected = _EVENT_TYPES[topic]
        if not isinstance(event, expected):
            raise InvalidEventError(f"{type(event).__name__} cannot be sent to {topic.value}")
        obj: Mapping[str, object] = event_to_dict(event)
        key = event.key
    else:
        obj = event
        raw_key = event.get(field)
        if raw_key is None:
            raise InvalidEventError(f"{field}: missing")
        if not isinstance(raw_key, str) or not raw_key:
            raise InvalidEventError(f"{field}: must be a non-empty string, got {raw_key!r}")
        key = raw_key
    try:
        key_bytes = key.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidEventError(f"{field}: not encodable as UTF-8 ({exc.reason})") from None
    # orjson serializes dict, not arbitrary Mappings.
    return EncodedEvent(key_bytes, jsoncodec.dumps(obj if isinstance(obj, dict) else dict(obj)))


class EnvelopePlanner:
    """Groups encoded events by target partition into envelopes, incrementally (a stream is never held whole).

    Events keep their order within a partition, which is the only order Kafka (and the worker) sees.
    """

    def __init__(self, partition_count: int, max_events: int, max_bytes: int) -> None:
        if not 1 <= max_events <= MAX_ENVELOPE_EVENTS:
            raise ConfigError(f"max_batch_events must be between 1 and {MAX_ENVELOPE_EVENTS}, got {max_events}")
        if not 2 < max_bytes <= MAX_ENVELOPE_BYTES:
            raise ConfigError(f"max_envelope_bytes must be between 3 and {MAX_ENVELOPE_BYTES}, got {max_bytes}")
        self._partition_count = partition_count
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._pending: dict[int, list[bytes]] = {}
        # Serialized size of the pending envelope of each partition: "[" + ",".join(values) + "]".
        self._sizes: dict[int, int] = {}

    def add(self, event: EncodedEvent) -> list[Envelope]:
        """Queue one event; return the envelopes (partition, bytes) this completed, usually none."""
        if len(event.value) + 2 > self._max_bytes:
            raise InvalidEventError(
                f"event with key {event.key!r} is {len(event.value)} bytes serialized; "
                f"an envelope holds at most {self._max_bytes} bytes"
            )
        partition = partition_for(event.key, self._partition_count)
        done: list[Envelope] = []
        pending = self._pending.setdefault(partition, [])
        if pending and self._sizes[partition] + 1 + len(event.value) > self._max_bytes:
            done.append(self._close(partition))
            pending = self._pending.setdefault(partition, [])
        pending.append(event.value)
        self._sizes[partition] = self._sizes.get(partition, 1) + len(event.value) + 1
        if len(pending) >= self._max_events:
            done.append(self._close(partition))
        return done

    def drain(self) -> list[Envelope]:
        """The partly filled envelopes of every partition, in partition order; the planner is empty after."""
        return [self._close(partition) for partition in sorted(self._pending)]

    def _close(self, partition: int) -> Envelope:
        values = self._pending.pop(partition)
        del self._sizes[partition]
        return Envelope(partition, b"[" + b",".join(values) + b"]", len(values))


def plan_envelopes(
    events: Iterable[EncodedEvent],
    partition_count: int,
    max_events: int = MAX_ENVELOPE_EVENTS,
    max_bytes: int = MAX_ENVELOPE_BYTES,
) -> list[tuple[int, bytes]]:
    """Every envelope (partition, JSON array bytes) for `events`, by partition, in event order within one."""
    planner = EnvelopePlanner(partition_count, max_events, max_bytes)
    envelopes: list[Envelope] = []
    for event in events:
        envelopes.extend(planner.add(event))
    envelopes.extend(planner.drain())
    # sorted() is stable: envelopes of one partition keep the order their events came in.
    return [(envelope.partition, envelope.value) for envelope in sorted(envelopes, key=lambda e: e.partition)]


class RewardsProducer:
    """Async producer of input events. Use as `async with RewardsProducer(bootstrap) as producer:`.

    Not idempotent and not transactional (some Kafka-compatible brokers refuse InitProducerId): a retried send
    may duplicate a record, which the worker's `event_id` de-duplication (`duplicate_event`) absorbs.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        topic_prefix: str = "",
        mode: SendMode = "envelope",
        max_batch_events: int = MAX_ENVELOPE_EVENTS,
        max_envelope_bytes: int = DEFAULT_ENVELOPE_BYTES,
        compression: str | None = None,
        linger_ms: int = 5,
        client_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if mode not in get_args(SendMode):
            raise ConfigError(f"mode must be 'envelope' or 'single', got {mode!r}")
        if compression not in COMPRESSIONS:
            raise ConfigError(f"compression must be one of gzip, snappy, lz4, zstd or None, got {compression!r}")
        # Validates the envelope limits once, here, rather than at the first send.
        EnvelopePlanner(1, max_batch_events, max_envelope_bytes)
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        self.mode: SendMode = mode
        self.max_batch_events = max_batch_events
        self.max_envelope_bytes = max_envelope_bytes
        self._compression = compression
        self._linger_ms = linger_ms
        # Kept as given: edges.kafka_client's ClientKwargs hides the password from repr.
        self._client_kwargs: Mapping[str, Any] = client_kwargs or {}
        self._producer: AIOKafkaProducer | None = None
        self._totals = SendReport()

    async def __aenter__(self) -> RewardsProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Connect to the cluster."""
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="stream-app-producer",
            acks="all",
            enable_idempotence=False,
            linger_ms=self._linger_ms,
            compression_type=self._compression,
            **self._client_kwargs,
        )
        try:
            await producer.start()
        except KafkaError as exc:
            await producer.stop()
            raise BrokerError(f"cannot connect producer to {self.bootstrap}: {exc}") from exc
        self._producer = producer

    async def stop(self) -> None:
        """Deliver what is pending and disconnect."""
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    @property
    def totals(self) -> SendReport:
        """Everything this producer has delivered since it was created."""
        return self._totals

    @property
    def max_event_bytes(self) -> int:
        """The largest serialized event this producer can send in its mode."""
        return self.max_envelope_bytes - 2 if self.mode == "envelope" else self.max_envelope_bytes

    def topic_name(self, topic: InputTopic | str) -> str:
        """The full topic name: TOPIC_PREFIX + the name (a str is also a name without the prefix)."""
        return self.topic_prefix + (topic if isinstance(topic, str) else topic.value)

    async def partition_count(self, topic: InputTopic | str) -> int:
        """How many partitions the topic has, from the producer's cluster metadata."""
        name = self.topic_name(topic)
        try:
            partitions = await self._started().partitions_for(name)
        except KafkaError as exc:
            raise BrokerError(f"cannot read partitions of topic {name}: {exc}") from exc
        if not partitions:
            raise BrokerError(f"topic {name} has no partitions")
        return len(partitions)

    async def send_views(self, events: Iterable[ViewEvent | Mapping[str, object]]) -> SendReport:
        return await self.send(InputTopic.VIEWS, events)

    async def send_interactions(self, events: Iterable[InteractionEvent | Mapping[str, object]]) -> SendReport:
        return await self.send(InputTopic.INTERACTIONS, events)

    async def send_profiles(self, events: Iterable[CreatorProfile | Mapping[str, object]]) -> SendReport:
        return await self.send(InputTopic.PROFILES, events)

    async def send(self, topic: InputTopic, events: Iterable[Event | Mapping[str, object]]) -> SendReport:
        """Send events (dataclasses or dicts) and wait until the broker has them all.

        Every event is encoded before anything is sent, so an event without a usable id (InvalidEventError)
        sends nothing. For an unbounded stream, call this per batch or use send_encoded.
        """
        encoded = [encode_event(topic, event) for event in events]
        return await self.send_encoded(topic, encoded)

    async def send_encoded(self, topic: InputTopic, events: Iterable[EncodedEvent]) -> SendReport:
        """Send already-encoded events in this producer's mode, streaming; waits until all are delivered."""
        name = self.topic_name(topic)
        count = await self.partition_count(topic)
        sender = _PendingSends(self._started(), name)
        if self.mode == "single":
            for event in events:
                if len(event.value) > self.max_event_bytes:
                    raise InvalidEventError(
                        f"event with key {event.key!r} is {len(event.value)} bytes serialized; "
                        f"a record holds at most {self.max_event_bytes} bytes"
                    )
                await sender.send(event.key, event.value, partition_for(event.key, count), events=1)
        else:
            planner = EnvelopePlanner(count, self.max_batch_events, self.max_envelope_bytes)
            for event in events:
                for envelope in planner.add(event):
                    await sender.send(None, envelope.value, envelope.partition, events=envelope.events)
            for envelope in planner.drain():
                await sender.send(None, envelope.value, envelope.partition, events=envelope.events)
        report = await sender.finish()
        self._totals += report
        return report

    async def send_raw(
        self,
        topic: InputTopic | str,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
    ) -> RecordPosition:
        """Send one record as given (replays, tests). Without a partition: murmur2 of the key, or 0."""
        name = self.topic_name(topic)
        if partition is None:
            partition = 0 if key is None else partition_for(key, await self.partition_count(topic))
        sender = _PendingSends(self._started(), name)
        await sender.send(key, value, partition, events=1)
        self._totals += await sender.finish()
        if sender.last_position is None:
            raise BrokerError(f"no acknowledgement for the record sent to {name}[{partition}]")
        return sender.last_position

    async def send_raw_records(
        self, topic: InputTopic | str, records: Iterable[tuple[bytes | None, bytes]]
    ) -> SendReport:
        """Send (key, value) records as given, each to murmur2 of its key or partition 0 for a null key."""
        name = self.topic_name(topic)
        count = await self.partition_count(topic)
        sender = _PendingSends(self._started(), name)
        for key, value in records:
            partition = 0 if key is None else partition_for(key, count)
            await sender.send(key, value, partition, events=1)
        report = await sender.finish()
        self._totals += report
        return report

    async def flush(self) -> None:
        """Wait until every record handed to the client so far is acknowledged."""
        try:
            await self._started().flush()
        except KafkaError as exc:
            raise BrokerError(f"flush failed: {exc}") from exc

    def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            raise BrokerError("RewardsProducer is not started: use `async with RewardsProducer(...)`")
        return self._producer


class _PendingSends:
    """Records handed to aiokafka whose acknowledgements are still due; bounded so memory stays flat."""

    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self._producer = producer
        self._topic = topic
        self._pending: list[tuple[asyncio.Future[Any], int, int]] = []
        self._report = SendReport()
        self.last_position: RecordPosition | None = None

    async def send(self, key: bytes | None, value: bytes, partition: int, *, events: int) -> None:
        try:
            future = await self._producer.send(self._topic, value, key=key, partition=partition)
        except KafkaError as exc:
            raise BrokerError(f"cannot send to {self._topic}[{partition}]: {exc}") from exc
        self._pending.append((future, events, len(value)))
        if len(self._pending) >= _MAX_PENDING_RECORDS:
            await self._settle()

    async def finish(self) -> SendReport:
        await self._settle()
        return self._report

    async def _settle(self) -> None:
        pending, self._pending = self._pending, []
        try:
            metadata = await asyncio.gather(*(future for future, _, _ in pending))
        except KafkaError as exc:
            raise BrokerError(f"delivery to {self._topic} failed: {exc}") from exc
        if metadata:
            last = metadata[-1]
            self.last_position = RecordPosition(last.topic, last.partition, last.offset)
        self._report += SendReport(
            events=sum(events for _, events, _ in pending),
            records=len(pending),
            bytes=sum(size for _, _, size in pending),
        )
