"""The numbers of one seed, from its two joined runs: per fraud scenario recall and precision (`ScenarioRow`),
organic false positives, flags by label, and the money with fraud against the baseline run's (`SeedResult`,
built by `summarize`), with samples of missed events and false positives for a diagnosis."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

from stream_app.tools.quality.join import Flag, RunOutput
from stream_app.tools.quality.method import SAMPLES, SCENARIOS, TARGET_FP_RATE, TARGET_MONEY_DIFF, TARGET_RECALL
from stream_app.tools.simulator import EXPECTED_REASONS, INVALID, ORGANIC, SimEvent, SimulationConfig

_FLAGGED = frozenset({"suspicious", "clawback", "invalid"})
Samples = dict[str, list[dict[str, Any]]]


@dataclass
class ScenarioRow:
    scenario: str
    reasons: tuple[str, ...]  # the reasons its events are labelled with (EXPECTED_REASONS)
    injected: int
    expected: int  # events labelled with an expected reason
    caught_right: int  # ... flagged with that reason
    caught_any: int  # ... flagged with any reason (suspicious, clawback or invalid)
    flagged_with_reason: int  # every event flagged with one of the reasons (all labels)
    flagged_as_expected: int  # ... that was labelled with that reason (by any scenario)
    unexpected_flags: int  # events of the scenario with no expected reason, or another one, that were flagged

    @property
    def reason(self) -> str:
        return ", ".join(self.reasons)

    @property
    def recall(self) -> float:
        return self.caught_right / self.expected if self.expected else math.nan

    @property
    def recall_any(self) -> float:
        return self.caught_any / self.expected if self.expected else math.nan

    @property
    def precision(self) -> float:
        return self.flagged_as_expected / self.flagged_with_reason if self.flagged_with_reason else math.nan


@dataclass
class SeedResult:
    seed: int
    config: dict[str, Any]
    events: int  # traffic + profiles published in the fraud run
    baseline_events: int
    labels: dict[str, int]
    rows: list[ScenarioRow]
    organic_events: int
    organic_flagged: int
    organic_late: int
    baseline_organic_flagged: int
    baseline_flags: dict[str, int]  # "outcome:reason" -> events of the baseline run
    flags_by_label: dict[str, dict[str, int]]  # label -> "outcome:reason" -> events
    money_fraud: int
    money_baseline: int
    money_by_scenario: dict[str, int]  # fraud - baseline over the videos each scenario touched
    money_untouched: int
    qualified_views_fraud: int
    qualified_views_baseline: int
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Up to SAMPLES events per scenario that were expected to be flagged with its reason and were not, and per
    # flag (late included) up to SAMPLES organic events given it: what a diagnosis starts from (JSON output only).
    missed: Samples = field(default_factory=dict)
    false_positives: Samples = field(default_factory=dict)
    logs: str | None = None  # where the worker logs and the label file were kept (None: removed)

    @property
    def fp_rate(self) -> float:
        return self.organic_flagged / self.organic_events if self.organic_events else math.nan

    @property
    def money_diff(self) -> float:
        if self.money_baseline == 0:
            return math.inf if self.money_fraud else 0.0
        return (self.money_fraud - self.money_baseline) / self.money_baseline

    def targets(self) -> dict[str, bool]:
        met = {f"recall {row.scenario}": row.recall >= TARGET_RECALL for row in self.rows}
        met["organic FP rate"] = self.fp_rate < TARGET_FP_RATE
        met["money difference"] = abs(self.money_diff) <= TARGET_MONEY_DIFF
        return met

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for row, raw in zip(self.rows, data["rows"], strict=True):
            raw.update(recall=row.recall, recall_any=row.recall_any, precision=row.precision)
        data.update(fp_rate=self.fp_rate, money_diff=self.money_diff, targets=self.targets())
        return data


def all_targets_met(results: list[SeedResult]) -> bool:
    return all(all(r.targets().values()) for r in results)


# ---- flags -----------------------------------------------------------------------------------------------------


def flag_name(flag: Flag) -> str:
    outcome, reason = flag
    return INVALID if outcome == INVALID else f"{outcome}:{reason}"


def _has_reason(flags: set[Flag], reason: str) -> bool:
    if reason == INVALID:
        return (INVALID, INVALID) in flags
    return any(outcome in ("suspicious", "clawback") and r == reason for outcome, r in flags)


def _flagged(flags: set[Flag]) -> bool:
    return any(outcome in _FLAGGED for outcome, _ in flags)


def _sample(index: int, event: SimEvent, run: RunOutput) -> dict[str, Any]:
    flags = run.flags.get(index, set())
    payload = event.payload if isinstance(event.payload, dict) else event.payload.decode(errors="replace")
    return {
        "index_in_stream": index,
        "topic": event.topic.value,
        "label": event.label,
        "expected_reason": event.expected_reason,
        "flags": sorted(flag_name(f) for f in flags),
        "details": sorted(run.details.get(index, [])),
        "payload": payload,
    }


# ---- per scenario ----------------------------------------------------------------------------------------------


def _scenario_row(scenario: str, stream: list[SimEvent], fraud: RunOutput) -> tuple[ScenarioRow, list[dict[str, Any]]]:
    """One scenario's counts in the fraud run, and samples of its events that missed their expected flag."""
    reasons = EXPECTED_REASONS[scenario]
    injected = expected = caught_right = caught_any = unexpected = 0
    missed: list[dict[str, Any]] = []
    for index, event in enumerate(stream):
        if event.label != scenario:
            continue
        injected += 1
        flags = fraud.flags.get(index, set())
        if event.expected_reason is None:
            unexpected += _flagged(flags)
            continue
        expected += 1
        right = _has_reason(flags, event.expected_reason)
        caught_right += right
        caught_any += _flagged(flags)
        unexpected += _flagged(flags) and not right
        if not right and len(missed) < SAMPLES:
            missed.append(_sample(index, event, fraud))
    flagged_with_reason = flagged_as_expected = 0
    for index, flags in fraud.flags.items():
        if any(_has_reason(flags, reason) for reason in reasons):
            flagged_with_reason += 1
            wanted = stream[index].expected_reason
            flagged_as_expected += wanted in reasons and _has_reason(flags, wanted or "")
    row = ScenarioRow(
        scenario, reasons, injected, expected, caught_right, caught_any, flagged_with_reason, flagged_as_expected,
        unexpected,
    )  # fmt: skip
    return row, missed


