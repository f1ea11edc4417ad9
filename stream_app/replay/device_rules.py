"""The device rules in a replay, driven as the worker's device-views agent drives them (streaming/devices.py
DeviceJudge), without Kafka: the one adapter to swap for the domain device judge.

The worker forwards each partition's accepted views of a batch, with that partition's progress, to the device
partitions; each judges them against per-device state, sends flags back to the videos' partitions, expires its
devices at the slowest source's watermark and acknowledges it. A replay does the same in-process after every batch,
with one device judge for all devices (how devices are spread over partitions changes no verdict).

When `stream_app/domain/device_judge.py` (PartitionDeviceJudge, with device_overlap and account_farm) lands, this
class becomes a thin wrapper of it over a MemoryDeviceStore: `judge` feeds it a DeviceViews record per source and
batch, `acknowledge` returns its DeviceAck watermark, and flags keep their own reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stream_app.domain import rules
from stream_app.domain.events import ViewEvent
from stream_app.domain.policy import Policy
from stream_app.domain.rules_state import DeviceState
from stream_app.domain.windows import SourceWatermark

# Devices not seen for a while are expired on a sweep, once per this much watermark progress (event time); the
# worker sweeps every SWEEP_INTERVAL_S of wall clock. Only memory depends on it, never a verdict.
SWEEP_EVERY_MS = 60_000


@dataclass(frozen=True, slots=True)
class DeviceFlag:
    """A device rule rejected an accepted view: claw it back on its video's partition."""

    video_id: str
    event_id: str
    reason: str
    detail: str


class ReplayDeviceRules:
    """device_burst over every device, fed by `sources` event partitions. `max_source_skew_ms`: the worker's bound
    on how far the device watermark trails the most advanced source (streaming/devices.py MAX_SOURCE_SKEW_MS)."""

    def __init__(self, policy: Policy, sources: int, max_source_skew_ms: int) -> None:
        self.policy = policy
        self.sources = sources
        self._devices: dict[str, DeviceState] = {}
        self._clock = SourceWatermark(max_skew_ms=max_source_skew_ms)
        self._touched: set[str] = set()
        self._last_sweep: int | None = None

    def __len__(self) -> int:
        return len(self._devices)

    def judge(self, source: int, views: Sequence[ViewEvent], through_ts: int | None) -> list[DeviceFlag]:
        """One event partition's accepted views of a batch, with its progress (the largest view ts it accepted)."""
        if through_ts is not None:
            self._clock.observe(source, through_ts)
        flags: list[DeviceFlag] = []
        devices = self._devices
        for view in views:
            state = devices.get(view.device_id)
            if state is None:
                state = devices[view.device_id] = DeviceState()
            judgement = rules.check_device_burst(self.policy, state, view, forget_behind_newest=False)
            self._touched.add(view.device_id)
            verdict = judgement.verdict
            if verdict.reason is not None:
                flags.append(DeviceFlag(view.video_id, view.event_id, verdict.reason, verdict.detail))
            reason = judgement.clawback_reason or rules.Reason.DEVICE_BURST
            for ref in judgement.clawbacks:
                flags.append(DeviceFlag(ref.video_id, ref.event_id, reason, verdict.detail))
        return flags

    def acknowledge(self) -> int | None:
        """End of a round of batches: advance the sources' watermark, expire the devices it touched (and, now and
        then, every device) at it, and return it for the event partitions (PartitionScorer.on_device_ack)."""
        watermark = self._clock.advance(self.sources)
        if watermark is None:
            return None
        if self._last_sweep is None or watermark - self._last_sweep >= SWEEP_EVERY_MS:
            self._last_sweep = watermark
            expiring = list(self._devices)
        else:
            expiring = list(self._touched)
        for device_id in expiring:
            state = self._devices.get(device_id)
            if state is not None and rules.expire_device(self.policy, state, watermark):
                del self._devices[device_id]
        self._touched.clear()
        return watermark
