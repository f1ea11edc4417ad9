"""device_burst across all videos: accepted views repartitioned by device_id, judged against per-device state.

A device's views spread over every partition, so the events agent forwards each accepted view to the
device-views topic keyed by device_id; this agent keeps a DeviceState per device (table keyed by device_id) and
sends a flag, keyed by video_id, to the device-flags topic for each view the rule rejects. Flags are
co-partitioned with the event topics, so the video's own partition claws the view back (SPEC §5, §6).

Event time across sources. Each device-views record says which event partition sent it (`source`) and how far
that partition has come (`through_ts`: the largest view ts it accepted); every event partition sends one to every
device partition with each batch that accepted views, and (after a restart, say) an empty one on a tick when it
has not reported its progress yet. The device partition's watermark
(`windows.SourceWatermark`: the slowest source) decides when a device's views are forgotten, not the device's own
newest view: during a catch-up the event partitions run minutes of event time apart, and a farm's views from a
partition that is behind must still meet the ones that came first. After each batch the judge acknowledges its
watermark to every event partition, on the device-flags topic after the flags: an event partition keeps its
accepted views (for clawback) until every device partition has acknowledged past them
(`PartitionScorer.flag_safe_ms`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stream_app.domain import jsoncodec, rules
from stream_app.domain.events import InputTopic, ViewEvent
from stream_app.domain.rules_state import DeviceState, ViewRef
from stream_app.domain.windows import SourceWatermark
from stream_app.edges.partitioner import partition_for
from stream_app.streaming.sending import fail_stop, send_grouped
from stream_app.streaming.tables import writing_for

if TYPE_CHECKING:
    from stream_app.streaming.app import ScorerApp
    from stream_app.streaming.emitter import Outbox

log = logging.getLogger(__name__)

# How often (wall clock) devices that stopped viewing are expired from the device table.
SWEEP_INTERVAL_S = 60.0
# The device partition's watermark is never further than this behind its most advanced source (SourceWatermark):
# the most event-time skew between event partitions that device_burst tolerates, and so what it may hold.
MAX_SOURCE_SKEW_MS = 3_600_000


async def send_device_views(
    scorer: ScorerApp, views: list[ViewEvent], source: int, through_ts: int, outbox: Outbox | None = None
) -> None:
    """Forward an event partition's accepted views of one batch to the device partitions (one record to each)."""
    await send_grouped(
        scorer.device_views_name if outbox is not None else scorer.device_views,
        [
            {
                "video_id": v.video_id,
                "event_id": v.event_id,
                "viewer_id": v.viewer_id,
                "device_id": v.device_id,
                "ts": v.ts,
            }
            for v in views
        ],
        "device_id",
        scorer.ingest.partition_count(scorer.device_views_name),
        header={"source": source, "through_ts": through_ts},
        outbox=outbox,
    )


