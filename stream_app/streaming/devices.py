"""device_burst across all videos: accepted views repartitioned by device_id, judged against per-device state.

A device's views spread over every partition, so the events agent forwards each accepted view to the
device-views topic keyed by device_id; this agent keeps a DeviceState per device (table keyed by device_id) and
sends a flag, keyed by video_id, to the device-flags topic for each view the rule rejects. Flags are
co-partitioned with the event topics, so the video's own partition claws the view back (SPEC §5, §6).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stream_app.domain import jsoncodec, rules
from stream_app.domain.events import ViewEvent
from stream_app.domain.rules_state import DeviceState, ViewRef
from stream_app.edges.partitioner import partition_for
from stream_app.streaming.sending import fail_stop, send_grouped
from stream_app.streaming.tables import writing_for

if TYPE_CHECKING:
    from stream_app.streaming.app import ScorerApp

log = logging.getLogger(__name__)

# How often (wall clock) devices that stopped viewing are expired from the device table.
SWEEP_INTERVAL_S = 60.0
# A quiet device is forgotten once the partition's newest ts is this far past its span (see _write).
SWEEP_SKEW_MS = 3_600_000


class DeviceJudge:
    def __init__(self, scorer: ScorerApp) -> None:
        self.app = scorer
        self.policy = scorer.settings.policy
        self._devices: dict[str, DeviceState] = {}
        self._newest_ts: dict[int, int] = {}  # per device-views partition: the newest view ts seen
        self._last_event: dict[int, Any] = {}  # per device-views partition: its latest record, for table writes
        self._last_sweep = time.monotonic()

    def forget(self) -> None:
        """After a rebalance the table is the truth: drop the cache."""
        self._devices.clear()
        self._last_event.clear()

    def _device(self, device_id: str) -> DeviceState:
        state = self._devices.get(device_id)
        if state is None:
            raw = self.app.device_state.get(device_id.encode())
            state = DeviceState() if raw is None else DeviceState.from_dict(jsoncodec.loads(raw))
            self._devices[device_id] = state
        return state

    async def process_batch(self, batch: Sequence[Any]) -> None:
        """Each record is a JSON array of accepted views whose devices all map to the record's partition."""
        await self.app.ingest.load_partition_counts()
        flags: list[tuple[ViewRef, str]] = []
        touched: dict[str, int] = {}
        last_event: dict[int, Any] = {}  # per device-views partition: an event of it, for table writes
        for event in batch:
            message = event.message
            try:
                views = jsoncodec.loads(message.value)
            except Exception:  # internal records: a bad one is logged, never allowed to stop the agent
                log.exception("bad device-views record at %s[%s]@%s", message.topic, message.partition, message.offset)
                continue
            last_event[message.partition] = event
            for view in views:
                judgement = rules.check_device_burst(
                    self.policy,
                    self._device(view["device_id"]),
                    ViewEvent(
                        view["event_id"],
                        view["video_id"],
                        "",
                        view["viewer_id"],
                        view["device_id"],
                        view["ts"],
                        0,
                        1,
                        "",
                        "",
                    ),
                )
                self._newest_ts[message.partition] = max(self._newest_ts.get(message.partition, 0), view["ts"])
                touched[view["device_id"]] = message.partition
                detail = judgement.verdict.detail
                if not judgement.verdict.passed:
                    flags.append((ViewRef(view["video_id"], view["event_id"], view["viewer_id"], view["ts"]), detail))
                flags.extend((ref, detail) for ref in judgement.clawbacks)
        self._last_event.update(last_event)
        if time.monotonic() - self._last_sweep >= SWEEP_INTERVAL_S:
            self._last_sweep = time.monotonic()
            idle = self._idle_devices(touched)
        else:
            idle = {}
        try:
            await self._write(touched, idle, flags)
        except Exception:
            fail_stop("could not write device state or flags")

    def _idle_devices(self, busy: dict[str, int]) -> dict[str, int]:
        """Devices not seen in this batch, on partitions this worker reads: expired like the busy ones, so a
        device that stops viewing does not stay in the table forever."""
        count = self.app.ingest.partition_count(self.app.device_views_name)
        idle: dict[str, int] = {}
        for key in list(self.app.device_state.keys()):
            device_id = key.decode()
            partition = partition_for(key, count)
            if device_id not in busy and partition in self._last_event and partition in self._newest_ts:
                self._device(device_id)
                idle[device_id] = partition
        return idle

    async def _write(self, touched: dict[str, int], idle: dict[str, int], flags: list[tuple[ViewRef, str]]) -> None:
        """Write each device seen in this batch, and each idle device whose memory expiry changed; send flags."""
        for device_id, partition in (touched | idle).items():
            state = self._devices[device_id]
            before = len(state)
            # A device seen in this batch already forgot what lies behind its own newest view (check_device_burst
            # does); the partition's newest ts must not be used for it: the video partitions feeding this one
            # run at different event times (minutes apart in a catch-up), and a farm's views from a partition
            # that is behind would be forgotten before they add up to a burst. Quiet devices are swept against
            # the partition's newest ts less that skew allowance.
            horizon = state.max_ts if device_id in touched else self._newest_ts[partition] - SWEEP_SKEW_MS
            with writing_for(self._last_event[partition]):
                if rules.expire_device(self.policy, state, horizon):
                    self._devices.pop(device_id, None)
                    if self.app.device_state.get(device_id.encode()) is not None:
                        del self.app.device_state[device_id.encode()]
                elif device_id in touched or len(state) != before:
                    self.app.device_state[device_id.encode()] = jsoncodec.dumps(state.to_dict())
        records = [{"video_id": ref.video_id, "event_id": ref.event_id, "detail": detail} for ref, detail in flags]
        await send_grouped(
            self.app.device_flags, records, "video_id", self.app.ingest.partition_count(self.app.device_flags_name)
        )
