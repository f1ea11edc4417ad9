"""Table state lands on the changelog partition it is read back from: a video's head on its own partition, a
partition's journal segments and meta on that partition (written inside batches via faust_compat.writing_for)."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from stream_app.domain import jsoncodec
from stream_app.domain.codec import Kind, decode
from stream_app.domain.partitioning import partition_for
from stream_app.streaming.tables import head_key, meta_key
from tests.events import view_event
from tests.integration.harness import WorkerProcess, read_topic


def _stored(value: bytes) -> dict[str, object]:
    kind = {k.value: k for k in Kind}[value[2:3]]
    return {"kind": kind.name, "payload": decode(kind, value)}


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_video_state_is_written_to_the_partition_its_events_come_from(scenario_env: dict[str, str]) -> None:
    env = dict(scenario_env, IDLE_SETTLE_S="600")
    bootstrap, prefix = env["KAFKA_BOOTSTRAP"], env["TOPIC_PREFIX"]
    videos = [f"video-{n}" for n in range(16)]
    assert {partition_for(v.encode(), 4) for v in videos} == {0, 1, 2, 3}  # the test covers every partition
    producer = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    for n, video in enumerate(videos):
        view = view_event(f"e{n}", video, f"u{n}", 1_000 + n, device_id=f"d{n}", video_ms=90_000)
        producer.produce(f"{prefix}video-views", key=video.encode(), value=jsoncodec.dumps(view))
    assert producer.flush(10) == 0
    changelog = f"{prefix}{env['APP_ID']}-video-state-changelog"

    def heads(records: list[dict[str, object]]) -> dict[str, int]:
        """video -> partition of the segment record carrying its head"""
        return {
            head[0]: r["_partition"]  # type: ignore[misc]
            for r in records
            if r["kind"] == "SEGMENT"
            for head in r["payload"][3]  # type: ignore[index]
        }

    def complete(records: list[dict[str, object]]) -> bool:
        metas = {r["_partition"] for r in records if r["kind"] == "META"}
        return set(heads(records)) >= set(videos) and metas == {0, 1, 2, 3}

    with WorkerProcess(env):
        records = read_topic(bootstrap, changelog, complete, timeout=60, decode=_stored)
    assert heads(records) == {video: partition_for(video.encode(), 4) for video in videos}
    for record in records:
        if record["kind"] == "HEAD":
            video = record["payload"][0]  # type: ignore[index]
            assert record["_key"] == head_key(video)
            assert record["_partition"] == partition_for(video.encode(), 4)
        elif record["kind"] == "META":
            assert record["_key"] == meta_key(record["_partition"])  # type: ignore[arg-type]
        else:
            assert record["kind"] == "SEGMENT"
            assert record["_key"].startswith(b"\xffj%d:" % record["_partition"])  # type: ignore[union-attr]
            for op in record["payload"][2]:  # type: ignore[index]
                assert partition_for(op[1].encode(), 4) == record["_partition"]
