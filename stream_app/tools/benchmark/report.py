"""The `## Throughput` section of bench/RESULTS.md: issue 9's targets met or missed, the profile beside them, then
each measurement's figures."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from stream_app.tools.benchmark.common import Measurement
from stream_app.tools.benchmark.hot import HotResult, StoreRun
from stream_app.tools.benchmark.profile import ProfileSummary, format_profile
from stream_app.tools.benchmark.soak import DRAIN_S, SoakResult, Trend
from stream_app.tools.benchmark.throughput import SEED, InputSize

SECTION_HEADING = "## Throughput"

# Issue 9's targets, and the sizes at which they are defined.
QUIX_FACTOR = 3.0
RAW_FRACTION = 0.1
SINGLE_FRACTION = 0.7
FLAT_RATIO = 0.9
STATE_BYTES_RATIO = 1.25  # ours: a memory rewritten whole at every batch would grow it several times over
ROCKSDB_RSS_MIB = 1024.0
RESTART_S = 60.0
RESTART_VIEWERS = 1_000_000
AMPLIFICATION = 3.0
RSS_FLAT_FRACTION = 0.10  # ours: RSS grows by under 10 % over the steady stretch
HOT_EVENTS = 600_000
HOT_VIEWERS = 500_000
SOAK_S = 600.0
SOAK_RATE = 10_000.0


@dataclass
class ThroughputBlock:
    """One input (envelopes or single records) and the consumers measured on it."""

    input: InputSize
    broker: str
    raw: Measurement
    noop: Measurement
    scorer: Measurement
    quix: Measurement | None = None
    profiled: Measurement | None = None  # the scorer again, under py-spy
    # `stream-app replay` (baseline + candidate, device rules) on the same input: to its last record scored (the
    # span the scorer's row covers: first event processed -> last), and with the end of the input
    replay: Measurement | None = None
    replay_whole: Measurement | None = None
    note: str = ""
    # each pass by consumer, in the order run (`--passes` > 1): the rows above are the median passes
    passes: dict[str, list[Measurement]] = field(default_factory=dict)


@dataclass
class BenchRun:
    command: str
    date: str
    machine: dict[str, str]
    load_at_start: str
    load_at_end: str = ""
    envelope: ThroughputBlock | None = None
    single: ThroughputBlock | None = None
    hot: HotResult | None = None
    hot_broker: str = ""
    soak: SoakResult | None = None
    soak_broker: str = ""
    profile: ProfileSummary | None = None
    problems: dict[str, str] = field(default_factory=dict)  # measurement -> why it has no figures

    @property
    def failed(self) -> bool:
        """A measurement did not complete (its figures cover what it did): the command exits 1, logs are kept."""
        blocks = [self.envelope, self.single]
        throughput = any(
            m.failure for b in blocks if b for m in (b.scorer, b.noop, b.raw, b.quix, b.profiled) if m is not None
        )
        hot = self.hot is not None and any(r.measurement.failure or r.restart_failure for r in self.hot.runs)
        return bool(self.problems) or throughput or hot


@dataclass
class Target:
    label: str
    target: str
    measured: str
    status: str


def _ratio_status(value: float | None, bound: float, *, at_least: bool = True, reduced: str = "") -> str:
    if value is None:
        return "not run"
    met = value >= bound if at_least else value <= bound
    if met:
        status = "met"
    elif at_least:
        status = (
            f"**missed**: {value / bound:.0%} of the target (x{bound / value:.1f} short)" if value else "**missed**"
        )
    else:
        status = f"**missed**: x{value / bound:.1f} over the bound"
    return status + (f" (at reduced size: {reduced})" if reduced else "")


def _rate(m: Measurement | None) -> float | None:
    return None if m is None or m.failure else m.events_per_s


def _div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def targets(run: BenchRun) -> list[Target]:
    rows: list[Target] = []
    env, single = run.envelope, run.single
    scorer_env = _rate(env.scorer) if env else None
    quix_ratio = _div(scorer_env, _rate(single.quix) if single else None)
    raw_ratio = _div(scorer_env, _rate(env.raw) if env else None)
    single_ratio = _div(_rate(single.scorer) if single else None, _rate(single.noop) if single else None)
    rows += [
        Target(
            "1. envelopes vs Quix Streams",
            f"scorer (envelopes) ≥ {QUIX_FACTOR:g}x Quix window count (single records)",
            _fmt_ratio(quix_ratio),
            _ratio_status(quix_ratio, QUIX_FACTOR),
        ),
        Target(
            "1. envelopes vs raw ceiling",
            f"scorer ≥ {RAW_FRACTION:g}x raw aiokafka + orjson (envelopes)",
            _fmt_ratio(raw_ratio),
            _ratio_status(raw_ratio, RAW_FRACTION),
        ),
        Target(
            "2. single-event records",
            f"scorer ≥ {SINGLE_FRACTION:g}x no-op Faust agent (single records)",
            _fmt_ratio(single_ratio),
            _ratio_status(single_ratio, SINGLE_FRACTION),
        ),
    ]
    rows += _hot_targets(run.hot)
    rows += _soak_targets(run.soak)
    return rows


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}x"


def _reduced(*sizes: tuple[bool, str]) -> str:
    """The sizes a run fell short of issue 9's at ((short, what it ran), ...), for "at reduced size: ..."."""
    return ", ".join(ran for short, ran in sizes if short)


