"""One versioned codec for every value the worker stores (video heads, journal segments, partition meta, device
log segments): a two-byte header (a magic byte, then the format number), a kind byte, then the payload: compact
JSON (format 2), or that JSON compressed as one zstd frame (format 3).

Why a header: the layout of stored state changes between releases. A worker must recognise state written by
another layout, migrate it or refuse it with a message saying what to do; without a header it would misread it.
The layout before this one stored whole JSON documents (they start with `{`, or with a NUL for a chunked one).

Why compressed (issue 9, write amplification): journal and device-log segments are most of the bytes the worker
writes to its changelogs, and they are JSON of event ids, viewer ids and timestamps. zstd at level 1 makes them
3-3.7x smaller at about 400 MB/s (under 1 µs per input event; bench/RESULTS.md), so the changelogs, the broker's
disk and a memory:// table's copy of them shrink alike. Values under COMPRESS_MIN_BYTES (a partition's meta, a
video's head) stay plain JSON, where a frame's overhead would outweigh the gain; the format byte says which, per
value, so both are read whatever the setting. Format 3 is read since this release; a release that reads only
format 2 refuses it with its message (README: Upgrading).
"""

from __future__ import annotations

import threading
from enum import Enum
from typing import Any

import zstandard

from stream_app.domain import jsoncodec
from stream_app.domain.errors import StateFormatError

__all__ = ["Kind", "StateFormatError", "decode", "describe_foreign", "encode", "is_previous_layout"]

MAGIC = 0xC5  # not the first byte of any JSON document, nor of the previous layout's chunk header
PLAIN = 2  # format 2: compact JSON (layout 1: one JSON document per video ledger, before journal segments)
COMPRESSED = 3  # format 3: format 2's JSON as one zstd frame
FORMATS = (PLAIN, COMPRESSED)
# Values shorter than this are stored plain: a zstd frame costs about 10 bytes and a call about 2 µs, and a meta
# or head of ~100-300 bytes shrinks by a third at best.
COMPRESS_MIN_BYTES = 1024
LEVEL = 1  # zstd's fastest standard level: 3-3.7x on segments; levels 2-3 gain under 2 % for 1.6x the time
_PLAIN_HEADER = bytes([MAGIC, PLAIN])
_COMPRESSED_HEADER = bytes([MAGIC, COMPRESSED])
# zstd contexts are reused (a new one per value costs more than compressing a meta), but one must never be used by
# two threads at once (measured: the chaos tests' oracles, threads of one process, crashed the interpreter): one
# pair per thread, made by threading.local on a thread's first use.


class _Contexts(threading.local):
    def __init__(self) -> None:
        self.compressor = zstandard.ZstdCompressor(level=LEVEL)
        self.decompressor = zstandard.ZstdDecompressor()


_contexts = _Contexts()


class Kind(Enum):
    """What a stored value is."""

    HEAD = b"h"  # one video's totals, open windows, replay positions, version (domain/scoring.py)
    SEGMENT = b"j"  # one batch's journal of one partition (domain/journal.py)
    META = b"m"  # one partition's watermarks, policy id, device acknowledgements, next segment number
    DEVICE_LOG = b"l"  # one batch's device states of one device partition (domain/device_log.py)


def encode(kind: Kind, payload: Any) -> bytes:
    """A stored value of `kind` (an exact-size copy: tables keep it): compressed from COMPRESS_MIN_BYTES of JSON."""
    document = jsoncodec.dumps(payload)
    if len(document) < COMPRESS_MIN_BYTES:
        return _PLAIN_HEADER + kind.value + document
    return _COMPRESSED_HEADER + kind.value + _contexts.compressor.compress(document)


def decode(kind: Kind, data: bytes) -> Any:
    """The payload of a stored value of `kind`; StateFormatError if it was written by another layout, or if its
    bytes are damaged."""
    header = data[:2]
    if header != _PLAIN_HEADER and header != _COMPRESSED_HEADER:
        raise StateFormatError(describe_foreign(data))
    if data[2:3] != kind.value:  # before decompressing a value that is not the one asked for
        raise StateFormatError(f"a stored {kind.name.lower()} value holds kind {data[2:3]!r}")
    if header == _PLAIN_HEADER:
        return jsoncodec.loads(data[3:])
    try:
        body = _contexts.decompressor.decompress(data[3:])
    except zstandard.ZstdError as exc:
        raise StateFormatError(f"a stored {kind.name.lower()} value does not decompress: {exc}") from exc
    return jsoncodec.loads(body)


def is_previous_layout(data: bytes) -> bool:
    """State written by layout 1 (a JSON document, or a chunked one)."""
    return data[:1] in (b"{", b"\x00")


def describe_foreign(data: bytes) -> str:
    if is_previous_layout(data):
        return "state written by the previous layout (format 1: one JSON document per video ledger)"
    if data[:1] == bytes([MAGIC]) and len(data) > 1:
        return f"state written in format {data[1]}, this worker reads formats {' and '.join(map(str, FORMATS))}"
    return "a stored value this worker does not recognise"
