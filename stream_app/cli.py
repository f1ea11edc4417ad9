"""The `stream-app` command line (SPEC §10): the composition root that wires settings, edges and the worker."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from stream_app.domain.errors import StreamAppError
from stream_app.domain.events import InputTopic

if TYPE_CHECKING:
    from stream_app.edges.settings import Settings


def _settings() -> Settings:
    from stream_app.edges.settings import load_settings

    return load_settings()


def cmd_worker(args: argparse.Namespace) -> int:
    import faust

    from stream_app.edges.logging_setup import configure_logging
    from stream_app.edges.metrics import RewardsMetrics
    from stream_app.streaming.app import build_app

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    scorer = build_app(settings, RewardsMetrics())
    worker = faust.Worker(
        scorer.faust,
        loglevel=settings.log_level,
        quiet=True,
        # Our logging is configured above; Faust's would add its spinner, which sets the root logger to DEBUG.
        override_logging=False,
    )
    worker.spinner = None
    worker.execute_from_commandline()
    return 0


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

    async def run() -> str:
        stream = sys.stdin.buffer if args.file == "-" else open(args.file, "rb")  # noqa: SIM115
        try:
            async with RewardsProducer(
                settings.kafka_bootstrap,
                topic_prefix=settings.topic_prefix,
                mode="single" if args.single else "envelope",
                client_kwargs=client_kwargs(settings.env),
            ) as producer:
                report = await publish_lines(stream, topic=topic, producer=producer, raw=args.raw)
                return str(report.summary())
        finally:
            if stream is not sys.stdin.buffer:
                stream.close()

    print(asyncio.run(run()))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="stream-app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="run the Faust worker (configured by environment variables)")
    worker.set_defaults(func=cmd_worker)

    topics = sub.add_parser("topics", help="create (apply) or compare (plan) the topics declared in topics/")
    topics.add_argument("action", choices=["apply", "plan"])
    topics.add_argument("--file", help="topic declarations (default: the packaged topics/topics.toml)")
    topics.add_argument("--replication-factor", type=int, default=None)
    topics.set_defaults(func=cmd_topics)

    publish = sub.add_parser("publish", help="publish JSON lines (one event per line) to an input topic")
    publish.add_argument("file", help="a file of JSON lines, or - for standard input")
    publish.add_argument("--topic", required=True, choices=[t.value for t in InputTopic])
    publish.add_argument("--single", action="store_true", help="one record per event instead of batch envelopes")
    publish.add_argument("--raw", action="store_true", help="send each line as-is, unvalidated (replays, tests)")
    publish.set_defaults(func=cmd_publish)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except StreamAppError as exc:
        print(f"stream-app: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
