"""The five files of a replay (SPEC §11): videos.csv, creators.csv, summary.json, report.md and change.png.

Everything here is deterministic: rows sorted by id, JSON with sorted keys, no wall-clock time written, the PNG
without a software stamp, so the same input and policies give byte-identical files. Money stays integer micros;
only the per-creator change in percent is a float.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.domain.policy import Policy
from stream_app.replay.engine import VideoResult
from stream_app.replay.ledger import EXPLANATIONS, Reconciliation

VIDEO_COLUMNS = (
    "video_id",
    "creator_id",
    "baseline_settled_micros",
    "candidate_settled_micros",
    "diff_micros",
    "baseline_qualified_views",
    "candidate_qualified_views",
    "windows_settled",
    "baseline_policy",
    "candidate_policy",
)
CREATOR_COLUMNS = ("creator_id", *VIDEO_COLUMNS[2:])
TOP_MOVERS = 10
LISTED_DIFFERENCES = 50  # report.md lists this many differing videos (summary.json lists them all)
FILES = ("videos.csv", "creators.csv", "summary.json", "report.md", "change.png")


@dataclass(frozen=True, slots=True)
class Row:
    """One video's or creator's line: settled money is net of clawbacks (settled - clawed back), in micros."""

    key: str
    creator_id: str
    baseline_settled_micros: int
    candidate_settled_micros: int
    baseline_qualified_views: int
    candidate_qualified_views: int
    windows_settled: int
    baseline_provisional_micros: int
    candidate_provisional_micros: int

    @property
    def diff_micros(self) -> int:
        return self.candidate_settled_micros - self.baseline_settled_micros

    @property
    def change_pct(self) -> float | None:
        """The change in percent of the baseline; None when the baseline pays nothing."""
        if self.baseline_settled_micros <= 0:
            return None
        return self.diff_micros * 100 / self.baseline_settled_micros


@dataclass(frozen=True, slots=True)
class ReplayFacts:
    """What the report says besides the rows: policies, the range read, counts."""

    baseline: Policy
    candidate: Policy
    baseline_id: str
    candidate_id: str
    baseline_source: str
    candidate_source: str
    selection: Mapping[str, Any]  # from, to, present, newest event, compared-from
    read: Mapping[str, Any]  # records and events by topic, invalid
    outcomes: Mapping[str, Mapping[str, int]]  # per policy: "topic outcome reason" -> count


def video_rows(baseline: Mapping[str, VideoResult], candidate: Mapping[str, VideoResult]) -> list[Row]:
    rows = []
    for video_id in sorted(baseline.keys() | candidate.keys()):
        b, c = baseline.get(video_id), candidate.get(video_id)
        either = b or c
        assert either is not None
        rows.append(
            Row(
                video_id,
                either.creator_id,
                b.net_micros if b else 0,
                c.net_micros if c else 0,
                b.qualified_views if b else 0,
                c.qualified_views if c else 0,
                b.windows_settled if b else c.windows_settled if c else 0,
                b.provisional_micros if b else 0,
                c.provisional_micros if c else 0,
            )
        )
    return rows


def creator_rows(videos: Iterable[Row]) -> list[Row]:
    sums: dict[str, list[int]] = {}
    for row in videos:
        total = sums.setdefault(row.creator_id, [0] * 7)
        values = (
            row.baseline_settled_micros,
            row.candidate_settled_micros,
            row.baseline_qualified_views,
            row.candidate_qualified_views,
            row.windows_settled,
            row.baseline_provisional_micros,
            row.candidate_provisional_micros,
        )
        for i, value in enumerate(values):
            total[i] += value
    return [Row(creator, creator, *values) for creator, values in sorted(sums.items())]


def policy_differences(baseline: Policy, candidate: Policy) -> list[tuple[str, Any, Any]]:
    """(field, baseline value, candidate value) for every number that differs, in field order."""
    out = []
    for f in fields(baseline):
        b, c = _plain(getattr(baseline, f.name)), _plain(getattr(candidate, f.name))
        if b != c:
            out.append((f.name, b, c))
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, frozenset):
        return sorted(value)
    if isinstance(value, Mapping):
        return dict(sorted(value.items()))
    return value


def _quantile(ordered: Sequence[float], q: float) -> float:
    """The q-quantile of sorted values, by linear interpolation between closest ranks."""
    position = (len(ordered) - 1) * q
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _pct(value: float) -> float:
    return round(value, 4)


def distribution(creators: Sequence[Row]) -> dict[str, Any]:
    changes = sorted(c for c in (row.change_pct for row in creators) if c is not None)
    summary: dict[str, Any] = {
        "creators": len(creators),
        "with_baseline_pay": len(changes),
        "up": sum(1 for row in creators if row.diff_micros > 0),
        "down": sum(1 for row in creators if row.diff_micros < 0),
        "unchanged": sum(1 for row in creators if row.diff_micros == 0),
    }
    if changes:
        summary["change_pct"] = {
            "min": _pct(changes[0]),
            "p10": _pct(_quantile(changes, 0.10)),
            "p25": _pct(_quantile(changes, 0.25)),
            "median": _pct(_quantile(changes, 0.50)),
            "p75": _pct(_quantile(changes, 0.75)),
            "p90": _pct(_quantile(changes, 0.90)),
            "max": _pct(changes[-1]),
            "mean": _pct(sum(changes) / len(changes)),
        }
    return summary


def _mover(row: Row) -> dict[str, Any]:
    pct = row.change_pct
    return {
        "creator_id": row.creator_id,
        "baseline_settled_micros": row.baseline_settled_micros,
        "candidate_settled_micros": row.candidate_settled_micros,
        "diff_micros": row.diff_micros,
        "change_pct": None if pct is None else _pct(pct),
    }


def build_summary(
    facts: ReplayFacts, videos: Sequence[Row], creators: Sequence[Row], reconciliation: Reconciliation
) -> dict[str, Any]:
    ups = sorted((r for r in creators if r.diff_micros > 0), key=lambda r: (-r.diff_micros, r.creator_id))
    downs = sorted((r for r in creators if r.diff_micros < 0), key=lambda r: (r.diff_micros, r.creator_id))
    baseline_total = sum(r.baseline_settled_micros for r in videos)
    candidate_total = sum(r.candidate_settled_micros for r in videos)
    return {
        "policies": {
            "baseline": {"id": facts.baseline_id, "source": facts.baseline_source},
            "candidate": {"id": facts.candidate_id, "source": facts.candidate_source},
            "differences": [
                {"field": name, "baseline": b, "candidate": c}
                for name, b, c in policy_differences(facts.baseline, facts.candidate)
            ],
        },
        "selection": dict(facts.selection),
        "read": dict(facts.read),
        "outcomes": {name: dict(sorted(counts.items())) for name, counts in facts.outcomes.items()},
        "totals": {
            "videos": len(videos),
            "creators": len(creators),
            "baseline_settled_micros": baseline_total,
            "candidate_settled_micros": candidate_total,
            "diff_micros": candidate_total - baseline_total,
            "baseline_qualified_views": sum(r.baseline_qualified_views for r in videos),
            "candidate_qualified_views": sum(r.candidate_qualified_views for r in videos),
            "windows_settled": sum(r.windows_settled for r in videos),
            "baseline_provisional_micros": sum(r.baseline_provisional_micros for r in videos),
            "candidate_provisional_micros": sum(r.candidate_provisional_micros for r in videos),
        },
        "change_per_creator": distribution(creators),
        "top_movers": {"up": [_mover(r) for r in ups[:TOP_MOVERS]], "down": [_mover(r) for r in downs[:TOP_MOVERS]]},
        "to_zero": [_mover(r) for r in creators if r.baseline_settled_micros > 0 and r.candidate_settled_micros == 0],
        "from_zero": [_mover(r) for r in creators if r.baseline_settled_micros == 0 and r.candidate_settled_micros > 0],
        "reconciliation": {
            "status": _status(reconciliation),
            "videos_compared": reconciliation.videos_compared,
            "ledger_net_micros": reconciliation.ledger_net_micros,
            "replay_net_micros": reconciliation.replay_net_micros,
            "ledger_policies": reconciliation.ledger_policies,
            "ledger_records": reconciliation.ledger_records,
            "ledger_duplicates": reconciliation.ledger_duplicates,
            "differing_videos": len(reconciliation.differences),
            "by_cause": reconciliation.by_cause(),
            "differences": [
                {
                    "video_id": d.video_id,
                    "creator_id": d.creator_id,
                    "ledger_net_micros": d.ledger_net_micros,
                    "replay_net_micros": d.replay_net_micros,
                    "diff_micros": d.diff_micros,
                    "cause": d.cause,
                }
                for d in reconciliation.differences
            ],
        },
    }


def _status(reconciliation: Reconciliation) -> str:
    if not reconciliation.matches:
        return "differs from the ledger"
    return "matches the ledger" if reconciliation.videos_compared else "nothing to compare"


# ---- files ---------------------------------------------------------------------------------------------------


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Row], baseline_id: str, candidate_id: str) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            values = [
                row.baseline_settled_micros,
                row.candidate_settled_micros,
                row.diff_micros,
                row.baseline_qualified_views,
                row.candidate_qualified_views,
                row.windows_settled,
                baseline_id,
                candidate_id,
            ]
            head = [row.key, row.creator_id] if columns[0] == "video_id" else [row.key]
            writer.writerow([*head, *values])


def write_files(
    out: Path, facts: ReplayFacts, videos: Sequence[Row], creators: Sequence[Row], reconciliation: Reconciliation
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "videos.csv", VIDEO_COLUMNS, videos, facts.baseline_id, facts.candidate_id)
    write_csv(out / "creators.csv", CREATOR_COLUMNS, creators, facts.baseline_id, facts.candidate_id)
    summary = build_summary(facts, videos, creators, reconciliation)
    (out / "summary.json").write_bytes(jsoncodec.dumps_indented(summary) + b"\n")
    (out / "report.md").write_text(render_report(summary), encoding="utf-8")
    plot_change(out / "change.png", [c for c in (row.change_pct for row in creators) if c is not None], facts)
    return summary


def micros(value: int) -> str:
    """Integer micros as `1,234,567 µ$ ($1.234567)`, with integer arithmetic only."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 1_000_000)
    return f"{value:,} µ$ ({sign}${whole:,}.{frac:06d})"


