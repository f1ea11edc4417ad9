"""Throughput benchmark behind `stream-app bench` (SPEC §10): the scorer against a Faust agent that does no work
and against the raw-consumer ceiling, in one run, on the same pre-published input.

One run: start a fresh embedded broker (or use --bootstrap / KAFKA_BOOTSTRAP), create the topics under a unique
TOPIC_PREFIX, publish the simulator's organic traffic (profiles first) with the producer SDK, then measure, one
after another on that same input:

1. raw consumer ceiling: one aiokafka consumer (no group) reads every record and decodes it with orjson;
2. no-op Faust agent: a minimal Faust app (this module, `python -m stream_app.benchmark noop-worker`) whose
   agents take batches of 500 and only decode them, run as a worker subprocess; it reports progress in a file;
3. the scorer: `stream-app worker` as a subprocess, watched through its /metrics until every published event
   has an outcome or is a pending interaction.

Each throughput is counted from the first event processed to the last, so start-up and the consumer-group join
(which tansu answers only after half the session timeout) are not counted. Results go to the `## Throughput`
section of --output (other sections of that file are left alone).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream_app.domain.errors import StreamAppError
from stream_app.domain.events import InputTopic
from stream_app.edges.cli_args import USAGE_ERROR, OneLineParser, positive_float, positive_int
from stream_app.edges.localhost import free_port, scrape_metrics

log = logging.getLogger(__name__)

DEFAULT_EVENTS = 200_000
DEFAULT_OUTPUT = Path("bench/RESULTS.md")
DEFAULT_RATE = 500.0  # simulated events per second of event time: 200k events span 400 s of event time
SEED = 1
SECTION_HEADING = "## Throughput"
RESULTS_TITLE = "# Benchmark results"

NOOP_BATCH_EVENTS = 500  # the scorer's agents take batches of this size too (streaming/app.py)
NOOP_BATCH_WITHIN_S = 0.05
POLL_INTERVAL_S = 0.1
# The scorer is watched through its /metrics, which it renders on a thread of its own: scraping every 0.1 s took
# about 5 % of its samples in a profile, every 0.25 s keeps that near 2 % (and the timing within 0.5 %).
SCRAPE_INTERVAL_S = 0.25
PROGRESS_WRITE_INTERVAL_S = 0.25
STOP_TIMEOUT_S = 30.0
# How long a measurement may take before the run gives up: start-up plus this many events per second at worst.
START_TIMEOUT_S = 120.0
SLOWEST_EVENTS_PER_S = 200.0
# Slack on the simulated duration, so the generator yields at least the requested number of traffic events.
_DURATION_SLACK = 1.25
_LOG_TAIL_CHARS = 3_000
_ERROR_LINE_CHARS = 400
_TOPICS = (InputTopic.PROFILES, InputTopic.VIEWS, InputTopic.INTERACTIONS)


class BenchError(StreamAppError):
    """A measurement could not be completed (a worker died, or did not finish in time)."""


# ---- results ---------------------------------------------------------------------------------------------------


@dataclass
class InputSize:
    """What was published: events (envelope elements count one each), Kafka records and value bytes, by topic."""

    events: int = 0
    records: int = 0
    bytes: int = 0
    events_by_topic: dict[str, int] = field(default_factory=dict)
    event_time_span_s: float = 0.0
    publish_s: float = 0.0


@dataclass
class Measurement:
    """One consumer's run over the whole input."""

    name: str
    events: int
    seconds: float  # first event processed -> last event processed
    startup_s: float | None = None  # launch -> first event processed (start-up, group join, first fetch)
    cpu_s: float | None = None  # CPU time of the consuming process over `seconds`
    broker_cpu_s: float | None = None  # CPU time of the embedded broker over `seconds`
    peak_rss_mib: float | None = None
    failure: str | None = None  # why it did not process every event (its figures then cover what it did)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else math.inf


