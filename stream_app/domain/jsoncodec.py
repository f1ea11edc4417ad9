"""orjson behind one tiny module with fixed options: the only JSON codec in the project."""

from __future__ import annotations

from typing import Any

import orjson

from stream_app.domain.errors import SerializationError

JSONDecodeError = orjson.JSONDecodeError


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raise SerializationError (wrapping orjson's error) on bad input."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(str(exc)) from exc


def dumps(obj: Any) -> bytes:
    """Serialize to compact UTF-8 JSON bytes with sorted keys (stable bytes for equal content).

    orjson returns a small document in a buffer of about 4 KiB that it does not shrink (measured: bench/RESULTS.md,
    State memory): a value kept for long must be copied to its exact size, as codec.encode does for stored state
    (it concatenates a header). Values sent at once need no copy."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise SerializationError(str(exc)) from exc


def dumps_indented(obj: Any) -> bytes:
    """Like dumps, indented by two spaces: for files people read (a replay's summary.json)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)
    except TypeError as exc:
        raise SerializationError(str(exc)) from exc


def dumps_to_keep(obj: Any) -> bytes:
    """dumps, copied to its exact size: for a value a table keeps in memory (see dumps)."""
    return memoryview(dumps(obj)).tobytes()
