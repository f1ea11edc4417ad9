"""The reward policy: defaults, the reward formula with exact integer values, the policy hash, and loading
overrides from POLICY_FILE and the environment (every error names the key and the source)."""

from __future__ import annotations

import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from stream_app.domain.errors import ConfigError
from stream_app.domain.policy import (
    ENV_FIELDS,
    Policy,
    Settled,
    WindowTotals,
    base_rate_micros,
    clawback_micros,
    engagement_score,
    interaction_weight,
    is_eligible_creator,
    is_qualifying_view,
    load_policy,
    mean_completion_bps,
    multiplier_bps,
    policy_hash,
    provisional_micros,
    settle,
    settled_micros,
    view_completion_bps,
    within_qualify_once,
)

P = Policy()


# --- defaults are the SPEC's numbers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("window_s", 3600),
        ("grace_s", 300),
        ("idle_settle_s", 30),
        ("emit_interval_s", 1.0),
        ("max_clock_skew_s", 300),
        ("clawback_horizon_s", 604_800),
        ("min_watch_ms", 5_000),
        ("min_video_ms", 60_000),
        ("qualifying_sources", frozenset({"for_you"})),
        ("qualify_once_s", 86_400),
        ("min_followers", 10_000),
        ("min_views_30d", 100_000),
        ("default_base_rate", 400),
        ("target_rate_bps", 1_000),
        ("min_multiplier_bps", 5_000),
        ("max_multiplier_bps", 20_000),
        ("dedupe_s", 86_400),
        ("impossible_watch_factor", 20),
        ("viewer_repeat_max", 5),
        ("viewer_repeat_span_s", 600),
        ("device_burst_max", 60),
        ("device_burst_span_s", 60),
        ("device_memory_s", 600),
        ("overlap_tolerance_ms", 2_000),
        ("accounts_per_device", 8),
        ("max_source_skew_s", 3_600),  # ours, not the SPEC's: the 1 h skew bound of the device partitions
        ("velocity_span_s", 60),
        ("velocity_min_views", 200),
        ("velocity_baseline_factor", 10),
        ("velocity_baseline_minutes", 60),
        ("velocity_distinct_ratio_pct", 50),
        ("engagement_lookback_s", 86_400),
        ("duplicate_interaction_kinds", frozenset({"like", "follow"})),
    ],
)
def test_defaults_are_the_spec_numbers(name: str, expected: object) -> None:
    assert getattr(P, name) == expected


# --- base rates ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "micros"),
    [
        ("US", 1000),
        ("GB", 800),
        ("DE", 800),
        ("FR", 700),
        ("JP", 700),
        ("CA", 800),
        ("AU", 800),
        ("BR", 300),
        ("IN", 100),
        ("ZZ", 400),  # any other region
        ("MX", 400),
        ("us", 400),  # regions are upper case (validated upstream); a lower-case one is just "other"
    ],
)
def test_base_rate_micros(region: str, micros: int) -> None:
    assert base_rate_micros(P, region) == micros


# --- qualifying view ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("watch_ms", "video_ms", "source", "expected"),
    [
        (5_000, 60_000, "for_you", True),  # both thresholds are inclusive
        (4_999, 60_000, "for_you", False),
        (5_000, 59_999, "for_you", False),
        (0, 60_000, "for_you", False),
        (1_200_000, 60_000, "for_you", True),
        (5_000, 60_000, "following", False),  # not in the default QUALIFYING_SOURCES
        (5_000, 60_000, "search", False),
        (5_000, 60_000, "profile", False),
        (5_000, 60_000, "ad", False),
        (5_000, 60_000, "live", False),  # unknown source: accepted elsewhere, never qualifies
        (5_000, 60_000, "", False),
    ],
)
def test_is_qualifying_view(watch_ms: int, video_ms: int, source: str, expected: bool) -> None:
    assert is_qualifying_view(P, watch_ms=watch_ms, video_ms=video_ms, source=source) is expected


def test_qualifying_sources_are_configurable() -> None:
    policy = replace(P, qualifying_sources=frozenset({"for_you", "following"}))
    assert is_qualifying_view(policy, watch_ms=5_000, video_ms=60_000, source="following") is True
    assert is_qualifying_view(policy, watch_ms=5_000, video_ms=60_000, source="search") is False


