"""What every measurement of the benchmark shares: brokers, topics, worker subprocesses, /proc readings, the
scorer's /metrics, and reading a topic's bytes back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_app.domain.errors import StreamAppError
from stream_app.domain.events import InputTopic
from stream_app.edges.localhost import free_port, scrape_metrics

log = logging.getLogger("stream_app.tools.benchmark")

# The scorer is watched through its /metrics, which it renders on a thread of its own: scraping every 0.1 s took
# about 5 % of its samples in a profile, every 0.25 s keeps that near 2 % (and the timing within 0.5 %).
SCRAPE_INTERVAL_S = 0.25
POLL_INTERVAL_S = 0.1
STOP_TIMEOUT_S = 30.0
# How long a measurement may take before the run gives up: start-up plus this many events per second at worst.
START_TIMEOUT_S = 120.0
SLOWEST_EVENTS_PER_S = 200.0
_LOG_TAIL_CHARS = 3_000
_ERROR_LINE_CHARS = 400
INPUT_TOPICS = (InputTopic.PROFILES, InputTopic.VIEWS, InputTopic.INTERACTIONS)


class BenchError(StreamAppError):
    """A measurement could not be completed (a worker died, or did not finish in time)."""


@dataclass
class Measurement:
    """One consumer's run over a whole input."""

    name: str
    events: int
    seconds: float  # first event processed -> last event processed
    startup_s: float | None = None  # launch -> first event processed (start-up, group join, first fetch)
    cpu_s: float | None = None  # CPU time of the consuming process over `seconds`
    broker_cpu_s: float | None = None  # CPU time of the embedded broker over `seconds`
    peak_rss_mib: float | None = None
    failure: str | None = None  # why it did not process every event (its figures then cover what it did)
    # (time.monotonic(), events processed) at each scrape, from the last one that saw none (the scorer only)
    timeline: list[tuple[float, int]] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def timeout_for(events: int) -> float:
    return START_TIMEOUT_S + events / SLOWEST_EVENTS_PER_S


# ---- brokers and topics ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    description: str
    pid: int | None  # the embedded broker's PID (its CPU time is read), None for an external one


@contextlib.contextmanager
def fresh_broker(explicit: str | None) -> Iterator[Broker]:
    """--bootstrap, KAFKA_BOOTSTRAP, else a fresh embedded tansu for this block (it keeps every record in
    memory: each heavy measurement gets its own)."""
    configured = (explicit or os.environ.get("KAFKA_BOOTSTRAP", "")).strip()
    if configured:
        yield Broker(configured, f"external ({configured})", None)
        return
    from stream_app.edges.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield Broker(broker.bootstrap, f"embedded tansu ({tansu_version()}), memory storage, fresh", broker.pid)


def check_configured_broker(explicit: str | None) -> None:
    """Before minutes of measuring: a configured broker (--bootstrap, KAFKA_BOOTSTRAP) answers (BrokerError says
    so in one line otherwise). The embedded brokers are started, and checked, per measurement."""
    configured = (explicit or os.environ.get("KAFKA_BOOTSTRAP", "")).strip()
    if not configured:
        return
    from stream_app.edges.kafka_client import check_broker

    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # a refused connection is reported once, by check_broker's error
    try:
        asyncio.run(check_broker(configured, security_kwargs(), timeout_s=10.0))
    finally:
        client_log.setLevel(level)


def tansu_version() -> str:
    try:
        from stream_app.edges.broker import resolve_tansu_binary

        done = subprocess.run(
            [resolve_tansu_binary(), "--version"], capture_output=True, timeout=10, check=False, text=True
        )
        return done.stdout.strip() or "tansu"
    except (StreamAppError, OSError, subprocess.SubprocessError):
        return "tansu"


def security_kwargs() -> Mapping[str, Any]:
    from stream_app.edges.kafka_client import client_kwargs

    return client_kwargs(os.environ)


def apply_topics(bootstrap: str, prefix: str, app_ids: Sequence[str]) -> None:
    """`topics apply` under `prefix` for each worker app id (the input and output topics once, the internal
    topics of each app)."""
    from stream_app.edges import topics_admin

    async def apply() -> None:
        for app_id in app_ids:
            plan = topics_admin.load_topic_plan(prefix=prefix, app_id=app_id)
            report = await topics_admin.apply(bootstrap, plan, client_kwargs=security_kwargs())
            if report.has_errors:
                raise BenchError("topics apply failed:\n" + topics_admin.format_report(report))

    asyncio.run(apply())


def input_topic_names(prefix: str) -> list[str]:
    return [prefix + topic.value for topic in INPUT_TOPICS]


def changelog_topic_names(app_id: str, prefix: str = "") -> list[str]:
    """The scorer's table changelogs (topics/topics.toml: `{app_id}-*-changelog`)."""
    return [f"{prefix}{app_id}-video-state-changelog", f"{prefix}{app_id}-device-state-changelog"]


async def _topic_partitions(consumer: Any, topic: str) -> list[Any]:
    from aiokafka import TopicPartition

    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(partitions or ())]


