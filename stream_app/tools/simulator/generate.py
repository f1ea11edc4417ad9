"""The run's events (`generate`): the catalogue's profiles, then organic traffic (with duplicates) and every
requested fraud scenario's instances merged in event-time order. Pure: every random draw comes from random.Random
streams derived from the seed, and event time starts at `start_ms`; no clock, no I/O. The same config always yields
the same events."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Iterator

from stream_app.domain.events import InputTopic
from stream_app.tools.simulator.catalogue import Catalogue
from stream_app.tools.simulator.fraud import INSTANCE_EVENTS, INSTANCE_SPAN_MS, FraudBuilder
from stream_app.tools.simulator.organic import OrganicTraffic, with_duplicates
from stream_app.tools.simulator.scenarios import FRAUD_SCENARIOS, ORGANIC, SimEvent, SimulationConfig, at_ms

# Fixed order in which the per-component random streams are drawn from the seed: adding a scenario to `fraud`
# never changes the catalogue, and the scenarios never disturb one another's draws.
_COMPONENTS = ("catalogue", "organic", *sorted(FRAUD_SCENARIOS))


def _instance_starts(config: SimulationConfig, rng: random.Random, count: int, span: int) -> list[int]:
    """`count` sorted instance start times spread evenly (with jitter) so each instance fits in the run."""
    room = max(0, config.duration_ms - span)
    slot = room / count
    return [config.start_ms + int((n + rng.random()) * slot) for n in range(count)]


def _instances(starts: list[int], build: Callable[[int], list[SimEvent]]) -> Iterator[SimEvent]:
    """The events of instances built at `starts` (sorted), merged in at_ms order, built lazily."""
    heap: list[tuple[int, int, SimEvent]] = []
    seq = 0
    for start in starts:
        # Every later instance begins at or after `start`, so what is due before it is final.
        while heap and heap[0][0] < start:
            yield heapq.heappop(heap)[2]
        for event in build(start):
            seq += 1
            heapq.heappush(heap, (event.at_ms, seq, event))
    while heap:
        yield heapq.heappop(heap)[2]


def instance_counts(config: SimulationConfig) -> dict[str, int]:
    """How many instances of each requested scenario the run injects (at least one each)."""
    if not config.fraud:
        return {}
    budget = config.expected_events * config.fraud_share / len(config.fraud)
    return {name: max(1, round(budget / INSTANCE_EVENTS[name])) for name in sorted(config.fraud)}


def generate(config: SimulationConfig) -> Iterator[SimEvent]:
    """The run's events: one CreatorProfile per creator (at start_ms), then traffic in at_ms order."""
    master = random.Random(config.seed)
    rngs = {name: random.Random(master.getrandbits(64)) for name in _COMPONENTS}
    catalogue = Catalogue(config, rngs["catalogue"])
    for profile in catalogue.profiles:
        yield SimEvent(InputTopic.PROFILES, dict(profile), ORGANIC, None, config.start_ms)

    counts = instance_counts(config)
    targets: list[int] = []
    if "velocity_burst" in counts:
        # Tail videos (lower half of the popularity ranking) whose organic baseline stays far under the threshold.
        half = config.videos // 2
        targets = rngs["velocity_burst"].sample(range(half, config.videos), min(counts["velocity_burst"], half // 5))
    organic_rate = config.rate_per_s * (1 - config.fraud_share) if config.fraud else config.rate_per_s
    organic = OrganicTraffic(config, catalogue, rngs["organic"], organic_rate, frozenset(targets)).events()
    if "duplicate" in counts:
        share = counts["duplicate"] / max(1.0, config.rate_per_s * config.duration_s * (1 - config.fraud_share))
        organic = with_duplicates(organic, rngs["duplicate"], share, config.end_ms)
    streams = [organic]
    for name in sorted(counts.keys() - {"duplicate"}):
        rng = rngs[name]
        fraud = FraudBuilder(config, catalogue, rng, targets)
        starts = _instance_starts(config, rng, counts[name], INSTANCE_SPAN_MS[name])
        streams.append(_instances(starts, getattr(fraud, name)))
    yield from heapq.merge(*streams, key=at_ms)
