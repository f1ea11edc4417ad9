"""Chaos input, its oracle, and what the workers wrote (issue 12 part 3).

The input is the simulator's organic traffic with the fraud that per-video rules recognise (repeat viewers, fake
engagement, duplicates, impossible watches, malformed records), hostile records, and at the end a closing view and
interaction on every partition, far enough ahead to settle every window of the traffic. It is built so that its
outcomes cannot depend on timing, which is what lets one oracle stand for every disturbed run:

- each topic-partition is in event-time order, except copies delivered less than GRACE_S late, so no event can
  find its window settled whatever the interleaving of views and interactions (no `late`);
- IDLE_SETTLE_S is longer than any test, so the wall clock never stands in for the watermark;
- no device farm and no velocity burst, whose flags and clawbacks race with settlement (SPEC §6 says so);
- all creator profiles come first (a worker scores nothing before it has read them all).

The oracle feeds the records as they are on the broker (offsets included) through the pure domain code: the
validation of SPEC §3 and one `PartitionScorer` per partition with an in-memory store.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import confluent_kafka

from stream_app.domain import jsoncodec
from stream_app.domain.events import CreatorProfile, InputTopic, InteractionEvent, Outcome, OutputTopic, ViewEvent
from stream_app.domain.partition import Effects, MemoryState, PartitionScorer
from stream_app.domain.partitioning import partition_for
from stream_app.domain.policy import Policy, policy_hash
from stream_app.domain.profiles import ProfileHistory
from stream_app.domain.scoring import Position
from stream_app.domain.validation import InvalidEvent, decode_record
from stream_app.edges.producer import EnvelopePlanner, encode_event
from stream_app.edges.settings import load_settings
from stream_app.replay.device_rules import ReplayDeviceRules
from stream_app.tools.simulator import SimEvent, SimulationConfig, generate
from tests.events import view_event
from tests.integration.harness import RawRecord, TopicReader, latest_by_key

PARTITIONS = 4
# Short windows so that settlement happens inside a test; IDLE_SETTLE_S longer than any test (see above).
CHAOS_ENV = {"WINDOW_S": "60", "GRACE_S": "60", "IDLE_SETTLE_S": "3600", "EMIT_INTERVAL_S": "0.5"}
FRAUD = frozenset({"repeat_viewer", "fake_engagement", "duplicate", "impossible_watch", "malformed"})
# Where the traffic ends, before the wall clock: the closing events come after it, still in the past (no event may
# be more than MAX_CLOCK_SKEW_S ahead of its record timestamp).
CLOSING_AFTER_MS = 300_000
END_BEFORE_NOW_MS = 600_000
INPUT_TOPICS = tuple(t.value for t in InputTopic)
OUTPUT_TOPICS = tuple(t.value for t in OutputTopic)
# Accrual fields that differ between runs by design (SPEC §7: ignoring `version` and `updated_at`).
VOLATILE = frozenset({"version", "updated_at", "_key", "_partition", "_offset"})

Position4 = tuple[str, int, int, int | None]  # (source topic, partition, offset, index): an outcome's identity


@dataclass(frozen=True)
class Record:
    """One record to publish, exactly as a producer sends it."""

    topic: str  # without TOPIC_PREFIX
    key: bytes | None
    value: bytes | None
    partition: int
    events: int = 1  # events it carries (the elements of an envelope), for pacing
    max_ts: int | None = None  # the largest event-time ts it carries (None: no valid event)


# ---- input ----------------------------------------------------------------------------------------------------------


def dicts(records: Any) -> list[dict[str, Any]]:
    """Output records as the JSON objects they are written as."""
    return [record.to_dict() for record in records]


def simulated(seed: int, events: int, now_ms: int, duration_s: float = 480.0) -> list[SimEvent]:
    """The simulator's traffic (profiles first) ending END_BEFORE_NOW_MS before `now_ms`."""
    config = SimulationConfig(
        seed=seed,
        start_ms=now_ms - END_BEFORE_NOW_MS - int(duration_s * 1000),
        duration_s=duration_s,
        rate_per_s=events / duration_s,
        creators=40,
        videos=300,
        fraud=FRAUD,
        fraud_share=0.05,
    )
    return list(generate(config))