def _hot_reduced(hot: HotResult) -> str:
    return _reduced(
        (hot.events < HOT_EVENTS, f"{hot.events:,} events"),
        (hot.stats.viewers <= HOT_VIEWERS, f"{hot.stats.viewers:,} viewers"),
    )


def _run(hot: HotResult | None, store: str) -> StoreRun | None:
    return next((r for r in hot.runs if r.store == store), None) if hot else None


def _hot_targets(hot: HotResult | None) -> list[Target]:
    memory, rocks = _run(hot, "memory://"), _run(hot, "rocksdb://")
    return _flat_targets(memory, rocks, _hot_reduced(hot) if hot else "") + memory_targets(hot, memory, rocks)


def _flat_targets(memory: StoreRun | None, rocks: StoreRun | None, reduced: str) -> list[Target]:
    """Target 3: the rate stays flat as state grows (either store), and so does the state a batch writes."""
    flat = memory.thirds.ratio if memory and memory.thirds and not memory.measurement.failure else None
    rocks_flat = rocks.thirds.ratio if rocks and rocks.thirds and not rocks.measurement.failure else None
    state_ratio = None
    if memory and memory.state_bytes_by_third and memory.state_bytes_by_third[0]:
        state_ratio = memory.state_bytes_by_third[2] / memory.state_bytes_by_third[0]
    return [
        Target(
            "3. flat with state (memory://)",
            f"rate over the last third ≥ {FLAT_RATIO:g}x the first third",
            _fmt_ratio(flat),
            _ratio_status(flat, FLAT_RATIO, reduced=reduced),
        ),
        Target(
            "3. flat with state (rocksdb://)",
            f"the same with STORE=rocksdb:// (≥ {FLAT_RATIO:g}x)",
            _fmt_ratio(rocks_flat),
            _ratio_status(rocks_flat, FLAT_RATIO, reduced=reduced),
        ),
        Target(
            "3. no batch's work grows with memory",
            f"state bytes written per event, last third / first third ≤ {STATE_BYTES_RATIO:g} (our bound)",
            _fmt_ratio(state_ratio),
            _ratio_status(state_ratio, STATE_BYTES_RATIO, at_least=False, reduced=reduced),
        ),
    ]


