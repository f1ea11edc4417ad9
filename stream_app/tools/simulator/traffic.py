"""Seeded traffic simulator behind `stream-app simulate` (SPEC §10): organic platform traffic plus labelled fraud.

Pure: every random draw comes from random.Random streams derived from the seed and event time starts at
`start_ms`; no clock, no I/O (except `write_labels`). The same config always yields the same events.
"""

from __future__ import annotations

import heapq
import random
from bisect import bisect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.domain.errors import ConfigError
from stream_app.domain.events import InputTopic
from stream_app.domain.policy import Policy

ORGANIC = "organic"
_DEFAULT_POLICY = Policy()  # the thresholds the labels assume
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

# Events one injected instance of a scenario is made of (on average); the fraud budget is split in instances.
_INSTANCE_EVENTS: dict[str, int] = {
    "repeat_viewer": 25,
    "device_farm": 125,
    "farm_under_threshold": 490,
    "account_farm": 180,
    "overlap_bot": 40,
    "velocity_burst": 1000,
    "fake_engagement": 10,
    "duplicate": 1,
    "impossible_watch": 5,
    "malformed": 1,
}
# The event-time span one instance occupies (ms), so instances are spread over the run and fit inside it.
_INSTANCE_SPAN_MS: dict[str, int] = {
    "repeat_viewer": 420_000,
    "device_farm": 50_000,
    "farm_under_threshold": 135_000,
    "account_farm": 620_000,
    "overlap_bot": 246_000,
    "velocity_burst": 50_000,
    "fake_engagement": 120_000,
    "impossible_watch": 60_000,
    "malformed": 0,
}
# Fixed order in which the per-component random streams are drawn from the seed: adding a scenario to `fraud`
# never changes the catalogue, and the scenarios never disturb one another's draws.
_COMPONENTS = ("catalogue", "organic", *sorted(FRAUD_SCENARIOS))

# Where viewers are (weights roughly follow a large short-video platform's audience).
REGION_WEIGHTS: dict[str, int] = {
    "US": 20,
    "IN": 16,
    "BR": 10,
    "ID": 8,
    "GB": 6,
    "DE": 5,
    "MX": 5,
    "FR": 4,
    "JP": 4,
    "PH": 4,
    "TR": 3,
    "CA": 3,
    "AU": 2,
    "NG": 2,
    "EG": 2,
    "VN": 2,
    "ES": 2,
    "IT": 2,
}
# Where a view came from: the recommendation feed dominates.
SOURCE_WEIGHTS: dict[str, int] = {"for_you": 76, "following": 10, "profile": 7, "search": 5, "ad": 2}

# Organic behaviour. The bounds marked "by construction" are what keep organic traffic clear of SPEC §6.
_MEAN_SESSION_VIEWS = 7.5  # 1 + a rounded exponential draw of mean 6.5 (capped at 60, which hardly matters)
_MEAN_VIEW_STEP_MS = 48_000  # measured mean time from one view of a session to the next (watch + gap)
_MAX_VIEW_STEP_MS = 180_000 * 5 // 2 + 3_000  # longest video, watched 2.5 times, plus the longest gap
_MAX_SESSION_VIEWS = 60
# By construction: views of a session are sequential (the next starts 300-3_000 ms after the last ended, and lasts
# at least 700 ms), so a device never shows two videos at once (device_overlap) nor more than 60 views in 60 s
# (view ends at least 1_000 ms apart: device_burst).
_THINK_MS = (300, 3_000)
_OWN_TABLET_P = 0.07  # a viewer who also watches on a tablet of their own
_FAMILY_TABLET_P = 0.09  # a viewer who shares a family tablet
_SECOND_DEVICE_SESSION_P = 0.3  # a session on the second device, when it is free
_MAX_VIEWS_PER_VIDEO = 2  # by construction: far under viewer_repeat (6), and distinct viewers >= half (velocity)
_REWATCH_P = 0.15  # chance a viewer who drew a video they saw once watches it again
_SESSION_BREAK_MS = (20_000, 900_000)  # pause between two sessions of one viewer
_VIEWER_MEMORY_MS = 90_000_000  # > DEDUPE_S (24 h): after this idle time a viewer's history is forgotten
_VIEWER_TRIES = 8
_VIDEO_TRIES = 6
# Interactions per kind for a view watched to >= 90 % / to >= 30 % of the video; none below that.
# Tuned so the engagement multiplier of SPEC §5 comes out near 1.0x on organic traffic.
_ENGAGED_KINDS: tuple[tuple[str, float], ...] = (
    ("like", 0.065),
    ("comment", 0.01),
    ("share", 0.0065),
    ("follow", 0.005),
)
_CASUAL_KINDS: tuple[tuple[str, float], ...] = (
    ("like", 0.016),
    ("comment", 0.0026),
    ("share", 0.0013),
    ("follow", 0.0007),
)
# Interactions per view of the distributions above, measured on 120k simulated views; turns an event rate into a
# view rate.
_INTERACTIONS_PER_VIEW = 0.028
_ONCE_KINDS = {"like": 4, "follow": 8}  # at most one per viewer and video (duplicate_interaction): flag bits
_COUNT_MASK = 3


