"""The journal: a worker that restarts (cleanly, or after a crash that cut a batch's state write short) and
rebuilds its memories from the journal ends with exactly the outputs of a worker that never stopped."""

from __future__ import annotations

import random
from dataclasses import dataclass

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


def workload(seed: int, n: int = 2_500) -> list[tuple[Item, Position]]:
    """Organic-ish views and interactions on 12 videos, with loops (viewer_repeat), bursts of few viewers
    (velocity_burst), re-delivered duplicates, events a little out of order, and device flags of accepted views."""
    rng = random.Random(seed)
    items: list[tuple[Item, Position]] = []
    offsets = {InputTopic.VIEWS: 0, InputTopic.INTERACTIONS: 0}
    ts = 1_000_000
    views: list[ViewEvent] = []
    for i in range(n):
        ts += rng.randint(0, 120)
        at = ts - rng.randint(0, 1_500)  # a little out of order
        video = f"vid{rng.randrange(12)}"
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
                self.scorer.on_device_flag(item.video_id, item.event_id, "flagged", now, effects)
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
        for accrual in effects.accruals:
            held = self.accruals.get(accrual["video_id"])
            if held is None or accrual["version"] >= held["version"]:  # type: ignore[operator]
                self.accruals[accrual["video_id"]] = accrual  # type: ignore[index]
        for record in effects.settlements:
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


def run_undisturbed(seed: int) -> Run:
    run = Run()
    for n, batch in enumerate(batches(workload(seed), seed)):
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


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_restarts_and_crashes_end_with_the_undisturbed_numbers(seed: int) -> None:
    expected = run_undisturbed(seed)
    assert expected.settlements and expected.audited  # the workload exercises settlement and the rules
    reasons = {key[3] for key in expected.audited}
    assert {"suspicious", "clawback"} <= {str(r) for r in reasons}

    rng = random.Random(seed * 7919)
    run = Run()
    all_batches = batches(workload(seed), seed)
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
        assert back.rules.accepted_views.by_key == live.rules.accepted_views.by_key
        assert back.qualified.by_key == live.qualified.by_key
        assert {k: (r.clawed, r.qualifying) for k, r in back.recent.items()} == {
            k: (r.clawed, r.qualifying) for k, r in live.recent.items()
        }
        assert back.pending == live.pending
        assert again.head() == ledger.head()


def test_state_of_the_previous_layout_is_refused_with_a_message() -> None:
    store = MemoryState()
    store.meta_value = b'{"latest_ts": {}, "policy": "v1-00000000"}'
    with pytest.raises(codec.StateFormatError, match="previous layout"):
        PartitionScorer(POLICY, policy_hash(POLICY), 0, store, profiles())


def test_a_huge_batch_is_sealed_in_segments_under_the_record_size() -> None:
    from stream_app.domain.journal import SEGMENT_BYTES, Journal, view_op

    journal = Journal(next_seq=7)
    for n in range(12_000):  # a batch of envelopes: twelve thousand views
        event = ViewEvent(f"{n:032x}", f"video-{n % 50}", "c1", f"viewer-{n}", f"device-{n}", n, 9, 9, "for_you", "US")
        journal.record(view_op(event, n, 0), n)
    sealed = journal.seal(None)
    assert len(sealed) > 1 and [seq for seq, _ in sealed] == list(range(7, 7 + len(sealed)))
    assert all(len(value) <= SEGMENT_BYTES for _, value in sealed)
    ops = [op for _, value in sealed for op in codec.decode(codec.Kind.SEGMENT, value)[2]]
    assert [op[2] for op in ops] == [f"{n:032x}" for n in range(12_000)]  # every operation, in order
    assert journal.seal(None) == [] and journal.next_seq == 7 + len(sealed)
