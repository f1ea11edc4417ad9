"""The worker's start-up topic check (SPEC §2, §4) and its output safety net: the topics it checks are exactly
those `stream-app topics apply` creates, the check names what is wrong, the producer's metadata is pinned to every
written topic, and a record the broker did not acknowledge stops the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from types import SimpleNamespace
from typing import Any

import pytest

from stream_app.edges.broker import free_loopback_port
from stream_app.edges.settings import load_settings
from stream_app.edges.topics_admin import RequiredTopic, load_topic_plan, required_by_plan, topology_problems
from stream_app.streaming import topology
from stream_app.streaming.app import build_app

PREFIX = "pfx-"
APP_ID = "scorer"


@pytest.fixture(scope="module")
def scorer() -> Any:
    return build_app(load_settings({"TOPIC_PREFIX": PREFIX, "APP_ID": APP_ID, "METRICS_PORT": "0"}))


def test_the_worker_checks_exactly_the_topics_and_partners_that_topics_apply_declares(scorer: Any) -> None:
    declared = required_by_plan(load_topic_plan(prefix=PREFIX, app_id=APP_ID))
    assert sorted(topology.required_topics(scorer.topology), key=str) == sorted(declared, key=str)
    views = f"{PREFIX}video-views"
    partners = {t.name: t.co_partitioned_with for t in declared}
    assert partners[f"{PREFIX}video-interactions"] == views
    assert partners[f"{PREFIX}{APP_ID}-ticks"] == views
    assert partners[f"{PREFIX}reward-accruals"] is None


def test_written_topics_are_the_outputs_and_internal_topics(scorer: Any) -> None:
    written = set(topology.written_topics(scorer.topology))
    required = {t.name for t in topology.required_topics(scorer.topology)}
    inputs = {f"{PREFIX}{name}" for name in ("video-views", "video-interactions", "creator-profiles")}
    assert written == required - inputs


REQUIRED = [
    RequiredTopic("views"),
    RequiredTopic("interactions", "views"),
    RequiredTopic("ticks", "views"),
    RequiredTopic("dlq"),
]


@pytest.mark.parametrize(
    ("existing", "problems"),
    [
        ({"views": 4, "interactions": 4, "ticks": 4, "dlq": 1}, []),
        ({"views": 2, "interactions": 2, "ticks": 2, "dlq": 7}, []),  # any count, as long as co-partitioned
        ({}, ["missing topics: views, interactions, ticks, dlq"]),
        ({"views": 4, "interactions": 4, "ticks": 4}, ["missing topic: dlq"]),
        (
            {"views": 4, "interactions": 4, "ticks": 1, "dlq": 4},
            ["ticks has 1 partitions but views has 4: they must be co-partitioned (equal counts)"],
        ),
        (
            {"interactions": 3, "ticks": 1, "dlq": 4},  # no count to compare with: missing says it all
            ["missing topic: views"],
        ),
    ],
)
def test_topology_problems(existing: dict[str, int], problems: list[str]) -> None:
    assert topology_problems(REQUIRED, existing) == problems


class FakeClient:
    def __init__(self) -> None:
        self.topics: list[str] | None = None

    async def set_topics(self, topics: list[str]) -> None:
        self.topics = list(topics)


class FakeProducerService:
    def __init__(self) -> None:
        self.client = FakeClient()
        self.started = False

    async def on_started(self) -> None:
        self.started = True

    def _ensure_producer(self) -> Any:
        return SimpleNamespace(client=self.client)


async def test_the_producer_tracks_every_written_topic_once_it_has_started() -> None:
    producer = FakeProducerService()
    topology.pin_producer_metadata(producer, ["a", "b"])
    assert producer.client.topics is None
    await producer.on_started()
    assert producer.started and producer.client.topics == ["a", "b"]


def test_an_unacknowledged_record_stops_the_worker(scorer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    stops: list[str] = []
    monkeypatch.setattr(topology, "fail_stop", stops.append)
    guard = topology.TopologyGuard(scorer.topology, scorer.settings, producer=None)
    state = guard.on_send_initiated(None, f"{PREFIX}events-dlq", None, 0, 10)
    guard.on_send_error(None, TimeoutError("batch expired"), state)
    assert len(stops) == 1 and f"{PREFIX}events-dlq" in stops[0] and "batch expired" in stops[0]


def test_the_guard_is_a_sensor_of_the_app(scorer: Any) -> None:
    assert any(isinstance(sensor, topology.TopologyGuard) for sensor in scorer.faust.sensors)
    assert scorer.faust.conf.producer_request_timeout == topology.PRODUCER_REQUEST_TIMEOUT_S <= 60


async def test_the_broker_watch_says_when_the_broker_does_not_answer(caplog: pytest.LogCaptureFixture) -> None:
    nobody = f"127.0.0.1:{free_loopback_port()}"  # a port nothing listens on
    watch = asyncio.ensure_future(topology.watch_broker(nobody, {}, interval_s=0.05, silent_after_s=0.3, repeat_s=60))
    try:
        deadline = time.monotonic() + 10
        while "has not answered for" not in caplog.text and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
    warnings = [r for r in caplog.records if "has not answered for" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING" and nobody in warnings[0].getMessage()


def test_rocksdb_tables_bound_rocksdbs_own_memory(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """With STORE=rocksdb:// every table's databases get the bounded memtables and block cache (Faust's defaults
    are 3 x 64 MiB and 2 GiB per database), and the memory store is left as it is."""
    pytest.importorskip("rocksdict", reason="the rocksdb extra (rocksdict) is not installed")
    from stream_app.streaming.topics import ROCKSDB_OPTIONS

    monkeypatch.chdir(tmp_path)  # Faust puts a RocksDB table's files under the working directory
    settings = {"TOPIC_PREFIX": PREFIX, "APP_ID": APP_ID, "METRICS_PORT": "0"}
    on_disk = build_app(load_settings(dict(settings, STORE="rocksdb://")))
    for table in (on_disk.topology.video_state, on_disk.topology.device_state):
        options = table.data.rocksdb_options
        assert options.write_buffer_size == ROCKSDB_OPTIONS["write_buffer_size"] < 64 * 1024 * 1024
        assert options.max_write_buffer_number == ROCKSDB_OPTIONS["max_write_buffer_number"] < 3
        assert options.block_cache_size == ROCKSDB_OPTIONS["block_cache_size"] < 2 * 1024**3
    in_memory = build_app(load_settings(settings))
    assert not in_memory.topology.video_state.options
