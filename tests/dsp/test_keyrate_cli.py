"""``qkd-hil keyrate``: table, JSON rows, PNG plot and clear errors."""

from __future__ import annotations

import json

import pytest

from dsp import keyrate as kr
from hil.cli import main


def test_table_json_and_plot(tmp_path, capsys) -> None:
    png, js = tmp_path / "k.png", tmp_path / "k.json"
    rc = main(["keyrate", "--distances", "0,25,100", "--plot", str(png), "--json", str(js)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "K_finite" in out and "PLOB" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(js.read_text())["rows"]
    assert [r["length_km"] for r in rows] == [0.0, 25.0, 100.0]
    assert rows[0]["plob"] is None  # lossless link: the bound is infinite
    want = kr.asymptotic_key_rate(4.0, kr.fibre_transmittance(25), 0.01, 0.6, 0.05, 0.95).rate
    assert rows[1]["asymptotic"] == pytest.approx(want)
    assert rows[2]["finite"] < 0 < rows[2]["asymptotic"] < rows[2]["plob"]


def test_optimised_modulation_and_untrusted(capsys) -> None:
    assert main(["keyrate", "--optimise-va", "--untrusted", "--distances", "0:20:10"]) == 0
    assert "V_A asym" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["--eta", "1.5"],
        ["--distances", "10:0:5"],
        ["--distances", "x"],
        ["--block", "2"],
        ["--plot", "out.pdf"],
    ],
)
def test_bad_arguments_exit_2_with_message(argv, capsys) -> None:
    assert main(["keyrate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qkd-hil keyrate: error:") and err[-1] == "\n"
