"""The `## Quality` section of bench/RESULTS.md: the method in short, one table and its figures per seed, what
failed, and whether every target of issue 4 was met; and the one-line summary of a seed."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from stream_app.tools.harness import machine_info
from stream_app.tools.quality.method import (
    DEFAULT_EVENTS,
    DEFAULT_RATE,
    IDLE_SETTLE_S,
    SECTION_HEADING,
    SETTLE_MARGIN_S,
    TARGET_FP_RATE,
    TARGET_MONEY_DIFF,
    TARGET_RECALL,
)
from stream_app.tools.quality.results import SeedResult, all_targets_met
from stream_app.tools.simulator import SimulationConfig

_FAILURE_CHARS = 600


def _pct(value: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(value) else f"{value * 100:.{digits}f} %"


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4f}"


def _usd(micros: int) -> str:
    return f"{micros:,} micros (${micros / 1_000_000:,.2f})"


def _yes(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def format_summary(result: SeedResult) -> str:
    recalls = ", ".join(f"{row.scenario} {row.recall:.3f}" for row in result.rows)
    return (
        f"seed {result.seed}: recall {recalls}; organic FP {result.fp_rate * 100:.3f} %; "
        f"money {result.money_fraud} vs {result.money_baseline} ({result.money_diff * 100:+.3f} %)"
    )


def format_section(
    results: Sequence[SeedResult],
    *,
    date: str,
    command: str,
    events: int,
    rate: float = DEFAULT_RATE,
    failures: Mapping[int, str] | None = None,
    idle_settle_s: int = IDLE_SETTLE_S,
) -> str:
    failures = failures or {}
    seeds = sorted([r.seed for r in results] + list(failures))
    lines = [SECTION_HEADING, "", *_method_lines(date, command, seeds, events, rate, idle_settle_s)]
    for result in results:
        lines += _seed_lines(result)
    for seed, failure in failures.items():
        first_line = failure.strip().splitlines()[0] if failure.strip() else "unknown error"
        lines += [f"### Seed {seed}", "", f"**The run failed**: {first_line[:_FAILURE_CHARS]}", ""]
    lines += [_overall_line(results, events, failed=bool(failures)), ""]
    return "\n".join(lines)


def _method_lines(date: str, command: str, seeds: list[int], events: int, rate: float, idle_settle_s: int) -> list[str]:
    machine = machine_info()
    fraud_share = SimulationConfig(seed=0, start_ms=0).fraud_share
    return [
        f"Run {date} with `{command}` (method: the docstring of `stream_app/tools/quality/__init__.py`).",
        "",
        f"- Machine: {machine['cpus']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"faust-streaming {machine['faust']}; load average (1, 5, 15 min) {machine['load_average']} at the end.",
        f"- Seeds: {', '.join(str(seed) for seed in seeds)}; at least {events:,} traffic events per run, at {rate:g} "
        "events/s of event time, every fraud scenario injected (fraud_share "
        f"{fraud_share:g}); each run on a fresh embedded tansu broker (unless one was given).",
        "- Worker: `stream-app worker`, default policy (WINDOW_S 3600, GRACE_S 300, every rule threshold) with "
        f"IDLE_SETTLE_S {idle_settle_s}{'' if idle_settle_s == IDLE_SETTLE_S else ' (not the default)'}; all "
        "input published first; event time ends a window + grace + "
        f"{SETTLE_MARGIN_S} s before the wall clock, so every window settles by idleness once the input is drained.",
        "- Recall (right reason): events of the scenario labelled with an expected reason that the scorer flagged "
        "with that reason (outcome suspicious or clawback; `invalid`: dead-lettered) / events labelled so. Recall "
        "(any flag): the same events flagged with any reason. Precision: events flagged with one of the "
        "scenario's reasons that were labelled with that reason (by any scenario) / every event flagged with one "
        "of them. Other flags: events of the scenario flagged although no reason (or another one) was expected of "
        "them (e.g. a repeat viewer's first 5 views).",
        "- Baseline run: the same stream less every event the rules must reject, so it keeps what no rule can "
        "tell apart from a person: the organic traffic, each farm phone's first view (`farm_under_threshold`), "
        "the views of an account farm's first 8 accounts per phone, an overlap bot's views that do not overlap "
        "(one screen's worth), each velocity-burst account's first view and a looping viewer's first 5 views. "
        "The money target compares the fraud run's net money with it.",
        "- Flags come from `suspicious-events` and `events-dlq`, joined to the simulator's label file by input "
        "position (source_topic, partition, offset, index); money is the newest `reward-accruals` record per "
        "video: settled - clawback + provisional.",
        "",
    ]


def _seed_lines(r: SeedResult) -> list[str]:
    lines = [
        f"### Seed {r.seed}",
        "",
        f"{r.events:,} events ({', '.join(f'{k} {v:,}' for k, v in r.labels.items())}), "
        f"{r.config['duration_s']:,.0f} s of event time starting {r.config['start_ms']}; "
        f"worker {r.runs['fraud']['worker_seconds']:,.0f} s (fraud run) and "
        f"{r.runs['baseline']['worker_seconds']:,.0f} s (baseline run: {r.baseline_events:,} events, the "
        "organic ones and the fraud no rule can tell from a person).",
        "",
        "| scenario | reason | injected | expected flags | caught with right reason | recall | "
        "recall (any flag) | precision | other flags |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in r.rows:
        lines.append(
            f"| {row.scenario} | `{row.reason}` | {row.injected:,} | {row.expected:,} | {row.caught_right:,} | "
            f"{_ratio(row.recall)} | {_ratio(row.recall_any)} | {_ratio(row.precision)} | "
            f"{row.unexpected_flags:,} |"
        )
    return [*lines, "", *_seed_figures(r), ""]


def _seed_figures(r: SeedResult) -> list[str]:
    diff_line = ", ".join(f"{s} {m:+,}" for s, m in r.money_by_scenario.items() if m)
    baseline = ", ".join(f"{k} {v:,}" for k, v in r.baseline_flags.items())
    by_label = "; ".join(
        f"{label}: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()) for label, counts in r.flags_by_label.items()
    )
    return [
        f"- Organic false positives: {r.organic_flagged:,} of {r.organic_events:,} organic events "
        f"(profiles included) flagged = {_pct(r.fp_rate, 3)}; late: {r.organic_late:,}; in the baseline run "
        f"(nothing to reject): {r.baseline_organic_flagged:,} flagged" + (f" ({baseline})" if baseline else "") + ".",
        f"- Flags by label (events): {by_label}.",
        f"- Money (net, all videos): {_usd(r.money_fraud)} with fraud, {_usd(r.money_baseline)} in the "
        f"baseline run (what a perfect scorer pays), difference {r.money_fraud - r.money_baseline:+,} micros = "
        f"{r.money_diff * 100:+.3f} %. Qualified views {r.qualified_views_fraud:,} vs "
        f"{r.qualified_views_baseline:,}. Difference over the videos each scenario touched: "
        f"{diff_line or 'none'}; over untouched videos: {r.money_untouched:+,} (micros).",
        "- Targets: " + ", ".join(f"{name} {_yes(ok)}" for name, ok in r.targets().items()) + ".",
    ]


def _overall_line(results: Sequence[SeedResult], events: int, *, failed: bool) -> str:
    met = all_targets_met(list(results)) and not failed
    enough = events >= DEFAULT_EVENTS and len(results) >= 2
    return (
        f"**Overall: {'every target met' if met else 'targets missed'}** (recall >= {TARGET_RECALL} for every "
        f"scenario, organic FP < {TARGET_FP_RATE * 100:g} %, money within {TARGET_MONEY_DIFF * 100:g} %)"
        + ("" if enough else f"; the done criterion needs 2 completed seeds of at least {DEFAULT_EVENTS:,} events")
        + "."
    )
