"""The worker's composition root: the Faust app, its topology (streaming/topics.py), and the processors and
services wired over it, each given only what it uses. The agents and timers here only hand batches on.

`build_app(settings, metrics)` makes a fresh app (tests build several); `stream_app.app` holds the one the
`faust -A stream_app.app worker` command and `stream-app worker` run.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Coroutine
from typing import Any

import faust
from faust.types import TP

from stream_app.domain.profiles import ProfileHistory
from stream_app.edges.kafka_client import client_kwargs, true_end_offsets
from stream_app.edges.metrics import RewardsMetrics
from stream_app.edges.settings import Settings
from stream_app.streaming import faust_compat, topology
from stream_app.streaming.delivery_guard import DeliveryGuard, clamp_commits, records_in
from stream_app.streaming.devices import DeviceJudge
from stream_app.streaming.ingest import IngestProcessor
from stream_app.streaming.lifecycle import WorkerLifecycle
from stream_app.streaming.positions import Positions
from stream_app.streaming.profile_reader import ProfileReader
from stream_app.streaming.topics import PartitionCounts, build_topology

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
# What an agent's stream may buffer of fetched record values before its partitions are paused (besides Faust's
# 4,096 records): about four parts of envelopes (streaming/ingest.py PART_EVENTS), seconds of work. Without it a
# worker catching up on envelopes held its whole fetched backlog (faust_compat 10.; bench/RESULTS.md).
STREAM_BUFFER_BYTES = 16 * 1024 * 1024


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


class ScorerApp:
    """The composition root of one worker: the Faust app, its topology, and the processors and services wired
    over it, each given only what it uses. `faust` is the faust.App itself."""

    def __init__(self, settings: Settings, metrics: RewardsMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.faust = faust_app(settings)
        self.topology = build_topology(self.faust, settings)
        self.security = client_kwargs(settings.env)
        self._build_processors()
        self._install_patches()
        # probes (/livez, /readyz) and the metrics server, started first; the shutdown clock (lifecycle.py)
        self.lifecycle = WorkerLifecycle(
            self.faust,
            settings=settings,
            metrics=metrics,
            profiles_ready=self.profile_reader.caught_up,
            views_topic=self.topology.names.views,
        )
        # before the consumer joins the group: the topics exist as the worker needs them (SPEC §4)
        topology.install(self.faust, self.topology, settings)
        self._register()

    def _build_processors(self) -> None:
        """The profile history and its reader, where the consumer stands, the events agent's and the device
        judge's work, and the delivery guard: each given only what it uses."""
        settings, names = self.settings, self.topology.names
        counts = PartitionCounts(
            settings.kafka_bootstrap, [*names.inputs, *names.outputs, *names.internal], self.security
        )
        self.profiles = ProfileHistory(settings.policy)
        self.profile_reader = ProfileReader(
            settings.kafka_bootstrap, names.profiles, self.profiles, dict(self.security)
        )
        self.positions = Positions(lambda: self.faust.consumer, names, lambda: self.faust.should_stop)
        self.ingest = IngestProcessor(
            settings=settings,
            metrics=self.metrics,
            names=names,
            video_state=self.topology.video_state,
            profiles=self.profiles,
            profiles_ready=self.profile_reader.caught_up,
            positions=self.positions,
            counts=counts,
            producer=lambda: self.faust.producer,
            batches=lambda: faust_compat.aiokafka_producer(self.faust.producer),
            sync_profiles=self.profile_reader.sync,
        )
        self.devices = DeviceJudge(
            policy=settings.policy,
            names=names,
            device_state=self.topology.device_state,
            counts=counts,
            outbox=self.ingest.outbox,
        )
        self.guard = DeliveryGuard(
            [names.views, names.interactions, names.device_flags], records_in(settings.kafka_bootstrap, self.security)
        )

    def _install_patches(self) -> None:
        """faust_compat's patches, and what they read of this app."""
        names, bootstrap, security = self.topology.names, self.settings.kafka_bootstrap, self.security
        faust_compat.install(
            self.faust,
            true_ends=lambda reported: true_end_offsets(bootstrap, reported, security),
            stream_topics=[*names.inputs, names.ticks, names.device_flags, names.device_views],
            on_sought=self.guard.sought,
            clamp_commits=self._clamp_commits,
            stream_buffer_bytes=STREAM_BUFFER_BYTES,
        )

    def _register(self) -> None:
        """The agents, the profile reader's task, the timers and the revocation handler."""
        app, topology_ = self.faust, self.topology
        app.agent(topology_.events, name="score-events")(self._score_events)
        app.agent(topology_.profiles, name="track-profiles")(self._track_profiles)
        app.agent(topology_.device_views, name="judge-devices")(self._judge_devices)
        app.task(self.profile_reader.run)
        app.timer(TICK_INTERVAL_S)(self._send_ticks)
        app.timer(LAG_INTERVAL_S)(self._measure_lag)
        app.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    def _clamp_commits(self, offsets: dict[TP, int]) -> None:
        """Input partitions commit at most what the events agent processed; device-views partitions at most what
        the device judge has written the state of (streaming/devices.py)."""
        names = self.topology.names
        clamp_commits(offsets, frozenset(names.inputs), self.positions.processed)
        clamp_commits(offsets, frozenset((names.device_views,)), self.devices.saved)

    async def _send_ticks(self) -> None:
        now = str(int(time.time() * 1000)).encode()
        for partition in self.positions.owned_partitions(self.topology.names.ticks):
            await self.topology.ticks.send(value=now, partition=partition, force=True)
        self.metrics.set_eligible_creators(self.profiles.eligible_creators())

    async def _measure_lag(self) -> None:
        await self.positions.measure_lag(self.metrics)

    async def _on_revoked(self, app: Any, revoked: set[TP], **_: Any) -> None:
        self.positions.forget(revoked, self.metrics)
        self.guard.forget(revoked)
        views = self.topology.names.views
        self.ingest.forget({tp.partition for tp in revoked if tp.topic == views})
        self.devices.forget()

    async def _score_events(self, stream: Any) -> None:
        async for batch in stream.take_events(BATCH_MAX_EVENTS, within=BATCH_WITHIN_S):
            await self.guard.check(batch)  # stops the worker if the consumer skipped records
            await finish_batch(self.ingest.process_batch(batch))

    async def _judge_devices(self, stream: Any) -> None:
        async for batch in stream.take_events(BATCH_MAX_EVENTS, within=BATCH_WITHIN_S):
            await finish_batch(self.devices.process_batch(batch))

    async def _track_profiles(self, stream: Any) -> None:
        async for batch in stream.take_events(BATCH_MAX_EVENTS, within=BATCH_WITHIN_S):
            await finish_batch(self.ingest.process_profiles(batch))


def faust_app(settings: Settings) -> faust.App:
    bootstrap = ";".join(f"kafka://{s.strip()}" for s in settings.kafka_bootstrap.split(","))
    return faust.App(
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
