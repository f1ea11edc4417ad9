"""Authenticity quality report (issue 4): the scorer's recall and precision per fraud scenario, its false-positive
rate on organic traffic, and what fraud does to the money, measured on simulated traffic through a real broker.

`python bench/quality.py` or `python -m stream_app.tools.quality [--events N] [--seeds 1,2] [--output bench/RESULTS.md]
[--bootstrap HOST:PORT] [--json PATH]`. Per seed it does two runs, each on a fresh embedded tansu broker (unless
--bootstrap or KAFKA_BOOTSTRAP names one) under a fresh TOPIC_PREFIX, with `stream-app worker` as a subprocess:

1. **fraud run**: the simulator's traffic with every fraud scenario injected (`SimulationConfig(seed,
   fraud=FRAUD_SCENARIOS)`), published by `run_simulation` (the code behind `stream-app simulate`: envelopes
   through RewardsProducer, malformed records as raw records), labels to a side file;
2. **baseline run**: the very same generated stream with every event the rules must reject left out: what stays
   is the organic traffic plus the fraud events no rule can tell apart from a person, labelled with no expected
   reason (each farm phone's first view, the views of an account farm's first 8 accounts, an overlap bot's views
   that do not overlap, each velocity-burst account's first view, a looping viewer's first 5 views). That is
   what a perfect scorer pays, so the money target compares against it. Generating with `fraud=frozenset()`
   would not give the same organic traffic: the simulator lowers the organic rate by `fraud_share` when fraud is
   injected and keeps the velocity-burst target videos out of organic rewatches, both of which change the
   organic stream's random draws.

Labels never come from the events: they come from the label side file (`SimEvent.label`, `expected_reason`).

Modules: `run` (the command, one seed's two runs, publishing and watching the worker), `join` (the output topics
read back and joined to the labels by input position), `results` (the counts per scenario, organic false
positives, money), `report` (the `## Quality` section), `method` (its fixed numbers: sizes, timing, targets). The
broker, the worker subprocess, /metrics and the results file are the tools' harness (stream_app/tools/harness.py).

**Timing.** The worker runs the default policy (WINDOW_S 3600, GRACE_S 300, IDLE_SETTLE_S 30, every rule
threshold). All input is published before the worker starts. Event time ends WINDOW_S + GRACE_S + 60 s before the
wall clock, so once the input is drained and both event topics have been idle for IDLE_SETTLE_S, the wall clock
stands in for the watermark (SPEC §5) and settles every window: every interaction is judged
(engagement_without_view is decided at settlement) and no money is left provisional. The run is over when the
worker's /metrics show an outcome for every published event, no pending interaction, and no counter has moved for
QUIET_S seconds (device flags travel through the device-views / device-flags topics and may come a little after).
Earlier reports ran IDLE_SETTLE_S=5 to save time; with the device rules of issue 11 that settled the last windows
before the device judge, which lags the events agent in a catch-up, had sent its last verdicts (they came as
clawbacks at the settled, diluted multiplier: -0.25 % of the money at 60,000 events, 0 with the default).

**Join.** AuditRecords (suspicious-events) and DeadLetters (events-dlq) carry the input position (source_topic,
partition, offset, index). The input topics are read back and every position is mapped to the label of the event
published there: a raw (malformed) record by its (topic, key, value) bytes; an element of an envelope by (topic,
event_id) (profiles, which have no event_id, by their JSON). A duplicate shares its event_id with its original:
the two go to the same partition (same video_id) and the producer keeps stream order within a partition, so the
n-th copy of an event_id in (partition, offset, index) order is its n-th occurrence in the label file (the original
first). Identical raw records (say two `42`s) are interchangeable: both are labelled malformed.
"""

from stream_app.tools.quality.join import positions_of
from stream_app.tools.quality.method import SCENARIOS, QualityError
from stream_app.tools.quality.run import run_quality

__all__ = ["SCENARIOS", "QualityError", "positions_of", "run_quality"]
