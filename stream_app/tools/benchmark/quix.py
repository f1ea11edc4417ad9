"""The Quix Streams peer of the throughput benchmark (issue 9, target 1): a tumbling-window count per video.

A Quix Streams application (`python -m stream_app.tools.benchmark quix-worker PROGRESS EXPECTED`, settings from the
environment as the workers take them) reads the same events published as single records keyed by video_id: on
video-views and video-interactions a tumbling window of WINDOW_S (event time from `ts`, GRACE_S of grace) counts
events per video and sends each closed window's count to an output topic; creator-profiles are only decoded. Its
state is Quix's own (RocksDB, with its changelog topics), its guarantee Quix's default (at-least-once). tansu
refuses idempotent producers (InitProducerId): the producer runs with `enable.idempotence=false`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from stream_app.domain.events import InputTopic
from stream_app.tools.benchmark.throughput import Progress, measure_progress_worker
from stream_app.tools.harness import worker_env

QUIX_NAME = "Quix Streams tumbling-window count"
OUTPUT_TOPIC = "quix-window-counts"


def quix_available() -> bool:
    try:
        import quixstreams  # noqa: F401
    except ImportError:
        return False
    return True


def measure_quix(
    bootstrap: str,
    prefix: str,
    expected_records: int,
    workdir: Path,
    broker_pid: int | None,
    timeout: float,
    window_s: int,
    grace_s: int,
    label: str = "",
) -> Any:
    """The Quix app's throughput over every record under `prefix` (single records: one event each); `label` tells
    passes apart (each its own consumer group)."""
    import sys

    progress_path = workdir / f"quix{label}-progress.json"
    env = worker_env(bootstrap, prefix, f"{prefix}quix{label}", WINDOW_S=str(window_s), GRACE_S=str(grace_s))
    command = [sys.executable, "-m", "stream_app.tools.benchmark", "quix-worker", str(progress_path)]
    command.append(str(expected_records))
    return measure_progress_worker(
        QUIX_NAME, command, env, progress_path, expected_records, workdir, broker_pid, timeout, f"quix{label}"
    )


def _event_ts(value: Any, headers: Any, timestamp: float, timestamp_type: Any) -> int:
    return int(value["ts"])


def build_quix_app(progress: Progress, env: dict[str, str], state_dir: Path) -> Any:
    """The Quix application and its dataframes (run with `app.run()`)."""
    from quixstreams import Application
    from quixstreams.kafka import ConnectionConfig

    class CountingApplication(Application):
        # Partition assignment starts the clock, as Faust's on_partitions_assigned does for the no-op agent.
        def _on_assign(self, consumer: Any, topic_partitions: Any) -> None:
            super()._on_assign(consumer, topic_partitions)
            if topic_partitions:
                progress.assigned()

    prefix = env.get("TOPIC_PREFIX", "")
    protocol = (env.get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").lower()
    connection_settings: dict[str, Any] = {
        "bootstrap_servers": env["KAFKA_BOOTSTRAP"],
        "security_protocol": protocol,
        "sasl_mechanism": env.get("KAFKA_SASL_MECHANISM") or None,
        "sasl_username": env.get("KAFKA_SASL_USERNAME") or None,
        "sasl_password": env.get("KAFKA_SASL_PASSWORD") or None,
        "ssl_ca_location": env.get("KAFKA_SSL_CAFILE") or None,
    }
    connection = ConnectionConfig(**connection_settings)
    app = CountingApplication(
        broker_address=connection,
        consumer_group=env["APP_ID"],
        auto_offset_reset="earliest",
        # tansu answers InitProducerId with an error: no idempotent (or transactional) producer
        producer_extra_config={"enable.idempotence": False},
        # the scorer's test timings (BROKER_SESSION_TIMEOUT/HEARTBEAT_INTERVAL): tansu answers a join after half
        # the session timeout, 22 s with librdkafka's default 45 s
        consumer_extra_config={
            "session.timeout.ms": int(float(env.get("BROKER_SESSION_TIMEOUT", "6")) * 1000),
            "heartbeat.interval.ms": int(float(env.get("BROKER_HEARTBEAT_INTERVAL", "2")) * 1000),
        },
        state_dir=state_dir,
        loglevel="WARNING",
        on_message_processed=lambda topic, partition, offset: progress.add_events(1),
    )
    window = timedelta(seconds=int(env.get("WINDOW_S", "3600")))
    grace = timedelta(seconds=int(env.get("GRACE_S", "300")))
    output = app.topic(prefix + OUTPUT_TOPIC, key_serializer="str", value_serializer="json")
    for topic in (InputTopic.VIEWS, InputTopic.INTERACTIONS):
        source = app.topic(
            prefix + topic.value, key_deserializer="str", value_deserializer="json", timestamp_extractor=_event_ts
        )
        sdf = app.dataframe(source)
        sdf = sdf.tumbling_window(window, grace_ms=grace, name=f"count-{topic.value}").count().final()
        sdf.to_topic(output)
    app.dataframe(app.topic(prefix + InputTopic.PROFILES.value, value_deserializer="json"))
    return app


def quix_worker_main(argv: Sequence[str]) -> int:
    """`python -m stream_app.tools.benchmark quix-worker PROGRESS_FILE EXPECTED_RECORDS` (settings from the env)."""
    path, expected = Path(argv[0]), int(argv[1])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_quix_app(Progress(path, expected), dict(os.environ), Path.cwd() / "quix-state")
    app.run()
    return 0
