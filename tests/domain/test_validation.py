"""Tests of decode_record: every SPEC §3 rule on bytes, key and partition, plus fuzzing for never-raises."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_app.domain import jsoncodec
from stream_app.domain.errors import SerializationError
from stream_app.domain.events import CreatorProfile, Event, InputTopic, InteractionEvent, ViewEvent
from stream_app.domain.validation import (
    _SCHEMAS,
    MAX_ENVELOPE_EVENTS,
    MAX_EVENT_BYTES,
    MAX_ID_CODEPOINTS,
    MAX_RECORD_BYTES,
    MAX_TS,
    DecodedEvent,
    InvalidEvent,
    ValidEvent,
    decode_record,
)

PARTITIONS = 8


def by_length(key: bytes, partition_count: int) -> int:
    """Stand-in for murmur2 whose answer is easy to work out by hand: len(key) % count."""
    return len(key) % partition_count


VIEW: dict[str, Any] = {
    "event_id": "e1",
    "video_id": "v1",
    "creator_id": "c1",
    "viewer_id": "u1",
    "device_id": "d1",
    "ts": 1_700_000_000_000,
    "watch_ms": 6_000,
    "video_ms": 60_000,
    "source": "for_you",
    "region": "US",
}
VIEW_EVENT = ViewEvent("e1", "v1", "c1", "u1", "d1", 1_700_000_000_000, 6_000, 60_000, "for_you", "US")
INTERACTION: dict[str, Any] = {
    "event_id": "e2",
    "video_id": "v1",
    "creator_id": "c1",
    "viewer_id": "u1",
    "device_id": "d1",
    "ts": 1_700_000_000_000,
    "kind": "like",
}
INTERACTION_EVENT = InteractionEvent("e2", "v1", "c1", "u1", "d1", 1_700_000_000_000, "like")
PROFILE: dict[str, Any] = {
    "creator_id": "c1",
    "followers": 10_000,
    "views_30d": 100_000,
    "adult": True,
    "standing": "good",
    "ts": 1_700_000_000_000,
}
PROFILE_EVENT = CreatorProfile("c1", 10_000, 100_000, True, "good", 1_700_000_000_000)
BASE = {InputTopic.VIEWS: VIEW, InputTopic.INTERACTIONS: INTERACTION, InputTopic.PROFILES: PROFILE}


def decode(topic: InputTopic, value: bytes | None, key: bytes | None = b"v1", partition: int = 2) -> list[DecodedEvent]:
    # "v1" and "c1" are 2 bytes long, so by_length sends them to partition 2.
    return decode_record(topic, key, value, partition=partition, partition_count=PARTITIONS, partition_for=by_length)


def view_with(**changes: Any) -> dict[str, Any]:
    return {**VIEW, **changes}


def one_error(topic: InputTopic, obj: dict[str, Any], key: bytes | None = b"v1") -> str:
    [result] = decode(topic, json.dumps(obj).encode(), key=key)
    assert isinstance(result, InvalidEvent), result
    assert result.index is None
    return result.error


# --- valid single-object records -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "key", "expected"),
    [
        (InputTopic.VIEWS, b"v1", VIEW_EVENT),
        (InputTopic.INTERACTIONS, b"v1", INTERACTION_EVENT),
        (InputTopic.PROFILES, b"c1", PROFILE_EVENT),
    ],
)
def test_valid_object_record_is_one_event_with_index_none(topic: InputTopic, key: bytes, expected: Event) -> None:
    value = jsoncodec.dumps(BASE[topic])
    assert decode(topic, value, key=key) == [ValidEvent(expected, None)]


def test_constants_are_the_spec_numbers() -> None:
    assert (MAX_RECORD_BYTES, MAX_EVENT_BYTES, MAX_ENVELOPE_EVENTS, MAX_ID_CODEPOINTS, MAX_TS) == (
        1_048_576,
        65_536,
        1000,
        128,
        9_007_199_254_740_992,
    )


def test_schema_tables_follow_the_event_types_field_order() -> None:
    types: dict[InputTopic, type[Event]] = {
        InputTopic.VIEWS: ViewEvent,
        InputTopic.INTERACTIONS: InteractionEvent,
        InputTopic.PROFILES: CreatorProfile,
    }
    for topic, cls in types.items():
        assert [name for name, _ in _SCHEMAS[topic].checks] == list(cls._fields)


def test_unknown_extra_fields_are_ignored() -> None:
    value = jsoncodec.dumps(view_with(extra={"nested": [1, 2.5]}, another=None))
    assert decode(InputTopic.VIEWS, value) == [ValidEvent(VIEW_EVENT, None)]


def test_unknown_source_and_kind_are_accepted() -> None:
    [view] = decode(InputTopic.VIEWS, jsoncodec.dumps(view_with(source="live_stream")))
    [interaction] = decode(InputTopic.INTERACTIONS, jsoncodec.dumps({**INTERACTION, "kind": "duet"}))
    assert isinstance(view, ValidEvent) and isinstance(view.event, ViewEvent)
    assert view.event.source == "live_stream"
    assert isinstance(interaction, ValidEvent) and isinstance(interaction.event, InteractionEvent)
    assert interaction.event.kind == "duet"


def test_known_source_region_and_kind_are_one_shared_str_each() -> None:
    """A view is kept for its clawback horizon: the decoder's str per occurrence would be kept with it."""
    envelope = jsoncodec.dumps([view_with(event_id="e1"), view_with(event_id="e2")])
    decoded = decode(InputTopic.VIEWS, envelope, key=None)
    first, second = (item.event for item in decoded if isinstance(item, ValidEvent))
    assert isinstance(first, ViewEvent) and isinstance(second, ViewEvent)
    assert (first.source, first.region) == ("for_you", "US")
    assert first.source is second.source and first.region is second.region
    [unknown] = decode(InputTopic.VIEWS, jsoncodec.dumps(view_with(source="live_stream")))
    assert isinstance(unknown, ValidEvent) and isinstance(unknown.event, ViewEvent)
    assert unknown.event.source == "live_stream"  # unknown values are kept as read
    likes = decode(InputTopic.INTERACTIONS, jsoncodec.dumps([INTERACTION, {**INTERACTION, "event_id": "e3"}]), None)
    kinds = [i.event.kind for i in likes if isinstance(i, ValidEvent) and isinstance(i.event, InteractionEvent)]
    assert kinds == ["like", "like"] and kinds[0] is kinds[1]


