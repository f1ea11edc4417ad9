"""State memory of the per-video ledgers and the per-device state (issue 4): what one distinct viewer and one
distinct device cost while the rules remember them, and that the memory drops back once their horizons pass.

    python bench/state_memory.py [--viewers 100000,200000] [--viewers-per-video 1000]
                                 [--devices 100000,200000] [--output bench/RESULTS.md]

Writes the `## State memory` section of the results file (other sections are kept). Pure domain code, no broker.
Each size is run separately; figures per million come from the 1,000,000 run when there is one, else from the
line through the two largest runs (on 2 CPUs a 1,000,000 run took over 4 minutes and 7 GB under tracemalloc).

- viewers: N distinct viewers, each viewing one video once, N / viewers-per-video videos, views spread evenly over
  one window, fed through `PartitionScorer.on_event` + `flush` (the path the worker's events agent takes) into an
  in-memory store that keeps the ledger objects (as the scorer's cache does). Then one more view and one like per
  video 27 h after the window start move the watermark past every per-viewer horizon: the window settles and
  `VideoLedger.expire` runs, as it does for a video that stays active.
- devices: N distinct devices, one 30 s view each, through the device judge (`domain/device_judge.py`, what the
  worker's judge-devices agent runs) over the device log (domain/device_log.py, the device-state table's layout),
  saved after every record; then the watermark moves past each memory's
  horizon in turn: the view (DEVICE_BURST_SPAN + GRACE_S), its watch interval (DEVICE_MEMORY_S more), its
  account (DEDUPE_S more).

Heap is `tracemalloc`'s current traced size after `gc.collect()`, relative to just before the data was created.
Serialized is what a table holds: key bytes + `jsoncodec.dumps(x.to_dict())` per key (the changelog's latest
record per key and a RocksDB store's value).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import resource
import sys
import time
import tracemalloc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stream_app.domain import rules
from stream_app.domain.device_judge import LogDeviceStore, PartitionDeviceJudge
from stream_app.domain.device_records import DeviceView, DeviceViews
from stream_app.domain.events import CreatorProfile, InputTopic, InteractionEvent, ViewEvent
from stream_app.domain.partition import Effects, MemoryState, PartitionScorer
from stream_app.domain.policy import Policy, policy_hash
from stream_app.domain.profiles import ProfileHistory
from stream_app.domain.scoring import INTERACTIONS, VIEWS, Position, VideoLedger
from stream_app.tools.harness import machine_info, write_section

SECTION_HEADING = "## State memory"
DEFAULT_OUTPUT = Path("bench/RESULTS.md")
MIB = 1 << 20
HOUR_MS = 3_600_000
# 2026-01-01T00:00:00Z: an hour-aligned epoch ms, so the run's window is window k = T0 // W of the default policy
T0 = 1_767_225_600_000
TAG = "5eed01"  # ids shaped like the simulator's (stream_app/tools/simulator/)
BATCH = 5_000  # events per PartitionScorer batch (flush writes each touched ledger once)
DEVICE_BATCH = 500  # views per device-views record (streaming/devices.py sends up to 500)
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


@dataclass
class Row:
    what: str
    heap: int  # bytes
    serialized: int | None  # bytes; None: not stored in a table


@dataclass
class ViewerRun:
    viewers: int
    videos: int
    rows: list[Row]
    breakdown: dict[str, int]  # serialized bytes by kind of stored value
    entries_before: dict[str, int]
    entries_after: dict[str, int]
    seconds: float
    restore_s: float  # rebuilding the partition (heads + journal replay) from its stored state


def stored_parts(store: MemoryState) -> dict[str, int]:
    """Bytes of each kind of value the state table holds for the partition (key bytes included)."""
    return {
        "journal segments (every memory's additions, in order)": sum(
            len(value) + len(b"\xffj0:%d" % seq) for seq, value in store.segment_values.items()
        ),
        "video heads (totals, open windows, positions, version)": sum(
            len(value) + 2 + len(video.encode()) for video, value in store.heads.items()
        ),
        "partition meta": len(store.meta_value or b""),
    }


def stored_bytes(store: MemoryState) -> int:
    return sum(stored_parts(store).values())


def entries(ledgers: Sequence[VideoLedger]) -> dict[str, int]:
    """How many per-viewer entries each memory holds, over all ledgers."""
    return {
        "qualified (QUALIFY_ONCE_S)": sum(len(led.memory.qualified) for led in ledgers),
        "recent (accepted views kept for clawback)": sum(len(led.memory.recent) for led in ledgers),
        "rules.view_ids (duplicate_event, DEDUPE_S)": sum(len(led.memory.rules.view_ids) for led in ledgers),
        "rules.accepted_views (engagement_without_view)": sum(len(led.memory.rules.accepted_views) for led in ledgers),
        "rules.repeats (viewer_repeat, 600 s)": sum(len(led.memory.rules.repeats) for led in ledgers),
        "rules.velocity (head span 60 s, minute counts)": sum(len(led.memory.rules.velocity) for led in ledgers),
    }


def view_event(n: int, video: int, ts: int, viewer: str) -> ViewEvent:
    # watch 30 s of a 2 min video from the for-you feed in the US: a qualifying view (the costliest kind)
    return ViewEvent(
        event_id(n), video_id(video), creator_id(video), viewer, device_id(n), ts, 30_000, 120_000, "for_you", "US"
    )


def send(
    scorer: PartitionScorer,
    store: MemoryState,
    offsets: dict[InputTopic, int],
    events: Sequence[ViewEvent | InteractionEvent],
    now_ms: int,
) -> None:
    """One batch through the scorer, as the events agent does it (outcomes and outputs are dropped; the state the
    batch writes is kept, as the table keeps it)."""
    effects = Effects()
    for event in events:
        topic = VIEWS if isinstance(event, ViewEvent) else INTERACTIONS
        position = Position(0, offsets[topic], -1)
        offsets[topic] += 1
        scorer.on_event(topic, event, position, event.ts, now_ms, effects)
    store.apply(scorer.flush(now_ms, effects))


def restore(policy: Policy, store: MemoryState, profiles: ProfileHistory) -> tuple[int, int, float]:
    """The heap a worker holds after taking the partition over (heads + journal replayed), the most it held
    meanwhile (what restoring decodes besides what it keeps), and the time it took."""
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    started = time.monotonic()
    restored = PartitionScorer(policy, policy_hash(policy), 0, store, profiles)
    seconds = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1] - before
    gc.collect()
    size = tracemalloc.get_traced_memory()[0] - before
    del restored
    return size, peak, seconds


def run_viewers(policy: Policy, viewers: int, videos: int) -> ViewerRun:
    started = time.monotonic()
    profiles = ProfileHistory(policy)
    for c in range(CREATORS):
        profiles.add(CreatorProfile(creator_id(c), 50_000, 500_000, True, "good", 0))
    store = MemoryState()
    scorer = PartitionScorer(policy, policy_hash(policy), 0, store, profiles)
    now_ms = T0 + 2 * HOUR_MS  # wall clock: only stamps updated_at here (no topic is caught up, so none is idle)
    window_ms = policy.window_s * 1000
    base = heap()
    offsets = {VIEWS: 0, INTERACTIONS: 0}
    # 1. every viewer once, in ts order, spread evenly over one window; viewer n watches video n % videos.
    # Only the views topic delivers, so the watermark stays unset and the window stays open (as it does within
    # the hour in production: it settles GRACE_S after its end).
    for first in range(0, viewers, BATCH):
        send(
            scorer,
            store,
            offsets,
            [
                view_event(n, n % videos, T0 + n * window_ms // viewers, viewer_id(n))
                for n in range(first, min(first + BATCH, viewers))
            ],
            now_ms,
        )
    ledgers = list(scorer.ledgers())
    assert sum(led.views for led in ledgers) == viewers, "every view must be accepted"
    live_heap = heap() - base - sum(len(v) for v in store.segment_values.values())  # the store is not the worker
    live_serialized = stored_bytes(store)
    breakdown = stored_parts(store)
    restored_heap, restore_peak, restore_s = restore(policy, store, profiles)
    entries_before = entries(ledgers)

    # 2. a day + window + grace + the clawback hold after the last view (28 h after the window start): one more
    # view and interaction per video. The first interaction moves the watermark to `later`; every video's window
    # settles and its memories forget what no rule can need any more; the journal segments holding only that are
    # dropped.
    later = T0 + 28 * HOUR_MS
    horizon_ms = (policy.qualify_once_s + policy.window_s + policy.grace_s) * 1000
    assert later > T0 + window_ms + horizon_ms, "the expiry step must pass every per-viewer horizon"
    send(
        scorer,
        store,
        offsets,
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
        ],
        now_ms,
    )
    ledgers = list(scorer.ledgers())
    assert all(led.windows_settled == 1 for led in ledgers), "every video's first window must have settled"
    expired_heap = heap() - base - sum(len(v) for v in store.segment_values.values())
    expired_serialized = stored_bytes(store)
    expired_restored_heap, _, _ = restore(policy, store, profiles)
    entries_after = entries(ledgers)
    del scorer, store, ledgers
    seconds = time.monotonic() - started
    rows = [
        Row("memories and heads, live (as the scorer builds them)", live_heap, live_serialized),
        Row("restored from the table (heads + journal replayed)", restored_heap, live_serialized),
        Row("the most held while restoring (what is kept, and what is decoded meanwhile)", restore_peak, None),
        Row("after expiry, live", expired_heap, expired_serialized),
        Row("after expiry, restored from the table", expired_restored_heap, expired_serialized),
    ]
    return ViewerRun(viewers, videos, rows, breakdown, entries_before, entries_after, seconds, restore_s)


@dataclass
class DeviceRun:
    devices: int
    rows: list[Row]
    left_after: int
    seconds: float


class LogTable(LogDeviceStore):
    """A DeviceStore laid out as the worker's device-state table (streaming/devices.py TableDeviceStore): the
    device log's segments in a dict of key bytes -> value bytes, as a memory:// table holds them."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[bytes, bytes] = {}

    def write(self) -> None:
        """What the worker writes after a save: the new segments, then the dropped ones deleted."""
        write = self.log.seal()
        for seq, value in write.segments:
            self.values[b"\xffl0:%d" % seq] = value
        for seq in write.dropped:
            self.values.pop(b"\xffl0:%d" % seq, None)

    def serialized(self) -> int:
        return sum(len(k) + len(v) for k, v in self.values.items())


