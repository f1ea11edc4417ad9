"""Authenticity quality report (issue 4): the scorer's recall and precision per fraud scenario, its false-positive
rate on organic traffic, and what fraud does to the money, measured on simulated traffic through a real broker.

`python bench/quality.py` or `python -m stream_app.tools.quality [--events N] [--seeds 1,2] [--output bench/RESULTS.md]
[--bootstrap HOST:PORT] [--json PATH]`. Per seed it does two runs, each on a fresh embedded tansu broker (unless
--bootstrap or KAFKA_BOOTSTRAP names one) under a fresh TOPIC_PREFIX, with `stream-app worker` as a subprocess:

1. **fraud run**: the simulator's traffic with every fraud scenario injected (`SimulationConfig(seed,
   fraud=FRAUD_SCENARIOS)`), published by `run_simulation` (the code behind `stream-app simulate`: envelopes
   through RewardsProducer, malformed records as raw records), labels to a side file;
2. **baseline run**: the very same generated stream with every event the rules must reject left out: what stays
   is the organic traffic plus the fraud events no rule can tell apart from a person, labelled with no expected
   reason (each farm phone's first view, the views of an account farm's first 8 accounts, an overlap bot's views
   that do not overlap, each velocity-burst account's first view, a looping viewer's first 5 views). That is
   what a perfect scorer pays, so the money target compares against it. Generating with `fraud=frozenset()`
   would not give the same organic traffic: the simulator lowers the organic rate by `fraud_share` when fraud is
   injected and keeps the velocity-burst target videos out of organic rewatches, both of which change the
   organic stream's random draws.

Labels never come from the events: they come from the label side file (`SimEvent.label`, `expected_reason`).

**Timing.** The worker runs the default policy (WINDOW_S 3600, GRACE_S 300, IDLE_SETTLE_S 30, every rule
threshold). All input is published before the worker starts. Event time ends WINDOW_S + GRACE_S + 60 s before the
wall clock, so once the input is drained and both event topics have been idle for IDLE_SETTLE_S, the wall clock
stands in for the watermark (SPEC §5) and settles every window: every interaction is judged
(engagement_without_view is decided at settlement) and no money is left provisional. The run is over when the
worker's /metrics show an outcome for every published event, no pending interaction, and no counter has moved for
QUIET_S seconds (device flags travel through the device-views / device-flags topics and may come a little after).
Earlier reports ran IDLE_SETTLE_S=5 to save time; with the device rules of issue 11 that settled the last windows
before the device judge, which lags the events agent in a catch-up, had sent its last verdicts (they came as
clawbacks at the settled, diluted multiplier: -0.25 % of the money at 60,000 events, 0 with the default).

**Join.** AuditRecords (suspicious-events) and DeadLetters (events-dlq) carry the input position (source_topic,
partition, offset, index). The input topics are read back and every position is mapped to the label of the event
published there: a raw (malformed) record by its (topic, key, value) bytes; an element of an envelope by (topic,
event_id) (profiles, which have no event_id, by their JSON). A duplicate shares its event_id with its original:
the two go to the same partition (same video_id) and the producer keeps stream order within a partition, so the
n-th copy of an event_id in (partition, offset, index) order is its n-th occurrence in the label file (the original
first). Identical raw records (say two `42`s) are interchangeable: both are labelled malformed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.domain.errors import StreamAppError
from stream_app.domain.events import InputTopic
from stream_app.domain.policy import Policy
from stream_app.edges.cli_args import positive_int
from stream_app.edges.localhost import scrape_metrics
from stream_app.edges.metrics import HEALTH_METRIC_NAMES
from stream_app.tools.benchmark import worker_env as bench_worker_env
from stream_app.tools.simulator.traffic import (
    EXPECTED_REASONS,
    FRAUD_SCENARIOS,
    INVALID,
    ORGANIC,
    SimEvent,
    SimulationConfig,
    generate,
)

log = logging.getLogger(__name__)

DEFAULT_EVENTS = 200_000
DEFAULT_SEEDS = "1,2"
DEFAULT_OUTPUT = Path("bench/RESULTS.md")
DEFAULT_RATE = 200.0  # `stream-app simulate`'s default: 200,000 events span about 1,000 s of event time
SECTION_HEADING = "## Quality"
IDLE_SETTLE_S = Policy().idle_settle_s  # the default (see Timing in the docstring)
# Event time ends this long before the wall clock (plus a window and its grace), so idleness settles every window.
SETTLE_MARGIN_S = 60
QUIET_S = 8.0  # no counter moved for this long after everything was processed: the run is over
SCRAPE_INTERVAL_S = 0.5
START_TIMEOUT_S = 180.0
SLOWEST_EVENTS_PER_S = 300.0
STOP_TIMEOUT_S = 30.0
_DURATION_TRIES = 4
SAMPLES = 200
_FAILURE_CHARS = 600

# Targets of issue 4 item 5.
TARGET_RECALL = 0.95
TARGET_FP_RATE = 0.001
TARGET_MONEY_DIFF = 0.005

_FLAGGED = frozenset({"suspicious", "clawback", "invalid"})
SCENARIOS: tuple[str, ...] = tuple(sorted(FRAUD_SCENARIOS))
_TOPICS = (InputTopic.PROFILES, InputTopic.VIEWS, InputTopic.INTERACTIONS)
# Policy variables a caller's environment might carry; the report runs the default policy, so they are dropped.
_POLICY_ENV = ("POLICY_FILE", "WINDOW_S", "GRACE_S", "EMIT_INTERVAL_S", "MAX_CLOCK_SKEW_S", "QUALIFY_ONCE_S",
               "CLAWBACK_HORIZON_S", "TARGET_RATE_BPS", "DEDUPE_S", "QUALIFYING_SOURCES", "STORE")  # fmt: skip

Position = tuple[str, int, int, int | None]  # (topic without prefix, partition, offset, index)
Flag = tuple[str, str]  # (outcome, reason); a dead letter is ("invalid", "invalid")


class QualityError(StreamAppError):
    """A run could not be completed (the worker died or stalled, or the output could not be joined)."""


# ---- results ---------------------------------------------------------------------------------------------------


@dataclass
class RunOutput:
    """What one worker run produced, joined to the labels of the events it was given."""

    name: str
    prefix: str
    published: int
    seconds: float  # worker launch -> quiet after the last event
    metrics: dict[str, float]
    flags: dict[int, set[Flag]]  # index into the run's event list -> its flags
    details: dict[int, list[str]]  # index -> the `detail` (or DLQ `error`) of each of its audit / DLQ records
    audit_records: int  # distinct (position, outcome) in suspicious-events
    dlq_records: int  # distinct positions in events-dlq
    unjoined: int  # audit/DLQ records whose position is not a published event
    net_micros: dict[str, int]  # video_id -> settled - clawback + provisional (newest accrual)
    provisional_micros: int
    qualified_views: int


@dataclass
class ScenarioRow:
    scenario: str
    reasons: tuple[str, ...]  # the reasons its events are labelled with (EXPECTED_REASONS)
    injected: int
    expected: int  # events labelled with an expected reason
    caught_right: int  # ... flagged with that reason
    caught_any: int  # ... flagged with any reason (suspicious, clawback or invalid)
    flagged_with_reason: int  # every event flagged with one of the reasons (all labels)
    flagged_as_expected: int  # ... that was labelled with that reason (by any scenario)
    unexpected_flags: int  # events of the scenario with no expected reason, or another one, that were flagged

    @property
    def reason(self) -> str:
        return ", ".join(self.reasons)

    @property
    def recall(self) -> float:
        return self.caught_right / self.expected if self.expected else math.nan

    @property
    def recall_any(self) -> float:
        return self.caught_any / self.expected if self.expected else math.nan

    @property
    def precision(self) -> float:
        return self.flagged_as_expected / self.flagged_with_reason if self.flagged_with_reason else math.nan


@dataclass
class SeedResult:
    seed: int
    config: dict[str, Any]
    events: int  # traffic + profiles published in the fraud run
    baseline_events: int
    labels: dict[str, int]
    rows: list[ScenarioRow]
    organic_events: int
    organic_flagged: int
    organic_late: int
    baseline_organic_flagged: int
    baseline_flags: dict[str, int]  # "outcome:reason" -> events of the baseline run
    flags_by_label: dict[str, dict[str, int]]  # label -> "outcome:reason" -> events
    money_fraud: int
    money_baseline: int
    money_by_scenario: dict[str, int]  # fraud - baseline over the videos each scenario touched
    money_untouched: int
    qualified_views_fraud: int
    qualified_views_baseline: int
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Up to SAMPLES events per scenario that were expected to be flagged with its reason and were not, and per
    # flag (late included) up to SAMPLES organic events given it: what a diagnosis starts from (JSON output only).
    missed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    false_positives: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    logs: str | None = None  # where the worker logs and the label file were kept (None: removed)

    @property
    def fp_rate(self) -> float:
        return self.organic_flagged / self.organic_events if self.organic_events else math.nan

    @property
    def money_diff(self) -> float:
        if self.money_baseline == 0:
            return math.inf if self.money_fraud else 0.0
        return (self.money_fraud - self.money_baseline) / self.money_baseline

    def targets(self) -> dict[str, bool]:
        met = {f"recall {row.scenario}": row.recall >= TARGET_RECALL for row in self.rows}
        met["organic FP rate"] = self.fp_rate < TARGET_FP_RATE
        met["money difference"] = abs(self.money_diff) <= TARGET_MONEY_DIFF
        return met

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, raw in zip(self.rows, data["rows"], strict=True):
            raw.update(recall=row.recall, recall_any=row.recall_any, precision=row.precision)
        data.update(fp_rate=self.fp_rate, money_diff=self.money_diff, targets=self.targets())
        return data


# ---- command line ----------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m stream_app.tools.quality",
        description="Recall/precision per fraud scenario, organic false positives and money, on a real broker.",
    )
    parser.add_argument("--events", type=positive_int, default=DEFAULT_EVENTS, help="traffic events per run")
    parser.add_argument("--seeds", default=DEFAULT_SEEDS, help="comma list of simulator seeds")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file ('## Quality' section)")
    parser.add_argument(
        "--bootstrap",
        default=None,
        help="Kafka bootstrap (default: KAFKA_BOOTSTRAP, else a fresh embedded broker for every run)",
    )
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE, help="simulated events per second of event time")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    parser.add_argument(
        "--idle-settle-s",
        type=positive_int,
        default=IDLE_SETTLE_S,
        help=f"the worker's IDLE_SETTLE_S (default {IDLE_SETTLE_S}, the policy's; shorter runs faster but may settle "
        "windows before the device judge's last verdicts)",
    )
    return parser


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be a comma list of integers, got {text!r}") from None
    if not seeds:
        raise argparse.ArgumentTypeError("--seeds is empty")
    return seeds


def run_quality(argv: list[str] | None = None) -> int:
    """Run the report; 0 when every target is met, 1 when one is missed, 2 when a run failed."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        seeds = _seeds(args.seeds)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    _quiet_logging()
    command = "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    results: list[SeedResult] = []
    failures: dict[int, str] = {}
    # SIGTERM ends the run like Ctrl-C: the worker and the embedded broker are stopped on the way out.
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        for seed in seeds:
            try:
                results.append(
                    measure_seed(
                        seed,
                        events=args.events,
                        rate=args.rate,
                        bootstrap=args.bootstrap,
                        idle_settle_s=args.idle_settle_s,
                    )
                )
            except StreamAppError as exc:  # the other seeds still run, and the report says what failed
                failures[seed] = str(exc)
                print(f"quality: {exc}", file=sys.stderr)
                continue
            log.info(format_summary(results[-1]))
    finally:
        signal.signal(signal.SIGTERM, previous)
    section = format_section(
        results,
        date=date,
        command=command.strip(),
        events=args.events,
        rate=args.rate,
        failures=failures,
        idle_settle_s=args.idle_settle_s,
    )
    write_section(args.output, section)
    if args.json is not None:
        args.json.write_bytes(jsoncodec.dumps([r.as_dict() for r in results]))
    print(section)
    print(f"results written to {args.output} ({SECTION_HEADING})")
    if failures:
        return 2
    return 0 if all_targets_met(results, args.events) else 1


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _quiet_logging() -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s quality: %(message)s", datefmt="%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def all_targets_met(results: Sequence[SeedResult], events: int) -> bool:
    return all(all(r.targets().values()) for r in results)


