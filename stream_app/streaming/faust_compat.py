"""Every place the worker reaches into Faust, mode or aiokafka beyond their public API: the patches, the private
attributes it reads, the private methods it overrides. Nothing else in the project does.

Each section says which upstream behaviour it works around and which test proves the workaround holds; a Faust or
aiokafka upgrade starts here. The patches are installed once per process (`install`) and are idempotent.

1. Changelog recovery ends at the true end of each partition (`Recovery._build_highwaters`).
   tansu (the embedded broker) reports a partition's high watermark as the last batch's base offset + 1, too low
   after a multi-record batch; Faust's recovery trusts it and stopped early (a table of 1,000 increments came back
   as 999). Reading from one before the reported end returns the whole last batch, whose last offset + 1 is the
   true end (a no-op on Apache Kafka). Proved by tests/integration/test_scoring_scenario.py (restarts end with the
   undisturbed numbers) and the chaos suite.
2. Stream partitions start where they should (`Consumer.perform_seek`, `Consumer.resume_partitions`).
   Faust fetches while it recovers tables but drops what it fetches while its flow is suspended, moving the fetch
   position past those records, and its "seek to committed" step seeks nowhere for a partition with no committed
   offset: a worker restarted after SIGKILL before its first commit skipped a partition's first 35 records. Such
   partitions are sought to their earliest offset (on the consumer's own thread: from the app's thread the seek
   raced aiokafka's fetcher, a KeyError in fetched_records). Faust also resumes stream partitions *before* seeking
   them, so records from the old position reached the agent first (later events moved the watermark, earlier ones
   were judged late): they are held back until sought. Proved by tests/streaming/test_uncommitted_seek.py and the
   chaos suite (tests/chaos/test_crashes.py).
3. Commits never pass what the agent processed (`Consumer._filter_committable_offsets`).
   Faust committed offsets of input partitions a worker had just taken over, during its table recovery, before
   scoring any of their records, which then never got an outcome. Each commit of an input partition is clamped to
   the offset after the last record the agent processed (streaming/delivery_guard.py clamp_commits), and the
   offsets a clamp holds back go back on Faust's list of acknowledged offsets (else Faust sees a hole and never
   commits that partition again). Proved by tests/streaming/test_delivery_guard.py and the chaos suite.
4. Table writes name their partition (`faust.streams._current_event`).
   Tables are written once per batch inside `take_events`, where Faust has no current event; its table writes
   pick the changelog partition (and a RocksDB store's database) from the current event. `writing_for` makes an
   event of the partition being written the current one. Proved by tests/streaming/test_tables.py.
5. Where a consumer is (`Consumer._read_offset`, `Consumer._committed_offset`): no public accessor; read by the
   caught-up check and the lag metric. Proved by tests/streaming/test_position.py.
6. The producer's aiokafka producer and client (`Producer._ensure_producer()`): its client, to pin its metadata to
   every topic the worker writes (aiokafka replaces its metadata with the one topic it asks about when a new topic
   appears after it started, and a batch queued for another topic then waited for the request timeout), proved by
   tests/integration/test_worker_topology.py; the producer itself, to send output records in aiokafka's own
   batches (Faust's send makes a future per record), proved by tests/integration/test_outbox.py and every
   integration test that reads an output topic.
7. The signal handler of mode's Worker (`Worker._schedule_shutdown`): the shutdown clock starts when SIGTERM or
   SIGINT arrives. Proved by tests/integration/test_lifecycle.py.
8. Table recovery's progress (`app.tables.recovery`, not declared by TableManagerT): the readiness probe says
   a worker recovering its tables is not ready, with the records left. Proved by tests/streaming/test_lifecycle.py
   and tests/integration/test_lifecycle.py.
9. A fetch asks for the partitions that were active when it started (`AIOKafkaConsumerThread._fetch_records`).
   Faust hands aiokafka its live set of active partitions; aiokafka reads an empty set as "every partition". The
   set empties while a fetch waits when table recovery pauses the changelogs it has read and the stream partitions
   are still held (2.): aiokafka then returned a stream partition's records fetched after the seek, Faust dropped
   them (not active) and aiokafka's position had moved past them, so a restarted worker never scored them (seen
   as consumer lag that never fell after a SIGTERM restart). The fetch asks for a copy, asks for nothing when the
   copy is empty, and puts back what it got of a partition no longer active (its position sought back to the first
   record). Proved by tests/integration/test_fetch_snapshot.py (a real consumer on a broker) and
   tests/integration/test_scoring_scenario.py (restarts).
10. What an agent's stream buffers is bounded in bytes too (`Channel.queue`, mode's `FlowControlQueue`).
   Faust pauses a partition's fetch once the stream's queue holds `stream_buffer_maxsize` records (4096), whatever
   they weigh: a worker catching up on envelopes (about 190 KB each) buffered the whole backlog it fetched, some
   270 MB for make bench's hot workload (peak RSS 1,472 -> 1,264 MiB; a 64-record buffer gave 1,287). Each channel's
   queue also counts the bytes of the record values it holds and pauses the partitions putting into it once they
   reach `max_bytes`, resuming them (as Faust does) once the queue has drained to 40 % of both bounds; single-event
   records never reach the byte bound before the record count. Proved by tests/streaming/test_stream_buffer.py.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import faust
from aiokafka import TopicPartition
from faust.channels import Channel
from faust.streams import _current_event
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP
from faust.types import tuples as faust_tuples
from mode.utils.queues import ThrowableQueue

log = logging.getLogger(__name__)

# faust.App attributes the patches read (set by `install`)
_TRUE_ENDS_ATTR = "rewards_true_ends"  # reads the true end of changelog partitions
_STREAM_TOPICS_ATTR = "rewards_stream_topics"  # topics whose partitions start from the earliest when uncommitted
_SEEK_LISTENER_ATTR = "rewards_on_sought"  # called with {tp: offset} once stream partitions are sought
_COMMIT_CLAMP_ATTR = "rewards_commit_clamp"  # called with the offsets about to be committed, changes them
# the Consumer attribute holding the stream partitions Faust asked to resume before they were sought
_HELD_ATTR = "_rewards_held_until_sought"

TrueEnds = Callable[[dict[TopicPartition, int]], Any]  # reported ends -> awaitable of true ends


# ---- 1. changelog recovery ends at the true end ----------------------------------------------------------------


def _install_true_changelog_end() -> None:
    original = Recovery._build_highwaters
    if getattr(original, "_true_end", False):
        return

    async def build_highwaters(self: Recovery, consumer: Any, tps: Any, destination: Any, title: str) -> None:
        await original(self, consumer, tps, destination, title)
        true_ends = getattr(self.app, _TRUE_ENDS_ATTR, None)
        if true_ends is None:
            return
        # Faust stores "last offset" (end - 1) in destination.
        reported = {TopicPartition(tp.topic, tp.partition): destination[tp] + 1 for tp in tps}
        ends = await true_ends(reported)
        for tp in tps:
            end = ends[TopicPartition(tp.topic, tp.partition)]
            if end - 1 > destination[tp]:
                log.info("changelog %s[%d]: broker reported end %d, true end %d", *tp, destination[tp] + 1, end)
                destination[tp] = end - 1

    build_highwaters._true_end = True  # type: ignore[attr-defined]
    Recovery._build_highwaters = build_highwaters  # type: ignore[method-assign]


# ---- 2. stream partitions start where they should ------------------------------------------------------------


def _install_stream_seek() -> None:
    original_seek = Consumer.perform_seek
    if getattr(original_seek, "_seeks_uncommitted", False):
        return
    original_resume = Consumer.resume_partitions

    def stream_topics(consumer: Any) -> set[str]:
        return set(getattr(consumer.app, _STREAM_TOPICS_ATTR, None) or ())

    def resume_partitions(self: Any, tps: Iterable[TP]) -> None:
        tps = set(tps)
        topics = stream_topics(self)
        held = {tp for tp in tps if tp.topic in topics}
        if held:
            setattr(self, _HELD_ATTR, getattr(self, _HELD_ATTR, set()) | held)
        original_resume(self, tps - held)

    async def perform_seek(self: Any) -> None:
        await original_seek(self)
        topics = stream_topics(self)
        assigned = set(self.assignment())
        uncommitted = [tp for tp in assigned if tp.topic in topics and committed_offset(self, tp) is None]
        offsets: dict[TP, int] = {}
        if uncommitted:
            earliest = await self.earliest_offsets(*uncommitted)
            offsets = {tp: earliest.get(tp) or 0 for tp in uncommitted}
            for tp, offset in offsets.items():
                log.info("no committed offset for %s[%d]: starting from offset %d", tp.topic, tp.partition, offset)
            await self.seek_wait(offsets)  # on the consumer's own thread (see the module docstring)
        on_sought = getattr(self.app, _SEEK_LISTENER_ATTR, None)
        if on_sought is not None:
            on_sought({tp: offsets.get(tp, committed_offset(self, tp)) for tp in assigned})
        # only once sought (a failed seek leaves them held for the next perform_seek, which Faust repeats)
        held: set[TP] = getattr(self, _HELD_ATTR, set())
        setattr(self, _HELD_ATTR, set())
        original_resume(self, held & assigned)

    resume_partitions._holds_streams = True  # type: ignore[attr-defined]
    perform_seek._seeks_uncommitted = True  # type: ignore[attr-defined]
    Consumer.resume_partitions = resume_partitions  # type: ignore[method-assign]
    Consumer.perform_seek = perform_seek  # type: ignore[method-assign]


# ---- 3. commits never pass what the agent processed ------------------------------------------------------------


def _install_commit_clamp() -> None:
    original = Consumer._filter_committable_offsets
    if getattr(original, "_clamped", False):
        return

    def filter_committable_offsets(self: Any, tps: Iterable[TP]) -> dict[TP, int]:
        tps = list(tps)
        # where each partition's acknowledged offsets start: Faust takes the run from there off its list
        first = {tp: min(acked) for tp in tps if (acked := self._acked.get(tp))}
        offsets: dict[TP, int] = original(self, tps)
        clamp = getattr(self.app, _COMMIT_CLAMP_ATTR, None)
        if clamp is not None and offsets:
            offered = dict(offsets)
            clamp(offsets)
            _give_back_acks(self, offered, offsets, first)
        return offsets

    filter_committable_offsets._clamped = True  # type: ignore[attr-defined]
    Consumer._filter_committable_offsets = filter_committable_offsets  # type: ignore[method-assign]


def _give_back_acks(consumer: Any, offered: dict[TP, int], kept: dict[TP, int], first: dict[TP, int]) -> None:
    """Faust takes the acknowledged offsets it offers for a commit off its list before the clamp sees them: a
    commit the clamp lowered (or dropped) left the offsets between the clamped and the offered one nowhere, and
    Faust, seeing a hole after what it committed, never offered that partition again. The device judge's
    partitions, whose commits wait for their states to be saved (every 5 s), then stayed committed at their first
    save: a restarted worker read every device-views record since its start again (found on make bench's hot
    workload: offset 12 of about 560 per partition). Those offsets go back on the list."""
    lock = getattr(faust_tuples, "ack_lock", None) or contextlib.nullcontext()
    with lock:
        for tp, offer in offered.items():
            clamped = kept.get(tp)
            start = first.get(tp) if clamped is None else max(clamped, first.get(tp, clamped))
            if start is None or start >= offer:
                continue
            index = consumer._acked_index[tp]
            back = [offset for offset in range(start, offer) if offset not in index]
            if back:
                acked = consumer._acked[tp]
                acked.extend(back)
                acked.sort()
                index.update(back)


# ---- 4. table writes name their partition ----------------------------------------------------------------------


@contextmanager
def writing_for(event: Any) -> Iterator[None]:
    """Table writes inside this block go to the partition of `event` (Faust reads the current event)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


