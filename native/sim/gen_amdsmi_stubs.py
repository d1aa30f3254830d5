#!/usr/bin/env python3
"""Generate amdsmi_stubs.c: NOT_SUPPORTED stubs for every AMD SMI symbol the official Python
reader binds at import and sim_amdsmi.c does not implement.

AMD's `amdsmi` package resolves ~184 symbols with ctypes when it is imported, so a library
missing any one of them cannot be imported at all. The list comes from the package's own
`amdsmi_wrapper.py` (lines `name = _libraries['libamd_smi.so'].name` plus their `.argtypes` and
`.restype`), so upgrading the package and re-running this script keeps the simulator loadable.
Each stub gets a C prototype derived from its argtypes so the ABI matches what ctypes passes.

    python native/sim/gen_amdsmi_stubs.py            # rewrite amdsmi_stubs.c
    python native/sim/gen_amdsmi_stubs.py --check    # exit 1 if it is stale
    python native/sim/gen_amdsmi_stubs.py --wrapper PATH/amdsmi_wrapper.py
"""
from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "amdsmi_stubs.c"
IMPLEMENTATION = HERE / "sim_amdsmi.c"

BIND = re.compile(r"^(amdsmi_\w+) = _libraries\['libamd_smi\.so'\]\.(\w+)\s*$")
ARGTYPES = re.compile(r"^(amdsmi_\w+)\.argtypes = \[(.*)\]\s*$")
RESTYPE = re.compile(r"^(amdsmi_\w+)\.restype = (\S+)\s*$")
ALIAS = re.compile(r"^(\w+) = (ctypes\.\S+|\w+)\s*(#.*)?$")
EXPORTED = re.compile(r"^SIM_EXPORT\s+[\w\s\*]+?\b(amdsmi_\w+)\s*\(", re.M)

SCALARS = {
    "ctypes.c_uint8": "uint8_t", "ctypes.c_uint16": "uint16_t", "ctypes.c_uint32": "uint32_t",
    "ctypes.c_uint64": "uint64_t", "ctypes.c_int8": "int8_t", "ctypes.c_int16": "int16_t",
    "ctypes.c_int32": "int32_t", "ctypes.c_int64": "int64_t", "ctypes.c_int": "int",
    "ctypes.c_uint": "unsigned int", "ctypes.c_bool": "_Bool", "ctypes.c_float": "float",
    "ctypes.c_double": "double", "ctypes.c_char_p": "void *", "ctypes.c_void_p": "void *",
}
# Aggregates passed by value, declared by size: under the x86-64 and AArch64 calling conventions
# an aggregate of up to 16 bytes of integers and pointers travels in the same registers as a
# byte array of its size. amdsmi_bdf_t is an 8-byte union; amdsmi_link_id_bw_type_t is
# { uint32 bw_type; 4 bytes padding; char *link_name }.
BY_VALUE_AS = {
    "union_amdsmi_bdf_t": "uint64_t",
    "struct_amdsmi_link_id_bw_type_t": "struct sim_by_value_16",
}
BY_VALUE_DECLS = ["struct sim_by_value_16 { uint64_t words[2]; };"]


def find_wrapper() -> Path:
    spec = importlib.util.find_spec("amdsmi")   # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        sys.exit("gen_amdsmi_stubs: the amdsmi package is not installed; pass --wrapper PATH")
    return Path(list(spec.submodule_search_locations)[0]) / "amdsmi_wrapper.py"


def package_version(wrapper: Path) -> str:
    text = (wrapper.parent / "_version.py").read_text() if (wrapper.parent / "_version.py").exists() else ""
    m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)", text)
    return m.group(1) if m else "unknown"


def c_type(py: str, aliases: dict[str, str]) -> str:
    py = py.strip()
    seen = set()
    while py in aliases and py not in seen and py not in BY_VALUE_AS:
        seen.add(py)                             # follow `x = y` aliases to a ctypes type
        py = aliases[py]
    if py.startswith("ctypes.POINTER(") or py in ("ctypes.c_char_p", "ctypes.c_void_p"):
        return "void *"
    if py in BY_VALUE_AS:
        return BY_VALUE_AS[py]
    if py in SCALARS:
        return SCALARS[py]
    raise SystemExit(f"gen_amdsmi_stubs: no C type for argtype {py!r}; extend SCALARS")


