"""Stops the worker when the consumer skipped input records, before the batch that shows it is acknowledged.

Around a rebalance Faust can hand the agent a partition's records with a hole in them: it drops what it fetches
while its flow is suspended (recovery) yet moves its read offset past those records. Measured in the chaos suite:
a worker that kept a partition across a rebalance scored offsets 153-166 during recovery, then 194 onwards; 167-193
were never scored, later events moved the watermark, and the skipped ones were judged `late` by the next owner
(or lost for good, had Faust's gap filling committed past them). Each stream partition must therefore arrive as an
unbroken run of offsets from where it was sought (`uncommitted_seek.perform_seek` records that position). A
hole stops the worker (exit 70) before the batch is acknowledged: nothing past the hole is committed, and the
restarted worker replays from the committed offset (records seen twice are skipped by the replay guard, SPEC §4).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from faust.types import TP

from stream_app.domain.events import InputTopic
from stream_app.streaming.sending import fail_stop

# the faust.App attribute holding the guard (uncommitted_seek records where each stream partition was sought)
GUARD_ATTR = "rewards_delivery_guard"


class DeliveryGuard:
    """The next offset expected on each guarded input partition since it was last sought."""

    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self._expected: dict[tuple[str, int], int] = {}

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

    def hole(self, batch: Sequence[Any]) -> str | None:
        """The first hole in this batch's offsets, described; records before it were checked in order."""
        for event in batch:
            message = event.message
            key = (message.topic, message.partition)
            if message.topic not in self.topics:
                continue
            expected = self._expected.get(key)
            if expected is not None and message.offset > expected:
                return f"{message.topic}[{message.partition}] offsets {expected}-{message.offset - 1}"
            self._expected[key] = max(expected or 0, message.offset + 1)
        return None

    def check(self, batch: Sequence[Any]) -> None:
        hole = self.hole(batch)
        if hole is not None:
            fail_stop(f"the consumer skipped input records ({hole}) before handing this batch to the agent")


def install(scorer: Any) -> DeliveryGuard:
    """Guard the agent's event topics (views, interactions, device flags: ticks may be skipped harmlessly)."""
    settings = scorer.settings
    guard = DeliveryGuard(
        [settings.topic(InputTopic.VIEWS), settings.topic(InputTopic.INTERACTIONS), scorer.device_flags_name]
    )
    setattr(scorer.faust, GUARD_ATTR, guard)

    async def on_revoked(app: Any, revoked: set[TP], **_: Any) -> None:
        guard.forget(revoked)

    scorer.faust.on_partitions_revoked.connect(on_revoked)
    return guard


def check(scorer: Any, batch: Sequence[Any]) -> None:
    """Stop the worker if this batch shows a hole in a guarded partition (see the module docstring)."""
    guard = getattr(scorer.faust, GUARD_ATTR, None)
    if guard is not None:
        guard.check(batch)
