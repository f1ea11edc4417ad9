"""Creator profile history: which profile was in effect at a given time (SPEC §5 eligible creator)."""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from stream_app.domain.events import CreatorProfile
from stream_app.domain.policy import Policy, is_eligible_creator


@dataclass(slots=True)
class _History:
    # (ts, arrival sequence, profile), sorted: the largest ts <= t wins, a tie goes to the later record.
    entries: list[tuple[int, int, CreatorProfile]] = field(default_factory=list)


class ProfileHistory:
    """Every creator's profiles by `ts`, bounded: entries older than the horizon collapse to the newest of them."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._by_creator: dict[str, _History] = {}
        self._sequence = 0
        self._eligible_now: dict[str, bool] = {}  # cache of eligible_now, per creator, until their next profile

    def __len__(self) -> int:
        return len(self._by_creator)

    def add(self, profile: CreatorProfile) -> None:
        """Record a profile; an older profile arriving after a newer one is kept for its own time only."""
        self._sequence += 1
        self._eligible_now.pop(profile.creator_id, None)
        history = self._by_creator.setdefault(profile.creator_id, _History())
        bisect.insort(history.entries, (profile.ts, self._sequence, profile), key=lambda e: (e[0], e[1]))

    def in_effect(self, creator_id: str, at_ms: int) -> CreatorProfile | None:
        """The profile with the largest ts <= at_ms (ties: the later record), or None."""
        history = self._by_creator.get(creator_id)
        if history is None:
            return None
        position = bisect.bisect_right(history.entries, at_ms, key=lambda e: e[0])
        return history.entries[position - 1][2] if position else None

    def latest(self, creator_id: str) -> CreatorProfile | None:
        history = self._by_creator.get(creator_id)
        return history.entries[-1][2] if history and history.entries else None

    def eligible_at(self, creator_id: str, at_ms: int) -> bool:
        """No profile in effect means not eligible."""
        profile = self.in_effect(creator_id, at_ms)
        return profile is not None and self.profile_eligible(profile)

    def eligible_now(self, creator_id: str) -> bool:
        """Eligibility under the newest profile by ts (the one in effect now)."""
        eligible = self._eligible_now.get(creator_id)
        if eligible is None:
            profile = self.latest(creator_id)
            eligible = self._eligible_now[creator_id] = profile is not None and self.profile_eligible(profile)
        return eligible

    def profile_eligible(self, profile: CreatorProfile) -> bool:
        return is_eligible_creator(
            self._policy,
            followers=profile.followers,
            views_30d=profile.views_30d,
            adult=profile.adult,
            standing=profile.standing,
        )

    def eligible_creators(self) -> int:
        return sum(1 for creator in self._by_creator if self.eligible_now(creator))

    def expire(self, before_ms: int) -> None:
        """Drop profiles that no window at or after `before_ms` can need (keep the newest one before it)."""
        for history in self._by_creator.values():
            position = bisect.bisect_right(history.entries, before_ms, key=lambda e: e[0])
            if position > 1:
                del history.entries[: position - 1]