# ---- 5. where a consumer is --------------------------------------------------------------------------------------


def fetched_offset(consumer: Any, tp: TP) -> int | None:
    """The offset of the last record Faust handed to the stream's buffer (None: none yet)."""
    offset: int | None = consumer._read_offset.get(tp)
    return offset


def committed_offset(consumer: Any, tp: TP) -> int | None:
    """The offset committed for the partition, as Faust's consumer knows it (None: nothing committed)."""
    offset: int | None = consumer._committed_offset.get(tp)
    return offset


# ---- 6. the producer's aiokafka client ---------------------------------------------------------------------------


def aiokafka_client(producer: Any) -> Any:
    """The aiokafka client under Faust's producer (started)."""
    return producer._ensure_producer().client


def aiokafka_producer(producer: Any) -> Any:
    """The aiokafka producer under Faust's (started): its `create_batch` / `send_batch` let the worker send a
    batch's output records per topic-partition without a future per record (streaming/emitter.py Outbox)."""
    return producer._ensure_producer()


# ---- 7. the signal handler of mode's Worker -----------------------------------------------------------------------


class SignalAwareWorker(faust.Worker):
    """faust.Worker that calls `on_shutdown_signal(name)` the moment SIGTERM or SIGINT arrives, then shuts down."""

    on_shutdown_signal: Callable[[str], None] | None = None

    def _schedule_shutdown(self, signal_: signal.Signals) -> None:  # mode.Worker's handler of SIGTERM and SIGINT
        if self.on_shutdown_signal is not None:
            self.on_shutdown_signal(signal.Signals(signal_).name)
        super()._schedule_shutdown(signal_)