# --- records that are not an event at all: one InvalidEvent, index None, original bytes -------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"\xff\xfe{}", "value: not valid UTF-8 (invalid start byte at byte 0)"),
        (b'{"a": "\xc3"}', "value: not valid UTF-8 (invalid continuation byte at byte 7)"),
        (b"5", "value: must be a JSON object or an array of 1-1000 objects, got 5"),
        (b'"v1"', "value: must be a JSON object or an array of 1-1000 objects, got 'v1'"),
        (b"null", "value: must be a JSON object or an array of 1-1000 objects, got null"),
        (b"true", "value: must be a JSON object or an array of 1-1000 objects, got true"),
        (b"[]", "value: a batch envelope holds 1-1000 events, got 0"),
        (b"[" + b",".join([b"{}"] * 1001) + b"]", "value: a batch envelope holds 1-1000 events, got 1001"),
    ],
)
def test_record_that_is_not_an_event_is_one_invalid_event(value: bytes, error: str) -> None:
    assert decode(InputTopic.VIEWS, value) == [InvalidEvent(None, error, value)]


@pytest.mark.parametrize("value", [b"", b"{", b'{"a":1,}', b"NaN", b'["\\ud800"]', b"{} {}"])
def test_record_that_is_not_json_names_the_parse_error(value: bytes) -> None:
    [result] = decode(InputTopic.VIEWS, value)
    assert isinstance(result, InvalidEvent)
    assert (result.index, result.value) == (None, value)
    assert result.error.startswith("value: not JSON (")


def test_null_value_is_invalid_with_empty_bytes() -> None:
    assert decode(InputTopic.PROFILES, None, key=b"c1") == [
        InvalidEvent(None, "value: null (no record value), expected a JSON object or array", b"")
    ]


