"""The vendor libraries the native core loads by default, and the variables that override them.

One home for the names the core (`agent.native`), the `[gpu]` config keys and `egs-agent probe`
all state; importable without the native extension, as the config needs it on any host.
"""
from __future__ import annotations

import os

NVML_LIBRARY = "libnvidia-ml.so.1"      # a soname: the loader's search path finds it
NVML_ENV = "EGS_NVML_LIBRARY"
AMDSMI_FILE = "libamd_smi.so"           # not on the loader's path: ROCm installs it under its lib/
AMDSMI_ENV = "EGS_AMDSMI_LIBRARY"
AMDSMI_DEFAULT = f"{AMDSMI_FILE} under $ROCM_PATH/lib or /opt/rocm/lib"


def default_amdsmi_library(env: dict[str, str] | None = None) -> str:
    """AMDSMI_DEFAULT for this environment: $ROCM_PATH/lib/libamd_smi.so, else under /opt/rocm."""
    env = os.environ if env is None else env
    return os.path.join(env.get("ROCM_PATH") or "/opt/rocm", "lib", AMDSMI_FILE)
