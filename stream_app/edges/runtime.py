"""Process-wide settings of the worker's Python runtime."""

from __future__ import annotations

import gc

# CPython's cyclic collector runs a young collection every 700 allocations and, now and then, a full one over
# every object; a worker holds millions of small objects (a day of viewer memories) that form no cycles, so those
# passes are pure overhead. Measured on the scoring core (600k-event hot-video workload, CPU time): 38 us/event
# with the default thresholds, 28.5 with (100_000, 50, 1_000), 26.4 with the collector off. Cycles are still
# collected. Later, compiled core (bench/RESULTS.md, Speed steps 13): (100_000, 50, 1_000) still cost 5-11 %
# against the collector off, growing with the heap (the decode phase, where most objects are made, 4.4 -> 8.5
# us/event from the first third to the last, 2.5 -> 3.3 with the collector off); (1_000_000, 10, 1_000) is within
# 2 % of off (time in collections 4.0 -> 2.2 s of the run). The longest pause stays about 0.4 s (then a middle
# collection, now a young one), rare either way.
GC_THRESHOLDS = (1_000_000, 10, 1_000)


def tune_gc() -> None:
    """Collect less often (see GC_THRESHOLDS); call once at start-up."""
    gc.set_threshold(*GC_THRESHOLDS)


def core_compiled() -> bool:
    """Whether the scoring core this process runs is the one compiled with mypyc (stream_app.tools.compile: the
    production image, `make bench`) rather than the sources."""
    from stream_app.domain import rules

    return not rules.__file__.endswith(".py")


def core_description() -> str:
    """Which scoring core this process runs, as the worker's start-up log and the bench's results say it."""
    return "compiled with mypyc" if core_compiled() else "interpreted (the sources)"
