"""Results folder: written, re-read and re-rendered without instruments."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from hil import report
from hil.cli import main


def _fake_run(directory: Path) -> dict:
    folder = report.ResultsFolder(directory)
    z = np.linspace(0, 12_000, 600)
    base = {
        "distance_m": z,
        "level_db": -0.22e-3 * z,
        "time": 1.0,
        "events": [{"location_m": 12_000.0, "kind": "end", "loss_db": 0.0}],
    }
    latest = dict(base, level_db=-0.22e-3 * z - 1.0 * (z > 7_200), time=50.0)
    folder.save_otdr("north", "baseline", base)
    folder.save_otdr("north", "latest", latest)
    rng = np.random.default_rng(0)
    folder.save_capture(
        "north",
        rng.normal(size=2000) + 1j * rng.normal(size=2000),
        np.linspace(-5e8, 5e8, 256),
        rng.normal(size=256),
        "frame 0",
    )
    frames = [
        {
            "link": "north",
            "frame": k,
            "status": "clean",
            "t_start": 10.0 * k,
            "t_end": 10.0 * k + 5,
            "T": 0.5,
            "xi": 0.01,
            "xi_err": 0.002,
            "key_rate_finite": 0.05,
            "alarms": [],
        }
        for k in range(3)
    ]
    frames[2].update(status="quarantined", alarms=["north-1"])
    run = {
        "schema": report.SCHEMA,
        "bench": {"name": "t"},
        "result": "ok",
        "links": {
            "north": {
                "length_km": 12.0,
                "status": "ok",
                "summary": {
                    "T": 0.5,
                    "xi": 0.01,
                    "snr": 0.6,
                    "beta": 0.95,
                    "key_rate_finite": 0.05,
                },
            }
        },
        "frames": frames,
        "alarms": [
            {
                "id": "north-1",
                "link": "north",
                "kind": "new_nonreflective_event",
                "location_km": 7.2,
                "raised_at": 25.0,
                "message": "m",
                "cleared_at": None,
            }
        ],
        "keys": {"north": ["id1", "id2"]},
        "nan": float("nan"),
    }
    folder.write(run)
    return run


def test_write_and_rerender(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _fake_run(tmp_path)
    run = report.load(tmp_path)
    assert run["nan"] is None  # non-finite floats become null, never NaN in JSON
    with open(tmp_path / "frames.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["clean", "clean", "quarantined"]
    assert rows[2]["alarms"] == "north-1"
    for png in tmp_path.glob("*.png"):
        png.unlink()
    assert main(["report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "north" in out and "re-rendered 4 plots" in out
    names = sorted(p.name for p in tmp_path.glob("*.png"))
    assert names == [
        "constellation-north.png",
        "otdr-north.png",
        "spectrum-north.png",
        "timeline.png",
    ]
    assert all((tmp_path / n).stat().st_size > 5000 for n in names)
    row = report.summary_rows(run)[0]
    assert row["keys_delivered"] == 2 and row["alarms"].startswith("1 (new_nonreflective_event")


def test_report_on_a_non_results_folder_is_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "not a results folder" in capsys.readouterr().err
    (tmp_path / "run.json").write_text(json.dumps({"schema": "other"}))
    assert main(["report", str(tmp_path)]) == 2