# ---- one seed --------------------------------------------------------------------------------------------------


def simulation_config(seed: int, events: int, rate: float, now_ms: int | None = None) -> SimulationConfig:
    """The fraud run's config: every scenario, at least `events` traffic events, event time ending a window and
    its grace (plus SETTLE_MARGIN_S) before now, so idleness settles every window once the input is drained."""
    from stream_app.tools.simulator.publish import fast_start_ms

    policy = Policy()
    settle_room_s = policy.window_s + policy.grace_s + SETTLE_MARGIN_S
    duration_s = float(math.ceil(events / rate))
    for _ in range(_DURATION_TRIES):
        config = SimulationConfig(
            seed=seed,
            start_ms=fast_start_ms(duration_s + settle_room_s, now_ms),
            duration_s=duration_s,
            rate_per_s=rate,
            fraud=FRAUD_SCENARIOS,
        )
        traffic = sum(1 for event in generate(config) if event.topic is not InputTopic.PROFILES)
        if traffic >= events:
            return config
        duration_s = float(math.ceil(duration_s * events / max(traffic, 1) * 1.005))
    raise QualityError(f"the simulator yields {traffic} events over {duration_s} s, fewer than {events}")


def measure_seed(
    seed: int,
    *,
    events: int,
    rate: float = DEFAULT_RATE,
    bootstrap: str | None = None,
    idle_settle_s: int = IDLE_SETTLE_S,
) -> SeedResult:
    """The fraud run and the baseline run of one seed, joined to the labels and summed up."""
    config = simulation_config(seed, events, rate)
    stream = list(generate(config))
    organic = [event for event in stream if event.label == ORGANIC]
    # the baseline run: what a perfect scorer keeps (organic traffic, and fraud no rule can tell from a person)
    passing = [event for event in stream if event.expected_reason is None]
    log.info("seed %d: %d events (%d organic, %d the rules must pass), %.0f s of event time", seed, len(stream),
             len(organic), len(passing), config.duration_s)  # fmt: skip
    # The workers run (and log) in a scratch directory, kept when a run failed, missed a target or saw late events.
    workdir = Path(tempfile.mkdtemp(prefix="stream-app-quality-"))
    labels_path = workdir / "labels.jsonl"
    keep = True
    try:
        with _broker(bootstrap) as address:
            fraud = run_once(
                "fraud", stream, address, workdir, config=config, labels_path=labels_path, idle_settle_s=idle_settle_s
            )
        labels = [jsoncodec.loads(line) for line in labels_path.read_bytes().splitlines()]
        _check_labels(labels, stream)
        with _broker(bootstrap) as address:
            baseline = run_once("baseline", passing, address, workdir, idle_settle_s=idle_settle_s)
        result = summarize(seed, config, stream, fraud, passing, baseline)
        keep = not all(result.targets().values()) or any(run["late"] for run in result.runs.values())
        if keep:
            result.logs = str(workdir)
            log.info("seed %d: worker logs and labels kept in %s", seed, workdir)
        return result
    except StreamAppError as exc:
        raise QualityError(f"seed {seed}: {exc} (worker logs kept in {workdir})") from None
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def _check_labels(labels: list[dict[str, Any]], stream: list[SimEvent]) -> None:
    """The label side file of the published run must be the generated stream, event for event."""
    if len(labels) != len(stream):
        raise QualityError(f"label file has {len(labels)} lines, the stream {len(stream)} events")
    for line, event in zip(labels, stream, strict=True):
        if (line["topic"], line["event_id"], line["label"], line["expected_reason"]) != (
            event.topic.value,
            event.event_id,
            event.label,
            event.expected_reason,
        ):
            raise QualityError(f"label line {line} differs from the generated event {event!r}")


