"""The durable spool: what the agent has to send, on disk, until the collector has it.

Every outbound batch is appended to a segment file and fsync'd *before* it is sent, and it
is deleted only when the collector has acknowledged it, so a collector outage, a network
cut or an agent crash (`kill -9` included) loses nothing that was spooled.

Layout, in `<state_dir>/spool/`:
- `NNNNNNNNNNNNNNNN.seg` — append-only segments, numbered in order (hex). Each record is
  `magic "EGSr" | u32 payload length | u32 crc32 | u64 epoch | u64 seq | u8 flags | payload`
  (little-endian); the CRC covers everything after itself (epoch, seq, flags, payload), so a
  flipped bit anywhere in a record is detected. flags bit 0: payload is zlib-compressed.
- `ack` — the acknowledgement cursor `{"segment": n, "offset": o}`: every record that
  starts before `o` in segment `n` (and every earlier segment) is acknowledged. It is
  replaced atomically (write, fsync, rename, fsync the directory) at most once per
  `cursor_interval`: a cursor that lags only makes the agent resend batches the collector
  already has, and the collector de-duplicates those by (host, epoch, seq).

Opening a spool scans every segment. A record that fails its checks is handled so that a
bad disk block never turns into a crash loop:
- at the end of the newest segment (a write cut short by `kill -9` or power loss): the torn
  tail is truncated and counted (`torn_tails`);
- anywhere else: the record is skipped and counted (`corrupt_records`); reading resumes at
  the next offset where a whole valid record starts (the magic makes that search cheap).

Bound: the spool holds at most `max_bytes`. When an append would exceed it, the *oldest*
segments are deleted and their unacknowledged records counted as `dropped_records`. Oldest
first because after a long outage the operator needs the present state of the host (are its
GPUs still healthy now?) more than its distant past, and the most recent data is also what
alarms and subscribers act on; the data dropped is a contiguous old stretch, which reads as
one clear gap in the collector's history rather than holes spread through it.
"""
from __future__ import annotations

import bisect
import json
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"EGSr"
HEADER = struct.Struct("<4sIIQQB")  # magic, length, crc, epoch, seq, flags
FLAG_ZLIB = 0x01
MAX_RECORD = 64 * 1024 * 1024  # a length above this is corruption, not a record
_SUFFIX = ".seg"


class SpoolError(Exception):
    """The spool directory cannot be used (permissions, a full disk on append...)."""


@dataclass
class _Record:
    offset: int
    size: int  # header + payload
    epoch: int
    seq: int


@dataclass
class _Segment:
    number: int
    path: Path
    records: list[_Record] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)  # records[i].offset, for bisect
    size: int = 0  # bytes in the file

    def add(self, rec: _Record) -> None:
        self.records.append(rec)
        self.offsets.append(rec.offset)

    def remove(self, index: int) -> None:
        del self.records[index], self.offsets[index]

    def first_at(self, offset: int) -> int:
        """Index of the first record starting at or after `offset`."""
        return bisect.bisect_left(self.offsets, offset)


@dataclass(frozen=True)
class Position:
    """Where a reader stands: the next record to read is the first at or after `offset`."""

    segment: int
    offset: int


@dataclass(frozen=True)
class Entry:
    epoch: int
    seq: int
    payload: bytes
    end: Position  # the position just after this record (what acknowledging it moves to)


