"""The authenticity quality report (issue 4 item 5), smoke-run on the real broker with a small stream.

The run's numbers must come from the scorer's own output: every flag counted in the report is a distinct record of
the fraud run's `suspicious-events` / `events-dlq` topics (read back here independently of the report's join),
and the label counts are the simulator's own for the config the report used. Three scenarios are caught exactly
by construction, so their rows are exact: a malformed record is always dead-lettered, a duplicate (same event_id,
128 random bits) always follows its original, and a fraud client's watch time is at least 20x the video's length
plus one millisecond while organic watch time stays under 2.5x.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from stream_app.domain import jsoncodec
from stream_app.domain.events import InputTopic
from stream_app.tools.harness import read_all
from stream_app.tools.quality import SCENARIOS, positions_of, run_quality
from stream_app.tools.simulator import EXPECTED_REASONS, FRAUD_SCENARIOS, ORGANIC, SimEvent, generate
from stream_app.tools.simulator import SimulationConfig as Config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SMOKE_EVENTS = 8_000
SMOKE_RATE = 80  # 100 s of event time: room for an account farm's 9th account
SEED = 3


def _audit_records(bootstrap: str, prefix: str) -> tuple[Counter[str], set[tuple[Any, ...]]]:
    """'outcome:reason' -> distinct positions flagged so, and the distinct dead-lettered positions."""
    audits = asyncio.run(read_all(bootstrap, prefix + "suspicious-events", {}))
    dead = asyncio.run(read_all(bootstrap, prefix + "events-dlq", {}))
    flagged: set[tuple[Any, ...]] = set()
    for *_, value in audits:
        r = jsoncodec.loads(value or b"null")
        flagged.add((r["source_topic"], r["partition"], r["offset"], r["index"], r["outcome"], r["reason"]))
    by_flag = Counter(f"{outcome}:{reason}" for *_, outcome, reason in flagged)
    dead_positions = set()
    for *_, value in dead:
        r = jsoncodec.loads(value or b"null")
        dead_positions.add((r["source_topic"], r["partition"], r["offset"], r["index"]))
    return by_flag, dead_positions


def test_smoke_report_has_every_scenario_and_counts_flags_from_the_audit_topics(bootstrap: str, tmp_path: Path) -> None:
    output = tmp_path / "RESULTS.md"
    output.write_text("# Benchmark results\n\n## Throughput\n\nthroughput table\n", encoding="utf-8")
    json_path = tmp_path / "quality.json"
    argv = ["--events", str(SMOKE_EVENTS), "--rate", str(SMOKE_RATE), "--seeds", str(SEED), "--output", str(output)]
    argv += ["--idle-settle-s", "5"]  # a smoke run: not the default 30 s of idleness twice
    code = run_quality([*argv, "--bootstrap", bootstrap, "--json", str(json_path)])
    assert code in (0, 1), "the report could not be produced"  # 1: a target missed (possible on a tiny run)

    text = output.read_text(encoding="utf-8")
    assert text.startswith("# Benchmark results\n\n## Throughput\n\nthroughput table\n\n## Quality\n")
    section = text[text.index("## Quality") :]
    assert f"### Seed {SEED}" in section
    for scenario in SCENARIOS:
        assert f"| {scenario} | `{', '.join(EXPECTED_REASONS[scenario])}` |" in section
    assert "Organic false positives:" in section and "Money (net, all videos):" in section

    [result] = jsoncodec.loads(json_path.read_bytes())
    # The labels are the simulator's own for the config the report ran.
    config = Config(**result["config"], fraud=FRAUD_SCENARIOS)
    stream = list(generate(config))
    traffic = sum(1 for e in stream if e.topic is not InputTopic.PROFILES)
    assert traffic >= SMOKE_EVENTS
    assert result["events"] == len(stream) == result["runs"]["fraud"]["published"]
    assert result["labels"] == dict(Counter(e.label for e in stream))
    organic = sum(1 for e in stream if e.label == ORGANIC)
    assert result["organic_events"] == organic
    # the baseline run keeps what the rules must pass: the organic events and fraud no rule can tell from a person
    passing = sum(1 for e in stream if e.expected_reason is None)
    assert result["baseline_events"] == result["runs"]["baseline"]["published"] == passing > organic
    rows = {row["scenario"]: row for row in result["rows"]}
    assert sorted(rows) == sorted(FRAUD_SCENARIOS)
    for scenario, row in rows.items():
        events = [e for e in stream if e.label == scenario]
        assert row["injected"] == len(events) > 0
        assert row["expected"] == sum(1 for e in events if e.expected_reason in EXPECTED_REASONS[scenario]) > 0

    # Every flag the report counts is a distinct record of the fraud run's audit / DLQ topics, and all of them joined.
    fraud_run = result["runs"]["fraud"]
    assert fraud_run["unjoined"] == 0
    by_flag, dead = _audit_records(bootstrap, fraud_run["prefix"])
    assert sum(by_flag.values()) == fraud_run["audit_records"]
    assert len(dead) == fraud_run["dlq_records"]
    counted: Counter[str] = Counter()
    for counts in result["flags_by_label"].values():
        counted.update(counts)
    assert counted == by_flag + Counter({"invalid": len(dead)})
    for scenario, row in rows.items():
        # no event carries both outcomes for one reason, nor two of a scenario's reasons
        with_reason = sum(
            len(dead) if reason == "invalid" else by_flag[f"suspicious:{reason}"] + by_flag[f"clawback:{reason}"]
            for reason in EXPECTED_REASONS[scenario]
        )
        assert row["flagged_with_reason"] == with_reason

    # Exact by construction.
    for scenario in ("malformed", "duplicate", "impossible_watch"):
        row = rows[scenario]
        assert row["caught_right"] == row["expected"] == row["injected"] == row["flagged_with_reason"], row
        assert row["recall"] == row["precision"] == 1.0
    assert rows["malformed"]["injected"] == len(dead)


def _view(event_id: str, video: str, ts: int) -> dict[str, Any]:
    return {"event_id": event_id, "video_id": video, "ts": ts}


def test_join_maps_a_duplicate_to_its_second_occurrence_and_raw_records_by_bytes() -> None:
    original = _view("e1", "v1", 1)
    stream = [
        SimEvent(InputTopic.VIEWS, original, ORGANIC, None, 1),
        SimEvent(InputTopic.VIEWS, _view("e2", "v2", 2), ORGANIC, None, 2),
        SimEvent(InputTopic.VIEWS, b"42", "malformed", "invalid", 3),
        SimEvent(InputTopic.VIEWS, dict(original), "duplicate", "duplicate_event", 4),
        SimEvent(InputTopic.VIEWS, b"42", "malformed", "invalid", 5),
    ]
    envelope_1 = jsoncodec.dumps([original, _view("e2", "v2", 2)])
    envelope_2 = jsoncodec.dumps([original])
    inputs = {
        "video-views": [(0, 0, None, envelope_1), (0, 1, None, b"42"), (0, 2, None, b"42"), (0, 3, None, envelope_2)]
    }
    positions, unmatched = positions_of(stream, inputs)
    assert unmatched == 0
    assert positions == {
        ("video-views", 0, 0, 0): 0,
        ("video-views", 0, 0, 1): 1,
        ("video-views", 0, 1, None): 2,
        ("video-views", 0, 2, None): 4,
        ("video-views", 0, 3, 0): 3,
    }
    # An input record the labels do not know, and a labelled event that never arrived, are both unmatched.
    inputs["video-views"].append((0, 4, None, jsoncodec.dumps([_view("e9", "v9", 9)])))
    assert positions_of([*stream, SimEvent(InputTopic.VIEWS, _view("e8", "v8", 8), ORGANIC, None, 8)], inputs)[1] == 2


def test_the_idle_signature_ignores_what_moves_with_time() -> None:
    from stream_app.tools.harness import scoring_signature

    scoring = {
        'rewards_events_total{outcome="accepted",topic="video-views"}': 5.0,
        "rewards_windows_settled_total": 1.0,
    }
    moving = {
        'rewards_consumer_lag_messages{partition="0",topic="video-views"}': 3.0,
        "rewards_event_loop_heartbeat_age_seconds": 0.7,
        "rewards_worker_ready": 1.0,
        "rewards_shutdown_seconds": 0.0,
        "rewards_readiness_changes_total": 1.0,
    }
    assert scoring_signature({**scoring, **moving}) == tuple(sorted(scoring.items()))
