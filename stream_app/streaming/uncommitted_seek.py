"""Stream partitions start exactly where they should after an assignment: the committed offset, or the earliest
offset when nothing was committed, and no record fetched from anywhere else reaches the agent.

Faust fetches while it recovers tables but drops what it fetches while its flow is suspended, moving the fetch
position past those records; its "seek stream partitions to committed offsets" step then seeks nowhere for a
partition with no committed offset (nor, in aiokafka, for a committed offset of 0). Measured here: a worker
restarted after SIGKILL, before its first commit, skipped a partition's first 35 records. So such partitions are
sought to their earliest offset explicitly (`consumer_auto_offset_reset="earliest"`); records seen twice are skipped
by the replay guard (SPEC §4).

Faust also resumes the stream partitions *before* it seeks them, so records fetched from the old position in
between reached the agent first: measured in the chaos suite, a worker scored offsets 180-182 of a partition, then
0-248 from the seek, and judged the older events `late` against the watermark the newer ones had moved (with a
commit in between, offsets 0-179 would have been lost). Stream partitions are therefore held back from Faust's
resume until the seek is done; the seek discards what the client fetched meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from faust.transport.consumer import Consumer
from faust.types import TP

from stream_app.streaming.delivery_guard import GUARD_ATTR

log = logging.getLogger(__name__)

# the faust.App attribute naming the topics whose uncommitted partitions must start from the beginning
STREAM_TOPICS_ATTR = "rewards_stream_topics"
# the Consumer attribute holding the stream partitions Faust asked to resume before they were sought
_HELD_ATTR = "_rewards_held_until_sought"


def _stream_topics(consumer: Any) -> set[str]:
    return set(getattr(consumer.app, STREAM_TOPICS_ATTR, None) or ())


def install() -> None:
    """Patch Faust's Consumer.resume_partitions and Consumer.perform_seek (idempotent)."""
    original_seek = Consumer.perform_seek
    if getattr(original_seek, "_seeks_uncommitted", False):
        return
    original_resume = Consumer.resume_partitions

    def resume_partitions(self: Any, tps: Iterable[TP]) -> None:
        tps = set(tps)
        topics = _stream_topics(self)
        held = {tp for tp in tps if tp.topic in topics}
        if held:
            setattr(self, _HELD_ATTR, getattr(self, _HELD_ATTR, set()) | held)
        original_resume(self, tps - held)

    async def perform_seek(self: Any) -> None:
        await original_seek(self)
        topics = _stream_topics(self)
        assigned = set(self.assignment())
        uncommitted = [tp for tp in assigned if tp.topic in topics and self._committed_offset.get(tp) is None]
        offsets: dict[TP, int] = {}
        if uncommitted:
            earliest = await self.earliest_offsets(*uncommitted)
            offsets = {tp: earliest.get(tp) or 0 for tp in uncommitted}
            for tp, offset in offsets.items():
                log.info("no committed offset for %s[%d]: starting from offset %d", tp.topic, tp.partition, offset)
            # seek_wait runs the seeks on the consumer's own thread. Consumer.seek would run them on this one,
            # racing the fetcher that runs there: measured, a KeyError in aiokafka's fetched_records that crashed
            # the worker right after an assignment.
            await self.seek_wait(offsets)
        guard = getattr(self.app, GUARD_ATTR, None)
        if guard is not None:  # where each stream partition's records start again (streaming/delivery_guard.py)
            guard.sought({tp: offsets.get(tp, self._committed_offset.get(tp)) for tp in assigned})
        # only once sought (a failed seek leaves them held for the next perform_seek, which Faust repeats)
        held: set[TP] = getattr(self, _HELD_ATTR, set())
        setattr(self, _HELD_ATTR, set())
        original_resume(self, held & assigned)

    resume_partitions._holds_streams = True  # type: ignore[attr-defined]
    perform_seek._seeks_uncommitted = True  # type: ignore[attr-defined]
    Consumer.resume_partitions = resume_partitions  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]
