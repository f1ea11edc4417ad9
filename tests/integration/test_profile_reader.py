"""The profile reader on a real broker: `sync` returns only once every profile the broker held when it was called
is in the history, which is what a settling batch waits for (SPEC §5: the profile in effect at the window's end)."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaProducer

from stream_app.domain import jsoncodec
from stream_app.domain.partitioning import partition_for
from stream_app.domain.policy import Policy
from stream_app.domain.profiles import ProfileHistory
from stream_app.streaming.profile_reader import ProfileReader

pytestmark = pytest.mark.integration


def profile(creator: str, ts: int) -> bytes:
    return jsoncodec.dumps(
        {"creator_id": creator, "followers": 50_000, "views_30d": 500_000, "adult": True, "standing": "good", "ts": ts}
    )


async def _sync_sees_what_was_just_published(bootstrap: str, topic: str) -> list[int]:
    history = ProfileHistory(Policy())
    reader = ProfileReader(bootstrap, topic, history, {})
    task = asyncio.create_task(reader.run())
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=0)
    await producer.start()
    seen = []
    try:
        await asyncio.wait_for(reader.caught_up.wait(), 30)
        for round_ in range(5):
            creators = [f"c{round_}-{i}" for i in range(20)]
            for creator in creators:  # acknowledged, one record at a time, then sync at once
                key = creator.encode()
                await producer.send_and_wait(topic, profile(creator, 1_000), key=key, partition=partition_for(key, 4))
            assert await reader.sync(timeout_s=30)
            seen.append(sum(1 for c in creators if history.latest(c) is not None))
        # with nothing new, sync returns at once
        started = asyncio.get_running_loop().time()
        assert await reader.sync(timeout_s=30)
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        await producer.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return seen


def test_sync_returns_once_every_profile_the_broker_holds_is_in_the_history(
    scenario_env: dict[str, str], bootstrap: str
) -> None:
    topic = scenario_env["TOPIC_PREFIX"] + "creator-profiles"
    assert asyncio.run(_sync_sees_what_was_just_published(bootstrap, topic)) == [20] * 5