def memory_targets(hot: HotResult | None, memory: StoreRun | None, rocks: StoreRun | None) -> list[Target]:
    """Target 4: peak RSS of each store, and each store's restart with the remembered viewers."""
    remembered = hot.remembered_viewers if hot else 0
    reduced = f"{remembered:,} remembered viewers" if hot and remembered < RESTART_VIEWERS else ""
    rocks_rss = _worker_peak(rocks)
    rows = [
        Target(
            "4. RSS, memory://",
            "reported",
            _peak_text(memory),
            "reported" if memory else "not run",
        ),
        Target(
            "4. RSS, rocksdb://",
            f"peak RSS < {ROCKSDB_RSS_MIB:,.0f} MiB (scoring, and restarted)",
            _peak_text(rocks),
            _ratio_status(rocks_rss, ROCKSDB_RSS_MIB, at_least=False, reduced=reduced),
        ),
    ]
    for run in (r for r in (memory, rocks) if r is not None):
        value = run.restart_s
        rows.append(
            Target(
                f"4. restart, {run.store}",
                f"scoring again ≤ {RESTART_S:g} s with {RESTART_VIEWERS:,} remembered viewers",
                "failed" if value is None else f"{value:.1f} s with {remembered:,} remembered viewers",
                _ratio_status(value, RESTART_S, at_least=False, reduced=reduced)
                if value is not None
                else f"**missed**: {run.restart_failure or run.measurement.failure}",
            )
        )
    return rows


def _worker_peak(run: StoreRun | None) -> float | None:
    """The store's larger peak RSS: while scoring the input, or restarted on its state."""
    if run is None:
        return None
    peaks = [p for p in (run.measurement.peak_rss_mib, run.restart_peak_rss_mib) if p is not None]
    return max(peaks, default=None)


def _peak_text(run: StoreRun | None) -> str:
    if run is None:
        return "n/a"
    return (
        f"{_mib(_worker_peak(run))} peak (scoring {_mib(run.measurement.peak_rss_mib)}, "
        f"restarted {_mib(run.restart_peak_rss_mib)})"
    )


def _mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f} MiB"


def _soak_reduced(soak: SoakResult) -> str:
    return _reduced(
        (soak.seconds < SOAK_S, f"{soak.seconds:g} s"),
        (soak.target_rate < SOAK_RATE, f"{soak.target_rate:,.0f} ev/s"),
    )


def _soak_targets(soak: SoakResult | None) -> list[Target]:
    if soak is None:
        return [
            Target("5. soak: lag", "lag bounded over the last 5 minutes", "n/a", "not run"),
            Target("5. soak: RSS", "RSS flat after the first minutes", "n/a", "not run"),
            Target(
                "5. soak: write amplification", f"changelog bytes ≤ {AMPLIFICATION:g}x input bytes", "n/a", "not run"
            ),
        ]
    reduced = _soak_reduced(soak)
    suffix = f" (at reduced size: {reduced})" if reduced else ""
    rows = [_soak_rate_target(soak, suffix)]
    if soak.lag is not None:
        rows.append(_soak_lag_target(soak, soak.lag, suffix))
    if soak.rss is not None:
        rows.append(_soak_rss_target(soak, soak.rss, suffix))
    return [*rows, _amplification_target(soak, reduced)]


def _soak_rate_target(soak: SoakResult, suffix: str) -> Target:
    return Target(
        "5. soak: offered vs achieved",
        f"{soak.target_rate:,.0f} ev/s for {soak.seconds:g} s",
        f"offered {soak.offered_rate:,.0f} ev/s, scorer {soak.achieved_rate:,.0f} ev/s",
        ("offered as asked" if soak.offered_rate >= 0.98 * soak.target_rate else "**offered rate short**")
        + (
            "; scorer kept up"
            if soak.achieved_rate >= 0.98 * soak.offered_rate
            else f"; **scorer behind**: {soak.achieved_rate / max(soak.offered_rate, 1):.0%} of the offered rate"
        )
        + suffix,
    )


def _soak_lag_target(soak: SoakResult, lag: Trend, suffix: str) -> Target:
    one_second = max(1.0, soak.records_per_s)
    grew = lag.growth
    return Target(
        "5. soak: lag",
        f"no growth over the last {soak.stretch_s / 60:g} min (< 1 s of input records)",
        f"{lag.start:,.0f} → {lag.end:,.0f} records, trend {grew:+,.0f} ({grew / one_second:+.1f} s)",
        ("met" if grew < one_second else f"**missed**: grew by {grew / one_second:,.1f} s of input") + suffix,
    )