def _flags_by_label(stream: list[SimEvent], run: RunOutput) -> dict[str, dict[str, int]]:
    """label -> flag name -> events of that label given it."""
    by_label: dict[str, Counter[str]] = {}
    for index, flags in run.flags.items():
        by_label.setdefault(stream[index].label, Counter()).update(flag_name(flag) for flag in flags)
    return {label: dict(sorted(counts.items())) for label, counts in sorted(by_label.items())}


# ---- organic traffic -------------------------------------------------------------------------------------------


@dataclass
class _Organic:
    """What the fraud run did to the organic events: how many, flagged, late, and samples per flag."""

    events: int = 0
    flagged: int = 0
    late: int = 0
    false_positives: Samples = field(default_factory=dict)


def _organic(stream: list[SimEvent], fraud: RunOutput) -> _Organic:
    organic = _Organic()
    for index, event in enumerate(stream):
        if event.label != ORGANIC:
            continue
        flags = fraud.flags.get(index, set())
        organic.events += 1
        organic.flagged += _flagged(flags)
        organic.late += any(outcome == "late" for outcome, _ in flags)
        for flag in flags:
            if flag[0] not in (*_FLAGGED, "late"):
                continue
            samples = organic.false_positives.setdefault(flag_name(flag), [])
            if len(samples) < SAMPLES:
                samples.append(_sample(index, event, fraud))
    return organic


