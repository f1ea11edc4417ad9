"""State memory of the per-video ledgers and the per-device state (issue 4): what one distinct viewer and one
distinct device cost while the rules remember them, and that the memory drops back once their horizons pass.

    python bench/state_memory.py [--viewers N] [--videos N] [--devices N] [--output bench/RESULTS.md]

Writes the `## State memory` section of the results file (other sections are kept). Pure domain code, no broker:

- viewers: N distinct viewers, each viewing one of the videos once, spread evenly over one window (default
  1,000,000 viewers over 1,000 videos in one hour), fed through `PartitionScorer.on_event` + `flush` (the path the
  worker's events agent takes) into an in-memory store that keeps the ledger objects (as the scorer's cache does).
  Then one more view and one interaction per video 27 h after the window start move the watermark past every
  per-viewer horizon: the window settles and `VideoLedger.expire` runs, as it does for a video that stays active.
- devices: N distinct devices, one view each, judged with `rules.check_device_burst` and kept as
  device_id -> DeviceState plus its table value, as `streaming/devices.py` does; then `rules.expire_device` at a
  watermark past DEVICE_BURST_SPAN + GRACE_S empties them.

Heap is `tracemalloc`'s current traced size after `gc.collect()`, relative to just before the data was created.
Serialized is what a table holds: key bytes + `jsoncodec.dumps(x.to_dict())` per key (the changelog's latest
record per key and a RocksDB store's value).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import os
import platform
import resource
import sys
import time
import tracemalloc
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from stream_app.benchmark import replace_section
from stream_app.domain import jsoncodec, rules
from stream_app.domain.events import CreatorProfile, InteractionEvent, ViewEvent
from stream_app.domain.partition import Effects, PartitionScorer
from stream_app.domain.policy import Policy, policy_hash
from stream_app.domain.profiles import ProfileHistory
from stream_app.domain.records import event_to_dict
from stream_app.domain.rules_state import DeviceState
from stream_app.domain.scoring import INTERACTIONS, VIEWS, Position, VideoLedger

SECTION_HEADING = "## State memory"
DEFAULT_OUTPUT = Path("bench/RESULTS.md")
MIB = 1 << 20
HOUR_MS = 3_600_000
# 2026-01-01T00:00:00Z: an hour-aligned epoch ms, so the run's window is window k = T0 // W of the default policy
T0 = 1_767_225_600_000
TAG = "5eed01"  # ids shaped like the simulator's (stream_app/edges/simulator.py)
BATCH = 5_000  # events per PartitionScorer batch (flush writes each touched ledger once)
CREATORS = 100


def event_id(n: int) -> str:
    return f"{(n * 0x9E3779B97F4A7C15 + 0x1234567) % (1 << 128):032x}"  # 32 hex digits, like the simulator's


def viewer_id(n: int) -> str:
    return f"u-{TAG}-{n:07d}"


def device_id(n: int) -> str:
    return f"dv-{TAG}-{n:07d}"


def video_id(n: int) -> str:
    return f"vd-{TAG}-{n:06d}"


def creator_id(n: int) -> str:
    return f"cr-{n % CREATORS:05d}"


def heap() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class ObjectStore:
    """A LedgerStore that keeps the ledger objects (the scorer caches every ledger it has loaded anyway)."""

    def __init__(self) -> None:
        self.ledgers: dict[str, VideoLedger] = {}

    def load(self, video: str) -> VideoLedger | None:
        return self.ledgers.get(video)

    def save(self, ledger: VideoLedger) -> None:
        self.ledgers[ledger.video_id] = ledger

    def video_ids(self) -> Iterator[str]:
        return iter(list(self.ledgers))


@dataclass
class Row:
    what: str
    count: int  # distinct viewers or devices the figures are divided by
    heap: int | None  # bytes
    serialized: int | None  # bytes
    note: str = ""


@dataclass
class ViewerRun:
    rows: list[Row]
    breakdown: dict[str, int]  # serialized bytes by part of the ledger
    entries_before: dict[str, int]
    entries_after: dict[str, int]
    seconds: float


def ledger_parts(ledger: VideoLedger) -> dict[str, int]:
    """Serialized bytes of each part of one ledger's table value."""
    d = ledger.to_dict()
    r = d["rules"]
    parts = {
        "windows (counts, viewers set, pending)": d["windows"],
        "qualified_at (QUALIFY_ONCE_S)": d["qualified_at"],
        "recent (accepted views kept for clawback)": d["recent"],
        "rules.view_ids (duplicate_event, DEDUPE_S)": r["view_ids"],
        "rules.accepted_views (engagement_without_view)": r["accepted_views"],
        "rules.repeats (viewer_repeat, 600 s)": r["repeats"],
        "rules.velocity (head span 60 s, minute counts)": r["velocity"],
    }
    sizes = {name: len(jsoncodec.dumps(part)) for name, part in parts.items()}
    sizes["everything else (totals, settled, applied, ...)"] = len(jsoncodec.dumps(d)) - sum(sizes.values())
    return sizes