def _crc(epoch: int, seq: int, flags: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<QQB", epoch, seq, flags))) & 0xFFFFFFFF


def encode_record(epoch: int, seq: int, payload: bytes, compress: bool = True) -> bytes:
    flags = 0
    if compress:
        packed = zlib.compress(payload, 1)
        if len(packed) < len(payload):
            payload, flags = packed, FLAG_ZLIB
    return HEADER.pack(MAGIC, len(payload), _crc(epoch, seq, flags, payload), epoch, seq, flags) + payload


def _parse_at(data: bytes | memoryview, offset: int) -> tuple[_Record, bytes] | None:
    """The record starting at `offset`, or None if there is no whole valid record there."""
    if offset + HEADER.size > len(data):
        return None
    magic, length, crc, epoch, seq, flags = HEADER.unpack_from(data, offset)
    if magic != MAGIC or length > MAX_RECORD or offset + HEADER.size + length > len(data):
        return None
    payload = bytes(data[offset + HEADER.size: offset + HEADER.size + length])
    if _crc(epoch, seq, flags, payload) != crc:
        return None
    if flags & FLAG_ZLIB:
        try:
            payload = zlib.decompress(payload)
        except zlib.error:
            return None
    return _Record(offset, HEADER.size + length, epoch, seq), payload


class Spool:
    """Append-only, checksummed, bounded on-disk journal with an acknowledgement cursor.

    Thread-safe: one thread appends (the outbox writer), another reads and acknowledges
    (the stream sender).
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int = 512 * 1024 * 1024,
                 segment_bytes: int = 8 * 1024 * 1024, fsync: bool = True,
                 cursor_interval: float = 1.0):
        if segment_bytes * 2 > max_bytes:
            raise ValueError(f"segment_bytes ({segment_bytes}) must be at most half of max_bytes ({max_bytes})")
        self.dir = Path(directory)
        self.max_bytes, self.segment_bytes = max_bytes, segment_bytes
        self.fsync, self.cursor_interval = fsync, cursor_interval
        self._lock = threading.Lock()
        self._appended = threading.Condition(self._lock)
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the newest segment, open for appending
        self._cursor = Position(0, 0)
        self._cursor_saved = Position(0, 0)
        self._cursor_saved_at = float("-inf")  # the first acknowledgement is saved at once
        self.counters = {"appended_records": 0, "acked_records": 0, "dropped_records": 0,
                         "dropped_bytes": 0, "corrupt_records": 0, "torn_tails": 0,
                         "torn_bytes": 0}
        self._closed = False
        self._unacked = 0
        self._open()

    # --- opening and scanning ------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpoolError(f"cannot create spool directory {self.dir}: {e}") from None
        self._cursor = self._load_cursor()
        self._cursor_saved = self._cursor
        numbers = sorted(int(p.stem, 16) for p in self.dir.glob("*" + _SUFFIX)
                         if len(p.stem) == 16 and all(c in "0123456789abcdef" for c in p.stem))
        for i, number in enumerate(numbers):
            self._segments.append(self._scan(number, newest=i == len(numbers) - 1))
        # Segments wholly behind the cursor were acknowledged; a crash may have kept them.
        while len(self._segments) > 1 and self._segments[0].number < self._cursor.segment:
            self._unlink(self._segments.pop(0))
        if not self._segments:
            self._segments.append(self._new_segment(max(self._cursor.segment, 1)))
        self._unacked = sum(len(s.records) - self._first_unacked(s) for s in self._segments)
        self._open_newest()

    def _path(self, number: int) -> Path:
        return self.dir / f"{number:016x}{_SUFFIX}"

    def _scan(self, number: int, newest: bool) -> _Segment:
        path = self._path(number)
        data = path.read_bytes()
        seg = _Segment(number, path)
        offset, valid_end = 0, 0
        while offset < len(data):
            parsed = _parse_at(data, offset)
            if parsed is not None:
                rec, _ = parsed
                seg.add(rec)
                offset = valid_end = rec.offset + rec.size
                continue
            resume = self._resync(data, offset + 1)
            if resume is None:
                if newest:
                    self.counters["torn_tails"] += 1
                    self.counters["torn_bytes"] += len(data) - offset
                    with open(path, "r+b") as f:
                        f.truncate(offset)
                        os.fsync(f.fileno())
                    data = data[:offset]
                else:
                    self.counters["corrupt_records"] += 1
                break
            self.counters["corrupt_records"] += 1
            offset = resume
        # Size is the file length, so appends after a mid-file corruption keep their offsets.
        seg.size = len(data) if newest else max(len(data), valid_end)
        return seg

    @staticmethod
    def _resync(data: bytes, start: int) -> int | None:
        """The next offset at or after `start` where a whole valid record begins."""
        at = data.find(MAGIC, start)
        while at != -1:
            if _parse_at(data, at) is not None:
                return at
            at = data.find(MAGIC, at + 1)
        return None

    def _new_segment(self, number: int) -> _Segment:
        path = self._path(number)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        self._fsync_dir()
        return _Segment(number, path)

    def _open_newest(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)

    def _fsync_dir(self) -> None:
        if not self.fsync:
            return
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # --- cursor --------------------------------------------------------------------------

    def _load_cursor(self) -> Position:
        try:
            raw = json.loads((self.dir / "ack").read_text())
            return Position(int(raw["segment"]), int(raw["offset"]))
        except FileNotFoundError:
            return Position(0, 0)
        except (ValueError, KeyError, TypeError):
            # A damaged cursor only costs a resend (the collector de-duplicates): start over.
            return Position(0, 0)

    def _save_cursor(self) -> None:
        tmp = self.dir / "ack.tmp"
        with open(tmp, "w") as f:
            json.dump({"segment": self._cursor.segment, "offset": self._cursor.offset}, f)
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self.dir / "ack")
        self._fsync_dir()
        self._cursor_saved = self._cursor
        self._cursor_saved_at = time.monotonic()

    # --- writing -------------------------------------------------------------------------

    def append(self, records: list[tuple[int, int, bytes]], compress: bool = True) -> None:
        """Append (epoch, seq, payload) records and make them durable (one fsync for all)."""
        if not records:
            return
        encoded = [(e, s, encode_record(e, s, p, compress)) for e, s, p in records]
        with self._lock:
            if self._closed:
                raise SpoolError("spool is closed")
            try:
                for epoch, seq, blob in encoded:
                    self._make_room(len(blob))
                    seg = self._segments[-1]
                    if seg.size and seg.size + len(blob) > self.segment_bytes:
                        seg = self._roll()
                    self._write_all(blob)
                    seg.add(_Record(seg.size, len(blob), epoch, seq))
                    seg.size += len(blob)
                    self._unacked += 1
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as e:
                raise SpoolError(f"cannot append to {self._segments[-1].path}: {e}") from None
            self.counters["appended_records"] += len(encoded)
            self._appended.notify_all()

    def _write_all(self, data: bytes) -> None:
        written = os.write(self._fd, data)
        while written < len(data):  # short writes happen on full disks and signals
            written += os.write(self._fd, data[written:])

    def _roll(self) -> _Segment:
        if self.fsync:
            os.fsync(self._fd)  # the old segment's last records, before moving on
        seg = self._new_segment(self._segments[-1].number + 1)
        self._segments.append(seg)
        self._open_newest()
        return seg

    def _make_room(self, incoming: int) -> None:
        while self._total_bytes() + incoming > self.max_bytes and len(self._segments) > 1:
            victim = self._segments.pop(0)
            unacked = victim.records[self._first_unacked(victim):]
            self._unacked -= len(unacked)
            self.counters["dropped_records"] += len(unacked)
            self.counters["dropped_bytes"] += sum(r.size for r in unacked)
            self._unlink(victim)

    def _unlink(self, seg: _Segment) -> None:
        try:
            seg.path.unlink()
        except FileNotFoundError:
            pass

    def _total_bytes(self) -> int:
        return sum(s.size for s in self._segments)

    def _first_unacked(self, seg: _Segment) -> int:
        if seg.number < self._cursor.segment:
            return len(seg.records)
        if seg.number > self._cursor.segment:
            return 0
        return seg.first_at(self._cursor.offset)

    # --- reading and acknowledging ------------------------------------------------------

    def start(self) -> Position:
        """Where a fresh reader starts: the acknowledgement cursor."""
        with self._lock:
            return self._cursor

    def read(self, pos: Position, limit: int = 64, wait: float = 0.0) -> list[Entry]:
        """Up to `limit` records at or after `pos`, in order; waits up to `wait` s for one.

        A position inside a segment that was dropped (spool full) moves on to the oldest
        segment still kept. A record that no longer passes its checks when read back (the
        disk changed under us) is skipped and counted.
        """
        deadline = time.monotonic() + wait
        with self._lock:
            while True:
                out = self._read_locked(pos, limit)
                remaining = deadline - time.monotonic()
                if out or remaining <= 0 or self._closed:
                    return out
                self._appended.wait(remaining)

    def _read_locked(self, pos: Position, limit: int) -> list[Entry]:
        out: list[Entry] = []
        for seg in self._segments:
            if seg.number < pos.segment:
                continue
            first = seg.first_at(pos.offset) if seg.number == pos.segment else 0
            todo = seg.records[first:first + limit - len(out)]
            if not todo:
                continue
            with open(seg.path, "rb") as f:
                f.seek(todo[0].offset)
                data = f.read(todo[-1].offset + todo[-1].size - todo[0].offset)
            for rec in todo:
                parsed = _parse_at(data, rec.offset - todo[0].offset)
                if parsed is None or (parsed[0].epoch, parsed[0].seq) != (rec.epoch, rec.seq):
                    self.counters["corrupt_records"] += 1
                    seg.remove(seg.first_at(rec.offset))
                    if not self._acked_rec(seg, rec):
                        self._unacked -= 1
                    continue
                out.append(Entry(rec.epoch, rec.seq, parsed[1], Position(seg.number, rec.offset + rec.size)))
            if len(out) >= limit:
                break
        return out

    def _acked_rec(self, seg: _Segment, rec: _Record) -> bool:
        return (seg.number, rec.offset) < (self._cursor.segment, self._cursor.offset)

    def ack(self, end: Position) -> None:
        """Everything before `end` is acknowledged: advance the cursor, free whole segments."""
        with self._lock:
            if (end.segment, end.offset) <= (self._cursor.segment, self._cursor.offset):
                return
            acked = 0
            for seg in self._segments:
                if seg.number > end.segment:
                    break
                stop = seg.first_at(end.offset) if seg.number == end.segment else len(seg.records)
                acked += max(0, stop - self._first_unacked(seg))
            self._unacked -= acked
            self.counters["acked_records"] += acked
            self._cursor = end
            while len(self._segments) > 1 and self._segments[0].number < end.segment:
                self._unlink(self._segments.pop(0))
            # A full, wholly acknowledged newest segment is replaced by a fresh one.
            newest = self._segments[-1]
            if newest.number == end.segment and end.offset >= newest.size >= self.segment_bytes:
                self._roll()
                self._unlink(self._segments.pop(0))
            if time.monotonic() - self._cursor_saved_at >= self.cursor_interval:
                self._save_cursor()

    def flush_cursor(self) -> None:
        with self._lock:
            if self._cursor != self._cursor_saved:
                self._save_cursor()

    # --- accounting ----------------------------------------------------------------------

    def backlog(self) -> tuple[int, int]:
        """(records, bytes) not yet acknowledged."""
        with self._lock:
            nbytes = 0
            for seg in self._segments:
                first = self._first_unacked(seg)
                if first < len(seg.records):
                    nbytes += seg.size - seg.records[first].offset
            return self._unacked, nbytes

    def status(self) -> dict:
        records, nbytes = self.backlog()
        with self._lock:
            return {"backlog_records": records, "backlog_bytes": nbytes,
                    "disk_bytes": self._total_bytes(), "max_bytes": self.max_bytes,
                    "segments": len(self._segments), **self.counters}

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._cursor != self._cursor_saved:
                self._save_cursor()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            self._appended.notify_all()
