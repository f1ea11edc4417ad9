"""WorkerLifecycle on a fake Faust app: the readiness verdict and its order of reasons, readiness flips counted and
logged once per kind, and the shutdown clock with its watchdog."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from faust.exceptions import ConsumerNotStarted
from faust.types import TP
from prometheus_client import CollectorRegistry

from stream_app.edges.metrics import RewardsMetrics
from stream_app.edges.settings import Settings
from stream_app.streaming import lifecycle as lifecycle_module
from stream_app.streaming.lifecycle import EXIT_SHUTDOWN_TIMEOUT, WorkerLifecycle

VIEWS = "video-views"


class FakeConsumer:
    def __init__(self) -> None:
        self.started = True
        self.tps: set[TP] = set()

    def assignment(self) -> set[TP]:
        if not self.started:
            raise ConsumerNotStarted("not yet")
        return set(self.tps)


def fake_scorer(shutdown_timeout_s: int = 60) -> Any:
    recovery = SimpleNamespace(completed=asyncio.Event(), remaining=0)
    recovery.active_remaining_total = lambda: recovery.remaining
    faust = SimpleNamespace(
        consumer=FakeConsumer(),
        tables=SimpleNamespace(recovery=recovery),
        rebalancing=False,
        in_recovery=False,
        should_stop=False,
        sensors=SimpleNamespace(add=lambda sensor: None),
    )
    return SimpleNamespace(
        settings=Settings(shutdown_timeout_s=shutdown_timeout_s),
        metrics=RewardsMetrics(CollectorRegistry()),
        faust=faust,
        profile_reader=SimpleNamespace(caught_up=asyncio.Event()),
    )


def lifecycle_of(scorer: Any) -> WorkerLifecycle:
    return WorkerLifecycle(
        scorer.faust,
        settings=scorer.settings,
        metrics=scorer.metrics,
        profiles_ready=scorer.profile_reader.caught_up,
        views_topic=VIEWS,
    )


def verdict(life: WorkerLifecycle) -> str | None:
    return life.not_ready_reason()[0]


def test_the_readiness_verdict_names_the_first_thing_missing() -> None:
    scorer = fake_scorer()
    life = lifecycle_of(scorer)
    faust, recovery = scorer.faust, scorer.faust.tables.recovery
    faust.consumer.started = False
    assert verdict(life) == "starting: the consumer has not joined the group yet"
    faust.consumer.started = True
    assert verdict(life) == "waiting for the first partition assignment"
    faust.rebalancing = True
    assert verdict(life) == "rebalancing: partitions are being reassigned"
    # Faust recovers tables inside a rebalance: the recovery is what the operator needs to see
    faust.in_recovery, recovery.remaining = True, 1234
    reason, detail = life.not_ready_reason()
    assert reason == "recovering tables: 1234 changelog records to go"
    assert detail["changelog_records_to_recover"] == 1234
    faust.in_recovery = faust.rebalancing = False
    recovery.completed.set()
    assert verdict(life) == "no partitions assigned (more workers than partitions, or the group is forming)"
    faust.consumer.tps = {TP(VIEWS, 3), TP(VIEWS, 1), TP("creator-profiles", 0)}
    assert verdict(life) == "reading the creator-profiles history: not caught up yet"
    scorer.profile_reader.caught_up.set()
    assert life.not_ready_reason() == (None, {"partitions": [1, 3]})


def ready_scorer() -> Any:
    scorer = fake_scorer()
    scorer.faust.tables.recovery.completed.set()
    scorer.faust.consumer.tps = {TP(VIEWS, 0)}
    scorer.profile_reader.caught_up.set()
    return scorer


def test_beats_count_readiness_flips_and_log_each_kind_of_reason_once(caplog: pytest.LogCaptureFixture) -> None:
    scorer = ready_scorer()
    scorer.faust.in_recovery = True
    life = lifecycle_of(scorer)
    caplog.set_level(logging.INFO, logger=lifecycle_module.__name__)
    for remaining in (300, 200, 100):  # the count goes down every second: one line, not three
        scorer.faust.tables.recovery.remaining = remaining
        life.beat()
    scorer.faust.in_recovery = False
    life.beat()
    life.beat()
    assert [r.getMessage() for r in caplog.records] == [
        "not ready: recovering tables: 300 changelog records to go",
        "ready: partitions [0]",
    ]
    assert life.health.ready()
    assert scorer.metrics.registry.get_sample_value("rewards_readiness_changes_total") == 1.0
    assert scorer.metrics.registry.get_sample_value("rewards_worker_ready") == 1.0


def test_a_stop_signal_fails_readiness_and_the_watchdog_ends_a_hung_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    scorer = ready_scorer()
    scorer.settings = Settings(shutdown_timeout_s=1)
    life = lifecycle_of(scorer)
    life.beat()
    exited: list[int] = []
    called = threading.Event()

    def fake_exit(code: int) -> None:
        exited.append(code)
        called.set()

    monkeypatch.setattr(os, "_exit", fake_exit)
    life.stop_requested("SIGTERM")
    life.stop_requested("SIGINT")  # a second signal changes nothing
    assert life.stop_signal == "SIGTERM"
    assert life.health.readiness().reason.startswith("stopping")
    assert scorer.metrics.registry.get_sample_value("rewards_readiness_changes_total") == 2.0
    assert called.wait(10), "the watchdog did not fire"
    assert exited == [EXIT_SHUTDOWN_TIMEOUT]


def test_a_timely_shutdown_cancels_the_watchdog_and_logs_its_duration(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    life = lifecycle_of(ready_scorer())
    monkeypatch.setattr(os, "_exit", lambda code: pytest.fail("the watchdog fired after a clean stop"))
    caplog.set_level(logging.INFO, logger=lifecycle_module.__name__)
    life.stop_requested("SIGTERM")
    life.stopped(0)
    assert life._watchdog is not None and life._watchdog.finished.is_set()  # cancelled
    assert any(
        r.getMessage().startswith("worker stopped in ") and r.getMessage().endswith(" s after SIGTERM (exit 0)")
        for r in caplog.records
    )


def test_faust_a_worker_without_our_worker_class_is_seen_stopping_at_the_next_beat() -> None:
    scorer = ready_scorer()
    life = lifecycle_of(scorer)
    life.beat()
    scorer.faust.should_stop = True  # `faust -A stream_app.app worker`: Faust's own Worker stopped the app
    life.beat()
    assert life.stop_signal == "stop" and not life.health.ready()
    life.stopped(0)
