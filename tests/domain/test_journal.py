"""The journal: a worker that restarts (cleanly, or after a crash that cut a batch's state write short) and
rebuilds its memories from the journal ends with exactly the outputs of a worker that never stopped."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest

from stream_app.domain import codec
from stream_app.domain.events import CreatorProfile, InputTopic, InteractionEvent, ViewEvent
from stream_app.domain.partition import Effects, MemoryState, PartitionScorer, StateWrite
from stream_app.domain.policy import Policy, policy_hash
from stream_app.domain.profiles import ProfileHistory
from stream_app.domain.scoring import Position

# Small windows and thresholds so every rule, settlement and clawback happens within a few thousand events.
POLICY = Policy(
    window_s=20,
    grace_s=3,
    idle_settle_s=5,
    emit_interval_s=0.0,
    viewer_repeat_max=3,
    viewer_repeat_span_s=30,
    velocity_min_views=20,
    velocity_span_s=10,
    velocity_baseline_minutes=2,
    dedupe_s=60,
    qualify_once_s=60,
    engagement_lookback_s=60,
    flag_latency_allowance_s=30,
    device_flag_hold_s=120,
)
NOW = 5_000_000_000_000


@dataclass(frozen=True)
class Flag:
    video_id: str
    event_id: str


Item = ViewEvent | InteractionEvent | Flag


def dicts(records: Any) -> list[dict[str, Any]]:
    """Output records as the JSON objects they are written as."""
    return [record.to_dict() for record in records]


def workload(seed: int, n: int = 2_500, step_ms: int = 120) -> list[tuple[Item, Position]]:
    """Organic-ish views and interactions on 12 videos, with loops (viewer_repeat), bursts of few viewers
    (velocity_burst), re-delivered duplicates, events a little out of order, and device flags of accepted views."""
    rng = random.Random(seed)
    items: list[tuple[Item, Position]] = []
    offsets = {InputTopic.VIEWS: 0, InputTopic.INTERACTIONS: 0}
    ts = 1_000_000
    views: list[ViewEvent] = []
    for i in range(n):
        ts += rng.randint(0, step_ms)
        at = ts - rng.randint(0, 1_500)  # a little out of order
        # sparse runs: the videos watched drift over time, so the early ones go quiet
        video = f"vid{rng.randrange(12)}" if step_ms <= 120 else f"vid{i // 200 + rng.randrange(6)}"
        burst = 400 <= i % 900 < 460 and video == "vid3"
        viewer = f"u{rng.randrange(4 if burst else 150)}"
        roll = rng.random()
        item: Item
        if roll < 0.75 or burst:
            item = ViewEvent(
                f"e{i}",
                video,
                f"c{video[-1]}",
                viewer,
                f"d{viewer}",
                at,
                rng.randint(1_000, 90_000),
                75_000,
                rng.choice(["for_you", "for_you", "following"]),
                rng.choice(["US", "GB", "IN"]),
            )
            views.append(item)
        elif roll < 0.92:
            item = InteractionEvent(
                f"e{i}",
                video,
                f"c{video[-1]}",
                viewer,
                f"d{viewer}",
                at,
                rng.choice(["like", "comment", "share", "follow", "like"]),
            )
        elif roll < 0.96 and views:
            earlier = rng.choice(views[-200:])
            item = Flag(earlier.video_id, earlier.event_id)
        elif views:
            item = rng.choice(views[-50:])  # a re-delivered record: a new position, an event_id already seen
        else:
            continue
        if isinstance(item, Flag):
            items.append((item, Position(0, -1, -1)))
            continue
        topic = InputTopic.VIEWS if isinstance(item, ViewEvent) else InputTopic.INTERACTIONS
        items.append((item, Position(0, offsets[topic], -1)))
        offsets[topic] += 1
    return items


def profiles() -> ProfileHistory:
    history = ProfileHistory(POLICY)
    for c in range(10):
        history.add(CreatorProfile(f"c{c}", 50_000 if c != 7 else 10, 500_000, True, "good", 0))
    return history


class Run:
    """A worker over one partition: batches of items, a tick after each, state written after each batch."""

    def __init__(self, store: MemoryState | None = None) -> None:
        self.store = store or MemoryState()
        self.profiles = profiles()
        self.start()
        self.accruals: dict[str, dict[str, object]] = {}
        self.settlements: set[tuple[object, ...]] = set()
        self.audited: set[tuple[object, ...]] = set()

    def start(self) -> None:
        self.scorer = PartitionScorer(POLICY, policy_hash(POLICY), 0, self.store, self.profiles)
        self.collect(self.scorer.republish(NOW))

    def batch(self, items: list[tuple[Item, Position]], now: int) -> StateWrite:
        effects = Effects()
        for item, position in items:
            if isinstance(item, Flag):
                self.scorer.on_device_flag(item.video_id, item.event_id, "device_burst", "flagged", now, effects)
                continue
            topic = InputTopic.VIEWS if isinstance(item, ViewEvent) else InputTopic.INTERACTIONS
            self.scorer.on_event(topic, item, position, item.ts + 1_000, now, effects)
        for topic in (InputTopic.VIEWS, InputTopic.INTERACTIONS):
            self.scorer.observe_position(topic, True, now)
        self.scorer.settle_due(now, effects)
        self.scorer.sweep_quiet_videos(now, interval_ms=0)
        write = self.scorer.flush(now, effects)
        self.collect(effects)
        return write

    def collect(self, effects: Effects) -> None:
        for accrual in dicts(effects.accruals):
            held = self.accruals.get(accrual["video_id"])
            if held is None or accrual["version"] >= held["version"]:  # type: ignore[operator]
                self.accruals[accrual["video_id"]] = accrual  # type: ignore[index]
        for record in dicts(effects.settlements):
            self.settlements.add(tuple(sorted(record.items())))
        for outcome in effects.outcomes:
            key = (outcome.topic, outcome.position.offset, outcome.event.event_id, outcome.outcome)
            self.audited.add(key)

    def totals(self) -> dict[str, tuple[object, ...]]:
        skip = {"version", "updated_at"}
        return {v: tuple(sorted((k, x) for k, x in a.items() if k not in skip)) for v, a in self.accruals.items()}


def batches(items: list[tuple[Item, Position]], seed: int) -> list[list[tuple[Item, Position]]]:
    rng = random.Random(seed)
    out = []
    i = 0
    while i < len(items):
        size = rng.randint(1, 60)
        out.append(items[i : i + size])
        i += size
    return out


def run_undisturbed(seed: int, step_ms: int = 120) -> Run:
    run = Run()
    for n, batch in enumerate(batches(workload(seed, step_ms=step_ms), seed)):
        run.store.apply(run.batch(batch, NOW + n * 100))
    return run


def partial(write: StateWrite, rng: random.Random) -> StateWrite:
    """What reached the changelog before a crash: a prefix of the batch's writes, in their order."""
    parts: list[tuple[str, object]] = [("segment", s) for s in write.segments]
    parts += [("head", h) for h in write.heads]
    if write.meta is not None:
        parts.append(("meta", write.meta))
    kept = parts[: rng.randint(0, len(parts))]
    cut = StateWrite()
    for kind, value in kept:
        if kind == "segment":
            cut.segments.append(value)  # type: ignore[arg-type]
        elif kind == "head":
            cut.heads.append(value)  # type: ignore[arg-type]
        else:
            cut.meta = value  # type: ignore[assignment]
    return cut


