"""SPEC §6 device_overlap and account_farm (after device_burst), with hand-worked numbers; the canonical order that
makes them independent of arrival order; DeviceState's stored form and its migration from format 1."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain import jsoncodec
from stream_app.domain.device_records import DeviceFlag, DeviceView
from stream_app.domain.errors import SerializationError, StateFormatError
from stream_app.domain.policy import Policy
from stream_app.domain.rules import (
    Reason,
    advance_device,
    check_account_farm,
    check_device_burst,
    check_device_overlap,
    device_due_ms,
    device_flag_delay_ms,
    judge_device_views,
    kept_cutoff_ms,
    note_account,
)
from stream_app.domain.rules_state import (
    DEVICE_STATE_FORMAT,
    FLAG_ACCOUNT,
    FLAG_BURST,
    FLAG_OVERLAP,
    NOT_FLAGGED,
    DeviceState,
)

POLICY = Policy()
DEVICE = "dev1"


def dv(event_id: str, ts: int, watch_ms: int, viewer: str = "u1", video: str = "vid1") -> DeviceView:
    return DeviceView(DEVICE, video, event_id, viewer, ts, watch_ms)


def judge_all(policy: Policy, views: list[DeviceView], device: DeviceState | None = None) -> list[DeviceFlag]:
    """Every view through device_burst as it arrives, then device_overlap / account_farm through the newest."""
    device = DeviceState() if device is None else device
    flags: list[DeviceFlag] = []
    for v in views:
        judgement = check_device_burst(policy, device, v, forget_behind_newest=False)
        if not judgement.verdict.passed:
            flags.append(DeviceFlag(v.video_id, v.event_id, Reason.DEVICE_BURST, judgement.verdict.detail))
        flags += [DeviceFlag(r.video_id, r.event_id, Reason.DEVICE_BURST, "") for r in judgement.clawbacks]
    judge_device_views(policy, device, DEVICE, max(v.ts for v in views), flags)
    return flags


def reasons(flags: list[DeviceFlag]) -> dict[str, str]:
    return {f.event_id: f.reason for f in flags}


# --- device_overlap ----------------------------------------------------------------------------------------------


def test_device_overlap_by_hand() -> None:
    views = [
        dv("A", 10_000, 8_000),  # [2_000, 10_000]: the first, kept
        dv("B", 15_000, 6_000),  # [9_000, 15_000]: 1_000 ms over A, within the 2_000 tolerance: kept
        dv("C", 16_000, 4_000),  # [12_000, 16_000]: 3_000 ms over B: rejected
        # [13_000, 19_000]: 2_000 ms over B (not more than the tolerance), and 3_000 ms over C, which was
        # rejected and so is not on the screen: kept
        dv("D", 19_000, 6_000),
        dv("E", 19_500, 0),  # a zero-length view overlaps nothing: kept
    ]
    flags = judge_all(POLICY, views)
    assert reasons(flags) == {"C": Reason.DEVICE_OVERLAP}
    [flag] = flags
    assert flag.detail == (
        "device dev1 shows this view (watched 12000..16000) and others of the last 600s at the same time: "
        "3000 ms of overlap in total (more than 2000); one screen shows one video at a time"
    )


def test_device_overlap_sums_the_overlaps_with_every_view() -> None:
    device = DeviceState()
    flags = judge_all(POLICY, [dv("X", 10_000, 10_000), dv("Y", 13_500, 1_500)], device)  # [0, 10k], [12k, 13.5k]
    assert flags == []
    # [9_000, 14_000]: 1_000 ms over X and 1_500 ms over Y, each within the tolerance, 2_500 in total: rejected
    assert check_device_overlap(POLICY, device, 9_000, 14_000) == 2_500
    assert check_device_overlap(POLICY, device, 9_500, 14_000) == 0  # 500 + 1_500: exactly the tolerance, passes
    assert check_device_overlap(Policy(overlap_tolerance_ms=1_999), device, 9_500, 14_000) == 2_000


def test_device_overlap_looks_back_device_memory_s_only() -> None:
    device = DeviceState()
    judge_all(POLICY, [dv("old", 100_000, 90_000)], device)  # [10_000, 100_000]
    # a 700 s view ending at 700_000 reaches back to 0, but views ending 600 s or more before it are not counted
    assert check_device_overlap(POLICY, device, 0, 700_000) == 0
    assert check_device_overlap(POLICY, device, 0, 699_999) == 90_000
    # DEVICE_MEMORY_S 0 turns the rule off
    assert check_device_overlap(Policy(device_memory_s=0), device, 0, 100_000) == 0


def test_a_view_rejected_by_device_burst_is_not_seen_by_the_later_rules_but_its_account_counts() -> None:
    small = Policy(device_burst_max=2, device_burst_span_s=10, accounts_per_device=2)
    views = [
        dv("b1", 1_000, 900, viewer="u1"),
        dv("b2", 2_000, 900, viewer="u2"),
        dv("b3", 3_000, 5_000, viewer="u3"),  # 3 views within 10 s: a burst; b3 would also overlap b1 and b2
        dv("late", 20_000, 1_000, viewer="u4"),  # 4th account (u3 counts although device_burst rejected it)
        dv("u1-again", 30_000, 1_000, viewer="u1"),
    ]
    flags = judge_all(small, views)
    assert reasons(flags) == {"b1": "device_burst", "b2": "device_burst", "b3": "device_burst", "late": "account_farm"}


# --- account_farm ------------------------------------------------------------------------------------------------


def test_account_farm_by_hand() -> None:
    # 10 accounts take turns on one screen, 10 s each, never overlapping: accounts 1-8 pass, 9 and 10 do not
    views = [dv(f"e{n}", (n + 1) * 10_000, 9_000, viewer=f"acct{n + 1}") for n in range(10)]
    views.append(dv("e10", 110_000, 9_000, viewer="acct1"))  # the first account again: fine
    flags = judge_all(POLICY, views)
    assert reasons(flags) == {"e8": Reason.ACCOUNT_FARM, "e9": Reason.ACCOUNT_FARM}
    assert [f.detail for f in flags] == [
        "device dev1 has more than 8 distinct accounts within 86400s: account acct9 is its account number 9 "
        "in order of first view",
        "device dev1 has more than 8 distinct accounts within 86400s: account acct10 is not among its first 9 "
        "accounts in order of first view",
    ]


def test_account_farm_forgets_an_account_dedupe_s_after_its_last_view() -> None:
    small = Policy(accounts_per_device=2, dedupe_s=100)  # 100 s
    device = DeviceState()
    steps = [
        ("a", 1_000, 0),
        ("b", 2_000, 0),
        ("c", 3_000, 3),  # 3rd account: rejected
        ("d", 4_000, 4),  # 4th: beyond the 3 remembered (numbered 2 + 2)
        ("a", 50_000, 0),  # a's latest view is now 50_000
        # 102_000: b's latest view (2_000) is 100 s back, so b no longer counts; c moves up to 2nd and passes
        ("c", 102_000, 0),
        ("d", 102_500, 3),  # d takes the free 3rd place: still more than 2
        # 150_000: a (latest 50_000) drops out; c is 1st, d 2nd: d passes now
        ("d", 150_000, 0),
    ]
    for viewer, ts, rank in steps:
        assert check_account_farm(small, device, viewer, ts) == rank, (viewer, ts)
    assert device.accounts == ["c", "d"] and device.account_last == [102_000, 150_000]


def test_account_memory_holds_at_most_accounts_per_device_plus_one() -> None:
    device = DeviceState()
    for n in range(50):
        check_account_farm(POLICY, device, f"acct{n}", n * 1_000)
    assert device.accounts == [f"acct{n}" for n in range(9)]


# --- order: canonical, whatever the arrival -----------------------------------------------------------------------


def canonical(policy: Policy, views: list[DeviceView]) -> dict[str, str]:
    """SPEC §6 read the obvious way over views sorted by (ts, event_id), no burst: each view against the intervals
    of the earlier views no rule rejected, then the account numbers in order of first view."""
    kept: list[tuple[int, int]] = []
    accounts: list[str] = []
    out: dict[str, str] = {}
    for v in sorted(views, key=lambda v: (v.ts, v.event_id)):
        start, end = v.ts - v.watch_ms, v.ts
        recent = [(s, e) for s, e in kept if e > end - policy.device_memory_s * 1000]
        overlap = sum(max(0, min(e, end) - max(s, start)) for s, e in recent)
        if v.viewer_id not in accounts:
            accounts.append(v.viewer_id)
        if overlap > policy.overlap_tolerance_ms:
            out[v.event_id] = Reason.DEVICE_OVERLAP
        elif accounts.index(v.viewer_id) >= policy.accounts_per_device:
            out[v.event_id] = Reason.ACCOUNT_FARM
        else:
            kept.append((start, end))
    return out


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 60_000), st.integers(0, 15_000), st.integers(0, 4)), min_size=1, max_size=25),
    st.randoms(use_true_random=False),
)
def test_verdicts_are_the_canonical_ones_in_any_arrival_order(
    drawn: list[tuple[int, int, int]], rng: random.Random
) -> None:
    """Views judged once all have arrived (how the device judge holds them) get the verdicts of the canonical
    order, however they arrived; each view is reported at most once."""
    policy = Policy(accounts_per_device=3, device_burst_max=1_000)  # no burst: overlap and accounts only
    views = [dv(f"e{n:02d}", ts, watch, viewer=f"u{acct}") for n, (ts, watch, acct) in enumerate(drawn)]
    arrival = views[:]
    rng.shuffle(arrival)
    flags = judge_all(policy, arrival)
    assert len(flags) == len({f.event_id for f in flags})
    assert reasons(flags) == canonical(policy, views)


def test_out_of_order_arrival_by_hand() -> None:
    # P [0, 10_000] and Q [9_000, 12_000] (1_000 ms over P: both kept in canonical order); R [11_000, 15_000]
    # overlaps Q by 1_000 ms only, but arrives before P, and Q's verdict depends on P's: whatever order they
    # arrive in, once judged the verdicts are P kept, Q kept, R kept; S [4_000, 14_000] is rejected
    views = [dv("P", 10_000, 10_000), dv("Q", 12_000, 3_000), dv("R", 15_000, 4_000), dv("S", 14_000, 10_000)]
    expected = {"S": Reason.DEVICE_OVERLAP}
    for order in itertools.permutations(views):
        assert reasons(judge_all(POLICY, list(order))) == expected, [v.event_id for v in order]


def test_a_view_arriving_after_its_device_was_judged_is_judged_against_both_sides() -> None:
    device = DeviceState()
    flags = judge_all(POLICY, [dv("A", 10_000, 5_000), dv("C", 30_000, 10_000)], device)  # [5k, 10k], [20k, 30k]
    assert flags == [] and device.judged_through == 30_000
    # B [8_000, 24_000] comes late: it overlaps A by 2_000 and C by 4_000, both final: B is rejected, A and C stay
    late = dv("B", 24_000, 16_000)
    i = device.insert(late.ts, late.watch_ms, late.video_id, late.event_id, late.viewer_id)
    from stream_app.domain.rules import judge_device_view

    judge_device_view(POLICY, device, DEVICE, i, flags)
    assert reasons(flags) == {"B": Reason.DEVICE_OVERLAP}
    assert list(device.flags) == [NOT_FLAGGED, FLAG_OVERLAP, NOT_FLAGGED]
    assert device.kept_starts == [5_000, 20_000] and device.kept_ends == [10_000, 30_000]


def test_a_kept_view_that_a_later_burst_takes_in_leaves_the_screen() -> None:
    small = Policy(device_burst_max=3, device_burst_span_s=10)
    device = DeviceState()
    judge_all(small, [dv("k", 1_000, 1_000)], device)
    assert device.kept_ends == [1_000]
    flags = judge_all(small, [dv(f"b{n}", 2_000 + n, 0) for n in range(3)], device)  # 4 views within 10 s
    assert reasons(flags) == {"k": "device_burst", "b0": "device_burst", "b1": "device_burst", "b2": "device_burst"}
    assert device.kept_ends == [] and list(device.flags) == [FLAG_BURST] * 4


# --- expiry and due times -----------------------------------------------------------------------------------------


def test_advance_judges_what_is_final_then_forgets_each_memory_after_its_horizon() -> None:
    policy = Policy(grace_s=10, device_burst_span_s=10, device_memory_s=30, dedupe_s=100)  # delay 20 s
    assert device_flag_delay_ms(policy) == 20_000
    device = DeviceState()
    for n, (ts, watch) in enumerate([(50_000, 10_000), (55_000, 8_000)]):  # [40k, 50k], [47k, 55k]: 3 s over
        check_device_burst(policy, device, dv(f"e{n}", ts, watch), forget_behind_newest=False)
    out: list[DeviceFlag] = []
    assert device_due_ms(policy, device) == 70_000
    assert advance_device(policy, device, DEVICE, 69_999, out) is False and out == []  # 49_999: nothing final
    assert advance_device(policy, device, DEVICE, 70_000, out) is False  # 50_000: e0 judged and kept
    assert out == [] and device.kept_ends == [50_000] and device.ts == [55_000]
    assert advance_device(policy, device, DEVICE, 75_000, out) is False  # 55_000: e1 judged, rejected
    assert reasons(out) == {"e1": Reason.DEVICE_OVERLAP}
    assert device.ts == [] and device.accounts == ["u1"]
    # the kept interval goes DEVICE_MEMORY_S after it ended, the account DEDUPE_S after its latest view; the
    # account outlives the interval, so the device is next due for its account only (the judge forgets the
    # interval whenever it reads the device after 100_000)
    assert kept_cutoff_ms(policy, 100_000) == 50_000
    assert device_due_ms(policy, device) == 55_000 + 100_000 + 20_000
    assert advance_device(policy, device, DEVICE, 100_000, out) is False and device.kept_ends == []
    assert device_due_ms(policy, device) == 55_000 + 100_000 + 20_000
    assert advance_device(policy, device, DEVICE, 174_999, out) is False
    assert advance_device(policy, device, DEVICE, 175_000, out) is True and device_due_ms(policy, device) is None


@pytest.mark.parametrize("dedupe_s", [0, 20])
def test_a_kept_interval_is_its_own_due_when_no_account_outlives_it(dedupe_s: int) -> None:
    """DEDUPE_S 0 (no accounts remembered) or under DEVICE_MEMORY_S: nothing else would come back for the interval."""
    policy = Policy(grace_s=10, device_burst_span_s=10, device_memory_s=30, dedupe_s=dedupe_s)
    device = DeviceState()
    check_device_burst(policy, device, dv("e0", 50_000, 10_000), forget_behind_newest=False)
    out: list[DeviceFlag] = []
    assert advance_device(policy, device, DEVICE, 70_000, out) is False and device.kept_ends == [50_000]
    if dedupe_s:  # the account goes first (50_000 + 20_000 + the delay); the interval stays, due on its own
        assert device_due_ms(policy, device) == 90_000
        assert advance_device(policy, device, DEVICE, 90_000, out) is False and device.accounts == []
    assert device_due_ms(policy, device) == 50_000 + 30_000 + 20_000
    assert advance_device(policy, device, DEVICE, 100_000, out) is True and out == []


# --- stored form ----------------------------------------------------------------------------------------------------


def format_3(device: DeviceState) -> list[object]:
    """What the previous version stored for `device` (format 3: times as they are, every field)."""
    return [
        3,
        device.max_ts,
        device.judged_through,
        list(device.ts),
        list(device.watch_ms),
        list(device.video_ids),
        list(device.event_ids),
        list(device.viewer_ids),
        list(device.flags),
        list(device.kept_starts),
        list(device.kept_ends),
        list(device.accounts),
        list(device.account_last),
        device.through_offset,
        list(device.kept_ids),
    ]


def busy_device() -> DeviceState:
    """A device holding every memory: judged views (flagged and not), views still to judge, kept intervals,
    accounts beyond ACCOUNTS_PER_DEVICE, a record offset."""
    device = DeviceState()
    views = [dv(f"e{n}", 1_000 * n + 5_000, 4_000 if n % 3 else 0, viewer=f"u{n % 11}") for n in range(30)]
    judge_all(POLICY, views[:20], device)
    for v in views[20:]:
        check_device_burst(POLICY, device, v, forget_behind_newest=False)
    device.through_offset = 41
    return device


def test_round_trip_keeps_every_memory() -> None:
    device = busy_device()
    data = jsoncodec.loads(jsoncodec.dumps(device.to_stored()))
    assert data[0] == DEVICE_STATE_FORMAT == 4  # positional: the format first
    restored = DeviceState.from_stored(data)
    assert format_3(restored) == format_3(device) and restored.through_offset == 41
    assert {FLAG_OVERLAP, FLAG_ACCOUNT} <= set(device.flags)
    assert device.ts and device.kept_ends and len(device.accounts) > POLICY.accounts_per_device


@pytest.mark.parametrize("keeps", ["an account", "an account and a kept interval", "views", "nothing yet judged"])
def test_format_4_leaves_out_what_a_device_does_not_hold_and_reads_it_back_as_empty(keeps: str) -> None:
    device = DeviceState()
    device.max_ts = 1_800_000_000_000
    device.through_offset = 12
    device.judged_through = device.max_ts + 300_000
    if keeps == "nothing yet judged":
        device.judged_through = -1
    device.accounts, device.account_last = ["u-1"], [device.max_ts]
    if keeps != "an account":
        device.kept_starts, device.kept_ends, device.kept_ids = [device.max_ts - 30_000], [device.max_ts], ["e-1"]
    if keeps == "views":
        device.insert(device.max_ts, 30_000, "v-1", "e-1", "u-1")
    stored = device.to_stored()
    raw = jsoncodec.dumps(stored)
    if keeps == "an account":
        assert raw == b'[4,1800000000000,12,-300000,["u-1"],[0]]'
    assert len(stored) == {"an account": 6, "views": 15}.get(keeps, 9)
    assert len(raw) < len(jsoncodec.dumps(format_3(device))) - 35  # thirteen-digit times, empty lists
    restored = DeviceState.from_stored(jsoncodec.loads(raw))
    assert format_3(restored) == format_3(device)
    # the memories left out are read as lists of their own: one changed leaves the others empty
    restored.ts.append(1)
    restored.video_ids.append("v")
    assert restored.watch_ms == [] or keeps == "views"
    assert restored.kept_ends == ([] if keeps == "an account" else [device.max_ts])


@pytest.mark.parametrize("version", [3, 2])
def test_a_state_of_a_previous_format_is_read(version: int) -> None:
    device = busy_device()
    stored = format_3(device)
    if version == 2:
        stored = [2, *stored[1:13]]  # no record offset, no kept ids
    restored = DeviceState.from_stored(jsoncodec.loads(jsoncodec.dumps(stored)))
    if version == 3:
        assert format_3(restored) == format_3(device)
    else:  # everything but the offset and the ids, which format 2 did not keep
        assert restored.through_offset == -1 and restored.kept_ids == [""] * len(device.kept_ends)
        assert format_3(restored)[1:13] == format_3(device)[1:13]
    assert restored.to_stored()[0] == DEVICE_STATE_FORMAT  # written back in the current format


def test_a_format_1_state_is_migrated() -> None:
    old = {
        "format": 1,
        "max_ts": 3_000,
        "ts": [1_000, 2_000, 3_000],
        "video_ids": ["v1", "v2", "v1"],
        "event_ids": ["e1", "e2", "e3"],
        "viewer_ids": ["a", "b", "a"],
        "flagged": [0, 1, 0],
    }
    state = DeviceState.from_stored(old)
    # judged already (under the rules of its time), of unknown (zero) length, accounts in order of first view
    assert state.judged_through == 3_000 and state.watch_ms == [0, 0, 0]
    assert list(state.flags) == [NOT_FLAGGED, FLAG_BURST, NOT_FLAGGED]
    assert state.accounts == ["a", "b"] and state.account_last == [3_000, 2_000]
    assert state.kept_ends == []
    assert DeviceState.from_stored(state.to_stored()).to_stored()[0] == DEVICE_STATE_FORMAT


@pytest.mark.parametrize(
    ("stored", "version"),
    [
        ({"format": 0}, 0),
        ([3, 0], 3),
        ({}, None),
        ([2, 1], 2),
        ([4, 0, 0], 4),
        ([4] + [0] * 15, 4),
        ([5] + [0] * 13, 5),
    ],
)
def test_an_unknown_format_is_refused_with_a_clear_message(stored: object, version: int | None) -> None:
    with pytest.raises(StateFormatError, match=rf"DeviceState: stored state format {version!r}; this worker reads"):
        DeviceState.from_stored(stored)
    assert issubclass(StateFormatError, SerializationError)


def test_a_device_keeps_one_str_per_account_not_per_view() -> None:
    """Views arrive in records decoded apart, each with its own copy of the viewer id: the device keeps the str it
    holds for that account already (its last view's, or its accounts')."""
    device = DeviceState()
    device.insert(1_000, 5_000, "vid1", "e1", "".join(["u", "1"]))
    device.insert(2_000, 5_000, "vid1", "e2", "".join(["u", "1"]))
    device.insert(1_500, 5_000, "vid1", "e3", "".join(["u", "2"]))  # another account, in the middle
    assert device.viewer_ids == ["u1", "u2", "u1"]
    assert device.viewer_ids[0] is device.viewer_ids[2]
    note_account(POLICY, device, device.viewer_ids[1], 1_500)
    device.insert(3_000, 5_000, "vid1", "e4", "".join(["u", "2"]))
    assert device.viewer_ids[3] is device.accounts[0]
