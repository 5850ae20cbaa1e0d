"""The results folder of a run, its summary table, and re-rendering from the folder.

Layout of a results folder::

    run.json              bench, versions, instruments (identity + settings snapshot),
                          per-frame estimates, blocks, alarms, delivered key IDs, errors
    frames.csv            one row per frame (the per-frame part of run.json, flat)
    data/otdr-<link>.npz  baseline and latest OTDR traces (distance_m, level_db)
    data/capture-<link>.npz  constellation sample (SNU) and the spectrum of a capture
    otdr-<link>.png, constellation-<link>.png, spectrum-<link>.png, timeline.png

``qkd-hil report DIR`` needs only this folder: :func:`render` redraws every PNG and
:func:`summary_rows` rebuilds the table.
"""

from __future__ import annotations

import csv
import json
import math
import platform
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from hil import plots

SCHEMA = "cvqkd-hil/run/1"

FRAME_COLUMNS: tuple[str, ...] = (
    "link",
    "frame",
    "status",
    "t_start",
    "t_end",
    "symbols",
    "v_a",
    "loss_db",
    "T",
    "T_err",
    "xi",
    "xi_err",
    "v_el",
    "eta",
    "snr",
    "beta",
    "key_rate_asymptotic",
    "key_rate_finite",
    "block",
    "alarms",
    "dsp_seconds",
    "error",
)


class ReportError(ValueError):
    """A results folder is missing or unreadable."""

    exit_code = 2


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def versions() -> dict[str, str]:
    """Versions of this package, Python and the libraries a result depends on."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in (
        "cvqkd-hil",
        "numpy",
        "scipy",
        "pyvisa",
        "pyvisa-sim",
        "pyvisa-py",
        "pyzmq",
        "ldpc",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def default_directory(bench_name: str, root: Path | str = "results") -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(root) / f"{bench_name}-{stamp}"


def jsonable(value: Any) -> Any:
    """Plain JSON types from numpy scalars/arrays, dataclasses, paths, non-finite floats."""
    if is_dataclass(value) and not isinstance(value, type):
        return jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


# --------------------------------------------------------------------------- writing


class ResultsFolder:
    """Writes the results folder of one run as it goes."""

    def __init__(self, directory: Path | str) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)

    def save_otdr(self, link: str, which: str, trace: dict[str, Any]) -> None:
        """Store a trace (``which`` = baseline | latest) with its events."""
        path = self.dir / "data" / f"otdr-{link}.npz"
        stored: dict[str, Any] = {}
        if path.exists():
            with np.load(path, allow_pickle=False) as old:
                stored = {k: old[k] for k in old.files}
        stored[f"{which}_distance_m"] = np.asarray(trace["distance_m"], dtype=np.float64)
        stored[f"{which}_level_db"] = np.asarray(trace["level_db"], dtype=np.float32)
        stored[f"{which}_time"] = np.float64(trace.get("time", 0.0))
        stored[f"{which}_events"] = np.array(json.dumps(jsonable(trace.get("events", []))))
        np.savez_compressed(path, **stored)

    def save_capture(
        self,
        link: str,
        symbols: np.ndarray | None,
        freq_hz: np.ndarray | None,
        psd_db: np.ndarray | None,
        note: str = "",
    ) -> None:
        """Store a constellation sample (complex SNU) and the spectrum of a raw capture."""
        arrays: dict[str, Any] = {"note": np.array(note)}
        if symbols is not None:
            arrays["symbols"] = np.asarray(symbols, dtype=np.complex64)
        if freq_hz is not None and psd_db is not None:
            arrays["freq_hz"] = np.asarray(freq_hz, dtype=np.float64)
            arrays["psd_db"] = np.asarray(psd_db, dtype=np.float32)
        np.savez_compressed(self.dir / "data" / f"capture-{link}.npz", **arrays)

    def write(self, run: dict[str, Any]) -> Path:
        """Write ``run.json`` and ``frames.csv`` (atomically replaced)."""
        data = jsonable(run)
        tmp = self.dir / "run.json.tmp"
        tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n", encoding="utf-8")
        tmp.replace(self.dir / "run.json")
        write_frames_csv(self.dir / "frames.csv", data.get("frames", []))
        return self.dir / "run.json"


def write_frames_csv(path: Path, frames: Sequence[dict[str, Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FRAME_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for frame in frames:
            row = dict(frame)
            if isinstance(row.get("alarms"), list):
                row["alarms"] = " ".join(row["alarms"])
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in FRAME_COLUMNS})


# --------------------------------------------------------------------------- reading


def load(directory: Path | str) -> dict[str, Any]:
    """The ``run.json`` of a results folder."""
    path = Path(directory) / "run.json"
    if not path.is_file():
        raise ReportError(f"{directory}: not a results folder (no run.json)")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ReportError(f"{path}: unreadable ({exc})") from None
    if run.get("schema") != SCHEMA:
        raise ReportError(f"{path}: schema {run.get('schema')!r}, expected {SCHEMA!r}")
    return run


def _otdr_traces(directory: Path, link: str) -> dict[str, dict[str, Any] | None]:
    path = directory / "data" / f"otdr-{link}.npz"
    out: dict[str, dict[str, Any] | None] = {"baseline": None, "latest": None}
    if not path.exists():
        return out
    with np.load(path, allow_pickle=False) as data:
        for which in out:
            if f"{which}_distance_m" in data.files:
                out[which] = {
                    "distance_m": data[f"{which}_distance_m"],
                    "level_db": data[f"{which}_level_db"],
                    "time": float(data[f"{which}_time"]),
                    "events": json.loads(str(data[f"{which}_events"])),
                }
    return out


def render(directory: Path | str) -> list[Path]:
    """Redraw every PNG of a results folder from its stored data; returns their paths."""
    directory = Path(directory)
    run = load(directory)
    written: list[Path] = []
    alarms = run.get("alarms", [])
    for link in run.get("links", {}):
        traces = _otdr_traces(directory, link)
        if traces["baseline"] is not None or traces["latest"] is not None:
            written.append(
                plots.otdr(
                    directory / f"otdr-{link}.png",
                    link,
                    traces["baseline"],
                    traces["latest"],
                    [a for a in alarms if a.get("link") == link],
                )
            )
        cap = directory / "data" / f"capture-{link}.npz"
        if cap.exists():
            with np.load(cap, allow_pickle=False) as data:
                note = str(data["note"]) if "note" in data.files else ""
                if "symbols" in data.files:
                    written.append(
                        plots.constellation(
                            directory / f"constellation-{link}.png", link, data["symbols"], note
                        )
                    )
                if "freq_hz" in data.files:
                    written.append(
                        plots.spectrum(
                            directory / f"spectrum-{link}.png",
                            link,
                            data["freq_hz"],
                            data["psd_db"],
                            note,
                        )
                    )
    if run.get("frames"):
        written.append(plots.timeline(directory / "timeline.png", run["frames"], alarms))
    return written


# --------------------------------------------------------------------------- summary


SUMMARY_COLUMNS: tuple[tuple[str, str], ...] = (
    ("link", "link"),
    ("distance_km", "km"),
    ("T", "T"),
    ("xi", "xi (SNU)"),
    ("snr", "SNR"),
    ("beta", "beta"),
    ("key_rate_finite", "K finite (bit/sym)"),
    ("key_rate_distilled", "K distilled"),
    ("keys_delivered", "keys"),
    ("alarms", "alarms"),
    ("status", "status"),
)


def summary_rows(run: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per link: distance, T, xi, SNR, beta, finite-size key rate, keys, alarms."""
    rows = []
    for name, link in run.get("links", {}).items():
        s = link.get("summary", {})
        alarms = [a for a in run.get("alarms", []) if a.get("link") == name]
        kinds = sorted({a["kind"] for a in alarms})
        rows.append(
            {
                "link": name,
                "distance_km": link.get("length_km"),
                "T": s.get("T"),
                "xi": s.get("xi"),
                "snr": s.get("snr"),
                "beta": s.get("beta"),
                "key_rate_finite": s.get("key_rate_finite"),
                "key_rate_distilled": s.get("key_rate_distilled"),
                "keys_delivered": len(run.get("keys", {}).get(name, [])),
                "alarms": f"{len(alarms)}" + (f" ({', '.join(kinds)})" if kinds else ""),
                "status": link.get("status", "?")
                + (f": {link['error']}" if link.get("error") else ""),
            }
        )
    return rows


