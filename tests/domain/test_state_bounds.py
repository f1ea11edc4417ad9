"""State for the rules is bounded (issue 4): per-viewer, dedupe and per-device memories forget what lies past their
horizon, through the real code paths (PartitionScorer for a video's ledger, check_device_burst + expire_device
for a device, as streaming/devices.py calls them), while still holding everything a rule can need."""

from __future__ import annotations

import pytest

from stream_app.domain import rules
from stream_app.domain.events import CreatorProfile, InteractionEvent, ViewEvent
from stream_app.domain.partition import Effects, MemoryState, PartitionScorer
from stream_app.domain.policy import Policy, policy_hash
from stream_app.domain.profiles import ProfileHistory
from stream_app.domain.rules_state import EXPIRY_BUCKET_MS, DeviceState
from stream_app.domain.scoring import (
    INTERACTIONS,
    VIEWS,
    Position,
    VideoLedger,
    recent_views_cutoff,
    recent_views_keep_ms,
)

POLICY = Policy()  # the real horizons: WINDOW_S 3600, GRACE_S 300, a day for QUALIFY_ONCE_S / DEDUPE_S / lookback
W_MS = POLICY.window_s * 1000
G_MS = POLICY.grace_s * 1000
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, hour-aligned
NOW = T0  # wall clock: only stamps updated_at (no topic is marked caught up, so none is idle)

# One video, one view every STEP_MS by a new viewer, 20,000 of them (200 h, over 8 days: past every horizon,
# CLAWBACK_HORIZON_S included); after every LIKE_EVERY-th view a like by its viewer at the same ts, so both
# event topics move and the watermark (their minimum) trails the newest view by at most LAG_MS.
STEP_MS = 36_000
VIEWS_SENT = 20_000
LIKE_EVERY = 25
LAG_MS = (LIKE_EVERY - 1) * STEP_MS
BATCH = 100  # events per scorer batch (one hour of views)


class Feeder:
    def __init__(self) -> None:
        profiles = ProfileHistory(POLICY)
        profiles.add(CreatorProfile("c1", 50_000, 500_000, True, "good", 0))
        self.store = MemoryState()
        self.scorer = PartitionScorer(POLICY, policy_hash(POLICY), 0, self.store, profiles)
        self.offsets = {VIEWS: 0, INTERACTIONS: 0}

    def send(self, events: list[ViewEvent | InteractionEvent]) -> Effects:
        effects = Effects()
        for event in events:
            topic = VIEWS if isinstance(event, ViewEvent) else INTERACTIONS
            position = Position(0, self.offsets[topic], -1)
            self.offsets[topic] += 1
            self.scorer.on_event(topic, event, position, event.ts, NOW, effects)
        self.store.apply(self.scorer.flush(NOW, effects))
        return effects

    def ledger(self, video_id: str) -> VideoLedger:
        ledger = self.scorer.ledger(video_id)
        assert ledger is not None
        return ledger


def view(n: int, ts: int, video: str = "vid1") -> ViewEvent:
    # a qualifying view (for_you, 30 s of a 2 min video) by a viewer never seen before
    return ViewEvent(f"v{n}", video, "c1", f"u{n}", f"d{n}", ts, 30_000, 120_000, "for_you", "US")


def like(n: int, ts: int, video: str = "vid1") -> InteractionEvent:
    return InteractionEvent(f"i{n}", video, "c1", f"u{n}", f"d{n}", ts, "like")


def most_entries(span_ms: int, spacing_ms: int) -> int:
    """The most events `spacing_ms` apart that fit in a span shorter than `span_ms`."""
    return span_ms // spacing_ms + 1