@contextlib.contextmanager
def _broker(explicit: str | None) -> Iterator[str]:
    configured = (explicit or os.environ.get("KAFKA_BOOTSTRAP", "")).strip()
    if configured:
        yield configured
        return
    from stream_app.edges.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:  # fresh for every run: tansu keeps everything in memory
        yield broker.bootstrap


# ---- one run ---------------------------------------------------------------------------------------------------


def worker_env(bootstrap: str, prefix: str, idle_settle_s: int = IDLE_SETTLE_S) -> dict[str, str]:
    """The worker's environment: default policy (IDLE_SETTLE_S as given), own topics and group, tansu timeouts."""
    env = {k: v for k, v in bench_worker_env(bootstrap, prefix, f"{prefix}app").items() if k not in _POLICY_ENV}
    env["IDLE_SETTLE_S"] = str(idle_settle_s)
    return env


def run_once(
    name: str,
    stream: list[SimEvent],
    bootstrap: str,
    workdir: Path,
    *,
    config: SimulationConfig | None = None,
    labels_path: Path | None = None,
    idle_settle_s: int = IDLE_SETTLE_S,
) -> RunOutput:
    """Publish `stream` (by run_simulation(config) when given, which must generate exactly `stream`), run the
    worker until everything is processed and quiet, then read its output and join it to `stream`."""
    from stream_app.edges.kafka_client import client_kwargs

    prefix = f"q{uuid.uuid4().hex[:8]}-"
    env = worker_env(bootstrap, prefix, idle_settle_s)
    security = client_kwargs(env)
    _stream_app(env, workdir, "topics", "apply")
    started = time.monotonic()
    if config is not None:
        from stream_app.tools.simulator.publish import run_simulation

        report = asyncio.run(
            run_simulation(
                config, bootstrap=bootstrap, topic_prefix=prefix, labels_path=labels_path, client_kwargs=security
            )
        )
        published = report.events
    else:
        published = asyncio.run(_publish(stream, bootstrap, prefix, security))
    if published != len(stream):
        raise QualityError(f"{name} run: published {published} events, the stream has {len(stream)}")
    log.info("%s run: published %d events in %.1f s under %s", name, published, time.monotonic() - started, prefix)
    launched = time.monotonic()
    metrics = _run_worker(env, workdir, name, published)
    seconds = time.monotonic() - launched
    log.info("%s run: worker done in %.0f s", name, seconds)
    return asyncio.run(_collect(name, stream, bootstrap, prefix, security, published, seconds, metrics))