class DeviceJudge:
    def __init__(self, scorer: ScorerApp) -> None:
        self.app = scorer
        self.policy = scorer.settings.policy
        self._devices: dict[str, DeviceState] = {}
        self._clocks: dict[int, SourceWatermark] = {}  # per device-views partition: its sources' watermark
        self._acked: dict[int, int] = {}  # per device-views partition: the watermark last acknowledged
        self._last_event: dict[int, Any] = {}  # per device-views partition: its latest record, for table writes
        self._last_sweep = time.monotonic()

    def forget(self) -> None:
        """After a rebalance the table is the truth: drop the cache (and the watermarks, rebuilt from records)."""
        self._devices.clear()
        self._last_event.clear()
        self._clocks.clear()
        self._acked.clear()

    def _device(self, device_id: str) -> DeviceState:
        state = self._devices.get(device_id)
        if state is None:
            raw = self.app.device_state.get(device_id.encode())
            state = DeviceState() if raw is None else DeviceState.from_dict(jsoncodec.loads(raw))
            self._devices[device_id] = state
        return state

    def _clock(self, partition: int) -> SourceWatermark:
        clock = self._clocks.get(partition)
        if clock is None:
            clock = self._clocks[partition] = SourceWatermark(max_skew_ms=MAX_SOURCE_SKEW_MS)
        return clock

    async def process_batch(self, batch: Sequence[Any]) -> None:
        """Each record holds accepted views whose devices all map to the record's partition (`send_device_views`;
        a bare JSON array, the format before `source`/`through_ts`, is still read)."""
        await self.app.ingest.load_partition_counts()
        flags: list[tuple[ViewRef, str]] = []
        touched: dict[str, int] = {}
        last_event: dict[int, Any] = {}  # per device-views partition: an event of it, for table writes
        for event in batch:
            message = event.message
            try:
                record = jsoncodec.loads(message.value)
                if isinstance(record, dict):
                    views = record["records"]
                    self._clock(message.partition).observe(int(record["source"]), int(record["through_ts"]))
                else:
                    views = record
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
                    forget_behind_newest=False,  # expired at the sources' watermark instead (_write)
                )
                touched[view["device_id"]] = message.partition
                detail = judgement.verdict.detail
                if not judgement.verdict.passed:
                    flags.append((ViewRef(view["video_id"], view["event_id"], view["viewer_id"], view["ts"]), detail))
                flags.extend((ref, detail) for ref in judgement.clawbacks)
        self._last_event.update(last_event)
        watermarks: dict[int, int] = {}
        sources = self.app.ingest.partition_count(self.app.settings.topic(InputTopic.VIEWS))
        for partition in last_event:
            watermark = self._clock(partition).advance(sources)
            if watermark is not None:
                watermarks[partition] = watermark
        if time.monotonic() - self._last_sweep >= SWEEP_INTERVAL_S:
            self._last_sweep = time.monotonic()
            idle = self._idle_devices(touched)
        else:
            idle = {}
        try:
            await self._write(touched, idle, flags)
            await self._acknowledge(watermarks)
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
            if device_id not in busy and partition in self._last_event:
                self._device(device_id)
                idle[device_id] = partition
        return idle

    async def _write(self, touched: dict[str, int], idle: dict[str, int], flags: list[tuple[ViewRef, str]]) -> None:
        """Write each device seen in this batch, and each idle device whose memory expiry changed; send flags."""
        for device_id, partition in (touched | idle).items():
            state = self._devices[device_id]
            before = len(state)
            # Forget against the sources' watermark (module docstring); none yet: keep everything.
            watermark = self._clock(partition).watermark
            with writing_for(self._last_event[partition]):
                if watermark is not None and rules.expire_device(self.policy, state, watermark):
                    self._devices.pop(device_id, None)
                    if self.app.device_state.get(device_id.encode()) is not None:
                        del self.app.device_state[device_id.encode()]
                elif device_id in touched or len(state) != before:
                    self.app.device_state[device_id.encode()] = jsoncodec.dumps(state.to_dict())
        records = [{"video_id": ref.video_id, "event_id": ref.event_id, "detail": detail} for ref, detail in flags]
        await send_grouped(
            self.app.device_flags, records, "video_id", self.app.ingest.partition_count(self.app.device_flags_name)
        )

    async def _acknowledge(self, watermarks: dict[int, int]) -> None:
        """Tell every event partition how far each device partition has judged (after this batch's flags, on
        the same partitions, so an event partition has applied them when it reads the acknowledgement)."""
        acks = [
            {"ack": partition, "watermark": watermark}
            for partition, watermark in sorted(watermarks.items())
            if watermark > self._acked.get(partition, -1)
        ]
        if not acks:
            return
        value = jsoncodec.dumps(acks)
        for partition in range(self.app.ingest.partition_count(self.app.device_flags_name)):
            await self.app.device_flags.send(key=None, value=value, partition=partition, force=True)
        for ack in acks:
            self._acked[ack["ack"]] = ack["watermark"]
