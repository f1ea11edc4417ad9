"""The worker's topology as data: every topic's name (SPEC §2 and the internal ones), the Faust topics and tables
built over them once, and the partition counts read from the cluster once.

Nothing here processes a record; streaming/app.py builds a Topology and hands each processor the parts it uses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TopicT

from stream_app.domain.events import InputTopic, OutputTopic
from stream_app.edges.kafka_client import partition_counts
from stream_app.edges.settings import Settings


@dataclass(frozen=True)
class TopicNames:
    """Full topic names (with TOPIC_PREFIX; internal ones under APP_ID)."""

    views: str
    interactions: str
    profiles: str
    dlq: str
    suspicious: str
    accruals: str
    settlements: str
    ticks: str
    device_flags: str
    device_views: str

    @classmethod
    def of(cls, settings: Settings) -> TopicNames:
        t = settings.topic
        return cls(
            views=t(InputTopic.VIEWS),
            interactions=t(InputTopic.INTERACTIONS),
            profiles=t(InputTopic.PROFILES),
            dlq=t(OutputTopic.DLQ),
            suspicious=t(OutputTopic.SUSPICIOUS),
            accruals=t(OutputTopic.ACCRUALS),
            settlements=t(OutputTopic.SETTLEMENTS),
            ticks=settings.internal_topic("ticks"),
            device_flags=settings.internal_topic("device-flags"),
            device_views=settings.internal_topic("device-views"),
        )

    @property
    def inputs(self) -> dict[str, InputTopic]:
        """Input topic name -> which input topic it is."""
        return {
            self.views: InputTopic.VIEWS,
            self.interactions: InputTopic.INTERACTIONS,
            self.profiles: InputTopic.PROFILES,
        }

    def input(self, topic: InputTopic) -> str:
        return {InputTopic.VIEWS: self.views, InputTopic.INTERACTIONS: self.interactions}.get(topic, self.profiles)

    @property
    def outputs(self) -> list[str]:
        return [self.dlq, self.suspicious, self.accruals, self.settlements]

    @property
    def internal(self) -> list[str]:
        return [self.ticks, self.device_flags, self.device_views]


@dataclass(frozen=True)
class Topology:
    """The Faust objects over the names: what the agents read and the tables they write."""

    names: TopicNames
    # views, interactions, ticks and device flags are co-partitioned: one agent sees them all for a partition
    events: TopicT
    profiles: TopicT
    ticks: TopicT
    device_views: TopicT
    video_state: Any  # faust Table: a partition's journal segments, video heads and meta (streaming/tables.py)
    device_state: Any  # faust Table: device_id -> DeviceState (streaming/devices.py)

    @property
    def changelogs(self) -> list[str]:
        return sorted(table.changelog_topic.get_topic_name() for table in (self.video_state, self.device_state))


def raw_topic(app: faust.App, *names: str) -> TopicT:
    # Keys and values stay bytes: the domain validates raw bytes and the DLQ keeps them as they came.
    return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


MiB = 1024 * 1024
# RocksDB's own memory for each database Faust opens (one per table and partition), with STORE=rocksdb://. Faust's
# defaults let each hold up to 3 memtables of 64 MiB and a 2 GiB block cache: the tables' writes then stayed in
# memtables (a worker writes tens of MB per partition an hour: RSS as with memory://), and a restart's reads filled
# the caches (a restarted worker peaked anywhere between 0.6 and 1.1 GiB). Bounded here: memtables are flushed to
# files at 8 MiB (two at most), and the block cache (read at restore and at a video's first touch) holds 8 MiB.
ROCKSDB_OPTIONS: Mapping[str, int] = {
    "write_buffer_size": 8 * MiB,
    "max_write_buffer_number": 2,
    "block_cache_size": 8 * MiB,
}


def _table(app: faust.App, settings: Settings, name: str) -> Any:
    changelog = app.topic(
        settings.internal_topic(f"{name}-changelog"),
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        compacting=True,
    )
    return app.Table(
        name,
        default=None,
        key_type=bytes,
        value_type=bytes,
        changelog_topic=changelog,
        # writes name their partition through the current event (faust_compat.writing_for), not the key's hash
        use_partitioner=False,
        # a copy per table: Faust's RocksDB store pops keys off the dict it is handed
        options=dict(ROCKSDB_OPTIONS) if settings.store.startswith("rocksdb:") else None,
    )


def build_topology(app: faust.App, settings: Settings) -> Topology:
    names = TopicNames.of(settings)
    return Topology(
        names=names,
        events=raw_topic(app, names.views, names.interactions, names.ticks, names.device_flags),
        profiles=raw_topic(app, names.profiles),
        ticks=raw_topic(app, names.ticks),
        device_views=raw_topic(app, names.device_views),
        video_state=_table(app, settings, "video-state"),
        device_state=_table(app, settings, "device-state"),
    )


class PartitionCounts:
    """Partition counts of the worker's topics, read once from the cluster (a count change is a migration, not an
    edit: the worker checks co-partitioning at start-up, streaming/startup_check.py)."""

    def __init__(self, bootstrap: str, topics: Iterable[str], client_kwargs: Mapping[str, Any]) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.client_kwargs = client_kwargs
        self._counts: dict[str, int] = {}

    async def load(self) -> None:
        if not self._counts:
            self._counts = await partition_counts(self.bootstrap, self.topics, self.client_kwargs)

    def __call__(self, topic: str) -> int:
        return self._counts[topic]