@pytest.mark.parametrize(
    ("seed", "step_ms"),
    [
        (1, 120),
        (2, 120),
        (3, 120),
        (4, 120),
        # sparse: the event time spans several memory horizons, so segments are dropped (their newest heads written
        # to head keys first) and videos that went quiet leave the working set
        (5, 1_500),
        (6, 1_500),
    ],
)
def test_restarts_and_crashes_end_with_the_undisturbed_numbers(seed: int, step_ms: int) -> None:
    expected = run_undisturbed(seed, step_ms)
    assert expected.settlements and expected.audited  # the workload exercises settlement and the rules
    reasons = {key[3] for key in expected.audited}
    assert {"suspicious", "clawback"} <= {str(r) for r in reasons}

    if step_ms > 120:
        live = len(expected.store.segment_values)
        assert expected.scorer.journal.next_seq > 2 * live, "segments must have been dropped"
        assert expected.store.heads, "heads of dropped segments and quiet videos must have keys of their own"
        assert len(list(expected.scorer.ledgers())) < len(expected.accruals), "quiet videos must have left"

    rng = random.Random(seed * 7919)
    run = Run()
    all_batches = batches(workload(seed, step_ms=step_ms), seed)
    committed = 0  # batches whose input offsets were committed: a crash re-reads input from there
    n = 0
    restarts = 0
    while n < len(all_batches):
        write = run.batch(all_batches[n], NOW + n * 100)
        if rng.random() < 0.08:  # a crash while writing this batch's state
            run.store.apply(partial(write, rng))
            run.start()
            restarts += 1
            n = committed  # the input since the last commit is read again; replayed events are skipped
            continue
        run.store.apply(write)
        if rng.random() < 0.05:  # a clean restart (rebalance)
            run.start()
            restarts += 1
        n += 1
        if rng.random() < 0.3:
            committed = n
    assert restarts >= 3
    assert run.totals() == expected.totals()
    assert run.settlements == expected.settlements
    assert run.audited == expected.audited
    # and what is stored says the same for every video, the quiet ones included (their heads may be long out of
    # the journal, in keys of their own)
    final = PartitionScorer(POLICY, policy_hash(POLICY), 0, run.store, run.profiles)
    for video_id, accrual in expected.accruals.items():
        ledger = final.ledger(video_id)
        assert ledger is not None, video_id
        stored = ledger.accrual(policy_hash(POLICY)).to_dict()
        content = {k: v for k, v in stored.items() if k not in {"version", "updated_at"}}
        assert content == {k: v for k, v in accrual.items() if k not in {"version", "updated_at"}}


