"""The worker's topics, checked before it joins its group, and its producer kept from stranding records.

A worker started on topics that were never created would run on whatever a broker that auto-creates topics makes
of them (its default partition count, not co-partitioned), and aiokafka's producer, when a topic it did not know
appears, narrows its metadata to that one topic: a batch already queued for another topic then waits for the
producer's request timeout while the metrics count it as written. So, before the consumer starts (SPEC §2, §4):
every topic the worker reads or writes must exist with the partitions it needs, else the worker exits
`EXIT_TOPOLOGY` naming `stream-app topics apply`. Once the producer runs, its metadata is pinned to every topic the
worker writes, and a record the broker has not acknowledged within `PRODUCER_REQUEST_TIMEOUT_S` stops the worker
(exit 70, like any failed batch) instead of being dropped with a warning. While the worker runs, it says when the
broker stops answering and when it answers again (a paused broker otherwise shows only as silence).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from typing import Any, NoReturn

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from faust.sensors import Sensor

from stream_app.domain.errors import BrokerError
from stream_app.edges.kafka_client import client_kwargs
from stream_app.edges.settings import Settings
from stream_app.edges.topics_admin import RequiredTopic, partition_counts_on_broker, topology_problems
from stream_app.streaming.faust_compat import aiokafka_client
from stream_app.streaming.sending import fail_stop
from stream_app.streaming.topics import Topology

log = logging.getLogger(__name__)

# Faust's default (1,200 s) is also how long aiokafka keeps an undeliverable batch before failing it: a record
# stranded that long is twenty minutes of output counted as written. 40 s (aiokafka's own default) rides out a
# broker pause of half a minute and turns anything longer into a worker restart within a minute.
PRODUCER_REQUEST_TIMEOUT_S = 40.0
# sysexits.h EX_CONFIG: the worker's topics are not what it needs; EX_UNAVAILABLE: the broker could not be asked.
EXIT_TOPOLOGY = 78
EXIT_BROKER_UNREACHABLE = 69
# How long the start-up check keeps trying to reach the broker (a worker may start a little before it).
BROKER_WAIT_S = 60.0
# The broker watch: a metadata request every PING_INTERVAL_S; no answer for SILENT_AFTER_S is logged as a warning
# (then every REPEAT_S while it lasts), and the first answer after that as the end of the outage.
PING_INTERVAL_S = 1.0
SILENT_AFTER_S = 5.0
REPEAT_S = 10.0
APPLY_HINT = (
    "Run `stream-app topics apply` with the same TOPIC_PREFIX and APP_ID before starting workers (it creates what "
    "is missing; it never alters an existing topic, so a topic with the wrong partition count must be recreated, "
    "or a new TOPIC_PREFIX used, and the input replayed)"
)


def required_topics(topology: Topology) -> list[RequiredTopic]:
    """Every topic the worker reads or writes; the event, tick, device and changelog topics must have the partition
    count of video-views (one agent sees a partition of all of them; a table's changelog partition is its
    source partition)."""
    names = topology.names
    co_partitioned = [names.interactions, *names.internal, *topology.changelogs]
    return [
        RequiredTopic(names.views),
        *(RequiredTopic(name, names.views) for name in co_partitioned),
        RequiredTopic(names.profiles),
        *(RequiredTopic(name) for name in names.outputs),
    ]


def written_topics(topology: Topology) -> list[str]:
    """Every topic the worker's producer writes: the outputs, its internal topics and the table changelogs."""
    names = topology.names
    return sorted({*names.outputs, *names.internal, *topology.changelogs})


def refuse_to_start(message: str, code: int) -> NoReturn:
    """Exit before the worker joins its group: nothing has been consumed or written yet."""
    log.critical("%s", message)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)


