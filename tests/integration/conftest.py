"""Fixtures for worker tests on the real broker: topics applied with the CLI under a unique prefix."""

from __future__ import annotations

import pytest

from tests.integration.harness import run_cli, worker_env


@pytest.fixture
def scenario_env(bootstrap: str, topic_prefix: str) -> dict[str, str]:
    """A worker environment whose topics (SPEC §2 and internal) exist, created by `stream-app topics apply`."""
    env = worker_env(bootstrap, topic_prefix)
    out = run_cli(env, "topics", "apply")
    assert "video-views" in out
    return env
