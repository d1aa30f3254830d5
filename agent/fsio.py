"""Files replaced whole: a reader, or the agent after a crash or a power cut, sees the old
content or the new, never a mix.

The new content goes to `<name>.tmp` beside the file, is fsync'd, renamed over the file, and
then the directory is fsync'd: the rename is a change to the directory, and until the
directory reaches the disk a power cut can undo it (rename(2) is atomic against crashes of
the process, not against the loss of the page cache). A fixed temporary name means a write
cut short by a crash leaves one leftover that the next write truncates, not one per process.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of directory `path` (files created, renamed, removed) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o640, durable: bool = True) -> None:
    """Replace `path` with `data` (creating its directory if need be). `durable=False` leaves
    out both fsyncs: still atomic against a crash of the process, not against a power cut.
    On any failure the temporary file is removed and the error raised; `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # e.g. never created; the first error is the one to see
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)