def test_a_restored_memory_is_the_memory_that_was_written() -> None:
    """Not just the same numbers: the same remembered ids, viewers and views, video by video."""
    run = Run()
    for n, batch in enumerate(batches(workload(5), 5)[:40]):
        run.store.apply(run.batch(batch, NOW + n * 100))
    restored = PartitionScorer(POLICY, policy_hash(POLICY), 0, run.store, run.profiles)
    for ledger in run.scorer.ledgers():
        again = restored.ledger(ledger.video_id)
        assert again is not None
        live, back = ledger.memory, again.memory
        assert back.rules.view_ids.seen == live.rules.view_ids.seen
        assert back.rules.accepted_views.as_dict() == live.rules.accepted_views.as_dict()
        assert back.qualified.as_dict() == live.qualified.as_dict()
        assert {k: (r.clawed, r.qualifying) for k, r in back.recent.items()} == {
            k: (r.clawed, r.qualifying) for k, r in live.recent.items()
        }
        assert back.pending == live.pending
        assert again.head() == ledger.head()


class ShuffledState:
    """A table (a StateSource) that hands its segments back in any order (a RocksDB or changelog scan promises
    none). Not a MemoryState subclass: the compiled core allows no interpreted subclass of it."""

    def __init__(self, store: MemoryState, seed: int) -> None:
        self.store = store
        self.rng = random.Random(seed)

    def head(self, video_id: str) -> bytes | None:
        return self.store.head(video_id)

    def meta(self) -> bytes | None:
        return self.store.meta()

    def segments(self) -> list[bytes]:
        values = list(self.store.segments())
        self.rng.shuffle(values)
        return values


@pytest.mark.parametrize("seed", range(3))
def test_segments_restore_the_same_working_set_in_whatever_order_the_table_hands_them(seed: int) -> None:
    """Restore decodes segments one at a time (heads first, then operations in seq order): the order a table
    scan hands them over changes nothing, not even the order of the working set."""
    run = Run()
    for n, batch in enumerate(batches(workload(seed, step_ms=1_500), seed)):
        run.store.apply(run.batch(batch, NOW + n * 100))
    assert len(run.store.segment_values) > 3
    in_order = PartitionScorer(POLICY, policy_hash(POLICY), 0, run.store, run.profiles)
    shuffled = PartitionScorer(POLICY, policy_hash(POLICY), 0, ShuffledState(run.store, seed), run.profiles)
    assert [led.video_id for led in shuffled.ledgers()] == [led.video_id for led in in_order.ledgers()]
    for ledger in in_order.ledgers():
        again = shuffled.ledger(ledger.video_id)
        assert again is not None and again.head() == ledger.head()
        assert again.memory.rules.view_ids.seen == ledger.memory.rules.view_ids.seen
        assert again.memory.qualified.as_dict() == ledger.memory.qualified.as_dict()
    assert shuffled.journal.live == in_order.journal.live
    assert shuffled.journal.head_seq == in_order.journal.head_seq


