"""DeviceJudge: device_burst on the device repartition sends flags back, and a device that stops viewing is
expired from the device table by the periodic sweep (not kept forever)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.domain.policy import Policy
from stream_app.edges.partitioner import partition_for
from stream_app.streaming import devices
from stream_app.streaming.devices import DeviceJudge

PARTITIONS = 4


@dataclass
class FakeMessage:
    topic: str
    partition: int
    offset: int
    value: bytes


@dataclass
class FakeEvent:
    message: FakeMessage


@dataclass
class FakeTopic:
    sent: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)

    async def send(self, *, key: bytes | None, value: bytes, partition: int, force: bool) -> None:
        self.sent.append((partition, jsoncodec.loads(value)))


class FakeIngest:
    async def load_partition_counts(self) -> None:
        return None

    def partition_count(self, topic: str) -> int:
        return PARTITIONS


class FakeApp:
    def __init__(self) -> None:
        self.settings = type("S", (), {"policy": Policy()})()
        self.device_state: dict[bytes, bytes] = {}
        self.device_flags = FakeTopic()
        self.device_flags_name = "flags"
        self.device_views_name = "device-views"
        self.ingest = FakeIngest()


def batch_of(views: list[dict[str, Any]]) -> list[FakeEvent]:
    by_partition: dict[int, list[dict[str, Any]]] = {}
    for view in views:
        by_partition.setdefault(partition_for(view["device_id"].encode(), PARTITIONS), []).append(view)
    return [FakeEvent(FakeMessage("device-views", p, 0, jsoncodec.dumps(vs))) for p, vs in by_partition.items()]


def view(n: int, device: str, ts: int) -> dict[str, Any]:
    return {"video_id": f"vid{n % 5}", "event_id": f"e{device}{n}", "viewer_id": "u", "device_id": device, "ts": ts}


async def test_a_burst_flags_every_view_of_the_span_back_to_the_videos() -> None:
    app = FakeApp()
    judge = DeviceJudge(app)  # type: ignore[arg-type]
    await judge.process_batch(batch_of([view(n, "farm", 1_000_000 + n * 100) for n in range(61)]))
    flagged = [flag for _, group in app.device_flags.sent for flag in group]
    assert sorted(f["event_id"] for f in flagged) == sorted(f"efarm{n}" for n in range(61))
    # each flag went to the partition of its video (co-partitioned with the event topics)
    assert all(partition_for(f["video_id"].encode(), PARTITIONS) == p for p, g in app.device_flags.sent for f in g)


async def test_a_device_that_stops_viewing_is_swept_from_the_table(monkeypatch: Any) -> None:
    app = FakeApp()
    judge = DeviceJudge(app)  # type: ignore[arg-type]
    await judge.process_batch(batch_of([view(0, "quiet", 1_000_000)]))
    assert list(app.device_state) == [b"quiet"]
    # two hours of event time later another device on the same partition views: the sweep expires "quiet"
    # (quiet devices are swept an hour behind the partition's newest view, for skew between video partitions)
    other = "busy"
    n = 0
    while partition_for(other.encode(), PARTITIONS) != partition_for(b"quiet", PARTITIONS):
        n += 1
        other = f"busy{n}"
    later = [view(1, other, 1_000_000 + 7_200_000)]
    monkeypatch.setattr(devices, "SWEEP_INTERVAL_S", 0.0)
    await judge.process_batch(batch_of(later))
    assert list(app.device_state) == [other.encode()]


async def test_grouped_sends_stay_under_the_record_size() -> None:
    from stream_app.streaming.sending import RECORDS_PER_SEND, send_grouped

    topic = FakeTopic()
    records = [{"device_id": "d" * 128, "video_id": "v" * 128, "event_id": f"{n:0128d}"} for n in range(450)]
    await send_grouped(topic, records, "device_id", PARTITIONS)
    assert [len(group) for _, group in topic.sent] == [RECORDS_PER_SEND, RECORDS_PER_SEND, 50]
    assert all(len(jsoncodec.dumps(group)) < 512 * 1024 for _, group in topic.sent)


async def test_a_burst_behind_the_partitions_newest_view_is_still_caught() -> None:
    # video partitions feed the device partition at different event times: another device's view 10 minutes
    # ahead arrives first; the farm's 61 views (all earlier) must still add up to a burst
    app = FakeApp()
    judge = DeviceJudge(app)  # type: ignore[arg-type]
    ahead = "ahead"
    n = 0
    while partition_for(ahead.encode(), PARTITIONS) != partition_for(b"farm", PARTITIONS):
        n += 1
        ahead = f"ahead{n}"
    await judge.process_batch(batch_of([view(0, ahead, 1_000_000 + 600_000)]))
    for start in range(0, 61, 20):  # the farm's views come in several batches
        await judge.process_batch(
            batch_of([view(k, "farm", 1_000_000 + k * 100) for k in range(start, min(start + 20, 61))])
        )
    flagged = {f["event_id"] for _, group in app.device_flags.sent for f in group}
    assert flagged == {f"efarm{k}" for k in range(61)}
