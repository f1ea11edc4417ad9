"""Issue 12 part 2 on the real broker: a worker refuses, before it joins its group, to start on topics that were
never created or are not co-partitioned (exit 78, naming `stream-app topics apply`), and creates nothing; and the
producer metadata pinned to every written topic keeps a topic appearing later from stranding a queued batch.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from stream_app.edges.topics_admin import load_topic_plan
from stream_app.streaming import topology
from tests.integration.harness import WorkerProcess, worker_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def topics_under(bootstrap: str, prefix: str) -> dict[str, int]:
    """Partition count of every topic whose name starts with `prefix` (all-topic metadata: creates nothing)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {
            t["topic"]: len(t["partitions"]) for t in await admin.describe_topics() if t["topic"].startswith(prefix)
        }
    finally:
        await admin.close()


async def create(bootstrap: str, counts: dict[str, int]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, n, 1) for name, n in counts.items()])
    finally:
        await admin.close()


def refused(env: dict[str, str]) -> str:
    """Run a worker that must refuse to start; its log."""
    worker = WorkerProcess(env).start()
    assert worker.process is not None
    try:
        code = worker.process.wait(45)
    finally:
        worker.stop()
    log = worker.log()
    assert code == topology.EXIT_TOPOLOGY, log[-3000:]
    assert "stream-app topics apply" in log
    # it stopped before its consumer started: no group join, no subscription (which would auto-create topics)
    assert "Starting...\n" in log and "Consumer]: Starting" not in log and "Joined group" not in log, log[-3000:]
    return log


async def test_a_worker_on_a_prefix_with_no_topics_exits_naming_topics_apply(bootstrap: str, topic_prefix: str) -> None:
    env = worker_env(bootstrap, topic_prefix)
    log = await asyncio.to_thread(refused, env)
    assert f"missing topics: {topic_prefix}video-views, " in log
    assert f"{topic_prefix}{env['APP_ID']}-ticks" in log and f"{topic_prefix}events-dlq" in log
    assert await topics_under(bootstrap, topic_prefix) == {}  # nothing auto-created on the way


async def test_a_worker_on_a_topic_with_the_wrong_partition_count_exits(bootstrap: str, topic_prefix: str) -> None:
    env = worker_env(bootstrap, topic_prefix)
    ticks = f"{topic_prefix}{env['APP_ID']}-ticks"
    plan = load_topic_plan(prefix=topic_prefix, app_id=env["APP_ID"])
    counts = {spec.name: 1 if spec.name == ticks else spec.partitions for spec in plan}
    await create(bootstrap, counts)
    log = await asyncio.to_thread(refused, env)
    assert f"{ticks} has 1 partitions but {topic_prefix}video-views has 4" in log
    assert "missing topic" not in log
    assert await topics_under(bootstrap, topic_prefix) == counts


async def queued_then_new_topic(bootstrap: str, prefix: str, *, pinned: bool) -> tuple[bool, float]:
    """Queue a record for an existing topic (it lingers), then send to a topic the producer has never seen, which
    the broker auto-creates. Whether the first record was delivered, and how long it took to be decided."""
    existing = f"{prefix}events-dlq"
    await create(bootstrap, {existing: 4})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=500, request_timeout_ms=6_000)
    await producer.start()
    try:
        if pinned:  # what the worker's TopologyGuard does to Faust's producer, here on a bare aiokafka producer
            service = SimpleNamespace(on_started=_noop, _ensure_producer=lambda: producer)
            topology.pin_producer_metadata(service, [existing])
            await service.on_started()
        started = time.monotonic()
        queued = await producer.send(existing, b"dead letter", partition=0)
        await producer.send(f"{prefix}appeared-later", b"tick", partition=0)
        try:
            await asyncio.wait_for(queued, 30)
            return True, time.monotonic() - started
        except KafkaError:
            return False, time.monotonic() - started
    finally:
        await producer.stop()


async def _noop() -> None:
    return None


async def test_a_topic_appearing_later_strands_a_queued_batch_unless_metadata_is_pinned(
    bootstrap: str, topic_prefix: str
) -> None:
    # aiokafka's behaviour the worker guards against: the queued record loses its partition's leader and fails
    # only when the request timeout expires (Faust's default: 20 minutes)
    delivered, seconds = await queued_then_new_topic(bootstrap, f"{topic_prefix}bare-", pinned=False)
    assert not delivered and seconds >= 5.5
    delivered, seconds = await queued_then_new_topic(bootstrap, f"{topic_prefix}pinned-", pinned=True)
    assert delivered and seconds < 5