def to_records(events: Iterable[SimEvent], rng: random.Random, group: int = 40) -> list[Record]:
    """Records as the producer SDK and foreign clients write them: runs of up to `group` events of one topic go out
    as batch envelopes (one per target partition) or, for about one run in four, as single keyed records; a
    malformed record as it is."""
    records: list[Record] = []
    run: list[SimEvent] = []

    def flush() -> None:
        if not run:
            return
        topic = run[0].topic
        encoded = [(encode_event(topic, e.payload), e.payload) for e in run if isinstance(e.payload, dict)]
        if rng.random() < 0.25:
            for item, payload in encoded:
                partition = partition_for(item.key, PARTITIONS)
                records.append(Record(topic.value, item.key, item.value, partition, 1, _ts(payload)))
        else:
            planner = EnvelopePlanner(PARTITIONS, 1000, 1_000_000)
            for item, _ in encoded:
                planner.add(item)
            by_partition: dict[int, list[int]] = {}
            for item, payload in encoded:
                by_partition.setdefault(partition_for(item.key, PARTITIONS), []).append(_ts(payload))
            for envelope in planner.drain():
                records.append(
                    Record(
                        topic.value,
                        None,
                        envelope.value,
                        envelope.partition,
                        envelope.events,
                        max(by_partition[envelope.partition]),
                    )
                )
        run.clear()

    for event in events:
        if isinstance(event.payload, bytes):
            flush()
            key = event.raw_key
            partition = 0 if key is None else partition_for(key, PARTITIONS)
            records.append(Record(event.topic.value, key, event.payload, partition))
            continue
        if run and (run[0].topic is not event.topic or len(run) >= group):
            flush()
        run.append(event)
    flush()
    return records


def _ts(payload: dict[str, Any]) -> int:
    return int(payload["ts"])


def closing_records(seed: int, at_ms: int) -> list[Record]:
    """A view and an interaction on every partition at `at_ms`: they move every partition's watermark past the
    traffic, so each of its windows settles (their own windows stay open)."""
    records = []
    for partition in range(PARTITIONS):
        video = next(
            v for n in range(1000) if partition_for((v := f"closing-{seed}-{n}").encode(), PARTITIONS) == partition
        )
        common = {"video_id": video, "creator_id": "cr-00000", "viewer_id": f"closer-{seed}", "ts": at_ms}
        view = dict(
            common,
            event_id=f"close-v-{seed}-{partition}",
            device_id=f"closer-{seed}-{partition}",
            watch_ms=20_000,
            video_ms=90_000,
            source="for_you",
            region="US",
        )
        like = dict(common, event_id=f"close-i-{seed}-{partition}", device_id=f"closer-{seed}-{partition}", kind="like")
        for topic, payload in ((InputTopic.VIEWS, view), (InputTopic.INTERACTIONS, like)):
            item = encode_event(topic, payload)
            records.append(Record(topic.value, item.key, item.value, partition, 1, at_ms))
    return records


