"""``qkd-hil emulate --serve``: every emulated instrument as SCPI over TCP on loopback.

Prints one line per instrument (role, emulated resource, address for pyvisa-py/pyserial)
and runs until Ctrl-C. Example::

    qkd-hil emulate --serve --port 0 --serial pty
    transmitter  TCPIP0::qkdsim-tx::inst0::INSTR  TCPIP0::127.0.0.1::40151::SOCKET
    ...
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "emulate",
        help="serve the emulated instruments over TCP/pty on loopback",
        description="Serve every emulated instrument as raw SCPI over TCP on 127.0.0.1 "
        "(TCPIP0::127.0.0.1::<port>::SOCKET for pyvisa-py) and the serial switch on a pty "
        "or a socket:// URL (pyserial).",
    )
    p.add_argument("--serve", action="store_true", help="start the servers (required)")
    p.add_argument(
        "--bench",
        metavar="FILE",
        help="bench or world file (its emulator: section); default bench otherwise",
    )
    p.add_argument(
        "--port", type=int, default=0, help="first TCP port (0: any free port per instrument)"
    )
    p.add_argument(
        "--serial", choices=("pty", "socket"), default="pty", help="how to offer the serial switch"
    )
    p.add_argument("--seed", type=int, default=None, help="world seed (default: random, printed)")
    p.add_argument("--scenario", metavar="FILE", help="scenario timeline to load into the world")
    p.set_defaults(func=run)


def _build_world(args: argparse.Namespace) -> Any:
    from emulator.backend import _config_from_file
    from emulator.world import World

    if not args.bench:
        return World.default(seed=args.seed)
    config, plain = _config_from_file(args.bench)
    if plain or config is None:
        raise ValueError(f"{args.bench}: a plain pyvisa-sim file has no world to serve")
    seed = args.seed if args.seed is not None else config.get("seed")
    return World.from_config(config, seed=seed)


def run(args: argparse.Namespace) -> int:
    from emulator.server import serve

    if not args.serve:
        print("qkd-hil emulate: nothing to do (use --serve)", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0..65535, got {args.port}")
    world = _build_world(args)
    if args.scenario:
        world.load_scenario(args.scenario)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    handle = serve(world, port=args.port, serial=args.serial)
    try:
        width = max((len(k) for k in handle.roles), default=8)
        rwidth = max((len(v) for v in handle.roles.values()), default=8)
        print(f"# cvqkd-hil emulated bench, seed {getattr(world, 'seed', '?')}")
        for role, resource in handle.roles.items():
            print(f"{role:<{width}}  {resource:<{rwidth}}  {handle.resources[resource]}")
        print("# serving; Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            pass
    finally:
        handle.close()
    return 0
