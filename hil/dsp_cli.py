"""``qkd-hil dsp CAPTURE.npz [--json OUT]``: redo Bob's DSP and estimation on a saved capture.

The analysis is :func:`hil.capture.analyse_capture`, the same function the runner uses in
memory, so the printed and written figures reproduce the live result exactly.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from hil.capture import CaptureFormatError, analyse_capture, load_capture
from hil.cli import UsageError


def register(subparsers: Any) -> None:
    """Add the ``dsp`` subcommand."""
    p = subparsers.add_parser(
        "dsp",
        help="receiver DSP, estimates and key rate of a saved capture (NPZ)",
        description=(
            "Run Bob's DSP (pilot CFO/clock/phase recovery, frame sync, matched filter), the "
            "shot-noise calibration, the parameter estimation (T, excess noise, SNR with "
            "standard errors and worst-case values) and the finite-size key rate on a "
            "capture file written by the runner (docs/dsp.md describes the format)."
        ),
    )
    p.add_argument("capture", help="capture file (.npz)")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON to OUT")
    p.add_argument("--beta", type=float, default=0.95, help="reconciliation efficiency (0.95)")
    p.add_argument("--eps-pe", type=float, default=1e-10, help="estimation failure prob.")
    p.add_argument("--untrusted", action="store_true", help="detector noise is Eve's")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load, analyse, print, optionally write JSON."""
    if not 0 < args.beta <= 1:
        raise UsageError(f"--beta {args.beta} must be in (0, 1]")
    if not 0 < args.eps_pe < 1:
        raise UsageError(f"--eps-pe {args.eps_pe} must be in (0, 1)")
    try:
        cap = load_capture(args.capture)
    except CaptureFormatError as exc:
        raise UsageError(str(exc)) from exc
    try:
        result = analyse_capture(
            cap, beta=args.beta, eps_pe=args.eps_pe, trusted=not args.untrusted
        )
    except ValueError as exc:
        raise UsageError(f"capture file {args.capture}: {exc}") from exc
    print(format_result(result))
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2, allow_nan=False)
            fh.write("\n")
        os.replace(tmp, args.json)
    return 0


def format_result(r: dict[str, Any]) -> str:
    """Human-readable summary of :func:`hil.capture.analyse_capture` output."""
    e = r["estimates"]
    d = r["dsp"]
    c = r["calibration"]
    k = r["key_rate"]
    lines = [
        f"symbols            {r['n_symbols']}",
        f"V_A                {r['V_A']:.4f} SNU",
        f"CFO                {d['cfo_hz'] / 1e6:+.4f} MHz",
        f"clock mismatch     {d['clock_ppm']:+.3f} ppm",
        f"pilot SNR          {d['pilot_snr']:.2f} (tracking +-{d['tracking_hz'] / 1e6:.1f} MHz)",
        f"eta, v_el          {c['eta']:.4f}, {c['v_el']:.5f} +- {c['v_el_stderr']:.5f} SNU",
        f"T                  {e['T']:.6f} +- {e['T_stderr']:.6f} (worst {e['T_worst']:.6f})",
        f"xi                 {e['xi']:.5f} +- {e['xi_stderr']:.5f} SNU (worst {e['xi_worst']:.5f})",
        f"SNR                {e['snr']:.5f} +- {e['snr_stderr']:.5f}",
        f"key rate           {k['rate']:.6g} bit/symbol (finite size, beta {k['beta']:g})",
    ]
    return "\n".join(lines)