def hostile_records(rng: random.Random, *, valid_ts: int | None = None) -> list[Record]:
    """Records a buggy or hostile producer writes: random bytes, deep nesting, huge numbers, NaN, oversize fields and
    records, 1,001-element envelopes, null values, mixed envelopes. With `valid_ts`, mixed envelopes also carry
    valid events at that ts (each on a video of its own); without, every event of these records is invalid (an
    invalid region on top of what each one breaks), so they change no money wherever they land."""
    views, interactions, profiles = (t.value for t in InputTopic)
    view = view_event(
        "h",
        "hv",
        "hu",
        valid_ts or 1_000,
        creator_id="hc",
        device_id="hd",
        video_ms=90_000,
        region="US" if valid_ts else "U$",
    )
    text = jsoncodec.dumps(view)

    def keyed(topic: str, value: bytes | None, key: bytes = b"hv") -> Record:
        return Record(topic, key, value, partition_for(key, PARTITIONS))

    def anywhere(value: bytes | None) -> Record:
        return Record(rng.choice((views, interactions, profiles)), None, value, rng.randrange(PARTITIONS))

    records = [
        anywhere(rng.randbytes(rng.randint(1, 3000))),  # random bytes
        anywhere(bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 50)))),  # never UTF-8
        anywhere(b"[" * 200_000 + b"]" * 200_000),  # deep nesting: past any parser's recursion limit
        keyed(views, b'{"event_id": ' + b"[" * 600 + b"]" * 600 + b"}"),
        keyed(views, text.replace(b'"ts":', b'"ts":1' + b"0" * 400 + b',"was":')),  # huge numbers
        keyed(views, text.replace(b'"watch_ms":10000', b'"watch_ms":1' + b"0" * 30)),
        keyed(views, jsoncodec.dumps(dict(view, ts=2**53))),
        keyed(views, text.replace(b'"watch_ms":10000', b'"watch_ms":NaN')),
        keyed(views, text.replace(b'"watch_ms":10000', b'"watch_ms":1e999')),
        keyed(views, jsoncodec.dumps(dict(view, watch_ms=10_000.0))),
        keyed(views, jsoncodec.dumps(dict(view, viewer_id="x" * 129))),  # oversize field
        keyed(views, jsoncodec.dumps(dict(view, padding="p" * 70_000))),  # event over 64 KiB
        anywhere(b"[" + b"1," * 600_000 + b"1]"),  # record over 1 MiB
        anywhere(b"[" + b",".join([text] * 1001) + b"]"),  # 1,001-element envelope
        anywhere(b"[]"),
        anywhere(None),  # a tombstone
        anywhere(b""),
        keyed(views, jsoncodec.dumps(dict.fromkeys(view))),  # null values
        keyed(views, jsoncodec.dumps(dict(view, video_id=None))),
        keyed(profiles, jsoncodec.dumps({"creator_id": "hc", "followers": -1, "ts": 1}), b"hc"),
        keyed(interactions, jsoncodec.dumps(dict(view, kind=None))),
        Record(views, rng.randbytes(8), text, rng.randrange(PARTITIONS)),  # a key that is not the video
    ]
    interaction_fields = ("event_id", "video_id", "creator_id", "viewer_id", "device_id", "ts")
    # mixed envelopes: objects of both event topics, scalars, nested arrays, invalid and (maybe) valid elements
    for n in range(rng.randint(2, 4)):
        partition = n % PARTITIONS
        video = next(
            v for i in range(1000) if partition_for((v := f"hostile-{n}-{i}").encode(), PARTITIONS) == partition
        )
        base = dict(view, video_id=video, event_id=f"h{n}")
        elements: list[Any] = [
            dict(base, event_id=f"h{n}-bad", watch_ms=-1),
            {k: v for k, v in base.items() if k != "source"},
            dict({k: base[k] for k in interaction_fields}, kind="like"),  # an interaction among views
            None,
            7,
            [base],
            "view",
        ]
        if valid_ts is not None:
            # each on a screen of its own: the same watch interval on one device would be device_overlap, judged
            # on the device repartition, which the oracle leaves out (its flags race with the end of the test)
            elements += [
                dict(base, event_id=f"h{n}-ok-{i}", viewer_id=f"hu{i}", device_id=f"hd-{n}-{i}") for i in range(3)
            ]
        rng.shuffle(elements)
        records.append(Record(views, None, jsoncodec.dumps(elements), partition, len(elements), valid_ts))
    rng.shuffle(records)
    return records