def run_devices(policy: Policy, devices: int) -> DeviceRun:
    """One 30 s view per distinct device through the device judge (domain/device_judge.py, what the worker's
    judge-devices agent runs), then the watermark moved past each of the device memories' horizons."""
    started = time.monotonic()
    delay = rules.device_flag_delay_ms(policy)
    # the views span less than the judge's delay, so none is judged or forgotten before the whole run is in
    spread_ms = delay - 1
    base = heap()
    table = LogTable()
    judge = PartitionDeviceJudge(policy, 0, table, sources=1)
    newest = 0
    for first in range(0, devices, DEVICE_BATCH):
        views = []
        for n in range(first, min(first + DEVICE_BATCH, devices)):
            ts = T0 + n * spread_ms // devices
            views.append(DeviceView(device_id(n), video_id(n % 1000), event_id(n), viewer_id(n), ts, 30_000))
            newest = ts
        assert not judge.judge([DeviceViews.of(0, newest, False, views)]).flags
        table.write()
    assert judge.device_count() == devices, "no device's view is final yet: every device holds it"
    # first every source reports it is drained: the views are judged (kept: a watch interval, an account each)
    assert not judge.judge([DeviceViews.of(0, newest, True, [])]).flags
    table.write()
    # the judge's heap (due times, and each device's stored bytes in the log) and the table's segments
    rows = [
        Row("viewing in the last 6 min: a view, its watch interval, its account", heap() - base, table.serialized())
    ]
    # past the delay: every view judged (kept) and forgotten; its watch interval (DEVICE_MEMORY_S) and its account
    # (DEDUPE_S) stay
    stages = [
        ("viewed 6-16 min ago: its watch interval and account", delay),
        ("viewed 16 min to a day ago: its account", delay + policy.device_memory_s * 1000),
        ("viewed over a day ago: nothing", delay + policy.dedupe_s * 1000),
    ]
    for what, after in stages:
        judge.judge([DeviceViews.of(0, newest + after, False, [])])
        table.write()
        rows.append(Row(what, heap() - base, table.serialized()))
    left = judge.device_count()
    del judge, table
    return DeviceRun(devices, rows, left, time.monotonic() - started)