def test_record_over_one_mib_is_invalid_without_parsing() -> None:
    value = b"[" + b" " * MAX_RECORD_BYTES + b"]"  # valid JSON, but 1 MiB + 2 bytes
    assert decode(InputTopic.VIEWS, value) == [
        InvalidEvent(None, "value: 1048578 bytes, over the 1048576-byte limit", value)
    ]


# --- event size -------------------------------------------------------------------------------------------


def padded_view(size: int) -> bytes:
    """A valid view serialized to exactly `size` bytes, padded with an unknown field."""
    bare = jsoncodec.dumps(view_with(pad=""))
    value = jsoncodec.dumps(view_with(pad="x" * (size - len(bare))))
    assert len(value) == size
    return value


def test_object_of_exactly_64_kib_is_valid_and_one_byte_more_is_not() -> None:
    assert decode(InputTopic.VIEWS, padded_view(MAX_EVENT_BYTES)) == [ValidEvent(VIEW_EVENT, None)]
    too_big = padded_view(MAX_EVENT_BYTES + 1)
    assert decode(InputTopic.VIEWS, too_big) == [
        InvalidEvent(None, "event: 65537 bytes serialized, over the 65536-byte limit", too_big)
    ]


def test_object_size_is_the_record_length_including_whitespace() -> None:
    compact = padded_view(MAX_EVENT_BYTES - 10)
    spaced = compact.replace(b":", b": ").replace(b",", b", ")  # 19 separators -> over 64 KiB
    [result] = decode(InputTopic.VIEWS, spaced)
    assert isinstance(result, InvalidEvent)
    assert result.error == f"event: {len(spaced)} bytes serialized, over the 65536-byte limit"


# --- batch envelopes --------------------------------------------------------------------------------------


def test_envelope_gives_one_result_per_element_and_keeps_the_good_ones() -> None:
    too_big = view_with(pad="x" * MAX_EVENT_BYTES)
    bad_watch = view_with(watch_ms=-5)
    elements: list[Any] = [VIEW, 5, bad_watch, too_big, ["x"], view_with(event_id="e9")]
    value = json.dumps(elements, indent=2).encode()  # whitespace in the envelope is not part of element sizes
    assert decode(InputTopic.VIEWS, value, key=None) == [
        ValidEvent(VIEW_EVENT, 0),
        InvalidEvent(1, "event: must be a JSON object, got 5", b"5"),
        InvalidEvent(2, "watch_ms: must be an integer >= 0, got -5", jsoncodec.dumps(bad_watch)),
        InvalidEvent(
            3,
            f"event: {len(jsoncodec.dumps(too_big))} bytes serialized, over the 65536-byte limit",
            jsoncodec.dumps(too_big),
        ),
        InvalidEvent(4, "event: must be a JSON object, got an array of 1 elements", b'["x"]'),
        ValidEvent(ViewEvent("e9", "v1", "c1", "u1", "d1", 1_700_000_000_000, 6_000, 60_000, "for_you", "US"), 5),
    ]


def test_envelope_element_size_is_its_reserialized_length() -> None:
    element = view_with(pad="x" * (MAX_EVENT_BYTES - len(jsoncodec.dumps(view_with(pad="")))))
    assert len(jsoncodec.dumps(element)) == MAX_EVENT_BYTES
    value = json.dumps([element], indent=4).encode()  # bigger than 64 KiB as sent, exactly 64 KiB re-serialized
    assert decode(InputTopic.VIEWS, value, key=None) == [ValidEvent(VIEW_EVENT, 0)]


def test_envelope_of_1000_events_is_accepted() -> None:
    value = jsoncodec.dumps([view_with(event_id=f"e{i}") for i in range(1000)])
    results = decode(InputTopic.VIEWS, value, key=None)
    assert [r.index for r in results] == list(range(1000))
    assert all(isinstance(r, ValidEvent) for r in results)


def test_single_element_envelope_is_index_zero() -> None:
    value = jsoncodec.dumps([PROFILE])
    assert decode(InputTopic.PROFILES, value, key=None) == [ValidEvent(PROFILE_EVENT, 0)]


