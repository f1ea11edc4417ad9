"""`stream-app` as a newcomer meets it: for every command, a missing file, a bad flag value or setting and an
unreachable broker are one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_app.cli import main
from stream_app.edges.localhost import free_port

VIEW = (
    '{"event_id":"e1","video_id":"v1","creator_id":"c1","viewer_id":"u1","device_id":"d1","ts":1764000000000,'
    '"watch_ms":12000,"video_ms":90000,"source":"for_you","region":"US"}'
)
CLOSED = "CLOSED"  # stands for 127.0.0.1:<a port nothing listens on>


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings come from the environment: start each case from the defaults, and restore the client logger."""
    for name in ("KAFKA_BOOTSTRAP", "TOPIC_PREFIX", "KAFKA_SECURITY_PROTOCOL", "POLICY_FILE", "LIVENESS_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)
    client_log = logging.getLogger("aiokafka")
    handlers, propagate = list(client_log.handlers), client_log.propagate
    yield
    client_log.handlers[:], client_log.propagate = handlers, propagate


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's usage errors
        code = int(exit_.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def events_file(tmp_path: Path) -> Path:
    path = tmp_path / "events.jsonl"
    path.write_text(VIEW + "\n")
    return path


CASES: list[tuple[str, list[str], dict[str, str], str]] = [
    # (id, argv, environment, what the one line says)
    ("unknown-command", ["nope"], {}, "stream-app: argument command: invalid choice: 'nope'"),
    ("worker-bad-setting", ["worker"], {"LIVENESS_TIMEOUT_S": "soon"}, "LIVENESS_TIMEOUT_S must be an integer"),
    ("worker-bad-bootstrap", ["worker"], {"KAFKA_BOOTSTRAP": "kafka"}, "KAFKA_BOOTSTRAP must be host:port"),
    ("worker-unreachable", ["worker"], {"KAFKA_BOOTSTRAP": CLOSED}, "stream-app worker: cannot reach the broker at"),
    ("topics-bad-action", ["topics", "destroy"], {}, "stream-app topics: argument action: invalid choice"),
    (
        "topics-bad-replication",
        ["topics", "apply", "--replication-factor", "0"],
        {},
        "stream-app topics: argument --replication-factor: must be at least 1",
    ),
    ("topics-missing-file", ["topics", "plan", "--file", "/no/such.toml"], {}, "cannot read topic declarations"),
    ("topics-unreachable", ["topics", "plan"], {"KAFKA_BOOTSTRAP": CLOSED}, "cannot reach the broker at"),
    (
        "publish-missing-file",
        ["publish", "/no/such/file", "--topic", "video-views"],
        {},
        "stream-app publish: /no/such/file: No such file or directory",
    ),
    (
        "publish-bad-topic",
        ["publish", "EVENTS", "--topic", "views"],
        {},
        "stream-app publish: argument --topic: invalid choice: 'views'",
    ),
    ("publish-no-topic", ["publish", "EVENTS"], {}, "the following arguments are required: --topic"),
    (
        "publish-unreachable",
        ["publish", "EVENTS", "--topic", "video-views"],
        {"KAFKA_BOOTSTRAP": CLOSED},
        "stream-app publish: cannot connect producer to",
    ),
    ("simulate-bad-rate", ["simulate", "--rate", "-3"], {}, "argument --rate: must be greater than 0, got '-3'"),
    ("simulate-nan-duration", ["simulate", "--duration", "nan"], {}, "argument --duration: must be a finite number"),
    ("simulate-bad-share", ["simulate", "--fraud-share", "2"], {}, "argument --fraud-share: must be between 0 and 1"),
    ("simulate-bad-videos", ["simulate", "--videos", "many"], {}, "argument --videos: must be a whole number"),
    ("simulate-unknown-fraud", ["simulate", "--fraud", "bogus"], {}, "fraud: unknown scenario 'bogus'"),
    (
        "simulate-labels-nowhere",
        ["simulate", "--duration", "1", "--labels", "/no/such/dir/labels.jsonl"],
        {"KAFKA_BOOTSTRAP": CLOSED},
        "stream-app simulate: /no/such/dir/labels.jsonl: No such file or directory",
    ),
    ("simulate-unreachable", ["simulate", "--duration", "1"], {"KAFKA_BOOTSTRAP": CLOSED}, "cannot connect producer"),
    ("demo-bad-duration", ["demo", "--duration", "-1"], {}, "argument --duration: must be 0 or more, got '-1'"),
    ("demo-bad-rate", ["demo", "--rate", "0"], {}, "argument --rate: must be greater than 0, got '0'"),
    (
        "demo-unreachable",
        ["demo", "--duration", "1"],
        {"KAFKA_BOOTSTRAP": CLOSED},
        "stream-app demo: topics apply failed: cannot reach the broker at",
    ),
    ("bench-bad-events", ["bench", "--events", "0"], {}, "stream-app bench: argument --events: must be at least 1"),
    ("bench-bad-rate", ["bench", "--rate", "fast"], {}, "stream-app bench: argument --rate: must be a number"),
    (
        "bench-output-nowhere",
        ["bench", "--output", "/no/such/dir/RESULTS.md"],
        {},
        "stream-app bench: --output /no/such/dir/RESULTS.md: no directory /no/such/dir",
    ),
    (
        "bench-unreachable",
        ["bench", "--events", "10", "--bootstrap", CLOSED, "--output", "RESULTS_DIR"],
        {},
        "stream-app bench: cannot reach the broker at",
    ),
]


@pytest.mark.parametrize(("argv", "environment", "says"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_exit_2(
    argv: list[str],
    environment: dict[str, str],
    says: str,
    events_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    for name, value in environment.items():
        monkeypatch.setenv(name, closed if value == CLOSED else value)
    argv = [{"EVENTS": str(events_file), CLOSED: closed, "RESULTS_DIR": str(tmp_path / "r.md")}.get(a, a) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 2, (out, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert says in err, err


@pytest.mark.integration
def test_publish_names_each_rejected_line_and_sends_the_rest(scenario_env: dict[str, str], tmp_path: Path) -> None:
    """The worker's validation runs on each line: rejected ones are named with their number and field error, the
    valid ones are sent, and the exit code (1) tells a script that something was refused."""
    lines = tmp_path / "mixed.jsonl"
    lines.write_text("\n".join(['{"event_id": "e2", "video_id": "v2"}', "", VIEW, VIEW.replace("12000", "-1"), "{"]))
    done = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "publish", str(lines), "--topic", "video-views"],
        env=scenario_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    rejected = done.stderr.splitlines()
    assert rejected[:2] == [
        "line 1: rejected: creator_id: missing",
        "line 4: rejected: watch_ms: must be an integer >= 0, got -1",
    ]
    assert rejected[2].startswith("line 5: rejected: value: not JSON") and len(rejected) == 3
    assert done.stdout.startswith("read 4 lines: sent 1 event in 1 record to ") and done.stdout.endswith(
        "video-views, rejected 3\n"
    )


def test_the_console_script_prints_no_traceback_for_a_missing_file() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "publish", "/no/such/file", "--topic", "video-views"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "stream-app publish: /no/such/file: No such file or directory\n"
