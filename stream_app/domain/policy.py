"""The reward policy (SPEC §5) and authenticity thresholds (SPEC §6): every number in one place, its TOML and
environment overrides, the policy hash, and THE reward formula (its only home). Pure integer arithmetic.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.domain.errors import ConfigError
from stream_app.domain.events import KNOWN_KINDS, KNOWN_SOURCES

# Base rate in micros per qualified view, by region (SPEC §5: an RPM of $1.00 ... $0.10 per 1,000 views).
DEFAULT_BASE_RATES: Mapping[str, int] = MappingProxyType(
    {"US": 1000, "GB": 800, "DE": 800, "FR": 700, "JP": 700, "CA": 800, "AU": 800, "BR": 300, "IN": 100}
)

# Basis points in one whole: 10_000 bps = 1.0x (SPEC §5 writes rates and multipliers in bps).
BPS = 10_000

POLICY_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class Policy:
    """Every §5/§6 number. Constructing one validates it (ConfigError); load_policy() applies file and env."""

    # --- windows and settling (SPEC §5) ---
    window_s: int = 3600
    grace_s: int = 300
    idle_settle_s: int = 30
    emit_interval_s: float = 1.0  # not money: output pacing only (SPEC §7)
    max_clock_skew_s: int = 300  # SPEC §4 future_timestamp
    clawback_horizon_s: int = 604_800
    # --- qualifying views (SPEC §5) ---
    min_watch_ms: int = 5_000
    min_video_ms: int = 60_000
    qualifying_sources: frozenset[str] = frozenset({"for_you"})
    qualify_once_s: int = 86_400
    # --- eligible creator (SPEC §5) ---
    min_followers: int = 10_000
    min_views_30d: int = 100_000
    # --- base rates (SPEC §5) ---
    # hash=False: a mapping is not hashable; equality still compares it, so equal policies hash equal.
    base_rates: Mapping[str, int] = field(default_factory=lambda: DEFAULT_BASE_RATES, hash=False)
    default_base_rate: int = 400
    # --- engagement (SPEC §5) ---
    weight_like: int = 1
    weight_comment: int = 2
    weight_share: int = 3
    weight_follow: int = 3
    target_rate_bps: int = 1_000
    min_multiplier_bps: int = 5_000
    max_multiplier_bps: int = 20_000
    # Watch time in engagement (SPEC §5): 0 keeps policy v1's money; policies/v2.toml sets 2_000.
    watch_weight_bps: int = 0
    # --- authenticity thresholds (SPEC §6) ---
    dedupe_s: int = 86_400
    impossible_watch_factor: int = 20
    viewer_repeat_max: int = 5  # the 6th and later views are rejected
    viewer_repeat_span_s: int = 600
    device_burst_max: int = 60  # more than this many views ...
    device_burst_span_s: int = 60  # ... within this span
    # SPEC §6 device_overlap: one screen shows one video at a time. A view's watch interval may overlap the device's
    # other views of the last DEVICE_MEMORY_S by at most OVERLAP_TOLERANCE_MS in total (clock skew, a player that
    # starts the next video a moment early).
    device_memory_s: int = 600
    overlap_tolerance_ms: int = 2_000
    # SPEC §6 account_farm: a phone has few owners; the 9th and later accounts of a device within DEDUPE_S.
    accounts_per_device: int = 8
    # Ours (README, Authenticity): a device partition's event-time watermark is the slowest of the event partitions
    # feeding it, but never more than this behind the most advanced one, so a source that stalls or has no owner
    # cannot hold the device judge (and the clawback memory waiting for it) back without limit.
    max_source_skew_s: int = 3_600
    velocity_span_s: int = 60
    velocity_min_views: int = 200
    velocity_baseline_factor: int = 10
    velocity_baseline_minutes: int = 60
    velocity_distinct_ratio_pct: int = 50  # distinct viewers under half of the views
    engagement_lookback_s: int = 86_400
    # SPEC §6 duplicate_interaction: only likes and follows are one per viewer (comments, shares may repeat).
    duplicate_interaction_kinds: frozenset[str] = frozenset({"like", "follow"})
    # --- how long a video keeps an accepted view for clawback (our choice; SPEC §5 Clawback, §6 device rules) ---
    # Flags from the device rules reach a video's partition through the device topics a moment after the view:
    # accepted views are kept this long past the longest burst span, in event time.
    flag_latency_allowance_s: int = 600
    # While the device judge has not acknowledged a view's time (it lags, or its partition has no owner), accepted
    # views are kept for its flags, but at most this far behind the video's newest view.
    device_flag_hold_s: int = 3_600

    def __post_init__(self) -> None:
        # Normalise once so equal policies have equal canonical JSON (and so equal hashes), and a caller's
        # dict or set passed in cannot change the policy afterwards.
        for f in fields(self):
            value = _validate(f.name, getattr(self, f.name), "Policy")
            object.__setattr__(self, f.name, value)
        _check_multiplier_range(self.min_multiplier_bps, self.max_multiplier_bps, "Policy")


# --- validation -------------------------------------------------------------------------------------------

# Smallest allowed value of every integer field (why: windows and spans must be positive, divisors non-zero,
# everything else non-negative; 0 for a span-like threshold means "off").
_INT_MIN: Mapping[str, int] = MappingProxyType(
    {
        "window_s": 1,
        "grace_s": 0,
        "idle_settle_s": 0,
        "max_clock_skew_s": 0,
        "clawback_horizon_s": 0,
        "min_watch_ms": 0,
        "min_video_ms": 0,
        "qualify_once_s": 0,
        "min_followers": 0,
        "min_views_30d": 0,
        "default_base_rate": 0,
        "weight_like": 0,
        "weight_comment": 0,
        "weight_share": 0,
        "weight_follow": 0,
        "target_rate_bps": 1,  # a divisor
        "min_multiplier_bps": 0,
        "max_multiplier_bps": 0,
        "watch_weight_bps": 0,
        "dedupe_s": 0,
        "impossible_watch_factor": 1,
        "viewer_repeat_max": 1,
        "viewer_repeat_span_s": 1,
        "device_burst_max": 1,
        "device_burst_span_s": 1,
        "device_memory_s": 0,  # 0: device_overlap remembers nothing (off)
        "overlap_tolerance_ms": 0,
        "accounts_per_device": 1,
        "max_source_skew_s": 0,
        "velocity_span_s": 1,
        "velocity_min_views": 1,
        "velocity_baseline_factor": 1,
        "velocity_baseline_minutes": 1,  # a divisor (mean views per minute)
        "velocity_distinct_ratio_pct": 0,
        "engagement_lookback_s": 0,
        "flag_latency_allowance_s": 0,
        "device_flag_hold_s": 0,
    }
)
_INT_MAX: Mapping[str, int] = MappingProxyType({"velocity_distinct_ratio_pct": 100})
_SET_ALLOWED: Mapping[str, frozenset[str]] = MappingProxyType(
    {"qualifying_sources": KNOWN_SOURCES, "duplicate_interaction_kinds": KNOWN_KINDS}
)
# An empty qualifying_sources would silently stop all pay: refused. Empty duplicate kinds turns that rule off.
_SET_NON_EMPTY = frozenset({"qualifying_sources"})
_FLOAT_FIELDS = frozenset({"emit_interval_s"})
_REGION_RE = re.compile(r"[A-Z]{2}")
_ENV_INT_RE = re.compile(r"[+-]?[0-9]+")

FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Policy))

# Environment variables that override a policy field (SPEC §9 names the first four; the rest are every other
# SPEC number written in capitals). The environment wins over POLICY_FILE.
ENV_FIELDS: Mapping[str, str] = MappingProxyType(
    {
        "WINDOW_S": "window_s",
        "GRACE_S": "grace_s",
        "IDLE_SETTLE_S": "idle_settle_s",
        "EMIT_INTERVAL_S": "emit_interval_s",
        "MAX_CLOCK_SKEW_S": "max_clock_skew_s",
        "QUALIFY_ONCE_S": "qualify_once_s",
        "CLAWBACK_HORIZON_S": "clawback_horizon_s",
        "TARGET_RATE_BPS": "target_rate_bps",
        "WATCH_WEIGHT_BPS": "watch_weight_bps",
        "DEDUPE_S": "dedupe_s",
        "QUALIFYING_SOURCES": "qualifying_sources",
        "DEVICE_MEMORY_S": "device_memory_s",
        "OVERLAP_TOLERANCE_MS": "overlap_tolerance_ms",
        "ACCOUNTS_PER_DEVICE": "accounts_per_device",
    }
)

_SPECIAL = _FLOAT_FIELDS | _SET_ALLOWED.keys() | {"base_rates"}
assert set(FIELD_NAMES) == set(_INT_MIN) | _SPECIAL, "every Policy field needs a validation rule"


def _show(value: object) -> str:
    """A value as the user wrote it (TOML spelling for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _check_int(key: str, value: object, source: str, lo: int, hi: int | None) -> int:
    bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
    # bool is an int subclass in Python; a TOML `true` for a number is a mistake, so refuse it.
    if type(value) is not int or value < lo or (hi is not None and value > hi):
        raise ConfigError(f"{source}: {key} must be an integer {bound}, got {_show(value)}")
    return value


def _validate(name: str, value: object, source: str, label: str | None = None) -> object:
    """Check one field's value; return it normalised (frozenset, read-only mapping, float).

    `label` is the key as the user wrote it (an environment variable name); it defaults to the field name.
    """
    key = label or name
    if name in _FLOAT_FIELDS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ConfigError(f"{source}: {key} must be a number >= 0, got {_show(value)}")
        return float(value)
    if name in _SET_ALLOWED:
        return _check_names(name, key, value, source)
    if name == "base_rates":
        return _check_rates(value, source)
    return _check_int(key, value, source, _INT_MIN[name], _INT_MAX.get(name))


def _check_names(name: str, key: str, value: object, source: str) -> frozenset[str]:
    allowed = _SET_ALLOWED[name]
    choices = ", ".join(sorted(allowed))
    if isinstance(value, str) or not isinstance(value, (list, tuple, set, frozenset)):
        raise ConfigError(f"{source}: {key} must be a list of names from {choices}, got {_show(value)}")
    for item in value:
        if item not in allowed:
            raise ConfigError(f"{source}: {key} has unknown name {_show(item)} (known: {choices})")
    if not value and name in _SET_NON_EMPTY:
        raise ConfigError(f"{source}: {key} must name at least one of {choices}")
    return frozenset(value)


def _check_rates(value: object, source: str) -> Mapping[str, int]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: base_rates must be a table of region = micros, got {_show(value)}")
    rates: dict[str, int] = {}
    for region, rate in value.items():
        if not isinstance(region, str) or not _REGION_RE.fullmatch(region):
            raise ConfigError(f"{source}: base_rates key {_show(region)} must be a two-letter region like US")
        rates[region] = _check_int(f"base_rates.{region}", rate, source, 0, None)
    return MappingProxyType(dict(sorted(rates.items())))


def _check_multiplier_range(lo: int, hi: int, source: str) -> None:
    if lo > hi:
        raise ConfigError(f"{source}: min_multiplier_bps must be <= max_multiplier_bps, got {lo} > {hi}")


# --- loading ----------------------------------------------------------------------------------------------

_DEFAULT_POLICY = Policy()


def _read_policy_file(path: str) -> dict[str, object]:
    source = f"POLICY_FILE {path}"
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML ({exc})") from None


def _unknown_key(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key.lower(), FIELD_NAMES, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{source}: unknown key {key!r}{hint}")


def _parse_env(var: str, name: str, raw: str) -> object:
    """Turn an environment string into the field's type; _validate checks the range afterwards."""
    text = raw.strip()
    source = "environment"
    if name == "qualifying_sources":
        return [item.strip() for item in text.split(",") if item.strip()]
    if name in _FLOAT_FIELDS:
        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"{source}: {var} must be a number >= 0, got {raw!r}") from None
        return number
    if not _ENV_INT_RE.fullmatch(text):
        raise ConfigError(f"{source}: {var} must be an integer >= {_INT_MIN[name]}, got {raw!r}")
    return int(text)


def load_policy(env: Mapping[str, str], policy_file: str | None = None) -> Policy:
    """The effective policy: defaults, then POLICY_FILE (TOML), then environment variables (the env wins).

    TOML keys are the Policy field names; `[base_rates]` entries are merged over the default table (a region
    not listed keeps its default rate). `policy_file=None` falls back to env["POLICY_FILE"]. An empty
    environment variable counts as unset. Any bad value raises ConfigError naming the key and its source.
    """
    if policy_file is None:
        policy_file = env.get("POLICY_FILE") or None
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if policy_file is not None:
        source = f"POLICY_FILE {policy_file}"
        for key, value in _read_policy_file(policy_file).items():
            if key not in FIELD_NAMES:
                raise _unknown_key(key, source)
            if key == "base_rates":
                rates = _check_rates(value, source)
                value = {**DEFAULT_BASE_RATES, **rates}
            values[key] = _validate(key, value, source)
            origin[key] = source
    for var, name in ENV_FIELDS.items():
        raw = env.get(var)
        if raw is None or not raw.strip():
            continue
        values[name] = _validate(name, _parse_env(var, name, raw), "environment", var)
        origin[name] = "environment"
    # The one cross-field rule, checked here so the message names the source that broke it.
    lo = values.get("min_multiplier_bps", _DEFAULT_POLICY.min_multiplier_bps)
    hi = values.get("max_multiplier_bps", _DEFAULT_POLICY.max_multiplier_bps)
    _check_multiplier_range(lo, hi, origin.get("min_multiplier_bps") or origin.get("max_multiplier_bps", "Policy"))
    return replace(_DEFAULT_POLICY, **values)


# The fields that set only how much a qualified view earns, never which events are accepted, suspicious or late,
# nor when a window settles: which views qualify, which creators are eligible, rates, weights and the multiplier.
# (emit_interval_s paces the output only.) Two policies equal in every other field judge every event alike.
MONEY_FIELDS = frozenset(
    {
        "emit_interval_s",
        "min_watch_ms",
        "min_video_ms",
        "qualifying_sources",
        "qualify_once_s",
        "min_followers",
        "min_views_30d",
        "base_rates",
        "default_base_rate",
        "weight_like",
        "weight_comment",
        "weight_share",
        "weight_follow",
        "target_rate_bps",
        "min_multiplier_bps",
        "max_multiplier_bps",
        "watch_weight_bps",
    }
)


def same_verdicts(a: Policy, b: Policy) -> bool:
    """Whether two policies judge every event alike: they differ in MONEY_FIELDS at most (a replay then runs the
    device rules once for both, stream_app/replay/engine.py)."""
    return all(getattr(a, name) == getattr(b, name) for name in FIELD_NAMES if name not in MONEY_FIELDS)


@functools.lru_cache(maxsize=16)
def policy_hash(policy: Policy) -> str:
    """`v1-` + the first 8 hex digits of SHA-256 over canonical JSON of every field (SPEC §7).

    Canonical: keys sorted, sets as sorted lists, the base-rate table as a key-sorted object, so the value is
    the same in every process and run for the same effective policy.
    """
    canonical: dict[str, object] = {}
    for f in fields(policy):
        value = getattr(policy, f.name)
        if isinstance(value, frozenset):
            value = sorted(value)
        elif isinstance(value, Mapping):
            value = dict(sorted(value.items()))
        canonical[f.name] = value
    digest = hashlib.sha256(jsoncodec.dumps(canonical)).hexdigest()
    return f"{POLICY_VERSION}-{digest[:8]}"


# --- THE reward formula (SPEC §5) -------------------------------------------------------------------------


def base_rate_micros(policy: Policy, region: str) -> int:
    """Micros one qualified view from `region` earns before the engagement multiplier."""
    return policy.base_rates.get(region, policy.default_base_rate)


def is_qualifying_view(policy: Policy, *, watch_ms: int, video_ms: int, source: str) -> bool:
    """The per-view part of a qualifying view (thresholds inclusive). The once-per-viewer part is state kept
    by the caller; see within_qualify_once. An unknown source never qualifies (it is never in the set)."""
    return watch_ms >= policy.min_watch_ms and video_ms >= policy.min_video_ms and source in policy.qualifying_sources


def within_qualify_once(policy: Policy, ts_a: int, ts_b: int) -> bool:
    """Whether two views of the same (video, viewer) are within QUALIFY_ONCE_S of each other, so the one
    processed later is not qualifying. Exclusive: views exactly QUALIFY_ONCE_S apart are NOT within, matching
    the half-open spans `(ts - span, ts]` of SPEC §6. Symmetric: the earlier-processed view may be later.
    """
    return abs(ts_a - ts_b) < policy.qualify_once_s * 1000


def is_eligible_creator(policy: Policy, *, followers: int, views_30d: int, adult: bool, standing: str) -> bool:
    """A creator earns (thresholds inclusive): enough followers and 30-day views, adult, good standing."""
    return (
        followers >= policy.min_followers and views_30d >= policy.min_views_30d and adult is True and standing == "good"
    )


def interaction_weight(policy: Policy, kind: str) -> int:
    """Engagement points of one interaction of `kind`; an unknown kind weighs 0 (SPEC §3)."""
    if kind == "like":
        return policy.weight_like
    if kind == "comment":
        return policy.weight_comment
    if kind == "share":
        return policy.weight_share
    if kind == "follow":
        return policy.weight_follow
    return 0


def engagement_score(policy: Policy, likes: int, comments: int, shares: int, follows: int) -> int:
    """score = 1*likes + 2*comments + 3*shares + 3*follows (weights as configured, by interaction_weight)."""
    return (
        interaction_weight(policy, "like") * likes
        + interaction_weight(policy, "comment") * comments
        + interaction_weight(policy, "share") * shares
        + interaction_weight(policy, "follow") * follows
    )


def view_completion_bps(watch_ms: int, video_ms: int) -> int:
    """How much of its video one view watched, in basis points: min(watch_ms*10_000 // video_ms, 10_000) (SPEC §5).
    Capped at the whole video (a view may loop past its length); video_ms > 0 is guaranteed by validation."""
    return min(watch_ms * BPS // video_ms, BPS)


def mean_completion_bps(completion_bps_sum: int, qualified_views: int) -> int:
    """completion_bps of a window: the mean over its qualified views of min(watch*10_000 // video, 10_000),
    as the integer division of the sum by max(qv, 1) (SPEC §5)."""
    return completion_bps_sum // max(qualified_views, 1)


def multiplier_bps(policy: Policy, score: int, qualified_views: int, completion_bps: int = 0) -> int:
    """The engagement multiplier of a window, in basis points (10_000 = 1.0x).

    rate_bps = score*10_000 // max(qv, 1) + completion_bps*WATCH_WEIGHT_BPS // 10_000;
    multiplier = clamp(rate_bps*10_000 // TARGET_RATE_BPS, min, max). Every division rounds down (floor), as
    SPEC writes them.
    """
    rate_bps = score * BPS // max(qualified_views, 1) + completion_bps * policy.watch_weight_bps // BPS
    raw = rate_bps * BPS // policy.target_rate_bps
    return min(max(raw, policy.min_multiplier_bps), policy.max_multiplier_bps)


def provisional_micros(base_micros: int, eligible: bool) -> int:
    """Money of an open window: its base micros if its creator is eligible now (else no view is qualified)."""
    return base_micros if eligible else 0


def settled_micros(policy: Policy, base_micros: int, multiplier_bps: int) -> int:
    """Settled money of a window: base_micros * multiplier_bps // 10_000 (rounded down)."""
    return base_micros * multiplier_bps // BPS


def clawback_micros(settled: int, base_micros: int, clawed_base_micros: int, multiplier_bps: int) -> int:
    """Clawback of a settled window: settled - (base - clawed_base) * multiplier_bps // 10_000 (SPEC §5).

    `base_micros` is the window's *settled* base (0 for an ineligible creator) and `clawed_base_micros` the
    cumulative base of its views rejected so far; the clawback of one new rejection is the difference between
    two cumulative results (separate per-view results would round differently). The clawed base is capped at
    the settled base, so a clawback never exceeds the settled money (an ineligible window claws back 0).
    """
    remaining = base_micros - min(max(clawed_base_micros, 0), base_micros)
    return settled - remaining * multiplier_bps // BPS


@dataclass(frozen=True, slots=True)
class WindowTotals:
    """What a window holds at settlement: its qualifying views (before eligibility), their base micros, and
    its accepted interactions by kind."""

    qualified_views: int
    base_micros: int
    likes: int = 0
    comments: int = 0
    shares: int = 0
    follows: int = 0
    completion_bps_sum: int = 0  # over its qualifying views


@dataclass(frozen=True, slots=True)
class Settled:
    """The fixed result of settling one window (the numbers of a `kind: "settlement"` record)."""

    qualified_views: int
    base_micros: int
    score: int
    multiplier_bps: int
    settled_micros: int
    completion_bps: int = 0


def settle(policy: Policy, totals: WindowTotals, eligible: bool) -> Settled:
    """Settle a window. An ineligible creator's window has no qualified views: 0 views, 0 base, 0 money; its
    score is still reported and its multiplier follows the formula with 0 qualified views."""
    qualified = totals.qualified_views if eligible else 0
    base = totals.base_micros if eligible else 0
    completion = mean_completion_bps(totals.completion_bps_sum if eligible else 0, qualified)
    score = engagement_score(policy, totals.likes, totals.comments, totals.shares, totals.follows)
    mult = multiplier_bps(policy, score, qualified, completion)
    return Settled(qualified, base, score, mult, settled_micros(policy, base, mult), completion)
