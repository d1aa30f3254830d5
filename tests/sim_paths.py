"""Where the simulated vendor libraries and scenarios live, and how to build them.

Shared by every room whose tests run against the simulated libnvidia-ml.so.1 / libamd_smi.so
(native/sim/). Imported by name: pyproject's pytest `pythonpath` puts tests/ on sys.path (bench
scripts put it there themselves); the `sim_out` fixture (tests/conftest.py) builds them once:

    import sim_paths

    def test_something(sim_out):
        env = sim_paths.nvml_env("constant")      # for a pynvml subprocess
        lib = sim_paths.NVML_LIB                   # for EGS_NVML_LIBRARY / Core(nvml_library=...)

The scenario file is chosen per process by EGS_SIM_SCENARIO, read at the library's init.
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIM_SRC = ROOT / "native" / "sim"
SCENARIOS = SIM_SRC / "scenarios"
SIM_OUT = Path(os.environ.get("EGS_SIM_OUT", ROOT / "build" / "sim")).resolve()

NVML_DIR = SIM_OUT / "nvml"
NVML_LEGACY_DIR = SIM_OUT / "nvml-legacy"
AMDSMI_DIR = SIM_OUT / "amdsmi"
NVML_LIB = NVML_DIR / "libnvidia-ml.so.1"
NVML_LEGACY_LIB = NVML_LEGACY_DIR / "libnvidia-ml.so.1"
AMDSMI_LIB = AMDSMI_DIR / "libamd_smi.so"


def scenario(name: str) -> Path:
    """Path of a scenario in native/sim/scenarios/, by name with or without ".toml"."""
    path = SCENARIOS / (name if name.endswith(".toml") else name + ".toml")
    if not path.is_file():
        known = sorted(p.stem for p in SCENARIOS.glob("*.toml"))
        raise FileNotFoundError(f"no scenario {name!r} in {SCENARIOS} (have: {', '.join(known)})")
    return path


def build_sim() -> Path:
    """Build (or bring up to date) the simulated libraries; returns SIM_OUT.

    Several test sessions may run at once on a shared tree, so the build is serialised with a
    lock file; make only relinks what changed and renames each library into place atomically.
    """
    SIM_OUT.mkdir(parents=True, exist_ok=True)
    with open(SIM_OUT / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(["make", "-s", "-C", str(SIM_SRC), f"OUT={SIM_OUT}"],
                                capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"building the simulated libraries failed (make -C {SIM_SRC}):\n"
                           f"{result.stdout}{result.stderr}")
    return SIM_OUT


def _scenario_path(which: str | os.PathLike | None) -> str | None:
    if which is None:
        return None
    p = Path(which)
    return str(p if p.suffix == ".toml" and p.exists() else scenario(str(which)))


def nvml_env(which: str | os.PathLike | None = None, legacy: bool = False,
             base: dict | None = None) -> dict:
    """Environment for a subprocess whose pynvml should load the simulated NVML.

    `which` is a scenario name or path (None: the library's built-in default).
    """
    env = dict(os.environ if base is None else base)
    lib_dir = str(NVML_LEGACY_DIR if legacy else NVML_DIR)
    env["LD_LIBRARY_PATH"] = lib_dir + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env.pop("EGS_SIM_SCENARIO", None)
    path = _scenario_path(which)
    if path:
        env["EGS_SIM_SCENARIO"] = path
    return env


def amdsmi_env(which: str | os.PathLike | None = None, base: dict | None = None) -> dict:
    """Environment for a subprocess whose `import amdsmi` should load the simulated AMD SMI.

    amdsmi looks for $ROCM_HOME/lib/libamd_smi.so first (then $ROCM_PATH/lib), so ROCM_HOME
    points at a folder whose lib/ is the build output.
    """
    env = dict(os.environ if base is None else base)
    rocm = SIM_OUT / "rocm"
    env["ROCM_HOME"] = str(rocm)
    env["ROCM_PATH"] = str(rocm)
    env.pop("EGS_SIM_SCENARIO", None)
    path = _scenario_path(which)
    if path:
        env["EGS_SIM_SCENARIO"] = path
    return env

# `gpu.slow_fields` with every polled field but the clocks, energy and fan on the fast tier:
# for tests of the fast tier's per-tick polling (at the defaults temperature and memory are
# slow too, and a driver with sample buffers leaves nothing to poll on a fast tick).
CLASSIC_SLOW = ("sm_clock", "memory_clock", "energy", "fan")


def reader_json(code: str, env: dict, timeout: float = 60.0):
    """Runs a reader snippet (pynvml, amdsmi: the official readers, on the simulated library
    `env` names) in a subprocess and returns the JSON document it printed as its last line."""
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                            timeout=timeout, cwd=str(ROOT))
    assert result.returncode == 0, f"reader failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])