def redelivered(records: Sequence[Record], within_ms: int = 45_000, most: int = 30) -> list[Record]:
    """A producer retry: the last records again, byte for byte, as long as every event they carry is at most
    `within_ms` older than the newest sent (their windows are still open: the copies are duplicate_event, not
    late, whatever the interleaving)."""
    newest = max(r.max_ts for r in records if r.max_ts is not None)
    copies: list[Record] = []
    for record in reversed(records):
        if len(copies) >= most or (record.max_ts is not None and _min_ts(record) < newest - within_ms):
            break
        copies.append(record)
    assert copies, "nothing recent enough to redeliver"
    return copies[::-1]


def _min_ts(record: Record) -> int:
    document = jsoncodec.loads(record.value or b"null")
    items = document if isinstance(document, list) else [document]
    return min(int(item["ts"]) for item in items if isinstance(item, dict) and isinstance(item.get("ts"), int))


@dataclass
class ChaosInput:
    """One seed's input: profiles, traffic (with malformed and hostile records), closing records."""

    seed: int
    profiles: list[Record]
    traffic: list[Record]
    closing: list[Record]

    @property
    def events(self) -> int:
        return sum(r.events for r in (*self.profiles, *self.traffic, *self.closing))


def chaos_input(seed: int, events: int = 3000) -> ChaosInput:
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    sim = simulated(seed, events, now_ms)
    profiles = [e for e in sim if e.topic is InputTopic.PROFILES]
    traffic = to_records([e for e in sim if e.topic is not InputTopic.PROFILES], rng)
    for record in hostile_records(rng):  # invalid events only: they change no money, wherever they land
        traffic.insert(rng.randrange(len(traffic)), record)
    closing = closing_records(seed, now_ms - END_BEFORE_NOW_MS + CLOSING_AFTER_MS)
    return ChaosInput(seed, to_records(profiles, rng, group=1000), traffic, closing)


