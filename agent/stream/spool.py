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

When the disk fails under a running agent, the spool says why (errno text and path, in the
log), counts what is lost, and keeps going; nothing here leaves it stuck until a restart:
- an append the disk refuses (full, read-only, a failed fsync) is undone: every segment it
  wrote to is cut back to its length before, so the files and the index agree and later
  records are read back whole; the caller counts the records it could not append;
- a segment deleted (`missing_records`) or unreadable (`unreadable_records`: EACCES, EIO, a
  directory named like a segment) is skipped and its unsent records counted; the newest one
  is replaced by a fresh file at the next append (the directory too, if it was deleted);
- a cursor that cannot be saved (`cursor_save_failures`) is tried again after the next
  interval; a file that cannot be deleted, or a name already taken, is logged and passed by.
"""
from __future__ import annotations

import bisect
import errno
import json
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from agent.fsio import atomic_write, fsync_dir

MAGIC = b"EGSr"
HEADER = struct.Struct("<4sIIQQB")  # magic, length, crc, epoch, seq, flags
FLAG_ZLIB = 0x01
MAX_RECORD = 64 * 1024 * 1024  # a length above this is corruption, not a record
_SUFFIX = ".seg"
_HEX = frozenset("0123456789abcdef")
_TAKEN_NAMES = 64  # segment numbers a roll steps over when something else holds the name


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


def _is_segment_name(name: str) -> bool:
    return len(name) == 16 + len(_SUFFIX) and name.endswith(_SUFFIX) and set(name[:16]) <= _HEX


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    while written < len(data):  # short writes happen on full disks and signals
        written += os.write(fd, data[written:])


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
    (the stream sender). Only `append` raises for a failing disk (`SpoolError`); reading
    and acknowledging log and count what failed instead, so the sender never dies of it.
    """

    def __init__(self, directory: str | os.PathLike, max_bytes: int = 512 * 1024 * 1024,
                 segment_bytes: int = 8 * 1024 * 1024, fsync: bool = True,
                 cursor_interval: float = 1.0, log: logging.Logger | None = None):
        if segment_bytes * 2 > max_bytes:
            raise ValueError(f"segment_bytes ({segment_bytes}) must be at most half of max_bytes ({max_bytes})")
        self.dir = Path(directory)
        self.max_bytes, self.segment_bytes = max_bytes, segment_bytes
        self.fsync, self.cursor_interval = fsync, cursor_interval
        self.log = log or logging.getLogger("egs.stream")
        self._lock = threading.Lock()
        self._appended = threading.Condition(self._lock)
        self._segments: list[_Segment] = []
        self._fd: int | None = None  # the newest segment, open for appending
        # The newest segment takes no more records (its file is gone or unreadable, or its
        # end could not be cut back to its last whole record): the next append rolls.
        self._sealed = False
        self._cursor = Position(0, 0)
        self._cursor_saved = Position(0, 0)
        self._cursor_saved_at = float("-inf")  # the first acknowledgement is saved at once
        self._cursor_failing = False  # the last save failed (logged once per episode)
        self.counters = {"appended_records": 0, "acked_records": 0, "dropped_records": 0,
                         "dropped_bytes": 0, "corrupt_records": 0, "torn_tails": 0,
                         "torn_bytes": 0, "missing_records": 0, "unreadable_records": 0,
                         "cursor_save_failures": 0}
        self._closed = False
        self._unacked = 0
        try:
            self._open()
        except OSError as e:
            raise SpoolError(f"cannot open the spool in {self.dir}: {e}") from None

    # --- opening and scanning ------------------------------------------------------------

    def _open(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise SpoolError(f"cannot create spool directory {self.dir}: {e}") from None
        self._cursor = self._load_cursor()
        self._cursor_saved = self._cursor
        numbers = sorted(int(name[:16], 16) for name in os.listdir(self.dir) if _is_segment_name(name))
        for i, number in enumerate(numbers):
            seg = self._scan(number, newest=i == len(numbers) - 1)
            if seg is not None:
                self._segments.append(seg)
        if self._segments and self._segments[-1].number != numbers[-1]:
            self._sealed = True  # the newest was skipped: append after it, not into the one before
        # Segments wholly behind the cursor were acknowledged; a crash may have kept them.
        while len(self._segments) > 1 and self._segments[0].number < self._cursor.segment:
            self._unlink(self._segments.pop(0).path)
        self._unacked = sum(len(s.records) - self._first_unacked(s) for s in self._segments)
        if self._segments and not self._sealed:
            try:
                self._fd = os.open(self._segments[-1].path, os.O_WRONLY | os.O_APPEND)
            except OSError as e:
                self.log.error("spool: cannot append to %s (%s); starting a new segment",
                               self._segments[-1].path, e.strerror)
        if self._fd is None:
            self._roll()

    def _path(self, number: int) -> Path:
        return self.dir / f"{number:016x}{_SUFFIX}"

    def _scan(self, number: int, newest: bool) -> _Segment | None:
        """The segment's index, or None when it cannot be read (skipped, logged, counted)."""
        path = self._path(number)
        try:
            data = path.read_bytes()
        except OSError as e:
            self._skip_unreadable(number, e)
            return None
        seg = _Segment(number, path)
        offset = 0
        while offset < len(data):
            parsed = _parse_at(data, offset)
            if parsed is not None:
                rec, _ = parsed
                seg.add(rec)
                offset = rec.offset + rec.size
                continue
            resume = self._resync(data, offset + 1)
            if resume is None:
                if newest:
                    self.counters["torn_tails"] += 1
                    self.counters["torn_bytes"] += len(data) - offset
                    data = self._cut_torn_tail(path, data, offset)
                else:
                    self.counters["corrupt_records"] += 1
                break
            self.counters["corrupt_records"] += 1
            offset = resume
        # Size is the file length, so appends after a mid-file corruption keep their offsets.
        seg.size = len(data)
        return seg

    def _skip_unreadable(self, number: int, error: OSError) -> None:
        """A segment file that cannot be read at open (EACCES, EIO, a directory). Its records
        cannot be counted, so it counts as one; behind the cursor it held nothing unsent."""
        if number < self._cursor.segment:
            self._unlink(self._path(number))
            return
        self.counters["unreadable_records"] += 1
        self.log.error("spool: skipping segment %s, it cannot be read: %s", self._path(number), error)

    def _cut_torn_tail(self, path: Path, data: bytes, offset: int) -> bytes:
        """The segment's bytes once the torn tail at `offset` is cut off. When the disk
        refuses (read-only), the tail stays and the segment is sealed: records appended
        after it would sit behind bytes that do not parse."""
        try:
            fd = os.open(path, os.O_WRONLY)
            try:
                os.ftruncate(fd, offset)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            self.log.error("spool: cannot cut the torn tail off %s (%s); new records go to a new segment",
                           path, e.strerror)
            self._sealed = True
            return data
        return data[:offset]

    @staticmethod
    def _resync(data: bytes, start: int) -> int | None:
        """The next offset at or after `start` where a whole valid record begins."""
        at = data.find(MAGIC, start)
        while at != -1:
            if _parse_at(data, at) is not None:
                return at
            at = data.find(MAGIC, at + 1)
        return None

    def _create(self, number: int) -> tuple[_Segment, int]:
        """A new empty segment, durable in the directory, and its fd open for appending.

        A number whose name something else holds (a stray directory, a leftover that could
        not be removed) is stepped over, so a roll cannot fail on it for ever; the directory
        is made again if it was deleted under the running agent. A file created here but not
        made durable is removed again, for the same reason.
        """
        self.dir.mkdir(parents=True, exist_ok=True)
        for candidate in range(number, number + _TAKEN_NAMES):
            path = self._path(candidate)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                self.log.warning("spool: %s exists and is not one of this spool's segments; skipping its number", path)
                continue
            try:
                self._fsync_dir()
            except OSError:
                os.close(fd)
                self._unlink(path)
                raise
            return _Segment(candidate, path), fd
        raise FileExistsError(errno.EEXIST, f"segment names {number:016x} to {candidate:016x} are all taken",
                              str(self.dir))

    def _fsync_dir(self) -> None:
        if self.fsync:
            fsync_dir(self.dir)

    # --- cursor --------------------------------------------------------------------------

    def _load_cursor(self) -> Position:
        path = self.dir / "ack"
        try:
            raw = json.loads(path.read_text())
            return Position(int(raw["segment"]), int(raw["offset"]))
        except FileNotFoundError:
            return Position(0, 0)
        except (OSError, ValueError, KeyError, TypeError) as e:
            # A damaged cursor only costs a resend (the collector de-duplicates): start over.
            self.log.warning("spool: cannot read the acknowledgement cursor %s (%s); resending from the oldest record",
                             path, e)
            return Position(0, 0)

    def _save_cursor(self) -> None:
        """Replace the cursor file atomically. A failure (full disk, read-only) is logged and
        tried again after `cursor_interval`, never raised: the acknowledgement holds in
        memory, and a cursor that lags on disk only costs resends after a restart."""
        path = self.dir / "ack"
        text = json.dumps({"segment": self._cursor.segment, "offset": self._cursor.offset}).encode()
        self._cursor_saved_at = time.monotonic()
        try:
            atomic_write(path, text, mode=0o600, durable=self.fsync)
        except OSError as e:
            self.counters["cursor_save_failures"] += 1
            if not self._cursor_failing:
                self.log.error("spool: cannot save the acknowledgement cursor %s (%s); trying again every %g s",
                               path, e.strerror or e, self.cursor_interval)
            self._cursor_failing = True
            return
        if self._cursor_failing:
            self.log.info("spool: the acknowledgement cursor %s is saved again", path)
        self._cursor_failing = False
        self._cursor_saved = self._cursor

    # --- writing -------------------------------------------------------------------------

    def append(self, records: list[tuple[int, int, bytes]], compress: bool = True) -> None:
        """Append (epoch, seq, payload) records and make them durable (one fsync for all).

        All or nothing: when the disk refuses any of it, every record of this call is taken
        back and `SpoolError` names the segment and the cause.
        """
        if not records:
            return
        encoded = [(e, s, encode_record(e, s, p, compress)) for e, s, p in records]
        with self._lock:
            if self._closed:
                raise SpoolError("spool is closed")
            self._forget_newest_if_gone()
            newest = self._segments[-1]
            before = (newest.number, newest.size, len(newest.records))
            try:
                for epoch, seq, blob in encoded:
                    self._make_room(len(blob))
                    seg = self._segments[-1]
                    if self._sealed or (seg.size and seg.size + len(blob) > self.segment_bytes):
                        seg = self._roll()
                    _write_all(self._fd, blob)
                    seg.add(_Record(seg.size, len(blob), epoch, seq))
                    seg.size += len(blob)
                    self._unacked += 1
                if self.fsync:
                    os.fsync(self._fd)
            except OSError as e:
                self._undo(*before)
                raise SpoolError(f"cannot append to {self._segments[-1].path}: {e}") from None
            self.counters["appended_records"] += len(encoded)
            self._appended.notify_all()

    def _forget_newest_if_gone(self) -> None:
        """Records appended to a file deleted under us would be lost without a word."""
        if not self._sealed and os.fstat(self._fd).st_nlink == 0:
            self._lose(self._segments[-1], "missing_records", FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT)))

    def _undo(self, number: int, size: int, count: int) -> None:
        """Cut every segment a failed append wrote to back to what it held before it.

        A short write on a full disk leaves part of a record behind; left there, the next
        records would land after it while the index expects them where it ended, and be read
        back as corrupt. A segment that cannot be cut back is sealed; its extra bytes are
        never read, as the index does not point at them.
        """
        for seg in self._segments:
            if seg.number < number:
                continue
            keep, length = (count, size) if seg.number == number else (0, 0)
            self._unacked -= len(seg.records) - keep
            del seg.records[keep:], seg.offsets[keep:]
            seg.size = length
            try:
                if seg is self._segments[-1]:
                    os.ftruncate(self._fd, length)
                else:
                    os.truncate(seg.path, length)
            except OSError as e:
                self.log.error("spool: cannot cut %s back to %d bytes after a failed append (%s); sealing it",
                               seg.path, length, e.strerror)
                self._sealed = self._sealed or seg is self._segments[-1]

    def _roll(self) -> _Segment:
        """Start a new newest segment; when that fails, nothing has changed."""
        if self._fd is not None and self.fsync:
            os.fsync(self._fd)  # the old segment's last records, before moving on
        number = self._segments[-1].number + 1 if self._segments else max(self._cursor.segment, 1)
        seg, fd = self._create(number)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._sealed = fd, False
        self._segments.append(seg)
        return seg

    def _make_room(self, incoming: int) -> None:
        while self._total_bytes() + incoming > self.max_bytes and len(self._segments) > 1:
            victim = self._segments.pop(0)
            unacked = victim.records[self._first_unacked(victim):]
            self._unacked -= len(unacked)
            self.counters["dropped_records"] += len(unacked)
            self.counters["dropped_bytes"] += sum(r.size for r in unacked)
            self._unlink(victim.path)

    def _unlink(self, path: Path) -> None:
        """Delete a file the spool no longer needs; a failure only leaves it on disk."""
        try:
            path.unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            self.log.error("spool: cannot delete %s (%s); it stays on disk, outside the spool's bound",
                           path, e.strerror)

    def _lose(self, seg: _Segment, counter: str, error: OSError) -> None:
        """Stop indexing a segment whose file is gone or cannot be read: count its unsent
        records under `counter`, say why, carry on with the others. The newest one stays,
        emptied and sealed, so its number is kept and the next append rolls."""
        lost = len(seg.records) - self._first_unacked(seg)
        self._unacked -= lost
        self.counters[counter] += lost
        self.log.error("spool: segment %s: %s; %d unsent record(s) lost, the stream carries on",
                       seg.path, error.strerror or error, lost)
        if seg is self._segments[-1]:
            seg.records.clear()
            seg.offsets.clear()
            seg.size = 0
            self._sealed = True
        else:
            self._segments.remove(seg)

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
        disk changed under us) is skipped and counted, and so is a segment whose file is
        gone or cannot be read.
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
        for seg in list(self._segments):  # (_lose may remove one)
            if seg.number < pos.segment:
                continue
            first = seg.first_at(pos.offset) if seg.number == pos.segment else 0
            todo = seg.records[first:first + limit - len(out)]
            if not todo:
                continue
            try:
                with open(seg.path, "rb") as f:
                    f.seek(todo[0].offset)
                    data = f.read(todo[-1].offset + todo[-1].size - todo[0].offset)
            except FileNotFoundError as e:
                self._lose(seg, "missing_records", e)
                continue
            except OSError as e:
                self._lose(seg, "unreadable_records", e)
                continue
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
                self._unlink(self._segments.pop(0).path)
            # A full, wholly acknowledged newest segment is replaced by a fresh one (when the
            # disk refuses one now, the next append rolls instead).
            newest = self._segments[-1]
            if newest.number == end.segment and end.offset >= newest.size >= self.segment_bytes:
                try:
                    self._roll()
                    self._unlink(self._segments.pop(0).path)
                except OSError as e:
                    self.log.warning("spool: cannot start a new segment after %s (%s)", newest.path, e)
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
