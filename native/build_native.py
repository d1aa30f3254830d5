"""cffi out-of-line API build of `agent._native`, the native telemetry core.

`setup.py` names this module in `cffi_modules`, so `python setup.py build_ext --inplace`
(`make native`) and `pip install` both compile it. The public header is parsed as is
(it is kept free of #include and #ifdef for that reason); the C sources are compiled into
the same extension, so there is no separate shared library to ship or to find at run time.
The vendor libraries are never linked: the core dlopens them.
"""
from __future__ import annotations

import os
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["core.c", "nvml.c", "amdsmi.c"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "egs_core.h").read_text(encoding="utf-8"))
ffibuilder.set_source(
    "agent._native",
    '#include "egs_core.h"\n',
    # setuptools wants source paths relative to the project root.
    sources=[os.path.relpath(HERE / s, HERE.parent) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE, HERE.parent)],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-pthread",
                        "-fvisibility=hidden"] + os.environ.get("EGS_NATIVE_CFLAGS", "").split(),
    libraries=["dl", "pthread", "m"],
    extra_link_args=os.environ.get("EGS_NATIVE_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
