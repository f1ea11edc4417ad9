"""Table state lands on the changelog partition it is read back from: keys are the raw record key bytes, so Kafka's
partitioner (use_partitioner=True, as table writes inside batches need) puts a video's state on its own partition.
"""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from stream_app.domain import jsoncodec
from stream_app.edges.partitioner import partition_for
from stream_app.streaming.tables import partition_state_key
from tests.integration.harness import WorkerProcess, read_topic


@pytest.mark.parametrize("partitions", [1, 4, 12])
def test_partition_state_key_maps_to_its_partition(partitions: int) -> None:
    keys = [partition_state_key(p, partitions) for p in range(partitions)]
    assert [partition_for(k, partitions) for k in keys] == list(range(partitions))
    assert len(set(keys)) == partitions


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_video_state_is_written_to_the_partition_its_events_come_from(scenario_env: dict[str, str]) -> None:
    env = dict(scenario_env, IDLE_SETTLE_S="600")
    bootstrap, prefix = env["KAFKA_BOOTSTRAP"], env["TOPIC_PREFIX"]
    videos = [f"video-{n}" for n in range(16)]
    assert {partition_for(v.encode(), 4) for v in videos} == {0, 1, 2, 3}  # the test covers every partition
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    for n, video in enumerate(videos):
        view = {
            "event_id": f"e{n}",
            "video_id": video,
            "creator_id": "c1",
            "viewer_id": f"u{n}",
            "device_id": f"d{n}",
            "ts": 1_000 + n,
            "watch_ms": 10_000,
            "video_ms": 90_000,
            "source": "for_you",
            "region": "US",
        }
        producer.produce(f"{prefix}video-views", key=video.encode(), value=jsoncodec.dumps(view))
    assert producer.flush(10) == 0
    changelog = f"{prefix}{env['APP_ID']}-video-state-changelog"
    with WorkerProcess(env):
        records = read_topic(bootstrap, changelog, lambda r: {x["video_id"] for x in r} >= set(videos), timeout=60)
    for record in records:
        assert record["_key"] == record["video_id"].encode()
        assert record["_partition"] == partition_for(record["_key"], 4)
    partition_records = read_topic(
        bootstrap, f"{prefix}{env['APP_ID']}-partition-state-changelog", lambda r: len(r) >= 4, timeout=30
    )
    assert {(r["_key"], r["_partition"]) for r in partition_records} == {
        (partition_state_key(p, 4), p) for p in range(4)
    }