def _stream_app(env: Mapping[str, str], workdir: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", *args],
        env=dict(env),
        cwd=workdir,
        capture_output=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise QualityError(f"stream-app {' '.join(args)} exited {done.returncode}: {done.stderr.decode()[-2000:]}")


async def _publish(stream: list[SimEvent], bootstrap: str, prefix: str, security: Mapping[str, Any]) -> int:
    """The stream as run_simulation sends it: profiles first, then batches of 500 per topic in stream order."""
    from stream_app.edges.producer import RewardsProducer
    from stream_app.tools.simulator.publish import DEFAULT_BATCH_EVENTS

    sent = 0
    async with RewardsProducer(bootstrap, topic_prefix=prefix, client_kwargs=security) as producer:
        pending: dict[InputTopic, list[dict[str, Any]]] = {topic: [] for topic in InputTopic}
        raw: dict[InputTopic, list[tuple[bytes | None, bytes]]] = {topic: [] for topic in InputTopic}

        async def flush(topic: InputTopic) -> None:
            nonlocal sent
            if pending[topic]:
                sent += (await producer.send(topic, pending[topic])).events
                pending[topic] = []
            if raw[topic]:
                sent += (await producer.send_raw_records(topic, raw[topic])).events
                raw[topic] = []

        in_profiles = True
        for event in stream:
            if in_profiles and event.topic is not InputTopic.PROFILES:
                in_profiles = False
                for topic in InputTopic:
                    await flush(topic)
            if isinstance(event.payload, bytes):
                raw[event.topic].append((event.raw_key, event.payload))
                size = len(raw[event.topic])
            else:
                pending[event.topic].append(event.payload)
                size = len(pending[event.topic])
            if size >= DEFAULT_BATCH_EVENTS:
                await flush(event.topic)
        for topic in InputTopic:
            await flush(topic)
    return sent


def _run_worker(env: dict[str, str], workdir: Path, name: str, published: int) -> dict[str, float]:
    """Run `stream-app worker` until every event has an outcome, none is pending and nothing moves for QUIET_S."""
    url = f"http://127.0.0.1:{env['METRICS_PORT']}/metrics"
    log_path = workdir / f"{name}-worker.log"
    timeout = START_TIMEOUT_S + published / SLOWEST_EVENTS_PER_S
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "stream_app.cli", "worker"],
            env=env,
            cwd=workdir,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        signature: tuple[tuple[str, float], ...] | None = None
        still_since = 0.0
        samples: dict[str, float] = {}
        while True:
            if process.poll() is not None:
                raise QualityError(f"{name} worker exited with status {process.returncode}: {_tail(log_path)}")
            if time.monotonic() > deadline:
                raise QualityError(
                    f"{name} worker not done after {timeout:.0f} s: {_progress(samples, published)}; {_tail(log_path)}"
                )
            with contextlib.suppress(OSError):
                samples = scrape_metrics(url)
            done = _outcomes(samples) == published and samples.get("rewards_pending_interactions", 1.0) == 0
            current = _signature(samples)
            now = time.monotonic()
            if not done or current != signature:
                signature, still_since = current, now
            elif now - still_since >= QUIET_S:
                return samples
            time.sleep(SCRAPE_INTERVAL_S)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _outcomes(samples: Mapping[str, float]) -> int:
    return int(sum(value for name, value in samples.items() if name.startswith("rewards_events_total{")))


