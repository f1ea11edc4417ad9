"""Keeps the consumer honest about input records: a worker stops when records were skipped, and never commits past
what its agent processed.

Around a rebalance Faust can hand the agent a partition's records with a hole in them: it drops what it fetches
while its flow is suspended (recovery) yet moves its read offset past those records. Measured in the chaos suite:
a worker that kept a partition across a rebalance scored offsets 153-166 during recovery, then 194 onwards; 167-193
were never scored, later events moved the watermark, and the skipped ones were judged `late` by the next owner
(or lost for good, had Faust's gap filling committed past them). Each stream partition must therefore arrive as an
unbroken run of offsets from where it was sought (faust_compat's seek hands that position to `DeliveryGuard.sought`).
A hole that holds records stops the worker (exit 70) before the batch is acknowledged: nothing past the hole is
committed, and the restarted worker replays from the committed offset (records seen twice are skipped by the replay
guard, SPEC §4). A hole without records is normal (a transactional producer's commit markers take offsets) and is
let through; telling them apart costs one fetch per hole.

Faust can also commit input records its agent never processed: measured in the chaos suite, a worker that took
over partitions committed offsets for them during its table recovery, before it had scored any of their records,
and those records never got an outcome. So every commit of an input partition is clamped to the offset after the
last record this process's agent processed (`Positions.processed`; the patch is faust_compat's); a partition it has
processed nothing of is not committed. A clamp only ever makes a restart replay more (replays are skipped), never less.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP

from stream_app.streaming.sending import fail_stop

HOLE_FETCH_TIMEOUT_S = 5.0

# (topic, partition, first offset, end offset) -> whether a record sits in [first, end)
RecordsIn = Callable[[str, int, int, int], Awaitable[bool]]


def records_in(bootstrap: str, client_kwargs: Mapping[str, Any]) -> RecordsIn:
    """Whether the broker holds a record with an offset in [first, end) of a partition (True when it cannot tell)."""

    async def ask(topic: str, partition: int, first: int, end: int) -> bool:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **dict(client_kwargs)
        )
        await consumer.start()
        try:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, first)
            deadline = time.monotonic() + HOLE_FETCH_TIMEOUT_S
            while time.monotonic() < deadline:
                records = (await consumer.getmany(tp, timeout_ms=200)).get(tp, [])
                if records:
                    return bool(records[0].offset < end)
                position = await consumer.position(tp)
                if position >= end or position >= (await consumer.end_offsets([tp]))[tp]:
                    return False
                await asyncio.sleep(0)
            return True
        finally:
            await consumer.stop()

    return ask


class DeliveryGuard:
    """The next offset expected on each guarded input partition since it was last sought."""

    def __init__(self, topics: Iterable[str], holds_records: RecordsIn | None = None) -> None:
        self.topics = frozenset(topics)
        self._expected: dict[tuple[str, int], int] = {}
        self._holds_records = holds_records

    def sought(self, offsets: dict[TP, int | None]) -> None:
        """The consumer positioned these partitions: their records start again there (None: unknown)."""
        for tp, offset in offsets.items():
            if tp.topic not in self.topics:
                continue
            if offset is None:
                self._expected.pop((tp.topic, tp.partition), None)
            else:
                self._expected[(tp.topic, tp.partition)] = offset

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._expected.pop((tp.topic, tp.partition), None)

    def holes(self, batch: Sequence[Any]) -> list[tuple[str, int, int, int]]:
        """Every hole in this batch's guarded offsets: (topic, partition, first missing, end)."""
        found = []
        for event in batch:
            message = event.message
            if message.topic not in self.topics:
                continue
            key = (message.topic, message.partition)
            expected = self._expected.get(key)
            if expected is not None and message.offset > expected:
                found.append((message.topic, message.partition, expected, message.offset))
            self._expected[key] = max(expected or 0, message.offset + 1)
        return found

    async def check(self, batch: Sequence[Any]) -> None:
        for topic, partition, first, end in self.holes(batch):
            if self._holds_records is None or await self._holds_records(topic, partition, first, end):
                fail_stop(
                    f"the consumer skipped input records ({topic}[{partition}] offsets {first}-{end - 1}) before "
                    "handing this batch to the agent"
                )


def clamp_commits(offsets: dict[TP, int], topics: frozenset[str], processed: dict[tuple[str, int], int]) -> None:
    """Lower (or drop) the commit of each input partition to the offset after the last record processed."""
    for tp in list(offsets):
        if tp.topic not in topics:
            continue
        done = processed.get((tp.topic, tp.partition))
        if done is None:
            del offsets[tp]
        elif offsets[tp] > done:
            offsets[tp] = done
