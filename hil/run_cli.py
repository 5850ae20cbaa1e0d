"""``qkd-hil run | otdr | switch | instruments | report``: the technician's commands.

``qkd-hil run BENCH`` brings a bench up, calibrates, baselines its fibres, makes keys on
every link and delivers them, with progress bars and a closing summary table; BENCH is a
bench-file path or the name of a bundled bench (``single-link``, ``malta-p2mp``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from hil import bench_file, report


def register(subparsers: Any) -> None:
    """Add the runner's subcommands to the ``qkd-hil`` dispatcher."""
    bundled = ", ".join(bench_file.bundled_benches())
    p = subparsers.add_parser(
        "run",
        help="run a bench end to end: bring-up, calibration, monitoring, keys to the KMEs",
        description=f"Run a bench end to end. BENCH: a bench file or a bundled bench ({bundled}).",
    )
    p.add_argument("bench", metavar="BENCH")
    p.add_argument("--frames", type=_positive, help="frames per link (overrides run.frames)")
    p.add_argument(
        "--symbols", type=_positive, help="symbols per frame (overrides run.symbols_per_frame)"
    )
    p.add_argument("--scenario", type=Path, help="fault scenario file (emulator backend only)")
    p.add_argument("--json", action="store_true", help="print run.json to stdout instead of tables")
    p.add_argument(
        "--results", type=Path, metavar="DIR", help="results folder [results/<bench>-<UTC>]"
    )
    p.add_argument(
        "--sae-check",
        action="store_true",
        help="last step: an SAE pair fetches one key over ETSI 014 from both KMEs and compares",
    )
    p.add_argument("--scpi-log", type=Path, metavar="FILE", help="log all SCPI traffic to FILE")
    p.add_argument("--seed", type=int, help="emulator seed (overrides the bench file)")
    p.add_argument("--link", action="append", help="run only this link (repeatable)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("otdr", help="OTDR commands on a bench")
    osub = p.add_subparsers(dest="otdr_command", metavar="ACTION")
    scan = osub.add_parser("scan", help="route the OTDR to a link, scan it and list its events")
    scan.add_argument("bench", metavar="BENCH")
    scan.add_argument("--link", help="link to scan [the first]")
    scan.add_argument("--png", type=Path, help="also plot the trace to this PNG")
    scan.add_argument("--json", action="store_true")
    scan.add_argument("--scpi-log", type=Path, metavar="FILE")
    scan.set_defaults(func=cmd_otdr_scan)
    p.set_defaults(func=_needs_action(p))

    p = subparsers.add_parser("switch", help="show or set the optical switch route")
    p.add_argument("bench", metavar="BENCH")
    p.add_argument("target", nargs="?", help="link name or port number to route to")
    p.add_argument("--scpi-log", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_switch)

    p = subparsers.add_parser("instruments", help="identify every instrument of a bench (*IDN?)")
    p.add_argument("bench", metavar="BENCH")
    p.add_argument("--json", action="store_true")
    p.add_argument("--scpi-log", type=Path, metavar="FILE")
    p.set_defaults(func=cmd_instruments)

    p = subparsers.add_parser("report", help="re-render the plots and summary of a results folder")
    p.add_argument("directory", type=Path, metavar="DIR")
    p.add_argument("--json", action="store_true", help="print the summary rows as JSON")
    p.set_defaults(func=cmd_report)


def _positive(text: str) -> int:
    try:
        value = int(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _needs_action(parser: argparse.ArgumentParser) -> Any:
    def func(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return func


# --------------------------------------------------------------------------- run


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    bench = bench_file.load(args.bench)

    from hil.runner import Runner, RunOptions

    options = RunOptions(
        frames=args.frames,
        symbols_per_frame=args.symbols,
        scenario=args.scenario,
        results_dir=args.results,
        sae_check=args.sae_check,
        scpi_log=args.scpi_log,
        seed=args.seed,
        links=args.link,
        plots=not args.no_plots,
    )
    err = Console(stderr=True)
    out = _console()
    with _Progress(err, enabled=not args.json) as progress:
        runner = Runner(bench, options, progress=progress.event)
        result = runner.run()
    run = result.run
    if args.json:
        print(json.dumps(report.jsonable(run), indent=1))
    else:
        out.print(report.summary_table(run))
        for alarm in run.get("alarms", []):
            state = "cleared" if alarm.get("cleared_at") is not None else "ACTIVE"
            out.print(f"[yellow]alarm[/] {alarm['id']} [{state}] {alarm['message']}")
        for error in run.get("errors", []):
            out.print(f"[red]error[/] {error}")
        sae = run.get("sae_check")
        if sae:
            for line in sae.get("message", "").split("; "):
                ok = line.endswith("MATCH") and not line.endswith("MISMATCH")
                out.print(f"[{'green' if ok else 'red'}]SAE check[/] {line}")
        out.print(f"results: {result.directory}")
    if result.exit_code:
        print(
            f"qkd-hil run: failed: {run.get('reason', 'see the results folder')}", file=sys.stderr
        )
    return result.exit_code


def _console() -> Any:
    """A console wide enough for the summary table even when not on a terminal."""
    from rich.console import Console

    console = Console()
    if console.width < 130:
        console = Console(width=130)
    return console


class _Progress:
    """Progress bars (rich) driven by the runner's events."""

    def __init__(self, console: Any, enabled: bool = True) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            disable=not enabled,
            transient=False,
        )
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def event(self, kind: str, **data: Any) -> None:
        if not self.enabled:
            return
        if kind == "stage":
            self.console.log(data.get("message", ""))
        elif kind == "link_start":
            self.tasks[data["link"]] = self.progress.add_task(
                f"link {data['link']}", total=data["frames"], note=""
            )
        elif kind == "frame_done" and data.get("link") in self.tasks:
            self.progress.update(
                self.tasks[data["link"]], advance=1, note=str(data.get("note", ""))
            )
            if not self.console.is_terminal:
                self.console.log(f"{data['link']}: frame done {data.get('note', '')}")
        elif kind == "link_note" and data.get("link") in self.tasks:
            self.progress.update(self.tasks[data["link"]], note=str(data.get("note", "")))
            self.console.log(f"{data['link']}: {data.get('note', '')}")
        elif kind == "alarm":
            self.console.log(f"[yellow]ALARM[/] {data.get('message', '')}")
        elif kind == "error":
            self.console.log(f"[red]ERROR[/] {data.get('message', '')}")


# --------------------------------------------------------------------------- small commands


def _session(bench_arg: str, scpi_log: Path | None) -> Any:
    from hil.procedures import Session

    bench = bench_file.load(bench_arg)
    return Session.open(bench, scpi_log=scpi_log)


def cmd_instruments(args: argparse.Namespace) -> int:
    from rich.table import Table

    with _session(args.bench, args.scpi_log) as session:
        rows = session.identify()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = Table(title=f"instruments of {session.bench.name}", title_justify="left")
    for col in ("name", "role", "resource", "identity"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], row["role"], row["resource"], row["idn"])
    _console().print(table)
    return 0


def cmd_switch(args: argparse.Namespace) -> int:
    with _session(args.bench, args.scpi_log) as session:
        if args.target is not None:
            port = session.route(args.target)
            print(f"switch routed to port {port} ({session.link_of_port(port) or 'no link'})")
        else:
            port = session.current_port()
            print(f"switch at port {port} ({session.link_of_port(port) or 'no link'})")
    return 0


def cmd_otdr_scan(args: argparse.Namespace) -> int:
    from hil import plots

    with _session(args.bench, args.scpi_log) as session:
        from hil.procedures import configure_otdr

        link = args.link or session.bench.links[0].name
        session.link(link)  # a clear error for an unknown link
        configure_otdr(session)
        session.route(link)
        scan = session.otdr_scan(link)
    if args.png:
        plots.otdr(
            args.png,
            link,
            None,
            {
                "distance_m": scan.distance_m,
                "level_db": scan.level_db,
                "events": [e.__dict__ for e in scan.events],
                "time": scan.time,
            },
        )
    if args.json:
        print(json.dumps(report.jsonable(scan.to_json()), indent=1))
        return 0
    print(
        f"OTDR scan of {link}: {len(scan.distance_m)} points, resolution {scan.resolution_m:.1f} m"
    )
    print(f"{'#':>3} {'location (km)':>14} {'type':<15} {'loss (dB)':>9} {'refl. (dB)':>10}")
    for k, ev in enumerate(scan.events, 1):
        refl = "-" if ev.reflectance_db is None else f"{ev.reflectance_db:.1f}"
        print(f"{k:>3} {ev.location_m / 1e3:>14.4f} {ev.kind:<15} {ev.loss_db:>9.3f} {refl:>10}")
    if args.png:
        print(f"trace plotted to {args.png}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:

    run = report.load(args.directory)
    written = report.render(args.directory)
    if args.json:
        print(json.dumps(report.summary_rows(run), indent=1))
        return 0
    console = _console()
    console.print(report.summary_table(run))
    console.print(f"re-rendered {len(written)} plots in {args.directory}")
    return 0
