"""`stream-app publish FILE|-`: JSON lines to an input topic through the producer SDK, for upstream teams and
replays. Each line is checked with the worker's own validation (SPEC §3, `domain/validation.py`) unless --raw, so
a schema error is reported at the line that has it instead of surfacing later in the dead-letter topic.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

from stream_app.domain import jsoncodec
from stream_app.domain.errors import SerializationError
from stream_app.domain.events import InputTopic
from stream_app.domain.partitioning import KEY_FIELD
from stream_app.domain.validation import InvalidEvent, decode_record
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


def _one_partition(key: bytes, partition_count: int) -> int:
    # publish picks each event's partition itself (murmur2 of its id): only the event is judged here
    return 0


def check_line(data: bytes, topic: InputTopic, max_bytes: int) -> EncodedEvent | str:
    """The line as an event ready to send (its original bytes), or the reason it is rejected: the worker's own
    validation (schema, types, ranges, size), in its words, plus what one record of this producer can carry."""
    if len(data) > max_bytes:
        return f"{len(data)} bytes, more than the {max_bytes} bytes one record can carry"
    try:
        document = jsoncodec.loads(data)
    except SerializationError:
        document = None  # decode_record below says why, as the worker would
    if isinstance(document, list):
        return "not a JSON object (got array): one event per line, publish builds the envelopes"
    key = _event_key(document, topic)
    (decoded,) = decode_record(topic, key, data, partition=0, partition_count=1, partition_for=_one_partition)
    if isinstance(decoded, InvalidEvent):
        return decoded.error
    assert key is not None  # a valid event has its id, and the id is its key
    return EncodedEvent(key, data)


def _event_key(document: object, topic: InputTopic) -> bytes | None:
    """The event's id (video_id, creator_id) as record key bytes when the document is an object carrying one."""
    key = document.get(KEY_FIELD[topic]) if isinstance(document, dict) else None
    if not isinstance(key, str) or not key:
        return None
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError:
        return None


def _raw_key(data: bytes, topic: InputTopic) -> bytes | None:
    """The line's id as a record key when the line is a JSON object carrying one, else None (null key)."""
    try:
        document = jsoncodec.loads(data)
    except SerializationError:
        return None
    return _event_key(document, topic)


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
