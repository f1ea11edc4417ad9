"""The quality report's command (`python bench/quality.py`, `stream-app simulate --report`) and its runs: per seed
the fraud run and the baseline run, each on a fresh broker: topics applied, the stream published by the simulator's
publisher, `stream-app worker` watched through its /metrics until it is done and quiet, its output joined."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import math
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.domain.errors import StreamAppError
from stream_app.domain.events import InputTopic
from stream_app.domain.policy import Policy
from stream_app.edges.cli_args import positive_int
from stream_app.tools import harness
from stream_app.tools.harness import WorkerProcess, fresh_broker, metrics_url, outcomes, scoring_signature
from stream_app.tools.quality.join import RunOutput, collect
from stream_app.tools.quality.method import (
    DEFAULT_EVENTS,
    DEFAULT_OUTPUT,
    DEFAULT_RATE,
    DEFAULT_SEEDS,
    IDLE_SETTLE_S,
    QUIET_S,
    SCRAPE_INTERVAL_S,
    SECTION_HEADING,
    SETTLE_MARGIN_S,
    SLOWEST_EVENTS_PER_S,
    START_TIMEOUT_S,
    QualityError,
)
from stream_app.tools.quality.report import format_section, format_summary
from stream_app.tools.quality.results import SeedResult, all_targets_met, summarize
from stream_app.tools.simulator import FRAUD_SCENARIOS, ORGANIC, SimEvent, SimulationConfig, generate
from stream_app.tools.simulator.publish import fast_start_ms, run_simulation

log = logging.getLogger(__name__)

_DURATION_TRIES = 4
# Policy variables a caller's environment might carry; the report runs the default policy, so they are dropped.
_POLICY_ENV = ("POLICY_FILE", "WINDOW_S", "GRACE_S", "EMIT_INTERVAL_S", "MAX_CLOCK_SKEW_S", "QUALIFY_ONCE_S",
               "CLAWBACK_HORIZON_S", "TARGET_RATE_BPS", "DEDUPE_S", "QUALIFYING_SOURCES", "STORE")  # fmt: skip


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
    harness.progress_log(log, "quality")
    command = "python bench/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    with harness.sigterm_exits():
        results, failures = _measure_seeds(seeds, args)
    section = format_section(
        results,
        date=date,
        command=command.strip(),
        events=args.events,
        rate=args.rate,
        failures=failures,
        idle_settle_s=args.idle_settle_s,
    )
    harness.write_section(args.output, section)
    if args.json is not None:
        args.json.write_bytes(jsoncodec.dumps([r.as_dict() for r in results]))
    print(section)
    print(f"results written to {args.output} ({SECTION_HEADING})")
    if failures:
        return 2
    return 0 if all_targets_met(results) else 1


def _measure_seeds(seeds: list[int], args: argparse.Namespace) -> tuple[list[SeedResult], dict[int, str]]:
    """Each seed's result; a seed that failed is in the failures (the other seeds still run)."""
    results: list[SeedResult] = []
    failures: dict[int, str] = {}
    for seed in seeds:
        try:
            result = measure_seed(
                seed, events=args.events, rate=args.rate, bootstrap=args.bootstrap, idle_settle_s=args.idle_settle_s
            )
        except StreamAppError as exc:
            failures[seed] = str(exc)
            print(f"quality: {exc}", file=sys.stderr)
            continue
        results.append(result)
        log.info(format_summary(result))
    return results, failures


# ---- one seed --------------------------------------------------------------------------------------------------


def simulation_config(seed: int, events: int, rate: float, now_ms: int | None = None) -> SimulationConfig:
    """The fraud run's config: every scenario, at least `events` traffic events, event time ending a window and
    its grace (plus SETTLE_MARGIN_S) before now, so idleness settles every window once the input is drained."""
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
        with fresh_broker(bootstrap) as broker:
            fraud = run_once("fraud", config, stream, broker.bootstrap, workdir, labels_path, idle_settle_s)
        _check_labels([jsoncodec.loads(line) for line in labels_path.read_bytes().splitlines()], stream)
        with fresh_broker(bootstrap) as broker:
            baseline = run_once("baseline", config, passing, broker.bootstrap, workdir, None, idle_settle_s)
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


# ---- one run ---------------------------------------------------------------------------------------------------


def worker_env(bootstrap: str, prefix: str, idle_settle_s: int = IDLE_SETTLE_S) -> dict[str, str]:
    """The worker's environment: default policy (IDLE_SETTLE_S as given), own topics and group, tansu timeouts."""
    env = harness.worker_env(bootstrap, prefix, f"{prefix}app")
    env = {k: v for k, v in env.items() if k not in _POLICY_ENV}
    env["IDLE_SETTLE_S"] = str(idle_settle_s)
    return env


def run_once(
    name: str,
    config: SimulationConfig,
    stream: list[SimEvent],
    bootstrap: str,
    workdir: Path,
    labels_path: Path | None,
    idle_settle_s: int = IDLE_SETTLE_S,
) -> RunOutput:
    """Publish `stream` (a part of `config`'s traffic, or all of it) as `stream-app simulate` does, run the worker
    until everything is processed and quiet, then read its output and join it to `stream`."""
    prefix = f"q{uuid.uuid4().hex[:8]}-"
    env = worker_env(bootstrap, prefix, idle_settle_s)
    security = harness.security_kwargs(env)
    harness.apply_topics(bootstrap, prefix, [env["APP_ID"]])
    started = time.monotonic()
    report = asyncio.run(
        run_simulation(
            config,
            bootstrap=bootstrap,
            topic_prefix=prefix,
            labels_path=labels_path,
            client_kwargs=security,
            events=stream,
        )
    )
    if report.events != len(stream):
        raise QualityError(f"{name} run: published {report.events} events, the stream has {len(stream)}")
    log.info("%s run: published %d events in %.1f s under %s", name, report.events, time.monotonic() - started, prefix)
    launched = time.monotonic()
    metrics = _run_worker(env, workdir, name, report.events)
    seconds = time.monotonic() - launched
    log.info("%s run: worker done in %.0f s", name, seconds)
    return asyncio.run(collect(name, stream, bootstrap, prefix, security, report.events, seconds, metrics))


def _run_worker(env: dict[str, str], workdir: Path, name: str, published: int) -> dict[str, float]:
    """Run `stream-app worker` until every event has an outcome, none is pending and nothing moves for QUIET_S."""
    url = metrics_url(env)
    timeout = harness.timeout_for(published, start_s=START_TIMEOUT_S, slowest_events_per_s=SLOWEST_EVENTS_PER_S)
    with WorkerProcess(harness.SCORER_COMMAND, env, workdir, name) as worker:
        deadline = time.monotonic() + timeout
        signature: tuple[tuple[str, float], ...] | None = None
        still_since = 0.0
        samples: dict[str, float] = {}
        while True:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise QualityError(f"{name} worker not done after {timeout:.0f} s: {_progress(samples, published)}; "
                                   f"{worker.tail()}")  # fmt: skip
            samples = harness.scrape(url) or samples
            done = outcomes(samples) == published and samples.get("rewards_pending_interactions", 1.0) == 0
            current = scoring_signature(samples)
            now = time.monotonic()
            if not done or current != signature:
                signature, still_since = current, now
            elif now - still_since >= QUIET_S:
                return samples
            time.sleep(SCRAPE_INTERVAL_S)


def _progress(samples: dict[str, float], published: int) -> str:
    pending = samples.get("rewards_pending_interactions")
    return f"{outcomes(samples)} of {published} events have an outcome, {pending} interactions pending"
