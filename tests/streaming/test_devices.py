"""The device rules' wiring: device-views records in, the domain judge over the device-state table, and to each
event partition one device-flags record with its flags (reason included) then the acknowledgements."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest

from stream_app.domain import jsoncodec
from stream_app.domain.device_records import DeviceAck, DeviceFlag, DeviceFlags, DeviceView, DeviceViews
from stream_app.domain.partitioning import partition_for
from stream_app.domain.policy import Policy
from stream_app.streaming import devices
from stream_app.streaming.devices import VIEWS_PER_RECORD, DeviceJudge, TableDeviceStore, send_device_views
from stream_app.streaming.emitter import Outbox

PARTITIONS = 4
# each device-views partition's next offset: records of a test's batches follow one another as on the broker
OFFSETS = {p: itertools.count() for p in range(PARTITIONS)}
T = 1_000_000


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
    sent: list[tuple[int, bytes]] = field(default_factory=list)

    async def send(self, *, key: bytes | None, value: bytes, partition: int, force: bool) -> None:
        assert key is None and force
        self.sent.append((partition, value))


class FakeProducer:
    """The app's producer as the device judge's Outbox uses it: each send lands in the named FakeTopic."""

    def __init__(self, app: FakeApp) -> None:
        self.app = app

    async def send(self, topic: str, key: bytes | None, value: bytes, partition: int, *_: Any) -> asyncio.Future[None]:
        target = {self.app.device_flags_name: self.app.device_flags, self.app.device_views_name: self.app.device_views}
        await target[topic].send(key=key, value=value, partition=partition, force=True)
        acknowledged: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        acknowledged.set_result(None)
        return acknowledged


class FakeCounts:
    """PartitionCounts of a cluster where every topic has PARTITIONS."""

    async def load(self) -> None:
        return None

    def __call__(self, topic: str) -> int:
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
        self.device_views = FakeTopic()
        self.device_flags_name = "flags"
        self.device_views_name = "device-views"
        self.names = SimpleNamespace(views="video-views", device_views="device-views", device_flags="flags")
        self.counts = FakeCounts()

    def outbox(self) -> Outbox:
        return Outbox(FakeProducer(self), self.counts)

    def records(self) -> list[tuple[int, DeviceFlags]]:
        return [(p, DeviceFlags.from_bytes(value)) for p, value in self.device_flags.sent]

    def flags(self) -> list[tuple[int, DeviceFlag]]:
        return [(p, f) for p, record in self.records() for f in record.flags]

    def acks(self) -> list[tuple[int, DeviceAck]]:
        return [(p, a) for p, record in self.records() for a in record.acks]


def batch_of(
    views: list[DeviceView], source: int = 0, through_ts: int | None = None, drained: bool = False
) -> list[FakeEvent]:
    """What event partition `source` sends after a batch (send_device_views): one record to each device partition."""
    through = max((v.ts for v in views), default=-1) if through_ts is None else through_ts
    by_partition: dict[int, list[DeviceView]] = {p: [] for p in range(PARTITIONS)}
    for view in views:
        by_partition[partition_for(view.device_id.encode(), PARTITIONS)].append(view)
    return [
        FakeEvent(
            FakeMessage("device-views", p, next(OFFSETS[p]), DeviceViews.of(source, through, drained, vs).to_bytes())
        )
        for p, vs in by_partition.items()
    ]


def from_every_source(views: list[DeviceView], drained: bool = False) -> list[FakeEvent]:
    return [event for source in range(PARTITIONS) for event in batch_of(views, source, drained=drained)]


@pytest.fixture(autouse=True)
def save_every_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table is inspected after each batch here: states saved at every batch (the worker saves every
    SAVE_INTERVAL_S; test_states_are_saved_when_due_and_commits_never_pass_the_save covers that)."""
    monkeypatch.setattr(devices, "SAVE_INTERVAL_S", 0.0)


def view(n: int, device: str, ts: int, watch_ms: int = 0, viewer: str = "u") -> DeviceView:
    return DeviceView(device, f"vid{n % 5}", f"e{device}{n}", viewer, ts, watch_ms)


async def test_a_burst_flags_every_view_of_the_span_back_to_the_videos_partitions() -> None:
    app = FakeApp()
    judge = judge_for(app)
    await judge.process_batch(batch_of([view(n, "farm", T + n * 100) for n in range(61)]))
    flags = app.flags()
    assert sorted(f.event_id for _, f in flags) == sorted(f"efarm{n}" for n in range(61))
    assert {f.reason for _, f in flags} == {"device_burst"}
    # each flag went to the partition of its video (co-partitioned with the event topics)
    assert all(partition_for(f.video_id.encode(), PARTITIONS) == p for p, f in flags)