def entries(ledgers: Sequence[VideoLedger]) -> dict[str, int]:
    """How many per-viewer entries each memory holds, over all ledgers."""
    return {
        "window viewers": sum(len(w.viewers) for led in ledgers for w in led.windows.values()),
        "qualified_at": sum(len(times) for led in ledgers for times in led.qualified_at.values()),
        "recent": sum(len(led.recent) for led in ledgers),
        "rules.view_ids": sum(len(led.rules.view_ids) for led in ledgers),
        "rules.accepted_views": sum(len(led.rules.accepted_views) for led in ledgers),
        "rules.repeats": sum(len(led.rules.repeats) for led in ledgers),
        "rules.velocity": sum(len(led.rules.velocity) for led in ledgers),
    }


def view_event(n: int, video: int, ts: int, viewer: str) -> ViewEvent:
    # watch 30 s of a 2 min video from the for-you feed in the US: a qualifying view (the costliest kind)
    return ViewEvent(
        event_id(n), video_id(video), creator_id(video), viewer, device_id(n), ts, 30_000, 120_000, "for_you", "US"
    )


def run_viewers(policy: Policy, viewers: int, videos: int) -> ViewerRun:
    started = time.monotonic()
    profiles = ProfileHistory(policy)
    for c in range(CREATORS):
        profiles.add(CreatorProfile(creator_id(c), 50_000, 500_000, True, "good", 0))
    store = ObjectStore()
    scorer = PartitionScorer(policy, policy_hash(policy), 0, store, profiles)
    now_ms = T0 + 2 * HOUR_MS  # wall clock: only stamps updated_at here (no topic is caught up, so none is idle)
    window_ms = policy.window_s * 1000
    base = heap()
    offsets = {VIEWS: 0, INTERACTIONS: 0}

    def send(events: Sequence[ViewEvent | InteractionEvent]) -> None:
        effects = Effects()
        for event in events:
            topic = VIEWS if isinstance(event, ViewEvent) else INTERACTIONS
            position = Position(0, offsets[topic], -1)
            offsets[topic] += 1
            scorer.on_event(topic, event, event_to_dict(event), position, event.ts, now_ms, effects)
        scorer.flush(now_ms, effects)

    # 1. every viewer once, in ts order, spread evenly over one window; viewer n watches video n % videos.
    # Only the views topic delivers, so the watermark stays unset and the window stays open (as it does within
    # the hour in production: it settles GRACE_S after its end).
    for first in range(0, viewers, BATCH):
        send(
            [
                view_event(n, n % videos, T0 + n * window_ms // viewers, viewer_id(n))
                for n in range(first, min(first + BATCH, viewers))
            ]
        )
    ledgers = list(store.ledgers.values())
    assert sum(led.views for led in ledgers) == viewers, "every view must be accepted"
    live_heap = heap() - base
    live_serialized = 0
    restored_heap = 0
    breakdown: dict[str, int] = {}
    for led in ledgers:
        blob = jsoncodec.dumps(led.to_dict())
        live_serialized += len(led.video_id.encode()) + len(blob)
        for name, size in ledger_parts(led).items():
            breakdown[name] = breakdown.get(name, 0) + size
        # the same ledger restored from its table value, as a worker holds it after a restart or a rebalance
        # (orjson makes a string object per occurrence, so ids are no longer shared). No cycles are made, so
        # the traced size right after from_dict, with the decoded dict already freed, is the restored ledger.
        before = tracemalloc.get_traced_memory()[0]
        restored = VideoLedger.from_dict(jsoncodec.loads(blob))
        restored_heap += tracemalloc.get_traced_memory()[0] - before
        del restored, blob
    entries_before = entries(ledgers)

    # 2. a day + window + grace after the last view (27 h after the window start): one more view and interaction
    # per video. The first interaction moves the watermark to `later`; every video's window settles and its
    # ledger expires what no rule can need any more.
    later = T0 + 27 * HOUR_MS
    horizon_ms = (policy.qualify_once_s + policy.window_s + policy.grace_s) * 1000
    assert later > T0 + window_ms + horizon_ms, "the expiry step must pass every per-viewer horizon"
    send(
        [
            event
            for v in range(videos)
            for event in (
                view_event(viewers + v, v, later, f"u-{TAG}-late{v:06d}"),
                InteractionEvent(
                    event_id(2 * viewers + v),
                    video_id(v),
                    creator_id(v),
                    f"u-{TAG}-late{v:06d}",
                    device_id(viewers + v),
                    later,
                    "like",
                ),
            )
        ]
    )
    assert all(led.windows_settled == 1 for led in ledgers), "every video's first window must have settled"
    expired_heap = heap() - base
    expired_serialized = sum(len(led.video_id.encode()) + len(jsoncodec.dumps(led.to_dict())) for led in ledgers)
    entries_after = entries(ledgers)
    seconds = time.monotonic() - started
    per = f"{viewers:,} viewers"
    rows = [
        Row("per-video state, live (as built by the scorer)", viewers, live_heap, live_serialized, per),
        Row("per-video state, restored from the table", viewers, restored_heap, None, per),
        Row("per-video state after expiry (27 h later)", viewers, expired_heap, expired_serialized, per),
    ]
    return ViewerRun(rows, breakdown, entries_before, entries_after, seconds)


@dataclass
class DeviceRun:
    rows: list[Row]
    left_after: int
    seconds: float


def run_devices(policy: Policy, devices: int) -> DeviceRun:
    """One view per distinct device, through rules.check_device_burst, kept as streaming/devices.py keeps it."""
    started = time.monotonic()
    window_ms = policy.window_s * 1000
    base = heap()
    states: dict[str, DeviceState] = {}  # DeviceJudge._devices
    newest = 0
    for first in range(0, devices, BATCH):
        touched = []
        for n in range(first, min(first + BATCH, devices)):
            dev = device_id(n)
            state = states.get(dev)
            if state is None:
                state = states[dev] = DeviceState()
            ts = T0 + n * window_ms // devices
            view = ViewEvent(event_id(n), video_id(n % 1000), "", viewer_id(n), dev, ts, 0, 1, "", "")
            assert rules.check_device_burst(policy, state, view).verdict.passed
            newest = max(newest, ts)
            touched.append(dev)
        # DeviceJudge._write: expire each touched device at the partition's newest ts, drop it when empty
        for dev in touched:
            if rules.expire_device(policy, states[dev], newest):
                del states[dev]
    assert len(states) == devices, "each device's one view is within its span when written: none expires yet"
    states_heap = heap() - base
    # the device-state table: key device_id bytes -> JSON value of each state written above
    table = {dev.encode(): jsoncodec.dumps(state.to_dict()) for dev, state in states.items()}
    both_heap = heap() - base
    serialized = sum(len(k) + len(v) for k, v in table.items())

    # a watermark DEVICE_BURST_SPAN + GRACE_S past the newest view: every device empties and its key is deleted
    later = newest + (policy.device_burst_span_s + policy.grace_s) * 1000
    for dev in list(states):
        if rules.expire_device(policy, states[dev], later):
            del states[dev]
            del table[dev.encode()]
    after_heap = heap() - base
    after_serialized = sum(len(k) + len(v) for k, v in table.items())
    left = len(states)
    del states, table
    per = f"{devices:,} devices"
    rows = [
        Row("DeviceState objects (DeviceJudge cache)", devices, states_heap, None, per),
        Row("device-state table values (key + JSON)", devices, both_heap - states_heap, serialized, per),
        Row(
            f"device state after expiry (+{policy.device_burst_span_s + policy.grace_s} s)",
            devices,
            after_heap,
            after_serialized,
            per,
        ),
    ]
    return DeviceRun(rows, left, time.monotonic() - started)


# --- report ------------------------------------------------------------------------------------------------------


def _per(value: int | None, count: int) -> str:
    return "n/a" if value is None else f"{value / count:,.0f} B"


def _mib_per_million(value: int | None, count: int) -> str:
    return "n/a" if value is None else f"{value / count * 1_000_000 / MIB:,.0f}"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / MIB:,.1f}"


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}, {platform.platform()}"