def _event_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


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


@dataclass(frozen=True, slots=True)
class Video:
    video_id: str
    creator_id: str
    video_ms: int


class Catalogue:
    """Creators, videos ranked by popularity (index 0 most viewed) and the viewer population of one run."""

    def __init__(self, config: SimulationConfig, rng: random.Random) -> None:
        self.tag = f"{rng.getrandbits(24):06x}"  # keeps ids of runs with different seeds apart
        self.profiles = [self._profile(rng, i, config.start_ms) for i in range(config.creators)]
        # Bigger creators (more followers) publish more videos: creator picked by a Zipf law over follower rank.
        by_followers = sorted(self.profiles, key=lambda p: (-p["followers"], p["creator_id"]))
        creator_cum = list(accumulate(1.0 / (rank + 1) ** 0.8 for rank in range(len(by_followers))))
        self.videos = [
            Video(
                f"vd-{self.tag}-{i:06d}",
                by_followers[bisect(creator_cum, rng.random() * creator_cum[-1])]["creator_id"],
                _video_ms(rng),
            )
            for i in range(config.videos)
        ]
        # Zipf-Mandelbrot popularity: a heavy head and a long tail, the head flattened a little by the offset.
        self.popularity = list(accumulate(1.0 / (rank + 3) ** 1.05 for rank in range(config.videos)))
        self.viewers = config.viewer_count
        regions, weights = zip(*REGION_WEIGHTS.items(), strict=True)
        self.viewer_regions = rng.choices(regions, weights, k=self.viewers)
        # Every viewer has a phone. Some also watch on a tablet of their own; some share a family tablet with one
        # to three others (2-4 accounts on one screen, far under ACCOUNTS_PER_DEVICE).
        self.second_device: dict[int, str] = {}
        family: list[int] = []
        for i in range(self.viewers):
            roll = rng.random()
            if roll < _OWN_TABLET_P:
                self.second_device[i] = f"dv-{self.tag}-{i:07d}t"
            elif roll < _OWN_TABLET_P + _FAMILY_TABLET_P:
                family.append(i)
        households = 0
        while family:
            size = rng.randint(2, 4)
            tablet = f"dv-{self.tag}-h{households:06d}"
            households += 1
            for member in family[:size]:
                self.second_device[member] = tablet
            family = family[size:]
        self._actors = 0

    @staticmethod
    def _profile(rng: random.Random, index: int, ts: int) -> dict[str, Any]:
        followers = min(int(7_000 * rng.paretovariate(1.1)), 300_000_000)
        roll = rng.random()
        standing = "banned" if roll < 0.01 else "restricted" if roll < 0.06 else "good"
        return {
            "creator_id": f"cr-{index:05d}",
            "followers": followers,
            "views_30d": int(followers * rng.uniform(2.0, 25.0)),
            "adult": rng.random() < 0.97,
            "standing": standing,
            "ts": ts,
        }

    def viewer_id(self, viewer: int) -> str:
        return f"u-{self.tag}-{viewer:07d}"

    def phone(self, viewer: int) -> str:
        return f"dv-{self.tag}-{viewer:07d}"

    def pick_video(self, rng: random.Random) -> int:
        """A video index drawn by popularity."""
        return bisect(self.popularity, rng.random() * self.popularity[-1])

    def pick_video_outside(self, rng: random.Random, excluded: frozenset[int] | set[int]) -> int:
        """A video index drawn by popularity, not in `excluded` (the catalogue always has more videos)."""
        while True:
            video = self.pick_video(rng)
            if video not in excluded:
                return video

    def new_actor(self, kind: str) -> tuple[str, str]:
        """A fresh (viewer_id, device_id) for a fraud actor, never one of the organic population."""
        self._actors += 1
        return f"u-{self.tag}-{kind}{self._actors:06d}", f"dv-{self.tag}-{kind}{self._actors:06d}"