def _signature(samples: Mapping[str, float]) -> tuple[tuple[str, float], ...]:
    """Every rewards_* sample that moves with scoring (not lag, which moves with time, nor the worker-health
    metrics: a heartbeat's age moves every second)."""
    return tuple(
        sorted(
            (name, value)
            for name, value in samples.items()
            if name.startswith("rewards_")
            and "lag" not in (family := name.split("{", 1)[0])
            and family not in HEALTH_METRIC_NAMES
        )
    )


def _progress(samples: Mapping[str, float], published: int) -> str:
    pending = samples.get("rewards_pending_interactions")
    return f"{_outcomes(samples)} of {published} events have an outcome, {pending} interactions pending"


def _tail(path: Path, chars: int = 3_000) -> str:
    """What stopped the worker, first (its first CRITICAL line and the last exception line of its log), then the
    end of its log."""
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(log unreadable: {exc})"
    lines = text.splitlines()
    critical = next((line for line in lines if " CRITICAL " in line), None)
    exception = next((line for line in reversed(lines) if re.match(r"^[\w.]+(Error|Exception)\b", line)), None)
    summary = " / ".join(line.strip() for line in (critical, exception) if line)
    return (summary + "\n" if summary else "") + "--- log tail ---\n" + text[-chars:]


# ---- reading the output and joining it -------------------------------------------------------------------------

Record = tuple[int, int, bytes | None, bytes | None]  # partition, offset, key, value


