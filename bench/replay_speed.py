"""`stream-app replay`'s throughput beside the worker's, on the same input (SPEC §11, issue 13 "Speed").

    python bench/replay_speed.py --events 200000 --worker     # replay and the scorer (worker) on one input
    python bench/replay_speed.py --events 1000000             # replay only: a million retained events
    python bench/replay_speed.py --candidate device_memory_s=601   # a candidate that changes a rule

One run: a fresh embedded broker, `stream-app bench`'s input (the simulator's organic traffic, profiles first,
batch envelopes), then `stream_app.replay.command.measure_replay` (both policies, the device rules, every window
settled) and, with --worker, the scorer as `stream-app bench` measures it. Prints one Markdown line per
measurement; `make bench` can report the replay beside the worker by calling `measure_replay` the same way.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

from stream_app.edges.broker import EmbeddedBroker
from stream_app.replay.command import measure_replay
from stream_app.tools.benchmark.common import timeout_for
from stream_app.tools.benchmark.throughput import DEFAULT_RATE, measure_scorer, publish_input, simulated_input
from stream_app.tools.harness import apply_topics, security_kwargs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE)
    parser.add_argument("--worker", action="store_true", help="also measure the scorer (worker) on the same input")
    parser.add_argument(
        "--candidate",
        action="append",
        metavar="FIELD=INT",
        help="a policy field the candidate changes from the baseline (repeatable; default: watch_weight_bps=2000)",
    )
    args = parser.parse_args()
    changes = dict(_field(text) for text in args.candidate) if args.candidate else None
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap
        prefix = f"rbench{os.getpid()}-"
        app_id = f"{prefix}scorer"
        apply_topics(bootstrap, prefix, [app_id])
        started = time.monotonic()
        simulated = simulated_input(args.events, args.rate)
        size = publish_input(bootstrap, prefix, simulated, "envelope", security_kwargs())
        print(
            f"published {size.events:,} events in {size.records:,} records ({size.bytes / 2**20:.0f} MiB, "
            f"{size.event_time_span_s:.0f} s of event time) in {time.monotonic() - started:.0f} s",
            file=sys.stderr,
        )
        timing = measure_replay(bootstrap, prefix, candidate=changes)
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the replay's processes (ended)
        print(
            f"| replay (baseline + candidate, device rules), to the last record | {timing.events:,} | "
            f"{timing.input_seconds:.1f} s | {timing.input_events_per_s:,.0f} events/s | | |"
        )
        print(
            f"| replay, with the end of the input (every due window settled) | {timing.events:,} | "
            f"{timing.seconds:.1f} s | {timing.events_per_s:,.0f} events/s | CPU {timing.cpu_s:.1f} s | "
            f"peak RSS {rss:,.0f} MiB |"
        )
        if args.worker:
            workdir = Path(tempfile.mkdtemp(prefix="replay-bench-"))
            timeout = timeout_for(size.events)
            scorer = measure_scorer(bootstrap, prefix, app_id, size.events_by_topic, workdir, broker.pid, timeout)
            shutil.rmtree(workdir, ignore_errors=True)
            print(
                f"| scorer (worker) | {scorer.events:,} | {scorer.seconds:.1f} s | {scorer.events_per_s:,.0f} events/s"
                f" | CPU {scorer.cpu_s or 0:.1f} s | peak RSS {scorer.peak_rss_mib or 0:,.0f} MiB |"
            )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}")
    return 0


def _field(text: str) -> tuple[str, int]:
    name, sep, value = text.partition("=")
    if not sep or not value.strip().lstrip("-").isdigit():
        raise SystemExit(f"--candidate takes FIELD=INT (a whole-number policy field), got {text!r}")
    return name.strip(), int(value)


if __name__ == "__main__":
    sys.exit(main())