def _video_ms(rng: random.Random) -> int:
    # Most videos run just over a minute (the pay threshold), a long tail runs to 3 min; a third are shorts.
    roll = rng.random()
    if roll < 0.45:
        return rng.randint(60_000, 90_000)
    if roll < 0.65:
        return rng.randint(90_001, 180_000)
    return rng.randint(8_000, 59_999)


def _watch_ms(rng: random.Random, video_ms: int) -> int:
    roll = rng.random()
    if roll < 0.3:  # swiped away
        return rng.randint(700, 4_000)
    if roll < 0.8:  # watched part of it
        return int(video_ms * rng.uniform(0.1, 1.0))
    return int(video_ms * rng.uniform(1.0, 2.5))  # watched to the end, maybe looped once (far from 20x)


def _table(weights: dict[str, int]) -> list[str]:
    """A 100-slot lookup table (one rng.random() per draw, faster than random.choices)."""
    total = sum(weights.values())
    table = [name for name, weight in weights.items() for _ in range(round(weight * 100 / total))]
    return (table + table[-1:] * 100)[:100]


_SOURCES = _table(SOURCE_WEIGHTS)


class _Session:
    __slots__ = ("device", "in_flight", "remaining", "viewer")

    def __init__(self, viewer: int, device: str, remaining: int, in_flight: bool) -> None:
        self.viewer = viewer
        self.device = device
        self.remaining = remaining
        self.in_flight = in_flight  # caught mid-view when the run starts: its first view ends when it comes up


