"""What the measurements of the benchmark share beyond the harness (stream_app/tools/harness.py): a measurement's
figures, the run's time limits, the scorer's changelog topics, committed offsets, and py-spy around a command."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stream_app.tools import harness
from stream_app.tools.harness import ToolError, security_kwargs, topic_partitions

log = logging.getLogger("stream_app.tools.benchmark")

# The scorer is watched through its /metrics, which it renders on threads of its own (one per request), so every
# scrape costs the measured worker: py-spy gave the metrics server about 6 % of a scorer's samples at 4 scrapes a
# second on single records, where the no-op peer writes a file instead (and Prometheus scrapes every 15-30 s).
# So the bench scrapes fast only where the timing is decided, before the first event is processed and as the
# last ones near (the start and the end are both timed to within FAST_SCRAPE_S), and in between about four times
# over the time the rate says is left, at most every SLOW_SCRAPE_S (throughput.next_scrape_s). Each scrape asks
# for the progress metrics only (harness.progress_url), which costs the worker less again.
FAST_SCRAPE_S = 0.05
SLOW_SCRAPE_S = 1.0
POLL_INTERVAL_S = 0.1
# The scorer's work on its input does not end with its last event counted: the device judge (its own agent) judges
# the views forwarded last, and table writes and flags go out after. A scorer measurement ends when the worker goes
# quiet: at the start of the first QUIET_S in which it used less than QUIET_CPU_SHARE of a CPU (its ticks and
# device saves cost a few percent), watched for at most SETTLE_MAX_S after the last event.
QUIET_S = 0.5
QUIET_CPU_SHARE = 0.2
# A restarted worker counts as settled (its restore done) once this long quiet.
SETTLED_S = 3.0
SETTLE_MAX_S = 60.0
# How long a measurement may take before the run gives up: start-up plus this many events per second at worst.
START_TIMEOUT_S = 120.0
SLOWEST_EVENTS_PER_S = 200.0


class BenchError(ToolError):
    """A measurement could not be completed (a worker died, or did not finish in time)."""


@dataclass
class Measurement:
    """One consumer's run over a whole input."""

    name: str
    events: int
    seconds: float  # start -> last event processed (the scorer: ready -> quiet after its last event)
    startup_s: float | None = None  # launch -> first event processed (start-up, group join, first fetch)
    cpu_s: float | None = None  # CPU time of the consuming process over `seconds`
    broker_cpu_s: float | None = None  # CPU time of the embedded broker over `seconds`
    peak_rss_mib: float | None = None
    failure: str | None = None  # why it did not process every event (its figures then cover what it did)
    # (time.monotonic(), events processed) at each scrape, from the last one that saw none (the scorer only)
    timeline: list[tuple[float, int]] = field(default_factory=list)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")


def median_measurement(passes: list[Measurement]) -> Measurement:
    """The pass with the median rate (the lower middle one of an even count) among those that processed every
    event; the first pass when none did. Runs of the same consumer on this machine differ by up to 1.4x (the
    scorer took 3.8-6.4 CPU s on the same envelope input from pass to pass: bench/RESULTS.md, Speed steps 15), so
    a target read from one pass can be met or missed by the noise alone."""
    complete = sorted((m for m in passes if m.failure is None), key=lambda m: m.events_per_s)
    if not complete:
        return passes[0]
    return complete[(len(complete) - 1) // 2]


def timeout_for(events: int) -> float:
    return harness.timeout_for(events, start_s=START_TIMEOUT_S, slowest_events_per_s=SLOWEST_EVENTS_PER_S)


# ---- the scorer's changelogs and offsets -----------------------------------------------------------------------


def changelog_topic_names(app_id: str, prefix: str = "") -> list[str]:
    """The scorer's table changelogs (topics/topics.toml: `{app_id}-*-changelog`)."""
    return [f"{prefix}{app_id}-video-state-changelog", f"{prefix}{app_id}-device-state-changelog"]


def committed_offsets_reach_end(bootstrap: str, group: str, topics: Sequence[str], timeout_s: float) -> bool:
    """Wait until `group` has committed the end offset of every partition of `topics` (False after timeout_s)."""
    from aiokafka import AIOKafkaConsumer

    async def wait() -> bool:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False, **dict(security_kwargs())
        )
        await consumer.start()
        try:
            tps = [tp for topic in topics for tp in await topic_partitions(consumer, topic)]
            ends = await consumer.end_offsets(tps)
            deadline = time.monotonic() + timeout_s
            while True:
                behind = [tp for tp in tps if ends[tp] > 0 and ((await consumer.committed(tp)) or 0) < ends[tp]]
                if not behind:
                    return True
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.5)
        finally:
            await consumer.stop()

    return asyncio.run(wait())


# ---- py-spy -----------------------------------------------------------------------------------------------------


def profiled(command: Sequence[str], output: Path, rate: int = 100) -> list[str]:
    """`command` run under py-spy, which writes raw (folded) stacks to `output` when it gets SIGINT."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return [py_spy, "record", "--nonblocking", "-r", str(rate), "-f", "raw", "-o", str(output), "--", *command]
