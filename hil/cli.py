"""The ``qkd-hil`` command: one entry point, one subcommand module per area.

Each area module exposes ``register(subparsers)``, adding its parser(s) and setting
``func`` (called with the parsed namespace, returns an exit code). A user mistake raises
an exception with a clear message; here it becomes one line on stderr and exit code 2
(bad input) or 1 (anything else), with the traceback only under ``--debug``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (module, description) in the order shown by ``qkd-hil --help``.
AREAS: tuple[str, ...] = (
    "hil.run_cli",
    "hil.dsp_cli",
    "hil.keyrate_cli",
    "emulator.cli",
    "kms_bridge.cli",
    "hil.bench.cli",
)


class UsageError(Exception):
    """A user mistake in arguments or input files: exit code 2, one clear line."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qkd-hil",
        description="CV-QKD hardware-in-the-loop: instruments, emulated bench, DSP, keys.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in AREAS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("qkd-hil: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        code = 2 if _is_usage_error(exc) else 1
        print(f"qkd-hil {args.command}: error: {exc}", file=sys.stderr)
        return code


def _is_usage_error(exc: BaseException) -> bool:
    return isinstance(exc, UsageError) or getattr(exc, "exit_code", None) == 2


if __name__ == "__main__":
    sys.exit(main())
