"""`stream-app replay --policy FILE [--baseline FILE] [--from T] [--to T] [--output DIR]` (SPEC §11), and
`measure_replay` for the throughput benchmark.

Reads the retained input with its own consumer (reading.py), scores it under the baseline and the candidate in one
pass (engine.py), reads the ledger and reconciles the baseline with it (ledger.py), writes the five files
(report.py). Never writes to a topic, never joins a consumer group.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from stream_app.domain.errors import BrokerError, ConfigError, ReplayError, ReplaySelectionError
from stream_app.domain.events import InputTopic, OutputTopic
from stream_app.domain.policy import Policy, load_policy, policy_hash, same_verdicts
from stream_app.domain.windows import window_bounds, window_index
from stream_app.replay import ledger as ledger_mod
from stream_app.replay import reading, report
from stream_app.replay.device_rules import DeviceShare, PeerLost
from stream_app.replay.engine import PolicyRun, ReplayEngine, RunSummary


def add_parser(sub: Any) -> None:
    """The `replay` subcommand (called by cli.build_parser)."""
    replay = sub.add_parser(
        "replay",
        help="score the retained input under a candidate policy beside the baseline, and reconcile the ledger",
        description=__doc__,
    )
    replay.add_argument("--policy", required=True, help="the candidate policy: a TOML file (keys of domain/policy.py)")
    replay.add_argument(
        "--baseline", help="the baseline policy file (default: the policy in effect, from POLICY_FILE and environment)"
    )
    replay.add_argument(
        "--from", dest="from_time", metavar="T", help="first record timestamp to read: ISO-8601 or epoch ms"
    )
    replay.add_argument(
        "--to", dest="to_time", metavar="T", help="last record timestamp to read (default: everything retained)"
    )
    replay.add_argument("--output", metavar="DIR", help="where to write the five files (default: ./replay-<time>)")
    replay.set_defaults(func=run)


def load_policies(env: Mapping[str, str], candidate_file: str, baseline_file: str | None) -> tuple[Policy, Policy]:
    """The baseline is the policy the workers run (POLICY_FILE and environment) unless --baseline names a file; the
    candidate is what the workers would run with POLICY_FILE=FILE in the same environment."""
    try:
        baseline = load_policy(env, baseline_file) if baseline_file else load_policy(env)
    except ConfigError as exc:
        raise ConfigError(f"baseline policy: {exc}") from None
    try:
        candidate = load_policy(env, candidate_file)
    except ConfigError as exc:
        raise ConfigError(f"candidate policy (--policy): {exc}") from None
    return baseline, candidate


@dataclass
class ReplayOutcome:
    baseline: PolicyRun | RunSummary
    candidate: PolicyRun | RunSummary
    engine: ReplayEngine
    snapshot: reading.Snapshot
    selection: reading.Selection
    present_ms: int
    ledger_values: list[bytes | None]
    covered_from_ms: int | None
    read_seconds: float
    read_cpu_seconds: float
    # start -> every process has scored the last record (what a worker's events/s covers: first event processed
    # to last); read_seconds adds the end of the input (drained device rules, every window due settled)
    input_seconds: float


@dataclass
class _Scored:
    """One process's read of the input under its policies."""

    engine: ReplayEngine
    snapshot: reading.Snapshot
    present_ms: int
    ledger_values: list[bytes | None]
    read_seconds: float
    read_cpu_seconds: float
    started_at: float  # time.monotonic() (one clock for every process of the machine) when reading began
    last_record_at: float  # time.monotonic() when the last record was scored