async def read_all(bootstrap: str, topic: str, security: Mapping[str, Any]) -> list[Record]:
    """Every record of `topic` up to its end offsets now, in (partition, offset) order."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
        **dict(security),
    )
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise QualityError(f"topic {topic} has no partitions")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = {tp for tp in tps if ends[tp] > 0}
        records: list[Record] = []
        deadline = time.monotonic() + 300
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=1000)
            for tp, messages in batches.items():
                records.extend((tp.partition, m.offset, m.key, m.value) for m in messages)
                if messages and messages[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            if time.monotonic() > deadline:
                raise QualityError(f"reading {topic}: {len(records)} records after 300 s")
    finally:
        await consumer.stop()
    records.sort(key=lambda r: (r[0], r[1]))
    return records


def _identity(topic: str, payload: Any) -> tuple[str, str]:
    """What names one published object: its event_id, or (profiles) its whole JSON."""
    if isinstance(payload, dict):
        event_id = payload.get("event_id")
        if isinstance(event_id, str):
            return topic, event_id
        return topic, jsoncodec.dumps(dict(sorted(payload.items()))).decode()
    return topic, jsoncodec.dumps(payload).decode()


def positions_of(stream: Sequence[SimEvent], inputs: Mapping[str, list[Record]]) -> tuple[dict[Position, int], int]:
    """Input position -> index in `stream` of the event published there; and how many positions matched nothing."""
    by_identity: dict[tuple[str, str], list[int]] = {}
    by_raw: dict[tuple[str, bytes | None, bytes], list[int]] = {}
    for index, event in enumerate(stream):
        topic = event.topic.value
        if isinstance(event.payload, bytes):
            by_raw.setdefault((topic, event.raw_key, event.payload), []).append(index)
        else:
            by_identity.setdefault(_identity(topic, event.payload), []).append(index)
    # Occurrences are consumed first to last: the n-th copy in (partition, offset, index) order is the n-th one.
    raw_next: Counter[tuple[str, bytes | None, bytes]] = Counter()
    id_next: Counter[tuple[str, str]] = Counter()
    positions: dict[Position, int] = {}
    unmatched = 0
    for topic, records in inputs.items():
        for partition, offset, key, value in records:
            raw_key = (topic, key, value or b"")
            taken = raw_next[raw_key]
            if raw_key in by_raw and taken < len(by_raw[raw_key]):
                raw_next[raw_key] += 1
                positions[(topic, partition, offset, None)] = by_raw[raw_key][taken]
                continue
            decoded = jsoncodec.loads(value or b"null")
            elements = list(enumerate(decoded)) if isinstance(decoded, list) else [(None, decoded)]
            for element_index, element in elements:
                ident = _identity(topic, element)
                n = id_next[ident]
                candidates = by_identity.get(ident, [])
                if n < len(candidates):
                    id_next[ident] += 1
                    positions[(topic, partition, offset, element_index)] = candidates[n]
                else:
                    unmatched += 1
    unmatched += sum(len(v) for v in by_identity.values()) - sum(id_next.values())
    unmatched += sum(len(v) for v in by_raw.values()) - sum(raw_next.values())
    return positions, unmatched


async def _collect(
    name: str,
    stream: list[SimEvent],
    bootstrap: str,
    prefix: str,
    security: Mapping[str, Any],
    published: int,
    seconds: float,
    metrics: dict[str, float],
) -> RunOutput:
    inputs = {topic.value: await read_all(bootstrap, prefix + topic.value, security) for topic in _TOPICS}
    positions, unmatched = positions_of(stream, inputs)
    if unmatched:
        raise QualityError(f"{name} run: {unmatched} published events could not be matched to their labels")
    flags: dict[int, set[Flag]] = {}
    unjoined = 0

    def position(record: Mapping[str, Any]) -> Position:
        topic = str(record["source_topic"])
        return topic.removeprefix(prefix), int(record["partition"]), int(record["offset"]), record["index"]

    details: dict[int, list[str]] = {}

    def join(where: Position, flag: Flag, detail: str) -> None:
        nonlocal unjoined
        index = positions.get(where)
        if index is None:
            unjoined += 1
        else:
            flags.setdefault(index, set()).add(flag)
            details.setdefault(index, []).append(detail)

    audits: dict[tuple[Position, str, str], str] = {}
    for *_, value in await read_all(bootstrap, prefix + "suspicious-events", security):
        record = jsoncodec.loads(value or b"null")
        audits[(position(record), str(record["outcome"]), str(record["reason"]))] = str(record.get("detail"))
    for (where, outcome, reason), detail in audits.items():
        join(where, (outcome, reason), f"{outcome}:{reason}: {detail}")
    dead: dict[Position, str] = {}
    for *_, value in await read_all(bootstrap, prefix + "events-dlq", security):
        record = jsoncodec.loads(value or b"null")
        dead[position(record)] = str(record.get("error"))
    for where, error in dead.items():
        join(where, (INVALID, INVALID), f"invalid: {error}")
    newest: dict[str, dict[str, Any]] = {}
    for *_, value in await read_all(bootstrap, prefix + "reward-accruals", security):
        if value is None:
            continue
        accrual = jsoncodec.loads(value)
        held = newest.get(accrual["video_id"])
        if held is None or accrual["version"] >= held["version"]:
            newest[accrual["video_id"]] = accrual
    net = {video: a["settled_micros"] - a["clawback_micros"] + a["provisional_micros"] for video, a in newest.items()}
    return RunOutput(
        name=name,
        prefix=prefix,
        published=published,
        seconds=seconds,
        metrics=metrics,
        flags=flags,
        details=details,
        audit_records=len(audits),
        dlq_records=len(dead),
        unjoined=unjoined,
        net_micros=net,
        provisional_micros=sum(a["provisional_micros"] for a in newest.values()),
        qualified_views=sum(a["qualified_views"] for a in newest.values()),
    )


# ---- the numbers -----------------------------------------------------------------------------------------------


def _flag_name(flag: Flag) -> str:
    outcome, reason = flag
    return INVALID if outcome == INVALID else f"{outcome}:{reason}"


def _has_reason(flags: set[Flag], reason: str) -> bool:
    if reason == INVALID:
        return (INVALID, INVALID) in flags
    return any(outcome in ("suspicious", "clawback") and r == reason for outcome, r in flags)


def _flagged(flags: set[Flag]) -> bool:
    return any(outcome in _FLAGGED for outcome, _ in flags)


def _sample(index: int, event: SimEvent, flags: set[Flag], details: list[str]) -> dict[str, Any]:
    payload = event.payload if isinstance(event.payload, dict) else event.payload.decode(errors="replace")
    return {
        "index_in_stream": index,
        "topic": event.topic.value,
        "label": event.label,
        "expected_reason": event.expected_reason,
        "flags": sorted(_flag_name(f) for f in flags),
        "details": sorted(details),
        "payload": payload,
    }


def _scenario_row(scenario: str, stream: list[SimEvent], fraud: RunOutput) -> tuple[ScenarioRow, list[dict[str, Any]]]:
    """One scenario's counts in the fraud run, and samples of its events that missed their expected flag."""
    reasons = EXPECTED_REASONS[scenario]
    injected = expected = caught_right = caught_any = unexpected = 0
    for index, event in enumerate(stream):
        if event.label != scenario:
            continue
        injected += 1
        flags = fraud.flags.get(index, set())
        if event.expected_reason is None:
            unexpected += _flagged(flags)
            continue
        expected += 1
        caught_right += _has_reason(flags, event.expected_reason)
        caught_any += _flagged(flags)
        unexpected += _flagged(flags) and not _has_reason(flags, event.expected_reason)
    flagged_with_reason = flagged_as_expected = 0
    for index, flags in fraud.flags.items():
        if any(_has_reason(flags, reason) for reason in reasons):
            flagged_with_reason += 1
            wanted = stream[index].expected_reason
            flagged_as_expected += wanted in reasons and _has_reason(flags, wanted or "")
    missed = [
        _sample(index, stream[index], fraud.flags.get(index, set()), fraud.details.get(index, []))
        for index, event in enumerate(stream)
        if event.label == scenario
        and event.expected_reason is not None
        and not _has_reason(fraud.flags.get(index, set()), event.expected_reason)
    ][:SAMPLES]
    row = ScenarioRow(
        scenario, reasons, injected, expected, caught_right, caught_any, flagged_with_reason, flagged_as_expected,
        unexpected,
    )  # fmt: skip
    return row, missed


