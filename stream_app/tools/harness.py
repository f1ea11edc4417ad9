"""The one harness every tool runs the scorer with (the benchmark, the quality report, the demo): a fresh broker or
the configured one, topics applied under a prefix, `stream-app worker` subprocesses and their logs, the scorer's
/metrics read as progress, topics read back to their end, /proc readings of a process, the machine a run was on,
and the Markdown section a run writes into a results file.

What belongs to one tool only (the benchmark's measurements, the report's join to labels) stays in that tool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_app.domain.errors import StreamAppError
from stream_app.domain.events import InputTopic
from stream_app.edges.localhost import free_port, scrape_metrics
from stream_app.edges.metrics import HEALTH_METRIC_NAMES
from stream_app.edges.runtime import core_description

# SIGTERM (SIGINT under py-spy), then SIGKILL after this long; a killed process gets KILL_WAIT_S to go.
STOP_TIMEOUT_S = 30.0
KILL_WAIT_S = 10.0
READ_TIMEOUT_S = 300.0  # reading a topic back to its end
_LOG_TAIL_CHARS = 3_000
_ERROR_LINE_CHARS = 400
INPUT_TOPICS = (InputTopic.PROFILES, InputTopic.VIEWS, InputTopic.INTERACTIONS)
SCORER_COMMAND = (sys.executable, "-m", "stream_app.cli", "worker")


class ToolError(StreamAppError):
    """A tool's run could not be completed: a worker died or stalled, a topic could not be read, topics could not
    be applied. Each tool's own error class derives from it."""


def timeout_for(events: int, *, start_s: float, slowest_events_per_s: float) -> float:
    """How long a run over `events` may take before it gives up: start-up plus the events at the slowest rate."""
    return start_s + events / slowest_events_per_s


def progress_log(logger: logging.Logger, label: str) -> logging.Logger:
    """`logger` writing `HH:MM:SS label: message` lines to stderr (once), not through the root logger: a tool's
    progress lines, while the Kafka clients' own INFO logs stay quiet."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"%(asctime)s {label}: %(message)s", datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Within the block SIGTERM ends the run as Ctrl-C does: the workers and the embedded broker are stopped on the
    way out (their context managers run)."""
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- brokers and topics ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Broker:
    bootstrap: str
    description: str
    pid: int | None  # the embedded broker's PID (its CPU time is read), None for an external one


def configured_bootstrap(explicit: str | None) -> str:
    """--bootstrap, else KAFKA_BOOTSTRAP, else '' (an embedded broker)."""
    return (explicit or os.environ.get("KAFKA_BOOTSTRAP", "")).strip()


@contextlib.contextmanager
def fresh_broker(explicit: str | None) -> Iterator[Broker]:
    """--bootstrap, KAFKA_BOOTSTRAP, else a fresh embedded tansu for this block (it keeps every record in
    memory: each heavy run gets its own)."""
    configured = configured_bootstrap(explicit)
    if configured:
        yield Broker(configured, f"external ({configured})", None)
        return
    from stream_app.edges.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield Broker(broker.bootstrap, f"embedded tansu ({tansu_version()}), memory storage, fresh", broker.pid)


def check_configured_broker(explicit: str | None) -> None:
    """Before minutes of measuring: a configured broker (--bootstrap, KAFKA_BOOTSTRAP) answers (BrokerError says
    so in one line otherwise). Embedded brokers are started, and checked, per run."""
    configured = configured_bootstrap(explicit)
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


def security_kwargs(env: Mapping[str, str] | None = None) -> Mapping[str, Any]:
    """The Kafka clients' security settings from `env` (default: this process's environment)."""
    from stream_app.edges.kafka_client import client_kwargs

    return client_kwargs(os.environ if env is None else env)


def apply_topics(bootstrap: str, prefix: str, app_ids: Sequence[str]) -> None:
    """`topics apply` under `prefix` for each worker app id (the input and output topics once, the internal
    topics of each app)."""
    from stream_app.edges import topics_admin

    async def apply() -> None:
        for app_id in app_ids:
            plan = topics_admin.load_topic_plan(prefix=prefix, app_id=app_id)
            report = await topics_admin.apply(bootstrap, plan, client_kwargs=security_kwargs())
            if report.has_errors:
                raise ToolError("topics apply failed:\n" + topics_admin.format_report(report))

    asyncio.run(apply())