@dataclass
class BenchResult:
    input: InputSize
    raw: Measurement
    noop: Measurement
    scorer: Measurement
    mode: str
    broker: str
    command: str
    machine: dict[str, str]
    date: str


# ---- command line ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="stream-app bench",
        description="Throughput of the scorer against a no-op Faust agent and the raw-consumer ceiling, in one run.",
    )
    parser.add_argument(
        "--events", type=positive_int, default=DEFAULT_EVENTS, help="view and interaction events to publish"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file for the results")
    parser.add_argument(
        "--bootstrap",
        default=None,
        help="Kafka bootstrap (default: KAFKA_BOOTSTRAP, else a fresh embedded broker for this run)",
    )
    parser.add_argument("--mode", choices=("envelope", "single"), default="envelope", help="how input is published")
    parser.add_argument(
        "--rate",
        type=positive_float,
        default=DEFAULT_RATE,
        help="simulated events per second of event time (input shape)",
    )
    return parser


def run_bench(argv: list[str] | None = None) -> int:
    """`stream-app bench [--events N] [--output PATH] [--bootstrap HOST:PORT] [--mode envelope|single]`."""
    if argv and argv[0] == "--":  # `stream-app bench -- --events N` hands the separator on
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    if not log.handlers:  # progress lines of the bench only; the Kafka clients' own INFO logs stay quiet
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s bench: %(message)s", datefmt="%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    command = "stream-app bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    if not args.output.parent.is_dir():  # found out now, not after minutes of measuring
        print(f"stream-app bench: --output {args.output}: no directory {args.output.parent}", file=sys.stderr)
        return USAGE_ERROR
    try:
        with _broker(args.bootstrap) as (bootstrap, broker_desc, broker_pid):
            result = run_measurements(
                bootstrap,
                events=args.events,
                mode=args.mode,
                rate=args.rate,
                broker_desc=broker_desc,
                broker_pid=broker_pid,
                command=command.strip(),
            )
    except BenchError as exc:  # a measurement failed: the bench ran, its subject did not hold up
        print(f"stream-app bench: {exc}", file=sys.stderr)
        return 1
    except StreamAppError as exc:  # bad settings or an unreachable broker: nothing was measured
        print(f"stream-app bench: {exc}", file=sys.stderr)
        return USAGE_ERROR
    write_section(args.output, format_section(result))
    print(format_summary(result))
    print(f"results written to {args.output} ({SECTION_HEADING})")
    return 1 if result.scorer.failure else 0


@contextlib.contextmanager
def _broker(explicit: str | None) -> Iterator[tuple[str, str, int | None]]:
    """(bootstrap, description, embedded broker PID or None): --bootstrap, KAFKA_BOOTSTRAP, else a fresh tansu."""
    configured = (explicit or os.environ.get("KAFKA_BOOTSTRAP", "")).strip()
    if configured:
        yield configured, f"external ({configured})", None
        return
    from stream_app.edges.broker import EmbeddedBroker

    # A fresh broker per run: tansu keeps every record in memory.
    with EmbeddedBroker() as broker:
        yield broker.bootstrap, f"embedded tansu ({_tansu_version()}), memory storage, fresh for this run", broker.pid


def _tansu_version() -> str:
    try:
        from stream_app.edges.broker import resolve_tansu_binary

        done = subprocess.run(
            [resolve_tansu_binary(), "--version"], capture_output=True, timeout=10, check=False, text=True
        )
        return done.stdout.strip() or "tansu"
    except (StreamAppError, OSError, subprocess.SubprocessError):
        return "tansu"


# ---- the run ---------------------------------------------------------------------------------------------------


def run_measurements(
    bootstrap: str,
    *,
    events: int,
    mode: str,
    rate: float = DEFAULT_RATE,
    broker_desc: str = "",
    broker_pid: int | None = None,
    command: str = "stream-app bench",
) -> BenchResult:
    """Publish the input once under a fresh TOPIC_PREFIX, then measure the three consumers on it."""
    from stream_app.edges.kafka_client import client_kwargs

    prefix = f"bench{uuid.uuid4().hex[:8]}-"
    security = client_kwargs(os.environ)
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    load_at_start = load_average()
    asyncio.run(_apply_topics(bootstrap, prefix, security))
    log.info("publishing %d events (%s mode) under TOPIC_PREFIX=%s", events, mode, prefix)
    size = asyncio.run(_publish_input(bootstrap, prefix, events, mode, rate, security))
    log.info("published %d events in %d records, %d bytes", size.events, size.records, size.bytes)
    topics = [prefix + topic.value for topic in _TOPICS]
    timeout = START_TIMEOUT_S + size.events / SLOWEST_EVENTS_PER_S

    raw = asyncio.run(_measure_raw(bootstrap, topics, size.events, security, broker_pid, timeout))
    log.info("raw consumer: %.0f events/s", raw.events_per_s)
    # The workers run (and log) in a scratch directory, removed after a good run and kept for diagnosis otherwise.
    workdir = Path(tempfile.mkdtemp(prefix="stream-app-bench-"))
    try:
        noop = _measure_noop(bootstrap, prefix, size.events, workdir, broker_pid, timeout)
        log.info("no-op Faust agent: %.0f events/s", noop.events_per_s)
        scorer = _measure_scorer(bootstrap, prefix, size.events, workdir, broker_pid, timeout)
        log.info("scorer: %.0f events/s", scorer.events_per_s)
    except BenchError as exc:
        raise BenchError(f"{exc}\n(worker logs kept in {workdir})") from None
    if scorer.failure is None:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        scorer.failure += f" (worker logs kept in {workdir})"
    return BenchResult(
        input=size,
        raw=raw,
        noop=noop,
        scorer=scorer,
        mode=mode,
        broker=broker_desc,
        command=command,
        machine={**machine_info(), "load_at_start": load_at_start},
        date=date,
    )


async def _apply_topics(bootstrap: str, prefix: str, security: Mapping[str, Any]) -> None:
    from stream_app.edges import topics_admin

    plan = topics_admin.load_topic_plan(prefix=prefix, app_id=_scorer_app_id(prefix))
    report = await topics_admin.apply(bootstrap, plan, client_kwargs=security)
    if report.has_errors:
        raise BenchError("topics apply failed:\n" + topics_admin.format_report(report))


def _scorer_app_id(prefix: str) -> str:
    return f"{prefix}scorer"


def simulated_input(events: int, rate: float, now_ms: int | None = None) -> list[Any]:
    """The run's input: the simulator's profiles, then its first `events` organic view/interaction events."""
    from stream_app.edges.simulate_run import fast_start_ms
    from stream_app.edges.simulator import SimulationConfig, generate

    duration_s = max(1.0, math.ceil(events / rate * _DURATION_SLACK))
    config = SimulationConfig(
        seed=SEED, start_ms=fast_start_ms(duration_s, now_ms), duration_s=duration_s, rate_per_s=rate
    )
    generated = generate(config)
    profiles: list[Any] = []
    traffic: list[Any] = []
    for event in generated:
        if event.topic is InputTopic.PROFILES:
            profiles.append(event)
            continue
        traffic.append(event)
        break
    traffic.extend(itertools.islice(generated, events - len(traffic)))
    return profiles + traffic


async def _publish_input(
    bootstrap: str, prefix: str, events: int, mode: str, rate: float, security: Mapping[str, Any]
) -> InputSize:
    from stream_app.edges.producer import RewardsProducer, SendReport

    simulated = simulated_input(events, rate)
    by_topic: dict[InputTopic, list[dict[str, Any]]] = {topic: [] for topic in _TOPICS}
    for event in simulated:
        if not isinstance(event.payload, dict):  # organic traffic has no malformed records
            raise BenchError(f"unexpected raw record in organic traffic: {event!r}")
        by_topic[event.topic].append(event.payload)
    traffic = [e.at_ms for e in simulated if e.topic is not InputTopic.PROFILES]
    started = time.monotonic()
    total = SendReport()
    async with RewardsProducer(
        bootstrap,
        topic_prefix=prefix,
        mode="single" if mode == "single" else "envelope",
        client_kwargs=security,
    ) as producer:
        for topic in _TOPICS:  # profiles first, so creators are known before their videos' views
            total += await producer.send(topic, by_topic[topic])
    return InputSize(
        events=total.events,
        records=total.records,
        bytes=total.bytes,
        events_by_topic={topic.value: len(by_topic[topic]) for topic in _TOPICS},
        event_time_span_s=(max(traffic) - min(traffic)) / 1000 if traffic else 0.0,
        publish_s=time.monotonic() - started,
    )


# ---- 1. raw consumer -------------------------------------------------------------------------------------------


def _event_count(value: bytes | None) -> int:
    """Events in one record: an envelope counts its elements, anything else counts one."""
    try:
        decoded = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return 1
    return len(decoded) if isinstance(decoded, list) else 1


async def _measure_raw(
    bootstrap: str,
    topics: list[str],
    expected: int,
    security: Mapping[str, Any],
    broker_pid: int | None,
    timeout: float,
) -> Measurement:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **dict(security))
    await consumer.start()
    try:
        tps: list[TopicPartition] = []
        for topic in topics:
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise BenchError(f"topic {topic} has no partitions")
            tps.extend(TopicPartition(topic, p) for p in sorted(partitions))
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        events = 0
        # Assigned and positioned: the clock starts with the first fetch, as the Faust workers' does after their
        # partitions are assigned.
        first, cpu0, broker0 = time.monotonic(), time.process_time(), _cpu_seconds(broker_pid)
        deadline = first + timeout
        while remaining:
            batches = await consumer.getmany(timeout_ms=1000)
            for tp, messages in batches.items():
                for message in messages:
                    events += _event_count(message.value)
                if messages and messages[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            if time.monotonic() > deadline:
                raise BenchError(f"raw consumer: read {events} of {expected} events in {timeout:.0f} s")
        end = time.monotonic()
        cpu = time.process_time() - cpu0
        broker_cpu = _cpu_seconds(broker_pid) - broker0 if broker_pid else None
    finally:
        await consumer.stop()
    if events != expected:
        raise BenchError(f"raw consumer read {events} events, {expected} were published")
    return Measurement(
        "raw consumer ceiling",
        events,
        end - first,
        cpu_s=cpu,
        broker_cpu_s=broker_cpu,
    )


# ---- 2. no-op Faust agent --------------------------------------------------------------------------------------


def _measure_noop(
    bootstrap: str, prefix: str, expected: int, workdir: Path, broker_pid: int | None, timeout: float
) -> Measurement:
    progress_path = workdir / "noop-progress.json"
    env = worker_env(bootstrap, prefix, f"{prefix}noop")
    command = [sys.executable, "-m", "stream_app.benchmark", "noop-worker", str(progress_path), str(expected)]
    with _Subprocess(command, env, workdir, "noop") as worker:
        deadline = time.monotonic() + timeout
        broker_first: float | None = None
        peak: float | None = None
        while True:
            progress = _read_progress(progress_path)
            peak = _peak_rss_mib(worker.pid) or peak
            if progress is not None and broker_first is None:
                broker_first = _cpu_seconds(broker_pid)
            if progress is not None and progress["events"] >= expected:
                break
            worker.check_alive()
            if time.monotonic() > deadline:
                seen = progress["events"] if progress else 0
                raise BenchError(f"no-op agent: {seen} of {expected} events after {timeout:.0f} s\n{worker.tail()}")
            time.sleep(POLL_INTERVAL_S)
        broker_cpu = _cpu_seconds(broker_pid) - broker_first if broker_pid and broker_first is not None else None
        peak = _peak_rss_mib(worker.pid) or peak
        launched = worker.launched
    if progress["events"] != expected:
        raise BenchError(f"no-op agent counted {progress['events']} events, {expected} were published")
    return Measurement(
        "no-op Faust agent",
        progress["events"],
        progress["last"] - progress["first"],
        startup_s=progress["first"] - launched,
        cpu_s=progress["last_cpu"] - progress["first_cpu"],
        broker_cpu_s=broker_cpu,
        peak_rss_mib=peak,
    )


def _read_progress(path: Path) -> dict[str, Any] | None:
    try:
        progress: dict[str, Any] = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
    return progress


class _NoopProgress:
    """Counts events of the no-op agents and writes {events, first, last, first_cpu, last_cpu} to a file.

    `first` is when the partitions were last assigned before the first event (so the first fetch is timed, the
    group join is not), or the first event's batch if no assignment was seen. Times are time.monotonic()
    (CLOCK_MONOTONIC, the same clock in every process of the machine).
    """

    def __init__(self, path: Path, expected: int) -> None:
        self.path = path
        self.expected = expected
        self.events = 0
        self.started = False
        self.first: float | None = None
        self.first_cpu = 0.0
        self.written_at = 0.0

    def assigned(self) -> None:
        if not self.started:
            self.first, self.first_cpu = time.monotonic(), time.process_time()
            self._write(self.first)

    def add(self, values: Sequence[bytes | None]) -> None:
        if not self.started:
            self.started = True
            if self.first is None:
                self.first, self.first_cpu = time.monotonic(), time.process_time()
        for value in values:
            self.events += _event_count(value)
        now = time.monotonic()
        if self.events >= self.expected or now - self.written_at >= PROGRESS_WRITE_INTERVAL_S:
            self._write(now)

    def _write(self, now: float) -> None:
        self.written_at = now
        payload = {
            "events": self.events,
            "first": self.first,
            "last": now,
            "first_cpu": self.first_cpu,
            "last_cpu": time.process_time(),
        }
        partial = self.path.with_suffix(".tmp")
        partial.write_bytes(orjson.dumps(payload))
        partial.replace(self.path)


def build_noop_app(progress: _NoopProgress) -> Any:
    """A Faust app on the scorer's input topics whose agents take batches of 500 and only decode them.

    Same broker settings as the scorer (streaming/app.py): web server off, no topic declaration, no leader topic.
    """
    import faust

    from stream_app.edges.settings import load_settings
    from stream_app.streaming.app import broker_credentials

    settings = load_settings()
    app = faust.App(
        settings.app_id,
        broker=";".join(f"kafka://{s.strip()}" for s in settings.kafka_bootstrap.split(",")),
        broker_credentials=broker_credentials(settings),
        store="memory://",
        web_enabled=False,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        autodiscover=False,
    )

    def raw_topic(*names: str) -> Any:
        return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    events_topic = raw_topic(settings.topic(InputTopic.VIEWS), settings.topic(InputTopic.INTERACTIONS))
    profiles_topic = raw_topic(settings.topic(InputTopic.PROFILES))

    async def count_events(stream: Any) -> None:
        async for batch in stream.take_events(NOOP_BATCH_EVENTS, within=NOOP_BATCH_WITHIN_S):
            progress.add([event.value for event in batch])

    async def count_profiles(stream: Any) -> None:
        async for batch in stream.take_events(NOOP_BATCH_EVENTS, within=NOOP_BATCH_WITHIN_S):
            progress.add([event.value for event in batch])

    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        if assigned:
            progress.assigned()

    app.on_partitions_assigned.connect(on_assigned)  # type: ignore[arg-type]
    app.agent(events_topic, name="noop-events")(count_events)
    app.agent(profiles_topic, name="noop-profiles")(count_profiles)
    return app


def noop_worker_main(argv: Sequence[str]) -> int:
    """`python -m stream_app.benchmark noop-worker PROGRESS_FILE EXPECTED_EVENTS` (settings from the env)."""
    import faust

    path, expected = Path(argv[0]), int(argv[1])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_noop_app(_NoopProgress(path, expected))
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, override_logging=False)
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