def replay(
    bootstrap: str,
    prefix: str,
    security: Mapping[str, Any],
    baseline: Policy,
    candidate: Policy,
    selection: reading.Selection,
    *,
    wall_clock_ms: int,
    progress: bool = True,
    read_ledger: bool = True,
    processes: int | None = None,
) -> ReplayOutcome:
    """SPEC §11's replay of the input under both policies. With two cores or more (`processes` None), the candidate
    is scored by a process of its own (forked, so it reads the very snapshot this one took) while this one scores
    the baseline and reads the ledger: a replay then takes about the worker's time per event, where one process
    scoring both takes twice that. When the two differ in money only (policies/v2.toml), each process judges half
    the devices and the two swap their flags after every batch (device_rules.py). With one, both policies in this
    process (their device rules shared when they differ in money only, engine.py)."""
    if processes is None:
        processes = 2 if (os.cpu_count() or 1) >= 2 else 1
    snapshot = asyncio.run(_snapshot(bootstrap, prefix, security, selection, read_ledger=read_ledger))
    if processes < 2:  # both policies in this process, in one pass over the input
        scored = asyncio.run(
            _score(
                bootstrap,
                prefix,
                security,
                [baseline, candidate],
                selection,
                snapshot,
                wall_clock_ms=wall_clock_ms,
                progress=progress,
                read_ledger=read_ledger,
            )
        )
        baseline_run, candidate_run = scored.engine.runs
        return ReplayOutcome(
            baseline_run,
            candidate_run,
            scored.engine,
            snapshot,
            selection,
            scored.present_ms,
            scored.ledger_values,
            _covered_from(selection, snapshot, scored.engine, baseline),
            scored.read_seconds,
            scored.read_cpu_seconds,
            scored.last_record_at - scored.started_at,
        )
    context = multiprocessing.get_context("fork")
    receiving, sending = context.Pipe(duplex=False)
    # devices shared out between the two processes when the policies judge alike (each end: one share's peer)
    ours, theirs = context.Pipe(duplex=True) if same_verdicts(baseline, candidate) else (None, None)
    started = time.monotonic()
    child = context.Process(
        target=_score_elsewhere,
        args=(sending, theirs, ours, bootstrap, prefix, security, candidate, selection, snapshot, wall_clock_ms),
        name="stream-app replay (candidate)",
        daemon=True,
    )
    child.start()
    sending.close()
    if theirs is not None:
        theirs.close()
    try:
        mine = asyncio.run(
            _score(
                bootstrap,
                prefix,
                security,
                [baseline],
                selection,
                snapshot,
                wall_clock_ms=wall_clock_ms,
                progress=progress,
                read_ledger=read_ledger,
                device_share=None if ours is None else DeviceShare(0, ours),
            )
        )
        try:
            message = receiving.recv()
        except EOFError:  # it ended without a result
            raise ReplayError(_why_ended(receiving, child)) from None
    except PeerLost:  # the candidate's process ended in the middle of a swap of device flags
        raise ReplayError(_why_ended(receiving, child)) from None
    finally:
        if ours is not None:
            ours.close()  # a candidate waiting for this process's flags gets EOFError and ends
        child.join(timeout=60)
        if child.is_alive():
            child.kill()
    if message[0] != "ok":
        raise ReplayError(f"scoring the candidate failed: {message[1]}")
    _, videos, totals, cpu_s, last_record_at = message
    (baseline_run,) = mine.engine.runs
    return ReplayOutcome(
        baseline_run,
        RunSummary(candidate, policy_hash(candidate), videos, totals),
        mine.engine,
        mine.snapshot,
        selection,
        mine.present_ms,
        mine.ledger_values,
        _covered_from(selection, mine.snapshot, mine.engine, baseline),
        time.monotonic() - started,
        mine.read_cpu_seconds + cpu_s,
        max(mine.last_record_at, last_record_at) - started,
    )


def _why_ended(receiving: Any, child: Any) -> str:
    """What the candidate's process said before it ended early, if it said it in time."""
    if receiving.poll(10):
        try:
            message = receiving.recv()
        except EOFError:
            pass
        else:
            if message[0] == "error":
                return f"scoring the candidate failed: {message[1]}"
    child.join(timeout=10)
    return f"the candidate's process ended early (exit code {child.exitcode})"


