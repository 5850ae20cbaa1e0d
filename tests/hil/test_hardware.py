"""Real instruments: run with ``pytest -m hardware --bench FILE`` (skipped otherwise).

The bench file is a real one (``backend: visa``, see hil/benches/template-real.yaml).
These tests only identify, check error queues, scan and capture one short frame: they
deliver no keys (``kms: none`` is forced) and leave the instruments as a run would.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from hil import bench_file as bf
from hil import procedures
from hil.runner import Runner, RunOptions

pytestmark = pytest.mark.hardware


def test_every_instrument_answers(bench_file: str) -> None:
    bench = bf.load(bench_file)
    with procedures.Session.open(bench) as session:
        rows = session.identify()
    assert rows and all(not r["idn"].startswith("ERROR") for r in rows), rows


def test_one_short_frame_per_link(bench_file: str, tmp_path: Path) -> None:
    bench = bf.load(bench_file)
    bench = dataclasses.replace(bench, kms=dataclasses.replace(bench.kms, mode="none"))
    log = tmp_path / "scpi.log"
    result = Runner(
        bench,
        RunOptions(frames=1, symbols_per_frame=100_000, results_dir=tmp_path / "r", scpi_log=log),
    ).run()
    assert result.exit_code == 0, result.run.get("reason")
    for link in result.run["links"].values():
        assert link["status"] == "done", link
    assert any(f.get("T") is not None and math.isfinite(f["T"]) for f in result.run["frames"])
    assert log.stat().st_size > 0