def test_envelope_element_too_deep_to_reserialize_carries_the_whole_envelope() -> None:
    deep = b"[" * 400 + b"]" * 400  # orjson reads 1024 levels but writes only 255
    value = b"[" + jsoncodec.dumps(VIEW) + b"," + deep + b"]"
    [first, second] = decode(InputTopic.VIEWS, value, key=None)
    assert first == ValidEvent(VIEW_EVENT, 0)
    assert isinstance(second, InvalidEvent)
    assert (second.index, second.value) == (1, value)
    assert second.error.startswith("event: cannot be re-serialized (")


# --- field rules ------------------------------------------------------------------------------------------

ID_ERROR = "must be a string of 1-128 code points, got "
TS_ERROR = "must be an integer with 0 <= ts < 2**53 (epoch ms), got "


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"event_id": ""}, "event_id: " + ID_ERROR + "''"),
        ({"video_id": 7}, "video_id: " + ID_ERROR + "7"),
        ({"creator_id": None}, "creator_id: " + ID_ERROR + "null"),
        ({"viewer_id": ["u1"]}, "viewer_id: " + ID_ERROR + "an array of 1 elements"),
        (
            {"device_id": "d" * 129},
            "device_id: " + ID_ERROR + "a string of 129 code points starting " + repr("d" * 40),
        ),
        ({"ts": -1}, "ts: " + TS_ERROR + "-1"),
        ({"ts": 2**53}, "ts: " + TS_ERROR + "9007199254740992"),
        ({"ts": 1.0}, "ts: " + TS_ERROR + "1.0"),
        ({"ts": "1700000000000"}, "ts: " + TS_ERROR + "'1700000000000'"),
        ({"ts": True}, "ts: " + TS_ERROR + "true"),
        ({"watch_ms": -5}, "watch_ms: must be an integer >= 0, got -5"),
        ({"watch_ms": False}, "watch_ms: must be an integer >= 0, got false"),
        ({"watch_ms": 6000.0}, "watch_ms: must be an integer >= 0, got 6000.0"),
        ({"video_ms": 0}, "video_ms: must be an integer > 0, got 0"),
        ({"video_ms": True}, "video_ms: must be an integer > 0, got true"),
        ({"video_ms": {"ms": 1}}, "video_ms: must be an integer > 0, got an object"),
        ({"source": ""}, "source: " + ID_ERROR + "''"),
        ({"source": 1}, "source: " + ID_ERROR + "1"),
        ({"region": "us"}, "region: must be two capital letters A-Z, got 'us'"),
        ({"region": "US\n"}, "region: must be two capital letters A-Z, got 'US\\n'"),
        ({"region": "USA"}, "region: must be two capital letters A-Z, got 'USA'"),
        ({"region": "ÄB"}, "region: must be two capital letters A-Z, got 'ÄB'"),
        ({"region": "U"}, "region: must be two capital letters A-Z, got 'U'"),
        ({"region": None}, "region: must be two capital letters A-Z, got null"),
    ],
)
def test_view_field_rules(changes: dict[str, Any], error: str) -> None:
    assert one_error(InputTopic.VIEWS, view_with(**changes)) == error