def summarize(
    seed: int,
    config: SimulationConfig,
    stream: list[SimEvent],
    fraud: RunOutput,
    passing: list[SimEvent],
    baseline: RunOutput,
) -> SeedResult:
    """`passing`: the events of the baseline run (those labelled with no expected reason)."""
    labels = Counter(event.label for event in stream)
    missed: dict[str, list[dict[str, Any]]] = {}
    rows = []
    for scenario in SCENARIOS:
        row, missed[scenario] = _scenario_row(scenario, stream, fraud)
        rows.append(row)
    by_label: dict[str, Counter[str]] = {}
    for index, flags in fraud.flags.items():
        counter = by_label.setdefault(stream[index].label, Counter())
        for flag in flags:
            counter[_flag_name(flag)] += 1
    organic_indices = [i for i, event in enumerate(stream) if event.label == ORGANIC]
    organic_flagged = sum(1 for i in organic_indices if _flagged(fraud.flags.get(i, set())))
    false_positives: dict[str, list[dict[str, Any]]] = {}
    for i in organic_indices:
        flags = fraud.flags.get(i, set())
        for flag in flags:
            if flag[0] in (*_FLAGGED, "late") and len(false_positives.setdefault(_flag_name(flag), [])) < SAMPLES:
                false_positives[_flag_name(flag)].append(_sample(i, stream[i], flags, fraud.details.get(i, [])))
    organic_late = sum(1 for i in organic_indices if any(o == "late" for o, _ in fraud.flags.get(i, set())))
    baseline_flagged = sum(1 for flags in baseline.flags.values() if _flagged(flags))
    baseline_flags: Counter[str] = Counter()
    for flags in baseline.flags.values():
        baseline_flags.update(_flag_name(flag) for flag in flags)
    touched: dict[str, set[str]] = {scenario: set() for scenario in SCENARIOS}
    for event in stream:
        if event.label != ORGANIC and isinstance(event.payload, dict) and "video_id" in event.payload:
            touched[event.label].add(event.payload["video_id"])
    videos = fraud.net_micros.keys() | baseline.net_micros.keys()
    diff = {v: fraud.net_micros.get(v, 0) - baseline.net_micros.get(v, 0) for v in videos}
    any_touched = set().union(*touched.values())
    return SeedResult(
        seed=seed,
        config={
            "seed": config.seed,
            "start_ms": config.start_ms,
            "duration_s": config.duration_s,
            "rate_per_s": config.rate_per_s,
            "fraud_share": config.fraud_share,
            "creators": config.creators,
            "videos": config.videos,
        },
        events=len(stream),
        baseline_events=len(passing),
        labels=dict(sorted(labels.items())),
        rows=rows,
        organic_events=len(organic_indices),
        organic_flagged=organic_flagged,
        organic_late=organic_late,
        baseline_organic_flagged=baseline_flagged,
        baseline_flags=dict(sorted(baseline_flags.items())),
        flags_by_label={label: dict(sorted(c.items())) for label, c in sorted(by_label.items())},
        money_fraud=sum(fraud.net_micros.values()),
        money_baseline=sum(baseline.net_micros.values()),
        money_by_scenario={s: sum(diff.get(v, 0) for v in touched[s]) for s in SCENARIOS},
        money_untouched=sum(d for v, d in diff.items() if v not in any_touched),
        qualified_views_fraud=fraud.qualified_views,
        qualified_views_baseline=baseline.qualified_views,
        missed=missed,
        false_positives=false_positives,
        runs={
            run.name: {
                "prefix": run.prefix,
                "published": run.published,
                "worker_seconds": round(run.seconds, 1),
                "audit_records": run.audit_records,
                "dlq_records": run.dlq_records,
                "unjoined": run.unjoined,
                "provisional_micros": run.provisional_micros,
                "late": int(sum(v for k, v in run.metrics.items() if 'outcome="late"' in k)),
            }
            for run in (fraud, baseline)
        },
    )


# ---- report ----------------------------------------------------------------------------------------------------


def _pct(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.{digits}f} %"


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _usd(micros: int) -> str:
    return f"{micros:,} micros (${micros / 1_000_000:,.2f})"