@dataclass
class TopicBytes:
    """What a topic holds: records, key + value bytes, and the bytes by offset bucket."""

    records: int = 0
    bytes: int = 0
    by_bucket: dict[int, int] = field(default_factory=dict)


def read_topic_bytes(
    bootstrap: str, topics: Sequence[str], buckets: Mapping[tuple[str, int], Sequence[int]] | None = None
) -> TopicBytes:
    """Every record of `topics` read back (no group), key + value bytes summed; with `buckets` ((topic, partition)
    -> sorted offsets), also summed by bucket: the number of those offsets at or below the record's offset."""
    from bisect import bisect_right

    from aiokafka import AIOKafkaConsumer

    async def read() -> TopicBytes:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            fetch_max_bytes=16 * 1024 * 1024,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            **dict(security_kwargs()),
        )
        await consumer.start()
        total = TopicBytes()
        try:
            tps = [tp for topic in topics for tp in await _topic_partitions(consumer, topic)]
            if not tps:
                return total
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            remaining = {tp for tp in tps if ends[tp] > 0}
            idle_polls = 0
            while remaining and idle_polls < 30:
                batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
                idle_polls = 0 if batches else idle_polls + 1
                for tp, messages in batches.items():
                    for m in messages:
                        size = (len(m.key) if m.key else 0) + (len(m.value) if m.value else 0)
                        total.records += 1
                        total.bytes += size
                        if buckets:
                            bucket = bisect_right(buckets.get((m.topic, m.partition), ()), m.offset)
                            total.by_bucket[bucket] = total.by_bucket.get(bucket, 0) + size
                    if messages and messages[-1].offset + 1 >= ends[tp]:
                        remaining.discard(tp)
        finally:
            await consumer.stop()
        return total

    return asyncio.run(read())


class EndOffsetSampler:
    """The end offsets of some topics' partitions over time (a librdkafka client: one connection, no event loop)."""

    def __init__(self, bootstrap: str, topics: Sequence[str], every_s: float = 1.0) -> None:
        from confluent_kafka import Consumer

        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-offsets", "log_level": 3})
        self.topics = list(topics)
        self.every_s = every_s
        self.partitions: list[tuple[str, int]] = []
        self.samples: list[tuple[float, dict[tuple[str, int], int]]] = []
        self._last = 0.0

    def sample(self) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        now = time.monotonic()
        if now - self._last < self.every_s:
            return
        self._last = now
        try:
            if not self.partitions:
                metadata = self.consumer.list_topics(timeout=2)
                self.partitions = [
                    (topic, p)
                    for topic in self.topics
                    if topic in metadata.topics
                    for p in metadata.topics[topic].partitions
                ]
            ends = {
                tp: self.consumer.get_watermark_offsets(TopicPartition(*tp), timeout=2, cached=False)[1]
                for tp in self.partitions
            }
        except KafkaException:
            return
        self.samples.append((now, ends))

    def offsets_at(self, moments: Sequence[float]) -> dict[tuple[str, int], list[int]]:
        """(topic, partition) -> the end offset last sampled at or before each moment (time.monotonic())."""
        edges: dict[tuple[str, int], list[int]] = {tp: [] for tp in self.partitions}
        for moment in moments:
            before = [ends for t, ends in self.samples if t <= moment] or [self.samples[0][1]] if self.samples else []
            for tp in self.partitions:
                edges[tp].append(before[-1].get(tp, 0) if before else 0)
        return edges

    def close(self) -> None:
        self.consumer.close()


def committed_offsets_reach_end(bootstrap: str, group: str, topics: Sequence[str], timeout_s: float) -> bool:
    """Wait until `group` has committed the end offset of every partition of `topics` (False after timeout_s)."""
    from aiokafka import AIOKafkaConsumer

    async def wait() -> bool:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **dict(security_kwargs())
        )
        await consumer.start()
        try:
            tps = [tp for topic in topics for tp in await _topic_partitions(consumer, topic)]
            ends = await consumer.end_offsets(tps)
            deadline = time.monotonic() + timeout_s
            while True:
                behind = [tp for tp in tps if ends[tp] > 0 and ((await consumer.committed(tp)) or 0) < ends[tp]]
                if not behind:
                    return True
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.5)
        finally:
            await consumer.stop()

    return asyncio.run(wait())


# ---- worker subprocesses ---------------------------------------------------------------------------------------


