"""DeviceJudge: device_burst on the device repartition sends flags back, judges a device's views from event
partitions running at different event times together, acknowledges its watermark after the flags, and expires a
device that stops viewing from the device table (not kept forever)."""

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


class FakeSettings:
    policy = Policy()

    def topic(self, topic: Any) -> str:
        return str(topic.value)


class FakeApp:
    def __init__(self) -> None:
        self.settings = FakeSettings()
        self.device_state: dict[bytes, bytes] = {}
        self.device_flags = FakeTopic()
        self.device_flags_name = "flags"
        self.device_views_name = "device-views"
        self.ingest = FakeIngest()

    def flags(self) -> list[dict[str, Any]]:
        return [f for _, group in self.device_flags.sent for f in group if "ack" not in f]

    def acks(self) -> list[tuple[int, dict[str, Any]]]:
        return [(p, f) for p, group in self.device_flags.sent for f in group if "ack" in f]


def batch_of(views: list[dict[str, Any]], source: int = 0, through_ts: int | None = None) -> list[FakeEvent]:
    """What event partition `source` sends after a batch (stream_app.streaming.devices.send_device_views): one
    record to each device partition, with the largest view ts it has accepted."""
    through = max(v["ts"] for v in views) if through_ts is None else through_ts
    by_partition: dict[int, list[dict[str, Any]]] = {p: [] for p in range(PARTITIONS)}
    for view in views:
        by_partition[partition_for(view["device_id"].encode(), PARTITIONS)].append(view)
    return [
        FakeEvent(
            FakeMessage("device-views", p, 0, jsoncodec.dumps({"source": source, "through_ts": through, "records": vs}))
        )
        for p, vs in by_partition.items()
    ]


def from_every_source(views: list[dict[str, Any]]) -> list[FakeEvent]:
    """Views spread over every event partition, each reporting its own largest ts."""
    by_source: dict[int, list[dict[str, Any]]] = {}
    for n, view in enumerate(views):
        by_source.setdefault(n % PARTITIONS, []).append(view)
    return [event for source, vs in by_source.items() for event in batch_of(vs, source)]


def view(n: int, device: str, ts: int) -> dict[str, Any]:
    return {"video_id": f"vid{n % 5}", "event_id": f"e{device}{n}", "viewer_id": "u", "device_id": device, "ts": ts}


def same_partition_as(device: str, stem: str) -> str:
    other, n = stem, 0
    while partition_for(other.encode(), PARTITIONS) != partition_for(device.encode(), PARTITIONS):
        n += 1
        other = f"{stem}{n}"
    return other


async def test_a_burst_flags_every_view_of_the_span_back_to_the_videos() -> None:
    app = FakeApp()
    judge = DeviceJudge(app)  # type: ignore[arg-type]
    await judge.process_batch(batch_of([view(n, "farm", 1_000_000 + n * 100) for n in range(61)]))
    assert sorted(f["event_id"] for f in app.flags()) == sorted(f"efarm{n}" for n in range(61))
    # each flag went to the partition of its video (co-partitioned with the event topics)
    assert all(
        partition_for(f["video_id"].encode(), PARTITIONS) == p
        for p, g in app.device_flags.sent
        for f in g
        if "ack" not in f
    )


async def test_the_watermark_is_acknowledged_to_every_event_partition_after_the_flags() -> None:
    app = FakeApp()
    judge = DeviceJudge(app)  # type: ignore[arg-type]
    views = [view(n, "farm", 1_000_000 + n * 100) for n in range(61)]
    await judge.process_batch([event for source in range(PARTITIONS) for event in batch_of(views, source)])
    acks = app.acks()
    # every device partition heard from every source (through ts 1_006_000): each acknowledges that, once, to
    # each event partition
    assert sorted((p, a["ack"], a["watermark"]) for p, a in acks) == [
        (p, q, 1_006_000) for p in range(PARTITIONS) for q in range(PARTITIONS)
    ]
    # on each event partition, after every flag for it
    for partition in range(PARTITIONS):
        kinds = ["ack" in f for p, g in app.device_flags.sent if p == partition for f in g]
        assert kinds == sorted(kinds)
    # nothing new: no second acknowledgement
    sent = len(app.device_flags.sent)
    await judge.process_batch(batch_of([view(99, "farm", 1_000_000)], source=0, through_ts=1_006_000))
    assert len(app.acks()) == len(acks) and len(app.device_flags.sent) >= sent