async def test_overlap_and_account_flags_carry_their_reason() -> None:
    app = FakeApp()
    judge = judge_for(app)
    # one screen, two videos at once; then ten accounts in turn
    overlapping = [view(0, "tv", T, 10_000), view(1, "tv", T + 5_000, 10_000)]
    accounts = [view(10 + n, "tablet", T + n * 10_000, 9_000, viewer=f"acct{n}") for n in range(10)]
    others = [e for source in range(1, PARTITIONS) for e in batch_of([], source, through_ts=T)]
    await judge.process_batch(batch_of(overlapping + accounts, 0) + others)
    assert app.flags() == []  # nothing final yet: the sources are not drained and the watermark is too close
    await judge.process_batch(from_every_source([], drained=True))
    assert sorted((f.event_id, f.reason) for _, f in app.flags()) == [
        ("etablet18", "account_farm"),
        ("etablet19", "account_farm"),
        ("etv1", "device_overlap"),
    ]


async def test_the_watermark_is_acknowledged_to_every_event_partition_after_the_flags() -> None:
    app = FakeApp()
    judge = judge_for(app)
    views = [view(n, "farm", T + n * 100) for n in range(61)]
    await judge.process_batch(from_every_source(views))
    # every device partition heard from every source (through T + 6_000): each acknowledges that once, to each
    # event partition, in the same record as that partition's flags and after them
    acks = app.acks()
    assert sorted((p, a.device_partition, a.watermark) for p, a in acks) == [
        (p, q, T + 6_000) for p in range(PARTITIONS) for q in range(PARTITIONS)
    ]
    assert sorted(p for p, _ in app.records()) == list(range(PARTITIONS))  # one record per event partition
    # nothing new: no second acknowledgement
    sent = len(app.device_flags.sent)
    await judge.process_batch(batch_of([view(99, "other", T)], source=0, through_ts=T + 6_000))
    assert len(app.acks()) == len(acks) and len(app.device_flags.sent) == sent


def stored_devices(app: FakeApp) -> set[str]:
    """The devices with a state in the table, as a worker restoring every partition finds them."""
    return {d for p in range(PARTITIONS) for d in TableDeviceStore(app.device_state, p, PARTITIONS).device_ids()}


async def test_a_device_that_stops_viewing_leaves_the_table_once_the_watermark_is_past() -> None:
    app = FakeApp()
    judge = judge_for(app)
    await judge.process_batch(from_every_source([view(0, "quiet", T)]))
    assert stored_devices(app) == {"quiet"}
    # every event partition moves on; without views of "quiet", its state stays until the watermark passes its
    # view (360 s) and its account (DEDUPE_S later): no sweep of the table needed
    later = T + 360_000 + 86_400_000
    await judge.process_batch([e for source in range(PARTITIONS) for e in batch_of([], source, through_ts=later - 1)])
    assert stored_devices(app) == {"quiet"}
    await judge.process_batch([e for source in range(PARTITIONS) for e in batch_of([], source, through_ts=later)])
    assert stored_devices(app) == set()


async def test_a_device_is_kept_while_a_source_lags() -> None:
    # three event partitions are two hours ahead, one is still at the device's view: nothing is forgotten
    app = FakeApp()
    judge = judge_for(app)
    await judge.process_batch(batch_of([view(0, "dev", T)], source=0))
    for source in range(1, PARTITIONS):
        await judge.process_batch(batch_of([view(source, "busy", T + 1_800_000)], source=source))
    assert "dev" in stored_devices(app)


async def test_a_burst_behind_the_partitions_newest_view_is_still_caught() -> None:
    # event partitions feed the device partition at different event times: another device's view 10 minutes
    # ahead arrives first; the farm's 61 views (all earlier) must still add up to a burst
    app = FakeApp()
    judge = judge_for(app)
    await judge.process_batch(batch_of([view(0, "ahead", T + 600_000)], source=1))
    for start in range(0, 61, 20):  # the farm's views come in several batches
        await judge.process_batch(batch_of([view(k, "farm", T + k * 100) for k in range(start, min(start + 20, 61))]))
    assert {f.event_id for _, f in app.flags()} == {f"efarm{k}" for k in range(61)}