# ---- 8. table recovery's progress ---------------------------------------------------------------------------------


def table_recovery(app: Any) -> Any:
    """The app's table Recovery service (`completed` event, `active_remaining_total()`)."""
    return getattr(app.tables, "recovery")  # noqa: B009 (TableManagerT does not declare it)


# ---- 9. a fetch asks for the partitions active when it started ---------------------------------------------------


async def fetch_active(
    fetch: Callable[[set[TP]], Awaitable[Mapping[Any, list[Any]]]],
    fetcher: Any,
    active: set[TP],
    buffered: set[TP],
) -> Mapping[Any, list[Any]]:
    """`fetch` (records of the partitions asked for) of the partitions in `active` as it is now.

    `active` is Faust's live set: `fetch` gets a copy (aiokafka reads an empty set as every partition, so an empty
    one is not asked for), and the records of a partition that left `active` (and `buffered`) while the fetch waited
    are put back through aiokafka's `fetcher`: Faust would drop them, and aiokafka's position has moved past them."""
    asked = set(active)
    if not asked:
        return {}
    records = await fetch(asked)
    left = [tp for tp in records if tp not in active and tp not in buffered]
    if not left:
        return records
    records = dict(records)
    for tp in left:
        first = records.pop(tp)[0].offset
        log.debug("%s[%d] was paused while fetched: records from offset %d put back", tp.topic, tp.partition, first)
        fetcher.seek_to(tp, first)
    return records


