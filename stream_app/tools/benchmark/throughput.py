"""The throughput measurements (SPEC §10): the raw-consumer ceiling, a no-op Faust agent and the scorer, one after
another on the same pre-published input (the simulator's organic traffic, as envelopes or single records).

- raw consumer ceiling: one aiokafka consumer (no group) reads every record and decodes it with orjson;
- no-op Faust agent: a minimal Faust app (`python -m stream_app.tools.benchmark noop-worker`) whose agents take batches
  of 500 and only decode them, run as a worker subprocess; it reports progress in a file;
- the scorer: `stream-app worker` as a subprocess, watched through its /metrics until every published event has
  an outcome or is a pending interaction (`ScorerRun`, also used by the flat-with-state and soak measurements).

Each throughput is counted from the first event processed to the last, so start-up and the consumer-group join
(which tansu answers only after half the session timeout) are not counted.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from stream_app.domain.events import InputTopic
from stream_app.tools.benchmark.common import (
    FAST_SCRAPE_S,
    POLL_INTERVAL_S,
    QUIET_CPU_SHARE,
    QUIET_S,
    SETTLE_MAX_S,
    SETTLED_S,
    SLOW_SCRAPE_S,
    BenchError,
    Measurement,
    log,
    profiled,
)
from stream_app.tools.harness import (
    INPUT_TOPICS,
    READY_METRIC,
    SCORER_COMMAND,
    WorkerProcess,
    cpu_seconds,
    metrics_url,
    peak_rss_mib,
    progress_toward,
    progress_url,
    scrape,
    topic_partitions,
    worker_env,
)

DEFAULT_RATE = 500.0  # simulated events per second of event time: 200k events span 400 s of event time
SEED = 1
NOOP_BATCH_EVENTS = 500  # the scorer's agents take batches too (streaming/app.py)
NOOP_BATCH_WITHIN_S = 0.05
PROGRESS_WRITE_INTERVAL_S = 0.25
# Slack on the simulated duration, so the generator yields at least the requested number of traffic events.
_DURATION_SLACK = 1.25


@dataclass
class InputSize:
    """What was published: events (envelope elements count one each), Kafka records and value bytes, by topic."""

    events: int = 0
    records: int = 0
    bytes: int = 0
    events_by_topic: dict[str, int] = field(default_factory=dict)
    event_time_span_s: float = 0.0
    publish_s: float = 0.0
    mode: str = "envelope"


# ---- input -----------------------------------------------------------------------------------------------------


def simulated_input(events: int, rate: float, now_ms: int | None = None) -> list[Any]:
    """The run's input: the simulator's profiles, then its first `events` organic view/interaction events."""
    from stream_app.tools.simulator import SimulationConfig, generate
    from stream_app.tools.simulator.publish import fast_start_ms

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


def publish_input(
    bootstrap: str, prefix: str, simulated: Sequence[Any], mode: str, security: Mapping[str, Any]
) -> InputSize:
    """Publish the simulated events once with the producer SDK in `mode`, profiles first."""
    return asyncio.run(_publish_input(bootstrap, prefix, simulated, mode, security))


async def _publish_input(
    bootstrap: str, prefix: str, simulated: Sequence[Any], mode: str, security: Mapping[str, Any]
) -> InputSize:
    from stream_app.edges.producer import RewardsProducer, SendReport

    by_topic: dict[InputTopic, list[dict[str, Any]]] = {topic: [] for topic in INPUT_TOPICS}
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
        for topic in INPUT_TOPICS:  # profiles first, so creators are known before their videos' views
            total += await producer.send(topic, by_topic[topic])
    return InputSize(
        events=total.events,
        records=total.records,
        bytes=total.bytes,
        events_by_topic={topic.value: len(by_topic[topic]) for topic in INPUT_TOPICS},
        event_time_span_s=(max(traffic) - min(traffic)) / 1000 if traffic else 0.0,
        publish_s=time.monotonic() - started,
        mode=mode,
    )


# ---- 1. raw consumer -------------------------------------------------------------------------------------------


def _event_count(value: bytes | None) -> int:
    """Events in one record: an envelope counts its elements, anything else counts one."""
    try:
        decoded = orjson.loads(value) if value is not None else None
    except orjson.JSONDecodeError:
        return 1
    return len(decoded) if isinstance(decoded, list) else 1


def measure_raw(
    bootstrap: str,
    topics: list[str],
    expected: int,
    security: Mapping[str, Any],
    broker_pid: int | None,
    timeout: float,
) -> Measurement:
    """The raw-consumer ceiling, run inside the bench process: its own fetch loop (what is measured), not the
    harness's reader."""
    from aiokafka import AIOKafkaConsumer

    async def measure() -> Measurement:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **dict(security)
        )
        await consumer.start()
        try:
            tps = [tp for topic in topics for tp in await topic_partitions(consumer, topic)]
            if not tps:
                raise BenchError(f"topics {', '.join(topics)} have no partitions")
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            ends = await consumer.end_offsets(tps)
            remaining = {tp for tp in tps if ends[tp] > 0}
            events = 0
            # Assigned and positioned: the clock starts with the first fetch, as the Faust workers' does after
            # their partitions are assigned.
            first, cpu0, broker0 = time.monotonic(), time.process_time(), cpu_seconds(broker_pid)
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
            broker_cpu = cpu_seconds(broker_pid) - broker0 if broker_pid else None
        finally:
            await consumer.stop()
        if events != expected:
            raise BenchError(f"raw consumer read {events} events, {expected} were published")
        return Measurement("raw consumer ceiling", events, end - first, cpu_s=cpu, broker_cpu_s=broker_cpu)

    return asyncio.run(measure())


