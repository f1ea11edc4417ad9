"""The `stream-app` command line (SPEC §10): the composition root that wires settings, edges and the worker."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stream_app.domain.errors import StreamAppError
from stream_app.domain.events import InputTopic
from stream_app.edges.cli_args import (
    USAGE_ERROR,
    OneLineParser,
    describe_os_error,
    fraction,
    non_negative_float,
    positive_float,
    positive_int,
)

if TYPE_CHECKING:
    from stream_app.edges.settings import Settings

log = logging.getLogger("stream_app.cli")


def _settings() -> Settings:
    from stream_app.edges.settings import load_settings

    return load_settings()


def cmd_worker(args: argparse.Namespace) -> int:
    from stream_app.edges.kafka_client import check_broker, client_kwargs
    from stream_app.edges.logging_setup import configure_logging
    from stream_app.edges.metrics import RewardsMetrics
    from stream_app.edges.runtime import core_description, tune_gc
    from stream_app.streaming.app import build_app
    from stream_app.streaming.lifecycle import ScorerWorker

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    tune_gc()
    scorer = build_app(settings, RewardsMetrics())
    # Refuse to start, in one line, on a broker that does not answer, instead of letting Faust retry behind a
    # wall of log lines. (Missing topics are the worker's own check, before it joins its group: streaming/topology.)
    check = check_broker(settings.kafka_bootstrap, client_kwargs(settings.env))
    preflight_loop = asyncio.new_event_loop()  # not the current loop: Faust's worker makes and owns that one
    client_log = logging.getLogger("aiokafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # a refused connection is reported once, by check_broker's error
    try:
        preflight_loop.run_until_complete(check)
    finally:
        client_log.setLevel(level)
        preflight_loop.close()
    log.info("scoring core: %s", core_description())
    worker = ScorerWorker(
        scorer.faust,
        scorer.lifecycle,
        loglevel=settings.log_level,
        quiet=True,
        # Our logging is configured above; Faust's would add its spinner, which sets the root logger to DEBUG.
        override_logging=False,
    )
    worker.spinner = None
    code = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
        raise
    finally:
        scorer.lifecycle.stopped(code)
    return code


def cmd_topics(args: argparse.Namespace) -> int:
    from stream_app.edges import topics_admin
    from stream_app.edges.kafka_client import client_kwargs

    settings = _settings()
    plan = topics_admin.load_topic_plan(
        Path(args.file) if args.file else None,
        prefix=settings.topic_prefix,
        app_id=settings.app_id,
        replication_factor=args.replication_factor,
    )
    action = topics_admin.apply if args.action == "apply" else topics_admin.plan
    report = asyncio.run(action(settings.kafka_bootstrap, plan, client_kwargs=client_kwargs(settings.env)))
    print(topics_admin.format_report(report))
    return 1 if report.has_errors else 0


def cmd_publish(args: argparse.Namespace) -> int:
    from stream_app.edges.kafka_client import client_kwargs
    from stream_app.edges.producer import RewardsProducer
    from stream_app.edges.publish import publish_lines

    settings = _settings()
    topic = InputTopic(args.topic)
    # Opened before connecting: a missing file is one line and exit 2, not a traceback after a broker round trip.
    stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115 (closed below)

    async def run() -> tuple[str, int]:
        async with RewardsProducer(
            settings.kafka_bootstrap,
            topic_prefix=settings.topic_prefix,
            mode="single" if args.single else "envelope",
            client_kwargs=client_kwargs(settings.env),
        ) as producer:
            report = await publish_lines(stream, topic=topic, producer=producer, raw=args.raw)
            return report.summary(), report.rejected

    try:
        summary, rejected = asyncio.run(run())
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    print(summary)
    # Rejected lines were named on stderr with their numbers; the exit code lets a script notice them too.
    return 1 if rejected else 0


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.report:
        from stream_app.tools.quality import run_quality

        events = int(args.rate * args.duration)
        return run_quality(["--events", str(events), "--seeds", str(args.seed), "--rate", str(args.rate)])
    from stream_app.tools.simulator.command import simulate

    return simulate(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from stream_app.tools.demo import run_demo

    return run_demo(duration_s=args.duration, rate=args.rate, seed=args.seed)


def cmd_bench(args: argparse.Namespace) -> int:
    from stream_app.tools.benchmark import run_bench

    return run_bench(args.bench_args)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="stream-app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run the Faust worker (configured by environment variables)")
    worker.set_defaults(func=cmd_worker)

    topics = sub.add_parser("topics", help="create (apply) or compare (plan) the topics declared in topics/")
    topics.add_argument("action", choices=["apply", "plan"])
    topics.add_argument("--file", help="topic declarations (default: the packaged topics/topics.toml)")
    topics.add_argument("--replication-factor", type=positive_int, default=None)
    topics.set_defaults(func=cmd_topics)

    publish = sub.add_parser("publish", help="publish JSON lines (one event per line) to an input topic")
    publish.add_argument("file", help="a file of JSON lines, or - for standard input")
    publish.add_argument("--topic", required=True, choices=[t.value for t in InputTopic])
    publish.add_argument("--single", action="store_true", help="one record per event instead of batch envelopes")
    publish.add_argument(
        "--raw", action="store_true", help="send each line as-is, without the worker's validation (replays, tests)"
    )
    publish.set_defaults(func=cmd_publish)

    simulate = sub.add_parser("simulate", help="publish organic traffic with labelled fraud injected")
    simulate.add_argument("--seed", type=int, default=1, help="the same seed gives the same traffic")
    simulate.add_argument("--rate", type=positive_float, default=200.0, help="events per second of event time")
    simulate.add_argument("--duration", type=positive_float, default=60.0, help="seconds of event time")
    simulate.add_argument("--creators", type=positive_int, default=400)
    simulate.add_argument("--videos", type=positive_int, default=5_000)
    simulate.add_argument("--fraud", default="all", help="comma list of scenarios, 'all' or '' (none)")
    simulate.add_argument("--fraud-share", type=fraction, default=0.03, help="share of traffic that is fraud")
    simulate.add_argument("--labels", help="write the labels (JSON lines) to this side file")
    simulate.add_argument("--realtime", action="store_true", help="pace to the wall clock (ts = now)")
    simulate.add_argument("--single", action="store_true", help="one record per event instead of envelopes")
    simulate.add_argument(
        "--report",
        action="store_true",
        help="run the scorer on this traffic (fresh embedded broker) and write the quality report to bench/RESULTS.md",
    )
    simulate.set_defaults(func=cmd_simulate)

    demo = sub.add_parser("demo", help="embedded broker + worker + simulated traffic, accruals shown live")
    demo.add_argument("--duration", type=non_negative_float, default=90.0, help="seconds to run (0: until Ctrl-C)")
    demo.add_argument("--rate", type=positive_float, default=100.0, help="simulated events per second")
    demo.add_argument("--seed", type=int, default=7)
    demo.set_defaults(func=cmd_demo)

    bench = sub.add_parser("bench", help="throughput against a no-op Faust agent and the raw consumer")
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="options of the benchmark (--help)")
    bench.set_defaults(func=cmd_bench)

    from stream_app.replay.command import add_parser as add_replay_parser

    add_replay_parser(sub)
    return parser


def _quiet_client_logs() -> None:
    """Kafka clients log a connection failure before raising it; the command reports it in one line instead."""
    if logging.getLogger().level > logging.DEBUG:
        client_log = logging.getLogger("aiokafka")
        client_log.addHandler(logging.NullHandler())
        client_log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. Bad input (a missing file, a bad flag value or setting, an unreachable broker) is one line
    on stderr and exit 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        # the benchmark parses its own options (argparse.REMAINDER drops leading "--events"-style options)
        from stream_app.tools.benchmark import run_bench

        _quiet_client_logs()
        return run_bench(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command != "worker":  # the worker configures its own logging (LOG_LEVEL, LOG_FORMAT)
        _quiet_client_logs()
    try:
        return int(args.func(args))
    except StreamAppError as exc:
        print(f"stream-app {args.command}: {exc}", file=sys.stderr)
    except OSError as exc:
        print(f"stream-app {args.command}: {describe_os_error(exc)}", file=sys.stderr)
    return USAGE_ERROR


if __name__ == "__main__":
    sys.exit(main())