# --- report ------------------------------------------------------------------------------------------------------

MILLION = 1_000_000


def at_million(points: Sequence[tuple[int, int]]) -> tuple[float, bool]:
    """Total bytes at 1,000,000 items from (items, total bytes) measurements: the measured value when 1,000,000
    was run, else the line through the two largest runs (one run: proportional). Returns (bytes, extrapolated)."""
    for count, total in points:
        if count == MILLION:
            return float(total), False
    ordered = sorted(points)
    if len(ordered) == 1:
        count, total = ordered[0]
        return total * MILLION / count, True
    (n1, t1), (n2, t2) = ordered[-2:]
    return t1 + (t2 - t1) * (MILLION - n1) / (n2 - n1), True


def _table(unit: str, counts: Sequence[int], rows_by_run: Sequence[Sequence[Row]]) -> list[str]:
    sizes = " / ".join(f"{c:,}" for c in counts)
    lines = [
        f"| what | heap per {unit} ({sizes}) | heap per million {unit}s (MiB) | serialized per {unit} ({sizes}) "
        f"| serialized per million {unit}s (MiB) |",
        "|---|---:|---:|---:|---:|",
    ]
    for i, row in enumerate(rows_by_run[0]):
        runs = [rows[i] for rows in rows_by_run]
        heap_per = " / ".join(f"{r.heap / c:,.0f} B" for r, c in zip(runs, counts, strict=True))
        heap_m, extrapolated = at_million([(c, r.heap) for r, c in zip(runs, counts, strict=True)])
        mark = "*" if extrapolated else ""
        if row.serialized is None:
            ser_per, ser_m = "n/a", "n/a"
        else:
            ser_per = " / ".join(f"{(r.serialized or 0) / c:,.0f} B" for r, c in zip(runs, counts, strict=True))
            total, _ = at_million([(c, r.serialized or 0) for r, c in zip(runs, counts, strict=True)])
            ser_m = f"{total / MIB:,.0f}{mark}"
        lines.append(f"| {row.what} | {heap_per} | {heap_m / MIB:,.0f}{mark} | {ser_per} | {ser_m} |")
    return lines


