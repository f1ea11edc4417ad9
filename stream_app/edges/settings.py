"""Worker settings from the environment (SPEC §9): every bad value is refused at start-up, naming the variable."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from stream_app.domain.errors import ConfigError
from stream_app.domain.events import InputTopic, OutputTopic
from stream_app.domain.policy import Policy, load_policy

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
STORES = ("memory://", "rocksdb://")


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "localhost:9092"
    app_id: str = "creator-rewards"
    topic_prefix: str = ""
    store: str = "memory://"
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9108
    policy_file: str | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    policy: Policy = field(default_factory=Policy)
    # score on over state written under another policy (SPEC §7: refused unless told to)
    allow_policy_change: bool = False
    # /livez fails when the event loop has not stamped its heartbeat for this long (edges/health.py)
    liveness_timeout_s: int = 30
    # a shutdown still running this long after SIGTERM gives up its final commit and exits (below the grace period)
    shutdown_timeout_s: int = 60
    # the raw environment, kept for the Kafka security settings (built by edges.kafka_client)
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    def topic(self, name: InputTopic | OutputTopic | str) -> str:
        """Full topic name with TOPIC_PREFIX."""
        base = name if isinstance(name, str) else name.value
        return f"{self.topic_prefix}{base}"

    def internal_topic(self, suffix: str) -> str:
        """An internal topic of this app: TOPIC_PREFIX + APP_ID + '-' + suffix."""
        return f"{self.topic_prefix}{self.app_id}-{suffix}"

    def unprefixed(self, topic: str) -> str:
        """The topic name without TOPIC_PREFIX (the form used in metric labels and logic)."""
        if self.topic_prefix and topic.startswith(self.topic_prefix):
            return topic[len(self.topic_prefix) :]
        return topic


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not lo <= value <= hi:
        raise ConfigError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...], *, upper: bool) -> str:
    raw = env.get(name) or default
    value = raw.upper() if upper else raw.lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _identifier(env: Mapping[str, str], name: str, default: str, *, allow_empty: bool) -> str:
    value = env.get(name, default)
    if not value and not allow_empty:
        raise ConfigError(f"{name} must not be empty")
    # Kafka topic names allow [a-zA-Z0-9._-]; the prefix and app id become part of topic names.
    if any(not (c.isascii() and (c.isalnum() or c in "._-")) for c in value):
        raise ConfigError(f"{name} may only contain ASCII letters, digits, '.', '_' and '-', got {value!r}")
    return value


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name} must be 1/true/yes or 0/false/no, got {env.get(name)!r}")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise ConfigError naming the first bad variable."""
    env = dict(os.environ if env is None else env)
    bootstrap = env.get("KAFKA_BOOTSTRAP") or "localhost:9092"
    for server in bootstrap.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ConfigError(f"KAFKA_BOOTSTRAP must be host:port[,host:port...], got {bootstrap!r}")
    store = env.get("STORE") or "memory://"
    if not store.startswith(STORES):
        raise ConfigError(f"STORE must be memory:// or rocksdb://, got {store!r}")
    level = _choice(env, "LOG_LEVEL", "INFO", LOG_LEVELS, upper=True)
    policy_file = env.get("POLICY_FILE") or None
    if policy_file is not None and not os.path.isfile(policy_file):
        raise ConfigError(f"POLICY_FILE {policy_file!r} does not exist or is not a file")
    return Settings(
        kafka_bootstrap=bootstrap,
        app_id=_identifier(env, "APP_ID", "creator-rewards", allow_empty=False),
        topic_prefix=_identifier(env, "TOPIC_PREFIX", "", allow_empty=True),
        store=store,
        metrics_host=env.get("METRICS_HOST") or "0.0.0.0",
        metrics_port=_int(env, "METRICS_PORT", 9108, 0, 65535),
        policy_file=policy_file,
        log_level="WARNING" if level == "WARN" else level,
        log_format=_choice(env, "LOG_FORMAT", "text", LOG_FORMATS, upper=False),
        policy=load_policy(env, policy_file),
        allow_policy_change=_flag(env, "ALLOW_POLICY_CHANGE"),
        liveness_timeout_s=_int(env, "LIVENESS_TIMEOUT_S", 30, 2, 3600),
        shutdown_timeout_s=_int(env, "SHUTDOWN_TIMEOUT_S", 60, 1, 3600),
        env=env,
    )
