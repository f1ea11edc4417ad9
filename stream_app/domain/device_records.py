"""The records that cross the internal device topics, one typed definition each, and their bytes on the wire.

`{app}-device-views` carries `DeviceViews` (an event partition's accepted views for one device partition, with the
sender's progress); `{app}-device-flags` carries `DeviceFlags` (the device rules' verdicts for one event partition,
then the device partitions' acknowledgements). Both are positional JSON arrays whose first element is the wire
version, with only the fields the other side needs. Records written before these types (JSON objects) are still
read for one retention period of the topics after an upgrade.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from stream_app.domain import jsoncodec
from stream_app.domain.errors import SerializationError
from stream_app.domain.partitioning import partition_of

__all__ = [
    "DEVICE_REASONS",
    "WIRE_VERSION",
    "DeviceAck",
    "DeviceFlag",
    "DeviceFlags",
    "DeviceView",
    "DeviceViews",
    "views_by_partition",
]

WIRE_VERSION = 1
# The reason codes a device flag may carry (SPEC §6, the rules judged per device).
DEVICE_REASONS = frozenset({"device_burst", "device_overlap", "account_farm"})
# What a flag written before flags carried their reason meant.
_LEGACY_REASON = "device_burst"


class DeviceView(NamedTuple):
    """An accepted view as the device rules need it: its watch interval on the device is [ts - watch_ms, ts]."""

    device_id: str
    video_id: str
    event_id: str
    viewer_id: str
    ts: int
    watch_ms: int


def views_by_partition(views: Sequence[DeviceView], partitions: int) -> list[list[DeviceView]]:
    """The views of each partition of the device-views topic, in order (empty lists included): a view goes to its
    device's partition, murmur2 of the device id as Kafka's default partitioner keys it."""
    groups: list[list[DeviceView]] = [[] for _ in range(partitions)]
    for view in views:
        groups[partition_of(view.device_id.encode(), partitions)].append(view)
    return groups


@dataclass(frozen=True, slots=True)
class DeviceViews:
    """One `{app}-device-views` record: the views one event partition (`source`) accepted in a batch whose devices
    map to the record's partition, stored by column (the judge reads them by index, no object per view).

    `through_ts`: the largest view ts the source has accepted (-1: none yet). `drained`: the source had processed
    every record of its views topic-partition when it sent this (sent on ticks only, never with views), so every
    view it will ever forward with an older production time is already on its way before this record.
    """

    source: int
    through_ts: int
    drained: bool
    device_ids: Sequence[str] = ()
    video_ids: Sequence[str] = ()
    event_ids: Sequence[str] = ()
    viewer_ids: Sequence[str] = ()
    ts: Sequence[int] = ()
    watch_ms: Sequence[int] = ()

    @classmethod
    def of(cls, source: int, through_ts: int, drained: bool, views: Sequence[DeviceView]) -> DeviceViews:
        if not views:
            return cls(source, through_ts, drained)
        columns = list(zip(*views, strict=True))
        return cls(source, through_ts, drained, *columns)

    def __len__(self) -> int:
        return len(self.ts)

    def views(self) -> Iterator[DeviceView]:
        return map(
            DeviceView._make,
            zip(self.device_ids, self.video_ids, self.event_ids, self.viewer_ids, self.ts, self.watch_ms, strict=True),
        )

    def to_bytes(self) -> bytes:
        return jsoncodec.dumps(
            [
                WIRE_VERSION,
                self.source,
                self.through_ts,
                self.drained,
                list(self.device_ids),
                list(self.video_ids),
                list(self.event_ids),
                list(self.viewer_ids),
                list(self.ts),
                list(self.watch_ms),
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceViews:
        raw = jsoncodec.loads(data)
        try:
            if isinstance(raw, list) and raw and raw[0] == WIRE_VERSION and len(raw) == 10:
                _, source, through_ts, drained, *columns = raw
                record = cls(_int(source), _int(through_ts), _bool(drained), *columns)
            elif isinstance(raw, dict):  # before DeviceViews: {"source", "through_ts", "records": [{...}]}
                record = cls._legacy(_int(raw["source"]), _int(raw["through_ts"]), raw["records"])
            elif isinstance(raw, list):  # the first format: a bare array of view objects, no progress
                record = cls._legacy(-1, -1, raw)
            else:
                raise SerializationError(f"device-views: not a DeviceViews record: {str(raw)[:80]}")
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(f"device-views: malformed record ({exc!r})") from exc
        n = len(record.ts)
        checked = (record.ts, record.device_ids, record.video_ids, record.event_ids, record.viewer_ids, record.watch_ms)
        if any(not isinstance(c, list | tuple) or len(c) != n for c in checked):
            raise SerializationError("device-views: columns of different lengths")
        if n > 1:
            # one str per distinct video: a device keeps its views' video ids for minutes, and a record's views
            # are mostly of a few popular videos (the decoder makes a str per occurrence)
            shared: dict[str, str] = {}
            video_ids = [shared.setdefault(v, v) for v in record.video_ids]
            record = cls(
                record.source,
                record.through_ts,
                record.drained,
                record.device_ids,
                video_ids,
                record.event_ids,
                record.viewer_ids,
                record.ts,
                record.watch_ms,
            )
        return record

    @classmethod
    def _legacy(cls, source: int, through_ts: int, views: list[dict[str, Any]]) -> DeviceViews:
        # those records had no watch_ms: a view of unknown length takes no time on the screen
        return cls.of(
            source,
            through_ts,
            False,
            [
                DeviceView(v["device_id"], v["video_id"], v["event_id"], v["viewer_id"], v["ts"], v.get("watch_ms", 0))
                for v in views
            ],
        )


class DeviceFlag(NamedTuple):
    """A device rule rejects an accepted view of `video_id`: its partition claws it back with `reason`."""

    video_id: str
    event_id: str
    reason: str
    detail: str


class DeviceAck(NamedTuple):
    """Device partition `device_partition` has judged, and flagged, every view up to `watermark` less the delay of
    its verdicts (rules.device_flag_delay_ms)."""

    device_partition: int
    watermark: int


@dataclass(frozen=True, slots=True)
class DeviceFlags:
    """One `{app}-device-flags` record for one event partition: flags for its videos, then acknowledgements (an
    event partition applies the flags before it trusts the acknowledgements that follow them)."""

    flags: Sequence[DeviceFlag] = ()
    acks: Sequence[DeviceAck] = ()

    def to_bytes(self) -> bytes:
        return jsoncodec.dumps([WIRE_VERSION, [list(f) for f in self.flags], [list(a) for a in self.acks]])

    @classmethod
    def from_bytes(cls, data: bytes) -> DeviceFlags:
        raw = jsoncodec.loads(data)
        try:
            if isinstance(raw, list) and len(raw) == 3 and raw[0] == WIRE_VERSION and not isinstance(raw[1], dict):
                flags = tuple(DeviceFlag(str(v), str(e), _reason(r), str(d)) for v, e, r, d in raw[1])
                acks = tuple(DeviceAck(_int(p), _int(w)) for p, w in raw[2])
                return cls(flags, acks)
            if isinstance(raw, list):  # before DeviceFlags: an array of flag objects or of acknowledgement objects
                legacy_flags = tuple(
                    DeviceFlag(str(f["video_id"]), str(f["event_id"]), _LEGACY_REASON, str(f["detail"]))
                    for f in raw
                    if "ack" not in f
                )
                legacy_acks = tuple(DeviceAck(_int(a["ack"]), _int(a["watermark"])) for a in raw if "ack" in a)
                return cls(legacy_flags, legacy_acks)
        except (KeyError, TypeError, ValueError) as exc:
            raise SerializationError(f"device-flags: malformed record ({exc!r})") from exc
        raise SerializationError(f"device-flags: not a DeviceFlags record: {str(raw)[:80]}")


def _int(value: object) -> int:
    if type(value) is not int:
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _bool(value: object) -> bool:
    if type(value) is not bool:
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _reason(value: object) -> str:
    if value not in DEVICE_REASONS:
        raise ValueError(f"unknown device reason {value!r}")
    return str(value)