# ---- 3. the scorer ---------------------------------------------------------------------------------------------


def _measure_scorer(
    bootstrap: str, prefix: str, expected: int, workdir: Path, broker_pid: int | None, timeout: float
) -> Measurement:
    """The scorer's throughput; if it dies or stalls, what it did until then, with the reason in `failure`."""
    env = worker_env(bootstrap, prefix, _scorer_app_id(prefix))
    url = f"http://127.0.0.1:{env['METRICS_PORT']}/metrics"
    command = [sys.executable, "-m", "stream_app.cli", "worker"]
    profile = os.environ.get("BENCH_PROFILE")
    if profile:
        command = [
            shutil.which("py-spy") or "py-spy",
            "record",
            "-r",
            "100",
            "-f",
            "raw",
            "-o",
            profile,
            "--",
            *command,
        ]
    failure: str | None = None
    with _Subprocess(command, env, workdir, "scorer") as worker:
        deadline = time.monotonic() + timeout
        # The last moment the worker was seen with nothing processed: the measurement starts there.
        zero_at, zero_cpu, zero_broker = worker.launched, 0.0, _cpu_seconds(broker_pid)
        # The last moment its count changed (the end, when it finishes or stops making progress).
        end, end_cpu, end_broker = zero_at, zero_cpu, zero_broker
        processed = 0
        peak: float | None = None
        while True:
            before = time.monotonic()
            cpu, broker_cpu = _cpu_seconds(worker.pid), _cpu_seconds(broker_pid)
            peak = _peak_rss_mib(worker.pid) or peak
            try:
                now_processed = processed_events(scrape_metrics(url))
            except OSError:
                now_processed = processed  # metrics server not up yet, or gone
            if now_processed == 0:
                zero_at, zero_cpu, zero_broker = before, cpu, broker_cpu
            if now_processed != processed:
                processed = now_processed
                end, end_cpu, end_broker = time.monotonic(), _cpu_seconds(worker.pid), _cpu_seconds(broker_pid)
            if processed >= expected:
                break
            if worker.exited() is not None:
                failure = f"worker exited with status {worker.exited()}: {worker.first_error()}"
                break
            if time.monotonic() > deadline:
                failure = f"not finished after {timeout:.0f} s (last error in its log: {worker.first_error()})"
                break
            time.sleep(SCRAPE_INTERVAL_S)
        launched = worker.launched
    if failure is None and processed != expected:
        failure = f"counted {processed} events, {expected} were published"
    if failure is not None:
        log.warning("scorer: %s (worker log: %s)", failure, worker.log_path)
    return Measurement(
        "scorer (`stream-app worker`)",
        processed,
        end - zero_at,
        startup_s=zero_at - launched,
        cpu_s=end_cpu - zero_cpu,
        broker_cpu_s=end_broker - zero_broker if broker_pid else None,
        peak_rss_mib=peak,
        failure=failure,
    )


