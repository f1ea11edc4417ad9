"""The world a run happens in: creators and their profiles, videos ranked by popularity, the viewer population
and its phones, tablets and family tablets (`Catalogue`); and the draws every traffic source shares (a video's
length, a watch time, a view's source, an event id)."""

from __future__ import annotations

import random
from bisect import bisect
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from stream_app.tools.simulator.scenarios import SimulationConfig

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

_OWN_TABLET_P = 0.07  # a viewer who also watches on a tablet of their own
_FAMILY_TABLET_P = 0.09  # a viewer who shares a family tablet


def event_id(rng: random.Random) -> str:
    return f"{rng.getrandbits(128):032x}"


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
                video_ms_draw(rng),
            )
            for i in range(config.videos)
        ]
        # Zipf-Mandelbrot popularity: a heavy head and a long tail, the head flattened a little by the offset.
        self.popularity = list(accumulate(1.0 / (rank + 3) ** 1.05 for rank in range(config.videos)))
        self.viewers = config.viewer_count
        regions, weights = zip(*REGION_WEIGHTS.items(), strict=True)
        self.viewer_regions = rng.choices(regions, weights, k=self.viewers)
        self.second_device = self._second_devices(rng)
        self._actors = 0

    def _second_devices(self, rng: random.Random) -> dict[int, str]:
        """Viewer -> a second device. Every viewer has a phone. Some also watch on a tablet of their own; some share
        a family tablet with one to three others (2-4 accounts on one screen, far under ACCOUNTS_PER_DEVICE)."""
        second_device: dict[int, str] = {}
        family: list[int] = []
        for i in range(self.viewers):
            roll = rng.random()
            if roll < _OWN_TABLET_P:
                second_device[i] = f"dv-{self.tag}-{i:07d}t"
            elif roll < _OWN_TABLET_P + _FAMILY_TABLET_P:
                family.append(i)
        households = 0
        start = 0  # the first member of the next household (slicing the rest off each time was quadratic)
        while start < len(family):
            size = rng.randint(2, 4)
            tablet = f"dv-{self.tag}-h{households:06d}"
            households += 1
            for member in family[start : start + size]:
                second_device[member] = tablet
            start += size
        return second_device

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


def video_ms_draw(rng: random.Random) -> int:
    # Most videos run just over a minute (the pay threshold), a long tail runs to 3 min; a third are shorts.
    roll = rng.random()
    if roll < 0.45:
        return rng.randint(60_000, 90_000)
    if roll < 0.65:
        return rng.randint(90_001, 180_000)
    return rng.randint(8_000, 59_999)


def watch_ms_draw(rng: random.Random, video_ms: int) -> int:
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


SOURCES = _table(SOURCE_WEIGHTS)