class _OrganicTraffic:
    """Viewer sessions: each a run of views picked by popularity, some followed by interactions.

    Per viewer it remembers, per video, how often they watched it and whether they liked/followed it, which is
    what keeps organic traffic clean of viewer_repeat, velocity_burst and duplicate_interaction by construction.
    """

    def __init__(
        self,
        config: SimulationConfig,
        catalogue: Catalogue,
        rng: random.Random,
        rate_per_s: float,
        no_rewatch: frozenset[int],
    ) -> None:
        self._config = config
        self._cat = catalogue
        self._rng = rng
        self._no_rewatch = no_rewatch
        views_per_ms = rate_per_s / (1 + _INTERACTIONS_PER_VIEW) / 1000
        self._sessions_per_ms = views_per_ms / _MEAN_SESSION_VIEWS
        self._history: dict[int, dict[int, int]] = {}  # viewer -> video -> count | like/follow flag bits
        self._active: set[int] = set()
        self._last_end: dict[int, int] = {}
        self._busy: set[str] = set()  # devices in a session
        self._device_free_at: dict[str, int] = {}  # device -> when its last session's last view ended
        self._heap: list[tuple[int, int, _Session | SimEvent]] = []
        self._seq = 0

    def events(self) -> Iterator[SimEvent]:
        end = self._config.end_ms
        heap = self._heap
        rng = self._rng
        start = self._config.start_ms
        # Start in the steady state: the sessions in flight at any instant (Little's law: start rate x time from
        # first to last view) are already running; a session's length is memoryless, so one caught mid-way has
        # the same law of remaining views as a new one. Caught mid-way, its current view ends a little after the
        # run starts (it began before).
        for _ in range(round(self._sessions_per_ms * (_MEAN_SESSION_VIEWS - 1) * _MEAN_VIEW_STEP_MS)):
            self._start_session(start + self._in_flight_delay(), in_flight=True)
        next_start = start + rng.expovariate(self._sessions_per_ms)
        while True:
            if heap and heap[0][0] <= next_start:
                ts, _, item = heapq.heappop(heap)
                if ts >= end:
                    return
                if isinstance(item, SimEvent):
                    yield item
                    continue
                self._view(item, ts)
            else:
                if next_start >= end:
                    return
                self._start_session(int(next_start))
                next_start += rng.expovariate(self._sessions_per_ms)

    def _push(self, ts: int, item: _Session | SimEvent) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (ts, self._seq, item))

    def _start_session(self, now: int, in_flight: bool = False) -> None:
        rng = self._rng
        n = self._cat.viewers
        for _ in range(_VIEWER_TRIES):
            viewer = rng.randrange(n)
            if viewer in self._active:
                continue
            # A viewer who just closed the app does not start a new session at once.
            last_end = self._last_end.get(viewer)
            if last_end is None or last_end + rng.randint(*_SESSION_BREAK_MS) <= now:
                break
        else:
            return  # the population is saturated at this rate: fewer sessions rather than overlapping ones
        if last_end is not None and now - last_end > _VIEWER_MEMORY_MS:
            self._history.pop(viewer, None)  # bounded memory: history this old can no longer trip a rule
        device = self._cat.phone(viewer)
        second = self._cat.second_device.get(viewer)
        # The second device when it is free: a family tablet may be in another member's hands (one screen, one
        # video at a time: sessions on a device never overlap).
        if second is not None and rng.random() < _SECOND_DEVICE_SESSION_P and self._free(second, now):
            device = second
        length = min(_MAX_SESSION_VIEWS, 1 + round(rng.expovariate(1 / (_MEAN_SESSION_VIEWS - 1.0))))
        self._active.add(viewer)
        self._busy.add(device)
        self._push(now, _Session(viewer, device, length, in_flight))

    def _free(self, device: str, now: int) -> bool:
        return device not in self._busy and self._device_free_at.get(device, now) <= now

    def _in_flight_delay(self) -> int:
        """Time to the end of the current view of a session caught mid-way: uniform within a step drawn
        length-biased."""
        rng = self._rng
        while True:
            step = _watch_ms(rng, _video_ms(rng)) + rng.randint(*_THINK_MS)
            if rng.random() * _MAX_VIEW_STEP_MS < step:
                return rng.randrange(step)

    def _pick(self, history: dict[int, int]) -> int:
        rng = self._rng
        for _ in range(_VIDEO_TRIES):
            video = self._cat.pick_video(rng)
            count = history.get(video, 0) & _COUNT_MASK
            if count == 0:
                return video
            if count < _MAX_VIEWS_PER_VIDEO and video not in self._no_rewatch and rng.random() < _REWATCH_P:
                return video
        return -1

    def _view(self, session: _Session, start: int) -> None:
        """The session's next view starts at `start` (ends then, for a session caught mid-view when the run
        starts); it is reported when it ends (SPEC §3: its watch interval on the device is [ts - watch_ms, ts]),
        and the next one starts after some think time."""
        rng = self._rng
        viewer = session.viewer
        history = self._history.setdefault(viewer, {})
        index = self._pick(history)
        if index < 0:
            self._end_session(session, start)
            return
        history[index] = history.get(index, 0) + 1
        video = self._cat.videos[index]
        watch_ms = _watch_ms(rng, video.video_ms)
        end = start + watch_ms
        if session.in_flight:  # it began before the run: no interactions from the part we do not simulate
            session.in_flight = False
            end = start
        payload = {
            "event_id": _event_id(rng),
            "video_id": video.video_id,
            "creator_id": video.creator_id,
            "viewer_id": self._cat.viewer_id(viewer),
            "device_id": session.device,
            "ts": end,
            "watch_ms": watch_ms,
            "video_ms": video.video_ms,
            "source": _SOURCES[int(rng.random() * 100)],
            "region": self._cat.viewer_regions[viewer],
        }
        if start < end < self._config.end_ms:  # a view still playing when the run ends is never reported, nor liked
            self._interactions(payload, history, index, watch_ms / video.video_ms)
        session.remaining -= 1
        if session.remaining > 0:
            self._push(end + rng.randint(*_THINK_MS), session)
        else:
            self._end_session(session, end)
        self._push(end, SimEvent(InputTopic.VIEWS, payload, ORGANIC, None, end))

    def _interactions(self, view: dict[str, Any], history: dict[int, int], index: int, watched: float) -> None:
        if watched < 0.3:
            return
        rng = self._rng
        for kind, chance in _ENGAGED_KINDS if watched >= 0.9 else _CASUAL_KINDS:
            if rng.random() >= chance:
                continue
            flag = _ONCE_KINDS.get(kind, 0)
            if history[index] & flag:
                continue
            history[index] |= flag
            # During the watch, in its last minute (so the view, reported when it ends, is within GRACE_S of it).
            ts = view["ts"] - rng.randint(0, max(0, min(view["watch_ms"], 60_000) - 300))
            payload = {
                "event_id": _event_id(rng),
                "video_id": view["video_id"],
                "creator_id": view["creator_id"],
                "viewer_id": view["viewer_id"],
                "device_id": view["device_id"],
                "ts": ts,
                "kind": kind,
            }
            self._push(ts, SimEvent(InputTopic.INTERACTIONS, payload, ORGANIC, None, ts))

    def _end_session(self, session: _Session, ts: int) -> None:
        self._active.discard(session.viewer)
        self._last_end[session.viewer] = ts
        self._busy.discard(session.device)
        self._device_free_at[session.device] = ts