_EVENTS_TOTAL = re.compile(r"^rewards_events_total(\{.*\})?$")


def processed_events(samples: Mapping[str, float]) -> int:
    """Events the scorer has processed: every outcome of rewards_events_total plus pending interactions."""
    outcomes = sum(value for name, value in samples.items() if _EVENTS_TOTAL.match(name))
    return int(outcomes + samples.get("rewards_pending_interactions", 0.0))


# ---- subprocesses and /proc ------------------------------------------------------------------------------------


def worker_env(bootstrap: str, prefix: str, app_id: str) -> dict[str, str]:
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
    return env


class _Subprocess:
    """A worker subprocess run in `workdir` (where Faust puts its data directory), output to a log file there."""

    def __init__(self, command: list[str], env: dict[str, str], workdir: Path, name: str) -> None:
        self.command = command
        self.env = env
        self.workdir = workdir
        self.log_path = workdir / f"{name}.log"
        self.name = name
        self.process: subprocess.Popen[bytes] | None = None
        self.launched = 0.0

    def __enter__(self) -> _Subprocess:
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
        # py-spy (--profile) writes its profile on SIGINT and stops the worker it runs
        process.send_signal(signal.SIGINT if Path(self.command[0]).name == "py-spy" else signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

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


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int | None) -> float:
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