def _soak_rss_target(soak: SoakResult, rss: Trend, suffix: str) -> Target:
    growth = rss.growth
    bound = RSS_FLAT_FRACTION * max(rss.start, 1.0)
    return Target(
        "5. soak: RSS",
        f"flat over the last {soak.stretch_s / 60:g} min (grows < {RSS_FLAT_FRACTION:.0%})",
        f"{rss.start:,.0f} → {rss.end:,.0f} MiB, trend {growth:+,.0f} MiB",
        ("met" if growth < bound else f"**missed**: +{growth / max(rss.start, 1):.0%}") + suffix,
    )


def _amplification_target(soak: SoakResult, reduced: str) -> Target:
    amp = soak.amplification
    measured = _fmt_ratio(amp)
    if amp is not None and soak.processed_share < 1.0:
        everything = soak.changelog_bytes / soak.input_bytes
        measured += f" of the {soak.processed_share:.0%} of the input processed ({everything:.3f}x of all of it)"
    return Target(
        "5. soak: write amplification",
        f"changelog bytes ≤ {AMPLIFICATION:g}x input bytes",
        measured,
        _ratio_status(amp, AMPLIFICATION, at_least=False, reduced=reduced),
    )


# ---- the section -----------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def format_section(run: BenchRun) -> str:
    m = run.machine
    lines = [
        SECTION_HEADING,
        "",
        f"Run {run.date} with `{run.command}` (method: bench/README.md).",
        "",
        f"- Machine: {m['cpus']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['platform']}, faust-streaming "
        f"{m['faust']}, aiokafka {m['aiokafka']}, quixstreams {m['quixstreams']}; load average (1, 5, 15 min) "
        f"{run.load_at_start} at the start, {run.load_at_end} at the end (a shared machine: compare ratios taken "
        "within this run, not absolutes across runs).",
        f"- Scoring core: {m.get('core', 'interpreted')} (`make bench` compiles it as the production image does: "
        "stream_app.tools.compile; the no-op, Quix Streams and raw peers do not use it).",
        "",
        "### Issue 9 targets",
        "",
        "| target | goal | measured | status |",
        "|---|---|---|---|",
    ]
    lines += [f"| {t.label} | {t.target} | {t.measured} | {t.status} |" for t in targets(run)]
    for name, problem in run.problems.items():
        lines += ["", f"**{name} did not complete**: {problem}"]
    if run.profile is not None:
        lines += ["", "### Where the scorer's time goes (py-spy, envelope input)", ""]
        lines.append(
            f"{run.profile.samples:,} samples at 100 Hz of the scorer processing the envelope input (a separate "
            "pass, so the figures above are not slowed by the profiler); own time of the function on top of the "
            "stack, C extensions (orjson, RocksDB) charged to their Python caller."
            + (
                " The scoring core is compiled (mypyc): py-spy sees no frame in it, so its time is charged to its "
                "callers in streaming/ (`IngestProcessor._process_record`: the per-event rules and windows; "
                "`DeviceJudge._judge_all`: the device rules); `python bench/domain_speed.py` splits it by phase."
                if run.machine.get("core", "").startswith("compiled")
                else ""
            )
        )
        lines += ["", *format_profile(run.profile)]
    if run.envelope:
        lines += _throughput_lines("1. Envelopes", run.envelope)
    if run.single:
        lines += _throughput_lines("2. Single-event records", run.single)
    if run.hot:
        lines += _hot_lines(run.hot, run.hot_broker)
    if run.soak:
        lines += _soak_lines(run.soak, run.soak_broker)
    lines.append("")
    return "\n".join(lines)


