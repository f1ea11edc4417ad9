"""Shared fixtures: the broker for integration tests (embedded tansu unless KAFKA_BOOTSTRAP is set), broker timing
for tests, and a unique topic prefix per test.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator

import pytest

# tansu answers a group join only after half the session timeout: short timeouts keep broker tests fast.
_TEST_BROKER_TIMING = {"BROKER_SESSION_TIMEOUT": "6", "BROKER_HEARTBEAT_INTERVAL": "2"}


@pytest.fixture(scope="session", autouse=True)
def broker_timing_for_tests() -> Iterator[None]:
    """BROKER_SESSION_TIMEOUT=6 and BROKER_HEARTBEAT_INTERVAL=2 unless the caller set them."""
    added = [name for name in _TEST_BROKER_TIMING if name not in os.environ]
    for name in added:
        os.environ[name] = _TEST_BROKER_TIMING[name]
    yield
    for name in added:
        os.environ.pop(name, None)


@pytest.fixture(autouse=True)
def client_logging_restored() -> Iterator[None]:
    """Commands run in-process (cli.main) quiet aiokafka's logger for the whole process; undo it after each test."""
    client_log = logging.getLogger("aiokafka")
    propagate, handlers = client_log.propagate, list(client_log.handlers)
    yield
    client_log.propagate = propagate
    client_log.handlers[:] = handlers


class FailStop(Exception):
    """streaming.sending.fail_stop was reached (in a worker it ends the process at once)."""


@pytest.fixture(autouse=True)
def fail_stop_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process tests: fail_stop raises FailStop instead of ending the test run with os._exit."""
    from stream_app.streaming import sending

    def stop(code: int) -> None:
        raise FailStop(f"fail_stop with exit code {code}")

    monkeypatch.setattr(sending, "_exit", stop)


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """Bootstrap address of the broker for this test session: KAFKA_BOOTSTRAP, else an embedded tansu."""
    from stream_app.edges.broker import broker_from_env_or_embedded

    with broker_from_env_or_embedded() as address:
        yield address


@pytest.fixture
def topic_prefix() -> str:
    """A TOPIC_PREFIX unique to one test, so tests sharing a broker never see each other's topics."""
    return f"t{uuid.uuid4().hex[:8]}-"


@pytest.fixture
def scenario_env(bootstrap: str, topic_prefix: str) -> dict[str, str]:
    """A worker environment whose topics (SPEC §2 and internal) exist, created by `stream-app topics apply`."""
    from tests.integration.harness import run_cli, worker_env

    env = worker_env(bootstrap, topic_prefix)
    out = run_cli(env, "topics", "apply")
    assert "video-views" in out
    return env
