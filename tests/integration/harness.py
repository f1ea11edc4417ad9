"""Helpers for real-broker tests: run `stream-app` commands and workers as subprocesses, read output topics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import confluent_kafka
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.domain import jsoncodec
from stream_app.edges.localhost import free_port, scrape_metrics

STREAM_APP = [sys.executable, "-m", "stream_app.cli"]


def worker_env(bootstrap: str, prefix: str, **extra: str) -> dict[str, str]:
    """Environment of a test worker: its own topics and group, short timeouts for tansu, loopback metrics."""
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP=bootstrap,
        TOPIC_PREFIX=prefix,
        APP_ID=f"{prefix}app",
        METRICS_HOST="127.0.0.1",
        METRICS_PORT=str(free_port()),
        BROKER_SESSION_TIMEOUT="6",
        BROKER_HEARTBEAT_INTERVAL="2",
        LOG_LEVEL=os.environ.get("TEST_WORKER_LOG_LEVEL", "INFO"),
    )
    env.update(extra)
    return env


def run_cli(env: Mapping[str, str], *args: str, stdin: bytes | None = None, timeout: float = 60) -> str:
    """Run `stream-app ARGS` to completion; return stdout; fail with its stderr on a non-zero exit."""
    done = subprocess.run(
        [*STREAM_APP, *args], env=dict(env), input=stdin, capture_output=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"stream-app {' '.join(args)} exited {done.returncode}: {done.stderr.decode()}")
    return done.stdout.decode()


@dataclass
class WorkerProcess:
    env: dict[str, str]
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="worker-", suffix=".log")[1]))
    process: subprocess.Popen[bytes] | None = None
    # Faust keeps its data directory (`{APP_ID}-data`, RocksDB state) under the working directory: by default one
    # per APP_ID under the system's temp directory, shared by the restarts of an app, never in the checkout.
    cwd: Path | None = None

    def start(self) -> WorkerProcess:
        if self.cwd is None:
            self.cwd = Path(tempfile.gettempdir()) / "stream-app-test-workers" / self.env.get("APP_ID", "default")
            self.cwd.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*STREAM_APP, "worker"], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd
        )
        log.close()
        return self

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.env['METRICS_PORT']}/metrics"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return self.process.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


scrape = scrape_metrics  # Prometheus text -> {'name{labels}': value}


def owns_partitions(worker: WorkerProcess) -> bool:
    """True once the worker reports consumer lag for some input partition (it owns partitions)."""
    return any(name.startswith("rewards_consumer_lag_messages{") for name in scrape(worker.metrics_url))


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the thing we wait for may not be up yet
            last_error = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_error!r})")


async def read_topic_async(
    bootstrap: str,
    topic: str,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float,
    decode: Callable[[bytes], Any] = jsoncodec.loads,
) -> list[dict[str, Any]]:
    """Read every record of `topic` from the start until `until(records)` holds; values decoded by `decode`
    (JSON unless told)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    records: list[dict[str, Any]] = []
    try:
        partitions = None
        deadline = time.monotonic() + timeout
        while not partitions:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                await asyncio.sleep(0.2)
            if time.monotonic() > deadline:
                raise AssertionError(f"topic {topic} has no partitions")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while True:
            batches = await consumer.getmany(*tps, timeout_ms=300)
            for tp, messages in batches.items():
                for message in messages:
                    value = None if message.value is None else decode(message.value)
                    records.append(
                        {
                            "_key": message.key,
                            "_partition": tp.partition,
                            "_offset": message.offset,
                            **(value if isinstance(value, dict) else {"_value": value}),
                        }
                    )
            if until(records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out reading {topic}: {len(records)} records, last: {records[-3:]}")
    finally:
        await consumer.stop()


def read_topic(
    bootstrap: str,
    topic: str,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 60,
    decode: Callable[[bytes], Any] = jsoncodec.loads,
) -> list[dict[str, Any]]:
    return asyncio.run(read_topic_async(bootstrap, topic, until, timeout, decode))


def latest_by_key(records: list[dict[str, Any]], field_name: str = "version") -> dict[str, dict[str, Any]]:
    """Newest record per video by `version` (what a compacted-topic reader keeps)."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        key = record["video_id"]
        if key not in latest or record[field_name] >= latest[key][field_name]:
            latest[key] = record
    return latest


def jsonl(events: list[dict[str, Any]]) -> bytes:
    return b"".join(jsoncodec.dumps(e) + b"\n" for e in events)


@dataclass(frozen=True)
class RawRecord:
    """One record as it is on the broker."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class TopicReader:
    """Reads topics from their beginning, outside any consumer group, and keeps what it read: each `poll` adds the
    records that arrived since. librdkafka (a client we did not write), so it runs without an event loop."""

    def __init__(self, bootstrap: str, topics: Iterable[str]) -> None:
        self.topics = list(topics)
        self._consumer = confluent_kafka.Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",  # required by librdkafka; never joined (assign only)
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
        assignment = []
        for topic in self.topics:
            metadata = self._consumer.list_topics(topic, timeout=10).topics[topic]
            assert metadata.error is None and metadata.partitions, f"topic {topic} is not readable: {metadata.error}"
            assignment += [
                confluent_kafka.TopicPartition(topic, p, confluent_kafka.OFFSET_BEGINNING) for p in metadata.partitions
            ]
        self._consumer.assign(assignment)
        self.raw: dict[str, list[RawRecord]] = {topic: [] for topic in self.topics}

    def poll(self, seconds: float = 0.5) -> int:
        """Read for up to `seconds` (less once nothing more comes); how many records arrived."""
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline:
            messages = self._consumer.consume(num_messages=5000, timeout=0.2)
            for message in messages:
                error = message.error()
                if error is not None:
                    raise AssertionError(f"reading {message.topic()}: {error}")
                self.raw[message.topic()].append(
                    RawRecord(
                        message.topic(),
                        message.partition(),
                        message.offset(),
                        message.key(),
                        message.value(),
                        message.timestamp()[1],
                    )
                )
            count += len(messages)
            if not messages and count:
                break
        return count

    def records(self, topic: str) -> list[dict[str, Any]]:
        """The records read from `topic` so far, JSON values with `_partition`, `_offset` and `_key` added."""
        decoded = []
        for record in self.raw[topic]:
            value = jsoncodec.loads(record.value or b"null")
            fields = value if isinstance(value, dict) else {"_value": value}
            decoded.append({"_key": record.key, "_partition": record.partition, "_offset": record.offset, **fields})
        return decoded

    def read_until(self, predicate: Callable[[TopicReader], bool], timeout: float, what: str) -> None:
        """Poll until `predicate(self)` holds; AssertionError naming `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                counts = {topic: len(records) for topic, records in self.raw.items()}
                raise AssertionError(f"timed out after {timeout}s waiting for {what} (records read: {counts})")
            self.poll()

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
