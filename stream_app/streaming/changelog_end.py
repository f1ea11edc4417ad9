"""Finds the true end of changelog partitions before Faust recovers tables from them.

tansu (the embedded test broker) reports a partition's high watermark as the last batch's base offset + 1, which
is too low after a multi-record batch; Faust's recovery trusts it and stops early (a table of 1,000 increments
came back as 999). Apache Kafka reports it correctly. The correction reads from one before the reported end:
the fetch returns the whole last batch, whose last offset + 1 is the true end; on a correct broker that is the
reported end itself, so the correction is a no-op there (one small fetch per changelog partition at recovery).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.tables.recovery import Recovery

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 5.0


async def true_end_offsets(
    bootstrap: str, reported: Mapping[TopicPartition, int], client_kwargs: Mapping[str, Any] | None = None
) -> dict[TopicPartition, int]:
    """For each partition, the offset after its last record: at least what the broker reported."""
    ends = dict(reported)
    probe = [tp for tp, end in reported.items() if end > 0]
    if not probe:
        return ends
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **dict(client_kwargs or {})
    )
    await consumer.start()
    try:
        consumer.assign(probe)
        for tp in probe:
            consumer.seek(tp, reported[tp] - 1)
        waiting = set(probe)
        deadline = time.monotonic() + FETCH_TIMEOUT_S
        while waiting and time.monotonic() < deadline:
            batches = await consumer.getmany(*waiting, timeout_ms=200)
            for tp, records in batches.items():
                if records:
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
            # done with a partition once its position shows nothing more to read
            for tp in list(waiting):
                if await consumer.position(tp) >= ends[tp] and tp in batches:
                    waiting.discard(tp)
            if waiting and not batches:
                await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
    return ends


def install(bootstrap: str, client_kwargs: Mapping[str, Any] | None = None) -> None:
    """Make Faust's table recovery use the true end of each changelog partition (idempotent)."""
    original = Recovery._build_highwaters
    if getattr(original, "_true_end", False):
        return

    async def build_highwaters(self: Recovery, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await original(self, consumer, tps, destination, title)
        # Faust stores "last offset" (end - 1) in destination.
        reported = {TopicPartition(tp.topic, tp.partition): destination[tp] + 1 for tp in tps}
        ends = await true_end_offsets(bootstrap, reported, client_kwargs)
        for tp in tps:
            end = ends[TopicPartition(tp.topic, tp.partition)]
            if end - 1 > destination[tp]:
                log.info(
                    "changelog %s[%d]: broker reported end %d, true end %d",
                    tp.topic,
                    tp.partition,
                    destination[tp] + 1,
                    end,
                )
                destination[tp] = end - 1

    build_highwaters._true_end = True  # type: ignore[attr-defined]
    Recovery._build_highwaters = build_highwaters  # type: ignore[method-assign]