def test_a_busy_videos_memories_stay_within_their_horizons() -> None:
    # Why these bounds. VideoLedger.expire_memory(wm) runs whenever one of the video's windows settles (here every
    # hour, since every hour has views) and drops, from each memory, what lies at or before wm - H, H being that
    # memory's horizon behind the watermark, a bucket of event time at a time (EXPIRY_BUCKET_MS: what lies in
    # the bucket holding the cutoff waits for the next expiry). The next window settles once wm passes the next
    # deadline, at most W after the last expiry; until then the newest view is at most LAG_MS ahead of wm. So a
    # memory spans less than H + bucket + W + LAG_MS of event time, and holds at most that span / (its event
    # spacing) + 1 entries, however many viewers have come. The short memories forget as the video's own event
    # time moves: repeats within their horizon plus a bucket and a step, accepted views kept for clawback within
    # their keep span plus a bucket (trimmed at the end of every batch); velocity keeps its 60 s head span and
    # 60 (+1) minute counts. Settled windows are kept while a view of theirs can still be clawed back.
    reach_ms = W_MS + G_MS  # an event not late has ts > wm - reach_ms
    slack_ms = W_MS + LAG_MS + EXPIRY_BUCKET_MS
    like_ms = LIKE_EVERY * STEP_MS
    repeat_ms = POLICY.viewer_repeat_span_s * 1000
    recent_ms = recent_views_keep_ms(POLICY) + EXPIRY_BUCKET_MS + BATCH * STEP_MS
    bounds = {
        "qualified_at": most_entries(POLICY.qualify_once_s * 1000 + reach_ms + slack_ms, STEP_MS),
        "recent": most_entries(recent_ms, STEP_MS),
        "view_ids": most_entries(POLICY.dedupe_s * 1000 + reach_ms + slack_ms, STEP_MS),
        "interaction_ids": most_entries(POLICY.dedupe_s * 1000 + reach_ms + slack_ms, like_ms),
        "accepted_views": most_entries(POLICY.engagement_lookback_s * 1000 + reach_ms + slack_ms, STEP_MS),
        "likes": most_entries(POLICY.dedupe_s * 1000 + reach_ms + slack_ms, like_ms),
        "repeats": most_entries(repeat_ms + EXPIRY_BUCKET_MS + STEP_MS, STEP_MS),
        "velocity": most_entries(POLICY.velocity_span_s * 1000, STEP_MS) + POLICY.velocity_baseline_minutes + 1,
        "open windows": 2,  # the window of the newest view and, until the watermark passes its deadline, the last
        "settled": (recent_ms + reach_ms + slack_ms) // W_MS + 1,
    }
    feeder = Feeder()
    most: dict[str, int] = dict.fromkeys(bounds, 0)
    for first in range(0, VIEWS_SENT, BATCH):
        events: list[ViewEvent | InteractionEvent] = []
        for n in range(first, first + BATCH):
            events.append(view(n, T0 + n * STEP_MS))
            if n % LIKE_EVERY == 0:
                events.append(like(n, T0 + n * STEP_MS))
        feeder.send(events)
        ledger = feeder.ledger("vid1")
        state = ledger.memory.rules
        sizes = {
            "qualified_at": len(ledger.memory.qualified),
            "recent": len(ledger.memory.recent),
            "view_ids": len(state.view_ids),
            "interaction_ids": len(state.interaction_ids),
            "accepted_views": len(state.accepted_views),
            "likes": len(state.interactions.get("like", ())),
            "repeats": len(state.repeats),
            "velocity": len(state.velocity),
            "open windows": len(ledger.windows),
            "settled": len(ledger.settled),
        }
        most = {name: max(most[name], size) for name, size in sizes.items()}
    assert {name: most[name] <= bound for name, bound in bounds.items()} == dict.fromkeys(bounds, True), (
        most,
        bounds,
    )
    ledger = feeder.ledger("vid1")
    assert ledger.views == VIEWS_SENT and ledger.suspicious_views == 0
    # With 20,000 viewers sent, no memory holds more than about a day and an hour of them (2,641 for the 24 h
    # ones), and only the last few settled windows stay, for clawbacks (not CLAWBACK_HORIZON_S: 168 of them).
    assert bounds["qualified_at"] == 2_641 and bounds["settled"] == 4
    state = ledger.memory.rules

    # ... and nothing a rule can still need was forgotten. The watermark is now the last like's ts; the oldest
    # event still to come that is not late has ts > reach = wm - (W + G); every memory must cover its own span
    # behind that.
    wm = feeder.scorer.watermark
    assert wm == T0 + (VIEWS_SENT - LIKE_EVERY) * STEP_MS
    reach = wm - reach_ms
    sent = [(n, T0 + n * STEP_MS) for n in range(VIEWS_SENT)]
    qualified = ledger.memory.qualified
    assert all(qualified.count_in(f"u{n}", ts, ts) for n, ts in sent if ts > reach - POLICY.qualify_once_s * 1000)
    assert all(state.view_ids.first_seen(f"v{n}") == ts for n, ts in sent if ts > reach - POLICY.dedupe_s * 1000)
    lookback_ms = POLICY.engagement_lookback_s * 1000
    assert all(state.accepted_views.count_in(f"u{n}", ts, ts) == 1 for n, ts in sent if ts > reach - lookback_ms)
    # e.g. qualified_at keeps at least the 2,533 views with ts in (wm - 25 h 5 min, newest]
    assert sum(1 for _, ts in sent if ts > reach - POLICY.qualify_once_s * 1000) == 2_533


