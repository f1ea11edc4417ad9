"""`stream-app bench` (SPEC §10) end to end on a small input: the raw consumer, the no-op Faust agent and the
scorer each consume every published event, and the results land in the `## Throughput` section of the output.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from stream_app.benchmark import processed_events, replace_section, run_bench

pytestmark = [pytest.mark.integration, pytest.mark.timeout(150)]

# 3,000 view and interaction events plus one profile for each of the simulator's 400 default creators.
SMOKE_EVENTS = 3_000
PROFILES = 400

ROW = re.compile(r"^\| (?P<name>[^|]+?) \| (?P<events>[\d,]+) \| (?P<seconds>[\d.,]+) \| (?P<rate>[\d,]+) \|", re.M)
RATIO = re.compile(r"^\| (?P<name>[a-z/ -]+) \| (?P<value>\d+\.\d{3}) \|$", re.M)


def test_bench_measures_all_three_consumers_on_every_event(bootstrap: str, tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    output.write_text("# Benchmark results\n\n## Quality\n\nkept as it was\n", encoding="utf-8")

    status = run_bench(["--events", str(SMOKE_EVENTS), "--output", str(output), "--bootstrap", bootstrap])

    assert status == 0
    text = output.read_text(encoding="utf-8")
    # Another benchmark's section is left alone; ours is appended after it.
    assert text.startswith("# Benchmark results\n\n## Quality\n\nkept as it was\n\n## Throughput\n")
    assert f"Input: {SMOKE_EVENTS + PROFILES:,} events (creator-profiles {PROFILES}," in text
    rows = {m["name"]: m for m in ROW.finditer(text)}
    assert list(rows) == ["raw consumer ceiling", "no-op Faust agent", "scorer (`stream-app worker`)"]
    for row in rows.values():
        assert row["events"] == f"{SMOKE_EVENTS + PROFILES:,}"
        assert int(row["rate"].replace(",", "")) > 0
    rates = {name: int(row["rate"].replace(",", "")) for name, row in rows.items()}
    ratios = {m["name"]: float(m["value"]) for m in RATIO.finditer(text)}
    assert list(ratios) == ["scorer / no-op", "scorer / raw", "no-op / raw"]
    # Rates are printed rounded to whole events/s and ratios to three places.
    scorer, noop, raw = rates["scorer (`stream-app worker`)"], rates["no-op Faust agent"], rates["raw consumer ceiling"]
    assert ratios["scorer / no-op"] == pytest.approx(scorer / noop, abs=2e-3)
    assert ratios["scorer / raw"] == pytest.approx(scorer / raw, abs=2e-3)
    assert ratios["no-op / raw"] == pytest.approx(noop / raw, abs=2e-3)
    assert "did not finish" not in text


def test_only_the_throughput_section_is_replaced() -> None:
    before = "# Benchmark results\n\n## Quality\n\nq1\n\n## Throughput\n\nold\n\n## Latency\n\nl1\n"

    after = replace_section(before, "## Throughput\n\nnew\n")

    assert after == "# Benchmark results\n\n## Quality\n\nq1\n\n## Throughput\n\nnew\n\n## Latency\n\nl1\n"
    assert replace_section("", "## Throughput\n\nnew\n") == "# Benchmark results\n\n## Throughput\n\nnew\n"
    assert replace_section("# R\n\n## Quality\n\nq\n", "## Throughput\n\nt\n") == (
        "# R\n\n## Quality\n\nq\n\n## Throughput\n\nt\n"
    )


def test_processed_events_sums_every_outcome_and_pending_interactions() -> None:
    samples = {
        'rewards_events_total{outcome="accepted",topic="video-views"}': 2900.0,
        'rewards_events_total{outcome="invalid",topic="video-views"}': 3.0,
        'rewards_events_total{outcome="accepted",topic="creator-profiles"}': 400.0,
        'rewards_events_created{outcome="accepted",topic="video-views"}': 1.7e9,
        "rewards_pending_interactions": 97.0,
        "rewards_windows_settled_total": 5.0,
    }

    assert processed_events(samples) == 2900 + 3 + 400 + 97
