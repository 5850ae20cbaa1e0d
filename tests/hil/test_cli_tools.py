"""The small bench commands on the bundled emulated benches: instruments, switch, otdr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hil.cli import main


def test_instruments_identifies_everything(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["instruments", "single-link", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["role"] for r in rows} == {"transmitter", "switch", "otdr", "receiver", "powermeter"}
    assert all("(emulated)" in r["idn"] for r in rows)


def test_switch_routes_by_link_name_and_port(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["switch", "malta-p2mp", "mdina"]) == 0
    assert "port 2 (mdina)" in capsys.readouterr().out
    assert main(["switch", "malta-p2mp", "4"]) == 0
    assert "port 4 (marsaxlokk)" in capsys.readouterr().out
    assert main(["switch", "malta-p2mp", "nowhere"]) == 2


def test_otdr_scan_lists_the_fibre_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png = tmp_path / "scan.png"
    log = tmp_path / "scpi.log"
    args = ["otdr", "scan", "single-link", "--json", "--png", str(png), "--scpi-log", str(log)]
    assert main(args) == 0
    scan = json.loads(capsys.readouterr().out)
    ends = [e for e in scan["events"] if e["kind"] == "end"]
    # 25 km link: the end within the two-point resolution (100 ns pulse: ~10 m)
    assert ends and abs(ends[0]["location_m"] - 25_000.0) <= scan["resolution_m"]
    assert png.stat().st_size > 5000
    traffic = log.read_text()
    assert "TRAC:DATA?" in traffic and "CALC:EVEN" in traffic
