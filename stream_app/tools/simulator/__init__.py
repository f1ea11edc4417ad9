"""The seeded traffic simulator behind `stream-app simulate` (SPEC §10): organic platform traffic plus labelled
fraud, and its publisher.

Modules: `scenarios` (the fraud scenarios and their expected reasons, `SimulationConfig`, `SimEvent`, the label
side file), `catalogue` (creators, videos, viewers and their devices), `organic` (viewer sessions, duplicates),
`fraud` and `malformed` (one builder per injected scenario), `generate` (the run's events in event-time order;
pure: no clock, no I/O), `publish` (sends them through the producer SDK, labels to a side file), `command` (the
`stream-app simulate` command). The generator's names are exported here.
"""

from stream_app.tools.simulator.generate import generate, instance_counts
from stream_app.tools.simulator.scenarios import (
    EXPECTED_REASONS,
    FRAUD_SCENARIOS,
    INVALID,
    ORGANIC,
    SimEvent,
    SimulationConfig,
    label_record,
    write_labels,
)

__all__ = [
    "EXPECTED_REASONS",
    "FRAUD_SCENARIOS",
    "INVALID",
    "ORGANIC",
    "SimEvent",
    "SimulationConfig",
    "generate",
    "instance_counts",
    "label_record",
    "write_labels",
]