def _peak_rss_mib(pid: int) -> float | None:
    """Peak resident set size (VmHWM) of a live process, in MiB."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


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
        "faust": _version("faust-streaming"),
        "aiokafka": _version("aiokafka"),
        "load_average": load_average(),
    }


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


# ---- report ----------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def ratios(result: BenchResult) -> dict[str, float]:
    raw, noop, scorer = result.raw.events_per_s, result.noop.events_per_s, result.scorer.events_per_s
    return {"scorer / no-op": scorer / noop, "scorer / raw": scorer / raw, "no-op / raw": noop / raw}


def format_section(result: BenchResult) -> str:
    size, machine = result.input, result.machine
    by_topic = ", ".join(f"{topic} {count:,}" for topic, count in size.events_by_topic.items())
    lines = [
        SECTION_HEADING,
        "",
        f"Run {result.date} with `{result.command}` (method: bench/README.md).",
        "",
        f"- Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"{machine['platform']}, faust-streaming {machine['faust']}, aiokafka {machine['aiokafka']}; "
        f"load average (1, 5, 15 min) {machine.get('load_at_start', '?')} at the start, {machine['load_average']} "
        "at the end (a shared machine: compare ratios, not absolutes).",
        f"- Broker: {result.broker}.",
        f"- Input: {size.events:,} events ({by_topic}) in {size.records:,} records ({result.mode} mode), "
        f"{size.bytes:,} value bytes; simulator seed {SEED}, organic traffic over {size.event_time_span_s:,.0f} s "
        f"of event time; published in {size.publish_s:,.1f} s before any measurement.",
        "",
        "| measurement | events | seconds | events/s | CPU s | broker CPU s | start-up s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in (result.raw, result.noop, result.scorer):
        lines.append(
            f"| {m.name} | {m.events:,} | {m.seconds:,.2f} | {m.events_per_s:,.0f} | {_fmt(m.cpu_s)} | "
            f"{_fmt(m.broker_cpu_s)} | {_fmt(m.startup_s)} | {_fmt(m.peak_rss_mib, 0)} |"
        )
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in ratios(result).items()]
    failed = [m for m in (result.raw, result.noop, result.scorer) if m.failure]
    if failed:
        lines.append("")
    for m in failed:
        lines.append(
            f"**{m.name} did not finish**: {m.failure}. Its row and ratios cover the {m.events:,} events it "
            "processed until then."
        )
    lines += [
        "",
        "Seconds run from the start of processing (the first fetch after the partitions are assigned) to the "
        "last event processed; start-up and the consumer-group join are in the start-up column, not in the "
        "throughput. CPU s is the consuming process's user+system time over those seconds (all its threads; "
        "the raw consumer runs inside the bench process).",
        "",
    ]
    return "\n".join(lines)


def format_summary(result: BenchResult) -> str:
    parts = [f"{m.name}: {m.events_per_s:,.0f} events/s" for m in (result.raw, result.noop, result.scorer)]
    parts += [f"{name} = {value:.3f}" for name, value in ratios(result).items()]
    parts += [f"{m.name} did not finish: {m.failure}" for m in (result.raw, result.noop, result.scorer) if m.failure]
    return "\n".join(parts)


def replace_section(text: str, section: str, heading: str = SECTION_HEADING) -> str:
    """`text` with its `heading` section (up to the next `## ` heading) replaced by `section`, or it appended."""
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
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(existing, section), encoding="utf-8")


def _main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "noop-worker":
        return noop_worker_main(argv[1:])
    return run_bench(list(argv))


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