class Publisher:
    """Writes records with librdkafka to explicit partitions (a foreign client, as upstream teams use)."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        self.prefix = prefix
        self._producer = confluent_kafka.Producer(
            {"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 3_000_000}
        )

    def send(self, records: Iterable[Record], events_per_s: float | None = None) -> None:
        """Send and wait for every acknowledgement; with `events_per_s`, paced to that rate."""
        started = time.monotonic()
        sent = 0
        for record in records:
            self._producer.produce(
                self.prefix + record.topic, key=record.key, value=record.value, partition=record.partition
            )
            sent += record.events
            if events_per_s:
                self._producer.poll(0)
                delay = started + sent / events_per_s - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
        assert self._producer.flush(90) == 0, "records not acknowledged by the broker"

    def send_in_background(self, records: Sequence[Record], events_per_s: float) -> threading.Thread:
        thread = threading.Thread(target=self.send, args=(records, events_per_s), daemon=True)
        thread.start()
        return thread


# ---- the oracle ----------------------------------------------------------------------------------------------------


@dataclass
class Expected:
    """What an undisturbed run ends with."""

    accruals: dict[str, dict[str, Any]]  # video_id -> Accrual content (no version, updated_at)
    settlements: set[bytes]  # canonical settlement and clawback records
    outcomes: dict[Position4, tuple[str, str]]  # identity -> (outcome, reason) of every audit and dead letter
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)  # (topic, outcome) -> events
    pending_interactions: int = 0

    @property
    def events(self) -> int:
        return sum(self.counts.values()) + self.pending_interactions


def chaos_policy(env: dict[str, str]) -> Policy:
    return load_settings(env).policy


def oracle(raw: dict[str, list[RawRecord]], prefix: str, policy: Policy, now_ms: int | None = None) -> Expected:
    """Score the input topics' records (`raw`: full topic name -> records in offset order per partition) as one
    undisturbed worker would."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    policy_id = policy_hash(policy)
    expected = Expected({}, set(), {})
    profiles = ProfileHistory(policy)
    for record in raw[prefix + InputTopic.PROFILES.value]:
        for item in _decode(InputTopic.PROFILES, record):
            if isinstance(item, InvalidEvent):
                _invalid(expected, record, item.index)
            else:
                assert isinstance(item.event, CreatorProfile)
                profiles.add(item.event)
                expected.counts[(InputTopic.PROFILES.value, Outcome.ACCEPTED.value)] += 1
    effects = Effects()
    scorers = []
    for partition in range(PARTITIONS):
        scorer = PartitionScorer(policy, policy_id, partition, MemoryState(), profiles, now_ms=now_ms)
        scorers.append(scorer)
        merged = sorted(
            (
                (record.timestamp_ms, order, record.offset, topic, record)
                for order, topic in enumerate((InputTopic.VIEWS, InputTopic.INTERACTIONS))
                for record in raw[prefix + topic.value]
                if record.partition == partition
            ),
            key=lambda item: item[:3],
        )
        for _, _, _, topic, record in merged:
            for item in _decode(topic, record):
                if isinstance(item, InvalidEvent):
                    _invalid(expected, record, item.index)
                    continue
                event = item.event
                assert isinstance(event, ViewEvent | InteractionEvent)
                position = Position(partition, record.offset, -1 if item.index is None else item.index)
                scorer.on_event(topic, event, position, record.timestamp_ms, now_ms, effects)
                for dead, _error in effects.dead_letters:
                    _invalid(expected, record, dead.index_or_none)
                effects.dead_letters.clear()
        scorer.flush(now_ms, effects)
        for ledger in scorer.ledgers():
            accrual = ledger.accrual(policy_id).to_dict()
            expected.accruals[ledger.video_id] = {k: v for k, v in accrual.items() if k not in VOLATILE}
    _assert_device_clean(policy, effects)
    for topic, n in effects.accepted.items():
        expected.counts[(topic.value, Outcome.ACCEPTED.value)] += n
    for outcome in effects.outcomes:
        if outcome.outcome is not Outcome.CLAWBACK:
            expected.counts[(outcome.topic.value, outcome.outcome.value)] += 1
        where = (prefix + outcome.topic.value, outcome.position.partition, outcome.position.offset)
        expected.outcomes[(*where, outcome.position.index_or_none)] = (outcome.outcome.value, outcome.reason)
    expected.settlements = {canonical(s) for s in dicts(effects.settlements)}
    expected.pending_interactions = sum(s.pending_interactions for s in scorers)
    return expected


def _assert_device_clean(policy: Policy, effects: Effects) -> None:
    """The oracle leaves the device rules out (their flags race with settlement and with the end of a test), so the
    input must give them nothing to flag: the worker's device judge over every accepted view returns no flag."""
    devices = ReplayDeviceRules(policy, sources=1)
    devices.judge(0, effects.device_views, None)
    devices.drained([None])
    flags, _ = devices.acknowledge()
    assert not flags, f"chaos input trips a device rule, which the oracle does not model: {flags[:3]}"


def _decode(topic: InputTopic, record: RawRecord) -> list[Any]:
    return decode_record(
        topic,
        record.key,
        record.value,
        partition=record.partition,
        partition_count=PARTITIONS,
        partition_for=partition_for,
    )


def _invalid(expected: Expected, record: RawRecord, index: int | None) -> None:
    expected.outcomes[(record.topic, record.partition, record.offset, index)] = ("invalid", "")
    unprefixed = next(t for t in INPUT_TOPICS if record.topic.endswith(t))
    expected.counts[(unprefixed, "invalid")] += 1


def canonical(record: dict[str, Any]) -> bytes:
    return jsoncodec.dumps({k: v for k, v in sorted(record.items()) if not k.startswith("_")})


# ---- what the workers wrote ----------------------------------------------------------------------------------------


def input_reader(bootstrap: str, prefix: str) -> TopicReader:
    return TopicReader(bootstrap, [prefix + t for t in INPUT_TOPICS])