def render_report(summary: Mapping[str, Any]) -> str:
    policies, totals, selection = summary["policies"], summary["totals"], summary["selection"]
    change, recon = summary["change_per_creator"], summary["reconciliation"]
    lines = [
        "# Policy replay",
        "",
        f"Baseline **{policies['baseline']['id']}** ({policies['baseline']['source']}) against candidate "
        f"**{policies['candidate']['id']}** ({policies['candidate']['source']}).",
        "",
        "## What differs between the two policies",
        "",
    ]
    if policies["differences"]:
        lines += ["| number | baseline | candidate |", "|---|---|---|"]
        lines += [f"| `{d['field']}` | {d['baseline']} | {d['candidate']} |" for d in policies["differences"]]
    else:
        lines.append("Nothing: the two policies are the same.")
    read = summary["read"]
    lines += [
        "",
        "## What was read",
        "",
        f"Records by Kafka timestamp from {selection['from']} to {selection['to']}; the present (windows due at or "
        f"before it settle) is {selection['present']}; newest event time read: {selection['newest_event']}.",
        "",
        "| topic | records | events | invalid |",
        "|---|---|---|---|",
    ]
    for topic in sorted(read["records"]):
        lines.append(
            f"| {topic} | {read['records'][topic]:,} | {read['events'].get(topic, 0):,} | "
            f"{read['invalid'].get(topic, 0):,} |"
        )
    diff = totals["diff_micros"]
    base = totals["baseline_settled_micros"]
    pct = f" ({diff * 100 / base:+.2f} %)" if base else ""
    lines += [
        "",
        "## Totals (settled money, net of clawbacks)",
        "",
        "| | baseline | candidate |",
        "|---|---|---|",
        f"| settled | {micros(base)} | {micros(totals['candidate_settled_micros'])} |",
        f"| qualified views | {totals['baseline_qualified_views']:,} | {totals['candidate_qualified_views']:,} |",
        f"| still provisional | {micros(totals['baseline_provisional_micros'])} | "
        f"{micros(totals['candidate_provisional_micros'])} |",
        "",
        f"Change: **{micros(diff)}**{pct} over {totals['videos']:,} videos of {totals['creators']:,} creators "
        f"({totals['windows_settled']:,} windows settled).",
        "",
        "## Per-creator change",
        "",
        f"{change['up']:,} creators gain, {change['down']:,} lose, {change['unchanged']:,} are unchanged.",
    ]
    if "change_pct" in change:
        q = change["change_pct"]
        lines += [
            f"Among the {change['with_baseline_pay']:,} creators the baseline pays: median {q['median']:+.2f} %, "
            f"10th percentile {q['p10']:+.2f} %, 90th {q['p90']:+.2f} %, from {q['min']:+.2f} % to {q['max']:+.2f} %.",
        ]
    lines += ["", "![per-creator change in percent](change.png)", ""]
    movers = summary["top_movers"]
    for title, key in (("Top gains", "up"), ("Top losses", "down")):
        lines += [f"### {title}", ""]
        if movers[key]:
            lines += _movers_table(movers[key])
        else:
            lines.append("None.")
        lines.append("")
    for title, key in (
        ("Paid under the baseline, nothing under the candidate", "to_zero"),
        ("Paid only under the candidate", "from_zero"),
    ):
        lines += [f"### {title}", ""]
        lines += _movers_table(summary[key]) if summary[key] else ["None."]
        lines.append("")
    lines += ["## Reconciliation with the ledger", ""]
    if recon["status"] == "nothing to compare":
        lines.append("No window due by the present was settled on either side: nothing to reconcile yet.")
    elif recon["status"] == "matches the ledger":
        lines.append(
            f"Under the baseline the replay **matches the ledger**: {recon['videos_compared']:,} videos, "
            f"{micros(recon['ledger_net_micros'])} net, to the micro."
        )
    else:
        lines += [
            f"Under the baseline the replay **differs from the ledger** on {recon['differing_videos']:,} of "
            f"{recon['videos_compared']:,} videos: ledger {micros(recon['ledger_net_micros'])}, replay "
            f"{micros(recon['replay_net_micros'])} net.",
            "",
            "| video | creator | ledger | replay | difference | cause |",
            "|---|---|---|---|---|---|",
        ]
        for d in recon["differences"][:LISTED_DIFFERENCES]:
            lines.append(
                f"| {d['video_id']} | {d['creator_id']} | {d['ledger_net_micros']:,} | {d['replay_net_micros']:,} | "
                f"{d['diff_micros']:+,} | {d['cause']} |"
            )
        if recon["differing_videos"] > LISTED_DIFFERENCES:
            lines.append(f"\n… and {recon['differing_videos'] - LISTED_DIFFERENCES:,} more in summary.json.")
        lines += ["", "Causes:", ""]
        lines += [f"- **{cause}** ({n}): {EXPLANATIONS[cause]}." for cause, n in recon["by_cause"].items()]
    others = [p for p in recon["ledger_policies"] if p != policies["baseline"]["id"]]
    if others:
        lines += [
            "",
            f"The ledger's compared windows were written under {', '.join(recon['ledger_policies'])}; the baseline "
            f"is {policies['baseline']['id']}: replay with `--baseline` set to the policy the workers ran.",
        ]
    lines += [
        "",
        f"Compared: windows starting at or after {selection['compared_from']} and due at or before the present; "
        f"{recon['ledger_records']:,} ledger records read, {recon['ledger_duplicates']:,} duplicates dropped.",
        "",
    ]
    return "\n".join(lines)


