"""One versioned codec for every value the worker stores (video heads, journal segments, partition meta, device
log segments): a two-byte header (a magic byte, then the layout's format number), a kind byte, then compact JSON.

Why a header: the layout of stored state changes between releases. A worker must recognise state written by
another layout, migrate it or refuse it with a message saying what to do; without a header it would misread it.
The layout before this one stored whole JSON documents (they start with `{`, or with a NUL for a chunked one).
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.domain.errors import StateFormatError

__all__ = ["Kind", "StateFormatError", "decode", "describe_foreign", "encode", "is_previous_layout"]

MAGIC = 0xC5  # not the first byte of any JSON document, nor of the previous layout's chunk header
FORMAT = 2  # layout 1: one JSON document per video ledger (releases before journal segments)
_HEADER = bytes([MAGIC, FORMAT])


class Kind(Enum):
    """What a stored value is."""

    HEAD = b"h"  # one video's totals, open windows, replay positions, version (domain/scoring.py)
    SEGMENT = b"j"  # one batch's journal of one partition (domain/journal.py)
    META = b"m"  # one partition's watermarks, policy id, device acknowledgements, next segment number
    DEVICE_LOG = b"l"  # one batch's device states of one device partition (domain/device_log.py)


def encode(kind: Kind, payload: Any) -> bytes:
    return _HEADER + kind.value + jsoncodec.dumps(payload)


def decode(kind: Kind, data: bytes) -> Any:
    """The payload of a stored value of `kind`; StateFormatError if it was written by another layout."""
    if data[:2] != _HEADER:
        raise StateFormatError(describe_foreign(data))
    if data[2:3] != kind.value:
        raise StateFormatError(f"a stored {kind.name.lower()} value holds kind {data[2:3]!r}")
    return jsoncodec.loads(data[3:])


def is_previous_layout(data: bytes) -> bool:
    """State written by layout 1 (a JSON document, or a chunked one)."""
    return data[:1] in (b"{", b"\x00")


def describe_foreign(data: bytes) -> str:
    if is_previous_layout(data):
        return "state written by the previous layout (format 1: one JSON document per video ledger)"
    if data[:1] == bytes([MAGIC]) and len(data) > 1:
        return f"state written in format {data[1]}, this worker reads format {FORMAT}"
    return "a stored value this worker does not recognise"
