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
    """Serialize to compact UTF-8 JSON bytes with sorted keys (stable bytes for equal content)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    except TypeError as exc:
        raise SerializationError(str(exc)) from exc
