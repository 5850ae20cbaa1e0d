"""``qkd-hil keyrate``: key rate versus distance for a Gaussian-modulated CV-QKD link.

Prints a table (distance, transmittance, asymptotic and finite-size key rates, the PLOB
bound) for given modulation variance, excess noise, detector and reconciliation
figures and block size, and with ``--plot FILE.png`` draws the three curves. The
physics lives in :mod:`dsp.keyrate`; this module only parses, loops and prints.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsp import keyrate as kr
from hil.cli import UsageError


def register(subparsers: Any) -> None:
    """Add the ``keyrate`` subcommand."""
    p = subparsers.add_parser(
        "keyrate",
        help="key rate vs distance (asymptotic, finite-size, PLOB)",
        description=(
            "Key rate of GG02 (Gaussian modulation, heterodyne, reverse reconciliation) "
            "versus fibre length: asymptotic (Laudenbach et al. 2018), finite-size "
            "(Leverrier et al. 2010) and the PLOB bound. Rates in bits per symbol."
        ),
    )
    p.add_argument("--va", type=float, default=4.0, help="modulation variance V_A, SNU (4)")
    p.add_argument(
        "--optimise-va",
        action="store_true",
        help="choose V_A maximising each rate at each distance (ignores --va)",
    )
    p.add_argument("--xi", type=float, default=0.01, help="excess noise at channel input, SNU")
    p.add_argument("--eta", type=float, default=0.6, help="detector efficiency (0.6)")
    p.add_argument("--vel", type=float, default=0.05, help="electronic noise, SNU (0.05)")
    p.add_argument("--beta", type=float, default=0.95, help="reconciliation efficiency")
    p.add_argument("--block", type=float, default=1e9, help="symbols per block N (1e9)")
    p.add_argument(
        "--pe-fraction", type=float, default=0.5, help="fraction disclosed for estimation"
    )
    p.add_argument(
        "--all-symbols",
        action="store_true",
        help="estimate on all symbols after reconciliation (Ruppert et al. 2014)",
    )
    p.add_argument("--untrusted", action="store_true", help="detector noise is Eve's")
    p.add_argument("--eps-pe", type=float, default=1e-10, help="estimation failure prob.")
    p.add_argument("--eps-smooth", type=float, default=1e-10, help="smoothing parameter")
    p.add_argument("--eps-pa", type=float, default=1e-10, help="privacy-amplification eps")
    p.add_argument("--att", type=float, default=0.2, help="fibre attenuation, dB/km (0.2)")
    p.add_argument("--extra-loss", type=float, default=0.0, help="extra loss, dB (0)")
    p.add_argument(
        "--distances",
        default="0:150:10",
        help="km: START:STOP:STEP (inclusive) or a comma list (default 0:150:10)",
    )
    p.add_argument("--symbol-rate", type=float, default=None, help="symbols/s: add bit/s")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png", help="draw curves")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write rows")
    p.set_defaults(func=run)


def parse_distances(text: str) -> list[float]:
    """``"0:100:10"`` (inclusive) or ``"5,25,50"`` to a list of km."""
    try:
        if ":" in text:
            start, stop, step = (float(v) for v in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            count = math.floor((stop - start) / step + 1e-9) + 1
            values = [start + k * step for k in range(count)]
        else:
            values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(
            f"--distances {text!r}: expected START:STOP:STEP (STEP > 0) or a comma list of km"
        ) from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise UsageError(f"--distances {text!r}: distances must be finite and >= 0 km")
    return values


@dataclass(frozen=True)
class Row:
    """One distance of the table."""

    length_km: float
    T: float
    V_A_asymptotic: float
    asymptotic: float
    V_A_finite: float
    finite: float
    plob: float | None  # None on a lossless link (the bound is infinite)


def _validate(args: argparse.Namespace) -> int:
    checks = [
        ("--va", args.va, args.va > 0),
        ("--xi", args.xi, args.xi >= 0),
        ("--eta", args.eta, 0 < args.eta <= 1),
        ("--vel", args.vel, args.vel >= 0),
        ("--beta", args.beta, 0 < args.beta <= 1),
        ("--block", args.block, args.block >= 4),
        ("--pe-fraction", args.pe_fraction, 0 < args.pe_fraction < 1),
        ("--eps-pe", args.eps_pe, 0 < args.eps_pe < 1),
        ("--eps-smooth", args.eps_smooth, 0 < args.eps_smooth < 1),
        ("--eps-pa", args.eps_pa, 0 < args.eps_pa < 1),
        ("--att", args.att, args.att >= 0),
        ("--extra-loss", args.extra_loss, args.extra_loss >= 0),
    ]
    if args.symbol_rate is not None:
        checks.append(("--symbol-rate", args.symbol_rate, args.symbol_rate > 0))
    for name, value, ok in checks:
        if not (math.isfinite(value) and ok):
            raise UsageError(f"{name} {value!r} is out of range")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise UsageError(f"--plot {args.plot}: the file name must end in .png")
    return int(args.block)


def compute_rows(args: argparse.Namespace, distances: list[float], N: int) -> list[Row]:
    """Key rates at each distance (a zero-length link is capped at T < 1)."""
    trusted = not args.untrusted
    finite_kw = {
        "pe_fraction": args.pe_fraction,
        "all_symbols": args.all_symbols,
        "eps_pe": args.eps_pe,
        "eps_smooth": args.eps_smooth,
        "eps_pa": args.eps_pa,
    }
    common = (args.xi, args.eta, args.vel, args.beta)
    rows = []
    for length in distances:
        T_link = kr.fibre_transmittance(length, args.att, args.extra_loss)
        T = min(T_link, 1.0 - 1e-9)
        if not trusted and args.eta * T >= 1:
            T = (1.0 - 1e-9) / args.eta
        if args.optimise_va:
            va_a, k_a = kr.best_modulation_variance(T, *common, trusted=trusted)
            va_f, k_f = kr.best_modulation_variance(T, *common, N=N, trusted=trusted, **finite_kw)
        else:
            va_a = va_f = args.va
            k_a = kr.asymptotic_key_rate(args.va, T, *common, trusted=trusted).rate
            k_f = kr.finite_size_key_rate(args.va, T, *common, N, trusted=trusted, **finite_kw).rate
        plob = kr.plob_bound(T_link) if T_link < 1 else None
        rows.append(Row(length, T_link, va_a, k_a, va_f, k_f, plob))
    return rows


def _fmt(k: float) -> str:
    return f"{k:11.4e}" if k > 0 else f"{'0 (none)':>11}"


def print_table(args: argparse.Namespace, rows: list[Row], N: int) -> None:
    """Print the settings and one line per distance."""
    mode = "untrusted" if args.untrusted else "trusted"
    pe = "all symbols (Ruppert 2014)" if args.all_symbols else f"{args.pe_fraction:g} disclosed"
    print(
        f"GG02 heterodyne, reverse reconciliation, {mode} detector noise: "
        f"xi={args.xi:g} SNU, eta={args.eta:g}, v_el={args.vel:g} SNU, beta={args.beta:g}"
    )
    va = "optimised per distance" if args.optimise_va else f"{args.va:g} SNU"
    print(
        f"V_A {va}; N={N:.3g} symbols, estimation on {pe}; eps_PE={args.eps_pe:g}, "
        f"eps_smooth={args.eps_smooth:g}, eps_PA={args.eps_pa:g}; "
        f"fibre {args.att:g} dB/km + {args.extra_loss:g} dB"
    )
    head = f"{'L [km]':>7} {'T':>10} {'K_asym':>11} {'K_finite':>11} {'PLOB':>11}"
    if args.optimise_va:
        head += f" {'V_A asym':>8} {'V_A fin':>8}"
    if args.symbol_rate:
        head += f" {'finite b/s':>11}"
    print(head + "   (bits/symbol; rates <= 0 give no key)")
    for r in rows:
        line = (
            f"{r.length_km:7.1f} {r.T:10.4e} {_fmt(r.asymptotic)} {_fmt(r.finite)} "
            f"{r.plob if r.plob is not None else math.inf:11.4e}"
        )
        if args.optimise_va:
            line += f" {r.V_A_asymptotic:8.3f} {r.V_A_finite:8.3f}"
        if args.symbol_rate:
            line += f" {max(r.finite, 0.0) * args.symbol_rate:11.4e}"
        print(line)


def plot(path: Path, args: argparse.Namespace, distances: list[float], N: int) -> None:
    """Key rate vs distance on a log scale (positive rates only)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    lo, hi = min(distances), max(distances)
    fine = [lo + (hi - lo) * k / 300 for k in range(301)] if hi > lo else [lo]
    rows = compute_rows(args, fine, N)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [r.length_km for r in rows]

    def positive(values: list[float]) -> list[float]:
        return [v if v > 0 else math.nan for v in values]

    ax.plot(
        x,
        [r.plob if r.plob is not None else math.nan for r in rows],
        "k--",
        label="PLOB bound $-\\log_2(1-T)$",
    )
    ax.plot(x, positive([r.asymptotic for r in rows]), label="asymptotic")
    ax.plot(x, positive([r.finite for r in rows]), label=f"finite size, N = {N:.0e}")
    ax.set_yscale("log")
    ax.set_xlabel("fibre length [km]")
    ax.set_ylabel("key rate [bits/symbol]")
    mode = "untrusted" if args.untrusted else "trusted"
    va = "optimal $V_A$" if args.optimise_va else f"$V_A$={args.va:g}"
    ax.set_title(
        f"GG02 heterodyne RR, {mode} noise: {va}, $\\xi$={args.xi:g}, "
        f"$\\eta$={args.eta:g}, $v_{{el}}$={args.vel:g}, $\\beta$={args.beta:g}",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot write the file ({exc.strerror})") from None
    finally:
        plt.close(fig)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``qkd-hil keyrate``."""
    N = _validate(args)
    distances = parse_distances(args.distances)
    rows = compute_rows(args, distances, N)
    print_table(args, rows, N)
    if args.json is not None:
        data: dict[str, Any] = {
            "settings": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k != "func"
            },
            "rows": [r.__dict__ for r in rows],
        }
        try:
            args.json.write_text(json.dumps(data, indent=1) + "\n")
        except OSError as exc:
            raise UsageError(
                f"--json {args.json}: cannot write the file ({exc.strerror})"
            ) from None
    if args.plot is not None:
        plot(args.plot, args, distances, N)
        print(f"plot written to {args.plot}")
    return 0