def machine() -> str:
    m = machine_info()
    return f"{m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['platform']}"


def format_section(vruns: Sequence[ViewerRun], druns: Sequence[DeviceRun], *, date: str, command: str) -> str:
    big = vruns[-1]
    per_video = big.viewers // big.videos
    viewer_counts = [r.viewers for r in vruns]
    device_counts = [r.devices for r in druns]
    extrapolated = MILLION not in viewer_counts or MILLION not in device_counts
    vsizes = ", ".join(
        f"{r.viewers:,} viewers over {r.videos:,} videos ({r.seconds:,.0f} s; restored in {r.restore_s:,.1f} s)"
        for r in vruns
    )
    dsizes = ", ".join(f"{r.devices:,} ({r.seconds:,.0f} s)" for r in druns)
    lines = [
        SECTION_HEADING,
        "",
        f"Run {date} with `{command}` (script: bench/state_memory.py; pure domain code, no broker).",
        "",
        f"- Machine: {machine()}; peak RSS of the run {peak_rss_mib():,.0f} MiB (tracemalloc's own bookkeeping "
        "included).",
        "- Policy: the defaults (WINDOW_S 3600, GRACE_S 300, QUALIFY_ONCE_S = DEDUPE_S = ENGAGEMENT_LOOKBACK = "
        "86400 s, DEVICE_BURST_SPAN 60 s). Ids shaped like the simulator's: event_id 32 hex digits, viewer_id "
        "`u-xxxxxx-0000000` (16 characters), device_id 17, video_id 16.",
        f"- Viewers: {vsizes}. Each viewer views one video once (a qualifying view), {per_video:,} viewers per "
        "video, views spread evenly over one hour, fed through `PartitionScorer.on_event` + `flush` in batches "
        f"of {BATCH:,}, the state each batch writes kept in a `MemoryState` (what the table holds). A viewer is "
        "remembered in `qualified`, `recent` (for clawback), `rules.view_ids`, `rules.accepted_views`, and for the "
        "last 600 s / 60 s in `rules.repeats` / `rules.velocity`; the table holds the journal segments that added "
        "them and the video heads. Restored: a new PartitionScorer over that state (heads read, journal "
        "replayed), as a worker taking the partition over builds it; the time is in the line above. Expiry: one "
        "more view and one like per video 28 h after the window start (a day + window + grace + the clawback hold "
        "after its last view) move the watermark: the window settles, the memories forget, and the journal "
        "segments that held only what was forgotten are dropped.",
        f"- Devices: {dsizes} distinct devices, one 30 s view each (within 360 s), fed to the device judge "
        "(`domain/device_judge.py`, what the judge-devices agent runs) in device-views records of 500 over the "
        "device log (`domain/device_log.py`: each device's stored bytes in the heap, the table holds segments). "
        "A device is remembered while device_burst "
        "counts its view and until device_overlap / account_farm have judged it (DEVICE_BURST_SPAN + GRACE_S "
        "behind the device partition's watermark), its watch interval for DEVICE_MEMORY_S more and its account "
        "for DEDUPE_S more: the rows measure it in each of those stages, moving the watermark with progress "
        "records; every stage is reached by the judge's due times, without a scan of the table.",
        "- Heap: `tracemalloc` current size after `gc.collect()`, relative to just before the data was made "
        "(Python objects as allocated: no allocator slack, nothing outside Python such as RocksDB; the stored "
        "values themselves are left out of the live figures). Serialized: key and value bytes the state table "
        "holds (what RocksDB and the compacted changelog hold: the latest record per key). Per-video costs are "
        "included in the per-viewer figures.",
    ]
    if extrapolated:
        lines.append(
            "- Per million: measured at the sizes shown and extrapolated linearly to 1,000,000 (marked *; the line "
            "through the two largest runs). Ledgers are per video and the runs keep viewers per video fixed, so "
            "the viewer figures scale with the number of videos (`--viewers 1000000 --devices 1000000` measures "
            "1,000,000 directly: minutes and gigabytes under tracemalloc)."
        )
    lines += ["", *_table("viewer", viewer_counts, [r.rows for r in vruns]), ""]
    lines += [*_table("device", device_counts, [r.rows for r in druns]), ""]
    lines += [
        f"Where a viewer's serialized bytes go ({big.viewers:,} viewers, before expiry):",
        "",
        "| stored value | serialized per viewer | share |",
        "|---|---:|---:|",
    ]
    total = sum(big.breakdown.values())
    for name, size in sorted(big.breakdown.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {size / big.viewers:,.1f} B | {size * 100 / total:.1f} % |")
    lines += [
        "",
        f"Entries held over all {big.videos:,} videos ({big.viewers:,} viewers), before and after expiry:",
        "",
        "| memory | before | after |",
        "|---|---:|---:|",
    ]
    for name, count in big.entries_before.items():
        lines.append(f"| {name} | {count:,} | {big.entries_after[name]:,} |")
    lines += [
        "",
        "After expiry the per-viewer memories hold only the view per video sent to move the watermark, and "
        f"{druns[-1].left_after:,} DeviceStates are left. What stays is per video (its head: totals and the later "
        "view's open window, and the journal segment of that last batch): a live scorer also keeps the capacity "
        "its dicts grew to (CPython does not shrink a dict on deletion; the next insertions that resize it do), "
        "which a restored one does not.",
        "",
    ]
    return "\n".join(lines)


def _sizes(text: str) -> list[int]:
    try:
        sizes = sorted({int(part.replace("_", "")) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated counts, got {text!r}") from None
    if not sizes or sizes[0] < 1:
        raise argparse.ArgumentTypeError(f"expected positive counts, got {text!r}")
    return sizes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--viewers", type=_sizes, default=[100_000, 200_000], help="distinct viewers, comma-separated sizes to run"
    )
    parser.add_argument("--viewers-per-video", type=int, default=1_000, help="viewers per video (default 1,000)")
    parser.add_argument(
        "--devices", type=_sizes, default=[100_000, 200_000], help="distinct devices, comma-separated sizes to run"
    )
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="Markdown file ('## State memory')")
    args = parser.parse_args(argv)
    per_video = args.viewers_per_video
    if per_video < 1 or any(n % per_video for n in args.viewers):
        parser.error("--viewers must be multiples of --viewers-per-video (>= 1)")
    policy = Policy()
    tracemalloc.start(1)
    vruns = []
    for n in args.viewers:
        vruns.append(run_viewers(policy, n, n // per_video))
        print(f"{n:,} viewers: {vruns[-1].seconds:.0f} s", file=sys.stderr)
    druns = []
    for n in args.devices:
        druns.append(run_devices(policy, n))
        print(f"{n:,} devices: {druns[-1].seconds:.0f} s", file=sys.stderr)
    tracemalloc.stop()
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["python bench/state_memory.py", *(sys.argv[1:] if argv is None else argv)])
    section = format_section(vruns, druns, date=date, command=command)
    print(section)
    write_section(args.output, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
