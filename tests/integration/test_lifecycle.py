"""Issue 14 on a real worker: /readyz fails while tables recover, /livez fails while the event loop is blocked, and
SIGTERM ends a worker mid-stream cleanly: batch finished, outputs flushed, offsets committed, exit 0 within the
StatefulSet's grace period.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream_app.domain.partitioning import partition_for
from stream_app.edges.broker import EmbeddedBroker
from stream_app.streaming.lifecycle import EXIT_SHUTDOWN_TIMEOUT
from tests.events import view_event
from tests.integration.harness import (
    WorkerProcess,
    jsonl,
    read_topic,
    run_cli,
    scrape,
    wait_for,
    worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
PARTITIONS = 4  # topics/topics.toml
STATEFULSET = yaml.safe_load((REPO / "deploy" / "k8s" / "statefulset.yaml").read_text())
GRACE_S = STATEFULSET["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]


def probe(worker: WorkerProcess, path: str) -> tuple[int | None, dict[str, Any]]:
    url = f"http://127.0.0.1:{worker.env['METRICS_PORT']}{path}"
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return None, {}


def watch_readiness(worker: WorkerProcess, timeout: float) -> list[tuple[int | None, str, dict[str, Any]]]:
    """Every distinct (status, reason) /readyz answered, polled every 50 ms, until it answers 200."""
    seen: list[tuple[int | None, str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code, body = probe(worker, "/readyz")
        reason = str(body.get("reason", ""))
        if not seen or seen[-1][:2] != (code, reason):
            seen.append((code, reason, body))
        if code == 200:
            return seen
        assert worker.process is not None and worker.process.poll() is None, worker.log()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"/readyz never answered 200 in {timeout}s: {[s[:2] for s in seen]}")


async def fill_changelog(bootstrap: str, topic: str, records: int) -> None:
    """Tombstones for keys no event ever uses: the worker must replay them all before it is ready."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20)
    await producer.start()
    try:
        acks = [
            await producer.send(topic, key=b"filler-%d" % i, value=None, partition=i % PARTITIONS)
            for i in range(records)
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def test_a_worker_recovering_its_tables_is_not_ready(scenario_env: dict[str, str]) -> None:
    env = scenario_env
    changelog = f"{env['TOPIC_PREFIX']}{env['APP_ID']}-device-state-changelog"
    asyncio.run(fill_changelog(env["KAFKA_BOOTSTRAP"], changelog, 30_000))  # about 3 s of recovery here
    with WorkerProcess(env) as worker:
        seen = watch_readiness(worker, timeout=60)
        recovering = [body for code, reason, body in seen if code == 503 and reason.startswith("recovering tables")]
        assert recovering, [s[:2] for s in seen]
        assert recovering[0]["changelog_records_to_recover"] > 0
        assert seen[-1][2]["partitions"] == [0, 1, 2, 3]
        # the loop answered throughout (recovery is work, not a stall), and the gauge agrees with the probe
        assert probe(worker, "/livez")[0] == 200
        metrics = scrape(worker.metrics_url)
        assert metrics["rewards_worker_ready"] == 1.0
        assert metrics["rewards_readiness_changes_total"] >= 1.0
        assert "not ready: recovering tables" in worker.log()
        # the worker says which scoring core it runs (the sources here; compiled in the production image)
        assert re.search(r"scoring core: (interpreted \(the sources\)|compiled with mypyc)", worker.log())


def test_a_worker_whose_event_loop_is_blocked_is_not_live(scenario_env: dict[str, str], tmp_path: Path) -> None:
    block = tmp_path / "block-loop"
    env = dict(scenario_env, LIVENESS_TIMEOUT_S="2", TEST_BLOCK_LOOP_FILE=str(block))
    with WorkerProcess(env) as worker:
        watch_readiness(worker, timeout=60)
        assert probe(worker, "/livez")[0] == 200
        block.write_text("6")  # the heartbeat task sleeps 6 s inside the event loop
        started = time.monotonic()
        _, body = wait_for(lambda: (r := probe(worker, "/livez"))[0] == 503 and r, 10, "/livez to fail")
        assert body["status"] == "stalled" and body["reason"].startswith("event loop stalled: no heartbeat for")
        assert time.monotonic() - started < 6, "the probe must fail while the loop is still blocked"
        ready_code, ready_body = probe(worker, "/readyz")
        assert ready_code == 503 and ready_body["reason"].startswith("event loop stalled")
        # the metrics thread still answers and shows the stall
        assert scrape(worker.metrics_url)["rewards_event_loop_heartbeat_age_seconds"] > 2
        # once the loop answers again, so does the probe
        wait_for(lambda: probe(worker, "/livez")[0] == 200, 15, "/livez to recover")
        wait_for(lambda: probe(worker, "/readyz")[0] == 200, 15, "/readyz to recover")
        assert "TEST_BLOCK_LOOP_FILE: blocking the event loop for 6 s" in worker.log()


def views(count: int, now_ms: int, invalid_every: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for i in range(count):
        event = view_event(
            f"e{i}", f"v{i % 200}", f"u{i}", now_ms - 60_000 + i, creator_id=f"c{i % 200}", device_id=f"d{i % 4000}"
        )
        if i % invalid_every == 0:
            event["watch_ms"] = -1  # dead-lettered by the worker (published --raw, unchecked)
        events.append(event)
    return events


def invalid_positions(events: list[dict[str, Any]]) -> set[tuple[int, int]]:
    """(partition, offset) of each invalid event, as `publish --raw` writes them: one record per line, in order."""
    next_offset = [0] * PARTITIONS
    found = set()
    for event in events:
        partition = partition_for(event["video_id"].encode(), PARTITIONS)
        if event["watch_ms"] < 0:
            found.add((partition, next_offset[partition]))
        next_offset[partition] += 1
    return found


async def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    # a consumer of the group that never subscribes: it only reads the group's committed offsets
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in range(PARTITIONS)}
    finally:
        await consumer.stop()


def consumed_views(worker: WorkerProcess) -> float:
    metrics = scrape(worker.metrics_url)
    return sum(v for k, v in metrics.items() if k.startswith("rewards_events_total{") and 'topic="video-views"' in k)


def test_sigterm_mid_stream_finishes_the_batch_flushes_commits_and_exits_0_in_time(
    scenario_env: dict[str, str],
) -> None:
    # Offsets are committed only at shutdown (no periodic commit): what the group holds afterwards is the
    # shutdown's own commit.
    env = dict(scenario_env, BROKER_COMMIT_INTERVAL="3600", BROKER_COMMIT_EVERY="1000000", IDLE_SETTLE_S="600")
    bootstrap, prefix = env["KAFKA_BOOTSTRAP"], env["TOPIC_PREFIX"]
    events = views(20_000, int(time.time() * 1000), invalid_every=50)
    run_cli(env, "publish", "-", "--topic", "video-views", "--raw", stdin=jsonl(events), timeout=120)
    worker = WorkerProcess(env).start()
    try:
        wait_for(lambda: consumed_views(worker) >= 2_000, 60, "the worker to be busy", interval=0.1)
        started = time.monotonic()
        code = worker.stop(signal.SIGTERM, timeout=GRACE_S + 10)
        took = time.monotonic() - started
    finally:
        worker.kill()
    assert code == 0, worker.log()[-3000:]
    assert took < GRACE_S, f"shutdown took {took:.1f} s, the grace period is {GRACE_S} s"
    logged = re.search(r"worker stopped in ([0-9.]+) s after SIGTERM \(exit 0\)", worker.log())
    assert logged is not None and float(logged.group(1)) <= took
    committed = asyncio.run(committed_offsets(bootstrap, env["APP_ID"], f"{prefix}video-views"))
    assert all(offset is not None for offset in committed.values()), committed
    assert 0 < sum(committed.values()) < len(events), ("SIGTERM came mid-stream", committed)  # type: ignore[arg-type]
    # Every record below the committed offsets was processed and its outputs reached the broker (the dead
    # letters of its invalid events are there), and nothing processed was left uncommitted (no dead letter
    # above): the batch in hand finished, outputs flushed, then the commit.
    expected = {(p, o) for p, o in invalid_positions(events) if o < committed[p]}  # type: ignore[operator]
    dead = read_topic(bootstrap, f"{prefix}events-dlq", lambda r: len(r) >= len(expected), timeout=30)
    assert sorted((d["partition"], d["offset"]) for d in dead) == sorted(expected)


def test_a_shutdown_that_hangs_on_a_dead_broker_ends_after_shutdown_timeout(tmp_path: Path) -> None:
    """The demo's old failure: the broker went first and the worker retried it for about 90 s. Now the worker
    gives up after SHUTDOWN_TIMEOUT_S, says so, and exits 1 (its state is safe: a restart skips replays)."""
    broker = EmbeddedBroker()  # its own broker: this test kills it
    try:
        env = worker_env(broker.start(), "dead-", SHUTDOWN_TIMEOUT_S="3")
        run_cli(env, "topics", "apply")
        worker = WorkerProcess(env).start()
        try:
            watch_readiness(worker, timeout=60)
            broker.stop()
            started = time.monotonic()
            code = worker.stop(signal.SIGTERM, timeout=30)
            took = time.monotonic() - started
        finally:
            worker.kill()
    finally:
        broker.stop()
    assert code == EXIT_SHUTDOWN_TIMEOUT, worker.log()[-3000:]
    assert 3 <= took < 10, took
    assert "shutdown did not finish within SHUTDOWN_TIMEOUT_S=3 s" in worker.log()
