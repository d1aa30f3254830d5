"""The flight recorder's files: full-resolution samples around an alarm or a health event.

A 5-minute average says a GPU ran hot; the raw 100 Hz samples say whether power spiked first,
the fan stalled, or the clock dropped. The native core keeps the last `gpu.ring_seconds` of raw
samples per GPU in a ring; when a rule fires or a GPU's health changes, the recorder waits
`after` seconds, then copies the ring of the devices involved from `before` seconds ahead of
the event to `after` past it into one file under `<state_dir>/recordings/`.

A recording is gzip-compressed JSON lines (`<id>.jsonl.gz`, readable with `zcat`): a header
line (`format`, `id`, `reason`, `event_ts`, `from`, `to`, `gpus`, `created`), then one line
per GPU with its `timestamps` and a list of values per metric (null where a read failed or
the field is unsupported). The directory is bounded by `max_bytes`: the oldest recordings are
deleted first and counted in `dropped_total`, which survives restarts.

Copying and compressing run on one worker thread, never on the daemon's main loop.
"""
from __future__ import annotations

import gzip
import json
import logging
import math
import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from agent.fsio import atomic_write

FORMAT = "egs-recording/1"
SUFFIX = ".jsonl.gz"
_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[A-Za-z0-9_.-]{1,80}$")

log = logging.getLogger("egs-agent.recorder")


class RecordingError(Exception):
    """A recording cannot be made or read; the message says why."""


class NoSuchRecording(RecordingError):
    pass


@dataclass
class _Pending:
    id: str
    gpus: tuple[int, ...]
    reason: dict[str, Any]
    event_ts: float
    start: float
    end: float
    done: Future = field(default_factory=Future)


