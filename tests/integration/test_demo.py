"""`stream-app demo` and Ctrl-C: a terminal sends SIGINT to the demo's whole process group; the demo must stop the
worker (cleanly, while the broker still answers) and then the broker, within seconds, leaving no process behind.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.integration.harness import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc: parent links)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def ready(port: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def test_ctrl_c_stops_worker_then_broker_within_seconds_and_leaves_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP", "TOPIC_PREFIX", "METRICS_PORT")}
    out_path = tmp_path / "demo.out"
    with out_path.open("wb") as out:
        # its own process group, as a terminal's foreground job is
        demo = subprocess.Popen(
            [sys.executable, "-m", "stream_app.cli", "demo", "--duration", "0", "--rate", "50"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        port = wait_for(
            lambda: re.search(r"metrics at http://127\.0\.0\.1:(\d+)/", out_path.read_text()),
            60,
            "the demo to start its worker",
        ).group(1)
        wait_for(lambda: ready(port), 60, "the demo's worker to be ready")
        processes = descendants(demo.pid)
        assert len(processes) >= 2, "a broker and a worker below the demo"
        pressed = time.monotonic()
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        code = demo.wait(30)
        took = time.monotonic() - pressed
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    output = out_path.read_text()
    assert code == 0, output[-3000:]
    assert took < 15, f"Ctrl-C took {took:.1f} s to end the demo"
    # the worker shut down cleanly (exit 0: the broker was still there), and before the broker
    stopped = re.search(r"worker stopped in [0-9.]+ s \(exit (-?\d+)\)", output)
    assert stopped is not None and stopped.group(1) == "0", output[-3000:]
    assert output.index("worker stopped") < output.index("stopping the broker") < output.index("demo over")
    wait_for(lambda: not any(alive(pid) for pid in processes), 5, "every child of the demo to be gone")
