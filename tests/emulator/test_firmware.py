"""Firmware command sets: raw SCPI (and serial) bytes in, replies and errors out."""

from __future__ import annotations

import numpy as np
import pytest

from drivers.ieee488 import decode_block, encode_block
from emulator.world import World

TX = "TCPIP0::qkdsim-tx::inst0::INSTR"
RX = "TCPIP0::qkdsim-rx1::inst0::INSTR"
PM = "TCPIP0::qkdsim-pm1::inst0::INSTR"
OTDR = "TCPIP0::qkdsim-otdr::inst0::INSTR"
SW = "TCPIP0::qkdsim-switch::inst0::INSTR"


@pytest.fixture
def fw() -> dict:
    return World.default(seed=2).instruments()


def _err(dev) -> int:
    return int(dev.handle(b"SYST:ERR?").split(b",")[0])


@pytest.mark.parametrize(
    ("res", "bad", "code"),
    [
        (TX, b"SOUR1:POW 20", -222),
        (TX, b"SOUR3:WAV 1550NM", -114),
        (TX, b"SOUR1:WAV 1400NM", -222),
        (TX, b"SOUR1:GRID:CHAN 0", -222),
        (TX, b"OUTP:ATT 95", -222),
        (TX, b"TRAC1:DEF 2,1000", -224),
        (TX, b"TRAC1:DEF 1,10", -222),
        (TX, b"TRAC1:DATA 1,0,#14abcd", -221),
        (TX, b"INIT:IMM", -221),
        (TX, b"FREQ:RAST 10GHZ", -222),
        (RX, b"SENS:LO:CHAN 80", -222),
        (RX, b"SENS:LO:POW 30", -222),
        (RX, b"DATA:WID 1", -224),
        (RX, b"DATA:SOUR CH3", -224),
        (RX, b"ACQ:STAT MAYBE", -224),
        (RX, b"ACQ:POIN 10", -222),
        (RX, b"CURV?", -230),
        (OTDR, b"SENS:WAV 1490NM", -224),
        (OTDR, b"SENS:PULS:WIDT 7NS", -224),
        (OTDR, b"SENS:RANG 1000KM", -222),
        (OTDR, b"CALC:EVEN? 1", -230),
        (SW, b"ROUT1:CHAN1 A,3", -222),
        (SW, b"ROUT1:CHAN1 B,1", -224),
        (SW, b"ROUT2:CHAN1 A,1", -114),
        (PM, b"SENS1:POW:UNIT DBW", -224),
        (PM, b"SENS1:POW:ATIME 100", -222),
        (PM, b"FETC1:POW?", -230),
        (PM, b"SENS1:FUNC:PAR:LOGG 0,0.1", -222),
        (PM, b"SENS1:FUNC:RES?", -230),
        (PM, b"SENS1:FUNC:STAT NONE,STAR", -221),
    ],
)
def test_bad_command_queues_error_and_changes_nothing(fw, res: str, bad: bytes, code: int) -> None:
    dev = fw[res]
    before = dev.state()
    dev.handle(bad)
    assert _err(dev) == code
    assert dev.state() == before


