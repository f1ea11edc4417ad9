"""One device partition's stored device states, kept as a log of segments: the device-state table's layout.

Why a log. A device's state changes with nearly every view it makes (a view added, judged, forgotten), and a
state stored under a key of its own costs one changelog record per device and batch: measured, about half of the
worker's time went to those records (bench/RESULTS.md). Here each batch writes one record, a *segment* holding
the stored states of every device the batch changed (or a deletion mark), however many there are. Restore reads
the partition's segments in order and keeps each device's newest entry.

Bounded by compaction. An entry superseded by a newer one is dead. When the live segments hold more than twice as
many entries as there are devices with a state (plus `SLACK_ENTRIES`), a segment at most half of whose entries are
live is cleaned: its live entries are copied into the batch's segment (their stored bytes as they are, never
re-serialized) and it is dropped. Every clean frees at least as many entries as it copies, so a state is copied
about once per write, amortized, and the log holds at most about twice the live states; a segment whose entries
are mostly live is never copied (the states of devices that hold only an account for a day would otherwise move
forward again and again: measured, the bytes a batch wrote grew with the devices remembered). A deletion mark
stays while an older segment may hold a copy of its device: it is copied along when its segment is cleaned, and
dropped once its segment is the oldest (marks count as dead weight there: devices that were all deleted leave an
empty log behind).

Crash consistency. A batch's segments are written in seq order, then the dropped ones are deleted: restore takes
the newest entry per device over whatever prefix reached the changelog. A device whose newest state did not reach
it is met again when the device-views records since the last commit are read again (the device judge skips what a
state already holds: DeviceState.through_offset), exactly as with one key per device.

Pure: the wiring (streaming/devices.py) stores the segments under keys of its own and passes them back at restore.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from stream_app.domain import codec, jsoncodec
from stream_app.domain.codec import Kind

__all__ = ["SEGMENT_BYTES", "SLACK_ENTRIES", "DeviceLog", "LogWrite"]

# A segment is one Kafka record of the state changelog: kept well under the broker's default 1 MB record size.
SEGMENT_BYTES = 512 * 1024
# Dead entries tolerated beyond one per live device before compaction copies anything: a small partition is
# never compacted, and a large one compacts in steps of whole segments.
SLACK_ENTRIES = 4096
# At most this many live entries are copied forward per batch, beyond twice the batch's own: a batch never pays
# for a long backlog of compaction at once.
COPY_PER_BATCH = 20_000
# What an entry costs in a segment besides its device id and value (brackets, commas, quotes, null).
_ENTRY_OVERHEAD = 8
# A device's stored bytes are held behind the seq of the segment holding its newest entry, in this many bytes
# (big-endian): one dict per device instead of two (bench/RESULTS.md, Speed steps 22).
_SEQ_BYTES = 8


def _seq_of(held: bytes) -> int:
    return int.from_bytes(held[:_SEQ_BYTES], "big")


@dataclass(slots=True)
class LogWrite:
    """A batch's writes, in this order: the new segments (seq, value), then the segments to delete."""

    segments: list[tuple[int, bytes]] = field(default_factory=list)
    dropped: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.segments or self.dropped)


