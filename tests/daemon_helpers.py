"""Helpers for the tests that run the daemon (daemon, config, sources): config files, the CLI and
a daemon subprocess, and the components the component-contract tests name ("daemon_helpers:build_...").

Unix socket paths are limited to 107 bytes, so sockets live in a short directory under /tmp
(the `short_dir` fixture, tests/conftest.py) rather than pytest's long tmp_path.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from agent import config
from agent.daemon import Daemon

ROOT = Path(__file__).resolve().parents[1]

PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv" / "bin" / "python").exists() else sys.executable


def write_config(directory: Path, extra: str = "", name: str = "agent.toml", socket: str | None = None,
                 api: str = "") -> Path:
    """A config with state and socket in `directory`; `api` lines go into [api], `extra` after it."""
    path = directory / name
    path.write_text(
        "[agent]\n"
        f'state_dir = "{directory / "state"}"\n'
        "[api]\n"
        f'socket = "{socket or directory / "agent.sock"}"\n'
        + api + extra)
    return path


def agent_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.pop("JOURNAL_STREAM", None)
    env.pop("EGS_SIMULATED", None)
    env.pop("EGS_SOCKET", None)
    env["PYTHONPATH"] = str(ROOT)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def cli(*args, env=None, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "agent.cli", *args], cwd=ROOT, env=env or agent_env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


class DaemonProcess:
    """`egs-agent run` in a subprocess; waits for its socket; stops it with SIGTERM."""

    def __init__(self, config: Path, socket: Path, env: dict | None = None, prefix: list[str] | None = None):
        self.socket = socket
        self.stderr_path = config.parent / "daemon.stderr"
        self.stderr = open(self.stderr_path, "w")
        self.proc = subprocess.Popen([*(prefix or []), PYTHON, "-m", "agent.cli", "run", "--config", str(config)],
                                     cwd=ROOT, env=env or agent_env(), stdout=subprocess.DEVNULL, stderr=self.stderr)

    def wait_ready(self, timeout: float = 30.0) -> "DaemonProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                return self
            time.sleep(0.05)
        raise AssertionError(f"daemon did not bind {self.socket} within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self.stderr.closed:
            self.stderr.flush()
        return self.stderr_path.read_text()

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        return self.proc.returncode


# --- components used by the component-contract tests ("daemon_helpers:build_...") ---------

class RecordingComponent:
    """Remembers every call the daemon makes, so tests can check the contract."""

    name = "recording"

    def __init__(self, cfg, ctx, fail_tick_after=None):
        self.cfg, self.ctx = cfg, ctx
        self.ticks, self.buckets, self.events, self.reloads = [], [], [], []
        self.started = self.stopped = False
        self.fail_tick_after = fail_tick_after

    def start(self):
        self.started = True

    def stop(self):
        self.stopped = True

    def tick(self, now):
        if self.fail_tick_after is not None and len(self.ticks) >= self.fail_tick_after:
            raise RuntimeError("tick exploded on purpose")
        self.ticks.append(now)

    def status(self):
        return {"ticks": len(self.ticks), "buckets": len(self.buckets), "events": len(self.events)}

    def on_buckets(self, buckets):
        self.buckets.extend(buckets)

    def on_event(self, event):
        self.events.append(event)

    def reload(self, cfg):
        self.reloads.append(cfg)


BUILT: list = []


def build_recording(cfg, ctx):
    c = RecordingComponent(cfg, ctx)
    BUILT.append(c)
    return c


def build_failing_tick(cfg, ctx):
    c = RecordingComponent(cfg, ctx, fail_tick_after=1)
    c.name = "fragile"
    BUILT.append(c)
    return c


def build_raises(cfg, ctx):
    raise ValueError("cannot build on purpose")


def build_off(cfg, ctx):
    return None


def build_pair(cfg, ctx):
    """Two components built together, as agent.alarms.component:build makes alarms and health."""
    first, second = RecordingComponent(cfg, ctx), RecordingComponent(cfg, ctx)
    first.name, second.name = "first", "second"
    BUILT.extend((first, second))
    return [first, second]


# --- a stand-in native core for the GPU source ----------------------------------------------

class FakeGpuCore:
    """`agent.native.Core`'s surface (`agent.sources.gpu.GpuCore`) with scripted drains and
    events, counting its C-side calls."""

    hz = 10.0
    fallback_hz = 1.0
    slow_metrics = frozenset({"gpu_sm_clock_mhz", "gpu_memory_clock_mhz", "gpu_energy_joules_total",
                              "gpu_fan_speed_percent"})

    def __init__(self, devices, backends=None):
        self.devices_ = list(devices)
        self.next_drain: list = []
        self.queued: list = []
        self.calls = {"devices": 0, "events": 0, "backends": 0}
        self._backends = backends or {}

    def start(self):
        return self

    def stop(self):
        pass

    def devices(self):
        self.calls["devices"] += 1
        return list(self.devices_)

    def drain(self):
        out, self.next_drain = self.next_drain, []
        return out

    def events(self):
        self.calls["events"] += 1
        out, self.queued = self.queued, []
        return out

    def sampler_stats(self):
        return {"ticks": 0, "late_ticks": 0}

    @property
    def backends(self):
        self.calls["backends"] += 1
        return dict(self._backends)


# --- an in-process daemon on a short socket path ------------------------------------------------

def make_daemon(short_dir, extra="", components=(), core_factory=None, env=None, name="agent.toml", api=""):
    """A Daemon (not started) with GPUs off and state and socket in `short_dir`."""
    path = write_config(short_dir, "[gpu]\nenabled = false\n" + extra, name=name, api=api)
    cfg = config.load(path, env={})
    d = Daemon(cfg, config_path=str(path), env=env or {}, components=components, core_factory=core_factory)
    return d, path
