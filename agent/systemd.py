"""systemd integration shared by `egs-agent run` and `egs-collector run`.

sd_notify(3) datagrams (READY, STATUS, WATCHDOG, STOPPING), the watchdog interval systemd
asks for, and one log line per record in the form journald wants: no timestamp (the journal
stamps each entry) and a `<N>` syslog priority prefix when JOURNAL_STREAM is set; a
timestamped line otherwise (a terminal, `make run`).
"""
from __future__ import annotations

import logging
import os
import socket
import sys
import time

log = logging.getLogger("egs-agent")


def simulated_env(env: dict[str, str] | None = None) -> bool:
    """`EGS_SIMULATED=1` (set by `make demo`): every output is marked SIMULATED."""
    env = os.environ if env is None else env
    return env.get("EGS_SIMULATED", "").strip().lower() not in ("", "0", "false", "no")


# --- systemd notification --------------------------------------------------------------------

def sd_notify(message: str, env: dict[str, str] | None = None) -> bool:
    """Send one sd_notify(3) datagram ("READY=1", "STATUS=...", "WATCHDOG=1", ...).

    The protocol is a datagram on the AF_UNIX socket named by NOTIFY_SOCKET; a leading '@'
    names an abstract socket. Without NOTIFY_SOCKET (not under systemd) it does nothing.
    """
    env = os.environ if env is None else env
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode("utf-8", "replace"), address)
        return True
    except OSError as e:
        log.warning("sd_notify to %s failed: %s", env.get("NOTIFY_SOCKET"), e)
        return False


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC, as sd_watchdog_enabled advises)."""
    env = os.environ if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 1e6 / 2)
    except ValueError:
        return None


class LogFormat(logging.Formatter):
    """One line per record. Under journald (JOURNAL_STREAM set) no timestamp, since the
    journal stamps each line itself, and a `<N>` syslog priority prefix, which journald
    turns into the entry's priority."""

    _priority = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

    def __init__(self, journal: bool, simulated: bool):
        super().__init__()
        self.journal, self.simulated = journal, simulated

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            # Keep it one line: the journal shows multi-line tracebacks as separate entries.
            message += " | " + self.formatException(record.exc_info).replace("\n", " | ")
        if self.simulated:
            message = "SIMULATED " + message
        if self.journal:
            return f"<{self._priority.get(record.levelno, 6)}>{message}"
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(record.created))
        return f"{stamp} {record.levelname.lower()} {message}"


def setup_logging(level: str, env: dict[str, str] | None = None, stream=None) -> None:
    """Route every logger to one handler on stderr (the journal, under systemd) at `level`."""
    env = os.environ if env is None else env
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(LogFormat(bool(env.get("JOURNAL_STREAM")), simulated_env(env)))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
