"""`egs-agent`: one entry point, one sub-command per verb.

Each feature registers its own verbs (`register(subparsers)` in its `cli` module) so the
code for a verb lives beside the feature. Exit codes, the same for every verb: 0 ok, 1 runtime failure,
2 bad usage or bad config.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from agent.config import ConfigError
from agent.grpc_import import import_grpc_without_ssl

# Modules with a `register(subparsers)` function; the order is the order in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "agent.api.cli",
    "agent.nic.cli",
    "agent.workload.cli",
    "agent.alarms.cli",
    "agent.probe",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egs-agent", description="GPU fleet node agent.")
    parser.add_argument("--socket", help="local API socket (default: from config, or $EGS_SOCKET)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        # The program itself (`egs-agent`, `python -m agent.cli`), not a caller passing
        # argv in its own process: grpc goes in first, without Python's ssl, before a verb's
        # module imports asyncio (4 MiB less RSS for the daemon; see agent/grpc_import.py).
        import_grpc_without_ssl()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"egs-agent: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `egs-agent status | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
