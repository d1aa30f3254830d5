"""The spool and the stream when the disk misbehaves under them (issue 10, items 6 and 7).

A full disk, a failed fsync, a segment deleted, made unreadable or replaced by a directory
while the agent runs: each is injected here without root (a wrapped `os.write`, `os.fsync`,
`open`; real unlink and mkdir on a temporary directory). What must hold every time: the
failure is logged with its real cause and the path, what is lost is counted by name, and
records written after it are all read back (and, end to end, all sent).
"""
from __future__ import annotations

import builtins
import errno
import io
import logging
import os
import shutil
import stat
from concurrent import futures

import grpc
import pytest

from agent.config import parse
from collector_procs import wait_for
from agent.proto import collector_pb2
from agent.stream.client import StreamClient
from agent.stream.outbox import Outbox
from agent.stream.spool import Spool, SpoolError, encode_record
from agent.wire.columns import points_of

KB = 1024


def _spool(path, **kw) -> Spool:
    kw = {"max_bytes": 256 * KB, "segment_bytes": 8 * KB, "fsync": False, "cursor_interval": 0, **kw}
    return Spool(path, **kw)


def _records(seqs, size: int = 300) -> list[tuple[int, int, bytes]]:
    return [(1, seq, seq.to_bytes(4, "little") * (size // 4)) for seq in seqs]


def _fill(spool: Spool, seqs) -> None:
    for record in _records(seqs):
        spool.append([record], compress=False)


def _read_all(spool: Spool) -> list[int]:
    return [e.seq for e in spool.read(spool.start(), limit=1_000_000)]


def _segments(path) -> list:
    return sorted(p for p in path.iterdir() if p.name.endswith(".seg"))


def _seqs_in(spool: Spool, segment) -> list[int]:
    number = int(segment.stem, 16)
    return [e.seq for e in spool.read(spool.start(), limit=1_000_000) if e.end.segment == number]


def _error(code: int, path=None) -> OSError:
    return OSError(code, os.strerror(code), *([str(path)] if path is not None else []))


# --- fault injection ---------------------------------------------------------------------

def _disk_fills_after(monkeypatch, spool: Spool, room: int) -> None:
    """Writes to the spool's open segment take `room` more bytes, then fail with ENOSPC
    (a short write first, as a real full disk does)."""
    real = os.write
    left = [room]

    def write(fd, data):
        if fd != spool._fd:
            return real(fd, data)
        if left[0] <= 0:
            raise _error(errno.ENOSPC)
        n = real(fd, bytes(data[:left[0]]))
        left[0] -= n
        return n
    monkeypatch.setattr(os, "write", write)


def _fsync_fails(monkeypatch, when, code: int = errno.EIO, times: int = 1_000_000) -> None:
    """os.fsync(fd) fails with `code` for the fds `when(fd)` picks, `times` times."""
    real = os.fsync
    left = [times]

    def fsync(fd):
        if left[0] > 0 and when(fd):
            left[0] -= 1
            raise _error(code)
        return real(fd)
    monkeypatch.setattr(os, "fsync", fsync)


def _refuse(monkeypatch, path, code: int, writes_only: bool = False) -> None:
    """Opening `path` fails with `code` (every open, or only those for writing), through
    whichever of open(), io.open() and os.open() the code under test uses."""
    target = str(path)
    real_open, real_os_open = builtins.open, os.open

    def refused(name, writing) -> bool:
        return not isinstance(name, int) and str(name) == target and (bool(writing) or not writes_only)

    def fake_open(file, mode="r", *args, **kwargs):
        if refused(file, any(c in mode for c in "wax+")):
            raise _error(code, file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(name, flags, *args, **kwargs):
        if refused(name, flags & (os.O_WRONLY | os.O_RDWR)):
            raise _error(code, name)
        return real_os_open(name, flags, *args, **kwargs)
    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


# --- item 6: a full disk -------------------------------------------------------------------

def test_a_write_cut_short_by_a_full_disk_leaves_the_segment_as_it_was(tmp_path, monkeypatch):
    spool = _spool(tmp_path, segment_bytes=64 * KB)
    _fill(spool, range(1, 6))
    (segment,) = _segments(tmp_path)
    size = segment.stat().st_size
    _disk_fills_after(monkeypatch, spool, room=100)  # a third of a record goes in
    with pytest.raises(SpoolError, match=f"{segment.name}.*No space left on device"):
        _fill(spool, [6])
    assert segment.stat().st_size == size
    monkeypatch.undo()  # space is back

    _fill(spool, range(7, 12))
    assert _read_all(spool) == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    st = spool.status()
    assert (st["corrupt_records"], st["backlog_records"]) == (0, 10)
    spool.close()
    again = _spool(tmp_path, segment_bytes=64 * KB)
    assert _read_all(again) == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert (again.status()["corrupt_records"], again.status()["torn_tails"]) == (0, 0)


def test_a_failed_append_keeps_none_of_its_records(tmp_path, monkeypatch):
    # The outbox counts every item of a failed append as lost: none of them may be sent.
    spool = _spool(tmp_path, segment_bytes=64 * KB)
    _fill(spool, range(1, 4))
    size = _segments(tmp_path)[0].stat().st_size
    one = len(encode_record(*_records([4])[0], compress=False))
    _disk_fills_after(monkeypatch, spool, room=2 * one + one // 2)
    with pytest.raises(SpoolError, match="No space left on device"):
        spool.append(_records([4, 5, 6]), compress=False)
    monkeypatch.undo()
    assert _segments(tmp_path)[0].stat().st_size == size
    assert _read_all(spool) == [1, 2, 3]
    assert spool.status()["backlog_records"] == 3
    _fill(spool, [7])
    assert _read_all(spool) == [1, 2, 3, 7]


def test_a_failed_fsync_takes_the_records_back(tmp_path, monkeypatch):
    spool = _spool(tmp_path, segment_bytes=64 * KB, fsync=True)
    _fill(spool, range(1, 4))
    size = _segments(tmp_path)[0].stat().st_size
    _fsync_fails(monkeypatch, lambda fd: fd == spool._fd)
    with pytest.raises(SpoolError, match="Input/output error"):
        spool.append(_records([4, 5]), compress=False)
    monkeypatch.undo()
    assert _segments(tmp_path)[0].stat().st_size == size
    _fill(spool, [6])
    assert _read_all(spool) == [1, 2, 3, 6]
    assert spool.status()["backlog_records"] == 4


def test_a_segment_whose_creation_failed_halfway_does_not_block_later_ones(tmp_path, monkeypatch):
    # The new file exists but the directory fsync failed: the next roll must not trip over
    # the leftover (O_EXCL) for ever.
    spool = _spool(tmp_path, fsync=True)
    _fill(spool, range(1, 25))  # the first segment is nearly full
    _fsync_fails(monkeypatch, lambda fd: stat.S_ISDIR(os.fstat(fd).st_mode), times=1)
    failed = []
    for seq in range(25, 40):
        try:
            _fill(spool, [seq])
        except SpoolError:
            failed.append(seq)
    assert len(failed) == 1
    assert _read_all(spool) == [s for s in range(1, 40) if s not in failed]


@pytest.mark.parametrize("where", ["open", "write"])
def test_a_full_disk_under_the_cursor_file_only_delays_saving_it(tmp_path, monkeypatch, caplog, where):
    spool = _spool(tmp_path)
    _fill(spool, range(1, 11))
    entries = spool.read(spool.start(), limit=10)
    if where == "open":
        _refuse(monkeypatch, tmp_path / "ack.tmp", errno.ENOSPC)
    else:
        real = os.write

        def write(fd, data):
            if _fd_path(fd).endswith("ack.tmp"):
                raise _error(errno.ENOSPC)
            return real(fd, data)
        monkeypatch.setattr(os, "write", write)
    with caplog.at_level(logging.ERROR):
        spool.ack(entries[4].end)  # the sender's thread: it must not raise
    assert "No space left on device" in caplog.text and str(tmp_path / "ack") in caplog.text
    assert spool.status()["cursor_save_failures"] == 1
    assert not (tmp_path / "ack.tmp").exists()
    assert _read_all(spool) == list(range(6, 11))  # the acknowledgement itself holds
    monkeypatch.undo()
    spool.ack(entries[-1].end)
    spool.close()
    assert _spool(tmp_path).status()["backlog_records"] == 0


def test_a_failed_rename_of_the_cursor_file_only_delays_saving_it(tmp_path, monkeypatch):
    spool = _spool(tmp_path)
    _fill(spool, range(1, 4))
    entries = spool.read(spool.start())

    def rename(src, dst):
        raise _error(errno.ENOSPC, src)
    monkeypatch.setattr(os, "replace", rename)
    spool.ack(entries[0].end)
    monkeypatch.undo()
    assert not (tmp_path / "ack.tmp").exists()
    spool.ack(entries[1].end)
    spool.close()
    assert _read_all(_spool(tmp_path)) == [3]


def test_a_torn_tail_that_cannot_be_cut_off_does_not_stop_the_spool(tmp_path, monkeypatch, caplog):
    spool = _spool(tmp_path, segment_bytes=64 * KB)
    _fill(spool, range(1, 6))
    spool.close()
    (segment,) = _segments(tmp_path)
    record = encode_record(1, 6, b"x" * 500, compress=False)
    with open(segment, "ab") as f:
        f.write(record[: len(record) // 2])  # a write cut short by kill -9
    _refuse(monkeypatch, segment, errno.EROFS, writes_only=True)
    with caplog.at_level(logging.ERROR):
        again = _spool(tmp_path, segment_bytes=64 * KB)
    assert "Read-only file system" in caplog.text and segment.name in caplog.text
    assert again.status()["torn_tails"] == 1
    _fill(again, range(7, 10))  # into a fresh segment: the torn bytes are not in the way
    assert _read_all(again) == [1, 2, 3, 4, 5, 7, 8, 9]
    monkeypatch.undo()
    again.close()
    assert _read_all(_spool(tmp_path, segment_bytes=64 * KB)) == [1, 2, 3, 4, 5, 7, 8, 9]


# --- item 7: a segment gone or unreadable while the agent runs ------------------------------

@pytest.mark.parametrize("how", ["deleted", "replaced by a directory"])
def test_an_older_segment_gone_is_counted_skipped_and_logged(tmp_path, caplog, how):
    spool = _spool(tmp_path)
    _fill(spool, range(1, 61))
    victim = _segments(tmp_path)[1]
    lost = _seqs_in(spool, victim)
    victim.unlink()
    if how != "deleted":
        victim.mkdir()
    with caplog.at_level(logging.ERROR):
        seqs = _read_all(spool)
    assert seqs == [s for s in range(1, 61) if s not in lost]
    cause = "No such file or directory" if how == "deleted" else "Is a directory"
    assert cause in caplog.text and str(victim) in caplog.text
    counter = "missing_records" if how == "deleted" else "unreadable_records"
    st = spool.status()
    assert st[counter] == len(lost) and st["backlog_records"] == 60 - len(lost)
    _fill(spool, [61])
    assert _read_all(spool)[-1] == 61


def test_the_newest_segment_deleted_does_not_swallow_what_is_appended_after(tmp_path, caplog):
    spool = _spool(tmp_path)
    _fill(spool, range(1, 41))
    newest = _segments(tmp_path)[-1]
    lost = _seqs_in(spool, newest)
    newest.unlink()
    with caplog.at_level(logging.ERROR):
        _fill(spool, range(41, 51))
    assert "No such file or directory" in caplog.text and str(newest) in caplog.text
    assert _read_all(spool) == [s for s in range(1, 51) if s not in lost]
    assert spool.status()["missing_records"] == len(lost)
    spool.close()
    assert _read_all(_spool(tmp_path)) == [s for s in range(1, 51) if s not in lost]


def test_the_spool_directory_deleted_is_made_again(tmp_path):
    spool = _spool(tmp_path / "spool")
    _fill(spool, range(1, 21))
    shutil.rmtree(tmp_path / "spool")
    _fill(spool, range(21, 31))
    assert _read_all(spool) == list(range(21, 31))
    assert spool.status()["missing_records"] == 20


def test_an_unreadable_segment_is_counted_skipped_and_logged(tmp_path, monkeypatch, caplog):
    spool = _spool(tmp_path)
    _fill(spool, range(1, 61))
    victim = _segments(tmp_path)[1]
    lost = _seqs_in(spool, victim)
    _refuse(monkeypatch, victim, errno.EACCES)
    with caplog.at_level(logging.ERROR):
        assert _read_all(spool) == [s for s in range(1, 61) if s not in lost]
    assert "Permission denied" in caplog.text and str(victim) in caplog.text
    assert spool.status()["unreadable_records"] == len(lost)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its mode (see the injected EACCES test)")
def test_a_segment_chmod_000_is_counted_skipped_and_logged(tmp_path, caplog):
    spool = _spool(tmp_path)
    _fill(spool, range(1, 61))
    victim = _segments(tmp_path)[1]
    lost = _seqs_in(spool, victim)
    victim.chmod(0)
    with caplog.at_level(logging.ERROR):
        assert _read_all(spool) == [s for s in range(1, 61) if s not in lost]
    assert "Permission denied" in caplog.text


def test_a_directory_named_like_a_segment_at_start_is_skipped_with_the_reason(tmp_path, caplog):
    spool = _spool(tmp_path)
    _fill(spool, range(1, 21))
    spool.close()
    stray = tmp_path / f"{int(_segments(tmp_path)[-1].stem, 16) + 1:016x}.seg"
    stray.mkdir()
    with caplog.at_level(logging.ERROR):
        again = _spool(tmp_path)
    assert "Is a directory" in caplog.text and str(stray) in caplog.text
    _fill(again, range(21, 61))  # the next segments are numbered past the directory
    assert _read_all(again) == list(range(1, 61))


def test_a_directory_where_the_next_segment_goes_is_stepped_over(tmp_path):
    spool = _spool(tmp_path)
    _fill(spool, [1])
    newest = _segments(tmp_path)[-1]
    (tmp_path / f"{int(newest.stem, 16) + 1:016x}.seg").mkdir()
    _fill(spool, range(2, 61))
    assert _read_all(spool) == list(range(1, 61))


def test_a_segment_that_cannot_be_deleted_does_not_stop_acknowledgements(tmp_path, caplog):
    spool = _spool(tmp_path)
    _fill(spool, range(1, 61))
    entries = spool.read(spool.start(), limit=1000)
    first = _segments(tmp_path)[0]
    first.unlink()
    first.mkdir()  # unlinking it now fails (EISDIR)
    with caplog.at_level(logging.ERROR):
        spool.ack(entries[-1].end)  # the sender's thread: it must not raise
    assert "Is a directory" in caplog.text and str(first) in caplog.text
    assert spool.status()["backlog_records"] == 0
    _fill(spool, [61])
    assert _read_all(spool) == [61]


def test_a_spool_directory_that_cannot_be_listed_is_an_error_naming_it(tmp_path, monkeypatch):
    # Path.glob swallows EACCES: the spool would start empty, its segments silently ignored.
    spool = _spool(tmp_path)
    _fill(spool, range(1, 4))
    spool.close()

    def refusing(real):
        def listing(path="."):
            if str(path) == str(tmp_path):
                raise _error(errno.EACCES, path)
            return real(path)
        return listing
    monkeypatch.setattr(os, "listdir", refusing(os.listdir))
    monkeypatch.setattr(os, "scandir", refusing(os.scandir))
    with pytest.raises(SpoolError, match=f"{tmp_path}.*Permission denied"):
        _spool(tmp_path)


# --- item 7, end to end: the stream client carries on -----------------------------------------

class _Collector:
    """A loopback Ingest.Publish that acknowledges every batch and remembers its seq."""

    def __init__(self):
        self.seqs: list[int] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        handler = grpc.method_handlers_generic_handler("egs.collector.v1.Ingest", {
            "Publish": grpc.stream_stream_rpc_method_handler(
                self._publish, request_deserializer=lambda b: b,
                response_serializer=collector_pb2.Ack.SerializeToString)})
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _publish(self, requests, context):
        for payload in requests:
            seq = int.from_bytes(payload[:4], "little")
            self.seqs.append(seq)
            yield collector_pb2.Ack(epoch=1, seq=seq)


def _settings(port: int):
    return parse(f'[stream]\nendpoints = ["127.0.0.1:{port}"]\nplaintext = true\nfsync = false\n'
                 'backoff_base = 0.05\nbackoff_max = 0.2\nconnect_timeout = 2\n', "a.toml").stream


def test_the_stream_carries_on_past_a_deleted_segment(tmp_path, caplog):
    collector = _Collector()
    spool = _spool(tmp_path)
    _fill(spool, range(1, 81))
    victim = _segments(tmp_path)[1]
    lost = _seqs_in(spool, victim)
    victim.unlink()
    client = StreamClient(_settings(collector.port), spool, logging.getLogger("egs.stream"))
    with caplog.at_level(logging.INFO):
        client.start()
        try:
            _fill(spool, range(81, 91))
            client.notify()
            sent = lambda: set(collector.seqs) >= set(range(1, 91)) - set(lost)  # noqa: E731
            assert wait_for(sent), f"sent {sorted(set(collector.seqs))}"
            assert wait_for(lambda: spool.status()["backlog_records"] == 0)
            _segments(tmp_path)[-1].unlink()  # and the one being written, while the stream runs
            _fill(spool, range(91, 101))
            client.notify()
            assert wait_for(lambda: set(collector.seqs) >= set(range(91, 101)))
        finally:
            client.stop()
            collector.server.stop(0)
    assert str(victim) in caplog.text and "No such file or directory" in caplog.text
    assert spool.status()["missing_records"] == len(lost)


# --- the outbox over a failing spool -------------------------------------------------------

def _outbox(state_dir) -> Outbox:
    cfg = parse('[stream]\nendpoints = ["127.0.0.1:9"]\nplaintext = true\nfsync = false\n', "a.toml")
    return Outbox(cfg.stream, state_dir, host_id="h1", clock=lambda: 1000.0)


def _bucket(value: float, gpu: str = "0") -> dict:
    return {"metric": "gpu_power_watts", "labels": {"gpu": gpu}, "ts": 999, "count": 1, "sum": value,
            "min": value, "max": value, "last": value}


def _spooled(box) -> list[collector_pb2.Batch]:
    return [collector_pb2.Batch.FromString(e.payload) for e in box.spool.read(box.spool.start(), limit=1000)]


def _figure(batch, name) -> float:
    (point,) = [p for p in points_of(batch) if p.metric == name]
    return point.last


def test_the_outbox_counts_a_deleted_segment_under_its_own_name(tmp_path):
    box = _outbox(tmp_path)
    box.start()
    try:
        for value in (1.0, 2.0):
            box.put_buckets([_bucket(value)])
            assert box.flush(5)
        (segment,) = _segments(tmp_path / "spool")
        segment.unlink()
        for value in (3.0, 4.0):  # the loss is found by the first append, told by the next batch
            box.put_buckets([_bucket(value)])
            assert box.flush(5)
        st = box.status()
        assert (st["drops"]["spool_missing"], st["dropped"]) == (2, 2)
        assert st["metrics"]["stream_spool_missing_records_total"] == 2
        last = _spooled(box)[-1]
        assert _figure(last, "gpu_power_watts") == 4.0
        assert last.status.dropped_records == 2
        assert _figure(last, "stream_spool_missing_records_total") == 2
    finally:
        box.stop()


def test_a_spool_error_that_comes_back_after_a_recovery_is_logged_again(tmp_path, monkeypatch, caplog):
    box = _outbox(tmp_path)
    box.start()
    real = os.write

    def full(fd, data):
        if fd == box.spool._fd:
            raise _error(errno.ENOSPC)
        return real(fd, data)
    try:
        with caplog.at_level(logging.INFO, logger="egs.stream"):
            for broken in (True, False, True):
                if broken:
                    monkeypatch.setattr(os, "write", full)
                box.put_buckets([_bucket(1.0)])
                assert box.flush(5)
                monkeypatch.undo()
        said = [r.getMessage() for r in caplog.records if r.name == "egs.stream"]
        assert len([m for m in said if "No space left on device" in m]) == 2, said
        assert any("works again" in m for m in said), said
        assert box.status()["drops"]["spool_write_failed"] == 2
    finally:
        box.stop()


def test_a_start_that_fails_after_opening_the_spool_closes_it_again(tmp_path, monkeypatch):
    # The daemon may retry a component whose start failed: nothing of the first try may linger.
    def segment_fds() -> list[str]:
        return [n for n in os.listdir("/proc/self/fd") if _fd_path(int(n)).startswith(str(tmp_path / "spool"))]
    box = _outbox(tmp_path)
    _refuse(monkeypatch, tmp_path / "stream-epoch.tmp", errno.ENOSPC)
    with pytest.raises(OSError, match="No space left on device"):
        box.start()
    assert segment_fds() == []
    monkeypatch.undo()
    box.start()
    try:
        box.put_buckets([_bucket(1.0)])
        assert box.flush(5)
        assert len(segment_fds()) == 1
    finally:
        box.stop()
