"""device_burst across all videos: accepted views repartitioned by device_id, judged against per-device state.

A device's views spread over every partition, so the events agent forwards each accepted view to the
device-views topic keyed by device_id; this agent keeps a DeviceState per device (table keyed by device_id) and
sends a flag, keyed by video_id, to the device-flags topic for each view the rule rejects. Flags are
co-partitioned with the event topics, so the video's own partition claws the view back (SPEC §5, §6).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from stream_app.domain import jsoncodec, rules
from stream_app.domain.events import ViewEvent
from stream_app.domain.rules_state import DeviceState, ViewRef
from stream_app.streaming.ingest import fail_stop
from stream_app.streaming.tables import writing_for

if TYPE_CHECKING:
    from stream_app.streaming.app import ScorerApp

log = logging.getLogger(__name__)


class DeviceJudge:
    def __init__(self, scorer: ScorerApp) -> None:
        self.app = scorer
        self.policy = scorer.settings.policy
        self._devices: dict[str, DeviceState] = {}
        self._newest_ts: dict[int, int] = {}  # per device-views partition: the newest view ts seen

    def forget(self) -> None:
        """After a rebalance the table is the truth: drop the cache."""
        self._devices.clear()

    def _device(self, device_id: str) -> DeviceState:
        state = self._devices.get(device_id)
        if state is None:
            raw = self.app.device_state.get(device_id.encode())
            state = DeviceState() if raw is None else DeviceState.from_dict(jsoncodec.loads(raw))
            self._devices[device_id] = state
        return state

    async def process_batch(self, batch: Sequence[Any]) -> None:
        flags: list[tuple[ViewRef, str]] = []
        touched: dict[str, int] = {}
        last_event: dict[int, Any] = {}  # per device-views partition: an event of it, for table writes
        for event in batch:
            message = event.message
            try:
                view = jsoncodec.loads(message.value)
                state = self._device(view["device_id"])
                judgement = rules.check_device_burst(
                    self.policy,
                    state,
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
            except Exception:  # internal records: a bad one is logged, never allowed to stop the agent
                log.exception("bad device-views record at %s[%s]@%s", message.topic, message.partition, message.offset)
                continue
            last_event[message.partition] = event
            newest = max(self._newest_ts.get(message.partition, 0), view["ts"])
            self._newest_ts[message.partition] = newest
            touched[view["device_id"]] = message.partition
            detail = judgement.verdict.detail
            if not judgement.verdict.passed:
                flags.append((ViewRef(view["video_id"], view["event_id"], view["viewer_id"], view["ts"]), detail))
            flags.extend((ref, detail) for ref in judgement.clawbacks)
        try:
            await self._write(touched, last_event, flags)
        except Exception:
            fail_stop("could not write device state or flags")

    async def _write(
        self, touched: dict[str, int], last_event: dict[int, Any], flags: list[tuple[ViewRef, str]]
    ) -> None:
        for device_id, partition in touched.items():
            state = self._devices[device_id]
            with writing_for(last_event[partition]):
                if rules.expire_device(self.policy, state, self._newest_ts[partition]):
                    self._devices.pop(device_id, None)
                    if self.app.device_state.get(device_id.encode()) is not None:
                        del self.app.device_state[device_id.encode()]
                else:
                    self.app.device_state[device_id.encode()] = jsoncodec.dumps(state.to_dict())
        for ref, detail in flags:
            record = {"video_id": ref.video_id, "event_id": ref.event_id, "detail": detail}
            await self.app.device_flags.send(key=ref.video_id.encode(), value=jsoncodec.dumps(record), force=True)
