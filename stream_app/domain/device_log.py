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
        "_latest",
        "_live",
        "_marked",
        "_marks",
        "_members",
        "_next_seq",
        "_pending",
        "_values",
    )

    def __init__(self) -> None:
        self._values: dict[str, bytes] = {}  # device -> its stored state (as of the last seal, and pending puts)
        self._pending: dict[str, bytes | None] = {}  # changes since the last seal (None: deleted)
        self._latest: dict[str, int] = {}  # device -> the segment holding its newest entry (a state or a mark)
        self._marked: set[str] = set()  # devices whose newest entry is a deletion mark
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
            log._add_segment(seq, [(device_id, state is None) for device_id, state in entries])
            for device_id, state in entries:
                if state is None:
                    log._values.pop(device_id, None)
                else:
                    log._values[device_id] = jsoncodec.dumps_to_keep(state)
        for device_id, value in legacy:
            if device_id not in log._latest:
                log._values[device_id] = value
                log._pending[device_id] = value
        return log

    def _add_segment(self, seq: int, entries: list[tuple[str, bool]]) -> None:
        """A segment's entries (device id, whether a deletion mark) become their devices' newest."""
        latest = self._latest
        live = self._live
        marks = self._marks
        marked = self._marked
        members = self._members
        count = 0
        for device_id, mark in entries:
            previous = latest.get(device_id)
            if previous in live:  # not when its segment was just cleaned (its entry copied forward)
                live[previous] -= 1
                if device_id in marked:
                    marks[previous] -= 1
                if live[previous] * 2 <= len(members[previous]):
                    heapq.heappush(self._cleanable, previous)
            latest[device_id] = seq
            if mark:
                marked.add(device_id)
                count += 1
            else:
                marked.discard(device_id)
        live[seq] = len(entries)
        marks[seq] = count
        members[seq] = [device_id for device_id, _ in entries]
        self._entries += len(entries)
        self._next_seq = max(self._next_seq, seq + 1)

    # ---- the states ----

    def get(self, device_id: str) -> bytes | None:
        return self._values.get(device_id)

    def put(self, device_id: str, value: bytes) -> None:
        self._values[device_id] = value
        self._pending[device_id] = value

    def delete(self, device_id: str) -> None:
        if self._values.pop(device_id, None) is not None or device_id in self._pending:
            self._pending[device_id] = None

    def device_ids(self) -> list[str]:
        """Every device with a stored state."""
        return list(self._values)

    def __len__(self) -> int:
        return len(self._values)

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
        return len(self._latest)

    # ---- sealing a batch ----

    def seal(self) -> LogWrite:
        """The changes since the last seal as new segments, with the live entries compaction copies forward, and
        the segments that compaction drops (to delete after the new ones are written)."""
        pending, self._pending = self._pending, {}
        latest = self._latest
        entries: list[tuple[str, bytes | None]] = []
        for device_id, value in pending.items():
            if value is None and device_id not in latest:
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
        while self._entries + len(entries) > 2 * len(self._values) + SLACK_ENTRIES and budget > 0:
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
        latest = self._latest
        copied = 0
        for device_id in members:
            if latest.get(device_id) != seq or device_id in written:
                continue  # dead (a newer entry exists), or this batch writes it anyway
            if device_id in self._marked:
                if oldest:  # no older copy is left for the mark to hide
                    del latest[device_id]
                    self._marked.discard(device_id)
                    continue
                entries.append((device_id, None))
            else:
                entries.append((device_id, self._values[device_id]))
            written.add(device_id)
            copied += 1
        return copied

    def _encode(self, entries: list[tuple[str, bytes | None]]) -> list[tuple[list[tuple[str, bool]], list[Any]]]:
        """entries in parts whose encoding stays under SEGMENT_BYTES: ((device id, whether a mark), JSON-ready
        entries), the stored states embedded as they are (orjson.Fragment)."""
        parts: list[tuple[list[tuple[str, bool]], list[Any]]] = []
        members: list[tuple[str, bool]] = []
        encoded: list[Any] = []
        size = 0
        budget = SEGMENT_BYTES - 64  # the header, the seq and the brackets
        for device_id, value in entries:
            cost = len(device_id) * 4 + (len(value) if value is not None else 4) + _ENTRY_OVERHEAD
            if members and size + cost > budget:
                parts.append((members, encoded))
                members, encoded, size = [], [], 0
            members.append((device_id, value is None))
            encoded.append([device_id, None if value is None else orjson.Fragment(value)])
            size += cost
        if members:
            parts.append((members, encoded))
        return parts