def _baseline_flags(baseline: RunOutput) -> tuple[int, dict[str, int]]:
    """Events the baseline run flagged, and its flags by name (it has nothing to reject)."""
    names: Counter[str] = Counter()
    for flags in baseline.flags.values():
        names.update(flag_name(flag) for flag in flags)
    flagged = sum(1 for flags in baseline.flags.values() if _flagged(flags))
    return flagged, dict(sorted(names.items()))


# ---- money -----------------------------------------------------------------------------------------------------


def _money_by_scenario(stream: list[SimEvent], fraud: RunOutput, baseline: RunOutput) -> tuple[dict[str, int], int]:
    """Net money with fraud less the baseline's, over the videos each scenario touched; and over untouched ones."""
    touched: dict[str, set[str]] = {scenario: set() for scenario in SCENARIOS}
    for event in stream:
        if event.label != ORGANIC and isinstance(event.payload, dict) and "video_id" in event.payload:
            touched[event.label].add(event.payload["video_id"])
    videos = fraud.net_micros.keys() | baseline.net_micros.keys()
    diff = {v: fraud.net_micros.get(v, 0) - baseline.net_micros.get(v, 0) for v in videos}
    any_touched = set().union(*touched.values())
    by_scenario = {s: sum(diff.get(v, 0) for v in touched[s]) for s in SCENARIOS}
    return by_scenario, sum(d for v, d in diff.items() if v not in any_touched)


# ---- one seed --------------------------------------------------------------------------------------------------


def _config_summary(config: SimulationConfig) -> dict[str, Any]:
    return {
        "seed": config.seed,
        "start_ms": config.start_ms,
        "duration_s": config.duration_s,
        "rate_per_s": config.rate_per_s,
        "fraud_share": config.fraud_share,
        "creators": config.creators,
        "videos": config.videos,
    }


def _run_summary(run: RunOutput) -> dict[str, Any]:
    return {
        "prefix": run.prefix,
        "published": run.published,
        "worker_seconds": round(run.seconds, 1),
        "audit_records": run.audit_records,
        "dlq_records": run.dlq_records,
        "unjoined": run.unjoined,
        "provisional_micros": run.provisional_micros,
        "late": int(sum(v for k, v in run.metrics.items() if 'outcome="late"' in k)),
    }


def summarize(
    seed: int,
    config: SimulationConfig,
    stream: list[SimEvent],
    fraud: RunOutput,
    passing: list[SimEvent],
    baseline: RunOutput,
) -> SeedResult:
    """`passing`: the events of the baseline run (those labelled with no expected reason)."""
    rows_and_missed = [_scenario_row(scenario, stream, fraud) for scenario in SCENARIOS]
    organic = _organic(stream, fraud)
    baseline_flagged, baseline_flags = _baseline_flags(baseline)
    money_by_scenario, money_untouched = _money_by_scenario(stream, fraud, baseline)
    return SeedResult(
        seed=seed,
        config=_config_summary(config),
        events=len(stream),
        baseline_events=len(passing),
        labels=dict(sorted(Counter(event.label for event in stream).items())),
        rows=[row for row, _ in rows_and_missed],
        organic_events=organic.events,
        organic_flagged=organic.flagged,
        organic_late=organic.late,
        baseline_organic_flagged=baseline_flagged,
        baseline_flags=baseline_flags,
        flags_by_label=_flags_by_label(stream, fraud),
        money_fraud=sum(fraud.net_micros.values()),
        money_baseline=sum(baseline.net_micros.values()),
        money_by_scenario=money_by_scenario,
        money_untouched=money_untouched,
        qualified_views_fraud=fraud.qualified_views,
        qualified_views_baseline=baseline.qualified_views,
        missed={row.scenario: missed for row, missed in rows_and_missed},
        false_positives=organic.false_positives,
        runs={run.name: _run_summary(run) for run in (fraud, baseline)},
    )
