"""The durable spool on its own: order, acknowledgement, crash damage, the bound."""
from __future__ import annotations

import os

import pytest

from agent.stream.spool import HEADER, Position, Spool, encode_record

KB = 1024


def _fill(spool: Spool, seqs, size: int = 300, epoch: int = 1) -> None:
    for seq in seqs:
        spool.append([(epoch, seq, seq.to_bytes(4, "little") + os.urandom(size))], compress=False)


def _read_all(spool: Spool) -> list[int]:
    return [e.seq for e in spool.read(spool.start(), limit=1_000_000)]


def _segments(path) -> list:
    return sorted(p for p in path.iterdir() if p.suffix == ".seg")


def test_records_replay_in_order_after_reopen(tmp_path):
    spool = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=8 * KB)
    _fill(spool, range(1, 101))
    spool.close()
    again = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=8 * KB)
    assert _read_all(again) == list(range(1, 101))
    assert len(_segments(tmp_path)) > 1, "the test should span several segments"


def test_payload_round_trips_with_compression(tmp_path):
    spool = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=8 * KB)
    payload = b"gpu_temperature_celsius" * 200
    spool.append([(3, 9, payload)])
    entry = spool.read(spool.start())[0]
    assert (entry.epoch, entry.seq, entry.payload) == (3, 9, payload)
    assert spool.status()["disk_bytes"] < len(payload) / 4


def test_acknowledged_records_are_not_replayed_and_whole_segments_are_deleted(tmp_path):
    spool = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=8 * KB, cursor_interval=0)
    _fill(spool, range(1, 101))
    before = len(_segments(tmp_path))
    entries = spool.read(spool.start(), limit=60)
    spool.ack(entries[-1].end)
    assert len(_segments(tmp_path)) < before
    assert spool.status()["backlog_records"] == 40
    spool.close()
    again = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=8 * KB)
    assert _read_all(again) == list(range(61, 101))
    assert again.status()["backlog_records"] == 40


def test_a_lagging_cursor_only_resends(tmp_path):
    # The cursor is saved at most once per interval; a crash before that replays acked
    # records (the collector de-duplicates them) but never skips an unacked one.
    spool = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=8 * KB, cursor_interval=3600)
    _fill(spool, range(1, 21))
    spool.ack(spool.read(spool.start(), limit=5)[-1].end)  # saved: first save is immediate
    spool.ack(spool.read(spool.start(), limit=5)[-1].end)  # not saved yet
    crashed = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=8 * KB)  # without close()
    assert _read_all(crashed) == list(range(6, 21))


def test_torn_tail_is_truncated_and_counted(tmp_path):
    spool = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=64 * KB)
    _fill(spool, range(1, 11))
    spool.close()
    newest = _segments(tmp_path)[-1]
    whole = newest.stat().st_size
    record = encode_record(1, 11, b"x" * 500, compress=False)
    with open(newest, "ab") as f:
        f.write(record[: len(record) // 2])  # a write cut short by kill -9
    again = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=64 * KB)
    st = again.status()
    assert (st["torn_tails"], st["torn_bytes"]) == (1, len(record) // 2)
    assert newest.stat().st_size == whole
    assert _read_all(again) == list(range(1, 11))
    _fill(again, [11])  # appending after the repair yields a readable spool
    again.close()
    assert _read_all(Spool(tmp_path, max_bytes=256 * KB, segment_bytes=64 * KB)) == list(range(1, 12))


def test_corrupt_record_is_skipped_and_counted_not_a_crash(tmp_path):
    spool = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=64 * KB)
    _fill(spool, range(1, 11))
    spool.close()
    seg = _segments(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    size = len(data) // 10
    data[4 * size + HEADER.size + 10] ^= 0xFF  # one flipped bit inside record 5's payload
    seg.write_bytes(bytes(data))
    again = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=64 * KB)
    assert _read_all(again) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert again.status()["corrupt_records"] == 1
    assert again.status()["torn_tails"] == 0


def test_garbage_over_a_record_header_resyncs_at_the_next_record(tmp_path):
    spool = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=64 * KB)
    _fill(spool, range(1, 6))
    spool.close()
    seg = _segments(tmp_path)[0]
    data = bytearray(seg.read_bytes())
    size = len(data) // 5
    data[size: size + 16] = b"\0" * 16  # record 2's magic and length gone
    seg.write_bytes(bytes(data))
    again = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=64 * KB)
    assert _read_all(again) == [1, 3, 4, 5]
    assert again.status()["corrupt_records"] == 1


def test_full_spool_drops_oldest_and_counts(tmp_path):
    spool = Spool(tmp_path, max_bytes=64 * KB, segment_bytes=8 * KB)
    _fill(spool, range(1, 1001))
    st = spool.status()
    assert st["disk_bytes"] <= 64 * KB
    assert st["dropped_records"] > 0 and st["dropped_bytes"] > 0
    seqs = _read_all(spool)
    assert seqs == list(range(1001 - len(seqs), 1001)), "what is kept is the newest, contiguous"
    assert st["dropped_records"] + len(seqs) == 1000
    assert st["backlog_records"] == len(seqs)


def test_reader_inside_a_dropped_segment_moves_on(tmp_path):
    spool = Spool(tmp_path, max_bytes=64 * KB, segment_bytes=8 * KB)
    _fill(spool, range(1, 11))
    pos = spool.read(spool.start(), limit=2)[-1].end
    _fill(spool, range(11, 1001))
    assert spool.read(pos, limit=1)[0].seq > 11


def test_segment_size_must_leave_room_for_two(tmp_path):
    with pytest.raises(ValueError, match="segment_bytes"):
        Spool(tmp_path, max_bytes=64 * KB, segment_bytes=48 * KB)


def test_read_waits_for_an_append(tmp_path):
    import threading
    spool = Spool(tmp_path, max_bytes=256 * KB, segment_bytes=8 * KB)
    threading.Timer(0.05, lambda: _fill(spool, [1])).start()
    assert [e.seq for e in spool.read(Position(0, 0), wait=10)] == [1]