@pytest.mark.parametrize(
    ("ts_a", "ts_b", "expected"),
    [
        (1_000_000_000, 1_000_000_000, True),  # same instant
        (1_000_000_000, 1_086_399_999, True),  # 86_399_999 ms apart: within 86_400 s
        (1_000_000_000, 1_086_400_000, False),  # exactly 86_400_000 ms: exclusive, counts again
        (1_086_399_999, 1_000_000_000, True),  # symmetric (an earlier-processed view with a later ts)
        (1_086_400_000, 1_000_000_000, False),
    ],
)
def test_within_qualify_once_boundary(ts_a: int, ts_b: int, expected: bool) -> None:
    assert within_qualify_once(P, ts_a, ts_b) is expected


def test_qualify_once_zero_means_every_view_counts() -> None:
    assert within_qualify_once(replace(P, qualify_once_s=0), 5, 5) is False


# --- eligible creator ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("followers", "views_30d", "adult", "standing", "expected"),
    [
        (10_000, 100_000, True, "good", True),  # inclusive thresholds
        (9_999, 100_000, True, "good", False),
        (10_000, 99_999, True, "good", False),
        (10_000, 100_000, False, "good", False),
        (10_000, 100_000, True, "restricted", False),
        (10_000, 100_000, True, "banned", False),
        (5_000_000, 90_000_000, True, "good", True),
    ],
)
def test_is_eligible_creator(followers: int, views_30d: int, adult: bool, standing: str, expected: bool) -> None:
    got = is_eligible_creator(P, followers=followers, views_30d=views_30d, adult=adult, standing=standing)
    assert got is expected


# --- engagement ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "weight"),
    [("like", 1), ("comment", 2), ("share", 3), ("follow", 3), ("save", 0), ("Like", 0), ("", 0)],
)
def test_interaction_weight(kind: str, weight: int) -> None:
    assert interaction_weight(P, kind) == weight


@pytest.mark.parametrize(
    ("likes", "comments", "shares", "follows", "score"),
    [
        (0, 0, 0, 0, 0),
        (100, 0, 0, 0, 100),
        (0, 1, 0, 0, 2),
        (0, 0, 1, 0, 3),
        (0, 0, 0, 1, 3),
        (1, 2, 3, 4, 26),  # 1*1 + 2*2 + 3*3 + 3*4 = 1 + 4 + 9 + 12
        (20, 30, 10, 5, 125),  # 20 + 60 + 30 + 15
    ],
)
def test_engagement_score(likes: int, comments: int, shares: int, follows: int, score: int) -> None:
    assert engagement_score(P, likes, comments, shares, follows) == score


@pytest.mark.parametrize(
    ("score", "qualified_views", "expected"),
    [
        (100, 1000, 10_000),  # rate 100*10_000//1000 = 1000 bps = target: 1.0x
        (123, 1000, 12_300),  # rate 1230 -> 1230*10_000//1000 = 12_300
        (50, 1000, 5_000),  # rate 500 -> 5_000: exactly the lower clamp edge
        (49, 1000, 5_000),  # rate 490 -> 4_900, clamped up to 5_000
        (51, 1000, 5_100),  # rate 510 -> 5_100, just inside
        (200, 1000, 20_000),  # rate 2000 -> 20_000: exactly the upper clamp edge
        (199, 1000, 19_900),  # just inside
        (201, 1000, 20_000),  # rate 2010 -> 20_100, clamped down to 20_000
        (1, 7, 14_280),  # rate 10_000//7 = 1428 (1428.57 floored) -> 14_280 (not 14_285): two floors
        (1, 9, 11_110),  # rate 10_000//9 = 1111 -> 11_110
        (0, 1000, 5_000),  # no engagement: 0.5x
        (0, 0, 5_000),  # max(qv, 1): no division by zero
        (5, 0, 20_000),  # rate 5*10_000//1 = 50_000 -> 500_000, clamped
    ],
)
def test_multiplier_bps(score: int, qualified_views: int, expected: int) -> None:
    assert multiplier_bps(P, score, qualified_views) == expected


def test_multiplier_with_another_target_rounds_down() -> None:
    # rate 1000 bps; 1000*10_000 // 1500 = 6666 (6666.67 floored)
    assert multiplier_bps(replace(P, target_rate_bps=1_500), 100, 1000) == 6_666