class DeviceLog:
    """The stored states of one device partition's devices (device_id -> stored bytes) and the segments that hold
    them. `put`/`delete` change a device; `seal` turns the changes since the last seal into segments."""

    __slots__ = (
        "_cleanable",
        "_entries",
        "_live",
        "_marked",
        "_marks",
        "_members",
        "_next_seq",
        "_pending",
        "_states",
        "_values",
    )

    def __init__(self) -> None:
        # device -> the seq of the segment holding its newest entry (_SEQ_BYTES) followed by its stored state, as
        # of the last seal: a device is held once, where a dict of states and one of seqs cost about 40 bytes more
        self._values: dict[str, bytes] = {}
        self._marked: dict[str, int] = {}  # device whose newest entry is a deletion mark -> that entry's segment
        self._pending: dict[str, bytes | None] = {}  # changes since the last seal (None: deleted)
        self._states = 0  # devices with a state, the pending changes included
        self._members: dict[int, list[str]] = {}  # live segment (oldest first) -> the devices it has an entry of
        self._live: dict[int, int] = {}  # live segment -> how many of its entries are their device's newest
        self._marks: dict[int, int] = {}  # live segment -> how many of those are deletion marks
        self._cleanable: list[int] = []  # heap of segments at most half of whose entries are live (some stale)
        self._entries = 0  # entries in live segments, dead ones included
        self._next_seq = 0

    # ---- restore ----

    @classmethod
    def restore(cls, segments: Iterable[bytes], legacy: Iterable[tuple[str, bytes]] = ()) -> DeviceLog:
        """The log as stored: its segments (any order), and `legacy`, states stored one key per device by the
        previous layout (migrated: a device with no entry in a segment takes it, and the next seal writes it into
        a segment; the wiring then deletes the legacy keys)."""
        log = cls()
        # decoded one at a time, in seq order (found by a first decode): all at once, the partition's states were
        # held as Python objects besides their bytes (bench/RESULTS.md, Speed steps 21)
        raws = list(segments)
        order = sorted((codec.decode(Kind.DEVICE_LOG, raw)[0], index) for index, raw in enumerate(raws))
        for _, index in order:
            seq, entries = codec.decode(Kind.DEVICE_LOG, raws[index])
            log._add_segment(
                seq, [(device_id, None if state is None else jsoncodec.dumps(state)) for device_id, state in entries]
            )
        log._states = len(log._values)
        for device_id, value in legacy:
            if device_id not in log._values and device_id not in log._marked and device_id not in log._pending:
                log._pending[device_id] = value
                log._states += 1
        return log

    def _add_segment(self, seq: int, entries: list[tuple[str, bytes | None]]) -> None:
        """A segment's entries (device id, its stored state or None for a deletion mark) become their devices'
        newest."""
        values = self._values
        marked = self._marked
        live = self._live
        marks = self._marks
        prefix = seq.to_bytes(_SEQ_BYTES, "big")
        count = 0
        for device_id, value in entries:
            held = values.get(device_id)
            was_mark = held is None
            previous = marked.get(device_id) if held is None else _seq_of(held)
            if previous is not None and previous in live:  # not when its segment was just cleaned (entry copied)
                live[previous] -= 1
                if was_mark:
                    marks[previous] -= 1
                if live[previous] * 2 <= len(self._members[previous]):
                    heapq.heappush(self._cleanable, previous)
            if value is None:
                if held is not None:
                    del values[device_id]
                marked[device_id] = seq
                count += 1
            else:
                values[device_id] = prefix + value
                if was_mark:
                    marked.pop(device_id, None)
        live[seq] = len(entries)
        marks[seq] = count
        self._members[seq] = [device_id for device_id, _ in entries]
        self._entries += len(entries)
        self._next_seq = max(self._next_seq, seq + 1)

    # ---- the states ----

    def get(self, device_id: str) -> bytes | None:
        pending = self._pending
        if device_id in pending:
            return pending[device_id]
        held = self._values.get(device_id)
        return None if held is None else held[_SEQ_BYTES:]

    def _has_state(self, device_id: str) -> bool:
        pending = self._pending
        if device_id in pending:
            return pending[device_id] is not None
        return device_id in self._values

    def put(self, device_id: str, value: bytes) -> None:
        if not self._has_state(device_id):
            self._states += 1
        self._pending[device_id] = value

    def delete(self, device_id: str) -> None:
        if device_id in self._pending or device_id in self._values:
            if self._has_state(device_id):
                self._states -= 1
            self._pending[device_id] = None

    def device_ids(self) -> list[str]:
        """Every device with a stored state."""
        pending = self._pending
        held = [device_id for device_id in self._values if device_id not in pending]
        return held + [device_id for device_id, value in pending.items() if value is not None]

    def __len__(self) -> int:
        return self._states

    @property
    def segment_count(self) -> int:
        return len(self._members)

    @property
    def entry_count(self) -> int:
        """Entries held by the live segments, dead ones included."""
        return self._entries

    @property
    def live_entry_count(self) -> int:
        """Entries that are their device's newest: a state, or a deletion mark an older segment may still need."""
        return len(self._values) + len(self._marked)

    # ---- sealing a batch ----

    def seal(self) -> LogWrite:
        """The changes since the last seal as new segments, with the live entries compaction copies forward, and
        the segments that compaction drops (to delete after the new ones are written)."""
        pending, self._pending = self._pending, {}
        values = self._values
        marked = self._marked
        entries: list[tuple[str, bytes | None]] = []
        for device_id, value in pending.items():
            if value is None and device_id not in values and device_id not in marked:
                continue  # never written to a segment: nothing to mark deleted
            entries.append((device_id, value))
        dropped = self._compact(entries, {device_id for device_id, _ in entries})
        write = LogWrite(dropped=dropped)
        if entries:
            for members, encoded in self._encode(entries):
                seq = self._next_seq
                self._add_segment(seq, members)
                write.segments.append((seq, codec.encode(Kind.DEVICE_LOG, [seq, encoded])))
        return write

    def _compact(self, entries: list[tuple[str, bytes | None]], written: set[str]) -> list[int]:
        """While the log holds more than twice the live states (plus slack), clean a segment at most half of whose
        entries are live: its live entries not written by this batch anyway are appended to `entries`, and it is
        dropped. A segment whose entries are mostly live is never copied (that would only move them); a deletion
        mark is dropped once its segment is the oldest (no older copy can remain), and copied before."""
        dropped: list[int] = []
        budget = COPY_PER_BATCH + 2 * len(entries)
        while self._entries + len(entries) > 2 * self._states + SLACK_ENTRIES and budget > 0:
            seq = self._next_to_clean()
            if seq is None:
                break  # every segment is mostly live: the log is within twice its live entries
            budget -= self._clean(seq, entries, written)
            dropped.append(seq)
        return dropped

    def _next_to_clean(self) -> int | None:
        """The oldest segment when at most half of its entries are live states (its marks are dead weight there),
        else the oldest of the segments at most half of whose entries are live."""
        oldest = next(iter(self._members), None)
        if oldest is None:
            return None
        if (self._live[oldest] - self._marks[oldest]) * 2 <= len(self._members[oldest]):
            return oldest
        heap = self._cleanable
        while heap:
            seq = heapq.heappop(heap)
            if seq in self._members:  # not cleaned since it was pushed (a segment only gets more cleanable)
                return seq
        return None

    def _clean(self, seq: int, entries: list[tuple[str, bytes | None]], written: set[str]) -> int:
        """Drop segment `seq`, appending its live entries to `entries`; how many were copied."""
        oldest = seq == next(iter(self._members))
        members = self._members.pop(seq)
        self._live.pop(seq)
        self._marks.pop(seq)
        self._entries -= len(members)
        values = self._values
        marked = self._marked
        copied = 0
        for device_id in members:
            if device_id in written:
                continue  # this batch writes it anyway
            held = values.get(device_id)
            if held is not None:
                if _seq_of(held) != seq:
                    continue  # dead: a newer entry exists
                entries.append((device_id, held[_SEQ_BYTES:]))
            else:
                if marked.get(device_id) != seq:
                    continue  # dead (a newer entry exists), or gone
                if oldest:  # no older copy is left for the mark to hide
                    del marked[device_id]
                    continue
                entries.append((device_id, None))
            written.add(device_id)
            copied += 1
        return copied

    def _encode(
        self, entries: list[tuple[str, bytes | None]]
    ) -> list[tuple[list[tuple[str, bytes | None]], list[Any]]]:
        """entries in parts whose encoding stays under SEGMENT_BYTES: (the part's entries, JSON-ready entries), the
        stored states embedded as they are (orjson.Fragment)."""
        parts: list[tuple[list[tuple[str, bytes | None]], list[Any]]] = []
        members: list[tuple[str, bytes | None]] = []
        encoded: list[Any] = []
        size = 0
        budget = SEGMENT_BYTES - 64  # the header, the seq and the brackets
        for device_id, value in entries:
            cost = len(device_id) * 4 + (len(value) if value is not None else 4) + _ENTRY_OVERHEAD
            if members and size + cost > budget:
                parts.append((members, encoded))
                members, encoded, size = [], [], 0
            members.append((device_id, value))
            encoded.append([device_id, None if value is None else orjson.Fragment(value)])
            size += cost
        if members:
            parts.append((members, encoded))
        return parts