def split_args(text: str) -> list[str]:
    args, depth, cur = [], 0, ""
    for ch in text:
        if ch == "," and depth == 0:
            args.append(cur)
            cur = ""
            continue
        depth += ch == "("
        depth -= ch == ")"
        cur += ch
    if cur.strip():
        args.append(cur)
    return [a.strip() for a in args]


def parse(wrapper: Path):
    aliases: dict[str, str] = {}
    bound: list[str] = []
    argtypes: dict[str, list[str]] = {}
    restype: dict[str, str] = {}
    for line in wrapper.read_text().splitlines():
        if m := BIND.match(line):
            if m.group(1) != m.group(2):
                raise SystemExit(f"gen_amdsmi_stubs: {line!r} binds a differently named symbol")
            if m.group(1) not in bound:
                bound.append(m.group(1))
        elif m := ARGTYPES.match(line):
            argtypes[m.group(1)] = split_args(m.group(2))
        elif m := RESTYPE.match(line):
            restype[m.group(1)] = m.group(2)
        elif m := ALIAS.match(line):
            aliases[m.group(1)] = m.group(2)
    return aliases, bound, argtypes, restype


def render(wrapper: Path) -> tuple[str, int, int]:
    aliases, bound, argtypes, restype = parse(wrapper)
    implemented = set(EXPORTED.findall(IMPLEMENTATION.read_text()))
    missing_impl = sorted(implemented - set(bound))
    out = [
        "/*",
        " * GENERATED by native/sim/gen_amdsmi_stubs.py from amdsmi "
        f"{package_version(wrapper)}'s amdsmi_wrapper.py; do not edit.",
        " *",
        " * The official amdsmi Python package binds every symbol below with ctypes at import, so",
        " * the simulated libamd_smi.so must export them all. Those sim_amdsmi.c does not",
        " * implement report AMDSMI_STATUS_NOT_SUPPORTED, as the real library does for features a",
        " * device lacks.",
        " */",
        "#include <stddef.h>",
        "#include <stdint.h>",
        "",
        "#define SIM_EXPORT __attribute__((visibility(\"default\")))",
        "#define AMDSMI_STATUS_NOT_SUPPORTED 2",
        "",
        *BY_VALUE_DECLS,
        "",
    ]
    stubs = 0
    for name in bound:
        if name in implemented:
            continue
        params = [c_type(a, aliases) for a in argtypes.get(name, [])]
        decl = ", ".join(f"{t}{'' if t.endswith('*') else ' '}a{i}" for i, t in enumerate(params)) or "void"
        unused = " ".join(f"(void)a{i};" for i in range(len(params)))
        if restype.get(name, "amdsmi_status_t") == "None":
            out.append(f"SIM_EXPORT void {name}({decl})\n{{\n    {unused or '/* nothing */'}\n}}\n")
        else:
            body = (unused + "\n    " if unused else "") + "return AMDSMI_STATUS_NOT_SUPPORTED;"
            out.append(f"SIM_EXPORT uint32_t {name}({decl})\n{{\n    {body}\n}}\n")
        stubs += 1
    if missing_impl:
        out.append("/* sim_amdsmi.c also exports, beyond what amdsmi binds: "
                   + ", ".join(missing_impl) + " */\n")
    return "\n".join(out), len(bound), stubs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wrapper", type=Path, help="path of amdsmi_wrapper.py (default: installed package)")
    ap.add_argument("--check", action="store_true", help="exit 1 when amdsmi_stubs.c is stale")
    args = ap.parse_args()
    wrapper = args.wrapper or find_wrapper()
    text, bound, stubs = render(wrapper)
    if args.check:
        if not OUTPUT.exists() or OUTPUT.read_text() != text:
            print(f"{OUTPUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        print(f"{OUTPUT.name} is up to date ({bound} symbols bound, {stubs} stubs)")
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT} ({bound} symbols bound by amdsmi, {stubs} stubs, "
          f"{bound - stubs} implemented in {IMPLEMENTATION.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