def _with_duplicates(events: Iterator[SimEvent], rng: random.Random, share: float, end_ms: int) -> Iterator[SimEvent]:
    """The organic stream with some events delivered twice (same event_id, same payload), a little later."""
    pending: list[tuple[int, int, SimEvent]] = []
    seq = 0
    for event in events:
        while pending and pending[0][0] <= event.at_ms:
            yield heapq.heappop(pending)[2]
        yield event
        if rng.random() < share:
            at = event.at_ms + rng.randint(200, 30_000)  # a producer retry or an at-least-once redelivery
            if at < end_ms:
                assert isinstance(event.payload, dict)
                copy = SimEvent(event.topic, dict(event.payload), "duplicate", "duplicate_event", at)
                seq += 1
                heapq.heappush(pending, (at, seq, copy))
    while pending:
        yield heapq.heappop(pending)[2]


def device_verdicts(views: list[dict[str, Any]]) -> list[str | None]:
    """device_overlap and account_farm as SPEC §6 defines them (default thresholds), for the views of one device
    that sees no other traffic and stays under device_burst: in order of the views' ends (ts, then event_id), a
    view is device_overlap when it overlaps the views kept so far by more than OVERLAP_TOLERANCE_MS in total, else
    account_farm when its account is the device's 9th or later in order of first view, else kept. The labels of
    the device scenarios; returned in the order of `views`."""
    policy = _DEFAULT_POLICY
    kept: list[tuple[int, int]] = []
    accounts: dict[str, int] = {}
    reasons: dict[int, str | None] = {}
    for k in sorted(range(len(views)), key=lambda k: (views[k]["ts"], views[k]["event_id"])):
        end = views[k]["ts"]
        start = end - views[k]["watch_ms"]
        since = end - policy.device_memory_s * 1000
        overlap = sum(max(0, min(e, end) - max(s, start)) for s, e in kept if e > since)
        number = accounts.setdefault(views[k]["viewer_id"], len(accounts) + 1)
        if overlap > policy.overlap_tolerance_ms:
            reasons[k] = "device_overlap"
        elif number > policy.accounts_per_device:
            reasons[k] = "account_farm"
        else:
            reasons[k] = None
            kept.append((start, end))
    return [reasons[k] for k in range(len(views))]