def _install_fetch_snapshot() -> None:
    original = AIOKafkaConsumerThread._fetch_records
    if getattr(original, "_snapshot", False):
        return

    async def fetch_records(
        self: Any,
        consumer: Any,
        active_partitions: set[TP],
        timeout: float | None = None,
        max_records: int | None = None,
    ) -> Any:
        # Faust's own fetch (its flow, closed and fetch-context guards) asked for a snapshot of the set
        return await fetch_active(
            lambda asked: original(self, consumer, asked, timeout=timeout, max_records=max_records),
            consumer._fetcher,
            active_partitions,
            self.consumer._buffered_partitions,
        )

    fetch_records._snapshot = True  # type: ignore[attr-defined]
    AIOKafkaConsumerThread._fetch_records = fetch_records  # type: ignore[method-assign]


# ---- 10. stream buffers bounded in bytes --------------------------------------------------------------------------

# Faust resumes a paused partition once its queue holds at most this share of its bound (mode's pressure_drop_ratio)
_DROP_RATIO = 0.40


def _value_bytes(item: Any) -> int:
    """The record value bytes an event in a stream's queue holds (0 for anything else)."""
    size = getattr(getattr(item, "message", None), "serialized_value_size", None)
    return size if isinstance(size, int) else 0


class ByteBoundedQueue(ThrowableQueue):  # type: ignore[type-arg]
    """A stream's queue (mode's ThrowableQueue, as Faust makes it) whose pressure is high when it holds
    `maxsize / 1.25` records (Faust's own bound) or `max_bytes` of record values, and drops once it holds at most
    40 % of both: the partitions that put into it are paused (Consumer.on_buffer_full) until then."""

    def __init__(self, *args: Any, max_bytes: int, **kwargs: Any) -> None:
        self.max_bytes = max_bytes
        self.buffered_bytes = 0
        super().__init__(*args, **kwargs)

    def _put(self, item: Any) -> None:  # asyncio.Queue's primitive under put, put_nowait and force_put_nowait
        self.buffered_bytes += _value_bytes(item)
        super()._put(item)

    def _get(self) -> Any:  # under get and get_nowait
        item = super()._get()
        self.buffered_bytes -= _value_bytes(item)
        return item

    def clear(self) -> None:
        super().clear()
        self.buffered_bytes = 0

    def in_pressure_high_state(self, callback: Callable[..., Any]) -> bool:
        pending = self._pending_pressure_drop_callbacks
        if callback in pending:
            return False
        if self.qsize() >= self.pressure_high_size or self.buffered_bytes >= self.max_bytes:
            pending.add(callback)
            self.on_pressure_high()
            return True
        return False

    def maybe_endorse_pressure_drop(self) -> None:
        if self.buffered_bytes > self.max_bytes * _DROP_RATIO:
            return  # still heavy: its partitions stay paused
        super().maybe_endorse_pressure_drop()