@pytest.mark.parametrize(
    "changes",
    [
        {"event_id": "e" * 128},
        {"viewer_id": "ü" * 128},  # 128 code points, 256 bytes: the limit is on code points
        {"ts": 0},
        {"ts": 2**53 - 1},
        {"watch_ms": 0},
        {"watch_ms": 2**63 - 1},
        {"video_ms": 1},
        {"source": "s" * 128},
        {"region": "ZZ"},
    ],
)
def test_view_boundary_values_are_valid(changes: dict[str, Any]) -> None:
    [result] = decode(InputTopic.VIEWS, json.dumps(view_with(**changes)).encode())
    assert isinstance(result, ValidEvent)
    assert isinstance(result.event, ViewEvent)
    for name, expected in changes.items():
        assert getattr(result.event, name) == expected


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"kind": ""}, "kind: " + ID_ERROR + "''"),
        ({"kind": "k" * 129}, "kind: " + ID_ERROR + "a string of 129 code points starting " + repr("k" * 40)),
        ({"kind": 1}, "kind: " + ID_ERROR + "1"),
        ({"ts": -3}, "ts: " + TS_ERROR + "-3"),
    ],
)
def test_interaction_field_rules(changes: dict[str, Any], error: str) -> None:
    assert one_error(InputTopic.INTERACTIONS, {**INTERACTION, **changes}) == error


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"creator_id": ""}, "creator_id: " + ID_ERROR + "''"),
        ({"followers": -1}, "followers: must be an integer >= 0, got -1"),
        ({"followers": True}, "followers: must be an integer >= 0, got true"),
        ({"views_30d": 1.5}, "views_30d: must be an integer >= 0, got 1.5"),
        ({"adult": 1}, "adult: must be true or false, got 1"),
        ({"adult": "true"}, "adult: must be true or false, got 'true'"),
        ({"adult": None}, "adult: must be true or false, got null"),
        ({"standing": "suspended"}, "standing: must be one of good|restricted|banned, got 'suspended'"),
        ({"standing": "Good"}, "standing: must be one of good|restricted|banned, got 'Good'"),
        ({"ts": 2**53}, "ts: " + TS_ERROR + "9007199254740992"),
    ],
)
def test_profile_field_rules(changes: dict[str, Any], error: str) -> None:
    assert one_error(InputTopic.PROFILES, {**PROFILE, **changes}, key=b"c1") == error


@pytest.mark.parametrize(("standing", "adult"), [("good", True), ("restricted", False), ("banned", True)])
def test_every_standing_and_adult_value_is_valid(standing: str, adult: bool) -> None:
    value = jsoncodec.dumps({**PROFILE, "standing": standing, "adult": adult})
    expected = CreatorProfile("c1", 10_000, 100_000, adult, standing, 1_700_000_000_000)
    assert decode(InputTopic.PROFILES, value, key=b"c1") == [ValidEvent(expected, None)]


@pytest.mark.parametrize(
    ("topic", "missing"),
    [(InputTopic.VIEWS, name) for name in VIEW]
    + [(InputTopic.INTERACTIONS, name) for name in INTERACTION]
    + [(InputTopic.PROFILES, name) for name in PROFILE],
)
def test_missing_field_is_named(topic: InputTopic, missing: str) -> None:
    obj = {name: v for name, v in BASE[topic].items() if name != missing}
    key = b"c1" if topic is InputTopic.PROFILES else b"v1"
    assert one_error(topic, obj, key=key) == f"{missing}: missing"


def test_null_field_is_a_wrong_type_not_missing() -> None:
    assert one_error(InputTopic.VIEWS, view_with(viewer_id=None)) == "viewer_id: " + ID_ERROR + "null"


@pytest.mark.parametrize(
    ("obj", "error"),
    [
        ({k: v for k, v in view_with(watch_ms=-1).items() if k != "viewer_id"}, "viewer_id: missing"),
        ({k: v for k, v in view_with(event_id="").items() if k != "region"}, "event_id: " + ID_ERROR + "''"),
        (view_with(region="x", ts=-1, source=""), "ts: " + TS_ERROR + "-1"),
    ],
)
def test_first_failing_field_in_schema_order_is_reported(obj: dict[str, Any], error: str) -> None:
    assert one_error(InputTopic.VIEWS, obj) == error


# --- record key -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic", "key", "error"),
    [
        (InputTopic.VIEWS, None, "key: record key null differs from video_id 'v1'"),
        (InputTopic.VIEWS, b"v2", "key: record key 'v2' differs from video_id 'v1'"),
        (InputTopic.VIEWS, b"", "key: record key '' differs from video_id 'v1'"),
        (InputTopic.VIEWS, b"\xffv", "key: record key '\\\\xffv' differs from video_id 'v1'"),
        (InputTopic.INTERACTIONS, b"c1", "key: record key 'c1' differs from video_id 'v1'"),
        (InputTopic.PROFILES, b"v1", "key: record key 'v1' differs from creator_id 'c1'"),
        (InputTopic.PROFILES, None, "key: record key null differs from creator_id 'c1'"),
    ],
)
def test_object_record_key_must_equal_its_id(topic: InputTopic, key: bytes | None, error: str) -> None:
    assert one_error(topic, BASE[topic], key=key) == error


