"""The chaos inputs, scored by the oracle without a broker: what the chaos suite's runs compare against must itself
stand for every interleaving. The oracle leaves the device rules out, so an input that trips one (as the valid
elements of the hostile mixed envelopes once did: the same watch interval on one device, flagged as device_overlap
only when the worker's device judge got to it) must fail here, in seconds, not as a flaky chaos run.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import pytest

from stream_app.domain.events import InputTopic
from tests.chaos import scenario as sc
from tests.chaos.runs import SEEDS
from tests.events import view_event
from tests.integration.harness import RawRecord

PREFIX = "oracle-"
POLICY = sc.chaos_policy(dict(sc.CHAOS_ENV))


def as_on_broker(records: list[sc.Record]) -> dict[str, list[RawRecord]]:
    """The records as a broker would hold them: offsets in publish order per topic-partition, stamped now."""
    now_ms = int(time.time() * 1000)
    raw: dict[str, list[RawRecord]] = {PREFIX + t.value: [] for t in InputTopic}
    offsets: dict[tuple[str, int], int] = defaultdict(int)
    for record in records:
        topic = PREFIX + record.topic
        offset = offsets[(topic, record.partition)]
        offsets[(topic, record.partition)] += 1
        raw[topic].append(RawRecord(topic, record.partition, offset, record.key, record.value, now_ms))
    return raw


@pytest.mark.parametrize("seed", SEEDS)
def test_the_hostile_input_gives_the_device_rules_nothing_to_flag(seed: int) -> None:
    rng = random.Random(seed)
    data = sc.chaos_input(seed, events=600)
    newest = max(r.max_ts for r in data.traffic if r.max_ts is not None)
    hostile = sc.hostile_records(rng, valid_ts=newest)
    expected = sc.oracle(as_on_broker(data.profiles + data.traffic + hostile), PREFIX, POLICY)
    # the valid elements of the mixed envelopes are scored, and accepted
    valid = sum(1 for r in hostile if r.max_ts is not None) * 3
    assert valid >= 6
    assert expected.counts[(InputTopic.VIEWS.value, "accepted")] >= valid


@pytest.mark.parametrize("seed", SEEDS)
def test_the_crash_input_gives_the_device_rules_nothing_to_flag(seed: int) -> None:
    data = sc.chaos_input(seed)
    expected = sc.oracle(as_on_broker(data.profiles + data.traffic + data.closing), PREFIX, POLICY)
    assert expected.counts[(InputTopic.VIEWS.value, "accepted")] > 0


def test_an_input_that_trips_a_device_rule_is_refused() -> None:
    """Two views of one screen at the same time: the oracle cannot stand for a worker on this input."""
    data = sc.chaos_input(1, events=600)
    newest = max(r.max_ts for r in data.traffic if r.max_ts is not None)
    on_one_screen = {"creator_id": "hc", "device_id": "one-screen", "video_ms": 90_000}
    extra = [
        sc.Record(
            InputTopic.VIEWS.value,
            None,
            sc.jsoncodec.dumps([view_event(f"o{i}", video, "hu", newest, **on_one_screen)]),
            p,
        )
        for i, (video, p) in enumerate(sc_videos())
    ]
    with pytest.raises(AssertionError, match="trips a device rule"):
        sc.oracle(as_on_broker(data.profiles + data.traffic + extra), PREFIX, POLICY)


def sc_videos() -> list[tuple[str, int]]:
    """Two videos, each with the partition its key maps to."""
    found = []
    for i in range(2):
        video = f"overlap-{i}"
        found.append((video, sc.partition_for(video.encode(), sc.PARTITIONS)))
    return found
