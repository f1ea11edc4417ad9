"""The injected fraud scenarios' builders (`FraudBuilder`: one method per scenario, each returning one instance's
events sorted and labelled as the rules judge them; duplicates come with the organic stream), how many events and
how much event time an instance takes, and the device rules' verdicts that label the device scenarios."""

from __future__ import annotations

import random
from typing import Any

from stream_app.domain.events import InputTopic
from stream_app.domain.policy import Policy
from stream_app.tools.simulator.catalogue import Catalogue, event_id
from stream_app.tools.simulator.malformed import MALFORMATIONS
from stream_app.tools.simulator.scenarios import INVALID, SimEvent, SimulationConfig, at_ms

_DEFAULT_POLICY = Policy()  # the thresholds the labels assume

# Events one injected instance of a scenario is made of (on average); the fraud budget is split in instances.
INSTANCE_EVENTS: dict[str, int] = {
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
INSTANCE_SPAN_MS: dict[str, int] = {
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


class FraudBuilder:
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
            "event_id": event_id(self._rng),
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
        for n, ts in enumerate(self._spread(start, count, INSTANCE_SPAN_MS["device_farm"])):
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
        return sorted(events, key=at_ms)

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
        return sorted(events, key=at_ms)

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
            sorted(videos), kinds, self._spread(start, count, INSTANCE_SPAN_MS["fake_engagement"]), strict=True
        ):
            v = self._cat.videos[video]
            payload = {
                "event_id": event_id(rng),
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
        for ts in self._spread(start, rng.randint(3, 7), INSTANCE_SPAN_MS["impossible_watch"]):
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
        value, keyed = MALFORMATIONS[rng.randrange(len(MALFORMATIONS))](rng, view)
        key = view["video_id"].encode() if keyed else None
        return [SimEvent(topic, value, "malformed", INVALID, start, raw_key=key)]