async def check_topics(topology: Topology, settings: Settings, wait_s: float = BROKER_WAIT_S) -> None:
    """Exit `EXIT_TOPOLOGY` unless every required topic exists with the partitions it needs."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            existing = await partition_counts_on_broker(
                settings.kafka_bootstrap, client_kwargs=client_kwargs(settings.env)
            )
            break
        except BrokerError as exc:
            if time.monotonic() >= deadline:
                refuse_to_start(f"cannot check the worker's topics: {exc}", EXIT_BROKER_UNREACHABLE)
            log.warning("cannot check the worker's topics yet (%s); retrying", exc)
            await asyncio.sleep(2.0)
    required = required_topics(topology)
    problems = topology_problems(required, existing)
    if problems:
        refuse_to_start(
            f"refusing to start on the broker at {settings.kafka_bootstrap}: {'; '.join(problems)}. {APPLY_HINT}",
            EXIT_TOPOLOGY,
        )
    log.info("all %d topics of the worker exist with the partitions it needs", len(required))


def pin_producer_metadata(producer: Any, topics: list[str]) -> None:
    """Make the Faust producer's aiokafka client track `topics` once it has started.

    An aiokafka client that tracks no topic in particular asks for all of them; its first send to a topic missing
    from that metadata makes it track that topic alone, and batches queued for the others lose their leader until
    the request timeout fails them. Tracking every written topic from the start keeps them all in every refresh
    (a topic added later is added to the set, not swapped for it)."""
    started = producer.on_started

    async def on_started() -> None:
        await started()
        client = aiokafka_client(producer)
        await client.set_topics(topics)
        log.info("producer metadata covers the %d topics the worker writes", len(topics))

    producer.on_started = on_started


async def watch_broker(
    bootstrap: str,
    kwargs: Mapping[str, Any],
    *,
    interval_s: float = PING_INTERVAL_S,
    silent_after_s: float = SILENT_AFTER_S,
    repeat_s: float = REPEAT_S,
) -> None:
    """Log when the broker stops answering and when it answers again, until cancelled."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap, client_id="stream-app-broker-watch", **dict(kwargs))
    last_answer = time.monotonic()
    warned_at: float | None = None
    try:
        while True:
            try:
                if client.cluster.brokers():
                    await asyncio.wait_for(client.fetch_all_metadata(), silent_after_s)
                else:
                    await asyncio.wait_for(client.bootstrap(), silent_after_s)
            except (TimeoutError, KafkaError) as exc:
                silent = time.monotonic() - last_answer
                if silent >= silent_after_s and (warned_at is None or time.monotonic() - warned_at >= repeat_s):
                    log.warning(
                        "the broker at %s has not answered for %.0f s (%s): scoring, output and commits wait; "
                        "nothing is lost, and a record it has not acknowledged %.0f s after it was sent stops the "
                        "worker (exit 70) so that a restart replays it",
                        bootstrap,
                        silent,
                        type(exc).__name__,
                        PRODUCER_REQUEST_TIMEOUT_S,
                    )
                    warned_at = time.monotonic()
            else:
                if warned_at is not None:
                    log.warning(
                        "the broker at %s answers again after %.0f s of silence: resuming",
                        bootstrap,
                        time.monotonic() - last_answer,
                    )
                    warned_at = None
                last_answer = time.monotonic()
            await asyncio.sleep(interval_s)
    finally:
        await client.close()


class TopologyGuard(Sensor):
    """Started before Faust's producer and consumer (sensors start first): checks the topics, pins the producer's
    metadata, watches the broker, and stops the worker when the broker did not acknowledge a record it was sent."""

    def __init__(self, topology: Topology, settings: Settings, producer: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.topology = topology
        self.settings = settings
        self.producer = producer

    async def on_start(self) -> None:
        await check_topics(self.topology, self.settings)
        pin_producer_metadata(self.producer, written_topics(self.topology))
        settings = self.settings
        self.add_future(watch_broker(settings.kafka_bootstrap, client_kwargs(settings.env)))

    def on_send_initiated(self, producer: Any, topic: str, message: Any, keysize: int, valsize: int) -> Any:
        return topic

    def on_send_error(self, producer: Any, exc: BaseException, state: Any) -> None:
        # Faust only logs a failed delivery, then commits the offsets past it: the record would be lost.
        fail_stop(f"the broker did not acknowledge a record sent to {state}: {exc!r}")


def install(app: Any, topology: Topology, settings: Settings) -> None:
    """Started before the producer and the consumer (a sensor)."""
    app.sensors.add(TopologyGuard(topology, settings, app.producer))
