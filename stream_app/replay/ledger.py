"""Reconciliation (SPEC §11): the workers' ledger (`reward-settlements`) against the replay's baseline, per video
and window, to the micro.

Both sides are reduced the same way: settlement and clawback records, de-duplicated by (video_id, window_start,
kind) and, for clawbacks, `clawed_base_micros` (README: outputs are at-least-once), summed per video as settled -
clawed back. Only windows both could have settled are compared: starting at or after the first time the replay's
input covers whole (`covered_from_ms`) and due (end + GRACE_S) at or before the replay's present.

A video that differs is explained where the cause is known:
- `flag timing`: a device rule's flag reached one side after the window settled (a clawback at the settled
  multiplier, SPEC §5) and the other before (the view left the window, so its multiplier was computed without it).
  Inherent: the worker's flags make a round trip through the device topics, the replay's return within its batch.
- `device flag not applied`: the ledger pays views the device rules rejected (the replay removed them before the
  window settled) and holds no clawback for them: a worker never applied the flag. Not inherent: investigate.
- `not in the ledger`: the replay settled windows the workers have not written (they are behind, or down).
- `not in the replay`: the ledger has windows the replay did not settle (their input is no longer retained, or
  was outside --from/--to).
Anything else is `unexplained`, and is what a reconciliation is for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.domain.errors import SerializationError

FLAG_TIMING = "flag timing"
FLAG_NOT_APPLIED = "device flag not applied"
NOT_IN_LEDGER = "not in the ledger"
NOT_IN_REPLAY = "not in the replay"
UNEXPLAINED = "unexplained"

EXPLANATIONS = {
    FLAG_TIMING: "a device rule's flag reached one side after the window settled (a clawback at the settled "
    "multiplier, SPEC §5) and the other before it settled (the view left the window before its multiplier was "
    "computed); inherent to flags that make a round trip through the device topics",
    FLAG_NOT_APPLIED: "the ledger pays views of the window that the device rules rejected (the replay removed them "
    "on their flag) and holds no clawback for them: the workers never applied those flags; investigate (the "
    "suspicious-events topic shows which device_burst clawbacks the workers recorded)",
    NOT_IN_LEDGER: "the replay settled windows the workers have not written to the ledger (they are behind, or "
    "stopped)",
    NOT_IN_REPLAY: "the ledger holds windows the replay did not settle (input no longer retained, or outside "
    "--from/--to)",
    UNEXPLAINED: "no known cause: investigate",
}


@dataclass(slots=True)
class WindowMoney:
    settled_micros: int = 0
    clawback_micros: int = 0
    qualified_views: int = 0  # at settlement
    device_clawed: int = 0  # views a device rule clawed back (known on the replay's side only)
    settled: bool = False  # a settlement record was seen
    clawbacks: int = 0  # clawback records

    @property
    def net_micros(self) -> int:
        return self.settled_micros - self.clawback_micros


@dataclass(slots=True)
class LedgerView:
    """Settlement records reduced to money per video and window, with the policies that wrote them."""

    windows: dict[str, dict[int, WindowMoney]] = field(default_factory=dict)
    creators: dict[str, str] = field(default_factory=dict)
    policies: set[str] = field(default_factory=set)
    records: int = 0
    duplicates: int = 0
    unreadable: int = 0

    def net_micros(self, video_id: str) -> int:
        return sum(w.net_micros for w in self.windows.get(video_id, {}).values())


def reduce_ledger(
    records: Iterable[Mapping[str, Any]],
    *,
    covered_from_ms: int | None,
    due_by_ms: int,
    grace_ms: int,
    device_clawed: Mapping[tuple[str, int], int] | None = None,
) -> LedgerView:
    """Reduce settlement/clawback records (as dicts) to money per (video, window), keeping only compared windows;
    `device_clawed` (the replay's side): views a device rule clawed back per (video_id, window_start)."""
    view = LedgerView()
    seen: set[tuple[Any, ...]] = set()
    for record in records:
        view.records += 1
        kind = record.get("kind")
        video_id, start, end = record.get("video_id"), record.get("window_start"), record.get("window_end")
        if kind not in ("settlement", "clawback") or not isinstance(video_id, str) or not isinstance(start, int):
            view.unreadable += 1
            continue
        if not isinstance(end, int) or end + grace_ms > due_by_ms:
            continue
        if covered_from_ms is not None and start < covered_from_ms:
            continue
        identity = (video_id, start, kind, record.get("clawed_base_micros") if kind == "clawback" else None)
        if identity in seen:
            view.duplicates += 1
            continue
        seen.add(identity)
        money = view.windows.setdefault(video_id, {}).setdefault(start, WindowMoney())
        if kind == "settlement":
            money.settled = True
            money.settled_micros += int(record.get("settled_micros", 0))
            money.qualified_views += int(record.get("qualified_views", 0))
        else:
            money.clawbacks += 1
            money.clawback_micros += int(record.get("clawback_micros", 0))
        if device_clawed:
            money.device_clawed = device_clawed.get((video_id, start), 0)
        view.creators.setdefault(video_id, str(record.get("creator_id", "")))
        policy = record.get("policy")
        if isinstance(policy, str):
            view.policies.add(policy)
    return view


def decode_ledger(values: Iterable[bytes | None]) -> tuple[list[dict[str, Any]], int]:
    """Ledger record values as dicts; the second item counts values that are not JSON objects."""
    decoded: list[dict[str, Any]] = []
    bad = 0
    for value in values:
        try:
            record = jsoncodec.loads(value) if value is not None else None
        except SerializationError:
            record = None
        if isinstance(record, dict):
            decoded.append(record)
        else:
            bad += 1
    return decoded, bad


@dataclass(frozen=True, slots=True)
class VideoDifference:
    video_id: str
    creator_id: str
    ledger_net_micros: int
    replay_net_micros: int
    cause: str

    @property
    def diff_micros(self) -> int:
        return self.replay_net_micros - self.ledger_net_micros


@dataclass(slots=True)
class Reconciliation:
    """The replay's baseline against the ledger, over the compared windows."""

    videos_compared: int = 0
    ledger_net_micros: int = 0
    replay_net_micros: int = 0
    differences: list[VideoDifference] = field(default_factory=list)
    ledger_policies: list[str] = field(default_factory=list)
    ledger_records: int = 0
    ledger_duplicates: int = 0

    @property
    def matches(self) -> bool:
        return not self.differences

    def by_cause(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for difference in self.differences:
            counts[difference.cause] = counts.get(difference.cause, 0) + 1
        return dict(sorted(counts.items()))


def reconcile(ledger: LedgerView, replay: LedgerView) -> Reconciliation:
    """Compare per video (both sides reduced by reduce_ledger over the same windows)."""
    result = Reconciliation(
        ledger_policies=sorted(ledger.policies), ledger_records=ledger.records, ledger_duplicates=ledger.duplicates
    )
    for video_id in sorted(ledger.windows.keys() | replay.windows.keys()):
        ours = replay.windows.get(video_id, {})
        theirs = ledger.windows.get(video_id, {})
        replay_net = sum(w.net_micros for w in ours.values())
        ledger_net = sum(w.net_micros for w in theirs.values())
        result.videos_compared += 1
        result.replay_net_micros += replay_net
        result.ledger_net_micros += ledger_net
        if replay_net == ledger_net:
            continue
        creator = replay.creators.get(video_id) or ledger.creators.get(video_id, "")
        result.differences.append(VideoDifference(video_id, creator, ledger_net, replay_net, _cause(ours, theirs)))
    return result


def _cause(ours: Mapping[int, WindowMoney], theirs: Mapping[int, WindowMoney]) -> str:
    settled_ours = {k for k, w in ours.items() if w.settled}
    settled_theirs = {k for k, w in theirs.items() if w.settled}
    if settled_ours - settled_theirs:
        return NOT_IN_LEDGER
    if settled_theirs - settled_ours:
        return NOT_IN_REPLAY
    for k in sorted(settled_ours):
        mine, ledger = ours[k], theirs[k]
        if mine.net_micros == ledger.net_micros:
            continue
        if mine.clawbacks != ledger.clawbacks:
            return FLAG_TIMING
        if mine.device_clawed and ledger.clawbacks == 0 and ledger.qualified_views > mine.qualified_views:
            return FLAG_NOT_APPLIED
    return UNEXPLAINED
