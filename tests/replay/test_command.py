"""`stream-app replay`'s refusals that need no broker: a policy file with an unknown key or a bad value, a --from
after --to, a time that is not one. Each exits 2 with a message naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiokafka import TopicPartition

from stream_app.cli import main
from stream_app.domain.errors import ReplaySelectionError
from stream_app.domain.events import InputTopic
from stream_app.replay.reading import Selection, Snapshot, format_ms, parse_time

UNREACHABLE = {"KAFKA_BOOTSTRAP": "127.0.0.1:9", "TOPIC_PREFIX": "", "POLICY_FILE": ""}


@pytest.fixture(autouse=True)
def no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in UNREACHABLE.items():
        monkeypatch.setenv(name, value)


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["replay", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ("watch_weigth_bps = 2000\n", ["unknown key 'watch_weigth_bps'", "did you mean 'watch_weight_bps'"]),
        ("watch_weight_bps = -1\n", ["watch_weight_bps must be an integer >= 0, got -1"]),
        ("watch_weight_bps = 0.2\n", ["watch_weight_bps must be an integer >= 0, got 0.2"]),
        ("[base_rates]\nUSA = 1000\n", ["base_rates key 'USA'"]),
    ],
)
def test_a_bad_candidate_policy_is_refused_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str, names: list[str]
) -> None:
    policy = tmp_path / "candidate.toml"
    policy.write_text(toml)
    code, err = run(capsys, "--policy", str(policy), "--output", str(tmp_path / "out"))
    assert code == 2
    assert "candidate policy (--policy)" in err
    for name in names:
        assert name in err
    assert not (tmp_path / "out").exists()


def test_a_bad_baseline_policy_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "baseline.toml"
    bad.write_text("grace_s = true\n")
    code, err = run(capsys, "--policy", str(bad), "--baseline", str(bad))
    assert code == 2 and "baseline policy" in err and "grace_s must be an integer" in err


def test_from_after_to_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(
        capsys, "--policy", "policies/v2.toml", "--from", "2026-11-29T12:00:00Z", "--to", "2026-11-29T11:00:00Z"
    )
    assert code == 2
    assert "--from 2026-11-29T12:00:00.000Z is after --to 2026-11-29T11:00:00.000Z" in err


def test_a_time_that_is_not_one_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run(capsys, "--policy", "policies/v2.toml", "--to", "yesterday")
    assert code == 2 and "--to 'yesterday' is neither epoch milliseconds nor an ISO-8601 time" in err


def test_an_unreachable_broker_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, err = run(capsys, "--policy", "policies/v2.toml", "--output", str(tmp_path / "out"))
    assert code == 2 and "cannot reach the broker at 127.0.0.1:9" in err


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1764000000000", 1_764_000_000_000),
        ("2025-11-24T16:00:00Z", 1_764_000_000_000),
        ("2025-11-24T17:00:00+01:00", 1_764_000_000_000),
        ("2025-11-24T16:00:00", 1_764_000_000_000),  # no offset: UTC
        ("2025-11-24T16:00:00.250Z", 1_764_000_000_250),
    ],
)
def test_parse_time(text: str, ms: int) -> None:
    assert parse_time(text, "--from") == ms


def test_selection_bounds_are_inclusive() -> None:
    selection = Selection(10, 20)
    assert [selection.holds(t) for t in (9, 10, 20, 21)] == [False, True, True, False]
    assert Selection(10, 10).holds(10)
    with pytest.raises(ReplaySelectionError):
        Selection(11, 10)
    assert format_ms(1_764_000_000_250) == "2025-11-24T16:00:00.250Z"


def test_input_is_complete_from_where_retention_cut_it() -> None:
    topics = {t: t.value for t in InputTopic}
    views0, views1 = TopicPartition("video-views", 0), TopicPartition("video-views", 1)
    whole = Snapshot(topics, {}, log_start={views0: 0, views1: 0}, first_read={views0: 5, views1: 7})
    assert whole.complete_from_ms() is None
    # both partitions lost their start: windows are whole only from the later of their first records
    cut = Snapshot(topics, {}, log_start={views0: 10, views1: 4}, first_read={views0: 5_000, views1: 7_000})
    assert cut.complete_from_ms() == 7_000
