"""The device log (domain/device_log.py): one segment per batch whatever it changed, the newest entry of each
device wins at restore (from any prefix of the writes), and compaction keeps the log within about twice the live
states without re-serializing them."""

from __future__ import annotations

import random

import pytest

from stream_app.domain import codec, device_log
from stream_app.domain.codec import Kind
from stream_app.domain.device_log import DeviceLog, LogWrite


class Stored:
    """A table of segments, written as the wiring writes a LogWrite (new segments, then the dropped ones)."""

    def __init__(self) -> None:
        self.segments: dict[int, bytes] = {}
        self.writes: list[tuple[str, int, bytes | None]] = []  # every table operation, in order

    def apply(self, write: LogWrite) -> None:
        for seq, value in write.segments:
            self.segments[seq] = value
            self.writes.append(("put", seq, value))
        for seq in write.dropped:
            del self.segments[seq]
            self.writes.append(("del", seq, None))


def state(n: int, size: int = 1) -> bytes:
    return b"[3,%d,%s]" % (n, b",".join([b'"x"'] * size))


def test_a_batch_is_one_segment_and_restore_takes_each_devices_newest_entry() -> None:
    log = DeviceLog()
    stored = Stored()
    for n in range(100):
        log.put(f"d{n}", state(n))
    stored.apply(log.seal())
    assert len(stored.segments) == 1
    log.put("d1", state(1001))
    log.delete("d2")
    log.put("new", state(7))
    stored.apply(log.seal())
    restored = DeviceLog.restore(stored.segments.values())
    assert restored.get("d1") == state(1001) and restored.get("d2") is None and restored.get("new") == state(7)
    assert sorted(restored.device_ids()) == sorted(log.device_ids()) and len(restored) == 100
    assert restored.get("d50") == state(50)


def test_a_seal_with_nothing_changed_writes_nothing_and_a_put_then_delete_leaves_no_mark() -> None:
    log = DeviceLog()
    assert not log.seal()
    log.put("brief", state(1))
    log.delete("brief")
    assert not log.seal() and len(log) == 0


def test_compaction_keeps_the_log_within_twice_the_live_states_and_never_loses_one() -> None:
    rng = random.Random(3)
    log = DeviceLog()
    stored = Stored()
    truth: dict[str, bytes] = {}
    for batch in range(400):
        for _ in range(200):
            device = f"d{rng.randrange(3_000)}"
            if rng.random() < 0.1:
                log.delete(device)
                truth.pop(device, None)
            else:
                value = state(batch, rng.randrange(1, 4))
                log.put(device, value)
                truth[device] = value
        stored.apply(log.seal())
        assert log.entry_count <= 2 * log.live_entry_count + device_log.SLACK_ENTRIES + 2 * 200
        assert log.live_entry_count <= 3_000  # at most one entry per device: deletion marks do not pile up
    assert log.segment_count < 400  # old segments were dropped
    restored = DeviceLog.restore(stored.segments.values())
    assert {d: restored.get(d) for d in restored.device_ids()} == truth


@pytest.mark.parametrize("seed", range(4))
def test_the_states_read_between_seals_are_the_latest_puts_and_deletes(seed: int) -> None:
    """get, len and device_ids answer with the changes not sealed yet (a device's pending state, or its deletion)
    as with those sealed, and a restore from the segments gives what the last seal held."""
    rng = random.Random(seed)
    log = DeviceLog()
    stored = Stored()
    truth: dict[str, bytes] = {}
    for batch in range(60):
        for _ in range(rng.randrange(1, 40)):
            device = f"d{rng.randrange(80)}"
            if rng.random() < 0.3:
                log.delete(device)
                truth.pop(device, None)
            else:
                truth[device] = state(batch, rng.randrange(1, 3))
                log.put(device, truth[device])
            assert len(log) == len(truth)
        assert sorted(log.device_ids()) == sorted(truth)
        assert all(log.get(f"d{n}") == truth.get(f"d{n}") for n in range(80))
        stored.apply(log.seal())
        assert len(log) == len(truth) and all(log.get(f"d{n}") == truth.get(f"d{n}") for n in range(80))
        restored = DeviceLog.restore(stored.segments.values())
        assert len(restored) == len(truth) and {d: restored.get(d) for d in restored.device_ids()} == truth