def worker_env(bootstrap: str, prefix: str, app_id: str, **extra: str) -> dict[str, str]:
    """A worker's environment as the integration tests give it: own topics and group, short tansu timeouts."""
    env = dict(os.environ)
    env.update(
        KAFKA_BOOTSTRAP=bootstrap,
        TOPIC_PREFIX=prefix,
        APP_ID=app_id,
        METRICS_HOST="127.0.0.1",
        METRICS_PORT=str(free_port()),
        BROKER_SESSION_TIMEOUT="6",
        BROKER_HEARTBEAT_INTERVAL="2",
        LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


SCORER_COMMAND = (sys.executable, "-m", "stream_app.cli", "worker")


def profiled(command: Sequence[str], output: Path, rate: int = 100) -> list[str]:
    """`command` run under py-spy, which writes raw (folded) stacks to `output` when it gets SIGINT."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [py_spy, "record", "--nonblocking", "-r", str(rate), "-f", "raw", "-o", str(output), "--", *command]


class WorkerProcess:
    """A worker subprocess run in `workdir` (where Faust puts its data directory), output to a log file there."""

    def __init__(self, command: Sequence[str], env: dict[str, str], workdir: Path, name: str) -> None:
        self.command = list(command)
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.launched = 0.0

    def __enter__(self) -> WorkerProcess:
        with self.log_path.open("ab") as log_file:
            self.launched = time.monotonic()
            self.process = subprocess.Popen(
                self.command, env=self.env, cwd=self.workdir, stdout=log_file, stderr=subprocess.STDOUT
            )
        return self

    def __exit__(self, *exc: object) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        # py-spy writes its profile on SIGINT and stops the worker it runs
        process.send_signal(signal.SIGINT if self.under_py_spy else signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    @property
    def under_py_spy(self) -> bool:
        return Path(self.command[0]).name == "py-spy"

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or committed."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def worker_pid(self) -> int | None:
        """The Python worker's PID: the process itself, or py-spy's child when profiled."""
        if not self.under_py_spy:
            return self.pid
        children = child_pids(self.pid)
        return children[0] if children else None

    def exited(self) -> int | None:
        assert self.process is not None
        return self.process.poll()

    def check_alive(self) -> None:
        status = self.exited()
        if status is not None:
            raise BenchError(f"{self.name} worker exited with status {status}\n{self.tail()}")

    def first_error(self) -> str:
        """The first ERROR or CRITICAL line of the worker's log (what made it stop, usually)."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "log unreadable"
        for line in lines:
            if " ERROR " in line or " CRITICAL " in line:
                return line.strip()[:_ERROR_LINE_CHARS]
        return "none"

    def tail(self) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return f"--- {self.name} log tail ---\n{text[-_LOG_TAIL_CHARS:]}"


# ---- /proc -----------------------------------------------------------------------------------------------------

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (0.0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command name (which may hold spaces) start at field 3; utime and stime are fields 14, 15.
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _status_mib(pid: int | None, field_name: str) -> float | None:
    if pid is None:
        return None
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{field_name}:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def peak_rss_mib(pid: int | None) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB."""
    return _status_mib(pid, "VmHWM")


def rss_mib(pid: int | None) -> float | None:
    """Resident set size now (VmRSS), in MiB."""
    return _status_mib(pid, "VmRSS")


def child_pids(pid: int) -> list[int]:
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(c) for c in (task / "children").read_text().split()]
    return children


def machine_info() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        if match:
            cpu = match.group(1).strip()
    return {
        "cpus": str(os.cpu_count() or "unknown"),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "faust": version_of("faust-streaming"),
        "aiokafka": version_of("aiokafka"),
        "quixstreams": version_of("quixstreams"),
        "load_average": load_average(),
    }


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def version_of(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


# ---- the scorer's /metrics -------------------------------------------------------------------------------------

_EVENTS_TOTAL = re.compile(r"^rewards_events_total(\{.*\})?$")
_LAG = re.compile(r"^rewards_consumer_lag_messages(\{.*\})?$")


def processed_events(samples: Mapping[str, float]) -> int:
    """Events the scorer has processed: every outcome of rewards_events_total plus pending interactions."""
    outcomes = sum(value for name, value in samples.items() if _EVENTS_TOTAL.match(name))
    return int(outcomes + samples.get("rewards_pending_interactions", 0.0))


_TOPIC_LABEL = re.compile(r'topic="([^"]+)"')


def processed_by_topic(samples: Mapping[str, float]) -> dict[str, int]:
    """Events processed per input topic (unprefixed name): its outcomes, plus the pending interactions for
    video-interactions."""
    counts: dict[str, int] = {}
    for name, value in samples.items():
        if _EVENTS_TOTAL.match(name):
            match = _TOPIC_LABEL.search(name)
            topic = match.group(1) if match else ""
            counts[topic] = counts.get(topic, 0) + int(value)
    pending = int(samples.get("rewards_pending_interactions", 0.0))
    topic = InputTopic.INTERACTIONS.value
    counts[topic] = counts.get(topic, 0) + pending
    return counts


def progress_toward(samples: Mapping[str, float], expected_by_topic: Mapping[str, int]) -> tuple[int, bool]:
    """(events processed, capped at each topic's expected count; whether every topic is done). Capped: the
    pending-interactions gauge can run ahead of the settled interactions it later counts."""
    counts = processed_by_topic(samples)
    capped = sum(min(counts.get(topic, 0), expected) for topic, expected in expected_by_topic.items())
    done = all(counts.get(topic, 0) >= expected for topic, expected in expected_by_topic.items())
    return capped, done


def consumer_lag(samples: Mapping[str, float]) -> int:
    """rewards_consumer_lag_messages summed over topics and partitions."""
    return int(sum(value for name, value in samples.items() if _LAG.match(name)))


def scrape(url: str) -> dict[str, float] | None:
    try:
        return scrape_metrics(url)
    except OSError:
        return None  # metrics server not up yet, or gone
