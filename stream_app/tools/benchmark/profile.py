"""Where the scorer's time goes: py-spy's raw (folded) stacks summed by the function on top of each sample (its
own time) and by the part of the program that function belongs to.

A folded line is `frame;frame;...;frame COUNT`, outermost first, each frame `function (file:line)`. py-spy (without
--idle) records only threads that are running, so the samples are CPU time; time in a C extension (orjson, RocksDB)
is charged to the Python function that called it.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>[^():]*)(?::\d+)?\)$")

# The parts of the program, in the order they are tried on a frame's file (the first that matches wins).
GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("validation", ("stream_app/domain/validation.py", "stream_app/domain/events.py")),
    ("rules", ("stream_app/domain/rules.py", "stream_app/domain/rules_state.py")),
    (
        "journal/state",
        (
            "stream_app/domain/journal.py",
            "stream_app/domain/partition.py",
            "stream_app/domain/scoring.py",
            "stream_app/domain/codec.py",
            "stream_app/streaming/tables.py",
            "faust/stores/",
            "faust/tables/",
            "rocksdict",
        ),
    ),
    ("JSON", ("stream_app/domain/jsoncodec.py", "json/", "orjson")),
    ("metrics", ("stream_app/edges/metrics.py", "prometheus_client/")),
    ("Faust/aiokafka/asyncio", ("faust/", "aiokafka/", "mode/", "asyncio/", "kafka/", "selectors.py", "ssl.py")),
    ("scorer wiring (streaming/)", ("stream_app/streaming/",)),
    ("other scorer code", ("stream_app/",)),
)
OTHER = "other (Python runtime, libraries)"


def group_of(file: str) -> str:
    for name, markers in GROUPS:
        if any(marker in file for marker in markers):
            return name
    return OTHER


@dataclass
class ProfileSummary:
    samples: int = 0
    by_function: Counter[tuple[str, str]] = field(default_factory=Counter)  # (function, file) -> own samples
    by_group: Counter[str] = field(default_factory=Counter)

    def share(self, count: int) -> float:
        return 100.0 * count / self.samples if self.samples else 0.0


def summarize_folded(text: str) -> ProfileSummary:
    summary = ProfileSummary()
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        leaf = stack.rsplit(";", 1)[-1]
        match = _FRAME.match(leaf)
        function, file = (match["function"], match["file"]) if match else (leaf, "")
        summary.samples += count
        summary.by_function[(function, file)] += count
        summary.by_group[group_of(file)] += count
    return summary


def summarize_file(path: Path) -> ProfileSummary | None:
    try:
        return summarize_folded(path.read_text(errors="replace"))
    except OSError:
        return None


def format_profile(summary: ProfileSummary, top: int = 15) -> list[str]:
    """Markdown: the parts of the program, then the top functions by own time."""
    lines = [
        "| part of the program | own samples | share |",
        "|---|---:|---:|",
    ]
    for name, count in summary.by_group.most_common():
        lines.append(f"| {name} | {count:,} | {summary.share(count):.1f} % |")
    lines += ["", "| function (file) | own samples | share |", "|---|---:|---:|"]
    for (function, file), count in summary.by_function.most_common(top):
        lines.append(f"| `{function}` ({file}) | {count:,} | {summary.share(count):.1f} % |")
    return lines