def format_section(
    viewers: int, videos: int, devices: int, vrun: ViewerRun, drun: DeviceRun, *, date: str, command: str
) -> str:
    lines = [
        SECTION_HEADING,
        "",
        f"Run {date} with `{command}` (script: bench/state_memory.py; pure domain code, no broker).",
        "",
        f"- Machine: {machine()}; peak RSS of the run {peak_rss_mib():,.0f} MiB (tracemalloc's own bookkeeping "
        "included).",
        "- Policy: the defaults (WINDOW_S 3600, GRACE_S 300, QUALIFY_ONCE_S = DEDUPE_S = 86400, "
        "ENGAGEMENT_LOOKBACK 86400, DEVICE_BURST_SPAN 60 s). Ids shaped like the simulator's: event_id 32 hex "
        "digits, viewer_id `u-xxxxxx-0000000` (16 chars), device_id 17 chars, video_id 16 chars.",
        f"- Viewers: {viewers:,} distinct viewers, one qualifying view each, spread evenly over one hour and "
        f"{videos:,} videos ({viewers // videos:,} viewers per video), fed through `PartitionScorer.on_event` + "
        f"`flush` in batches of {BATCH:,} ({vrun.seconds:,.0f} s). Each view is remembered in the window's "
        "viewers set, `qualified_at`, `recent` (with its event, for clawback), `rules.view_ids`, "
        "`rules.accepted_views`, and for the last 600 s / 60 s in `rules.repeats` / `rules.velocity`. Expiry: one "
        "more view and interaction per video 27 h after the window start (a day + window + grace after its last "
        "view) move the watermark; the window settles and `VideoLedger.expire` runs. Expiry runs when one of a "
        "video's windows settles, so this is the figure for a video that stays active.",
        f"- Devices: {devices:,} distinct devices, one view each, judged by `rules.check_device_burst` and kept as "
        f"`streaming/devices.py` keeps them: device_id -> DeviceState (its cache) and the device-state table "
        f"(key + JSON value) ({drun.seconds:,.0f} s). Expiry: `rules.expire_device` at a watermark "
        "DEVICE_BURST_SPAN + GRACE_S past the newest view, for every device (the wiring calls it when a device "
        "is touched).",
        "- Heap: `tracemalloc` current size after `gc.collect()`, relative to just before the data was made "
        "(Python objects only: no allocator slack, no RocksDB). Serialized: sum over keys of key bytes + "
        "`jsoncodec.dumps(x.to_dict())`, i.e. what a RocksDB store and the compacted changelog hold (latest "
        "record per key). Per-video costs (1,000 ledgers) are included in the per-viewer figures.",
        "",
        "| what | count | heap per item | heap per million (MiB) | serialized per item | "
        "serialized per million (MiB) | heap total (MiB) | serialized total (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in vrun.rows + drun.rows:
        lines.append(
            f"| {row.what} | {row.note} | {_per(row.heap, row.count)} | {_mib_per_million(row.heap, row.count)} "
            f"| {_per(row.serialized, row.count)} | {_mib_per_million(row.serialized, row.count)} "
            f"| {_mib(row.heap)} | {_mib(row.serialized)} |"
        )
    lines += [
        "",
        "Where a viewer's serialized bytes go (sum over the ledgers before expiry):",
        "",
        "| part of the ledger | serialized per viewer | share |",
        "|---|---:|---:|",
    ]
    total = sum(vrun.breakdown.values())
    for name, size in sorted(vrun.breakdown.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {size / viewers:,.1f} B | {size * 100 / total:.1f} % |")
    lines += [
        "",
        "Entries held, over all ledgers, before and after expiry:",
        "",
        "| memory | before | after |",
        "|---|---:|---:|",
    ]
    for name, count in vrun.entries_before.items():
        lines.append(f"| {name} | {count:,} | {vrun.entries_after[name]:,} |")
    lines += [
        "",
        f"After expiry every per-viewer memory holds only the one view per video sent to move the watermark, and "
        f"{drun.left_after:,} DeviceStates are left; what remains is per-video state (totals, the settled window "
        "kept for CLAWBACK_HORIZON_S, the open window of the later view), independent of how many viewers came.",
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--viewers", type=int, default=1_000_000, help="distinct viewers (default 1,000,000)")
    parser.add_argument("--videos", type=int, default=1_000, help="videos they spread over (default 1,000)")
    parser.add_argument("--devices", type=int, default=1_000_000, help="distinct devices (default 1,000,000)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file ('## State memory')")
    args = parser.parse_args(argv)
    if args.viewers < args.videos or args.videos < 1 or args.devices < 1:
        parser.error("need --videos >= 1, --viewers >= --videos and --devices >= 1")
    policy = Policy()
    tracemalloc.start(1)
    vrun = run_viewers(policy, args.viewers, args.videos)
    print(f"viewers: {vrun.seconds:.0f} s", file=sys.stderr)
    drun = run_devices(policy, args.devices)
    print(f"devices: {drun.seconds:.0f} s", file=sys.stderr)
    tracemalloc.stop()
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = "python bench/state_memory.py " + " ".join(sys.argv[1:] if argv is None else argv)
    section = format_section(args.viewers, args.videos, args.devices, vrun, drun, date=date, command=command.strip())
    print(section)
    existing = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(replace_section(existing, section, SECTION_HEADING), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
