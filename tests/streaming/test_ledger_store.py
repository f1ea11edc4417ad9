"""TableLedgerStore: ledgers round-trip; one larger than a Kafka record is split into chunk keys and shrinks back."""

from __future__ import annotations

from stream_app.domain.events import ViewEvent
from stream_app.domain.policy import Policy
from stream_app.domain.records import event_to_dict
from stream_app.domain.scoring import Position, VideoLedger
from stream_app.edges.partitioner import partition_for
from stream_app.streaming.tables import CHUNK_BYTES, TableLedgerStore

POLICY = Policy()


def ledger_with_views(video_id: str, views: int) -> VideoLedger:
    ledger = VideoLedger(video_id=video_id, creator_id="c1")
    for n in range(views):
        view = ViewEvent(
            f"event-{n:06d}",
            video_id,
            "c1",
            f"viewer-{n:06d}",
            f"device-{n:06d}",
            1_000 + n,
            10_000,
            90_000,
            "for_you",
            "US",
        )
        ledger.accept_view(POLICY, view, event_to_dict(view), Position(0, n, -1))
    return ledger


def test_small_ledger_is_one_key() -> None:
    table: dict[bytes, bytes] = {}
    store = TableLedgerStore(table, partition_for(b"v1", 4), 4)
    ledger = ledger_with_views("v1", 3)
    store.save(ledger)
    assert list(table) == [b"v1"]
    loaded = store.load("v1")
    assert loaded is not None and loaded.to_dict() == ledger.to_dict()
    assert list(store.video_ids()) == ["v1"]


def test_large_ledger_is_chunked_and_shrinks_back() -> None:
    table: dict[bytes, bytes] = {}
    store = TableLedgerStore(table, partition_for(b"hot", 4), 4)
    big = ledger_with_views("hot", 4_000)
    store.save(big)
    chunks = [k for k in table if k.startswith(b"hot\x00")]
    assert len(chunks) >= 2 and all(len(table[k]) <= CHUNK_BYTES for k in chunks)
    assert table[b"hot"].startswith(b"\x00chunks:")
    loaded = store.load("hot")
    assert loaded is not None and loaded.to_dict() == big.to_dict()
    assert list(store.video_ids()) == ["hot"]  # chunk keys are not videos
    store.save(ledger_with_views("hot", 2))  # shrinks under one record: the chunk keys are deleted
    assert list(table) == [b"hot"]