def _throughput_lines(title: str, block: ThroughputBlock) -> list[str]:
    size = block.input
    by_topic = ", ".join(f"{topic} {count:,}" for topic, count in size.events_by_topic.items())
    lines = [
        "",
        f"### {title}",
        "",
        f"- Broker: {block.broker}.",
        f"- Input: {size.events:,} events ({by_topic}) in {size.records:,} records ({size.mode} mode), "
        f"{size.bytes:,} value bytes; simulator seed {SEED}, organic traffic over {size.event_time_span_s:,.0f} s "
        f"of event time; published in {size.publish_s:,.1f} s before any measurement.",
    ]
    if block.note:
        lines.append(f"- {block.note}")
    if block.passes:
        runs = "; ".join(
            f"{name} {' / '.join(f'{m.events_per_s:,.0f} ({_fmt(m.cpu_s)})' for m in measured)}"
            for name, measured in block.passes.items()
        )
        lines.append(
            f"- Passes: each consumer ran {max(map(len, block.passes.values()))} times, in turn; the rows below are "
            f"each one's median pass (events/s and, in brackets, CPU s of every pass, in order: {runs})."
        )
    lines += [
        "",
        "| measurement | events | seconds | events/s | CPU s | broker CPU s | start-up s | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    measured = [block.raw, block.noop, block.scorer, block.quix, block.profiled, block.replay, block.replay_whole]
    for m in (x for x in measured if x is not None):
        lines.append(
            f"| {m.name} | {m.events:,} | {m.seconds:,.2f} | {m.events_per_s:,.0f} | {_fmt(m.cpu_s)} | "
            f"{_fmt(m.broker_cpu_s)} | {_fmt(m.startup_s)} | {_fmt(m.peak_rss_mib, 0)} |"
        )
    raw, noop, scorer = block.raw.events_per_s, block.noop.events_per_s, block.scorer.events_per_s
    lines += ["", "| ratio | value |", "|---|---:|"]
    lines += [f"| scorer / no-op | {scorer / noop:.3f} |", f"| scorer / raw | {scorer / raw:.3f} |"]
    lines += [f"| no-op / raw | {noop / raw:.3f} |"]
    if block.quix is not None:
        lines.append(f"| scorer / Quix Streams | {scorer / block.quix.events_per_s:.3f} |")
    if block.replay is not None:  # issue 13: the replay at least as fast as the worker on the same input
        lines.append(f"| replay (two policies) / scorer (one) | {block.replay.events_per_s / scorer:.3f} |")
    if block.replay_whole is not None:
        whole = block.replay_whole.events_per_s / scorer
        lines.append(f"| replay with the end of the input / scorer | {whole:.3f} |")
    for m in (x for x in measured if x is not None and x.failure):
        lines += ["", f"**{m.name} did not finish**: {m.failure}. Its row covers the {m.events:,} events it processed."]
    return lines


def _hot_lines(hot: HotResult, broker: str) -> list[str]:
    s = hot.stats
    lines = [
        "",
        "### 3-4. Flat with state, memory and restart (hot-video workload)",
        "",
        f"- Broker: {broker}.",
        f"- Input: {hot.published.events:,} events ({s.views:,} views, {s.interactions:,} interactions, "
        f"{hot.published.events - s.views - s.interactions:,} profiles) in {hot.published.records:,} envelopes, "
        f"{hot.published.bytes:,} value bytes, over {hot.span_s / 3600:g} h of event time; the hot video has "
        f"{s.hot_views / max(1, s.views):.1%} of the views; {s.viewers:,} distinct viewers, "
        f"{hot.remembered_viewers:,} distinct (video, viewer) pairs = remembered viewers (every one within the 24 h "
        f"memories); published in {hot.published.seconds:,.0f} s. Default policy (1 h windows, 24 h memories).",
        f"- Restart: after the pass the worker's offsets are committed, it is SIGKILLed, {hot.tail_events:,} new "
        "events are published and a new worker starts on the same state; restart = its launch to every tail event "
        "processed (first = to the worker reporting ready: state restored, partitions assigned).",
        "",
        "| store | events | seconds | events/s | first third ev/s | last third ev/s | last/first | CPU s | "
        "peak RSS MiB | restart s (first) | peak RSS after restart MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in hot.runs:
        m, t = run.measurement, run.thirds
        restart = "failed" if run.restart_s is None else f"{run.restart_s:.1f} ({_fmt(run.restart_first_s, 1)})"
        lines.append(
            f"| {run.store} | {m.events:,} | {m.seconds:,.1f} | {m.events_per_s:,.0f} | "
            f"{_fmt(t.first_rate if t else None, 0)} | {_fmt(t.last_rate if t else None, 0)} | "
            f"{_fmt(t.ratio if t else None, 3)} | {_fmt(m.cpu_s, 1)} | {_fmt(m.peak_rss_mib, 0)} | {restart} | "
            f"{_fmt(run.restart_peak_rss_mib, 0)} |"
        )
    for run in hot.runs:
        if run.measurement.failure or run.restart_failure:
            lines += ["", f"**{run.store} did not finish**: {run.measurement.failure or run.restart_failure}."]
    memory = hot.runs[0] if hot.runs else None
    if memory and memory.state_bytes_by_third:
        first, mid, last = memory.state_bytes_by_third
        per_event = max(1, hot.published.events // 3)
        lines += [
            "",
            f"State written ({memory.store}, changelog key + value bytes of the records whose timestamps fall "
            f"between the moments the pass reached 0, 1/3, 2/3 and all of the input): {first:,} / {mid:,} / "
            f"{last:,} bytes, {first / per_event:,.0f} / {mid / per_event:,.0f} / {last / per_event:,.0f} bytes "
            "per input event.",
        ]
    return lines


def _soak_lines(soak: SoakResult, broker: str) -> list[str]:
    lines = [
        "",
        "### 5. Realtime soak",
        "",
        f"- Broker: {broker}.",
        f"- `stream-app simulate --realtime --rate {soak.target_rate:g} --duration {soak.seconds:g} --fraud all`, "
        f"scorer with WINDOW_S=60, STORE={soak.store}. Published {soak.published_events:,} events in "
        f"{soak.published_records:,} records over {soak.simulate_elapsed_s:,.0f} s, paced after a start-up of "
        f"{soak.start_delay_s:.1f} s (offered {soak.offered_rate:,.0f} ev/s over the paced {soak.paced_s:,.0f} s); "
        f"the scorer processed {soak.processed_during:,} by then (achieved "
        f"{soak.achieved_rate:,.0f} ev/s) and {soak.processed_total:,} "
        + (
            f"after a drain of {soak.drain_s:.1f} s"
            if soak.drain_s is not None
            else f"when the {DRAIN_S:g} s drain ended"
        )
        + f". Peak RSS {_fmt(soak.peak_rss_mib, 0)} MiB.",
        f"- Write amplification: {soak.changelog_bytes:,} bytes in {soak.changelog_records:,} changelog records / "
        f"{soak.input_bytes:,} input bytes x {soak.processed_share:.1%} processed = {_fmt(soak.amplification, 3)}x "
        "(the changelog holds what the scorer wrote for the events it processed).",
    ]
    if soak.failure:
        lines.append(f"- **Not drained**: {soak.failure}.")
    lines += [
        "",
        "Scorer CPU: the worker's CPU seconds per second since the previous row (1.00 = one core); machine busy: the "
        f"share of all {os.cpu_count()} CPUs busy meanwhile (the scorer, the broker, the simulator and the bench).",
        "",
        "| t s | processed | events/s since previous | lag records | RSS MiB | scorer CPU | machine busy |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    step = max(1, round(60 / soak.sample_s))  # one row a minute
    shown = soak.samples[::step] + ([soak.samples[-1]] if soak.samples and len(soak.samples) % step != 1 else [])
    previous = None
    for sample in shown:
        rate = cpu = busy = None
        if previous is not None and sample.t > previous.t:
            span = sample.t - previous.t
            rate = (sample.processed - previous.processed) / span
            cpu = (sample.cpu_s - previous.cpu_s) / span
            if sample.busy_s is not None and previous.busy_s is not None:
                busy = (sample.busy_s - previous.busy_s) / span / (os.cpu_count() or 1)
        lines.append(
            f"| {sample.t:,.0f} | {sample.processed:,} | {_fmt(rate, 0)} | {sample.lag:,} | {_fmt(sample.rss_mib, 0)} "
            f"| {_fmt(cpu, 2)} | {'n/a' if busy is None else f'{busy:.0%}'} |"
        )
        previous = sample
    return lines


def format_summary(run: BenchRun) -> str:
    return "\n".join(f"{t.label}: {t.measured} — {t.status}" for t in targets(run))
