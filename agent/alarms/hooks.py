"""Per-rule command hooks, run off the evaluation path.

A rule's `command` gets each of its notifications as one JSON document on stdin (the same
`Event` the log and the outbound stream carry). Commands run on a small bounded pool of
threads, each with a timeout after which its whole process group is killed, so a hook that
hangs, forks or fails is logged and costs nothing but a pool slot for `hook_timeout`. When
the pool is saturated beyond `queue` waiting hooks, new ones are dropped and counted rather
than piling up in memory: evaluation never waits for a hook.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agent.alarms.rules import MAX_HOOK_TIMEOUT_S, MIN_HOOK_TIMEOUT_S, Hook
from agent.events import Event

log = logging.getLogger("egs-agent.alarms.hooks")


# Rule validation bounds hook_timeout (agent.alarms.rules.MAX_HOOK_TIMEOUT_S); a Hook built
# any other way is held to the same bound here, since communicate() with a timeout near 1e308
# raised OverflowError on every firing (issue 10) and NaN never times out.
def _bounded(timeout: float) -> float:
    if not timeout == timeout:  # NaN
        return MAX_HOOK_TIMEOUT_S
    return min(max(float(timeout), MIN_HOOK_TIMEOUT_S), MAX_HOOK_TIMEOUT_S)


class HookRunner:
    def __init__(self, workers: int = 2, queue: int = 32):
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="alarm-hook")
        self._limit = workers + queue
        self._lock = threading.Lock()
        self._in_flight = 0
        self._children: set[subprocess.Popen] = set()
        self._closed = False
        self.counts = {"started": 0, "ok": 0, "failed": 0, "timed_out": 0, "dropped": 0}

    def submit(self, hook: Hook, event: Event, rule: str) -> bool:
        """Queue the hook; False (and counted) when the queue is full or the runner stopped."""
        with self._lock:
            if self._closed or self._in_flight >= self._limit:
                self.counts["dropped"] += 1
                log.error("hook of rule %s dropped: %s", rule,
                          "runner stopped" if self._closed else f"{self._in_flight} hooks already waiting or running")
                return False
            self._in_flight += 1
        self._pool.submit(self._run, hook, event.to_json().encode() + b"\n", rule)
        return True

    def _run(self, hook: Hook, payload: bytes, rule: str) -> None:
        try:
            self._run_one(hook, payload, rule)
        except Exception:  # a pool thread must not die silently on a surprise
            log.exception("hook of rule %s failed unexpectedly", rule)
            self._count("failed")
        finally:
            with self._lock:
                self._in_flight -= 1

    def _run_one(self, hook: Hook, payload: bytes, rule: str) -> None:
        command: Any = hook.command if isinstance(hook.command, str) else list(hook.command)
        timeout = _bounded(hook.timeout_s)
        self._count("started")
        try:
            # Own session: on timeout the whole group goes, including what the hook spawned.
            child = subprocess.Popen(command, shell=isinstance(command, str), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                                     close_fds=True)
        except OSError as e:
            self._count("failed")
            log.error("hook of rule %s could not start %r: %s", rule, hook.command, e)
            return
        with self._lock:
            self._children.add(child)
            closing = self._closed
        if closing:  # stop() ran between Popen and here and could not see this child
            self._kill(child)
        try:
            try:
                output, _ = child.communicate(payload, timeout=timeout)
            except subprocess.TimeoutExpired:
                self._kill(child)
                child.communicate()
                self._count("timed_out")
                log.error("hook of rule %s timed out after %gs and was killed: %r", rule, timeout, hook.command)
                return
        finally:
            with self._lock:
                self._children.discard(child)
        tail = output.decode("utf-8", "replace").strip()[-500:]
        if child.returncode == 0:
            self._count("ok")
            log.info("hook of rule %s ran%s", rule, f": {tail}" if tail else "")
        else:
            self._count("failed")
            log.error("hook of rule %s exited with %s%s", rule, child.returncode, f": {tail}" if tail else "")

    @staticmethod
    def _kill(child: subprocess.Popen) -> None:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"in_flight": self._in_flight, **self.counts}

    def stop(self) -> None:
        """Kill running hooks and return promptly; queued ones are cancelled."""
        with self._lock:
            self._closed = True
            children = list(self._children)
        for child in children:
            self._kill(child)
        self._pool.shutdown(wait=True, cancel_futures=True)