def test_key_is_compared_as_utf8_bytes() -> None:
    value = jsoncodec.dumps(view_with(video_id="vé"))  # 3 bytes in UTF-8 -> partition 3
    result = decode(InputTopic.VIEWS, value, key="vé".encode(), partition=3)
    assert result == [
        ValidEvent(ViewEvent("e1", "vé", "c1", "u1", "d1", 1_700_000_000_000, 6_000, 60_000, "for_you", "US"), None)
    ]


def test_envelope_with_a_key_judges_each_element_against_it() -> None:
    other = view_with(video_id="v2")
    value = jsoncodec.dumps([VIEW, other])
    assert decode(InputTopic.VIEWS, value, key=b"v1") == [
        ValidEvent(VIEW_EVENT, 0),
        InvalidEvent(1, "key: record key 'v1' differs from video_id 'v2'", jsoncodec.dumps(other)),
    ]


def test_envelope_with_null_key_mixes_videos_of_one_partition() -> None:
    other = view_with(video_id="v9")  # same length, so same partition under by_length
    results = decode(InputTopic.VIEWS, jsoncodec.dumps([VIEW, other]), key=None)
    assert [type(r) for r in results] == [ValidEvent, ValidEvent]


# --- partition --------------------------------------------------------------------------------------------


def test_event_on_the_wrong_partition_names_the_right_one() -> None:
    assert decode(InputTopic.VIEWS, jsoncodec.dumps(VIEW), partition=0) == [
        InvalidEvent(None, "video_id: 'v1' maps to partition 2, record arrived on partition 0", jsoncodec.dumps(VIEW))
    ]


def test_profile_partition_is_by_creator_id() -> None:
    profile = {**PROFILE, "creator_id": "creator"}  # 7 bytes -> partition 7
    [result] = decode(InputTopic.PROFILES, jsoncodec.dumps(profile), key=b"creator", partition=2)
    assert result == InvalidEvent(
        None,
        "creator_id: 'creator' maps to partition 7, record arrived on partition 2",
        jsoncodec.dumps(profile),
    )


def test_envelope_elements_are_each_checked_for_partition() -> None:
    stray = view_with(video_id="v100")  # 4 bytes -> partition 4
    value = jsoncodec.dumps([VIEW, stray])
    assert decode(InputTopic.VIEWS, value, key=None) == [
        ValidEvent(VIEW_EVENT, 0),
        InvalidEvent(1, "video_id: 'v100' maps to partition 4, record arrived on partition 2", jsoncodec.dumps(stray)),
    ]


def test_partition_for_gets_the_utf8_id_and_the_partition_count() -> None:
    calls: list[tuple[bytes, int]] = []

    def recording(key: bytes, count: int) -> int:
        calls.append((key, count))
        return 5

    value = jsoncodec.dumps(view_with(video_id="vé"))
    result = decode_record(
        InputTopic.VIEWS, "vé".encode(), value, partition=5, partition_count=12, partition_for=recording
    )
    assert isinstance(result[0], ValidEvent)
    assert calls == [("vé".encode(), 12)]


def test_key_is_checked_before_partition() -> None:
    assert one_error(InputTopic.VIEWS, VIEW, key=b"v2") == "key: record key 'v2' differs from video_id 'v1'"
    [result] = decode(InputTopic.VIEWS, jsoncodec.dumps(VIEW), key=b"v2", partition=0)
    assert isinstance(result, InvalidEvent)
    assert result.error == "key: record key 'v2' differs from video_id 'v1'"


# --- fuzzing: the validator never raises and its indexes are consistent ----------------------------------

TOPICS = st.sampled_from(list(InputTopic))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)
fuzzed_field = json_values | st.sampled_from(["", "US", "good", "v1", "c1", 0, -1, 2**53, 1.0, True, "x" * 129])


