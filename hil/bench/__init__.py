"""``make bench``: every speed figure beside a reference measured in the same run.

Each area module in this package exposes ``run(quick: bool) -> list[Row]``. A row carries
its figure, the reference it is compared with (a plain numpy FFT, a raw pyvisa query, an
fsync'd SQLite write ...), their ratio and the target from the issue, so the ratios stay
meaningful on a noisy machine. Peak memory is measured in a fresh process.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

AREAS: tuple[str, ...] = ("instruments", "dsp", "distill", "e2e", "kms")


@dataclass
class Row:
    """One benchmark figure. ``ratio`` is value / reference_value unless given."""

    area: str
    name: str
    value: float
    unit: str
    reference: str = ""
    reference_value: float | None = None
    ratio: float | None = None
    target: str = ""

    def __post_init__(self) -> None:
        if self.ratio is None and self.reference_value not in (None, 0):
            self.ratio = self.value / self.reference_value  # type: ignore[operator]


def best_time(func: Callable[[], Any], repeat: int = 5, min_time: float = 0.0) -> float:
    """Best wall time in seconds of ``func()`` over at least ``repeat`` runs and ``min_time``."""
    best = math.inf
    spent = 0.0
    runs = 0
    while runs < repeat or spent < min_time:
        t0 = time.perf_counter()
        func()
        dt = time.perf_counter() - t0
        best = min(best, dt)
        spent += dt
        runs += 1
    return best


def ref_numpy_fft_seconds(n: int, repeat: int = 5) -> float:
    """Best time of a plain complex128 ``numpy.fft.fft`` of length ``n`` (the DSP reference)."""
    import numpy as np

    x = np.random.default_rng(0).standard_normal(n) + 1j * np.random.default_rng(1).standard_normal(
        n
    )
    return best_time(lambda: np.fft.fft(x), repeat=repeat)


def ref_sqlite_fsync_seconds(n: int = 200) -> float:
    """Mean time of one durable (``synchronous=FULL``, fsync'd) single-row SQLite commit."""
    with tempfile.TemporaryDirectory() as d:
        con = sqlite3.connect(os.path.join(d, "ref.sqlite"), isolation_level=None)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
        payload = os.urandom(32)
        t0 = time.perf_counter()
        for i in range(n):
            con.execute("BEGIN")
            con.execute("INSERT INTO t VALUES (?, ?)", (i, payload))
            con.execute("COMMIT")
        dt = (time.perf_counter() - t0) / n
        con.close()
    return dt


def _child(conn: Any, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
    import resource

    try:
        result = func(*args)
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        conn.send((None, result, peak_kib * 1024))
    except Exception as exc:
        conn.send((repr(exc), None, 0))
    finally:
        conn.close()


def in_fresh_process(func: Callable[..., Any], *args: Any) -> tuple[Any, int]:
    """Run ``func(*args)`` in a spawned process; return ``(result, peak_rss_bytes)``.

    The peak RSS includes the interpreter and imports, i.e. what a lab PC really pays.
    ``func`` must be importable (a module-level function).
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(child, func, args))
    proc.start()
    err, result, peak = parent.recv()
    proc.join()
    if err:
        raise RuntimeError(f"benchmark child failed: {err}")
    return result, peak


def write_json(rows: list[Row], path: str) -> None:
    """Write ``{"rows": [...]}`` atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump({"rows": [asdict(r) for r in rows]}, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def format_table(rows: list[Row]) -> str:
    """A plain-text table of the rows."""

    def fmt(v: float | None) -> str:
        if v is None:
            return "-"
        if v == 0 or 1e-3 <= abs(v) < 1e6:
            return f"{v:.4g}"
        return f"{v:.3e}"

    header = ("area", "name", "value", "unit", "reference", "ref value", "ratio", "target")
    body = [
        (
            r.area,
            r.name,
            fmt(r.value),
            r.unit,
            r.reference or "-",
            fmt(r.reference_value),
            fmt(r.ratio),
            r.target or "-",
        )
        for r in rows
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *body, strict=False)]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)
