"""``qkd-hil bench``: run the benchmark areas, print the table, write ``bench.json``."""

from __future__ import annotations

import argparse
import importlib
import sys
import time

from hil.bench import AREAS, Row, format_table, write_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="measure speed and quality figures (make bench)")
    p.add_argument("--area", action="append", choices=AREAS, help="only this area (repeatable)")
    p.add_argument("--json", default="bench.json", help="output file (default bench.json)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    rows: list[Row] = []
    failed: list[str] = []
    for area in args.area or AREAS:
        t0 = time.perf_counter()
        print(f"[bench] {area} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"hil.bench.{area}")
        except ModuleNotFoundError as exc:
            if exc.name != f"hil.bench.{area}":
                raise
            print(f"[bench] {area}: not available", file=sys.stderr)
            continue
        try:
            new = module.run(quick=args.quick)
        except Exception as exc:
            failed.append(f"{area}: {exc}")
            print(f"[bench] {area} FAILED: {exc}", file=sys.stderr)
            continue
        rows.extend(new)
        print(f"[bench] {area} done in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        write_json(rows, args.json)
    print(format_table(rows))
    write_json(rows, args.json)
    print(f"\nwrote {args.json} ({len(rows)} rows)")
    if failed:
        print("failed areas: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0