async def test_a_device_that_stops_viewing_is_swept_from_the_table(monkeypatch: Any) -> None:
    app = FakeApp()
    judge = DeviceJudge(app)  # type: ignore[arg-type]
    quiet = [view(0, "quiet", 1_000_000)]
    await judge.process_batch([e for source in range(PARTITIONS) for e in batch_of(quiet, source)])
    assert list(app.device_state) == [b"quiet"]
    # later every event partition has moved on, and another device on the same partition views: the sweep
    # expires "quiet" once the sources' watermark is past its view by the span + GRACE_S
    other = same_partition_as("quiet", "busy")
    monkeypatch.setattr(devices, "SWEEP_INTERVAL_S", 0.0)
    later = [view(1, other, 1_000_000 + 300_000)]
    await judge.process_batch([e for source in range(PARTITIONS) for e in batch_of(later, source)])
    assert sorted(app.device_state) == sorted([b"quiet", other.encode()])  # 300 s: still within 60 s + 300 s
    later = [view(2, other, 1_000_000 + 361_000)]
    await judge.process_batch([e for source in range(PARTITIONS) for e in batch_of(later, source)])
    assert list(app.device_state) == [other.encode()]


async def test_a_device_is_kept_while_a_source_lags() -> None:
    # three event partitions are two hours ahead, one is still at the device's view: nothing is forgotten
    app = FakeApp()
    judge = DeviceJudge(app)  # type: ignore[arg-type]
    await judge.process_batch(batch_of([view(0, "dev", 1_000_000)], source=0))
    other = same_partition_as("dev", "busy")
    for source in range(1, PARTITIONS):
        await judge.process_batch(batch_of([view(source, other, 1_000_000 + 1_800_000)], source=source))
    assert sorted(app.device_state) == sorted([b"dev", other.encode()])


async def test_grouped_sends_stay_under_the_record_size() -> None:
    from stream_app.streaming.sending import RECORDS_PER_SEND, send_grouped

    topic = FakeTopic()
    records = [{"device_id": "d" * 128, "video_id": "v" * 128, "event_id": f"{n:0128d}"} for n in range(450)]
    await send_grouped(topic, records, "device_id", PARTITIONS)
    assert [len(group) for _, group in topic.sent] == [RECORDS_PER_SEND, RECORDS_PER_SEND, 50]
    assert all(len(jsoncodec.dumps(group)) < 512 * 1024 for _, group in topic.sent)


async def test_a_header_reaches_every_partition() -> None:
    from stream_app.streaming.sending import send_grouped

    topic = FakeTopic()
    device = "d1"
    await send_grouped(topic, [{"device_id": device}], "device_id", PARTITIONS, header={"source": 3, "through_ts": 7})
    assert sorted(p for p, _ in topic.sent) == list(range(PARTITIONS))
    for partition, value in topic.sent:
        expected = [{"device_id": device}] if partition == partition_for(device.encode(), PARTITIONS) else []
        assert value == {"source": 3, "through_ts": 7, "records": expected}


async def test_a_burst_behind_the_partitions_newest_view_is_still_caught() -> None:
    # video partitions feed the device partition at different event times: another device's view 10 minutes
    # ahead arrives first; the farm's 61 views (all earlier) must still add up to a burst
    app = FakeApp()
    judge = DeviceJudge(app)  # type: ignore[arg-type]
    ahead = same_partition_as("farm", "ahead")
    await judge.process_batch(batch_of([view(0, ahead, 1_000_000 + 600_000)], source=1))
    for start in range(0, 61, 20):  # the farm's views come in several batches
        await judge.process_batch(
            batch_of([view(k, "farm", 1_000_000 + k * 100) for k in range(start, min(start + 20, 61))])
        )
    assert {f["event_id"] for f in app.flags()} == {f"efarm{k}" for k in range(61)}


async def test_a_farm_seen_first_from_a_source_far_ahead_is_still_caught() -> None:
    # one farm viewing for 20 minutes: partition 1 is read through its whole run first (a catch-up), then
    # partition 0 catches up with the same device's views from the beginning; the first minute holds 61 views,
    # 40 from partition 0 and 21 from partition 1
    app = FakeApp()
    judge = DeviceJudge(app)  # type: ignore[arg-type]
    first_minute = [view(k, "farm", 1_000_000 + k * 900) for k in range(61)]
    later = [view(100 + k, "farm", 1_000_000 + 120_000 + k * 60_000) for k in range(20)]  # one a minute
    from_1 = first_minute[40:] + later
    await judge.process_batch(batch_of(from_1, source=1))
    await judge.process_batch(batch_of(first_minute[:40], source=0))
    assert {f["event_id"] for f in app.flags()} == {v["event_id"] for v in first_minute}


async def test_an_old_format_record_is_still_judged() -> None:
    app = FakeApp()
    judge = DeviceJudge(app)  # type: ignore[arg-type]
    views = [view(n, "farm", 1_000_000 + n * 100) for n in range(61)]
    partition = partition_for(b"farm", PARTITIONS)
    await judge.process_batch([FakeEvent(FakeMessage("device-views", partition, 0, jsoncodec.dumps(views)))])
    assert len(app.flags()) == 61
    assert app.acks() == []  # no source reported its progress: no watermark to acknowledge
