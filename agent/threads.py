"""OS names for the daemon's threads.

Python (before 3.14) names a thread for itself only: `top -H`, `ps -L`, `perf` and
/proc/PID/task/TID/comm all say "python" for every one of them. A thread target calls
`name_os_thread()` first and the kernel knows it by its Python name (first 15 bytes, the
kernel's limit), as the native core names its egs-sampler and egs-events threads.
"""
from __future__ import annotations

import ctypes
import threading

_PR_SET_NAME = 15  # prctl(2)
_libc = None


def name_os_thread(name: str | None = None) -> None:
    """Give the calling thread `name` (default: its Python name) as its OS name; never
    raises (a name is a convenience for the operator, not something to fail over)."""
    global _libc
    text = (name or threading.current_thread().name).encode("utf-8", "replace")[:15]
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        _libc.prctl(_PR_SET_NAME, ctypes.c_char_p(text), 0, 0, 0)
    except (OSError, AttributeError):
        pass