@st.composite
def near_valid_events(draw: st.DrawFn, topic: InputTopic) -> dict[str, Any]:
    obj: dict[str, Any] = dict(BASE[topic])
    for name in draw(st.lists(st.sampled_from(sorted(obj)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del obj[name]
        else:
            obj[name] = draw(fuzzed_field)
    return obj


def check_shape(results: list[DecodedEvent], expected_indexes: list[int | None]) -> None:
    assert [r.index for r in results] == expected_indexes
    for r in results:
        assert isinstance(r, ValidEvent | InvalidEvent)
        if isinstance(r, InvalidEvent):
            assert r.error and isinstance(r.value, bytes)


def expected_indexes(value: bytes) -> list[int | None]:
    try:
        document = jsoncodec.loads(value)  # the validator's own parser: stdlib json also reads NaN and big ints
    except SerializationError:
        return [None]
    if isinstance(document, list) and 0 < len(document) <= MAX_ENVELOPE_EVENTS:
        return list(range(len(document)))
    return [None]


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    topic=TOPICS,
    key=st.none() | st.binary(max_size=8),
    value=st.binary(max_size=64),
    partition=st.integers(0, 7),
)
def test_random_bytes_never_raise(topic: InputTopic, key: bytes | None, value: bytes, partition: int) -> None:
    results = decode_record(topic, key, value, partition=partition, partition_count=PARTITIONS, partition_for=by_length)
    assert len(results) >= 1
    check_shape(results, expected_indexes(value))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(topic=TOPICS, key=st.none() | st.sampled_from([b"v1", b"c1", b"x"]), document=json_values, data=st.data())
def test_random_json_never_raises(topic: InputTopic, key: bytes | None, document: Any, data: st.DataObject) -> None:
    value = json.dumps(document, ensure_ascii=data.draw(st.booleans())).encode()
    results = decode(topic, value, key=key)
    check_shape(results, expected_indexes(value))
    if not isinstance(document, dict | list):
        [result] = results
        assert isinstance(result, InvalidEvent)
        assert result.value == value


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), topic=TOPICS, as_envelope=st.booleans())
def test_near_valid_events_never_raise(data: st.DataObject, topic: InputTopic, as_envelope: bool) -> None:
    events = data.draw(st.lists(near_valid_events(topic), min_size=1, max_size=4))
    key = b"c1" if topic is InputTopic.PROFILES else b"v1"
    if as_envelope:
        results = decode(topic, json.dumps(events).encode(), key=None)
        check_shape(results, list(range(len(events))))
        pairs = list(zip(events, results, strict=True))
    else:
        results = decode(topic, json.dumps(events[0]).encode(), key=key)
        check_shape(results, [None])
        pairs = [(events[0], results[0])]
    for obj, result in pairs:
        # Untouched events are valid; a valid result has exactly the fields the object carried.
        # (compared as JSON: in Python True == 1 == 1.0, so dict equality would miss a changed type)
        if json.dumps(obj, sort_keys=True) == json.dumps(BASE[topic], sort_keys=True):
            assert isinstance(result, ValidEvent)
        if isinstance(result, ValidEvent):
            assert event_fields(result) == {name: obj[name] for name in BASE[topic]}
        elif as_envelope:
            # The element as the validator read it (orjson reads integers beyond 64 bits as floats).
            assert result.value == jsoncodec.dumps(jsoncodec.loads(json.dumps(obj)))


def event_fields(result: ValidEvent) -> dict[str, Any]:
    return dict(result.event._asdict())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), topic=st.sampled_from([InputTopic.VIEWS, InputTopic.INTERACTIONS]))
def test_the_one_expression_accept_agrees_with_the_field_checks(data: st.DataObject, topic: InputTopic) -> None:
    """`_Schema.accept` (the fast path for valid events) builds an event exactly when every field check passes."""
    from stream_app.domain.validation import _SCHEMAS

    obj = data.draw(near_valid_events(topic))
    schema = _SCHEMAS[topic]
    failures = [name for name, check in schema.checks if name not in obj or check(obj[name]) is not None]
    accepted = schema.accept(obj)
    if failures:
        assert accepted is None
    else:
        assert accepted == schema.build(*(obj[name] for name, _ in schema.checks))
