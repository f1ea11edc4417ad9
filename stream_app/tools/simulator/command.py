"""`stream-app simulate` without `--report`: the options (cli.py defines them) turned into a SimulationConfig, the
traffic published to the configured broker, and the publisher's report printed as one JSON line."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from stream_app.domain import jsoncodec
from stream_app.tools.simulator.publish import fast_start_ms, run_simulation
from stream_app.tools.simulator.scenarios import FRAUD_SCENARIOS, SimulationConfig


def simulate(args: argparse.Namespace) -> int:
    """Publish the traffic `args` describe (fast mode ends its event time now; --realtime paces it to the wall
    clock); 0 when it was all sent."""
    from stream_app.edges.kafka_client import client_kwargs
    from stream_app.edges.settings import load_settings

    settings = load_settings()
    fraud = frozenset(FRAUD_SCENARIOS) if args.fraud == "all" else frozenset(filter(None, args.fraud.split(",")))
    config = SimulationConfig(
        seed=args.seed,
        start_ms=fast_start_ms(args.duration),
        duration_s=args.duration,
        rate_per_s=args.rate,
        creators=args.creators,
        videos=args.videos,
        fraud=fraud,
        fraud_share=args.fraud_share,
    )
    report = asyncio.run(
        run_simulation(
            config,
            bootstrap=settings.kafka_bootstrap,
            topic_prefix=settings.topic_prefix,
            mode="single" if args.single else "envelope",
            labels_path=Path(args.labels) if args.labels else None,
            realtime=args.realtime,
            client_kwargs=client_kwargs(settings.env),
        )
    )
    print(jsoncodec.dumps(report.as_dict()).decode())
    return 0
