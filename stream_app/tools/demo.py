"""`stream-app demo`: a local broker, the worker and simulated traffic, with accruals and metrics shown live (the
live screen, the demo's worker in a session of its own and its stop on Ctrl-C).

Uses the embedded tansu broker unless KAFKA_BOOTSTRAP is set, a fresh TOPIC_PREFIX per run, and short windows
(WINDOW_S=20, GRACE_S=5, IDLE_SETTLE_S=5) so settlements show up within a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from stream_app.domain import jsoncodec
from stream_app.domain.errors import BrokerError
from stream_app.edges.broker import broker_from_env_or_embedded
from stream_app.edges.children import detached_child
from stream_app.edges.localhost import free_port
from stream_app.tools.harness import scrape, security_kwargs, topic_partitions

DEMO_POLICY = {"WINDOW_S": "20", "GRACE_S": "5", "IDLE_SETTLE_S": "5", "EMIT_INTERVAL_S": "1"}
REFRESH_S = 2.0


def _usd(micros: int) -> str:
    return f"${micros // 1_000_000}.{micros % 1_000_000:06d}"


def _scrape(port: int) -> dict[str, float]:
    samples = scrape(f"http://127.0.0.1:{port}/metrics", timeout_s=2) or {}
    return {name: value for name, value in samples.items() if name.startswith("rewards_") and "_bucket" not in name}


def render(accruals: dict[str, dict[str, Any]], metrics: dict[str, float], elapsed_s: float) -> str:
    """The live screen: totals, top videos by money, outcome counts."""
    lines = [f"creator-rewards demo  {elapsed_s:5.0f} s   (Ctrl-C to stop)", ""]
    totals = {
        k: sum(a[k] for a in accruals.values())
        for k in (
            "views",
            "qualified_views",
            "suspicious_views",
            "provisional_micros",
            "settled_micros",
            "clawback_micros",
        )
    }
    lines.append(
        f"videos {len(accruals)}  views {totals['views']}  qualified {totals['qualified_views']}  "
        f"suspicious {totals['suspicious_views']}"
    )
    lines.append(
        f"provisional {_usd(totals['provisional_micros'])}  settled {_usd(totals['settled_micros'])}  "
        f"clawed back {_usd(totals['clawback_micros'])}"
    )
    lines += ["", f"{'video':<22} {'creator':<10} {'views':>6} {'qual':>6} {'settled':>12} {'provisional':>12} v"]
    top = sorted(accruals.values(), key=lambda a: a["settled_micros"] + a["provisional_micros"], reverse=True)[:8]
    for a in top:
        lines.append(
            f"{a['video_id'][:22]:<22} {a['creator_id'][:10]:<10} {a['views']:>6} {a['qualified_views']:>6} "
            f"{_usd(a['settled_micros']):>12} {_usd(a['provisional_micros']):>12} {a['version']}"
        )
    lines += ["", "outcomes (rewards_events_total):"]
    for name, value in sorted(metrics.items()):
        if name.startswith("rewards_events_total") and value:
            lines.append(f"  {name[len('rewards_events_total') :]:<55} {value:>8.0f}")
    reasons = [(n, v) for n, v in sorted(metrics.items()) if n.startswith("rewards_suspicious_events_total") and v]
    if reasons:
        lines.append("suspicious by reason:")
        lines += [f"  {n[len('rewards_suspicious_events_total') :]:<55} {v:>8.0f}" for n, v in reasons]
    return "\n".join(lines)


async def _watch(bootstrap: str, topic: str, metrics_port: int, stop: asyncio.Event, started: float) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **dict(security_kwargs())
    )
    await consumer.start()
    accruals: dict[str, dict[str, Any]] = {}
    try:
        tps: list[Any] = []
        while not tps and not stop.is_set():
            tps = await topic_partitions(consumer, topic)  # the worker may not have created it yet
            if not tps:
                await asyncio.sleep(0.5)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        next_draw = 0.0
        while not stop.is_set():
            for messages in (await consumer.getmany(*tps, timeout_ms=500)).values():
                for message in messages:
                    record = jsoncodec.loads(message.value)
                    held = accruals.get(record["video_id"])
                    if held is None or record["version"] >= held["version"]:
                        accruals[record["video_id"]] = record
            if time.monotonic() >= next_draw:
                screen = render(accruals, _scrape(metrics_port), time.monotonic() - started)
                clear = "\033[2J\033[H" if sys.stdout.isatty() else "\n"
                print(clear + screen, flush=True)
                next_draw = time.monotonic() + REFRESH_S
    finally:
        await consumer.stop()


async def _run(bootstrap: str, env: dict[str, str], duration_s: float, rate: float, seed: int) -> None:
    from stream_app.tools.simulator import FRAUD_SCENARIOS, SimulationConfig
    from stream_app.tools.simulator.publish import run_simulation

    stop = asyncio.Event()
    started = time.monotonic()
    config = SimulationConfig(
        seed=seed,
        start_ms=int(time.time() * 1000),
        duration_s=duration_s if duration_s > 0 else 86_400.0,
        rate_per_s=rate,
        creators=50,
        videos=500,
        fraud=frozenset(FRAUD_SCENARIOS),
    )
    watch = asyncio.create_task(
        _watch(bootstrap, env["TOPIC_PREFIX"] + "reward-accruals", int(env["METRICS_PORT"]), stop, started)
    )
    try:
        await run_simulation(
            config,
            bootstrap=bootstrap,
            topic_prefix=env["TOPIC_PREFIX"],
            realtime=True,
            stop=stop,
            client_kwargs=security_kwargs(env),
        )
        # let the last windows settle by idleness before stopping
        await asyncio.sleep(float(DEMO_POLICY["IDLE_SETTLE_S"]) + float(DEMO_POLICY["GRACE_S"]) + 5)
    finally:
        stop.set()
        await watch


WORKER_STOP_TIMEOUT_S = 20.0  # SIGTERM, then SIGKILL: the demo's worker gives up its own shutdown after 10 s


def _stop_worker(worker: subprocess.Popen[bytes]) -> str:
    """SIGTERM the worker and wait for it (a second Ctrl-C kills it at once); a line saying how it went."""
    started = time.monotonic()
    if worker.poll() is None:
        print("stopping the worker (Ctrl-C again to kill it) ...", flush=True)
        worker.terminate()
        try:
            worker.wait(WORKER_STOP_TIMEOUT_S)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            worker.kill()
            worker.wait()
    return f"worker stopped in {time.monotonic() - started:.1f} s (exit {worker.returncode})"


def run_demo(*, duration_s: float = 90.0, rate: float = 100.0, seed: int = 7) -> int:
    """Broker, topics, worker and traffic; Ctrl-C (or the end of `duration_s`) stops the worker, then the broker.

    The broker and the worker run in sessions of their own, so the terminal's Ctrl-C reaches only this process,
    which stops them in order; they are also told to exit should this process die (edges/children.py).
    """
    with broker_from_env_or_embedded() as bootstrap:
        prefix = os.environ.get("TOPIC_PREFIX") or f"demo{int(time.time())}-"
        env = dict(os.environ)
        env.update(DEMO_POLICY)
        env.update(
            KAFKA_BOOTSTRAP=bootstrap,
            TOPIC_PREFIX=prefix,
            APP_ID=f"{prefix}scorer",
            METRICS_HOST="127.0.0.1",
            METRICS_PORT=env.get("METRICS_PORT") or str(free_port()),
            BROKER_SESSION_TIMEOUT=env.get("BROKER_SESSION_TIMEOUT", "6"),
            BROKER_HEARTBEAT_INTERVAL=env.get("BROKER_HEARTBEAT_INTERVAL", "2"),
            SHUTDOWN_TIMEOUT_S=env.get("SHUTDOWN_TIMEOUT_S", "10"),
            LOG_LEVEL=env.get("LOG_LEVEL", "WARNING"),
        )
        os.environ.update({k: env[k] for k in ("KAFKA_BOOTSTRAP", "TOPIC_PREFIX", *DEMO_POLICY)})
        command = [sys.executable, "-m", "stream_app.cli"]
        print(f"broker {bootstrap}, topics under prefix {prefix!r}: applying topics ...", flush=True)
        applied = subprocess.run(
            [*command, "topics", "apply"], env=env, capture_output=True, text=True, check=False, **detached_child()
        )
        if applied.returncode != 0:
            said = (applied.stderr.strip().splitlines() or [f"exit {applied.returncode}"])[-1]
            raise BrokerError(f"topics apply failed: {said.removeprefix('stream-app topics: ')}")
        log_path = Path(tempfile.gettempdir()) / f"{prefix}worker.log"
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [*command, "worker"], env=env, stdout=log, stderr=subprocess.STDOUT, **detached_child()
            )
        print(f"worker pid {worker.pid} (log: {log_path}), metrics at http://127.0.0.1:{env['METRICS_PORT']}/metrics")
        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(_run(bootstrap, env, duration_s, rate, seed))
        finally:
            print(f"\n{_stop_worker(worker)}; worker log: {log_path}", flush=True)
            print("stopping the broker ...", flush=True)
    print("demo over", flush=True)
    return 0
