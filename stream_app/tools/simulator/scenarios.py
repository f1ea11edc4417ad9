"""What a simulated run is and what it yields: the fraud scenarios and the reason codes their events are labelled
with (`EXPECTED_REASONS`), the run's config (`SimulationConfig`), one simulated record with its label (`SimEvent`),
and the label side file's lines (labels never travel inside the events)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.domain.errors import ConfigError
from stream_app.domain.events import InputTopic

ORGANIC = "organic"
INVALID = "invalid"  # the expected outcome of a malformed record (it goes to events-dlq)

# Scenario name -> the SPEC §6 reason codes (or "invalid") the scorer must give the events it has to reject; each
# event is labelled with one of them (SimEvent.expected_reason), or None when no rule can tell it from a person.
EXPECTED_REASONS: dict[str, tuple[str, ...]] = {
    "repeat_viewer": ("viewer_repeat",),
    "device_farm": ("device_burst",),
    "farm_under_threshold": ("device_overlap", "account_farm"),
    "account_farm": ("account_farm",),
    "overlap_bot": ("device_overlap",),
    "velocity_burst": ("velocity_burst",),
    "fake_engagement": ("engagement_without_view",),
    "duplicate": ("duplicate_event",),
    "impossible_watch": ("impossible_watch",),
    "malformed": (INVALID,),
}
FRAUD_SCENARIOS: frozenset[str] = frozenset(EXPECTED_REASONS)


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """What to simulate. `rate_per_s` is events (views + interactions + injected fraud) per second of event time."""

    seed: int
    start_ms: int
    duration_s: float = 600.0
    rate_per_s: float = 200.0
    creators: int = 400
    videos: int = 5_000
    viewers: int | None = None  # None: enough for the rate (see viewer_count)
    fraud: frozenset[str] = field(default_factory=frozenset)
    fraud_share: float = 0.03

    def __post_init__(self) -> None:
        object.__setattr__(self, "fraud", frozenset(self.fraud))
        unknown = sorted(self.fraud - FRAUD_SCENARIOS)
        if unknown:
            raise ConfigError(f"fraud: unknown scenario {unknown[0]!r}; known: {', '.join(sorted(FRAUD_SCENARIOS))}")
        if not 0 <= self.start_ms < 2**53:
            raise ConfigError(f"start_ms must be an epoch-ms timestamp in [0, 2^53), got {self.start_ms}")
        if not self.duration_s > 0 or not self.rate_per_s > 0:
            raise ConfigError(
                f"duration_s and rate_per_s must be positive, got {self.duration_s} and {self.rate_per_s}"
            )
        if not 0 <= self.fraud_share <= 0.5:
            raise ConfigError(f"fraud_share must be between 0 and 0.5, got {self.fraud_share}")
        # The scenarios' by-construction guarantees need room: enough videos to spread a device farm over.
        for name, value, least in (("creators", self.creators, 1), ("videos", self.videos, 50)):
            if value < least:
                raise ConfigError(f"{name} must be at least {least}, got {value}")
        if self.viewers is not None and self.viewers < 100:
            raise ConfigError(f"viewers must be at least 100, got {self.viewers}")

    @property
    def viewer_count(self) -> int:
        """The viewer population. About 45 viewers per event/s are mid-session at any time and as many resting
        between sessions; the automatic size keeps most of the population free, so the rate is met."""
        if self.viewers is not None:
            return self.viewers
        return max(10_000, int(self.rate_per_s * 250))

    @property
    def end_ms(self) -> int:
        """Event time (exclusive) the run ends at."""
        return self.start_ms + self.duration_ms

    @property
    def duration_ms(self) -> int:
        return max(1, int(self.duration_s * 1000))

    @property
    def expected_events(self) -> int:
        """About how many view and interaction events the run yields (profiles not counted)."""
        return int(self.rate_per_s * self.duration_s)


@dataclass(frozen=True, slots=True)
class SimEvent:
    """One simulated record: its topic, JSON object (or raw bytes for a malformed record), and its label.

    `at_ms` is when it is delivered in event time (the stream is ordered by it); it equals the payload's `ts`
    except for a re-delivered duplicate, which carries the original `ts`. `raw_key` is the record key of a
    malformed record (None: null key); well-formed payloads are keyed by the producer.
    """

    topic: InputTopic
    payload: dict[str, Any] | bytes
    label: str
    expected_reason: str | None
    at_ms: int
    raw_key: bytes | None = None

    @property
    def event_id(self) -> str | None:
        if isinstance(self.payload, dict):
            value = self.payload.get("event_id")
            return value if isinstance(value, str) else None
        return None


def at_ms(event: SimEvent) -> int:
    """The event's place in the stream (its delivery in event time): the sort key of every merge."""
    return event.at_ms


def label_record(index: int, event: SimEvent) -> dict[str, Any]:
    """The side-file line of one event: labels never travel inside the events themselves."""
    return {
        "topic": event.topic.value,
        "event_id": event.event_id,
        "index_in_stream": index,
        "label": event.label,
        "expected_reason": event.expected_reason,
    }


def write_labels(path: Path | str, events: Iterable[SimEvent]) -> int:
    """Write one JSON line per event (label_record) to `path`; returns how many were written."""
    count = 0
    with open(path, "wb") as out:
        for count, event in enumerate(events, start=1):
            out.write(jsoncodec.dumps(label_record(count - 1, event)) + b"\n")
    return count