# the bound of every stream's queue once patch 10 is installed (None: not installed)
_stream_buffer_bytes: int | None = None


def _install_byte_bounded_streams(max_bytes: int) -> None:
    global _stream_buffer_bytes
    installed = _stream_buffer_bytes is not None
    _stream_buffer_bytes = max_bytes
    if installed:
        return

    def queue(self: Any) -> ThrowableQueue:  # type: ignore[type-arg]
        if self._queue is None:  # as Faust's own, but bounded in bytes too
            maxsize = self.maxsize if self.maxsize is not None else self.app.conf.stream_buffer_maxsize
            self._queue = ByteBoundedQueue(
                maxsize=maxsize,
                max_bytes=_stream_buffer_bytes,
                flow_control=self.app.flow_control,
                clear_on_resume=True,
            )
        return self._queue  # type: ignore[no-any-return]

    Channel.queue = property(queue)  # type: ignore[assignment,method-assign]


# ---- installing ---------------------------------------------------------------------------------------------------


def install(
    app: faust.App,
    *,
    true_ends: TrueEnds,
    stream_topics: Iterable[str],
    on_sought: Callable[[dict[TP, int | None]], None] | None = None,
    clamp_commits: Callable[[dict[TP, int]], None] | None = None,
    stream_buffer_bytes: int | None = None,
) -> None:
    """Install patches 1-3, 9 and (given `stream_buffer_bytes`) 10 (process-wide, idempotent) and give this app
    what they read: the reader of true changelog ends, the topics whose uncommitted partitions start from the
    earliest offset, who hears where the stream partitions were sought, and what clamps the offsets about to be
    committed."""
    _install_true_changelog_end()
    _install_stream_seek()
    _install_fetch_snapshot()
    _install_commit_clamp()
    if stream_buffer_bytes is not None:
        _install_byte_bounded_streams(stream_buffer_bytes)
    setattr(app, _TRUE_ENDS_ATTR, true_ends)
    setattr(app, _STREAM_TOPICS_ATTR, set(stream_topics))
    setattr(app, _SEEK_LISTENER_ATTR, on_sought)
    setattr(app, _COMMIT_CLAMP_ATTR, clamp_commits)