def test_restore_from_any_prefix_of_the_writes_gives_each_device_a_state_it_had() -> None:
    """A crash can stop the writes anywhere: every device restored has one of the states it had, the newest of
    those whose segment reached the table (the rest is read again from the device-views records)."""
    rng = random.Random(7)
    log = DeviceLog()
    stored = Stored()
    history: dict[str, list[bytes | None]] = {}
    for batch in range(300):
        for _ in range(150):
            device = f"d{rng.randrange(2_000)}"
            value = state(batch * 1000 + rng.randrange(1000))
            log.put(device, value)
            history.setdefault(device, []).append(value)
        stored.apply(log.seal())
    writes = stored.writes
    for cut in [*sorted(rng.sample(range(len(writes)), 25)), len(writes)]:
        table: dict[int, bytes] = {}
        for op, seq, value in writes[:cut]:
            if op == "put":
                assert value is not None
                table[seq] = value
            else:
                table.pop(seq, None)
        restored = DeviceLog.restore(table.values())
        for device in restored.device_ids():
            assert restored.get(device) in history[device]
    final = DeviceLog.restore(stored.segments.values())
    assert {d: final.get(d) for d in final.device_ids()} == {d: v[-1] for d, v in history.items()}


def test_segments_stay_under_the_record_size_and_states_are_embedded_as_stored() -> None:
    log = DeviceLog()
    big = state(1, 2_000)  # about 8 KiB
    for n in range(200):
        log.put(f"device-{n:0120d}", big)
    write = log.seal()
    assert len(write.segments) > 1
    assert all(len(value) <= device_log.SEGMENT_BYTES for _, value in write.segments)
    seq, entries = codec.decode(Kind.DEVICE_LOG, write.segments[0][1])
    assert seq == write.segments[0][0] and entries[0][1] == [3, 1, *["x"] * 2_000]


def test_states_of_the_previous_layout_are_taken_unless_a_segment_has_the_device() -> None:
    log = DeviceLog()
    log.put("both", state(2))
    stored = Stored()
    stored.apply(log.seal())
    restored = DeviceLog.restore(stored.segments.values(), legacy=[("both", state(1)), ("old", state(3))])
    assert restored.get("both") == state(2) and restored.get("old") == state(3)
    write = restored.seal()  # the migrated state goes into a segment
    stored.apply(write)
    again = DeviceLog.restore(stored.segments.values())
    assert again.get("old") == state(3)


def test_a_foreign_segment_is_refused() -> None:
    with pytest.raises(codec.StateFormatError):
        DeviceLog.restore([b"[1,2]"])


def test_deleted_devices_leave_nothing_behind_once_compacted() -> None:
    """Deletion marks are dead weight: a log whose devices were all deleted compacts down to nothing."""
    log = DeviceLog()
    stored = Stored()
    for batch in range(50):
        for n in range(1_000):
            log.put(f"d{batch}-{n}", state(n))
        stored.apply(log.seal())
    for batch in range(50):
        for n in range(1_000):
            log.delete(f"d{batch}-{n}")
        stored.apply(log.seal())
    for _ in range(200):  # later batches, with a little traffic of their own
        log.put("busy", state(1))
        stored.apply(log.seal())
    assert log.entry_count <= device_log.SLACK_ENTRIES + 2 and log.live_entry_count <= device_log.SLACK_ENTRIES + 1
    assert DeviceLog.restore(stored.segments.values()).device_ids() == ["busy"]


def test_a_log_of_long_lived_states_is_not_copied_forward_batch_after_batch() -> None:
    """Devices that keep one state for a day (an account, nothing else) fill the oldest segments with live
    entries: moving them forward frees nothing, so compaction cleans only segments at most half live. What a
    batch writes stays about what it changed, however many states the log holds (measured before: a hot-video
    run wrote 62, 204, then 552 bytes per event in its thirds)."""
    log = DeviceLog()
    for batch in range(100):  # 100,000 long-lived states
        for n in range(1_000):
            log.put(f"old{batch}-{n}", state(n))
        log.seal()
    written: list[int] = []
    for batch in range(400):  # new devices, each written in three batches (a view, judged, forgotten)
        for n in range(1_000):
            for age in range(min(batch + 1, 3)):
                log.put(f"new{batch - age}-{n}", state(n + age))
        write = log.seal()
        written.append(sum(len(codec.decode(Kind.DEVICE_LOG, value)[1]) for _, value in write.segments))
    assert max(written[200:]) <= 2 * 3_000  # the batch's own 3,000 entries, and at most as many copies
    assert log.entry_count <= 2 * len(log) + device_log.SLACK_ENTRIES + 2 * 3_000
