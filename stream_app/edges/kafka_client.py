"""Kafka client security settings (SPEC §9: KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_*, KAFKA_SSL_CAFILE) as kwargs
for any aiokafka client.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.helpers import create_ssl_context

from stream_app.domain.errors import BrokerError, ConfigError

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# Only the mechanisms a username and password are enough for; GSSAPI and OAUTHBEARER need more than §9 offers.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_SASL_VARIABLES = ("KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD")
_REDACTED = "***"


class ClientKwargs(dict[str, Any]):
    """aiokafka client kwargs whose repr and str hide the SASL password, so logging them leaks no secret."""

    def __repr__(self) -> str:
        shown = {k: (_REDACTED if k == "sasl_plain_password" else v) for k, v in self.items()}
        return f"ClientKwargs({shown!r})"

    __str__ = __repr__


def _get(settings_like: Mapping[str, str], name: str) -> str | None:
    # An empty variable means "not set", as shells and compose files often export NAME= for unset values.
    value = settings_like.get(name)
    return value if value else None


def _ssl_context(cafile: str | None) -> ssl.SSLContext:
    if cafile is not None and not os.path.isfile(cafile):
        raise ConfigError(f"KAFKA_SSL_CAFILE {cafile!r} does not exist or is not a file")
    try:
        # Without a CA file the system trust store is used (create_ssl_context's default).
        context: ssl.SSLContext = create_ssl_context(cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"KAFKA_SSL_CAFILE {cafile!r} is not a usable CA bundle: {exc}") from None
    return context


def client_kwargs(settings_like: Mapping[str, str]) -> ClientKwargs:
    """Security kwargs for any aiokafka client from the KAFKA_* variables; ConfigError names a bad variable.

    Settings the chosen protocol would silently ignore (SASL variables without SASL, a CA file without SSL)
    are refused rather than dropped: they almost always mean the protocol itself was mistyped.
    """
    raw_protocol = _get(settings_like, "KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT"
    protocol = raw_protocol.strip().upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(SECURITY_PROTOCOLS)}, got {raw_protocol!r}"
        )
    kwargs = ClientKwargs(security_protocol=protocol)
    uses_sasl = protocol.startswith("SASL_")
    uses_ssl = protocol.endswith("SSL")

    if uses_sasl:
        raw_mechanism = _get(settings_like, "KAFKA_SASL_MECHANISM") or "PLAIN"
        mechanism = raw_mechanism.strip().upper()
        if mechanism not in SASL_MECHANISMS:
            raise ConfigError(
                f"KAFKA_SASL_MECHANISM must be one of {', '.join(SASL_MECHANISMS)}, got {raw_mechanism!r}"
            )
        username = _get(settings_like, "KAFKA_SASL_USERNAME")
        password = _get(settings_like, "KAFKA_SASL_PASSWORD")
        if username is None:
            raise ConfigError(f"KAFKA_SASL_USERNAME must be set when KAFKA_SECURITY_PROTOCOL is {protocol}")
        if password is None:
            raise ConfigError(f"KAFKA_SASL_PASSWORD must be set when KAFKA_SECURITY_PROTOCOL is {protocol}")
        kwargs.update(sasl_mechanism=mechanism, sasl_plain_username=username, sasl_plain_password=password)
    else:
        for name in _SASL_VARIABLES:
            if _get(settings_like, name) is not None:
                # Names the variable only: its value may be the password.
                raise ConfigError(f"{name} is set but KAFKA_SECURITY_PROTOCOL {protocol} does not use SASL")

    cafile = _get(settings_like, "KAFKA_SSL_CAFILE")
    if uses_ssl:
        kwargs["ssl_context"] = _ssl_context(cafile)
    elif cafile is not None:
        raise ConfigError(f"KAFKA_SSL_CAFILE is set but KAFKA_SECURITY_PROTOCOL {protocol} does not use SSL")
    return kwargs


async def partition_counts(
    bootstrap: str, topics: Iterable[str], kwargs: Mapping[str, Any] | None = None, timeout_s: float = 30.0
) -> dict[str, int]:
    """The partition count of each topic, from cluster metadata (raises BrokerError if one stays unknown).

    Asks for the metadata of all topics: a request naming a missing topic makes some brokers create it."""
    from aiokafka.client import AIOKafkaClient

    wanted = set(topics)
    client = AIOKafkaClient(bootstrap_servers=bootstrap, **dict(kwargs or {}))
    await client.bootstrap()
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            metadata = await client.fetch_all_metadata()
            counts = {t: len(metadata.partitions_for_topic(t) or ()) for t in wanted}
            missing = sorted(t for t, n in counts.items() if not n)
            if not missing:
                return counts
            if time.monotonic() > deadline:
                raise BrokerError(f"no partition metadata for {', '.join(missing)}: run `stream-app topics apply`")
            await asyncio.sleep(0.2)
    finally:
        await client.close()


async def check_broker(bootstrap: str, kwargs: Mapping[str, Any] | None = None, timeout_s: float = 20.0) -> None:
    """A worker's first step: the broker answers (BrokerError says so in one line otherwise). Which topics must
    exist is the worker's own check (streaming/topology.py), before it joins its group."""
    from aiokafka.client import AIOKafkaClient
    from aiokafka.errors import KafkaError

    client = AIOKafkaClient(bootstrap_servers=bootstrap, **dict(kwargs or {}))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        raise BrokerError(f"cannot reach the broker at {bootstrap}: {exc or type(exc).__name__}") from None
    finally:
        await client.close()


# tansu (the embedded broker) reports a partition's end as its last batch's base offset + 1: too low after a
# multi-record batch. A fetch from one before the reported end returns the whole last batch.
TRUE_END_FETCH_TIMEOUT_S = 5.0


async def true_end_offsets(
    bootstrap: str, reported: Mapping[TopicPartition, int], client_kwargs: Mapping[str, Any] | None = None
) -> dict[TopicPartition, int]:
    """For each partition, the offset after its last record: at least what the broker reported (a no-op on Apache
    Kafka, one small fetch per partition)."""
    ends = dict(reported)
    probe = [tp for tp, end in reported.items() if end > 0]
    if not probe:
        return ends
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, **dict(client_kwargs or {})
    )
    await consumer.start()
    try:
        consumer.assign(probe)
        for tp in probe:
            consumer.seek(tp, reported[tp] - 1)
        waiting = set(probe)
        deadline = time.monotonic() + TRUE_END_FETCH_TIMEOUT_S
        while waiting and time.monotonic() < deadline:
            batches = await consumer.getmany(*waiting, timeout_ms=200)
            for tp, records in batches.items():
                if records:
                    ends[tp] = max(ends[tp], records[-1].offset + 1)
            # done with a partition once its position shows nothing more to read
            for tp in list(waiting):
                if await consumer.position(tp) >= ends[tp] and tp in batches:
                    waiting.discard(tp)
            if waiting and not batches:
                await asyncio.sleep(0.05)
    finally:
        await consumer.stop()
    return ends
