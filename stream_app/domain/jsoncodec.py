"""orjson behind one tiny module with fixed options: the only JSON codec in the project."""

from __future__ import annotations

from typing import Any

import orjson

from stream_app.domain.errors import SerializationError

JSONDecodeError = orjson.JSONDecodeError
_EXACT_COPY_BELOW = 4096


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parse JSON; raise SerializationError (wrapping orjson's error) on bad input."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise SerializationError(str(exc)) from exc


def dumps(obj: Any) -> bytes:
    """Serialize to compact UTF-8 JSON bytes with sorted keys (stable bytes for equal content)."""
    try:
        data = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise SerializationError(str(exc)) from exc
    # orjson returns small documents in a ~4 KiB buffer it does not shrink; a table keeping millions of small
    # values would hold 4 KiB each (measured: bench/RESULTS.md, State memory). An exact-size copy is cheap.
    return memoryview(data).tobytes() if len(data) < _EXACT_COPY_BELOW else data