class Recorder:
    def __init__(self, directory: Path, core: Any, clock: Callable[[], float] = time.time,
                 before_s: float = 30.0, after_s: float = 10.0, max_bytes: int = 64 << 20,
                 labels_of: Callable[[int], dict[str, str]] | None = None,
                 on_written: Callable[[dict[str, Any]], None] | None = None):
        """`on_written(header)` is called (on the recorder's thread) after each file is written."""
        self.dir = Path(directory)
        self._on_written = on_written
        self.core = core
        self.clock = clock
        self.before_s, self.after_s, self.max_bytes = before_s, after_s, max_bytes
        self._labels_of = labels_of or (lambda gpu: {"gpu": str(gpu)})
        self._lock = threading.Lock()
        self._pending: list[_Pending] = []
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")
        self._seq = 0
        self.failed = 0
        self.dir.mkdir(parents=True, exist_ok=True)
        self._dropped_path = self.dir / ".dropped_total"
        try:
            self.dropped_total = int(self._dropped_path.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            self.dropped_total = 0

    @property
    def available(self) -> bool:
        return self.core is not None

    # --- taking recordings ---------------------------------------------------------------
    def _new_id(self, now: float, tag: str) -> str:
        with self._lock:
            self._seq += 1
            seq = self._seq
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        tag = re.sub(r"[^A-Za-z0-9_.-]+", "-", tag).strip("-")[:60] or "rec"
        return f"{stamp}-{tag}-{seq}"

    def trigger(self, gpus: Iterable[int], reason: dict[str, Any], event_ts: float, tag: str = "") -> str | None:
        """Schedule a recording of `gpus` around `event_ts`; returns its id at once (so the
        event can carry it), or None when there is no core or no GPU involved."""
        gpus = tuple(sorted(set(int(g) for g in gpus)))
        if not self.available or not gpus:
            return None
        with self._lock:
            # One incident, one recording: a rule firing on a GPU whose health event already
            # scheduled one (the built-in rules do exactly that) shares it.
            for p in self._pending:
                if p.gpus == gpus and abs(p.event_ts - event_ts) <= self.after_s:
                    p.reason.setdefault("also", []).append(dict(reason))
                    return p.id
        rid = self._new_id(event_ts, tag or "gpu" + "-".join(map(str, gpus)))
        p = _Pending(rid, gpus, dict(reason), event_ts, event_ts - self.before_s, event_ts + self.after_s)
        with self._lock:
            self._pending.append(p)
        return rid

    def record_now(self, gpus: Iterable[int], seconds: float, reason: dict[str, Any] | None = None,
                   timeout: float = 30.0) -> dict[str, Any]:
        """An on-demand recording of the last `seconds`; returns its header once written."""
        if not self.available:
            raise RecordingError("no GPU core is running, so there is no ring buffer to record from")
        gpus = tuple(sorted(set(int(g) for g in gpus)))
        known = {d.index for d in self.core.devices()}
        missing = [g for g in gpus if g not in known]
        if missing or not gpus:
            raise RecordingError(f"no such GPU {missing or '(none given)'}; this host has {sorted(known)}")
        now = self.clock()
        rid = self._new_id(now, "ondemand-gpu" + "-".join(map(str, gpus)))
        p = _Pending(rid, gpus, reason or {"kind": "on-demand"}, now, now - seconds, now)
        self._worker.submit(self._capture, p)
        return p.done.result(timeout)

    def tick(self, now: float) -> None:
        """Hand recordings whose `after` period has passed to the worker."""
        with self._lock:
            due = [p for p in self._pending if p.end <= now]
            self._pending = [p for p in self._pending if p.end > now]
        for p in due:
            self._worker.submit(self._capture, p)

    def _capture(self, p: _Pending) -> None:
        try:
            p.done.set_result(self._write(p))
        except Exception as e:
            self.failed += 1
            log.error("recording %s failed: %s: %s", p.id, type(e).__name__, e)
            p.done.set_exception(RecordingError(f"recording {p.id} failed: {e}"))

    def _write(self, p: _Pending) -> dict[str, Any]:
        lines = []
        samples = 0
        for gpu in p.gpus:
            block = self.core.ring(gpu, since=p.start)
            keep = [i for i, ts in enumerate(block.timestamps) if p.start <= ts <= p.end]
            samples += len(keep)
            lines.append({"gpu": gpu, "labels": self._labels_of(gpu),
                          "timestamps": [round(block.timestamps[i], 6) for i in keep],
                          "values": {metric: [_clean(values[i]) for i in keep]
                                     for metric, values in sorted(block.values.items())}})
        header = {"format": FORMAT, "id": p.id, "reason": p.reason, "event_ts": p.event_ts,
                  "from": p.start, "to": p.end, "gpus": list(p.gpus), "samples": samples,
                  "created": self.clock()}
        body = "\n".join(json.dumps(x, separators=(",", ":")) for x in [header, *lines]) + "\n"
        path = self.dir / (p.id + SUFFIX)
        atomic_write(path, gzip.compress(body.encode(), compresslevel=6, mtime=0))
        header["size_bytes"] = path.stat().st_size
        log.info("recording %s: %d samples of GPU %s, %.1f s (%d bytes)", p.id, samples,
                 ",".join(map(str, p.gpus)), p.end - p.start, header["size_bytes"])
        self._enforce_bound()
        header["path"] = str(path)
        if self._on_written is not None:
            try:
                self._on_written(dict(header))
            except Exception:  # the file is written; a listener's bug must not undo that
                log.exception("recording %s: on_written listener failed", p.id)
        return header

    def _enforce_bound(self) -> None:
        files = sorted(self.dir.glob("*" + SUFFIX), key=lambda f: f.name)  # ids sort by time
        sizes = {f: f.stat().st_size for f in files}
        total = sum(sizes.values())
        dropped = 0
        while files and total > self.max_bytes:
            oldest = files.pop(0)
            total -= sizes[oldest]
            oldest.unlink(missing_ok=True)
            dropped += 1
            log.warning("recording %s deleted: recordings exceed %d bytes", oldest.name[:-len(SUFFIX)], self.max_bytes)
        if dropped:
            self.dropped_total += dropped
            atomic_write(self._dropped_path, str(self.dropped_total).encode())

    # --- reading them back ---------------------------------------------------------------
    def path(self, rid: str) -> Path:
        if not _ID.match(rid or ""):
            raise NoSuchRecording(f"not a recording id: {rid!r}")
        path = self.dir / (rid + SUFFIX)
        if not path.is_file():
            raise NoSuchRecording(f"no recording {rid!r} (it may have been dropped to keep the size bound)")
        return path

    def header(self, rid: str) -> dict[str, Any]:
        path = self.path(rid)
        with gzip.open(path, "rt") as f:
            header = json.loads(f.readline())
        header["size_bytes"] = path.stat().st_size
        return header

    def read(self, rid: str) -> dict[str, Any]:
        """The header's fields plus `data`: one entry per GPU with its samples."""
        path = self.path(rid)
        return {**read_file(path), "size_bytes": path.stat().st_size}

    def list(self) -> list[dict[str, Any]]:
        out = []
        for f in sorted(self.dir.glob("*" + SUFFIX), key=lambda f: f.name):
            try:
                out.append(self.header(f.name[:-len(SUFFIX)]))
            except (OSError, ValueError, RecordingError) as e:  # a damaged file is listed, not fatal
                out.append({"id": f.name[:-len(SUFFIX)], "error": str(e)})
        return out

    def summary(self) -> dict[str, Any]:
        """What the recorder knows without reading its directory (cheap enough for every tick)."""
        with self._lock:
            pending = len(self._pending)
        return {"available": self.available, "max_bytes": self.max_bytes, "pending": pending,
                "dropped_total": self.dropped_total, "failed": self.failed,
                "before_s": self.before_s, "after_s": self.after_s}

    def status(self) -> dict[str, Any]:
        """`summary()` plus the recordings kept (`count`, `bytes`): lists the directory."""
        files = list(self.dir.glob("*" + SUFFIX))
        summary = self.summary()
        return {"available": summary.pop("available"), "count": len(files),
                "bytes": sum(f.stat().st_size for f in files), **summary}

    def stop(self) -> None:
        """Write what is pending with the samples there are (a shortened `after`), then stop."""
        with self._lock:
            pending, self._pending = self._pending, []
        now = self.clock()
        for p in pending:
            p.end = min(p.end, now)
            self._worker.submit(self._capture, p)
        self._worker.shutdown(wait=True)


def read_file(path: str | Path) -> dict[str, Any]:
    """A recording file -> its header's fields plus `data` (one entry per GPU).

    For readers that have the path but no Recorder, such as the outbox shipping a
    recording to the collector when it sees the `recording` event."""
    with gzip.open(path, "rt") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    if not lines or lines[0].get("format") != FORMAT:
        raise RecordingError(f"{path}: not a {FORMAT} file")
    return {**lines[0], "data": lines[1:]}


def _clean(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
