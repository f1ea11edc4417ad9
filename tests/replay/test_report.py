"""The five files: SPEC §11's columns, money in integer micros, per-creator change, and byte-identical files for
the same input and policies."""

from __future__ import annotations

from pathlib import Path

from stream_app.domain import jsoncodec
from stream_app.domain.events import InputTopic
from stream_app.domain.partitioning import partition_for
from stream_app.replay import reading
from stream_app.replay.command import ReplayOutcome, build_files
from stream_app.replay.engine import ReplayEngine
from stream_app.replay.report import FILES, Row, creator_rows, distribution, micros
from tests.integration.test_scoring_scenario import B, scenario
from tests.replay.helpers import records_of
from tests.replay.test_engine import COUNTS, V1, V2


def outcome(present_ms: int = 100_000) -> ReplayOutcome:
    first, second = scenario()
    engine = ReplayEngine([V1, V2], COUNTS, partition_for)
    records = records_of(first + second)
    engine.add_profiles(r for r in records if r.topic is InputTopic.PROFILES)
    for record in records:
        if record.topic is not InputTopic.PROFILES:
            engine.add(record)
    baseline, candidate = engine.finish(present_ms)
    # the ledger: what the worker wrote for this scenario (tests/integration/test_scoring_scenario.py)
    ledger = [jsoncodec.dumps(r) for r in baseline.totals.settlements]
    selection = reading.Selection(to_ms=present_ms)
    snapshot = reading.Snapshot({}, {})
    return ReplayOutcome(baseline, candidate, engine, snapshot, selection, present_ms, ledger, None, 0.0, 0.0, 0.0)


def test_files_are_byte_identical_for_the_same_input(tmp_path: Path) -> None:
    build_files(outcome(), "defaults", "policies/v2.toml", tmp_path / "a")
    build_files(outcome(), "defaults", "policies/v2.toml", tmp_path / "b")
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_the_files_say_what_changed(tmp_path: Path) -> None:
    summary = build_files(outcome(), "defaults", "policies/v2.toml", tmp_path)
    videos = (tmp_path / "videos.csv").read_text().splitlines()
    assert videos[0] == (
        "video_id,creator_id,baseline_settled_micros,candidate_settled_micros,diff_micros,baseline_qualified_views,"
        "candidate_qualified_views,windows_settled,baseline_policy,candidate_policy"
    )
    row = next(line.split(",") for line in videos if line.startswith(B + ","))
    assert row[2:8] == ["3000", "3996", "996", "20", "20", "1"]
    creators = (tmp_path / "creators.csv").read_text().splitlines()
    assert creators[0].startswith("creator_id,baseline_settled_micros,")
    # c1 owns A (8_000), B (3_000 -> 3_996) and Z (open): 11_000 -> 11_996
    assert next(line for line in creators if line.startswith("c1,")).split(",")[1:4] == ["11000", "11996", "996"]
    assert summary["totals"]["diff_micros"] == 996
    assert summary["reconciliation"]["status"] == "matches the ledger"
    assert summary["selection"]["present"] == "1970-01-01T00:01:40.000Z"
    report = (tmp_path / "report.md").read_text()
    assert "| `watch_weight_bps` | 0 | 2000 |" in report
    assert "**matches the ledger**" in report and "![per-creator change in percent](change.png)" in report
    assert (tmp_path / "change.png").read_bytes()[:4] == b"\x89PNG"


def test_a_video_that_differs_is_listed(tmp_path: Path) -> None:
    replayed = outcome()
    ledger = [jsoncodec.loads(v) for v in replayed.ledger_values if v is not None]
    for record in ledger:
        if record["video_id"] == B:
            record["settled_micros"] += 1
    replayed.ledger_values = [jsoncodec.dumps(r) for r in ledger]
    summary = build_files(replayed, "defaults", "policies/v2.toml", tmp_path)
    [difference] = summary["reconciliation"]["differences"]
    assert (difference["video_id"], difference["diff_micros"], difference["cause"]) == (B, -1, "unexplained")
    assert f"| {B} | c1 | 3,001 | 3,000 | -1 | unexplained |" in (tmp_path / "report.md").read_text()


def test_money_is_shown_from_integer_micros() -> None:
    assert micros(1_234_567) == "1,234,567 µ$ ($1.234567)"
    assert micros(-500) == "-500 µ$ (-$0.000500)"


def test_distribution_and_zero_crossings() -> None:
    rows = [
        Row("a", "a", 1_000, 1_500, 1, 1, 1, 0, 0),  # +50 %
        Row("b", "b", 1_000, 0, 1, 0, 1, 0, 0),  # to zero: -100 %
        Row("c", "c", 0, 700, 0, 1, 1, 0, 0),  # from zero: no percent
        Row("d", "d", 2_000, 2_000, 1, 1, 1, 0, 0),
    ]
    d = distribution(creator_rows(rows))
    assert (d["up"], d["down"], d["unchanged"], d["with_baseline_pay"]) == (2, 1, 1, 3)
    assert (d["change_pct"]["min"], d["change_pct"]["median"], d["change_pct"]["max"]) == (-100.0, 0.0, 50.0)
