"""Issue 2 end to end: records published by `stream-app publish` and by a foreign client (librdkafka through
confluent-kafka) all reach their outcome; invalid ones reach events-dlq naming the field, with original bytes.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess

import pytest
from confluent_kafka import Producer

from stream_app.domain import jsoncodec
from stream_app.domain.events import InputTopic
from stream_app.domain.partitioning import partition_for
from stream_app.edges.producer import RewardsProducer
from tests.events import interaction_event, view_event
from tests.integration.harness import STREAM_APP, WorkerProcess, jsonl, read_topic, run_cli, scrape, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def view(n: int, video: str, **overrides: object) -> dict[str, object]:
    return view_event(f"e{n}", video, f"u{n}", 1_000 + n, device_id=f"d{n}", **overrides)


def send_with_sdk(bootstrap: str, prefix: str, topic: InputTopic, events: list[dict[str, object]]) -> None:
    """Batch envelopes through the producer SDK, which checks only ids: invalid events reach the worker."""

    async def send() -> None:
        async with RewardsProducer(bootstrap, topic_prefix=prefix) as producer:
            await producer.send(topic, events)

    asyncio.run(send())


def test_every_record_reaches_its_outcome(scenario_env: dict[str, str]) -> None:
    env = dict(scenario_env, IDLE_SETTLE_S="600")  # nothing settles during this test
    prefix = env["TOPIC_PREFIX"]
    bootstrap = env["KAFKA_BOOTSTRAP"]
    # --- through our SDK: 3 valid views and 1 invalid one in batch envelopes (the CLI would refuse the invalid
    # one at its line, below); through our CLI: one non-JSON line sent raw
    bad_view = view(4, "vA", watch_ms=-5)
    rejected = subprocess.run(
        [*STREAM_APP, "publish", "-", "--topic", "video-views"],
        env=env,
        input=jsonl([bad_view]),
        capture_output=True,
        check=False,
    )
    assert rejected.returncode == 1
    assert rejected.stderr.decode() == "line 1: rejected: watch_ms: must be an integer >= 0, got -5\n"
    assert "sent 0 events" in rejected.stdout.decode()
    send_with_sdk(bootstrap, prefix, InputTopic.VIEWS, [view(1, "vA"), view(2, "vB"), view(3, "vA"), bad_view])
    run_cli(env, "publish", "-", "--topic", "video-views", "--raw", stdin=b"this is not json\n")
    send_with_sdk(
        bootstrap,
        prefix,
        InputTopic.PROFILES,
        [
            {
                "creator_id": "c1",
                "followers": 20_000,
                "views_30d": 200_000,
                "adult": True,
                "standing": "good",
                "ts": 0,
            },
            {"creator_id": "c2", "followers": 1, "views_30d": 1, "adult": "yes", "standing": "good", "ts": 0},
        ],
    )
    # --- through a client we did not write (librdkafka), Java-compatible partitioner as the README asks
    foreign = Producer({"bootstrap.servers": bootstrap, "partitioner": "murmur2_random"})
    views = f"{prefix}video-views"
    foreign.produce(views, key=b"vC", value=jsoncodec.dumps(view(5, "vC")))  # valid single object
    foreign.produce(views, key=b"vWRONG", value=jsoncodec.dumps(view(6, "vD")))  # key differs from video_id
    bad_bytes = b'{"event_id": "\xff\xfe"}'
    foreign.produce(views, key=b"vE", value=bad_bytes)  # not UTF-8
    right = partition_for(b"vF", 4)
    foreign.produce(views, key=b"vF", value=jsoncodec.dumps(view(7, "vF")), partition=(right + 1) % 4)
    foreign.produce(
        f"{prefix}video-interactions",
        key=b"vC",
        value=jsoncodec.dumps(interaction_event("i1", "vC", "u5", 1_010, device_id="d5")),
    )
    assert foreign.flush(10) == 0

    with WorkerProcess(env) as worker:
        dead = read_topic(bootstrap, f"{prefix}events-dlq", lambda r: len(r) >= 6, timeout=90)
        metrics = wait_for(
            lambda: (
                (m := scrape(worker.metrics_url)).get('rewards_events_total{outcome="accepted",topic="video-views"}')
                == 4
                and m
            ),
            30,
            "accepted views",
        )

    # the SDK groups events by partition: the bad view's index is its place among the events of vA's partition
    same_partition = [v for v in ("vA", "vB", "vA", "vA") if partition_for(v.encode(), 4) == partition_for(b"vA", 4)]
    errors = {(d["source_topic"], d["index"], d["error"].split(":")[0]) for d in dead}
    assert errors == {
        (views, len(same_partition) - 1, "watch_ms"),
        (views, None, "value"),  # not JSON
        (views, None, "key"),  # key differs from video_id
        (views, None, "value"),  # not UTF-8
        (views, None, "video_id"),  # wrong partition
        (f"{prefix}creator-profiles", 0 if partition_for(b"c1", 4) != partition_for(b"c2", 4) else 1, "adult"),
    }
    by_error = {d["error"]: d for d in dead}
    [not_json] = [d for d in dead if d["value"] == "this is not json"]
    assert not_json["error"].startswith("value: not JSON")
    [not_utf8] = [d for d in dead if d.get("value_encoding") == "base64"]
    assert base64.b64decode(not_utf8["value"]) == bad_bytes and not_utf8["key"] == "vE"
    [wrong_partition] = [e for e in by_error if e.startswith("video_id")]
    assert f"maps to partition {right}" in wrong_partition
    [bad_element] = [d for d in dead if d["error"].startswith("watch_ms")]
    assert jsoncodec.loads(bad_element["value"]) == view(4, "vA", watch_ms=-5)
    assert bad_element["error"] == "watch_ms: must be an integer >= 0, got -5"

    def count(topic: str, outcome: str) -> float:
        return metrics[f'rewards_events_total{{outcome="{outcome}",topic="{topic}"}}']

    assert (count("video-views", "accepted"), count("video-views", "invalid")) == (4, 5)
    assert (count("creator-profiles", "accepted"), count("creator-profiles", "invalid")) == (1, 1)
    # the interaction waits for its window to settle (SPEC §4): pending, not yet counted
    assert count("video-interactions", "accepted") + count("video-interactions", "suspicious") == 0
    assert metrics["rewards_pending_interactions"] == 1