class _Fraud:
    """Builders of one instance of each scenario; each returns its events sorted by ts, labelled."""

    def __init__(self, config: SimulationConfig, catalogue: Catalogue, rng: random.Random, targets: list[int]) -> None:
        self._config = config
        self._cat = catalogue
        self._rng = rng
        self._targets = targets  # velocity-burst videos, reserved: no other scenario touches them
        self._reserved = frozenset(targets)
        self._instances = 0

    def _view(self, viewer: str, device: str, video: int, ts: int, watch_ms: int, region: str) -> dict[str, Any]:
        v = self._cat.videos[video]
        return {
            "event_id": _event_id(self._rng),
            "video_id": v.video_id,
            "creator_id": v.creator_id,
            "viewer_id": viewer,
            "device_id": device,
            "ts": ts,
            "watch_ms": watch_ms,
            "video_ms": v.video_ms,
            "source": "for_you",
            "region": region,
        }

    def _spread(self, start: int, count: int, span: int) -> list[int]:
        """`count` sorted timestamps in [start, start + span), within the run."""
        span = max(1, min(span, self._config.end_ms - start))
        return sorted(start + self._rng.randrange(span) for _ in range(count))

    def _region(self) -> str:
        # Fraud pays most where the base rate is highest.
        return "US" if self._rng.random() < 0.6 else self._cat.viewer_regions[self._rng.randrange(100)]

    def repeat_viewer(self, start: int) -> list[SimEvent]:
        """One viewer looping one video 20-30 times within 7 minutes: views 6+ are viewer_repeat."""
        rng = self._rng
        viewer, device = self._cat.new_actor("rv")
        video = self._cat.pick_video_outside(rng, self._reserved)
        region = self._region()
        count = rng.randint(20, 30)
        # Evenly paced (a looping bot), all inside viewer_repeat's 600 s span; one loop ends before the next starts
        # (a run too short for 9 s steps gets shorter loops).
        step = min(rng.randint(9_000, 14_000), max(1, (self._config.end_ms - start) // count))
        events = []
        for n in range(count):
            watch = min(rng.randint(5_000, 9_000), step)
            payload = self._view(viewer, device, video, start + n * step, watch, region)
            reason = "viewer_repeat" if n >= 5 else None
            events.append(SimEvent(InputTopic.VIEWS, payload, "repeat_viewer", reason, payload["ts"]))
        return events

    def device_farm(self, start: int) -> list[SimEvent]:
        """One device (a phone farm) cycling 15-30 accounts over 100-150 videos in under a minute: all flagged."""
        rng = self._rng
        accounts = [self._cat.new_actor("df")[0] for _ in range(rng.randint(15, 30))]
        _, device = self._cat.new_actor("df")
        count = rng.randint(100, 150)
        candidates = rng.sample(range(len(self._cat.videos)), min(len(self._cat.videos), count + len(self._targets)))
        videos = [v for v in candidates if v not in self._reserved][:count]
        region = self._region()
        events = []
        for n, ts in enumerate(self._spread(start, count, _INSTANCE_SPAN_MS["device_farm"])):
            # (account, video) pairs repeat at most ceil(150 / 45) times: never a viewer_repeat.
            payload = self._view(
                accounts[n % len(accounts)], device, videos[n % len(videos)], ts, rng.randint(5_000, 8_000), region
            )
            events.append(SimEvent(InputTopic.VIEWS, payload, "device_farm", "device_burst", ts))
        return events

    def _paying_video(self) -> int:
        """A video a farm is paid for (over a minute long), drawn evenly, never a velocity-burst target."""
        rng = self._rng
        while True:
            video = rng.randrange(len(self._cat.videos))
            if video not in self._reserved and self._cat.videos[video].video_ms >= 60_000:
                return video

    def _device_events(self, label: str, views: list[dict[str, Any]]) -> list[SimEvent]:
        """One fresh device's views, labelled as device_overlap and account_farm judge them."""
        reasons = device_verdicts(views)
        return [
            SimEvent(InputTopic.VIEWS, view, label, reason, view["ts"])
            for view, reason in zip(views, reasons, strict=True)
        ]

    def farm_under_threshold(self, start: int) -> list[SimEvent]:
        """Issue 11's farm: 4-8 phones, each just under device_burst's 60 views per 60 s (every minute for 1-2
        minutes, 50-58 views within 10 s at the same offsets, so no 60 s span holds more), a fresh account for
        every view, 6-9 s of watch, on paying videos. Each phone's first view passes (no rule can tell it from a
        person); the views overlapping it are device_overlap, the others account_farm (accounts 9 and later)."""
        rng = self._rng
        region = self._region()
        events: list[SimEvent] = []
        for _ in range(rng.randint(4, 8)):
            _, device = self._cat.new_actor("fu")
            per_minute = rng.randint(50, 58)
            step = 10_000 // per_minute
            watch = rng.randint(6_000, 9_000)
            first = start + rng.randrange(5_000)
            views: list[dict[str, Any]] = []
            for minute in range(rng.randint(1, 2)):
                for j in range(per_minute):
                    ts = first + minute * 60_000 + j * step
                    if ts < self._config.end_ms:
                        viewer = self._cat.new_actor("fu")[0]
                        views.append(self._view(viewer, device, self._paying_video(), ts, watch, region))
            events += self._device_events("farm_under_threshold", views)
        return sorted(events, key=_at_ms)

    def account_farm(self, start: int) -> list[SimEvent]:
        """2-4 phones, each cycling 20-40 accounts in turn for 5-10 minutes: sequential views of 5-9 s (just
        qualifying), 0.3-1.5 s apart (never two at once, far under 60 a minute), on paying videos. On each phone
        the first 8 accounts (in order of first view) pass; every view of the 9th and later ones is account_farm."""
        rng = self._rng
        region = self._region()
        events: list[SimEvent] = []
        for _ in range(rng.randint(2, 4)):
            _, device = self._cat.new_actor("af")
            accounts = [self._cat.new_actor("af")[0] for _ in range(rng.randint(20, 40))]
            t = start + rng.randrange(10_000)
            stop = min(start + rng.randint(300_000, 600_000), self._config.end_ms)
            views: list[dict[str, Any]] = []
            while True:
                watch = rng.randint(5_000, 9_000)
                if t + watch >= stop:
                    break
                account = accounts[len(views) % len(accounts)]
                views.append(self._view(account, device, self._paying_video(), t + watch, watch, region))
                t += watch + rng.randint(300, 1_500)
            events += self._device_events("account_farm", views)
        return sorted(events, key=_at_ms)

    def overlap_bot(self, start: int) -> list[SimEvent]:
        """One account on one phone playing 3-5 videos at once for 2-4 minutes: each player sequential (8-30 s
        views, 0.2-1 s apart), the players side by side. One screen's worth of views can be real and passes;
        device_overlap rejects the rest (judged in order of the views' ends)."""
        rng = self._rng
        viewer, device = self._cat.new_actor("ob")
        region = self._region()
        stop = min(start + rng.randint(120_000, 240_000), self._config.end_ms)
        seen: set[int] = set()
        views: list[dict[str, Any]] = []
        for _ in range(rng.randint(3, 5)):
            t = start + rng.randrange(5_000)
            while True:
                watch = rng.randint(8_000, 30_000)
                if t + watch >= stop:
                    break
                video = self._paying_video()
                while video in seen:  # one account never repeats a video (no viewer_repeat)
                    video = self._paying_video()
                seen.add(video)
                views.append(self._view(viewer, device, video, t + watch, watch, region))
                t += watch + rng.randint(200, 1_000)
        views.sort(key=lambda view: (view["ts"], view["event_id"]))
        return self._device_events("overlap_bot", views)

    def velocity_burst(self, start: int) -> list[SimEvent]:
        """1000 views of one tail video in 50 s from 250 accounts (own devices), 4 each: repeats are flagged.

        4 views per account stays under viewer_repeat (6) and 1 device each under device_burst, so the
        velocity rule is the one that fires; it flags each viewer's views after their first in the span. An
        account's views are 10-13 s apart and last at most 10 s: one screen, one video at a time.
        """
        rng = self._rng
        video = self._targets[self._instances % len(self._targets)]
        self._instances += 1
        views: list[tuple[int, int, dict[str, Any]]] = []
        for _ in range(250):
            viewer, device = self._cat.new_actor("vb")
            ts = start + rng.randrange(8_000)
            for n in range(4):
                if ts < self._config.end_ms:
                    payload = self._view(viewer, device, video, ts, rng.randint(5_000, 10_000), self._region())
                    views.append((ts, n, payload))
                ts += rng.randint(10_000, 13_000)
        return [
            SimEvent(InputTopic.VIEWS, payload, "velocity_burst", "velocity_burst" if n else None, ts)
            for ts, n, payload in sorted(views, key=lambda item: item[0])
        ]

    def fake_engagement(self, start: int) -> list[SimEvent]:
        """A bot account liking/following/commenting on 6-14 videos it never viewed."""
        rng = self._rng
        viewer, device = self._cat.new_actor("fe")
        count = rng.randint(6, 14)
        videos: set[int] = set()
        while len(videos) < count:
            videos.add(self._cat.pick_video_outside(rng, self._reserved))
        kinds = rng.choices(("like", "follow", "comment", "share"), (60, 20, 15, 5), k=count)
        events = []
        for video, kind, ts in zip(
            sorted(videos), kinds, self._spread(start, count, _INSTANCE_SPAN_MS["fake_engagement"]), strict=True
        ):
            v = self._cat.videos[video]
            payload = {
                "event_id": _event_id(rng),
                "video_id": v.video_id,
                "creator_id": v.creator_id,
                "viewer_id": viewer,
                "device_id": device,
                "ts": ts,
                "kind": kind,
            }
            events.append(SimEvent(InputTopic.INTERACTIONS, payload, "fake_engagement", "engagement_without_view", ts))
        return events

    def impossible_watch(self, start: int) -> list[SimEvent]:
        """A tampered client reporting 3-7 views whose watch time is 20x-200x the video's length."""
        rng = self._rng
        viewer, device = self._cat.new_actor("iw")
        region = self._region()
        events = []
        for ts in self._spread(start, rng.randint(3, 7), _INSTANCE_SPAN_MS["impossible_watch"]):
            video = self._cat.pick_video_outside(rng, self._reserved)
            video_ms = self._cat.videos[video].video_ms
            payload = self._view(viewer, device, video, ts, video_ms * 20 + rng.randint(1, video_ms * 180), region)
            events.append(SimEvent(InputTopic.VIEWS, payload, "impossible_watch", "impossible_watch", ts))
        return events

    def malformed(self, start: int) -> list[SimEvent]:
        """One record the worker must dead-letter as exactly one invalid event."""
        rng = self._rng
        viewer, device = self._cat.new_actor("mf")
        video = self._cat.pick_video(rng)
        view = self._view(viewer, device, video, start, rng.randint(1_000, 30_000), self._region())
        topic = InputTopic.VIEWS
        if rng.random() < 0.25:
            topic = InputTopic.INTERACTIONS
            view = {k: view[k] for k in ("event_id", "video_id", "creator_id", "viewer_id", "device_id", "ts")}
            view["kind"] = "like"
        value, keyed = _MALFORMATIONS[rng.randrange(len(_MALFORMATIONS))](rng, view)
        key = view["video_id"].encode() if keyed else None
        return [SimEvent(topic, value, "malformed", INVALID, start, raw_key=key)]


# --- malformed records: each returns (record value, whether the record is keyed by its video_id) -------------


def _not_json(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    return rng.choice((b"<html><body>502 Bad Gateway</body></html>", b"video_id=abc&ts=12", b"{'ts': 1}")), False


def _invalid_utf8(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    return b'{"event_id": "\xff\xfe\xfd", "ts": ' + str(event["ts"]).encode() + b"}", False


def _truncated(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    data = jsoncodec.dumps(event)
    return data[: rng.randint(1, len(data) - 1)], True


def _missing_field(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    broken = dict(event)
    del broken[rng.choice(sorted(set(event) - {"video_id"}))]
    return jsoncodec.dumps(broken), True


def _wrong_type(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    broken = dict(event)
    field_name, value = rng.choice(
        (
            ("ts", event["ts"] + 0.5),
            ("ts", str(event["ts"])),
            ("viewer_id", 12345),
            ("device_id", None),
            ("event_id", True),
        )
        + ((("watch_ms", str(event["watch_ms"])), ("video_ms", True)) if "watch_ms" in event else ())
    )
    broken[field_name] = value
    return jsoncodec.dumps(broken), True


def _out_of_range(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    broken = dict(event)
    if "region" in event:
        broken.update(rng.choice(({"region": "usa"}, {"region": "U1"}, {"watch_ms": -1}, {"video_ms": 0})))
    else:
        broken["ts"] = -1
    return jsoncodec.dumps(broken), True


def _not_an_object(rng: random.Random, event: dict[str, Any]) -> tuple[bytes, bool]:
    return rng.choice((b"[]", b"42", b'"view"', b"null", b"true")), False


_MALFORMATIONS: tuple[Callable[[random.Random, dict[str, Any]], tuple[bytes, bool]], ...] = (
    _not_json,
    _invalid_utf8,
    _truncated,
    _missing_field,
    _wrong_type,
    _out_of_range,
    _not_an_object,
)


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
    return {name: max(1, round(budget / _INSTANCE_EVENTS[name])) for name in sorted(config.fraud)}


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
    organic = _OrganicTraffic(config, catalogue, rngs["organic"], organic_rate, frozenset(targets)).events()
    if "duplicate" in counts:
        share = counts["duplicate"] / max(1.0, config.rate_per_s * config.duration_s * (1 - config.fraud_share))
        organic = _with_duplicates(organic, rngs["duplicate"], share, config.end_ms)
    streams = [organic]
    for name in sorted(counts.keys() - {"duplicate"}):
        rng = rngs[name]
        fraud = _Fraud(config, catalogue, rng, targets)
        starts = _instance_starts(config, rng, counts[name], _INSTANCE_SPAN_MS[name])
        streams.append(_instances(starts, getattr(fraud, name)))
    yield from heapq.merge(*streams, key=_at_ms)


def _at_ms(event: SimEvent) -> int:
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