def _score_elsewhere(
    sending: Any,
    peer: Any,
    parents_end: Any,
    bootstrap: str,
    prefix: str,
    security: Mapping[str, Any],
    policy: Policy,
    selection: reading.Selection,
    snapshot: reading.Snapshot,
    wall_clock_ms: int,
) -> None:
    """The candidate's process: score the snapshot under `policy` (with device share 1 when `peer` is not None),
    send back what the report reads of it."""
    if parents_end is not None:
        parents_end.close()  # inherited by the fork: closed, so that the parent's end alone keeps the pipe open
    try:
        scored = asyncio.run(
            _score(
                bootstrap,
                prefix,
                security,
                [policy],
                selection,
                snapshot,
                wall_clock_ms=wall_clock_ms,
                progress=False,
                read_ledger=False,
                device_share=None if peer is None else DeviceShare(1, peer),
            )
        )
        (run,) = scored.engine.runs
        sending.send(("ok", run.results(), run.totals, scored.read_cpu_seconds, scored.last_record_at))
    except BaseException as exc:  # the parent reports it: a child's traceback alone would be lost on stderr
        sending.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        sending.close()


async def _started_consumer(bootstrap: str, security: Mapping[str, Any]) -> Any:
    from aiokafka.errors import KafkaError

    consumer = reading.new_consumer(bootstrap, security)
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise BrokerError(f"cannot reach the broker at {bootstrap}: {exc}") from None
    return consumer


async def _snapshot(
    bootstrap: str, prefix: str, security: Mapping[str, Any], selection: reading.Selection, *, read_ledger: bool
) -> reading.Snapshot:
    """Where the input starts and ends now (reading.take_snapshot). With `read_ledger`, the ledger topic must exist
    too: a missing one is refused with the input, before the long read."""
    required = (prefix + OutputTopic.SETTLEMENTS.value,) if read_ledger else ()
    consumer = await _started_consumer(bootstrap, security)
    try:
        return await reading.take_snapshot(consumer, bootstrap, prefix, selection, security, required)
    finally:
        await consumer.stop()


async def _score(
    bootstrap: str,
    prefix: str,
    security: Mapping[str, Any],
    policies: list[Policy],
    selection: reading.Selection,
    snapshot: reading.Snapshot,
    *,
    wall_clock_ms: int,
    progress: bool,
    read_ledger: bool,
    device_share: DeviceShare | None = None,
) -> _Scored:
    """Read the snapshot's input once and score it under `policies`; then the ledger, when asked."""
    from stream_app.domain.partitioning import partition_for

    consumer = await _started_consumer(bootstrap, security)
    try:
        reading.assign_snapshot(consumer, snapshot)
        # let aiokafka start the task an assignment starts: stopped before it ran once (an empty selection stops
        # at once), it raised CancelledError out of consumer.stop()
        await asyncio.sleep(0)
        engine = ReplayEngine(policies, snapshot.partitions, partition_for, device_share=device_share)
        total = sum(snapshot.records(t) for t in InputTopic)
        with _progress(total, progress) as advance:
            started, cpu0 = time.monotonic(), time.process_time()
            engine.add_profiles(await reading.read_profiles(consumer, snapshot, selection, advance))
            async for record in reading.read_events(consumer, snapshot, selection, advance):
                engine.add(record)
            last_record_at = time.monotonic()
            newest = engine.counts.newest_event_ts
            if newest is None:
                raise ReplaySelectionError(
                    f"no view or interaction between {_shown(selection.from_ms)} and {_shown(selection.to_ms)} in "
                    f"{snapshot.topics[InputTopic.VIEWS]} and {snapshot.topics[InputTopic.INTERACTIONS]}: nothing "
                    "to replay"
                )
            # SPEC §11: the end of the input is the present: the newest event time read with --to, else now
            present = newest if selection.to_ms is not None else wall_clock_ms
            engine.finish(present)
            read_seconds, read_cpu = time.monotonic() - started, time.process_time() - cpu0
        ledger_values: list[bytes | None] = []
        if read_ledger:
            ledger_topic = prefix + OutputTopic.SETTLEMENTS.value
            count = snapshot.other_partitions[ledger_topic]
            settlements = await reading.read_settlements(consumer, ledger_topic, count, bootstrap, security)
            ledger_values = [value for _, _, value in settlements]
    finally:
        await consumer.stop()
    return _Scored(engine, snapshot, present, ledger_values, read_seconds, read_cpu, started, last_record_at)


