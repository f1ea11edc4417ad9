"""`stream-app publish FILE|-`: JSON lines to an input topic through the producer SDK, for upstream teams and
replays. Light checks only (a JSON object with its id); the worker is the validator of record.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

from stream_app.domain import jsoncodec
from stream_app.domain.errors import SerializationError
from stream_app.domain.events import InputTopic
from stream_app.edges.partitioner import KEY_FIELD
from stream_app.edges.producer import EncodedEvent, RewardsProducer


@dataclass(slots=True)
class PublishReport:
    """Counts of one publish run: non-blank lines read, events sent, Kafka records written, lines rejected."""

    read: int = 0
    sent_events: int = 0
    records: int = 0
    rejected: int = 0
    topic: str = ""

    def summary(self) -> str:
        """One line, like 'read 10 lines: sent 9 events in 3 records to video-views, rejected 1'."""
        return (
            f"read {_count(self.read, 'line')}: sent {_count(self.sent_events, 'event')} "
            f"in {_count(self.records, 'record')} to {self.topic}, rejected {self.rejected}"
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _as_bytes(line: bytes | str) -> bytes:
    # surrogateescape round-trips text read from a stream opened with errors="surrogateescape".
    return line if isinstance(line, bytes) else line.encode("utf-8", "surrogateescape")


_JSON_TYPE_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}


def check_line(data: bytes, topic: InputTopic, max_bytes: int) -> EncodedEvent | str:
    """The line as an event ready to send (its original bytes), or the reason it is rejected."""
    field = KEY_FIELD[topic]
    if len(data) > max_bytes:
        return f"{len(data)} bytes, more than the {max_bytes} bytes one record can carry"
    try:
        obj = jsoncodec.loads(data)
    except SerializationError as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(obj, dict):
        kind = "null" if obj is None else _JSON_TYPE_NAMES.get(type(obj), type(obj).__name__)
        return f"not a JSON object (got {kind})"
    key = obj.get(field)
    if key is None:
        return f"{field}: missing"
    if not isinstance(key, str) or not key:
        return f"{field}: must be a non-empty string"
    try:
        return EncodedEvent(key.encode("utf-8"), data)
    except UnicodeEncodeError:
        return f"{field}: not encodable as UTF-8"


def _raw_key(data: bytes, topic: InputTopic) -> bytes | None:
    """The line's id as a record key when the line is a JSON object carrying one, else None (null key)."""
    try:
        obj = jsoncodec.loads(data)
    except SerializationError:
        return None
    key = obj.get(KEY_FIELD[topic]) if isinstance(obj, dict) else None
    if not isinstance(key, str) or not key:
        return None
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError:
        return None


async def publish_lines(
    lines: Iterable[bytes | str],
    *,
    topic: InputTopic,
    producer: RewardsProducer,
    raw: bool = False,
    stderr: TextIO | None = None,
) -> PublishReport:
    """Send JSON lines to `topic`; blank lines are skipped, rejected ones reported on stderr by number.

    Normal mode sends each line's own bytes (not re-serialized) through the SDK, as envelopes unless the
    producer is in single mode. raw=True sends every non-blank line unvalidated as one record, keyed by its id
    when it parses as an object having one, so malformed records reach the worker (and its dead-letter topic).
    """
    err = sys.stderr if stderr is None else stderr
    report = PublishReport(topic=producer.topic_name(topic))

    def non_blank() -> Iterator[tuple[int, bytes]]:
        for number, line in enumerate(lines, start=1):
            # Only the line terminator is removed: in raw mode the rest is sent byte for byte.
            data = _as_bytes(line).rstrip(b"\r\n")
            if data.strip():
                report.read += 1
                yield number, data

    if raw:
        sent = await producer.send_raw_records(topic, ((_raw_key(data, topic), data) for _, data in non_blank()))
    else:

        def accepted() -> Iterator[EncodedEvent]:
            for number, data in non_blank():
                checked = check_line(data.strip(), topic, producer.max_event_bytes)
                if isinstance(checked, str):
                    report.rejected += 1
                    print(f"line {number}: rejected: {checked}", file=err)
                else:
                    yield checked

        sent = await producer.send_encoded(topic, accepted())
    report.sent_events = sent.events
    report.records = sent.records
    return report