def _yes(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def format_summary(result: SeedResult) -> str:
    recalls = ", ".join(f"{row.scenario} {row.recall:.3f}" for row in result.rows)
    return (
        f"seed {result.seed}: recall {recalls}; organic FP {result.fp_rate * 100:.3f} %; "
        f"money {result.money_fraud} vs {result.money_baseline} ({result.money_diff * 100:+.3f} %)"
    )


def format_section(
    results: Sequence[SeedResult],
    *,
    date: str,
    command: str,
    events: int,
    rate: float = DEFAULT_RATE,
    failures: Mapping[int, str] | None = None,
    idle_settle_s: int = IDLE_SETTLE_S,
) -> str:
    from stream_app.tools.benchmark import machine_info

    machine = machine_info()
    seeds = ", ".join(str(seed) for seed in sorted([r.seed for r in results] + list(failures or {})))
    fraud_share = SimulationConfig(seed=0, start_ms=0).fraud_share
    lines = [
        SECTION_HEADING,
        "",
        f"Run {date} with `{command}` (method: the docstring of `stream_app/quality.py`).",
        "",
        f"- Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"faust-streaming {machine['faust']}; load average (1, 5, 15 min) {machine['load_average']} at the end.",
        f"- Seeds: {seeds}; at least {events:,} traffic events per run, at {rate:g} "
        "events/s of event time, every fraud scenario injected (fraud_share "
        f"{fraud_share:g}); each run on a fresh embedded tansu broker (unless one was given).",
        "- Worker: `stream-app worker`, default policy (WINDOW_S 3600, GRACE_S 300, every rule threshold) with "
        f"IDLE_SETTLE_S {idle_settle_s}{'' if idle_settle_s == IDLE_SETTLE_S else ' (not the default)'}; all "
        "input published first; event time ends a window + grace + "
        f"{SETTLE_MARGIN_S} s before the wall clock, so every window settles by idleness once the input is drained.",
        "- Recall (right reason): events of the scenario labelled with an expected reason that the scorer flagged "
        "with that reason (outcome suspicious or clawback; `invalid`: dead-lettered) / events labelled so. Recall "
        "(any flag): the same events flagged with any reason. Precision: events flagged with one of the "
        "scenario's reasons that were labelled with that reason (by any scenario) / every event flagged with one "
        "of them. Other flags: events of the scenario flagged although no reason (or another one) was expected of "
        "them (e.g. a repeat viewer's first 5 views).",
        "- Baseline run: the same stream less every event the rules must reject, so it keeps what no rule can "
        "tell apart from a person: the organic traffic, each farm phone's first view (`farm_under_threshold`), "
        "the views of an account farm's first 8 accounts per phone, an overlap bot's views that do not overlap "
        "(one screen's worth), each velocity-burst account's first view and a looping viewer's first 5 views. "
        "The money target compares the fraud run's net money with it.",
        "- Flags come from `suspicious-events` and `events-dlq`, joined to the simulator's label file by input "
        "position (source_topic, partition, offset, index); money is the newest `reward-accruals` record per "
        "video: settled - clawback + provisional.",
        "",
    ]
    for r in results:
        lines += [
            f"### Seed {r.seed}",
            "",
            f"{r.events:,} events ({', '.join(f'{k} {v:,}' for k, v in r.labels.items())}), "
            f"{r.config['duration_s']:,.0f} s of event time starting {r.config['start_ms']}; "
            f"worker {r.runs['fraud']['worker_seconds']:,.0f} s (fraud run) and "
            f"{r.runs['baseline']['worker_seconds']:,.0f} s (baseline run: {r.baseline_events:,} events, the "
            "organic ones and the fraud no rule can tell from a person).",
            "",
            "| scenario | reason | injected | expected flags | caught with right reason | recall | "
            "recall (any flag) | precision | other flags |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in r.rows:
            lines.append(
                f"| {row.scenario} | `{row.reason}` | {row.injected:,} | {row.expected:,} | {row.caught_right:,} | "
                f"{_ratio(row.recall)} | {_ratio(row.recall_any)} | {_ratio(row.precision)} | "
                f"{row.unexpected_flags:,} |"
            )
        diff_line = ", ".join(f"{s} {m:+,}" for s, m in r.money_by_scenario.items() if m)
        lines += [
            "",
            f"- Organic false positives: {r.organic_flagged:,} of {r.organic_events:,} organic events "
            f"(profiles included) flagged = {_pct(r.fp_rate, 3)}; late: {r.organic_late:,}; in the baseline run "
            f"(nothing to reject): {r.baseline_organic_flagged:,} flagged"
            + (" (" + ", ".join(f"{k} {v:,}" for k, v in r.baseline_flags.items()) + ")" if r.baseline_flags else "")
            + ".",
            "- Flags by label (events): "
            + "; ".join(
                f"{label}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items())
                for label, counts in r.flags_by_label.items()
            )
            + ".",
            f"- Money (net, all videos): {_usd(r.money_fraud)} with fraud, {_usd(r.money_baseline)} in the "
            f"baseline run (what a perfect scorer pays), difference {r.money_fraud - r.money_baseline:+,} micros = "
            f"{r.money_diff * 100:+.3f} %. Qualified views {r.qualified_views_fraud:,} vs "
            f"{r.qualified_views_baseline:,}. Difference over the videos each scenario touched: "
            f"{diff_line or 'none'}; over untouched videos: {r.money_untouched:+,} (micros).",
            "- Targets: " + ", ".join(f"{name} {_yes(ok)}" for name, ok in r.targets().items()) + ".",
            "",
        ]
    for seed, failure in (failures or {}).items():
        first_line = failure.strip().splitlines()[0] if failure.strip() else "unknown error"
        lines += [f"### Seed {seed}", "", f"**The run failed**: {first_line[:_FAILURE_CHARS]}", ""]
    met = all_targets_met(results, events) and not failures
    enough = events >= DEFAULT_EVENTS and len(results) >= 2
    lines += [
        f"**Overall: {'every target met' if met else 'targets missed'}** (recall >= {TARGET_RECALL} for every "
        f"scenario, organic FP < {TARGET_FP_RATE * 100:g} %, money within {TARGET_MONEY_DIFF * 100:g} %)"
        + ("" if enough else f"; the done criterion needs 2 completed seeds of at least {DEFAULT_EVENTS:,} events")
        + ".",
        "",
    ]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    from stream_app.tools.benchmark import replace_section

    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(existing, section, SECTION_HEADING), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(run_quality(sys.argv[1:]))