def test_state_of_the_previous_layout_is_refused_with_a_message() -> None:
    store = MemoryState()
    store.meta_value = b'{"latest_ts": {}, "policy": "v1-00000000"}'
    with pytest.raises(codec.StateFormatError, match="previous layout"):
        PartitionScorer(POLICY, policy_hash(POLICY), 0, store, profiles())


def test_a_huge_batch_is_sealed_in_segments_under_the_record_size() -> None:
    from stream_app.domain.journal import SEGMENT_BYTES, Journal, view_op
    from stream_app.domain.scoring import VideoLedger

    journal = Journal(next_seq=7)
    hot = VideoLedger("video-hot", "c1")
    changed = {"video-hot": hot} | {f"video-{v}": VideoLedger(f"video-{v}", "c1") for v in range(50)}
    for n in range(12_000):  # a batch of envelopes: twelve thousand views, half of them of one hot video
        video = "video-hot" if n % 2 else f"video-{n // 2 % 50}"
        event = ViewEvent(f"{n:032x}", video, "c1", f"viewer-{n}", f"device-{n}", n, 9, 9, "for_you", "US")
        journal.record(view_op(event, n, 0), n)
    sealed = journal.seal(changed, None)
    assert len(sealed) > 1 and [seq for seq, _ in sealed] == list(range(7, 7 + len(sealed)))
    assert all(len(value) <= SEGMENT_BYTES for _, value in sealed)
    segments = [codec.decode(codec.Kind.SEGMENT, value) for _, value in sealed]
    ops = [op for segment in segments for op in segment[2]]
    for video in changed:  # every operation, in order per video ...
        expected = [
            f"{n:032x}"
            for n in range(12_000)
            if (video == "video-hot") == bool(n % 2) and (video == "video-hot" or f"video-{n // 2 % 50}" == video)
        ]
        assert [op[2] for op in ops if op[1] == video] == expected
    # ... and each head once, in the last segment holding the video's operations, saying so
    heads = {head[0]: (segment[0], head[15]) for segment in segments for head in segment[3]}
    assert set(heads) == set(changed)
    for video, (seq, journal_seq) in heads.items():
        assert seq == journal_seq == max(s[0] for s in segments if any(op[1] == video for op in s[2]))
    assert journal.seal({}, None) == [] and journal.next_seq == 7 + len(sealed)


def test_a_head_in_a_dropped_segment_is_written_to_its_own_key_first() -> None:
    """A video still in memory whose newest head is in a segment old enough to drop (no quiet sweep touched it
    since, say the device judge never acknowledged its views): its head goes to a key of its own before the
    drop, and a restart finds it there."""
    store = MemoryState()
    history = profiles()
    scorer = PartitionScorer(POLICY, policy_hash(POLICY), 0, store, history, device_partitions=2)

    def batch(events: list[ViewEvent], now: int) -> None:
        effects = Effects()
        for event in events:
            scorer.on_event(InputTopic.VIEWS, event, Position(0, int(event.event_id[1:]), -1), event.ts, now, effects)
        for topic in (InputTopic.VIEWS, InputTopic.INTERACTIONS):
            scorer.observe_position(topic, True, now)
        scorer.settle_due(now, effects)
        scorer.sweep_quiet_videos(now, interval_ms=10**12)  # never: nothing touches the quiet video again
        store.apply(scorer.flush(now, effects))

    def view(n: int, video: str, ts: int) -> ViewEvent:
        return ViewEvent(f"e{n}", video, "c1", f"u{n}", f"d{n}", ts, 30_000, 75_000, "for_you", "US")

    batch([view(0, "quiet", 1_000_000)], NOW)
    first_segments = set(store.segment_values)
    for n in range(1, 60):  # another video keeps event time moving, far past every memory horizon
        batch([view(n, "busy", 1_000_000 + n * 30_000)], NOW + n * 1_000)
    assert not first_segments & set(store.segment_values), "the quiet video's segment must have been dropped"
    assert "quiet" in {ledger.video_id for ledger in scorer.ledgers()}
    assert "quiet" in store.heads
    restored = PartitionScorer(POLICY, policy_hash(POLICY), 0, store, history, device_partitions=2).ledger("quiet")
    assert restored is not None and restored.views == 1 and restored.head() == scorer.ledger("quiet").head()  # type: ignore[union-attr]
