"""Traffic simulator: determinism, organic traffic clean of SPEC §6, fraud labelled as the rules judge it."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from stream_app.domain import jsoncodec
from stream_app.domain.errors import ConfigError
from stream_app.domain.events import InputTopic
from stream_app.domain.partitioning import KEY_FIELD, partition_for
from stream_app.domain.validation import InvalidEvent, ValidEvent, decode_record
from stream_app.edges.producer import SendReport
from stream_app.tools.simulator import (
    EXPECTED_REASONS,
    FRAUD_SCENARIOS,
    SimEvent,
    SimulationConfig,
    generate,
    instance_counts,
    label_record,
    publish,
    write_labels,
)
from stream_app.tools.simulator.publish import SimulationReport, fast_start_ms, run_simulation

START = 1_700_000_000_000
SCHEMA_FIELDS = {
    InputTopic.VIEWS: {
        "event_id",
        "video_id",
        "creator_id",
        "viewer_id",
        "device_id",
        "ts",
        "watch_ms",
        "video_ms",
        "source",
        "region",
    },
    InputTopic.INTERACTIONS: {"event_id", "video_id", "creator_id", "viewer_id", "device_id", "ts", "kind"},
    InputTopic.PROFILES: {"creator_id", "followers", "views_30d", "adult", "standing", "ts"},
}
PARTITIONS = 6


def config(**overrides: Any) -> SimulationConfig:
    values: dict[str, Any] = {"seed": 42, "start_ms": START, "duration_s": 120, "rate_per_s": 150}
    values.update(overrides)
    return SimulationConfig(**values)


def objects(events: Iterable[SimEvent], topic: InputTopic) -> list[dict[str, Any]]:
    """The JSON-object payloads of `topic`."""
    return [e.payload for e in events if e.topic is topic and isinstance(e.payload, dict)]


def decode(event: SimEvent) -> list[ValidEvent | InvalidEvent]:
    """What the worker's validation makes of the record the producer would send for `event`."""
    if isinstance(event.payload, bytes):
        key, value = event.raw_key, event.payload
    else:
        key, value = event.payload[KEY_FIELD[event.topic]].encode(), jsoncodec.dumps(event.payload)
    partition = 0 if key is None else partition_for(key, PARTITIONS)
    return decode_record(
        event.topic, key, value, partition=partition, partition_count=PARTITIONS, partition_for=partition_for
    )


