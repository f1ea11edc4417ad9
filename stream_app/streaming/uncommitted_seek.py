"""Stream partitions with no committed offset start from the earliest offset after table recovery.

Faust resumes the fetcher while it recovers tables, so records of a stream partition can be fetched (and the
fetch position moved past them) before Faust's "seek stream partitions to committed offsets" step; with no
committed offset that step seeks nowhere and the records fetched meanwhile are never handed to the agent.
Measured here: a worker restarted after SIGKILL, before its first commit, skipped a partition's first 35
records. With `consumer_auto_offset_reset="earliest"` the intended position of such a partition is its earliest
offset, so this seeks there explicitly; records seen twice are skipped by the replay guard (SPEC §4).
"""

from __future__ import annotations

import logging
from typing import Any

from faust.transport.consumer import Consumer

log = logging.getLogger(__name__)

# the faust.App attribute naming the topics whose uncommitted partitions must start from the beginning
STREAM_TOPICS_ATTR = "rewards_stream_topics"


def install() -> None:
    """Patch Faust's Consumer.perform_seek (idempotent)."""
    original = Consumer.perform_seek
    if getattr(original, "_seeks_uncommitted", False):
        return

    async def perform_seek(self: Any) -> None:
        await original(self)
        topics = getattr(self.app, STREAM_TOPICS_ATTR, None)
        if not topics:
            return
        uncommitted = [tp for tp in self.assignment() if tp.topic in topics and self._committed_offset.get(tp) is None]
        if not uncommitted:
            return
        earliest = await self.earliest_offsets(*uncommitted)
        offsets = {tp: earliest.get(tp) or 0 for tp in uncommitted}
        for tp, offset in offsets.items():
            log.info("no committed offset for %s[%d]: starting from offset %d", tp.topic, tp.partition, offset)
        # seek_wait runs the seeks on the consumer's own thread. Consumer.seek would run them on this one, racing
        # the fetcher that runs there: measured, a KeyError in aiokafka's fetched_records that crashed the worker
        # right after an assignment.
        await self.seek_wait(offsets)

    perform_seek._seeks_uncommitted = True  # type: ignore[attr-defined]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]