async def test_records_of_the_previous_format_are_still_judged() -> None:
    app = FakeApp()
    judge = judge_for(app)
    views = [
        {"video_id": "v", "event_id": f"e{n}", "viewer_id": "u", "device_id": "farm", "ts": T + n} for n in range(61)
    ]
    partition = partition_for(b"farm", PARTITIONS)
    await judge.process_batch([FakeEvent(FakeMessage("device-views", partition, 0, jsoncodec.dumps(views)))])
    assert len(app.flags()) == 61
    assert app.acks() == []  # no source reported its progress: no watermark to acknowledge


async def test_a_bad_record_is_skipped_and_the_batch_judged() -> None:
    app = FakeApp()
    judge = judge_for(app)
    bad = FakeEvent(FakeMessage("device-views", 0, 7, b"[1, 2"))
    await judge.process_batch([bad, *batch_of([view(n, "farm", T + n) for n in range(61)])])
    assert len(app.flags()) == 61


async def test_device_state_in_an_unknown_format_stops_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    app = FakeApp()
    app.device_state[b"farm"] = jsoncodec.dumps({"format": 9})
    stops: list[int] = []

    def stop(what: str, code: int = 70) -> None:
        stops.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(devices, "fail_stop", stop)
    judge = judge_for(app)
    with pytest.raises(SystemExit):
        await judge.process_batch(batch_of([view(0, "farm", T)]))
    assert stops == [3] and app.device_flags.sent == []


def test_the_table_store_round_trips_in_one_record_per_batch_and_lists_only_its_partition() -> None:
    from stream_app.domain.rules_state import DeviceState

    table: dict[bytes, bytes] = {}
    stores = [TableDeviceStore(table, p, PARTITIONS) for p in range(PARTITIONS)]
    for n in range(20):
        device = f"d{n}"
        state = DeviceState()
        state.insert(T + n, 5_000, "v", f"e{n}", "u")
        stores[partition_for(device.encode(), PARTITIONS)].save(device, state)
    assert table == {}  # held until the flags they produced are acknowledged
    for store in stores:
        store.write_pending()
    assert len(table) == PARTITIONS  # one record per partition, however many devices it changed
    assert sorted(d for s in stores for d in s.device_ids()) == sorted(f"d{n}" for n in range(20))
    home_partition = partition_for(b"d3", PARTITIONS)
    home = stores[home_partition]
    loaded = home.load("d3")
    assert loaded is not None and loaded.ts == [T + 3] and loaded.watch_ms == [5_000]
    home.delete("d3")
    home.delete("d3")  # deleting twice is harmless
    assert home.load("d3") is None
    home.write_pending()
    # a worker taking the partition over finds every state but the deleted one
    restored = TableDeviceStore(table, home_partition, PARTITIONS)
    assert set(restored.device_ids()) == set(home.device_ids()) and "d3" not in set(restored.device_ids())
    for device in home.device_ids():
        again = restored.load(device)
        assert again is not None and again.event_ids == [f"e{device[1:]}"]


def test_states_stored_one_key_per_device_are_migrated_into_the_log() -> None:
    """The previous layout kept each device under its bare device id: read at restore, written into the first
    segment, and the bare keys deleted after it."""
    from stream_app.domain.rules_state import DeviceState

    table: dict[bytes, bytes] = {}
    devices_here = [f"m{n}" for n in range(40) if partition_for(f"m{n}".encode(), PARTITIONS) == 1]
    for n, device in enumerate(devices_here):
        state = DeviceState()
        state.insert(T + n, 1_000, "v", f"e{n}", f"u{n}")
        table[device.encode()] = jsoncodec.dumps(state.to_stored())
    store = TableDeviceStore(table, 1, PARTITIONS)
    assert sorted(store.device_ids()) == sorted(devices_here)
    loaded = store.load(devices_here[0])
    assert loaded is not None and loaded.viewer_ids == ["u0"]
    store.write_pending()
    assert all(not key.startswith(b"m") for key in table)  # the bare keys are gone, the log holds them
    restored = TableDeviceStore(table, 1, PARTITIONS)
    assert sorted(restored.device_ids()) == sorted(devices_here)


def judge_for(app: FakeApp) -> DeviceJudge:
    return DeviceJudge(
        policy=app.settings.policy,
        names=app.names,  # type: ignore[arg-type]
        device_state=app.device_state,
        counts=app.counts,  # type: ignore[arg-type]
        outbox=app.outbox,
    )


