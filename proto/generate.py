#!/usr/bin/env python3
"""Regenerate the committed Python code for every .proto under proto/.

The .proto files sit under proto/agent/proto/, mirroring the Python package agent.proto, so
the generated modules import each other as `agent.proto.x_pb2` with no rewriting.
`--check` regenerates into a temporary tree and exits 1 if anything committed differs
(tests/test_proto_fresh.py runs it).
"""
from __future__ import annotations

import filecmp
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc
    import grpc_tools

    protos = sorted(PROTO_ROOT.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out}", f"--pyi_out={out}",
            f"--grpc_python_out={out}", *map(str, protos)]
    if protos and protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return [p for p in out.rglob("*") if p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"))]


def main() -> int:
    check = "--check" in sys.argv[1:]
    if not check:
        generate(ROOT)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        stale = []
        for path in fresh:
            committed = ROOT / path.relative_to(tmp)
            if not committed.exists() or not filecmp.cmp(path, committed, shallow=False):
                stale.append(str(committed.relative_to(ROOT)))
        if stale:
            print("stale generated code (run `make proto`):", *stale, sep="\n  ")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