def test_a_quiet_videos_memories_are_forgotten_once_the_watermark_passes_their_horizons() -> None:
    feeder = Feeder()
    # 100 viewers watch "quiet" in its first hour, then nobody does
    feeder.send([view(n, T0 + n * 30_000, video="quiet") for n in range(100)])
    # "busy" in the same partition keeps both topics moving, one view and one like every 10 minutes for 28 h:
    # the watermark ends at T0 + 28 h, past a day + window + grace after the last quiet view
    busy: list[ViewEvent | InteractionEvent] = []
    for n in range(100, 100 + 28 * 6 + 1):
        ts = T0 + (n - 100) * 600_000
        busy += [view(n, ts, video="busy"), like(n, ts, video="busy")]
    feeder.send(busy)
    assert feeder.scorer.watermark == T0 + 28 * 3_600_000
    quiet = feeder.ledger("quiet")
    assert quiet.windows_settled == 1 and quiet.views == 100
    # expiry runs when a video's own window settles, so the quiet video still holds its day of viewers ...
    assert not quiet.memory.is_empty()
    # ... until the periodic sweep of videos that went quiet (on a tick, once a minute of wall clock)
    assert feeder.scorer.sweep_quiet_videos(NOW + 60_000) == 1
    memory = quiet.memory
    assert (len(memory.qualified), len(memory.recent), memory.rules.entry_count()) == (0, 0, 0)
    feeder.store.apply(feeder.scorer.flush(NOW + 60_000, Effects()))
    # with nothing left to remember it leaves the working set; its head stays in the store
    assert "quiet" not in {ledger.video_id for ledger in feeder.scorer.ledgers()}
    quiet = feeder.ledger("quiet")
    assert quiet.settled_micros > 0 and quiet.views == 100  # the totals stay: only memories are forgotten


def test_a_device_keeps_only_its_span_plus_grace_and_then_empties() -> None:
    # One view a second for two hours on one device, across videos, judged as streaming/devices.py does it:
    # check_device_burst, then expire_device at the partition's newest ts. check_device_burst first drops the
    # views at or before ts - (DEVICE_BURST_SPAN + GRACE_S) = ts - 360 s: views i-359 .. i-1 stay, plus view i:
    # 360 at most. 60 views in any 60 s span is not "more than 60": no view is flagged.
    keep_ms = (POLICY.device_burst_span_s + POLICY.grace_s) * 1000
    device = DeviceState()
    most = 0
    for i in range(7_200):
        ts = T0 + i * 1_000
        judgement = rules.check_device_burst(
            POLICY, device, ViewEvent(f"v{i}", f"vid{i % 7}", "c1", "u1", "d1", ts, 0, 1, "", "")
        )
        assert judgement.verdict.passed and not judgement.clawbacks
        assert rules.expire_device(POLICY, device, ts) is False
        most = max(most, len(device))
    assert most == keep_ms // 1_000 == 360
    last = T0 + 7_199 * 1_000
    # the last view is forgotten exactly when the watermark reaches its ts + 360 s; then the key may be deleted
    assert rules.expire_device(POLICY, device, last + keep_ms - 1) is False and len(device) == 1
    assert rules.expire_device(POLICY, device, last + keep_ms) is True and len(device) == 0
    assert device.ts == [] and device.event_ids == [] and device.video_ids == []


@pytest.mark.parametrize(
    ("event_cutoff", "newest", "flag_safe", "expected"),
    [
        (1_000, 2_000, None, 1_000),  # device_burst judged here: only the per-video rules decide
        (1_000, 2_000, 500, 500),  # the device judge has acknowledged less: keep for its flags
        (1_000, 2_000, 5_000, 1_000),  # acknowledged more: the per-video rules still need the views
        (1_000, 2_000, -1, -1),  # nothing acknowledged yet: keep everything ...
        (9_000_000, 9_000_000, -1, 9_000_000 - POLICY.device_flag_hold_s * 1000),  # ... up to the hold
    ],
)
def test_recent_views_cutoff(event_cutoff: int, newest: int, flag_safe: int | None, expected: int) -> None:
    assert recent_views_cutoff(POLICY, event_cutoff, newest, flag_safe) == expected
