"""bench/domain_speed.py --decisions: the scoring core's decisions on the fraud simulation, written so that two
checkouts can be compared with `diff`. It must be deterministic (the same input gives the same file) and must see
a change of any decision (a rule that stops flagging changes the file)."""

from __future__ import annotations

import gc
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from stream_app.domain import rules
from stream_app.domain.rules import PASS_JUDGEMENT

BENCH = Path(__file__).resolve().parents[2] / "bench" / "domain_speed.py"
EVENTS = 20_000


@pytest.fixture(scope="module")
def domain_speed() -> ModuleType:
    spec = importlib.util.spec_from_file_location("domain_speed_under_test", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def decisions(domain_speed: ModuleType, seed: int = 2) -> list[str]:
    records, profiles, _ = domain_speed.records_of(EVENTS, "envelope", "fraud", seed)
    run = domain_speed.run_once(records, profiles, "envelope", 1, decisions=True)
    lines: list[str] = run.decision_lines()
    return lines


def test_decisions_are_the_same_run_after_run_and_cover_flags_outcomes_and_money(domain_speed: ModuleType) -> None:
    first = decisions(domain_speed)
    assert first == decisions(domain_speed)
    kinds = {line.split(" ", 1)[0] for line in first}
    assert {"flag", "outcome", "accrual"} <= kinds
    assert first == sorted(first)
    assert decisions(domain_speed, seed=3) != first  # another input, other decisions


def test_a_rule_that_stops_flagging_changes_the_decisions(
    domain_speed: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = decisions(domain_speed)
    monkeypatch.setattr(rules, "check_velocity_burst", lambda policy, velocity, view: PASS_JUDGEMENT)
    after = decisions(domain_speed)
    assert after != before
    changed = set(before) ^ set(after)
    assert any(line.startswith("outcome") for line in changed)
    assert any(line.startswith("accrual") for line in changed)  # and the money moves with it


def test_the_decisions_file_is_written_by_the_command_line(
    domain_speed: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "decisions.txt"
    argv = ["domain_speed.py", "--workload", "fraud", "--events", str(EVENTS), "--repeat", "1", "--decisions", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    threshold = gc.get_threshold()
    try:
        assert domain_speed.main() == 0
    finally:  # main tunes and freezes the collector as the worker does: not for the rest of the suite
        gc.unfreeze()
        gc.set_threshold(*threshold)
    assert out.read_text().splitlines() == decisions(domain_speed)


def test_realtime_shaped_batches_judge_device_views_as_the_sources_drain(domain_speed: ModuleType) -> None:
    """--batch-records 1 --drained: a batch per envelope, every event partition drained (a worker keeping up): the
    device rules that wait for every earlier view (device_overlap, account_farm) still flag, without waiting for
    their due time."""
    records, profiles, _ = domain_speed.records_of(EVENTS, "envelope", "fraud", 2)
    assert len(list(domain_speed.batches(records, "envelope", 1))) == len(records)
    run = domain_speed.run_once(records, profiles, "envelope", 50, decisions=True, batch_records=1, drained=True)
    reasons = {line.split(" ")[2] for line in run.decision_lines() if line.startswith("flag")}
    assert {"device_overlap", "account_farm"} <= reasons