def test_multiplier_clamp_is_configurable() -> None:
    policy = replace(P, min_multiplier_bps=8_000, max_multiplier_bps=12_000)
    assert multiplier_bps(policy, 50, 1000) == 8_000  # 5_000 raised to 8_000
    assert multiplier_bps(policy, 200, 1000) == 12_000  # 20_000 lowered to 12_000
    assert multiplier_bps(policy, 100, 1000) == 10_000


# --- money --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("base", "mult", "expected"),
    [
        (1_000_000, 10_000, 1_000_000),
        (1_000_000, 5_000, 500_000),
        (1_000_000, 20_000, 2_000_000),
        (999, 12_345, 1_233),  # 12_332_655 // 10_000 (1233.27 floored)
        (2_100, 14_280, 2_998),  # 29_988_000 // 10_000 (2998.8 floored, not rounded up)
        (1, 9_999, 0),
        (0, 20_000, 0),
    ],
)
def test_settled_micros_rounds_down(base: int, mult: int, expected: int) -> None:
    assert settled_micros(P, base, mult) == expected


@pytest.mark.parametrize(
    ("base", "eligible", "expected"), [(640_000, True, 640_000), (640_000, False, 0), (0, True, 0)]
)
def test_provisional_micros(base: int, eligible: bool, expected: int) -> None:
    assert provisional_micros(base, eligible) == expected


@pytest.mark.parametrize(
    ("settled", "base", "clawed", "mult", "expected"),
    [
        (1_000_000, 1_000_000, 1_000, 10_000, 1_000),  # 1_000_000 - 999_000*10_000//10_000
        (1_000_000, 1_000_000, 0, 10_000, 0),  # nothing clawed
        (1_233, 999, 100, 12_345, 124),  # 899*12_345 = 11_098_155 // 10_000 = 1_109; 1_233 - 1_109
        (1_233, 999, 50, 12_345, 62),  # 949*12_345 = 11_715_405 // 10_000 = 1_171; 1_233 - 1_171
        (500_000, 1_000_000, 1_000_000, 5_000, 500_000),  # everything clawed: all settled money back
        (1_000, 1_000, 5_000, 10_000, 1_000),  # clawed base capped at the settled base
        (0, 0, 800, 20_000, 0),  # an ineligible window settled nothing, so claws back nothing
    ],
)
def test_clawback_micros(settled: int, base: int, clawed: int, mult: int, expected: int) -> None:
    assert clawback_micros(settled, base, clawed, mult) == expected


# --- settling a window --------------------------------------------------------------------------------------

US_1000 = WindowTotals(qualified_views=1000, base_micros=1_000 * 1_000)  # 1,000 US views at 1000 micros


@pytest.mark.parametrize(
    ("totals", "eligible", "expected"),
    [
        # score 100 -> rate 1000 bps -> 1.0x -> $1.00
        (replace(US_1000, likes=100), True, Settled(1000, 1_000_000, 100, 10_000, 1_000_000)),
        # score 50 -> rate 500 -> 0.5x (the clamp edge) -> $0.50
        (replace(US_1000, likes=50), True, Settled(1000, 1_000_000, 50, 5_000, 500_000)),
        # no engagement at all: still 0.5x
        (US_1000, True, Settled(1000, 1_000_000, 0, 5_000, 500_000)),
        # score 300 -> rate 3000 -> 30_000 clamped to 2.0x
        (replace(US_1000, likes=300), True, Settled(1000, 1_000_000, 300, 20_000, 2_000_000)),
        # 600 US + 400 IN views: base 600_000 + 40_000; score 20 + 2*30 + 3*10 + 3*5 = 125
        # -> rate 1250 -> 12_500 -> 640_000*12_500//10_000 = 800_000
        (
            WindowTotals(1000, 640_000, likes=20, comments=30, shares=10, follows=5),
            True,
            Settled(1000, 640_000, 125, 12_500, 800_000),
        ),
        # 7 BR views (base 2_100), 1 like -> 14_280 -> 2_998 (floored)
        (WindowTotals(7, 2_100, likes=1), True, Settled(7, 2_100, 1, 14_280, 2_998)),
        # ineligible creator: no qualified views, no money; score kept, multiplier from 0 qualified views
        (replace(US_1000, likes=100), False, Settled(0, 0, 100, 20_000, 0)),
        (US_1000, False, Settled(0, 0, 0, 5_000, 0)),
    ],
)
def test_settle(totals: WindowTotals, eligible: bool, expected: Settled) -> None:
    assert settle(P, totals, eligible) == expected


# --- policy hash --------------------------------------------------------------------------------------------

