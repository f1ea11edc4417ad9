"""Output helpers of the Faust wiring: grouped sends of internal records, and stopping on a failed batch."""

from __future__ import annotations

import logging
import os
from typing import Any, NoReturn

from stream_app.domain import jsoncodec
from stream_app.edges.partitioner import partition_for

log = logging.getLogger(__name__)

# Internal records are small dicts of ids (at most ~2.5 KB with 128-code-point ids): 200 per Kafka record stays
# under 512 KiB, well inside the default 1 MB record size.
RECORDS_PER_SEND = 200


async def send_grouped(
    topic: Any,
    records: list[dict[str, Any]],
    key_field: str,
    partition_count: int,
    header: dict[str, Any] | None = None,
    outbox: Any = None,
) -> None:
    """Send internal records as one JSON array per target partition (the partition their key maps to): one send
    per partition and batch instead of one per record.

    With a `header`, each value is the object `{**header, "records": [...]}` instead, and every partition gets
    one, an empty list where no record maps to it (the header reaches every partition)."""
    by_partition: dict[int, list[dict[str, Any]]] = {}
    if header is not None:
        by_partition = {partition: [] for partition in range(partition_count)}
    for record in records:
        by_partition.setdefault(partition_for(record[key_field].encode(), partition_count), []).append(record)
    for partition, group in sorted(by_partition.items()):
        for start in range(0, max(len(group), 1), RECORDS_PER_SEND):
            chunk = group[start : start + RECORDS_PER_SEND]
            value = jsoncodec.dumps(chunk if header is None else header | {"records": chunk})
            if outbox is None:
                await topic.send(key=None, value=value, partition=partition, force=True)
            else:
                await outbox.send(topic, None, value, partition)


def fail_stop(what: str, code: int = 70) -> NoReturn:
    """Stop the process at once, before Faust acks the batch: an exception in an agent would ack (and later
    commit) the batch and Faust would restart the agent past it, losing its effects. A restart replays it."""
    log.critical("%s: stopping the worker so the batch is replayed after a restart", what, exc_info=True)
    for handler in logging.getLogger().handlers:
        handler.flush()
    os._exit(code)
