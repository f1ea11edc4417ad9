"""The Faust application: configuration, topics and agents wired to the domain core.

`build_app(settings, metrics)` makes a fresh app (tests build several); `stream_app.app` holds the one the
`faust -A stream_app.app worker` command and `stream-app worker` run.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TP, TopicT

from stream_app.domain.events import InputTopic, OutputTopic
from stream_app.domain.policy import policy_hash
from stream_app.domain.profiles import ProfileHistory
from stream_app.edges.kafka_client import client_kwargs
from stream_app.edges.metrics import RewardsMetrics, start_http_server
from stream_app.edges.settings import Settings
from stream_app.streaming import changelog_end, delivery_guard, lifecycle, topology, uncommitted_seek
from stream_app.streaming.devices import DeviceJudge
from stream_app.streaming.ingest import IngestProcessor
from stream_app.streaming.profile_reader import ProfileReader

log = logging.getLogger(__name__)

# Events are handed to the domain in batches: the per-event cost of a table write and a send is what limits a
# Faust agent, so each batch writes a key and an output record once (see README, "Throughput"). Measured on the
# domain alone (simulated organic traffic): batches of 2,000 score about 1.7x the
# events/s of batches of 500, since a hot video's ledger is serialized once per batch.
BATCH_MAX_EVENTS = 2000
BATCH_WITHIN_S = 0.1
# How often each worker sends a tick to the partitions it owns: idle settlement and trailing emits ride on ticks,
# since Faust tables can only be written while processing an event.
TICK_INTERVAL_S = 1.0
LAG_INTERVAL_S = 5.0
# An offset lookup goes through Faust's consumer thread, which stops answering once a shutdown has begun: ticks
# waiting on them held a SIGTERM'd worker for 10 s (measured). Unanswered, the partition counts as not caught up.
OFFSET_LOOKUP_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ScorerTopics:
    events: TopicT  # video-views and video-interactions, co-partitioned, consumed by one agent
    profiles: TopicT
    dlq: TopicT
    suspicious: TopicT
    accruals: TopicT
    settlements: TopicT


def broker_credentials(settings: Settings) -> Any:
    """Faust credentials from KAFKA_SECURITY_PROTOCOL and friends (None for PLAINTEXT)."""
    env = settings.env
    protocol = (env.get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
    context = None
    if protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=env.get("KAFKA_SSL_CAFILE") or None)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        return faust.SASLCredentials(
            username=env.get("KAFKA_SASL_USERNAME"),
            password=env.get("KAFKA_SASL_PASSWORD"),
            mechanism=env.get("KAFKA_SASL_MECHANISM") or "PLAIN",
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def _raw_topic(app: faust.App, *names: str) -> TopicT:
    # Keys and values stay bytes: the domain validates raw bytes and the DLQ keeps them as they came.
    return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


class ScorerApp:
    """One Faust app with its topics, tables and agents; `faust` is the faust.App itself."""

    def __init__(self, settings: Settings, metrics: RewardsMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        bootstrap = ";".join(f"kafka://{s.strip()}" for s in settings.kafka_bootstrap.split(","))
        self.faust = faust.App(
            settings.app_id,
            broker=bootstrap,
            broker_credentials=broker_credentials(settings),
            store=settings.store,
            # Table contents are payout data: Faust's web server (0.0.0.0, table views) stays off (SPEC §9).
            web_enabled=False,
            # Topics are created by `stream-app topics apply`, never by the worker or broker auto-creation.
            topic_allow_declare=False,
            topic_disable_leader=True,
            consumer_auto_offset_reset="earliest",
            producer_acks=-1,
            # linger 0 sends one request per record; a few ms lets aiokafka batch output records.
            producer_linger_ms=5,
            # a record the broker has not acknowledged by then stops the worker (streaming/topology.py)
            producer_request_timeout=topology.PRODUCER_REQUEST_TIMEOUT_S,
            key_serializer="raw",
            value_serializer="raw",
            autodiscover=False,
        )
        s = settings
        self.topics = ScorerTopics(
            events=_raw_topic(self.faust, s.topic(InputTopic.VIEWS), s.topic(InputTopic.INTERACTIONS)),
            profiles=_raw_topic(self.faust, s.topic(InputTopic.PROFILES)),
            dlq=_raw_topic(self.faust, s.topic(OutputTopic.DLQ)),
            suspicious=_raw_topic(self.faust, s.topic(OutputTopic.SUSPICIOUS)),
            accruals=_raw_topic(self.faust, s.topic(OutputTopic.ACCRUALS)),
            settlements=_raw_topic(self.faust, s.topic(OutputTopic.SETTLEMENTS)),
        )
        self.policy_id = policy_hash(settings.policy)
        self.tick_topic_name = s.internal_topic("ticks")
        self.ticks = _raw_topic(self.faust, self.tick_topic_name)
        self.device_flags_name = s.internal_topic("device-flags")
        self.device_flags = _raw_topic(self.faust, self.device_flags_name)
        self.device_views_name = s.internal_topic("device-views")
        self.device_views = _raw_topic(self.faust, self.device_views_name)
        # views, interactions, ticks and device flags are co-partitioned: one agent sees them all for a partition
        self.topics = ScorerTopics(
            events=_raw_topic(
                self.faust,
                s.topic(InputTopic.VIEWS),
                s.topic(InputTopic.INTERACTIONS),
                self.tick_topic_name,
                self.device_flags_name,
            ),
            profiles=self.topics.profiles,
            dlq=self.topics.dlq,
            suspicious=self.topics.suspicious,
            accruals=self.topics.accruals,
            settlements=self.topics.settlements,
        )
        changelog_end.install(settings.kafka_bootstrap, client_kwargs(settings.env))
        uncommitted_seek.install()
        setattr(
            self.faust,
            uncommitted_seek.STREAM_TOPICS_ATTR,
            {
                s.topic(InputTopic.VIEWS),
                s.topic(InputTopic.INTERACTIONS),
                s.topic(InputTopic.PROFILES),
                self.tick_topic_name,
                self.device_flags_name,
                s.internal_topic("device-views"),
            },
        )
        self.video_state = self._table("video-state")
        self.device_state = self._table("device-state")
        self.profiles = ProfileHistory(settings.policy)
        self.profile_reader = ProfileReader(
            settings.kafka_bootstrap, s.topic(InputTopic.PROFILES), self.profiles, dict(client_kwargs(settings.env))
        )
        # per input topic-partition: the offset after the last record processed (position_and_highwater)
        self.processed_offsets: dict[tuple[str, int], int] = {}
        self._start_offsets: dict[tuple[str, int], int] = {}
        self.ingest = IngestProcessor(self)
        self.devices = DeviceJudge(self)
        self.metrics_server: Any = None
        # probes (/livez, /readyz), the metrics server's early start and the shutdown clock (streaming/lifecycle.py)
        self.lifecycle = lifecycle.install(self)
        self.faust.agent(self.topics.events, name="score-events")(self._score_events)
        self.faust.agent(self.topics.profiles, name="track-profiles")(self._track_profiles)
        self.faust.agent(self.device_views, name="judge-devices")(self._judge_devices)
        self.faust.task(self._start_metrics_server)
        self.faust.task(self.profile_reader.run)
        self.faust.timer(TICK_INTERVAL_S)(self._send_ticks)
        self.faust.timer(LAG_INTERVAL_S)(self._measure_lag)
        self.faust.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]
        # before the consumer joins the group: the topics exist as the worker needs them (SPEC §4)
        topology.install(self)
        delivery_guard.install(self)

    def _table(self, name: str) -> Any:
        changelog = self.faust.topic(
            self.settings.internal_topic(f"{name}-changelog"),
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
            compacting=True,
        )
        return self.faust.Table(
            name,
            default=None,
            key_type=bytes,
            value_type=bytes,
            changelog_topic=changelog,
            # writes name their partition through the current event (tables.writing_for), not the key's hash
            use_partitioner=False,
        )

    async def _start_metrics_server(self) -> None:
        if self.metrics_server is None and self.settings.metrics_port:
            self.metrics_server = start_http_server(
                self.metrics, self.settings.metrics_host, self.settings.metrics_port
            )

    def _owned_partitions(self, topic: str) -> list[int]:
        return sorted(tp.partition for tp in self.faust.consumer.assignment() if tp.topic == topic)

    async def _send_ticks(self) -> None:
        now = str(int(time.time() * 1000)).encode()
        for partition in self._owned_partitions(self.tick_topic_name):
            await self.ticks.send(value=now, partition=partition, force=True)
        self.metrics.set_eligible_creators(self.profiles.eligible_creators())

    async def position_and_highwater(self, topic: str, partition: int) -> tuple[int | None, int | None]:
        """This worker's position on a topic-partition and the broker's high watermark.

        The position is the offset after the last record the agent has *processed* (`processed_offsets`), not
        what the consumer fetched or Faust handed to the stream's buffer: during a catch-up the buffer holds
        many seconds of work, and a partition whose records wait there is not caught up (SPEC §5 idleness).
        Before the first processed record it is where processing starts: the committed offset, else the earliest.
        The high watermark is at least the fetched position (below).
        """
        consumer = self.faust.consumer
        tp = TP(topic, partition)
        try:
            highwater = consumer.highwater(tp)
        except AssertionError:  # aiokafka: "Partition is not assigned" (revoked meanwhile); timers must not crash
            return None, None
        # Every record fetched (handed to the stream's buffer) is below the end: tansu reports the high watermark
        # as the last batch's base offset + 1, too low after a multi-record batch, and a fetch returns whole
        # batches, so the fetched position shows the true end (a no-op on Apache Kafka).
        read = consumer._read_offset.get(tp)  # type: ignore[attr-defined]  # no public accessor
        if read is not None and (highwater is None or read + 1 > highwater):
            highwater = read + 1
        position = self.processed_offsets.get((topic, partition))
        if position is None:
            position = consumer._committed_offset.get(tp)  # type: ignore[attr-defined]  # no public accessor
        if position is None:
            start = self._start_offsets.get((topic, partition))
            if start is None:
                if self.faust.should_stop:  # shutting down: the lookup would only wait (OFFSET_LOOKUP_TIMEOUT_S)
                    return None, highwater
                try:
                    start = (await asyncio.wait_for(consumer.earliest_offsets(tp), OFFSET_LOOKUP_TIMEOUT_S)).get(tp)
                except Exception:  # revoked meanwhile (a rebalance): unknown, and a timer must not crash the app
                    log.debug("no earliest offset for %s[%d]", topic, partition, exc_info=True)
                    return None, highwater
                if start is not None:
                    self._start_offsets[(topic, partition)] = start
            position = start
        return position, highwater

    async def caught_up(self, topic: InputTopic, partition: int) -> bool:
        position, highwater = await self.position_and_highwater(self.settings.topic(topic), partition)
        return position is not None and highwater is not None and position >= highwater

    async def _measure_lag(self) -> None:
        for topic in InputTopic:
            name = self.settings.topic(topic)
            for partition in self._owned_partitions(name):
                position, highwater = await self.position_and_highwater(name, partition)
                if position is not None and highwater is not None:
                    self.metrics.set_consumer_lag(topic.value, partition, max(0, highwater - position))

    async def _on_revoked(self, app: Any, revoked: set[TP], **_: Any) -> None:
        for tp in revoked:
            self.processed_offsets.pop((tp.topic, tp.partition), None)
            self._start_offsets.pop((tp.topic, tp.partition), None)
        events_topic = self.settings.topic(InputTopic.VIEWS)
        self.ingest.forget({tp.partition for tp in revoked if tp.topic == events_topic})
        self.devices.forget()
        for tp in revoked:
            unprefixed = self.settings.unprefixed(tp.topic)
            if unprefixed in {t.value for t in InputTopic}:
                self.metrics.forget_consumer_lag(unprefixed, tp.partition)

    async def _score_events(self, stream: Any) -> None:
        async for batch in stream.take_events(BATCH_MAX_EVENTS, within=BATCH_WITHIN_S):
            await delivery_guard.check(self, batch)  # stops the worker if the consumer skipped records
            await finish_batch(self.ingest.process_batch(batch))

    async def _judge_devices(self, stream: Any) -> None:
        async for batch in stream.take_events(BATCH_MAX_EVENTS, within=BATCH_WITHIN_S):
            await finish_batch(self.devices.process_batch(batch))

    async def _track_profiles(self, stream: Any) -> None:
        async for batch in stream.take_events(BATCH_MAX_EVENTS, within=BATCH_WITHIN_S):
            await finish_batch(self.ingest.process_profiles(batch))


async def finish_batch(work: Coroutine[Any, Any, None]) -> None:
    """Run a batch to its end even when Faust cancels the agent (it does on a rebalance): a batch cut between its
    state writes and its sends would be acked half done. The cancellation is honoured once the batch is done."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def build_app(settings: Settings, metrics: RewardsMetrics | None = None) -> ScorerApp:
    return ScorerApp(settings, metrics or RewardsMetrics())