# ---- 2. no-op Faust agent --------------------------------------------------------------------------------------


def measure_noop(
    bootstrap: str, prefix: str, expected: int, workdir: Path, broker_pid: int | None, timeout: float, label: str = ""
) -> Measurement:
    """The no-op Faust agent (its own consumer group) on the input under `prefix`."""
    progress_path = workdir / f"noop{label}-progress.json"
    env = worker_env(bootstrap, prefix, f"{prefix}noop{label}")
    command = [sys.executable, "-m", "stream_app.tools.benchmark", "noop-worker", str(progress_path), str(expected)]
    return measure_progress_worker(
        "no-op Faust agent", command, env, progress_path, expected, workdir, broker_pid, timeout, f"noop{label}"
    )


def measure_progress_worker(
    name: str,
    command: list[str],
    env: dict[str, str],
    progress_path: Path,
    expected: int,
    workdir: Path,
    broker_pid: int | None,
    timeout: float,
    log_name: str,
) -> Measurement:
    """A worker subprocess that writes its progress to `progress_path` (_Progress): the no-op agent, Quix."""
    with WorkerProcess(command, env, workdir, log_name) as worker:
        deadline = time.monotonic() + timeout
        broker_first: float | None = None
        peak: float | None = None
        while True:
            progress = _read_progress(progress_path)
            peak = peak_rss_mib(worker.pid) or peak
            if progress is not None and broker_first is None:
                broker_first = cpu_seconds(broker_pid)
            if progress is not None and progress["events"] >= expected:
                break
            worker.check_alive()
            if time.monotonic() > deadline:
                seen = progress["events"] if progress else 0
                raise BenchError(f"{name}: {seen} of {expected} events after {timeout:.0f} s\n{worker.tail()}")
            time.sleep(POLL_INTERVAL_S)
        broker_cpu = cpu_seconds(broker_pid) - broker_first if broker_pid and broker_first is not None else None
        peak = peak_rss_mib(worker.pid) or peak
        launched = worker.launched
    if progress["events"] != expected:
        raise BenchError(f"{name} counted {progress['events']} events, {expected} were published")
    return Measurement(
        name,
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


class Progress:
    """Counts events of a progress worker (the no-op agents, the Quix app); writes {events, first, last, first_cpu,
    last_cpu} to a file.

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
        self.add_events(sum(_event_count(value) for value in values))

    def add_events(self, count: int) -> None:
        if not self.started:
            self.started = True
            if self.first is None:
                self.first, self.first_cpu = time.monotonic(), time.process_time()
        self.events += count
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


def build_noop_app(progress: Progress) -> Any:
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
    """`python -m stream_app.tools.benchmark noop-worker PROGRESS_FILE EXPECTED_EVENTS` (settings from the env)."""
    import faust

    path, expected = Path(argv[0]), int(argv[1])
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = build_noop_app(Progress(path, expected))
    worker = faust.Worker(app, loglevel="WARNING", quiet=True, override_logging=False)
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


# ---- 3. the scorer ---------------------------------------------------------------------------------------------


SCORER_NAME = "scorer (`stream-app worker`)"


class ScorerRun:
    """`stream-app worker` as a subprocess (optionally under py-spy), watched through its /metrics.

    `watch(expected)` returns the throughput from the first scrape that showed the worker ready with nothing
    processed (Span) to the moment it went quiet after the first scrape that showed `expected` events processed
    (`quiet_from`); the worker keeps running until the block ends (SIGTERM, or SIGINT to py-spy) or `kill()`
    (SIGKILL, a crash).
    """

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        app_id: str,
        workdir: Path,
        *,
        broker_pid: int | None = None,
        log_name: str = "scorer",
        profile: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.env = worker_env(bootstrap, prefix, app_id, **dict(env or {}))
        self.url = metrics_url(self.env)
        self.progress_url = progress_url(self.url)
        command = profiled(SCORER_COMMAND, profile) if profile else list(SCORER_COMMAND)
        self.worker = WorkerProcess(command, self.env, workdir, log_name)
        self.broker_pid = broker_pid
        self.app_id = app_id

    def __enter__(self) -> ScorerRun:
        self.worker.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.worker.__exit__(*exc)

    @property
    def pid(self) -> int | None:
        return self.worker.worker_pid

    def kill(self) -> None:
        self.worker.kill()

    def samples(self) -> dict[str, float] | None:
        """The progress metrics only (harness.PROGRESS_METRICS): scraped several times a second, the whole of
        /metrics cost the worker ~5 % of its samples (py-spy: the process collector reading /proc, rendering)."""
        return scrape(self.progress_url)

    def watch(
        self,
        expected_by_topic: Mapping[str, int],
        timeout: float,
        name: str = SCORER_NAME,
        *,
        until_quiet: bool = True,
    ) -> Measurement:
        """Scrape until every topic's expected events are processed, then (`until_quiet`) poll the worker's CPU
        until it goes quiet (`quiet_from`: its device judge and table writes finish after the last event is
        counted); if the worker dies or stalls, what it did until then, with the reason in `failure`."""
        deadline = time.monotonic() + timeout
        expected = sum(expected_by_topic.values())
        span = Span(Moment(self.worker.launched, 0.0, cpu_seconds(self.broker_pid)))
        peak: float | None = None
        while True:
            pid = self.pid
            now = self._moment_now(pid)
            peak = peak_rss_mib(pid) or peak
            samples = self.samples()
            if samples is None:
                processed, done, ready = span.processed, False, False
            else:
                processed, done = progress_toward(samples, expected_by_topic)
                ready = samples.get(READY_METRIC, 0.0) >= 1.0
            span.scraped(now, ready, processed, functools.partial(self._moment_now, pid))
            failure = None if done else self._stopped(deadline, timeout)
            if done or failure is not None:
                break
            time.sleep(next_scrape_s(span.processed, expected, span.timeline))
        if failure is not None:
            failure += f"; processed {span.processed:,} of {expected:,} events"
            log.warning("%s: %s (worker log: %s)", name, failure, self.worker.log_path)
        elif until_quiet:
            counted = span.end
            span.end = self._quiet_from(span.end)
            log.info(
                "%s: quiet %.2f s after its last event (%.2f CPU s more)",
                name,
                span.end.at - counted.at,
                span.end.cpu - counted.cpu,
            )
        return Measurement(
            name,
            span.processed,
            span.end.at - span.zero.at,
            startup_s=span.zero.at - self.worker.launched,
            cpu_s=span.end.cpu - span.zero.cpu,
            broker_cpu_s=span.end.broker_cpu - span.zero.broker_cpu if self.broker_pid else None,
            peak_rss_mib=peak_rss_mib(self.pid) or peak,
            failure=failure,
            timeline=span.timeline,
        )

    def peak_rss_once_settled(self) -> float | None:
        """The worker's peak RSS (MiB) once it has been quiet for SETTLED_S (SETTLE_MAX_S at most). A restarted
        worker scores new events as soon as its event partitions are restored, while its device judge is still
        restoring its own (and allocating): read at that moment, the peak missed up to 1 GiB (bench/RESULTS.md,
        Speed steps 22)."""
        self._quiet_from(self._moment_now(self.pid), SETTLED_S)
        return peak_rss_mib(self.pid)

    def _quiet_from(self, last_event: Moment, quiet_s: float = QUIET_S) -> Moment:
        """The moment the worker went quiet (for `quiet_s`) after processing its last event (`quiet_from`),
        polling its CPU; the last moment polled if it never does within SETTLE_MAX_S."""
        pid = self.pid
        moments = [last_event]
        while True:
            time.sleep(POLL_INTERVAL_S)
            moments.append(self._moment_now(pid))
            quiet = quiet_from(moments, quiet_s, QUIET_CPU_SHARE)
            if quiet is not None:
                return quiet
            if moments[-1].at - last_event.at > SETTLE_MAX_S or self.worker.exited() is not None:
                log.warning("scorer not quiet %.0f s after its last event; measured to now", SETTLE_MAX_S)
                return moments[-1]

    def _moment_now(self, pid: int | None) -> Moment:
        return Moment(time.monotonic(), cpu_seconds(pid), cpu_seconds(self.broker_pid))

    def _stopped(self, deadline: float, timeout: float) -> str | None:
        """Why the worker will not finish (it exited, or time is up), or None."""
        if self.worker.exited() is not None:
            return f"worker exited with status {self.worker.exited()}: {self.worker.first_error()}"
        if time.monotonic() > deadline:
            return f"not finished after {timeout:.0f} s (last error in its log: {self.worker.first_error()})"
        return None


def quiet_from(moments: Sequence[Moment], quiet_s: float, cpu_share: float) -> Moment | None:
    """The first of `moments` (in time order) from which the worker used less than `cpu_share` of a CPU over the
    next `quiet_s` or more (measured to the first later moment at least quiet_s on); None when no such window has
    been seen yet."""
    j = 0
    for i, start in enumerate(moments):
        j = max(j, i + 1)
        while j < len(moments) and moments[j].at - start.at < quiet_s:
            j += 1
        if j == len(moments):
            return None
        stop = moments[j]
        if stop.cpu - start.cpu < cpu_share * (stop.at - start.at):
            return start
    return None


def next_scrape_s(processed: int, expected: int, timeline: Sequence[tuple[float, int]]) -> float:
    """How long to wait before the next scrape of a scorer that has processed `processed` of `expected` events
    (common.FAST_SCRAPE_S): fast until it processed its first event and as its end nears (the start and the end
    of the measurement are decided there), else a quarter of the time its rate so far says is left, at most
    SLOW_SCRAPE_S."""
    if processed == 0 or len(timeline) < 2:
        return FAST_SCRAPE_S
    (first_at, first_count), (last_at, last_count) = timeline[0], timeline[-1]
    if last_at <= first_at or last_count <= first_count:
        return FAST_SCRAPE_S
    left_s = max(0, expected - processed) * (last_at - first_at) / (last_count - first_count)
    return min(SLOW_SCRAPE_S, max(FAST_SCRAPE_S, left_s / 4))


class Span:
    """The span of a scorer run that a measurement counts, decided scrape by scrape.

    It starts at the first scrape that shows the worker ready (partitions assigned, state restored) with nothing
    processed yet, as the no-op peer's starts at its partition assignment; until one is seen, at the last scrape
    with nothing processed (a worker that never says it is ready is measured from there). Starting at the last
    zero alone would leave out the first batch's time while counting its events: the events counter moves when a
    batch ends. The span ends at the last moment the count changed (the end, when the worker finishes or stops
    making progress); `timeline` is (time, events processed) at each change, from the start.
    """

    def __init__(self, launched: Moment) -> None:
        self.zero = self.end = launched
        self.started = False
        self.processed = 0
        self.timeline: list[tuple[float, int]] = []

    def scraped(self, now: Moment, ready: bool, processed: int, after: Callable[[], Moment]) -> None:
        """A scrape taken at `now` showed `processed` events and whether the worker was `ready`; `after` is the
        moment just after the scrape (the end of a span is timed there)."""
        if processed == 0 and not self.started:
            self.zero, self.timeline, self.started = now, [(now.at, 0)], ready
        elif processed != self.processed:
            self.end = after()
            self.timeline.append((self.end.at, processed))
        self.processed = processed


@dataclass(frozen=True)
class Moment:
    """A moment of a scorer run (time.monotonic()) and the CPU seconds of the worker and of the broker by then."""

    at: float
    cpu: float
    broker_cpu: float


def measure_scorer(
    bootstrap: str,
    prefix: str,
    app_id: str,
    expected_by_topic: Mapping[str, int],
    workdir: Path,
    broker_pid: int | None,
    timeout: float,
    *,
    profile: Path | None = None,
    log_name: str = "scorer",
    name: str = SCORER_NAME,
) -> Measurement:
    """The scorer's throughput on the input under `prefix`, its own app id (consumer group and state)."""
    with ScorerRun(
        bootstrap, prefix, app_id, workdir, broker_pid=broker_pid, log_name=log_name, profile=profile
    ) as run:
        return run.watch(expected_by_topic, timeout, name)
