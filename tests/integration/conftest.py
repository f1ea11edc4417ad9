"""Integration fixtures live in tests/conftest.py (scenario_env is shared with tests/streaming)."""