# Computed once from the defaults; pinned so a change of any default, or of the canonical form, is noticed
# (it would orphan state written under the old hash). test_every_field_changes_the_hash backs it up.
# Issue 11 (device_overlap, account_farm and their thresholds) and issue 9/13 (watch_weight_bps, the clawback
# hold numbers) moved it from v1-055faa0c.
DEFAULT_HASH = "v1-2fb6b859"


def test_default_policy_hash_is_pinned() -> None:
    assert policy_hash(Policy()) == DEFAULT_HASH
    assert re.fullmatch(r"v1-[0-9a-f]{8}", DEFAULT_HASH)


def _changed(name: str, value: Any) -> Any:
    """A different valid value for a field."""
    if name == "emit_interval_s":
        return value + 0.5
    if name == "qualifying_sources":
        return value | {"following"}
    if name == "duplicate_interaction_kinds":
        return value - {"follow"}
    if name == "base_rates":
        return {**value, "US": 1001}
    if name == "velocity_distinct_ratio_pct":
        return value - 1
    return value + 1


@pytest.mark.parametrize("name", [f.name for f in fields(Policy)])
def test_every_field_changes_the_hash(name: str) -> None:
    changed = replace(P, **{name: _changed(name, getattr(P, name))})
    assert changed != P
    assert policy_hash(changed) != DEFAULT_HASH


def test_new_base_rate_region_changes_the_hash() -> None:
    assert policy_hash(replace(P, base_rates={**P.base_rates, "MX": 400})) != DEFAULT_HASH


def test_equal_policies_built_differently_hash_equal() -> None:
    reordered = dict(reversed(list(P.base_rates.items())))
    built = Policy(
        base_rates=reordered,
        qualifying_sources=frozenset(["for_you"]),
        emit_interval_s=1,  # an int is normalised to 1.0
    )
    assert built == P
    assert hash(built) == hash(P)
    assert policy_hash(built) == DEFAULT_HASH


def test_policy_is_immutable_after_construction() -> None:
    rates = {"US": 1000}
    policy = Policy(base_rates=rates)
    rates["US"] = 5  # the caller's dict is copied
    assert base_rate_micros(policy, "US") == 1000
    with pytest.raises(TypeError):
        policy.base_rates["US"] = 5  # type: ignore[index]