async def test_send_device_views_reaches_every_device_partition_in_records_of_bounded_size() -> None:
    scorer = FakeApp()
    many = [
        DeviceView("d" * 128, "v" * 128, f"{n:0128d}", "u" * 128, T + n, 9_000) for n in range(VIEWS_PER_RECORD + 3)
    ]
    await send_device_views(scorer.outbox(), "device-views", PARTITIONS, many, 2, T + 10_000, False)
    records = [(p, DeviceViews.from_bytes(v)) for p, v in scorer.device_views.sent]
    home = partition_for(b"d" * 128, PARTITIONS)
    assert sorted((p, len(r)) for p, r in records) == sorted(
        [(home, VIEWS_PER_RECORD), (home, 3)] + [(p, 0) for p in range(PARTITIONS) if p != home]
    )
    assert all((r.source, r.through_ts, r.drained) == (2, T + 10_000, False) for _, r in records)
    assert all(len(v) < 512 * 1024 for _, v in scorer.device_views.sent)


async def test_each_batch_writes_the_states_it_changed_and_moves_the_commit_limit() -> None:
    """With saves due at every batch (SAVE_INTERVAL_S 0), device states are written after every batch, once its
    flags are acknowledged; a partition's commits may reach only the offset after the last record whose effects
    were written."""
    app = FakeApp()
    judge = judge_for(app)
    home = partition_for(b"farm", PARTITIONS)
    first = batch_of([view(n, "farm", T + n * 100) for n in range(30)])
    await judge.process_batch(first)
    assert judge.saved[("device-views", home)] == first[home].message.offset + 1
    assert stored_devices(app) == {"farm"}
    second = batch_of([view(n, "farm", T + n * 100) for n in range(30, 61)])
    await judge.process_batch(second)  # 61 views within 6 s: a burst, flagged at once
    assert len(app.flags()) == 61
    assert judge.saved[("device-views", home)] == second[home].message.offset + 1
    # a worker taking the partition over from the table holds both records: read again, nothing counts twice
    restarted = FakeApp()
    restarted.device_state = dict(app.device_state)
    again = judge_for(restarted)
    await again.process_batch(second)
    assert restarted.flags() == []


async def test_states_are_saved_when_due_and_commits_never_pass_the_save(monkeypatch: pytest.MonkeyPatch) -> None:
    """Device states are saved at most every SAVE_INTERVAL_S (each save serializes every device changed since the
    last); a partition's commit may reach only the offset after the last record whose effects were saved, so a
    crash reads the unsaved records again, and a worker restarted from the table judges them as the first did."""
    monkeypatch.setattr(devices, "SAVE_INTERVAL_S", 3600.0)
    app = FakeApp()
    judge = judge_for(app)
    home = partition_for(b"farm", PARTITIONS)
    first = batch_of([view(n, "farm", T + n * 100) for n in range(30)])
    await judge.process_batch(first)  # the first batch of a partition is saved at once
    saved = judge.saved[("device-views", home)]
    assert saved == first[home].message.offset + 1 and stored_devices(app) == {"farm"}
    table_after_first = dict(app.device_state)
    second = batch_of([view(n, "farm", T + n * 100) for n in range(30, 61)])
    await judge.process_batch(second)  # 61 views within 6 s: a burst, flagged at once
    assert len(app.flags()) == 61
    assert judge.saved[("device-views", home)] == saved and app.device_state == table_after_first  # not due yet
    # a crash now: the table holds the first batch's states, the commit stops at `saved`; a new worker reads
    # the second batch again and flags the same burst
    restarted = FakeApp()
    restarted.device_state = dict(app.device_state)
    again = judge_for(restarted)
    await again.process_batch(second)
    assert sorted(f.event_id for _, f in restarted.flags()) == sorted(f.event_id for _, f in app.flags())
    monkeypatch.setattr(devices, "SAVE_INTERVAL_S", 0.0)
    await judge.process_batch(batch_of([], through_ts=T + 7_000))  # due: everything judged so far is saved
    assert judge.saved[("device-views", home)] > saved and app.device_state != table_after_first
    # and a worker restoring from it now holds the burst: the second batch read again flags nothing
    later = FakeApp()
    later.device_state = dict(app.device_state)
    await judge_for(later).process_batch(second)
    assert later.flags() == []


def test_commits_of_device_views_are_clamped_to_the_save() -> None:
    from aiokafka import TopicPartition

    from stream_app.streaming.delivery_guard import clamp_commits

    offsets = {TopicPartition("device-views", 0): 90, TopicPartition("device-views", 1): 50}
    clamp_commits(offsets, frozenset({"device-views"}), {("device-views", 0): 40})  # type: ignore[arg-type]
    assert offsets == {TopicPartition("device-views", 0): 40}  # partition 1 saved nothing yet: not committed