def _covered_from(
    selection: reading.Selection, snapshot: reading.Snapshot, engine: ReplayEngine, policy: Policy
) -> int | None:
    """The start of the first window the input covers whole: after --from, or after where retention cut it."""
    start = selection.from_ms
    if start is None:
        start = snapshot.complete_from_ms()
    if start is None:
        return None
    k = window_index(start, policy.window_s)
    first, _ = window_bounds(k, policy.window_s)
    return first if first == start else window_bounds(k + 1, policy.window_s)[0]


class _progress:
    """A rich progress bar over the records to read (on stderr), or nothing."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self._bar: Any = None

    def __enter__(self) -> Any:
        if not self.enabled:
            return lambda n: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("replay: reading records"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._bar.start()
        task = self._bar.add_task("read", total=self.total)
        return lambda n: self._bar.advance(task, n) if n else None

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()


def _shown(ms: int | None) -> str:
    return "the start" if ms is None else reading.format_ms(ms)


def build_files(outcome: ReplayOutcome, baseline_source: str, candidate_source: str, out: Path) -> dict[str, Any]:
    """Reduce the outcome to rows, reconcile with the ledger, write the five files; returns summary.json's content."""
    base_run, cand_run = outcome.baseline, outcome.candidate
    grace_ms = base_run.policy.grace_s * 1000
    records, _bad = ledger_mod.decode_ledger(outcome.ledger_values)
    ledger_view = ledger_mod.reduce_ledger(
        records, covered_from_ms=outcome.covered_from_ms, due_by_ms=outcome.present_ms, grace_ms=grace_ms
    )
    replay_view = ledger_mod.reduce_ledger(
        base_run.totals.settlements,
        covered_from_ms=outcome.covered_from_ms,
        due_by_ms=outcome.present_ms,
        grace_ms=grace_ms,
        device_clawed=base_run.totals.device_clawed,
    )
    reconciliation = ledger_mod.reconcile(ledger_view, replay_view)
    videos = report.video_rows(base_run.results(), cand_run.results())
    creators = report.creator_rows(videos)
    counts = outcome.engine.counts
    selection = outcome.selection
    facts = report.ReplayFacts(
        baseline=base_run.policy,
        candidate=cand_run.policy,
        baseline_id=base_run.policy_id,
        candidate_id=cand_run.policy_id,
        baseline_source=baseline_source,
        candidate_source=candidate_source,
        selection={
            "from": _shown(selection.from_ms),
            "to": "the end" if selection.to_ms is None else _shown(selection.to_ms),
            # not the wall clock's value: the same input must give the same files
            "present": "the wall clock (no --to)" if selection.to_ms is None else reading.format_ms(outcome.present_ms),
            "newest_event": reading.format_ms(counts.newest_event_ts or 0),
            "compared_from": "the start" if outcome.covered_from_ms is None else _shown(outcome.covered_from_ms),
        },
        read={
            "records": dict(sorted(counts.records.items())),
            "events": dict(sorted(counts.events.items())),
            "invalid": dict(sorted(counts.invalid.items())),
        },
        outcomes={"baseline": _outcomes(base_run), "candidate": _outcomes(cand_run)},
    )
    return report.write_files(out, facts, videos, creators, reconciliation)


def _outcomes(run: PolicyRun | RunSummary) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for (topic, outcome, reason), n in run.totals.outcomes.items():
        counts[" ".join(part for part in (topic, outcome, reason) if part)] += n
    return dict(sorted(counts.items()))