# --- construction validates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"window_s": 0}, "Policy: window_s must be an integer >= 1, got 0"),
        ({"grace_s": -1}, "Policy: grace_s must be an integer >= 0, got -1"),
        ({"min_multiplier_bps": 20_001}, "Policy: min_multiplier_bps must be <= max_multiplier_bps, got 20001 > 20000"),
    ],
)
def test_replace_validates(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        replace(P, **changes)
    assert str(err.value) == message


# --- loading: file and environment --------------------------------------------------------------------------


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_no_file_no_env_gives_the_defaults() -> None:
    assert load_policy({}) == P
    assert load_policy({"GRACE_S": "", "WINDOW_S": "  "}) == P  # empty counts as unset


def test_file_overrides(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
grace_s = 60
qualifying_sources = ["for_you", "following"]
default_base_rate = 500
emit_interval_s = 2
min_watch_ms = 3_000
duplicate_interaction_kinds = []

[base_rates]
US = 1200
MX = 250
""",
    )
    policy = load_policy({}, path)
    assert policy.grace_s == 60
    assert policy.qualifying_sources == frozenset({"for_you", "following"})
    assert policy.default_base_rate == 500
    assert policy.emit_interval_s == 2.0
    assert isinstance(policy.emit_interval_s, float)
    assert policy.min_watch_ms == 3_000
    assert policy.duplicate_interaction_kinds == frozenset()
    # [base_rates] is merged over the defaults: listed regions change, others keep their default
    assert base_rate_micros(policy, "US") == 1200
    assert base_rate_micros(policy, "MX") == 250
    assert base_rate_micros(policy, "GB") == 800
    assert base_rate_micros(policy, "ZZ") == 500
    assert policy.window_s == 3600  # untouched
    assert policy_hash(policy) != DEFAULT_HASH


def test_policy_file_falls_back_to_env(tmp_path: Path) -> None:
    path = _write(tmp_path, "grace_s = 45\n")
    assert load_policy({"POLICY_FILE": path}).grace_s == 45


def test_env_wins_over_file(tmp_path: Path) -> None:
    path = _write(tmp_path, 'grace_s = 60\nwindow_s = 600\nqualifying_sources = ["search"]\n')
    policy = load_policy({"GRACE_S": "120", "QUALIFYING_SOURCES": "for_you"}, path)
    assert policy.grace_s == 120
    assert policy.window_s == 600
    assert policy.qualifying_sources == frozenset({"for_you"})


@pytest.mark.parametrize(
    ("var", "raw", "name", "expected"),
    [
        ("WINDOW_S", "60", "window_s", 60),
        ("GRACE_S", " 0 ", "grace_s", 0),
        ("IDLE_SETTLE_S", "5", "idle_settle_s", 5),
        ("EMIT_INTERVAL_S", "0.25", "emit_interval_s", 0.25),
        ("EMIT_INTERVAL_S", "3", "emit_interval_s", 3.0),
        ("MAX_CLOCK_SKEW_S", "600", "max_clock_skew_s", 600),
        ("QUALIFY_ONCE_S", "3600", "qualify_once_s", 3600),
        ("CLAWBACK_HORIZON_S", "86400", "clawback_horizon_s", 86_400),
        ("TARGET_RATE_BPS", "2000", "target_rate_bps", 2000),
        ("WATCH_WEIGHT_BPS", "2000", "watch_weight_bps", 2000),
        ("DEDUPE_S", "7200", "dedupe_s", 7200),
        ("QUALIFYING_SOURCES", "for_you, following,", "qualifying_sources", frozenset({"for_you", "following"})),
        ("DEVICE_MEMORY_S", "300", "device_memory_s", 300),
        ("OVERLAP_TOLERANCE_MS", "0", "overlap_tolerance_ms", 0),
        ("ACCOUNTS_PER_DEVICE", "4", "accounts_per_device", 4),
    ],
)
def test_env_variables(var: str, raw: str, name: str, expected: object) -> None:
    assert ENV_FIELDS[var] == name
    assert getattr(load_policy({var: raw}), name) == expected


def test_every_env_variable_is_tested() -> None:
    assert set(ENV_FIELDS) == {
        "WINDOW_S",
        "GRACE_S",
        "IDLE_SETTLE_S",
        "EMIT_INTERVAL_S",
        "MAX_CLOCK_SKEW_S",
        "QUALIFY_ONCE_S",
        "CLAWBACK_HORIZON_S",
        "TARGET_RATE_BPS",
        "WATCH_WEIGHT_BPS",
        "DEDUPE_S",
        "QUALIFYING_SOURCES",
        "DEVICE_MEMORY_S",
        "OVERLAP_TOLERANCE_MS",
        "ACCOUNTS_PER_DEVICE",
    }


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("grace_s = -1", "grace_s must be an integer >= 0, got -1"),
        ("window_s = 0", "window_s must be an integer >= 1, got 0"),
        ("window_s = 60.0", "window_s must be an integer >= 1, got 60.0"),  # a float for an int
        ("window_s = true", "window_s must be an integer >= 1, got true"),  # a bool for an int
        ('window_s = "60"', "window_s must be an integer >= 1, got '60'"),
        ("target_rate_bps = 0", "target_rate_bps must be an integer >= 1, got 0"),
        ("default_base_rate = -1", "default_base_rate must be an integer >= 0, got -1"),
        ("weight_like = -1", "weight_like must be an integer >= 0, got -1"),
        ("accounts_per_device = 0", "accounts_per_device must be an integer >= 1, got 0"),
        ("overlap_tolerance_ms = -1", "overlap_tolerance_ms must be an integer >= 0, got -1"),
        ("device_memory_s = 1.5", "device_memory_s must be an integer >= 0, got 1.5"),
        ("max_source_skew_s = -60", "max_source_skew_s must be an integer >= 0, got -60"),
        (
            "velocity_distinct_ratio_pct = 101",
            "velocity_distinct_ratio_pct must be an integer between 0 and 100, got 101",
        ),
        ("emit_interval_s = -0.5", "emit_interval_s must be a number >= 0, got -0.5"),
        ("emit_interval_s = nan", "emit_interval_s must be a number >= 0, got nan"),
        ("emit_interval_s = inf", "emit_interval_s must be a number >= 0, got inf"),
        ("emit_interval_s = false", "emit_interval_s must be a number >= 0, got false"),
        ("min_multiplier_bps = 30_000", "min_multiplier_bps must be <= max_multiplier_bps, got 30000 > 20000"),
        ("max_multiplier_bps = 4_000", "min_multiplier_bps must be <= max_multiplier_bps, got 5000 > 4000"),
        ("[base_rates]\nUS = -5", "base_rates.US must be an integer >= 0, got -5"),
        ("[base_rates]\nUS = 1.5", "base_rates.US must be an integer >= 0, got 1.5"),
        ("[base_rates]\nusa = 100", "base_rates key 'usa' must be a two-letter region like US"),
        ("base_rates = 5", "base_rates must be a table of region = micros, got 5"),
        (
            'qualifying_sources = ["for_you", "live"]',
            "qualifying_sources has unknown name 'live' (known: ad, following, for_you, profile, search)",
        ),
        (
            'qualifying_sources = "for_you"',
            "qualifying_sources must be a list of names from ad, following, for_you, profile, search, got 'for_you'",
        ),
        (
            "qualifying_sources = []",
            "qualifying_sources must name at least one of ad, following, for_you, profile, search",
        ),
        (
            'duplicate_interaction_kinds = ["view"]',
            "duplicate_interaction_kinds has unknown name 'view' (known: comment, follow, like, share)",
        ),
        ("gracee_s = 1", "unknown key 'gracee_s'; did you mean 'grace_s'?"),
        ("GRACE_S = 1", "unknown key 'GRACE_S'; did you mean 'grace_s'?"),
        ("colour = 1", "unknown key 'colour'"),
    ],
)
def test_file_errors_name_the_key_and_the_file(tmp_path: Path, toml: str, message: str) -> None:
    path = _write(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as err:
        load_policy({}, path)
    assert str(err.value) == f"POLICY_FILE {path}: {message}"


def test_file_that_is_not_toml(tmp_path: Path) -> None:
    path = _write(tmp_path, "grace_s = \n")
    with pytest.raises(ConfigError, match=rf"^POLICY_FILE {re.escape(path)}: not valid TOML \("):
        load_policy({}, path)


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=rf"^POLICY_FILE {re.escape(path)}: cannot read it \("):
        load_policy({}, path)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GRACE_S": "-1"}, "GRACE_S must be an integer >= 0, got -1"),
        ({"WINDOW_S": "0"}, "WINDOW_S must be an integer >= 1, got 0"),
        ({"WINDOW_S": "abc"}, "WINDOW_S must be an integer >= 1, got 'abc'"),
        ({"WINDOW_S": "1.5"}, "WINDOW_S must be an integer >= 1, got '1.5'"),
        ({"WINDOW_S": "true"}, "WINDOW_S must be an integer >= 1, got 'true'"),
        ({"TARGET_RATE_BPS": "0"}, "TARGET_RATE_BPS must be an integer >= 1, got 0"),
        ({"ACCOUNTS_PER_DEVICE": "0"}, "ACCOUNTS_PER_DEVICE must be an integer >= 1, got 0"),
        ({"EMIT_INTERVAL_S": "fast"}, "EMIT_INTERVAL_S must be a number >= 0, got 'fast'"),
        ({"EMIT_INTERVAL_S": "-1"}, "EMIT_INTERVAL_S must be a number >= 0, got -1.0"),
        ({"EMIT_INTERVAL_S": "nan"}, "EMIT_INTERVAL_S must be a number >= 0, got nan"),
        (
            {"QUALIFYING_SOURCES": "for_you,live"},
            "QUALIFYING_SOURCES has unknown name 'live' (known: ad, following, for_you, profile, search)",
        ),
        (
            {"QUALIFYING_SOURCES": " , "},
            "QUALIFYING_SOURCES must name at least one of ad, following, for_you, profile, search",
        ),
    ],
)
def test_env_errors_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_policy(env)
    assert str(err.value) == f"environment: {message}"


def test_env_error_wins_even_when_the_file_is_fine(tmp_path: Path) -> None:
    path = _write(tmp_path, "grace_s = 60\n")
    with pytest.raises(ConfigError, match=r"^environment: GRACE_S must be an integer >= 0, got -5$"):
        load_policy({"GRACE_S": "-5"}, path)


# --- watch time in engagement (SPEC §5: completion_bps, WATCH_WEIGHT_BPS; policies/v2.toml) ---------------------

V2 = replace(P, watch_weight_bps=2_000)


@pytest.mark.parametrize(
    ("watch_ms", "video_ms", "expected"),
    [
        (0, 60_000, 0),  # nothing watched
        (30_000, 60_000, 5_000),  # half
        (59_999, 60_000, 9_999),  # 9_999.83 floored
        (60_000, 60_000, 10_000),  # to the end
        (60_001, 60_000, 10_000),  # past the end: capped at the whole video
        (600_000, 60_000, 10_000),  # ten loops: still 10_000
        (10_000, 120_000, 833),  # 833.33 floored (the README example)
        (1, 3, 3_333),
    ],
)
def test_view_completion_bps(watch_ms: int, video_ms: int, expected: int) -> None:
    assert view_completion_bps(watch_ms, video_ms) == expected


@pytest.mark.parametrize(
    ("completion_sum", "qualified_views", "expected"),
    [
        (0, 0, 0),  # a window with no qualified view: max(qv, 1), no division by zero
        (10_000, 1, 10_000),
        (20_000, 3, 6_666),  # 6_666.67 floored
        (16_660, 20, 833),
    ],
)
def test_mean_completion_bps(completion_sum: int, qualified_views: int, expected: int) -> None:
    assert mean_completion_bps(completion_sum, qualified_views) == expected


@pytest.mark.parametrize(
    ("policy", "score", "qualified_views", "completion", "expected"),
    [
        (P, 1, 20, 10_000, 5_000),  # v1 (weight 0): watch time changes nothing
        (V2, 0, 0, 0, 5_000),  # zero views, nothing watched: 0.5x
        (V2, 0, 10, 10_000, 20_000),  # watched to the end: rate 0 + 10_000*2_000//10_000 = 2_000 -> 2.0x (edge)
        (V2, 0, 5, 2_500, 5_000),  # rate 500 -> exactly the lower edge
        (V2, 0, 5, 4_999, 9_990),  # 4_999*2_000//10_000 = 999 (999.8 floored) -> 9_990
        (V2, 1, 20, 833, 6_660),  # rate 10_000//20 + 833*2_000//10_000 = 500 + 166 = 666 -> 6_660
        (V2, 5, 0, 10_000, 20_000),  # rate 50_000 + 2_000, clamped
    ],
)
def test_multiplier_with_watch_weight(
    policy: Policy, score: int, qualified_views: int, completion: int, expected: int
) -> None:
    assert multiplier_bps(policy, score, qualified_views, completion) == expected


@pytest.mark.parametrize(
    ("policy", "totals", "eligible", "expected"),
    [
        # the README's video B: 20 BR views (6_000 base) each watched 10 s of 120 s (833 bps), 1 like
        (
            P,
            WindowTotals(20, 6_000, likes=1, completion_bps_sum=16_660),
            True,
            Settled(20, 6_000, 1, 5_000, 3_000, 833),
        ),
        # v2: multiplier 6_660 -> 6_000*6_660//10_000 = 3_996
        (
            V2,
            WindowTotals(20, 6_000, likes=1, completion_bps_sum=16_660),
            True,
            Settled(20, 6_000, 1, 6_660, 3_996, 833),
        ),
        # 7 BR views watched 3_333 bps on average (23_333 // 7), no engagement: rate 666 -> 6_660 -> 2_100*0.666
        (V2, WindowTotals(7, 2_100, completion_bps_sum=23_333), True, Settled(7, 2_100, 0, 6_660, 1_398, 3_333)),
        # no qualified view: nothing to average, no money
        (V2, WindowTotals(0, 0), True, Settled(0, 0, 0, 5_000, 0, 0)),
        # ineligible creator: no qualified views, so no completion either
        (V2, WindowTotals(20, 6_000, completion_bps_sum=200_000), False, Settled(0, 0, 0, 5_000, 0, 0)),
    ],
)
def test_settle_with_watch_time(policy: Policy, totals: WindowTotals, eligible: bool, expected: Settled) -> None:
    assert settle(policy, totals, eligible) == expected


def test_policies_v2_toml_sets_only_the_watch_weight() -> None:
    v2 = load_policy({}, str(Path(__file__).parents[2] / "policies" / "v2.toml"))
    assert v2 == V2
    assert policy_hash(v2) != policy_hash(P)


@pytest.mark.parametrize("value", ["-1", "0.5", "true", '"2000"'])
def test_watch_weight_bps_bad_values_are_refused(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="watch_weight_bps must be an integer >= 0"):
        load_policy({}, _write(tmp_path, f"watch_weight_bps = {value}\n"))