def _movers_table(movers: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["| creator | baseline µ$ | candidate µ$ | change µ$ | change |", "|---|---|---|---|---|"]
    for m in movers:
        pct = "—" if m["change_pct"] is None else f"{m['change_pct']:+.2f} %"
        lines.append(
            f"| {m['creator_id']} | {m['baseline_settled_micros']:,} | {m['candidate_settled_micros']:,} | "
            f"{m['diff_micros']:+,} | {pct} |"
        )
    return lines


def plot_change(path: Path, changes: Sequence[float], facts: ReplayFacts) -> None:
    """A histogram of the per-creator change in percent (creators the baseline pays)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        if changes:
            low, high = min(changes), max(changes)
            if low == high:
                low, high = low - 1, high + 1
            axes.hist(changes, bins=40, range=(low, high), color="#3b6ea8", edgecolor="white")
            axes.axvline(0, color="#444444", linewidth=1)
            median = _quantile(sorted(changes), 0.5)
            axes.axvline(median, color="#c0392b", linestyle="--", linewidth=1, label=f"median {median:+.2f} %")
            axes.legend(loc="upper right")
        else:
            axes.text(0.5, 0.5, "no creator is paid under the baseline", ha="center", va="center")
        axes.set_title(
            f"Per-creator change in settled pay: {facts.candidate_id} against {facts.baseline_id}\n"
            f"({len(changes):,} creators paid under the baseline)",
            fontsize=10,
        )
        axes.set_xlabel("change in settled pay (%)")
        axes.set_ylabel("creators")
        axes.yaxis.set_major_locator(MaxNLocator(integer=True))
        figure.tight_layout()
        figure.savefig(path, format="png", metadata={"Software": None})
    finally:
        plt.close(figure)
