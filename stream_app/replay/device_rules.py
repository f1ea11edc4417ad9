"""The device rules in a replay: the worker's device judge (domain/device_judge.py PartitionDeviceJudge), driven as
the worker's device-views agent drives it (streaming/devices.py), without Kafka.

The worker forwards each partition's accepted views of a batch, with that partition's progress, to the device
partitions; each judges them against per-device state, sends flags back to the videos' partitions and acknowledges
its watermark. A replay does the same in-process after every batch, with one device partition for all devices
(how devices are spread over partitions changes no verdict). At the end of the input every source says it is
drained, as a caught-up worker's do, so the views device_overlap and account_farm still hold are judged.

Two processes scoring two policies that judge alike (command.py) share the devices out by a hash of the device id,
as the worker's device partitions do: each judges the devices of its share (`DeviceShare`) and the two swap their
flags after every round.
A round's flags are applied in one canonical order (by video, then event), so how the devices were shared out
changes nothing, not even the order of the clawback records.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Protocol

from stream_app.domain.device_judge import ObjectDeviceStore, PartitionDeviceJudge
from stream_app.domain.device_records import DeviceFlag, DeviceView, DeviceViews
from stream_app.domain.policy import Policy

__all__ = ["DeviceFlag", "DeviceShare", "PeerLost", "ReplayDeviceRules"]

DEVICE_PARTITION = 0
# A round's flags in canonical order: sorted by video and event, a flag's order among an event's flags kept.
_FLAG_ORDER = itemgetter(0, 1)


class Peer(Protocol):
    """The other process's end of a duplex multiprocessing connection (`multiprocessing.Pipe()`)."""

    def send(self, obj: Any) -> None: ...

    def recv(self) -> Any: ...


class PeerLost(Exception):
    """The process with the other share of the devices ended (its end of the pipe is closed or reset)."""


class DeviceShare:
    """This process's share of the devices, `index` of two: the devices whose id hashes to it (the two processes
    are forked from one, so Python's string hash is the same in both). `peer` connects to the other share."""

    SHARES = 2

    def __init__(self, index: int, peer: Peer) -> None:
        if index not in range(self.SHARES):
            raise ValueError(f"share index must be 0 or 1, got {index}")
        self.index = index
        self.peer = peer

    def mine(self, views: Sequence[DeviceView]) -> list[DeviceView]:
        index = self.index
        return [view for view in views if hash(view.device_id) & 1 == index]

    def swap(self, flags: list[DeviceFlag]) -> list[DeviceFlag]:
        """Send this share's flags of a round and take the other's. Share 0 sends first and share 1 receives
        first, so that neither blocks on a full pipe while the other does too."""
        theirs: list[DeviceFlag]
        try:
            if self.index == 0:
                self.peer.send(flags)
                theirs = self.peer.recv()
                return flags + theirs
            theirs = self.peer.recv()
            self.peer.send(flags)
        except (EOFError, OSError) as exc:  # closed (EOFError, BrokenPipeError) or reset (ConnectionResetError)
            raise PeerLost(f"the process with device share {1 - self.index} ended: {exc!r}") from None
        return theirs + flags


class ReplayDeviceRules:
    """Every device in one PartitionDeviceJudge, fed by `sources` event partitions."""

    def __init__(self, policy: Policy, sources: int, share: DeviceShare | None = None) -> None:
        self.sources = sources
        self.share = share
        self.store = ObjectDeviceStore()  # a replay never restores: no state is serialized
        self.judge_ = PartitionDeviceJudge(policy, DEVICE_PARTITION, self.store, sources=sources)
        self._records: list[DeviceViews] = []
        self._watermark: int | None = None

    def __len__(self) -> int:
        return self.judge_.device_count()

    def judge(self, source: int, views: Sequence[DeviceView], through_ts: int | None) -> None:
        """One event partition's accepted views of a batch, with its progress (the largest view ts it accepted);
        judged with the round's other records by `acknowledge`."""
        if self.share is not None:
            views = self.share.mine(views)
        self._records.append(DeviceViews.of(source, -1 if through_ts is None else through_ts, False, views))

    def drained(self, progress: Sequence[int | None]) -> None:
        """The end of the input: every source reports it is drained (no view of it is still to come)."""
        for source, through_ts in enumerate(progress):
            self._records.append(DeviceViews.of(source, -1 if through_ts is None else through_ts, True, ()))

    def acknowledge(self) -> tuple[list[DeviceFlag], int | None]:
        """End of a round of batches: the flags of the round's records, then the watermark every flag up to which
        has been returned (PartitionScorer.on_device_ack), or None when it did not move."""
        records, self._records = self._records, []
        verdicts = self.judge_.judge(records)
        flags = verdicts.flags if self.share is None else self.share.swap(verdicts.flags)
        flags.sort(key=_FLAG_ORDER)
        return flags, None if verdicts.ack is None else verdicts.ack.watermark