def output_reader(bootstrap: str, prefix: str) -> TopicReader:
    return TopicReader(bootstrap, [prefix + t for t in OUTPUT_TOPICS])


def read_input(bootstrap: str, prefix: str, records: int, timeout: float = 30) -> dict[str, list[RawRecord]]:
    """Every input record as it is on the broker (`records`: how many were published)."""
    with input_reader(bootstrap, prefix) as reader:
        reader.read_until(lambda r: sum(map(len, r.raw.values())) >= records, timeout, f"{records} input records")
        return reader.raw


def accrual_view(reader: TopicReader, prefix: str) -> dict[str, dict[str, Any]]:
    """The newest accrual per video, without what differs between runs by design."""
    latest = latest_by_key(reader.records(prefix + OutputTopic.ACCRUALS.value))
    return {video: {k: v for k, v in r.items() if k not in VOLATILE} for video, r in latest.items()}


def settlement_view(reader: TopicReader, prefix: str) -> set[bytes]:
    return {canonical(r) for r in reader.records(prefix + OutputTopic.SETTLEMENTS.value)}


def outcome_view(reader: TopicReader, prefix: str) -> dict[Position4, set[tuple[str, str]]]:
    """Every audit record and dead letter by its identity (SPEC §4), with the (outcome, reason)s written for it."""
    found: dict[Position4, set[tuple[str, str]]] = {}
    for record in reader.records(prefix + OutputTopic.SUSPICIOUS.value):
        where = (record["source_topic"], record["partition"], record["offset"], record["index"])
        found.setdefault(where, set()).add((record["outcome"], record["reason"]))
    for record in reader.records(prefix + OutputTopic.DLQ.value):
        where = (record["source_topic"], record["partition"], record["offset"], record["index"])
        found.setdefault(where, set()).add(("invalid", ""))
    return found


def money_matches(reader: TopicReader, prefix: str, expected: Expected) -> bool:
    return accrual_view(reader, prefix) == expected.accruals and settlement_view(reader, prefix) == expected.settlements


def accrual_diff(reader: TopicReader, prefix: str, expected: Expected, most: int = 5) -> list[Any]:
    """The videos whose newest accrual differs from the oracle's: (video, wrote, expected)."""
    got = accrual_view(reader, prefix)
    videos = sorted(set(got) | set(expected.accruals))
    return [(v, got.get(v), expected.accruals.get(v)) for v in videos if got.get(v) != expected.accruals.get(v)][:most]


def wait_for_money(reader: TopicReader, prefix: str, expected: Expected, timeout: float) -> None:
    """Read the outputs until the newest accruals and the settlements are the oracle's; else say what differs."""
    try:
        reader.read_until(lambda r: money_matches(r, prefix, expected), timeout, "the oracle's money")
    except AssertionError as exc:
        found = settlement_view(reader, prefix)
        missing = sorted(expected.settlements - found)[:3]
        extra = sorted(found - expected.settlements)[:3]
        raise AssertionError(
            f"{exc}: accruals differ for {accrual_diff(reader, prefix, expected)}; "
            f"{len(expected.settlements - found)} settlements missing {missing}, "
            f"{len(found - expected.settlements)} unexpected {extra}; "
            f"outcomes that differ, (expected, written): count {outcome_diff(reader, prefix, expected)}"
        ) from None


def outcome_diff(reader: TopicReader, prefix: str, expected: Expected) -> dict[tuple[Any, ...], int]:
    """How many events got which written outcomes instead of the oracle's (a diagnosis for a failed run)."""
    counts: dict[tuple[Any, ...], int] = {}
    found = outcome_view(reader, prefix)
    for where in set(found) | set(expected.outcomes):
        want, got = expected.outcomes.get(where), found.get(where, set())
        if got != {want}:
            key = (want, tuple(sorted(got)))
            counts[key] = counts.get(key, 0) + 1
    return counts
