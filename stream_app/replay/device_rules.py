"""The device rules in a replay: the worker's device judge (domain/device_judge.py PartitionDeviceJudge), driven as
the worker's device-views agent drives it (streaming/devices.py), without Kafka.

The worker forwards each partition's accepted views of a batch, with that partition's progress, to the device
partitions; each judges them against per-device state, sends flags back to the videos' partitions and acknowledges
its watermark. A replay does the same in-process after every batch, with one device partition for all devices
(how devices are spread over partitions changes no verdict). At the end of the input every source says it is
drained, as a caught-up worker's do, so the views device_overlap and account_farm still hold are judged.
"""

from __future__ import annotations

from collections.abc import Sequence

from stream_app.domain.device_judge import ObjectDeviceStore, PartitionDeviceJudge
from stream_app.domain.device_records import DeviceFlag, DeviceView, DeviceViews
from stream_app.domain.policy import Policy

__all__ = ["DeviceFlag", "ReplayDeviceRules"]

DEVICE_PARTITION = 0


class ReplayDeviceRules:
    """Every device in one PartitionDeviceJudge, fed by `sources` event partitions."""

    def __init__(self, policy: Policy, sources: int) -> None:
        self.sources = sources
        self.store = ObjectDeviceStore()  # a replay never restores: no state is serialized
        self.judge_ = PartitionDeviceJudge(policy, DEVICE_PARTITION, self.store, sources=sources)
        self._records: list[DeviceViews] = []
        self._watermark: int | None = None

    def __len__(self) -> int:
        return self.judge_.device_count()

    def judge(self, source: int, views: Sequence[DeviceView], through_ts: int | None) -> None:
        """One event partition's accepted views of a batch, with its progress (the largest view ts it accepted);
        judged with the round's other records by `acknowledge`."""
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
        return verdicts.flags, None if verdicts.ack is None else verdicts.ack.watermark