def format_cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if key in ("T", "beta"):
            return f"{value:.4f}"
        if key in ("xi", "snr"):
            return f"{value:.4f}" if abs(value) < 10 else f"{value:.3g}"
        if key in ("key_rate_finite", "key_rate_distilled"):
            return f"{value:.3e}"
        if key == "distance_km":
            return f"{value:g}"
        return f"{value:.4g}"
    return str(value)


def summary_table(run: dict[str, Any]) -> Any:
    """The closing summary as a :class:`rich.table.Table`."""
    from rich.table import Table

    result = run.get("result", "?")
    title = f"{run.get('bench', {}).get('name', '?')}: {result}"
    table = Table(title=title, title_justify="left")
    for key, header in SUMMARY_COLUMNS:
        table.add_column(header, justify="left" if key in ("link", "alarms", "status") else "right")
    for row in summary_rows(run):
        style = None
        if str(row["status"]).startswith("failed"):
            style = "red"
        elif row["alarms"] != "0":
            style = "yellow"
        table.add_row(*(format_cell(k, row[k]) for k, _ in SUMMARY_COLUMNS), style=style)
    return table


def summary_text(run: dict[str, Any]) -> str:
    """The summary as plain text (for logs and ``--json``-less pipes)."""
    rows = summary_rows(run)
    cells = [[h for _, h in SUMMARY_COLUMNS]] + [
        [format_cell(k, r[k]) for k, _ in SUMMARY_COLUMNS] for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(SUMMARY_COLUMNS))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells
    )