class ReferenceRules:
    """SPEC §6 with default thresholds, written the obvious way, run over a whole stream in delivery order.

    Simplifications: velocity uses its floor of 200 views (the baseline term can only raise the threshold, so
    this is stricter than the worker on organic traffic and equal on a burst against a tail video); device_overlap
    and account_farm are judged after the whole stream, per device in order of the views' ends (the worker's
    canonical order), over the views that reached the device rules.
    """

    def __init__(self) -> None:
        self.seen: set[tuple[InputTopic, str]] = set()
        self.repeat: defaultdict[tuple[str, str], deque[int]] = defaultdict(deque)
        self.device: defaultdict[str, deque[tuple[int, int]]] = defaultdict(deque)
        self.device_views: defaultdict[str, list[int]] = defaultdict(list)  # views that reached the device rules
        self.velocity: defaultdict[str, deque[tuple[int, str, int]]] = defaultdict(deque)
        self.velocity_viewers: defaultdict[str, Counter[str]] = defaultdict(Counter)

    def judge(self, events: list[SimEvent]) -> list[str | None]:
        reasons: list[str | None] = [None] * len(events)
        interactions: list[int] = []
        for i, event in enumerate(events):
            if isinstance(event.payload, bytes):
                reasons[i] = "invalid" if all(isinstance(d, InvalidEvent) for d in decode(event)) else "valid?"
                continue
            if event.topic is InputTopic.PROFILES:
                continue
            key = (event.topic, event.payload["event_id"])
            if key in self.seen:
                reasons[i] = "duplicate_event"
                continue
            self.seen.add(key)
            if event.topic is InputTopic.INTERACTIONS:
                interactions.append(i)
            else:
                self._view(i, event.payload, reasons)
        for views in self.device_views.values():
            self._overlap_and_accounts(events, views, reasons)
        self._interactions(events, interactions, reasons)
        return reasons

    def _view(self, i: int, view: dict[str, Any], reasons: list[str | None]) -> None:
        ts = view["ts"]
        if view["watch_ms"] > 20 * view["video_ms"]:
            reasons[i] = "impossible_watch"
            return
        repeat = self.repeat[(view["viewer_id"], view["video_id"])]
        while repeat and repeat[0] <= ts - 600_000:
            repeat.popleft()
        repeat.append(ts)
        if len(repeat) > 5:
            reasons[i] = "viewer_repeat"
            return
        self.device_views[view["device_id"]].append(i)
        device = self.device[view["device_id"]]
        while device and device[0][0] <= ts - 60_000:
            device.popleft()
        device.append((ts, i))
        if len(device) > 60:
            for _, j in device:  # this view, and the earlier ones of the span by clawback
                reasons[j] = reasons[j] or "device_burst"
            return
        self._velocity(i, view, reasons)

    @staticmethod
    def _overlap_and_accounts(events: list[SimEvent], indexes: list[int], reasons: list[str | None]) -> None:
        kept: list[tuple[int, int]] = []
        accounts: list[str] = []
        views = [(events[j].payload, j) for j in indexes]
        for view, j in sorted(views, key=lambda vj: (vj[0]["ts"], vj[0]["event_id"])):  # type: ignore[index]
            assert isinstance(view, dict)
            if view["viewer_id"] not in accounts:
                accounts.append(view["viewer_id"])
            if reasons[j] == "device_burst":
                continue
            start, end = view["ts"] - view["watch_ms"], view["ts"]
            overlap = sum(max(0, min(e, end) - max(s, start)) for s, e in kept if e > end - 600_000)
            if overlap > 2_000:
                reasons[j] = "device_overlap"
            elif accounts.index(view["viewer_id"]) >= 8:
                reasons[j] = "account_farm"
            else:
                kept.append((start, end))

    def _velocity(self, i: int, view: dict[str, Any], reasons: list[str | None]) -> None:
        span = self.velocity[view["video_id"]]
        viewers = self.velocity_viewers[view["video_id"]]
        while span and span[0][0] <= view["ts"] - 60_000:
            _, old, _ = span.popleft()
            viewers[old] -= 1
            if not viewers[old]:
                del viewers[old]
        span.append((view["ts"], view["viewer_id"], i))
        viewers[view["viewer_id"]] += 1
        if len(span) > 200 and len(viewers) * 2 < len(span):
            firsts: set[str] = set()
            for _, viewer, j in span:
                if viewer in firsts:
                    reasons[j] = reasons[j] or "velocity_burst"
                firsts.add(viewer)

    @staticmethod
    def _interactions(events: list[SimEvent], indexes: list[int], reasons: list[str | None]) -> None:
        accepted: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
        for event, reason in zip(events, reasons, strict=True):
            if event.topic is InputTopic.VIEWS and reason is None and isinstance(event.payload, dict):
                accepted[(event.payload["viewer_id"], event.payload["video_id"])].append(event.payload["ts"])
        once: dict[tuple[str, str, str], int] = {}
        for i in indexes:
            act = events[i].payload
            assert isinstance(act, dict)
            ts, pair = act["ts"], (act["viewer_id"], act["video_id"])
            window_end = (ts // 3_600_000 + 1) * 3_600_000
            if not any(ts - 86_400_000 <= v <= window_end + 300_000 for v in accepted[pair]):
                reasons[i] = "engagement_without_view"
                continue
            if act["kind"] in ("like", "follow"):
                key = (*pair, act["kind"])
                if key in once and ts - once[key] < 86_400_000:
                    reasons[i] = "duplicate_interaction"
                    continue
                once[key] = ts


@pytest.fixture(scope="module")
def organic() -> list[SimEvent]:
    return list(generate(config(duration_s=300, rate_per_s=170)))


@pytest.fixture(scope="module")
def with_all_fraud() -> list[SimEvent]:
    return list(generate(config(duration_s=300, rate_per_s=200, fraud=FRAUD_SCENARIOS)))


# --- determinism and shape -------------------------------------------------------------------------------


def test_same_seed_gives_identical_traffic_and_another_seed_different_traffic() -> None:
    small = {"duration_s": 20, "rate_per_s": 100, "fraud": FRAUD_SCENARIOS}
    first = list(generate(config(**small)))
    assert first == list(generate(config(**small)))
    other = list(generate(config(seed=43, **small)))
    assert [e.payload for e in other] != [e.payload for e in first]
    assert {e.event_id for e in other}.isdisjoint({e.event_id for e in first} - {None})


def test_injecting_fraud_leaves_the_catalogue_unchanged() -> None:
    def profiles(events: Iterable[SimEvent]) -> list[Any]:
        return [e.payload for e in events if e.topic is InputTopic.PROFILES]

    assert profiles(generate(config(duration_s=5))) == profiles(generate(config(duration_s=5, fraud={"duplicate"})))


def test_profiles_come_first_then_traffic_in_delivery_order_within_the_run(with_all_fraud: list[SimEvent]) -> None:
    creators = config().creators
    assert all(e.topic is InputTopic.PROFILES for e in with_all_fraud[:creators])
    assert all(e.topic is not InputTopic.PROFILES for e in with_all_fraud[creators:])
    at = [e.at_ms for e in with_all_fraud]
    assert at == sorted(at)
    assert at[0] >= START and at[-1] < START + 300_000
    for event in with_all_fraud:
        if isinstance(event.payload, dict) and event.label != "duplicate":
            assert event.payload["ts"] == event.at_ms
        if isinstance(event.payload, dict):  # labels travel in the side file, never in the event
            assert set(event.payload) <= SCHEMA_FIELDS[event.topic]


def test_event_ids_are_unique_except_the_redelivered_duplicates(with_all_fraud: list[SimEvent]) -> None:
    ids = Counter((e.topic, e.event_id) for e in with_all_fraud if e.event_id is not None)
    repeated = {key for key, n in ids.items() if n > 1}
    duplicates = [(e.topic, e.event_id) for e in with_all_fraud if e.label == "duplicate"]
    assert set(duplicates) == repeated
    assert all(ids[key] == 2 for key in repeated)
    # The copy is byte-for-byte the original, delivered later.
    originals = {(e.topic, e.event_id): e for e in with_all_fraud if e.label == "organic"}
    for copy in (e for e in with_all_fraud if e.label == "duplicate"):
        original = originals[(copy.topic, copy.event_id)]
        assert copy.payload == original.payload and copy.at_ms > original.at_ms


def test_creator_profiles_are_a_realistic_mix(organic: list[SimEvent]) -> None:
    profiles = objects(organic, InputTopic.PROFILES)
    assert len(profiles) == 400 and len({p["creator_id"] for p in profiles}) == 400
    standings = Counter(p["standing"] for p in profiles)
    assert standings["good"] > 360 and 5 <= standings["restricted"] <= 40 and standings["banned"] <= 12
    assert sum(p["adult"] for p in profiles) > 370
    big = [p for p in profiles if p["followers"] >= 10_000]
    assert 0.5 < len(big) / 400 < 0.85  # mostly big creators, some small
    assert max(p["followers"] for p in profiles) > 100 * min(p["followers"] for p in profiles)


def test_organic_traffic_looks_like_a_platform(organic: list[SimEvent]) -> None:
    views = objects(organic, InputTopic.VIEWS)
    interactions = objects(organic, InputTopic.INTERACTIONS)
    assert 0.9 * 170 * 300 < len(views) + len(interactions) < 1.1 * 170 * 300
    assert 0.015 < len(interactions) / len(views) < 0.05
    sources = Counter(v["source"] for v in views)
    assert sources.most_common(1)[0][0] == "for_you" and sources["for_you"] / len(views) > 0.7
    regions = Counter(v["region"] for v in views)
    assert [r for r, _ in regions.most_common(2)] == ["US", "IN"]
    long = sum(v["video_ms"] >= 60_000 for v in views)
    assert 0.5 < long / len(views) < 0.8
    per_video = Counter(v["video_id"] for v in views).most_common()
    assert per_video[0][1] > 20 * per_video[len(per_video) // 2][1]  # power-law popularity
    per_viewer = Counter(v["viewer_id"] for v in views)
    assert sum(per_viewer.values()) / len(per_viewer) > 3  # sessions of several views


def test_organic_traffic_runs_at_the_rate_asked_for_from_the_start() -> None:
    """The sessions in flight when a run starts are as many as the rate keeps in flight (each runs for all its
    views' steps, not one fewer: with one fewer a run at 2,000 events/s started 13 % under its rate)."""
    rate, seconds = 2_000, 30
    cfg = config(duration_s=seconds, rate_per_s=rate)
    per_5s = Counter((e.at_ms - START) // 5_000 for e in generate(cfg) if e.topic is not InputTopic.PROFILES)
    assert sorted(per_5s) == list(range(seconds // 5))
    for count in per_5s.values():
        assert 0.95 * rate * 5 < count < 1.07 * rate * 5


def test_organic_traffic_is_clean_of_every_authenticity_rule(organic: list[SimEvent]) -> None:
    assert all(e.label == "organic" and e.expected_reason is None for e in organic)
    reasons = ReferenceRules().judge(organic)
    assert Counter(reasons) == Counter({None: len(organic)})
    assert all(isinstance(d, ValidEvent) for e in organic for d in decode(e))


def test_organic_views_are_physically_possible(organic: list[SimEvent]) -> None:
    """One screen shows one video at a time: a device's views never overlap; few accounts share a device."""
    views = objects(organic, InputTopic.VIEWS)
    by_device: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    devices_of: defaultdict[str, set[str]] = defaultdict(set)
    for view in views:
        by_device[view["device_id"]].append(view)
        devices_of[view["viewer_id"]].add(view["device_id"])
    for device_views in by_device.values():
        device_views.sort(key=lambda v: v["ts"])
        for before, after in itertools.pairwise(device_views):
            # the next view starts 300 ms or more after the last one ended, so view ends are 1 s or more apart
            assert after["ts"] - after["watch_ms"] >= before["ts"] + 300
    accounts = Counter(len({v["viewer_id"] for v in vs}) for vs in by_device.values())
    assert max(accounts) <= 4 and accounts[1] > 0.9 * len(by_device)
    assert sum(n for k, n in accounts.items() if k >= 2) > 0  # family tablets
    assert sum(len(d) == 2 for d in devices_of.values()) > 0  # a phone and a tablet
    # an interaction happens while its view plays, in its last minute
    ends: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    for v in views:
        ends[(v["viewer_id"], v["video_id"])].append(v["ts"])
    for act in objects(organic, InputTopic.INTERACTIONS):
        assert any(end - 60_000 < act["ts"] <= end for end in ends[(act["viewer_id"], act["video_id"])]), act


# --- fraud -------------------------------------------------------------------------------------------------


def test_every_event_carries_the_reason_the_rules_in_spec_order_give_it(with_all_fraud: list[SimEvent]) -> None:
    reasons = ReferenceRules().judge(with_all_fraud)
    wrong = [(e.label, e.expected_reason, r) for e, r in zip(with_all_fraud, reasons, strict=True)]
    wrong = [w for w in wrong if w[1] != w[2]]
    assert wrong == []
    expected = Counter(e.expected_reason for e in with_all_fraud)
    assert set(expected) == {None, *(r for reasons in EXPECTED_REASONS.values() for r in reasons)}


def test_fraud_is_about_the_configured_share_of_traffic() -> None:
    assert instance_counts(config(duration_s=600, rate_per_s=200, fraud=FRAUD_SCENARIOS)) == {
        # budget per scenario = 120_000 events * 0.03 / 10 = 360
        "account_farm": 2,  # 360 / 180
        "device_farm": 3,  # / 125
        "duplicate": 360,
        "fake_engagement": 36,  # / 10
        "farm_under_threshold": 1,  # at least one
        "impossible_watch": 72,  # / 5
        "malformed": 360,
        "overlap_bot": 9,  # / 40
        "repeat_viewer": 14,  # / 25
        "velocity_burst": 1,  # at least one
    }
    assert instance_counts(config()) == {}


@pytest.mark.parametrize(
    ("scenario", "flagged_per_instance", "accepted_per_instance"),
    [
        ("repeat_viewer", None, 5),  # the first 5 loops are accepted views
        ("device_farm", None, 0),
        ("farm_under_threshold", None, None),  # each phone's first view is accepted
        ("account_farm", None, None),  # the first 8 accounts of each phone
        ("overlap_bot", None, None),  # one screen's worth
        ("velocity_burst", 750, 250),  # 250 viewers x 4 views: each viewer's first view is accepted
        ("fake_engagement", None, 0),
        ("duplicate", None, 0),  # each organic event is re-delivered with a small probability
        ("impossible_watch", None, 0),
        ("malformed", 1, 0),
    ],
)
def test_each_scenario_yields_its_expected_reason(
    scenario: str, flagged_per_instance: int | None, accepted_per_instance: int | None
) -> None:
    cfg = config(duration_s=120, rate_per_s=80, fraud={scenario})
    events = list(generate(cfg))
    instances = instance_counts(cfg)[scenario]
    mine = [e for e in events if e.label == scenario]
    assert {e.expected_reason for e in mine} == set(EXPECTED_REASONS[scenario]) | (
        {None} if accepted_per_instance != 0 else set()
    )
    if accepted_per_instance is not None:
        assert sum(e.expected_reason is None for e in mine) == accepted_per_instance * instances
    if flagged_per_instance is not None:
        assert sum(e.expected_reason is not None for e in mine) == flagged_per_instance * instances
    assert all(e.label in ("organic", scenario) for e in events)
    reasons = ReferenceRules().judge(events)
    assert [e.expected_reason for e in events] == reasons


def test_device_farm_is_one_device_over_many_videos_within_a_minute() -> None:
    farm = [e.payload for e in generate(config(fraud={"device_farm"})) if e.label == "device_farm"]
    by_device: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)
    for view in farm:
        assert isinstance(view, dict)
        by_device[view["device_id"]].append(view)
    for views in by_device.values():
        assert 100 <= len(views) <= 150
        assert views[-1]["ts"] - views[0]["ts"] < 60_000
        assert len({v["video_id"] for v in views}) == len(views)
        assert len({v["viewer_id"] for v in views}) >= 15


def by_device(events: list[SimEvent], label: str) -> dict[str, list[SimEvent]]:
    devices: defaultdict[str, list[SimEvent]] = defaultdict(list)
    for event in events:
        if event.label == label:
            assert isinstance(event.payload, dict)
            devices[event.payload["device_id"]].append(event)
    return {d: sorted(vs, key=lambda e: e.at_ms) for d, vs in devices.items()}


def most_in_a_minute(views: list[SimEvent]) -> int:
    times = [e.at_ms for e in views]
    return max(sum(1 for t in times if end - 60_000 < t <= end) for end in times)


def test_farm_under_threshold_is_paid_for_each_phones_first_view_only() -> None:
    events = list(generate(config(duration_s=300, fraud={"farm_under_threshold"})))
    phones = by_device(events, "farm_under_threshold")
    instances = instance_counts(config(duration_s=300, fraud={"farm_under_threshold"}))["farm_under_threshold"]
    assert 4 * instances <= len(phones) <= 8 * instances
    for views in phones.values():
        assert 50 <= most_in_a_minute(views) <= 58  # just under device_burst's 60 in 60 s
        assert len({e.payload["viewer_id"] for e in views}) == len(views)  # type: ignore[index]  # fresh accounts
        assert [e.expected_reason for e in views][:1] == [None]
        reasons = Counter(e.expected_reason for e in views)
        assert reasons[None] == 1 and reasons["device_overlap"] >= 15 and reasons["account_farm"] >= 10


def test_account_farm_takes_turns_on_a_few_phones() -> None:
    events = list(generate(config(duration_s=900, fraud={"account_farm"})))
    phones = by_device(events, "account_farm")
    assert 2 <= len(phones) <= 4 * instance_counts(config(duration_s=900, fraud={"account_farm"}))["account_farm"]
    for views in phones.values():
        payloads = [e.payload for e in views]
        for before, after in itertools.pairwise(payloads):
            assert after["ts"] - after["watch_ms"] > before["ts"]  # type: ignore[index]  # one at a time
        assert most_in_a_minute(views) <= 12
        first_eight: list[str] = []
        for event in views:
            viewer = event.payload["viewer_id"]  # type: ignore[index]
            if viewer not in first_eight and len(first_eight) < 8:
                first_eight.append(viewer)
            assert event.expected_reason == (None if viewer in first_eight else "account_farm")
        assert len({e.payload["viewer_id"] for e in views}) > 8  # type: ignore[index]


def test_overlap_bot_plays_several_videos_at_once_from_one_account() -> None:
    events = list(generate(config(duration_s=600, fraud={"overlap_bot"})))
    for views in by_device(events, "overlap_bot").values():
        assert len({e.payload["viewer_id"] for e in views}) == 1  # type: ignore[index]
        assert len({e.payload["video_id"] for e in views}) == len(views)  # type: ignore[index]
        kept = [e.payload for e in views if e.expected_reason is None]
        flagged = [e.payload for e in views if e.expected_reason == "device_overlap"]
        assert kept and len(flagged) > len(kept)
        for a, b in itertools.pairwise(kept):  # what stays is one screen's worth (within the tolerance)
            assert b["ts"] - b["watch_ms"] > a["ts"] - 2_000  # type: ignore[index]


def test_malformed_records_are_each_exactly_one_invalid_event() -> None:
    bad = [e for e in generate(config(duration_s=300, fraud={"malformed"})) if e.label == "malformed"]
    assert len(bad) == 1350  # 150/s * 300 s * 0.03, one record each
    for event in bad:
        assert isinstance(event.payload, bytes) and event.event_id is None
        decoded = decode(event)
        assert len(decoded) == 1 and isinstance(decoded[0], InvalidEvent), event.payload


# --- labels side file ----------------------------------------------------------------------------------------


def test_write_labels_writes_one_json_line_per_event(tmp_path: Path) -> None:
    view = {"event_id": "e1", "video_id": "v", "ts": 5}
    events = [
        SimEvent(InputTopic.PROFILES, {"creator_id": "c", "ts": 1}, "organic", None, 1),
        SimEvent(InputTopic.VIEWS, view, "organic", None, 5),
        SimEvent(InputTopic.VIEWS, dict(view), "duplicate", "duplicate_event", 9),
        SimEvent(InputTopic.INTERACTIONS, b"[]", "malformed", "invalid", 10),
    ]
    path = tmp_path / "labels.jsonl"
    assert write_labels(path, events) == 4
    lines = [jsoncodec.loads(line) for line in path.read_bytes().splitlines()]
    assert lines == [
        {
            "topic": "creator-profiles",
            "event_id": None,
            "index_in_stream": 0,
            "label": "organic",
            "expected_reason": None,
        },
        {"topic": "video-views", "event_id": "e1", "index_in_stream": 1, "label": "organic", "expected_reason": None},
        {
            "topic": "video-views",
            "event_id": "e1",
            "index_in_stream": 2,
            "label": "duplicate",
            "expected_reason": "duplicate_event",
        },
        {
            "topic": "video-interactions",
            "event_id": None,
            "index_in_stream": 3,
            "label": "malformed",
            "expected_reason": "invalid",
        },
    ]
    assert label_record(7, events[1])["index_in_stream"] == 7


# --- config ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"fraud": {"bot_army"}}, "bot_army"),
        ({"rate_per_s": 0}, "rate_per_s"),
        ({"duration_s": -1}, "duration_s"),
        ({"fraud_share": 0.9}, "fraud_share"),
        ({"videos": 10}, "videos"),
        ({"viewers": 5}, "viewers"),
        ({"creators": 0}, "creators"),
        ({"start_ms": -1}, "start_ms"),
    ],
)
def test_bad_config_is_refused_naming_the_setting(overrides: dict[str, Any], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        config(**overrides)


def test_generation_speed() -> None:
    cfg = config(duration_s=300, rate_per_s=200, fraud=FRAUD_SCENARIOS)
    started = time.perf_counter()
    count = sum(1 for _ in generate(cfg))
    elapsed = time.perf_counter() - started
    print(f"simulator: {count} events in {elapsed:.2f} s = {count / elapsed:,.0f} events/s")
    assert count > 55_000


# --- publishing loop (with a producer stand-in) --------------------------------------------------------------


class FakeProducer:
    """Records what run_simulation hands the producer SDK."""

    instances: list[FakeProducer] = []

    def __init__(self, bootstrap: str, **kwargs: Any) -> None:
        self.bootstrap = bootstrap
        self.kwargs = kwargs
        self.calls: list[tuple[str, InputTopic, list[Any]]] = []
        FakeProducer.instances.append(self)

    async def __aenter__(self) -> FakeProducer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def send(self, topic: InputTopic, events: Iterable[Mapping[str, object]]) -> SendReport:
        batch = list(events)
        self.calls.append(("send", topic, batch))
        return SendReport(events=len(batch), records=1, bytes=10 * len(batch))

    async def send_raw_records(self, topic: InputTopic, records: Iterable[tuple[bytes | None, bytes]]) -> SendReport:
        batch = list(records)
        self.calls.append(("raw", topic, batch))
        return SendReport(events=len(batch), records=len(batch), bytes=sum(len(v) for _, v in batch))


async def test_run_simulation_publishes_every_event_in_batches_with_labels_aside(tmp_path: Path) -> None:
    cfg = config(duration_s=60, rate_per_s=100, fraud=FRAUD_SCENARIOS)
    expected = list(generate(cfg))
    labels = tmp_path / "labels.jsonl"
    FakeProducer.instances.clear()
    report = await run_simulation(
        cfg,
        bootstrap="broker:9092",
        topic_prefix="t-",
        mode="single",
        labels_path=labels,
        batch_events=300,
        producer_factory=FakeProducer,
    )
    producer = FakeProducer.instances[-1]
    assert producer.bootstrap == "broker:9092"
    assert producer.kwargs == {"topic_prefix": "t-", "mode": "single", "client_kwargs": None}
    assert producer.calls[0][:2] == ("send", InputTopic.PROFILES)  # profiles go out before any traffic
    sent = [(topic, item) for kind, topic, batch in producer.calls if kind == "send" for item in batch]
    raw = [(topic, item) for kind, topic, batch in producer.calls if kind == "raw" for item in batch]
    assert all(len(batch) <= 300 for _, _, batch in producer.calls)
    assert sorted(map(repr, sent)) == sorted(
        repr((e.topic, e.payload)) for e in expected if isinstance(e.payload, dict)
    )
    # Buffers are per topic: the order holds within a topic.
    assert sorted(raw, key=lambda r: r[0].value) == sorted(
        ((e.topic, (e.raw_key, e.payload)) for e in expected if isinstance(e.payload, bytes)), key=lambda r: r[0].value
    )
    assert report.events == len(expected) == len(labels.read_bytes().splitlines())
    assert report.by_label == dict(Counter(e.label for e in expected))
    assert report.expected_reasons == dict(Counter(e.expected_reason for e in expected if e.expected_reason))
    assert report.records == sum(1 for c in producer.calls if c[0] == "send") + len(raw)
    assert (report.first_ts, report.last_ts) == (expected[0].at_ms, expected[-1].at_ms)
    assert not report.stopped_early


async def test_realtime_run_stamps_events_with_the_wall_clock_and_paces_them() -> None:
    FakeProducer.instances.clear()
    before = int(time.time() * 1000)
    report = await run_simulation(
        config(duration_s=0.6, rate_per_s=200, creators=3),
        bootstrap="b",
        realtime=True,
        producer_factory=FakeProducer,
    )
    after = int(time.time() * 1000)
    assert isinstance(report, SimulationReport) and report.events > 60
    assert report.elapsed_s >= 0.4  # the last events are due ~0.6 s after the start
    ts = [item["ts"] for kind, _, batch in FakeProducer.instances[-1].calls if kind == "send" for item in batch]
    # events due within the next pacing tick are sent early, stamped with their due time
    assert before <= min(ts) and max(ts) <= after + publish._TICK_MS


async def test_realtime_run_paces_from_its_first_traffic_event_when_the_generator_started_late() -> None:
    """Traffic whose first event is already 3 s late when it is ready (a high rate's generator setting up) is
    paced from there, not sent as one burst of everything that fell due meanwhile."""
    FakeProducer.instances.clear()
    cfg = config(duration_s=5, rate_per_s=200, creators=3)
    now = int(time.time() * 1000)
    traffic = [e for e in generate(cfg) if e.topic is not InputTopic.PROFILES][:6]
    late = [dataclasses.replace(e, at_ms=now - 3_000 + 100 * i) for i, e in enumerate(traffic)]

    started = time.monotonic()
    report = await run_simulation(cfg, bootstrap="b", realtime=True, producer_factory=FakeProducer, events=late)
    assert report.events == 6
    assert 2.9 <= report.start_delay_s < 4
    assert time.monotonic() - started >= 0.4  # the last is due 0.5 s after the first, less a pacing tick


async def test_setting_stop_ends_the_run_early() -> None:
    stop = asyncio.Event()
    stop.set()
    report = await run_simulation(config(), bootstrap="b", stop=stop, producer_factory=FakeProducer)
    assert report.stopped_early and report.events == 0


def test_fast_start_ms_ends_the_run_now() -> None:
    assert fast_start_ms(600, now_ms=START) == START - 600_000


async def test_stop_interrupts_a_realtime_wait() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.2, stop.set)
    started = time.monotonic()
    # 1 event/s for an hour: without the stop this would run for an hour.
    report = await run_simulation(
        config(duration_s=3600, rate_per_s=1, creators=2, viewers=100),
        bootstrap="b",
        realtime=True,
        stop=stop,
        producer_factory=FakeProducer,
    )
    assert time.monotonic() - started < 2 and report.stopped_early