def run(args: argparse.Namespace) -> int:
    from stream_app.edges.kafka_client import client_kwargs
    from stream_app.edges.runtime import tune_gc
    from stream_app.edges.settings import load_settings

    settings = load_settings()
    baseline, candidate = load_policies(settings.env, args.policy, args.baseline)
    selection = reading.Selection(
        None if args.from_time is None else reading.parse_time(args.from_time, "--from"),
        None if args.to_time is None else reading.parse_time(args.to_time, "--to"),
    )
    now = dt.datetime.now(dt.UTC)
    out = Path(args.output) if args.output else Path(f"replay-{now.strftime('%Y%m%dT%H%M%SZ')}")
    tune_gc()  # as the worker: millions of small objects that form no cycles
    outcome = replay(
        settings.kafka_bootstrap,
        settings.topic_prefix,
        client_kwargs(settings.env),
        baseline,
        candidate,
        selection,
        wall_clock_ms=int(now.timestamp() * 1000),
        progress=True,
    )
    baseline_source = args.baseline or (settings.policy_file or "defaults") + " + environment"
    summary = build_files(outcome, baseline_source, args.policy, out)
    recon = summary["reconciliation"]
    totals = summary["totals"]
    print(
        f"replay: {sum(outcome.engine.counts.events.values()):,} events in {outcome.read_seconds:.1f} s; "
        f"baseline {policy_hash(baseline)} {report.micros(totals['baseline_settled_micros'])}, "
        f"candidate {policy_hash(candidate)} {report.micros(totals['candidate_settled_micros'])}; "
        f"{recon['status']}"
        + (f" ({recon['differing_videos']} videos differ)" if recon["differing_videos"] else "")
        + f"; files in {out}/",
        file=sys.stdout,
    )
    return 0


# ---- for the throughput benchmark (stream_app/tools/benchmark/) ------------------------------------------------


@dataclass(frozen=True)
class ReplayTiming:
    """A replay's read-and-score throughput over a broker's input (both policies, the device rules included)."""

    events: int  # input events read (envelope elements count one each), profiles included
    records: int
    seconds: float  # first record read -> every window settled (connecting and the snapshot not counted)
    cpu_s: float
    # first record read -> the last record scored by every process: the span a worker's events/s covers (first
    # event processed -> last), without the end of the input (drained device rules, every due window settled)
    input_seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    @property
    def input_events_per_s(self) -> float:
        return self.events / self.input_seconds if self.input_seconds > 0 else float("inf")


def measure_replay(
    bootstrap: str,
    topic_prefix: str,
    *,
    env: Mapping[str, str] | None = None,
    candidate: Mapping[str, Any] | None = None,
) -> ReplayTiming:
    """Replay everything under `topic_prefix` as `stream-app replay` does (baseline: the environment's policy;
    candidate: the baseline with the field values in `candidate`, default policies/v2.toml's watch weight) and time
    it. Writes no file and reads no ledger. For `stream-app bench`, to report beside the worker on the same input.

    In a fresh interpreter of its own, as `stream-app replay` runs: a benchmark's process holds what it
    generated and published, and scoring in that heap costs ~7 % more CPU (measured)."""
    from concurrent.futures import ProcessPoolExecutor

    # spawned, not forked (the replay forks the candidate's process itself: a pool's workers may have children)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(
            _measure_here, bootstrap, topic_prefix, dict(os.environ if env is None else env), candidate
        ).result()


def _measure_here(
    bootstrap: str, topic_prefix: str, env: Mapping[str, str], candidate: Mapping[str, Any] | None
) -> ReplayTiming:
    from stream_app.edges.kafka_client import client_kwargs
    from stream_app.edges.runtime import tune_gc

    baseline = load_policy(env)
    tune_gc()
    outcome = replay(
        bootstrap,
        topic_prefix,
        client_kwargs(env),
        baseline,
        replace(baseline, **({"watch_weight_bps": 2_000} if candidate is None else candidate)),
        reading.Selection(),
        wall_clock_ms=int(time.time() * 1000),
        progress=False,
        read_ledger=False,
    )
    counts = outcome.engine.counts
    return ReplayTiming(
        sum(counts.events.values()),
        sum(counts.records.values()),
        outcome.read_seconds,
        outcome.read_cpu_seconds,
        outcome.input_seconds,
    )
