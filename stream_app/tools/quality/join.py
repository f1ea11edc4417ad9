"""One run's output read back and joined to the labels of the events it was given: the input topics map each
position (topic, partition, offset, index) to an event of the stream, `suspicious-events` and `events-dlq` give
each position its flags, and `reward-accruals` the money (see Join in the package docstring)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from stream_app.domain import jsoncodec
from stream_app.tools.harness import INPUT_TOPICS, Record, read_all
from stream_app.tools.quality.method import QualityError
from stream_app.tools.simulator import INVALID, SimEvent

Position = tuple[str, int, int, int | None]  # (topic without prefix, partition, offset, index)
Flag = tuple[str, str]  # (outcome, reason); a dead letter is ("invalid", "invalid")


@dataclass
class RunOutput:
    """What one worker run produced, joined to the labels of the events it was given."""

    name: str
    prefix: str
    published: int
    seconds: float  # worker launch -> quiet after the last event
    metrics: dict[str, float]
    flags: dict[int, set[Flag]]  # index into the run's event list -> its flags
    details: dict[int, list[str]]  # index -> the `detail` (or DLQ `error`) of each of its audit / DLQ records
    audit_records: int  # distinct (position, outcome) in suspicious-events
    dlq_records: int  # distinct positions in events-dlq
    unjoined: int  # audit/DLQ records whose position is not a published event
    net_micros: dict[str, int]  # video_id -> settled - clawback + provisional (newest accrual)
    provisional_micros: int
    qualified_views: int


def _identity(topic: str, payload: Any) -> tuple[str, str]:
    """What names one published object: its event_id, or (profiles) its whole JSON."""
    if isinstance(payload, dict):
        event_id = payload.get("event_id")
        if isinstance(event_id, str):
            return topic, event_id
        return topic, jsoncodec.dumps(dict(sorted(payload.items()))).decode()
    return topic, jsoncodec.dumps(payload).decode()


def positions_of(stream: Sequence[SimEvent], inputs: Mapping[str, list[Record]]) -> tuple[dict[Position, int], int]:
    """Input position -> index in `stream` of the event published there; and how many positions matched nothing."""
    by_identity: dict[tuple[str, str], list[int]] = {}
    by_raw: dict[tuple[str, bytes | None, bytes], list[int]] = {}
    for index, event in enumerate(stream):
        topic = event.topic.value
        if isinstance(event.payload, bytes):
            by_raw.setdefault((topic, event.raw_key, event.payload), []).append(index)
        else:
            by_identity.setdefault(_identity(topic, event.payload), []).append(index)
    # Occurrences are consumed first to last: the n-th copy in (partition, offset, index) order is the n-th one.
    raw_next: Counter[tuple[str, bytes | None, bytes]] = Counter()
    id_next: Counter[tuple[str, str]] = Counter()
    positions: dict[Position, int] = {}
    unmatched = 0
    for topic, records in inputs.items():
        for partition, offset, key, value in records:
            raw_key = (topic, key, value or b"")
            taken = raw_next[raw_key]
            if raw_key in by_raw and taken < len(by_raw[raw_key]):
                raw_next[raw_key] += 1
                positions[(topic, partition, offset, None)] = by_raw[raw_key][taken]
                continue
            decoded = jsoncodec.loads(value or b"null")
            elements = list(enumerate(decoded)) if isinstance(decoded, list) else [(None, decoded)]
            for element_index, element in elements:
                ident = _identity(topic, element)
                n = id_next[ident]
                candidates = by_identity.get(ident, [])
                if n < len(candidates):
                    id_next[ident] += 1
                    positions[(topic, partition, offset, element_index)] = candidates[n]
                else:
                    unmatched += 1
    unmatched += sum(len(v) for v in by_identity.values()) - sum(id_next.values())
    unmatched += sum(len(v) for v in by_raw.values()) - sum(raw_next.values())
    return positions, unmatched


@dataclass
class _Flags:
    """Flags and details by stream index, joined from audit and dead-letter records by their input position."""

    positions: dict[Position, int]
    prefix: str
    flags: dict[int, set[Flag]] = field(default_factory=dict)
    details: dict[int, list[str]] = field(default_factory=dict)
    unjoined: int = 0

    def position(self, record: Mapping[str, Any]) -> Position:
        topic = str(record["source_topic"]).removeprefix(self.prefix)
        return topic, int(record["partition"]), int(record["offset"]), record["index"]

    def join(self, where: Position, flag: Flag, detail: str) -> None:
        index = self.positions.get(where)
        if index is None:
            self.unjoined += 1
        else:
            self.flags.setdefault(index, set()).add(flag)
            self.details.setdefault(index, []).append(detail)


def _newest_accruals(records: list[Record]) -> dict[str, dict[str, Any]]:
    """video_id -> its accrual of the highest version (a compacted topic read before compaction holds several)."""
    newest: dict[str, dict[str, Any]] = {}
    for *_, value in records:
        if value is None:
            continue
        accrual = jsoncodec.loads(value)
        held = newest.get(accrual["video_id"])
        if held is None or accrual["version"] >= held["version"]:
            newest[accrual["video_id"]] = accrual
    return newest


async def collect(
    name: str,
    stream: list[SimEvent],
    bootstrap: str,
    prefix: str,
    security: Mapping[str, Any],
    published: int,
    seconds: float,
    metrics: dict[str, float],
) -> RunOutput:
    """Read the run's input and output topics under `prefix` and join them to `stream` (QualityError when a
    published event cannot be matched to its label)."""
    inputs = {topic.value: await read_all(bootstrap, prefix + topic.value, security) for topic in INPUT_TOPICS}
    positions, unmatched = positions_of(stream, inputs)
    if unmatched:
        raise QualityError(f"{name} run: {unmatched} published events could not be matched to their labels")
    joined = _Flags(positions, prefix)
    audits: dict[tuple[Position, str, str], str] = {}
    for *_, value in await read_all(bootstrap, prefix + "suspicious-events", security):
        record = jsoncodec.loads(value or b"null")
        audits[(joined.position(record), str(record["outcome"]), str(record["reason"]))] = str(record.get("detail"))
    for (where, outcome, reason), detail in audits.items():
        joined.join(where, (outcome, reason), f"{outcome}:{reason}: {detail}")
    dead: dict[Position, str] = {}
    for *_, value in await read_all(bootstrap, prefix + "events-dlq", security):
        record = jsoncodec.loads(value or b"null")
        dead[joined.position(record)] = str(record.get("error"))
    for where, error in dead.items():
        joined.join(where, (INVALID, INVALID), f"invalid: {error}")
    newest = _newest_accruals(await read_all(bootstrap, prefix + "reward-accruals", security))
    return RunOutput(
        name=name,
        prefix=prefix,
        published=published,
        seconds=seconds,
        metrics=metrics,
        flags=joined.flags,
        details=joined.details,
        audit_records=len(audits),
        dlq_records=len(dead),
        unjoined=joined.unjoined,
        net_micros={v: a["settled_micros"] - a["clawback_micros"] + a["provisional_micros"] for v, a in newest.items()},
        provisional_micros=sum(a["provisional_micros"] for a in newest.values()),
        qualified_views=sum(a["qualified_views"] for a in newest.values()),
    )