def input_topic_names(prefix: str) -> list[str]:
    return [prefix + topic.value for topic in INPUT_TOPICS]


async def topic_partitions(consumer: Any, topic: str) -> list[Any]:
    """`topic`'s partitions as aiokafka TopicPartitions (metadata refreshed once if the client has none yet)."""
    from aiokafka import TopicPartition

    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
    return [TopicPartition(topic, p) for p in sorted(partitions or ())]


async def each_record(
    bootstrap: str, topics: Sequence[str], security: Mapping[str, Any], *, timeout_s: float = READ_TIMEOUT_S
) -> AsyncIterator[Any]:
    """Every record of `topics` up to their end offsets when reading starts, read without a group (offset order
    within a partition). ToolError when a topic has no partitions or the end is not reached in `timeout_s`."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        **dict(security),
    )
    await consumer.start()
    try:
        tps = []
        for topic in topics:
            found = await topic_partitions(consumer, topic)
            if not found:
                raise ToolError(f"topic {topic} has no partitions")
            tps += found
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        read, deadline = 0, time.monotonic() + timeout_s
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000, max_records=10_000)
            for tp, messages in batches.items():
                for message in messages:
                    yield message
                read += len(messages)
                if messages and messages[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            if remaining and time.monotonic() > deadline:
                raise ToolError(f"reading {', '.join(topics)}: {read} records after {timeout_s:.0f} s, not at the end")
    finally:
        await consumer.stop()


Record = tuple[int, int, bytes | None, bytes | None]  # partition, offset, key, value


async def read_all(bootstrap: str, topic: str, security: Mapping[str, Any]) -> list[Record]:
    """Every record of `topic` up to its end offsets now, in (partition, offset) order."""
    records = [(m.partition, m.offset, m.key, m.value) async for m in each_record(bootstrap, [topic], security)]
    records.sort(key=lambda r: (r[0], r[1]))
    return records


@dataclass
class TopicBytes:
    """What topics hold: records, key + value bytes, and the bytes by offset bucket."""

    records: int = 0
    bytes: int = 0
    by_bucket: dict[int, int] = field(default_factory=dict)


def read_topic_bytes(bootstrap: str, topics: Sequence[str], edges_ms: Sequence[int] = ()) -> TopicBytes:
    """Every record of `topics` read back, key + value bytes summed; with `edges_ms` (sorted wall-clock moments,
    ms since the epoch), also summed by bucket: the number of those moments at or before the record's timestamp
    (its producer's create time: when the writer appended it)."""
    from bisect import bisect_right

    async def read() -> TopicBytes:
        total = TopicBytes()
        async for m in each_record(bootstrap, topics, security_kwargs()):
            size = (len(m.key) if m.key else 0) + (len(m.value) if m.value else 0)
            total.records += 1
            total.bytes += size
            if edges_ms:
                bucket = bisect_right(edges_ms, m.timestamp)
                total.by_bucket[bucket] = total.by_bucket.get(bucket, 0) + size
        return total

    return asyncio.run(read())


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


def metrics_url(env: Mapping[str, str]) -> str:
    """The /metrics of the worker run with `env` (worker_env serves it on loopback)."""
    return f"http://127.0.0.1:{env['METRICS_PORT']}/metrics"


# What a tool watching the worker's progress reads: the rest of /metrics (process, platform and GC collectors, the
# histograms) costs the worker more to render than the tool needs, several times a second.
READY_METRIC = "rewards_worker_ready"
PROGRESS_METRICS = (
    "rewards_events_total",
    "rewards_pending_interactions",
    "rewards_consumer_lag_messages",
    READY_METRIC,
)


def progress_url(url: str) -> str:
    """`url` (a worker's /metrics) restricted to PROGRESS_METRICS (the client library's `name[]` parameter): only
    the collectors of those families run."""
    return url + "?" + "&".join(f"name[]={name}" for name in PROGRESS_METRICS)


class WorkerProcess:
    """A worker subprocess run in `workdir` (where Faust puts its data directory), its output in `{name}.log`
    there; leaving the block stops it (SIGTERM, SIGINT to py-spy, SIGKILL after STOP_TIMEOUT_S)."""

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
            self.kill()

    @property
    def under_py_spy(self) -> bool:
        return Path(self.command[0]).name == "py-spy"

    def kill(self) -> None:
        """SIGKILL, as a crash: nothing is flushed or committed."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(KILL_WAIT_S)

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
            raise ToolError(f"{self.name} worker exited with status {status}: {self.tail()}")

    def _log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def first_error(self) -> str:
        """The first ERROR or CRITICAL line of the worker's log (what made it stop, usually)."""
        for line in self._log_lines():
            if " ERROR " in line or " CRITICAL " in line:
                return line.strip()[:_ERROR_LINE_CHARS]
        return "none"

    def tail(self) -> str:
        """What stopped the worker first (its first CRITICAL line and the last exception line of its log), then
        the end of its log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        lines = text.splitlines()
        critical = next((line for line in lines if " CRITICAL " in line), None)
        exception = next((line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception)\b", line)), None)
        summary = " / ".join(line.strip() for line in (critical, exception) if line)
        return (summary + "\n" if summary else "") + f"--- {self.name} log tail ---\n{text[-_LOG_TAIL_CHARS:]}"


# ---- /proc readings of a process -------------------------------------------------------------------------------

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


def machine_busy_seconds() -> float | None:
    """CPU seconds every CPU of the machine has spent busy so far (all but idle and iowait; /proc/stat), None when
    unknown. Its growth over a span, divided by the span and os.cpu_count(), is how busy the machine was."""
    try:
        line = Path("/proc/stat").read_text().split("\n", 1)[0]
    except OSError:
        return None
    name, *ticks = line.split()
    if name != "cpu" or len(ticks) < 5:
        return None
    values = [int(t) for t in ticks[:8]]
    return (sum(values) - values[3] - values[4]) / _CLOCK_TICKS


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


# ---- the machine -----------------------------------------------------------------------------------------------


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
        "core": core_description(),
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
_TOPIC_LABEL = re.compile(r'topic="([^"]+)"')


def scrape(url: str, timeout_s: float = 5.0) -> dict[str, float] | None:
    """The samples at `url`, or None when its metrics server is not up yet (or gone)."""
    try:
        return scrape_metrics(url, timeout_s)
    except OSError:
        return None


def outcomes(samples: Mapping[str, float]) -> int:
    """Input events with an outcome: rewards_events_total summed over topics and outcomes."""
    return int(sum(value for name, value in samples.items() if _EVENTS_TOTAL.match(name)))


def processed_events(samples: Mapping[str, float]) -> int:
    """Events the scorer has processed: every outcome of rewards_events_total plus pending interactions."""
    return outcomes(samples) + int(samples.get("rewards_pending_interactions", 0.0))


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


def scoring_signature(samples: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    """Every rewards_* sample that moves with scoring (not lag, which moves with time, nor the worker-health
    metrics: a heartbeat's age moves every second). Unchanged for a while: the worker has gone quiet."""
    return tuple(
        sorted(
            (name, value)
            for name, value in samples.items()
            if name.startswith("rewards_")
            and "lag" not in (family := name.split("{", 1)[0])
            and family not in HEALTH_METRIC_NAMES
        )
    )


# ---- results files ---------------------------------------------------------------------------------------------

RESULTS_TITLE = "# Benchmark results"


def replace_section(text: str, section: str, heading: str | None = None) -> str:
    """`text` with its `heading` section (default: the section's first line; up to the next `## ` heading)
    replaced by `section`, or it appended."""
    heading = heading if heading is not None else section.splitlines()[0].rstrip()
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    body = section.rstrip("\n") + "\n"
    if start is None:
        head = text.rstrip("\n")
        return (head + "\n\n" if head else f"{RESULTS_TITLE}\n\n") + body
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    after = "".join(lines[end:])
    return "".join(lines[:start]) + body + ("\n" + after if after else "")


def write_section(path: Path, section: str) -> None:
    """Write `section` (a `## ` heading and its body) into the Markdown file at `path`: it replaces the section of
    that heading, the others are kept; a new file starts with RESULTS_TITLE."""
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(existing, section), encoding="utf-8")
