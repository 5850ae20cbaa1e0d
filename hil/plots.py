"""PNG plots of a run: OTDR traces against the baseline, constellation, spectrum, timeline.

Each function takes plain arrays (as stored in a results folder) and writes one PNG, so
``qkd-hil report DIR`` can redraw everything without instruments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

_KIND_COLOURS = {"reflective": "tab:red", "non-reflective": "tab:blue", "end": "black"}


def otdr(
    path: Path,
    link: str,
    baseline: dict[str, Any] | None,
    latest: dict[str, Any] | None,
    alarms: Sequence[dict[str, Any]] = (),
) -> Path:
    """OTDR trace with its events (top) and the difference from the baseline (bottom).

    ``baseline``/``latest``: ``{"distance_m", "level_db", "events": [{location_m, kind,
    loss_db, ...}], "time"}``.
    """
    fig, (ax, ax_diff) = plt.subplots(
        2, 1, figsize=(9, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    for trace, label, colour in ((baseline, "baseline", "0.6"), (latest, "latest", "tab:green")):
        if trace is None:
            continue
        z = np.asarray(trace["distance_m"], float) / 1e3
        ax.plot(
            z, trace["level_db"], color=colour, lw=0.8, label=f"{label} (t={trace['time']:.0f} s)"
        )
    shown = latest or baseline
    if shown is not None:
        for ev in shown.get("events", []):
            colour = _KIND_COLOURS.get(ev["kind"], "tab:purple")
            ax.axvline(ev["location_m"] / 1e3, color=colour, lw=0.6, ls=":")
            ax.annotate(
                f"{ev['kind']}\n{ev['loss_db']:.2f} dB",
                (ev["location_m"] / 1e3, ax.get_ylim()[1] if ax.lines else 0.0),
                fontsize=7,
                color=colour,
                va="top",
                ha="left",
                xytext=(2, -2),
                textcoords="offset points",
            )
    ax.set_ylabel("level (dB, one way)")
    ax.set_title(f"OTDR: {link}")
    if ax.lines:
        ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)

    ends = [
        ev["location_m"]
        for tr in (baseline, latest)
        if tr is not None
        for ev in tr.get("events", [])
        if ev.get("kind") == "end"
    ]
    fibre_end = max(ends) if ends else None
    if baseline is not None and latest is not None:
        zb = np.asarray(baseline["distance_m"], float)
        z = np.asarray(latest["distance_m"], float)
        hi = min(z[-1], zb[-1]) if z.size and zb.size else 0.0
        if fibre_end is not None:
            hi = min(hi, fibre_end)  # beyond the fibre end there is only noise
        keep = z <= hi
        diff = np.asarray(latest["level_db"], float)[keep] - np.interp(
            z[keep], zb, np.asarray(baseline["level_db"], float)
        )
        ax_diff.plot(z[keep] / 1e3, diff, color="tab:orange", lw=0.8)
        if diff.size:
            lo_d, hi_d = np.percentile(diff, [0.5, 99.5])
            pad = max(0.2, 0.2 * (hi_d - lo_d))
            ax_diff.set_ylim(min(lo_d, -0.5) - pad, max(hi_d, 0.5) + pad)
    if fibre_end is not None:
        ax.set_xlim(-0.02 * fibre_end / 1e3, 1.15 * fibre_end / 1e3)
    for alarm in alarms:
        if alarm.get("location_km") is not None:
            for a in (ax, ax_diff):
                a.axvline(alarm["location_km"], color="tab:red", lw=1.2, alpha=0.6)
            ax_diff.annotate(
                alarm["kind"].replace("_", " "),
                (alarm["location_km"], 0),
                fontsize=8,
                color="tab:red",
                rotation=90,
                va="bottom",
            )
    ax_diff.set_xlabel("distance (km)")
    ax_diff.set_ylabel("latest - baseline (dB)")
    ax_diff.grid(alpha=0.3)
    return _save(fig, path)


def constellation(path: Path, link: str, symbols: np.ndarray, note: str = "") -> Path:
    """Received symbols in shot-noise units (a 2-D histogram, or dots when few)."""
    y = np.asarray(symbols)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if y.size:
        lim = float(np.percentile(np.abs(np.concatenate([y.real, y.imag])), 99.5)) * 1.1 or 1.0
        if y.size > 5000:
            ax.hist2d(y.real, y.imag, bins=70, range=[[-lim, lim], [-lim, lim]], cmap="viridis")
        else:
            ax.plot(y.real, y.imag, ".", ms=1.5, alpha=0.6)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("I (SNU$^{1/2}$)")
    ax.set_ylabel("Q (SNU$^{1/2}$)")
    ax.set_title(f"Constellation: {link}" + (f"\n{note}" if note else ""), fontsize=10)
    return _save(fig, path)


def spectrum(
    path: Path, link: str, freq_hz: np.ndarray, psd_db: np.ndarray, note: str = ""
) -> Path:
    """Power spectral density of a raw capture (dB, arbitrary reference)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    f = np.asarray(freq_hz, float)
    ax.plot(f / 1e6, psd_db, lw=0.7)
    ax.set_xlabel("frequency (MHz)")
    ax.set_ylabel("PSD (dB/Hz, rel.)")
    ax.set_title(f"Spectrum of a capture: {link}" + (f" ({note})" if note else ""), fontsize=10)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def timeline(
    path: Path, frames: Sequence[dict[str, Any]], alarms: Sequence[dict[str, Any]] = ()
) -> Path:
    """Key rate (finite-size and asymptotic) and excess noise per link over (bench) time."""
    fig, (ax_k, ax_x) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    links = sorted({f["link"] for f in frames})
    for k, link in enumerate(links):
        colour = f"C{k}"
        rows = [f for f in frames if f["link"] == link and _num(f.get("t_end")) is not None]
        t = np.array([f["t_end"] for f in rows], float)
        for key, style in (("key_rate_finite", "-o"), ("key_rate_asymptotic", ":x")):
            v = np.array([_nan(f.get(key)) for f in rows], float)
            if np.isfinite(v).any():
                ax_k.plot(t, v, style, color=colour, ms=4, label=f"{link} {key.split('_')[-1]}")
        xi = np.array([_nan(f.get("xi")) for f in rows], float)
        err = np.array([_nan(f.get("xi_err")) for f in rows], float)
        if np.isfinite(xi).any():
            ax_x.errorbar(
                t,
                xi,
                yerr=np.where(np.isfinite(err), err, 0),
                fmt="o-",
                ms=4,
                color=colour,
                label=link,
            )
        bad = [f for f in rows if f.get("status") == "quarantined"]
        if bad:
            ax_x.plot([f["t_end"] for f in bad], [_nan(f.get("xi")) for f in bad], "rx", ms=9)
    for alarm in alarms:
        for ax in (ax_k, ax_x):
            ax.axvline(alarm["raised_at"], color="tab:red", lw=0.8, alpha=0.5)
    ax_k.axhline(0.0, color="0.5", lw=0.6)
    ax_k.set_ylabel("key rate (bit/symbol)")
    ax_x.set_ylabel("excess noise xi (SNU)")
    ax_x.set_xlabel("bench time (s)")
    for ax in (ax_k, ax_x):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, ncol=2)
    ax_k.set_title("Key rate and excess noise over time (red lines: alarms; x: quarantined)")
    return _save(fig, path)


def _num(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _nan(x: Any) -> float:
    v = _num(x)
    return math.nan if v is None else v


def _save(fig: Any, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
