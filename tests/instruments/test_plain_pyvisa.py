"""Criterion 2: a plain pyvisa script drives the emulated bench with nothing but the backend string.

This module imports only pyvisa (and pytest): no cvqkd-hil module. It uses the default
bench, ``ResourceManager("@qkdsim")``, as a lab script would.
"""

from __future__ import annotations

import pytest
import pyvisa


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("QKDSIM_SEED", "7")  # fixed seed; the backend string stays "@qkdsim"
    rm = pyvisa.ResourceManager("@qkdsim")
    opened = {}
    for name in rm.list_resources():
        res = rm.open_resource(name, read_termination="\n", write_termination="\n")
        res.timeout = 60_000
        model = res.query("*IDN?").split(",")[1].lower()
        opened[model] = res
    yield rm, opened
    rm.close()  # the next "@qkdsim" gets a fresh default world


def _find(opened: dict, word: str):
    hits = [res for model, res in opened.items() if word in model]
    assert len(hits) == 1, f"expected one instrument whose *IDN? names {word!r}: {list(opened)}"
    return hits[0]


def test_lists_the_five_instruments(bench) -> None:
    rm, opened = bench
    assert len(rm.list_resources()) == 5
    for word in ("transmitter", "receiver", "otdr", "switch", "power meter"):
        _find(opened, word)


def test_grid_channel_sets_wavelength(bench) -> None:
    _, opened = bench
    tx = _find(opened, "transmitter")
    tx.write("SOUR1:GRID:CHAN 34")
    assert abs(float(tx.query("SOUR1:WAV?")) * 1e9 - 1550.12) <= 0.01
    assert tx.query("SYST:ERR?").startswith("0,")
    # long form, any case, gives the same answer
    assert float(tx.query("source1:wavelength?")) == float(tx.query("SOUR1:WAV?"))


def test_undefined_header_queues_113(bench) -> None:
    _, opened = bench
    tx = _find(opened, "transmitter")
    tx.write("SOUR1:NOSUCH:HEADER 1")
    assert tx.query("SYST:ERR?").startswith("-113,")
    assert tx.query("SYST:ERR?").startswith("0,")


def test_out_of_range_power_queues_222_and_keeps_setting(bench) -> None:
    _, opened = bench
    tx = _find(opened, "transmitter")
    tx.write("SOUR1:POW 3")
    before = float(tx.query("SOUR1:POW?"))
    tx.write("SOUR1:POW 99")
    assert tx.query("SYST:ERR?").startswith("-222,")
    assert float(tx.query("SOUR1:POW?")) == before
    assert int(tx.query("*ESR?")) & 16  # execution error bit


def test_otdr_trace_is_a_well_formed_block(bench) -> None:
    _, opened = bench
    otdr = _find(opened, "otdr")
    otdr.write("INIT")
    assert otdr.query("*OPC?").strip() == "1"
    otdr.write("TRAC:DATA?")
    raw = otdr.read_raw()
    assert raw[:1] == b"#"
    n = int(raw[1:2])
    size = int(raw[2 : 2 + n])
    payload = raw[2 + n : 2 + n + size]
    assert len(payload) == size
    assert raw[2 + n + size :] == b"\n"
    count = int.from_bytes(payload[:4], "big")
    assert size == 4 + 2 * count and count > 100
    assert otdr.query("SYST:ERR?").startswith("0,")