def test_transmitter_tuning_upload_and_output(fw) -> None:
    tx = fw[TX]
    assert tx.handle(b"SOUR1:GRID:CHAN 34;SOUR1:WAV?") is not None
    assert abs(float(tx.handle(b"SOUR1:WAV?")) - 1550.12e-9) < 0.01e-9
    tx.handle(b"sour2:freq 193.7THZ")
    assert tx.handle(b"SOUR2:GRID:CHAN?") == b"37\n"
    tx.handle(b"SOUR1:WAV 1550.12NM")
    assert tx.handle(b"SOUR1:GRID:CHAN?") == b"34\n"
    n = 1000
    iq = (np.arange(2 * n) % 200 - 100).astype("<i2") * 100
    tx.handle(b"TRAC1:DEF 1,%d" % n)
    tx.handle(b"TRAC1:DATA 1,0," + encode_block(iq[:n].tobytes()))  # first half
    tx.handle(b"TRAC1:DATA 1,%d," % (n // 2) + encode_block(iq[n:].tobytes()))
    assert _err(tx) == 0
    tx.handle(b"TRAC1:DATA 1,900," + encode_block(iq[:800].tobytes()))  # overruns the segment
    assert _err(tx) == -222
    assert tx.handle(b"TRAC1:DEF?") == b"1,1000\n"
    tx.handle(b"SOUR1:POW 10;SOUR1:POW:STAT ON;OUTP1 ON;OUTP:ATT 30")
    assert float(tx.handle(b"SENS:POW?")) < -100  # AWG stopped: dark
    tx.handle(b"INIT:IMM")
    assert tx.handle(b"STAT:RUN?") == b"1\n"
    mean_d2 = np.mean(iq.astype(float) ** 2) * 2
    # P_out = P_laser * IL_mod * mean|d|^2 / 32767^2 * VOA (docs/physics.md)
    expected = 10 - 6.0 + 10 * np.log10(mean_d2 / 32767**2) - 30
    assert float(tx.handle(b"SENS:POW?")) == pytest.approx(expected, abs=0.01)
    tx.handle(b"ABOR")
    assert float(tx.handle(b"SENS:POW?")) < -100
    tx.handle(b"*RST")
    assert tx.handle(b"OUTP1?;SOUR1:POW:STAT?;TRAC1:DEF?") == b"0;0;1,0\n"


def test_receiver_transfer_formats(fw) -> None:
    rx = fw[RX]
    rx.handle(b"ACQ:POIN 2000;ACQ:STAT RUN")
    assert rx.handle(b"ACQ:STAT?") == b"0\n"
    sri = np.frombuffer(decode_block(rx.handle(b"DATA:SOUR CH1;DATA:ENC SRI;CURV?"))[0], "<i2")
    rib = np.frombuffer(decode_block(rx.handle(b"DATA:ENC RIB;CURV?"))[0], ">i2")
    assert sri.shape == (2000,) and np.array_equal(sri, rib)
    assert np.all(sri % 16 == 0)  # 12-bit codes, left-justified
    rx.handle(b"DATA:ENC SRI;DATA:STAR 11;DATA:STOP 20")
    part = np.frombuffer(decode_block(rx.handle(b"CURV?"))[0], "<i2")
    assert np.array_equal(part, sri[10:20])
    assert rx.handle(b"WFMO:NR_PT?") == b"10\n"
    ymul, yoff, yzer, xinc = (
        float(v) for v in rx.handle(b"WFMO:YMUL?;YOFF?;YZER?;XINC?").split(b";")
    )
    assert ymul > 0 and yoff == 0 and yzer == 0 and xinc == pytest.approx(1e-9)
    assert float(rx.handle(b"CAL:EFF?")) == pytest.approx(0.65)
    assert rx.handle(b"SENS:LO:CHAN?") == b"34\n" and rx.handle(b"INP:STAT?") == b"1\n"


def test_otdr_without_scan_and_parameters(fw) -> None:
    otdr = fw[OTDR]
    payload, _ = decode_block(otdr.handle(b"TRAC:DATA?"))
    assert payload == b"\x00\x00\x00\x00"
    assert otdr.handle(b"CALC:EVEN:COUN?") == b"0\n"
    otdr.handle(b"SENS:WAV 1.55E-6;SENS:PULS:WIDT 1US;SENS:RANG 30KM;SENS:AVER:TIME 5")
    assert _err(otdr) == 0
    assert otdr.handle(b"SENS:WAV?;SENS:PULS:WIDT?") == b"1.55E-06;1E-06\n"
    otdr.handle(b"INIT")
    fields = otdr.handle(b"TRAC:PAR?").decode().strip().split(",")
    assert len(fields) == 8 and float(fields[6]) == 30000.0 and float(fields[4]) == 1e-6
    assert int(otdr.handle(b"CALC:EVEN:COUN?")) >= 1


def test_switch_scpi_and_serial() -> None:
    world = World.from_config(
        {
            "switch": {"kind": "serial", "ports": 4},
            "links": [{"fibre": {"length_km": 5}}, {"fibre": {"length_km": 8}}],
        },
        seed=1,
    )
    ser = world.instruments()["ASRL1::INSTR"]
    assert ser.handle(b"I1?\r\n") == b"1\r\n"
    assert ser.handle(b"I1 2\r\n") == b"OK\r\n"
    assert world.switch.route == 2 and world.truth("link2")["routed"]
    assert ser.handle(b"I1 5\r\n") == b"ERR\r\n" and world.switch.route == 2
    assert ser.handle(b"CF?\r\n") == b"1x4\r\n"
    assert ser.handle(b"ID?\r\n").startswith(b"cvqkd-hil,DiCon")
    assert ser.handle(b"\xff\xfe garbage\r\n") == b"ERR\r\n"
    assert ser.handle(b"I1 3\r\nI1?\r\n") == b"OK\r\n3\r\n"
    sw = World.default(seed=1).instruments()[SW]
    assert sw.handle(b"ROUT1:CHAN1 A,2;ROUT1:CHAN1?;ROUT1:CONF?") == b"A,2;1x2\n"


def test_power_meter_units_and_logging(fw) -> None:
    tx, pm = fw[TX], fw[PM]
    tx.handle(b"SOUR2:POW 3;SOUR2:POW:STAT ON")
    dbm = float(pm.handle(b"READ1:POW?"))
    assert float(pm.handle(b"FETC1:POW?")) == dbm
    pm.handle(b"SENS1:POW:UNIT W")
    assert float(pm.handle(b"FETC1:POW?")) == pytest.approx(1e-3 * 10 ** (dbm / 10), rel=1e-5)
    assert pm.handle(b"SENS1:POW:UNIT?") == b"W\n"
    pm.handle(b"SENS1:FUNC:PAR:LOGG 50,1E-3;SENS1:FUNC:STAT LOGG,STAR")
    assert pm.handle(b"SENS1:FUNC:STAT?") == b"LOGGING_STABILITY,COMPLETE\n"
    log = np.frombuffer(decode_block(pm.handle(b"SENS1:FUNC:RES?"))[0], "<f4")
    assert log.shape == (50,) and np.allclose(log, 1e-3 * 10 ** (dbm / 10), rtol=0.01)
    assert pm.handle(b"SENS1:FUNC:PAR:LOGG?") == b"50,1.000000E-03\n"
