"""OTDR firmware (Anritsu MT9083 / EXFO FTB-style readout).

``SENS:WAV`` (m: 1310, 1550, 1625, 1650 nm), ``SENS:PULS:WIDT`` (s: 3 ns .. 20 us, discrete),
``SENS:RANG`` (m), ``SENS:AVER:TIME`` (s), ``SENS:IOR``; ``INIT`` scans the fibre behind the
switch (the virtual clock advances by the averaging time; ``*OPC?`` then returns 1).
``TRAC:DATA?`` returns a block: big-endian uint32 point count, then one big-endian uint16
per point (displayed level in dB x 1000, one-way convention). ``TRAC:PAR?`` returns
``points,spacing_m,start_m,wavelength_m,pulse_s,ior,range_m,averaging_s``.
``CALC:EVEN:COUN?`` and ``CALC:EVEN? <i>`` (1-based) give the instrument's own event table:
``location_m,type,loss_db,reflectance_db,cumulative_db`` with type REFLECTIVE,
NONREFLECTIVE or END; reflectance is 9.91E+37 (SCPI NaN) for non-reflective events.
Extension: ``CALC:ATT?`` returns the fibre attenuation (dB/km) the analysis measured.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from drivers.ieee488 import encode_block
from emulator import otdr_model
from emulator.scpi import Call, DeviceSpec, ScpiDevice, ScpiError, command, query

if TYPE_CHECKING:
    from emulator.world import World


def _fmt(x: float, digits: int = 4) -> str:
    if not math.isfinite(x):
        return "9.91E+37"
    return f"{x:.{digits}f}"


def _pick(value: float, allowed: tuple[float, ...], what: str) -> float:
    for a in allowed:
        if abs(value - a) <= 1e-3 * a:
            return a
    shown = ", ".join(f"{a:g}" for a in allowed)
    raise ScpiError(-224, f"Illegal parameter value;{what} must be one of {shown}")


class Otdr(ScpiDevice):
    """OTDR firmware looking into the routed link."""

    def __init__(self, spec: DeviceSpec, world: World, name: str = "") -> None:
        self.world = world
        self._wavelength = 1625e-9
        self._pulse = 100e-9
        self._trace: otdr_model.OtdrTrace | None = None
        self._analysis: otdr_model.OtdrAnalysis | None = None
        self._scans = 0
        super().__init__(spec, name)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._wavelength = 1625e-9
        self._pulse = 100e-9

    def state(self) -> dict:
        s = super().state()
        s.update({"wavelength_m": self._wavelength, "pulse_s": self._pulse, "scans": self._scans})
        return s

    def settings(self) -> otdr_model.OtdrSettings:
        p = self.props
        return otdr_model.OtdrSettings(
            wavelength_m=self._wavelength,
            pulse_s=self._pulse,
            range_m=float(p["range_m"]),
            averaging_s=float(p["averaging_s"]),
            ior=float(p["ior"]),
        )

    @command("SENSe:WAVelength")
    def _set_wav(self, call: Call) -> None:
        call.nargs(1)
        self._wavelength = _pick(call.float(0, "M"), otdr_model.WAVELENGTHS_M, "SENS:WAV")

    @query("SENSe:WAVelength?")
    def _get_wav(self, call: Call) -> float:
        call.nargs(0)
        return self._wavelength

    @command("SENSe:PULSe:WIDTh")
    def _set_pulse(self, call: Call) -> None:
        call.nargs(1)
        self._pulse = _pick(call.float(0, "S"), otdr_model.PULSE_WIDTHS_S, "SENS:PULS:WIDT")

    @query("SENSe:PULSe:WIDTh?")
    def _get_pulse(self, call: Call) -> float:
        call.nargs(0)
        return self._pulse

    @command("INITiate[:IMMediate]")
    def _init(self, call: Call) -> None:
        call.nargs(0)
        st = self.settings()
        with self.world.lock:
            path = self.world.otdr_path(st.wavelength_m)
            trace = otdr_model.synthesise(st, path, self.world.rng)
            self.world.advance(st.averaging_s)
        self._trace = trace
        self._analysis = otdr_model.analyse(trace)
        self._scans += 1

    def _need(self) -> tuple[otdr_model.OtdrTrace, otdr_model.OtdrAnalysis]:
        if self._trace is None or self._analysis is None:
            raise ScpiError(-230, "Data corrupt or stale;no trace (INIT first)")
        return self._trace, self._analysis

    @query("TRACe[:DATA]?")
    def _data(self, call: Call) -> bytes:
        call.nargs(0)
        if self._trace is None:
            return encode_block(b"\x00\x00\x00\x00")
        return encode_block(self._trace.encode())

    @query("TRACe:PARameters?")
    def _par(self, call: Call) -> str:
        call.nargs(0)
        if self._trace is None:
            st = self.settings()
            return (
                f"0,{otdr_model.sample_spacing(st.range_m):.6G},0,{st.wavelength_m:.6G},"
                f"{st.pulse_s:.6G},{st.ior:.6G},{st.range_m:.6G},{st.averaging_s:.6G}"
            )
        return self._trace.parameters()

    @query("CALCulate:EVENt:COUNt?")
    def _count(self, call: Call) -> int:
        call.nargs(0)
        if self._analysis is None:
            return 0
        return len(self._analysis.events)

    @query("CALCulate:EVENt?")
    def _event(self, call: Call) -> str:
        call.nargs(1)
        _, analysis = self._need()
        i = call.int(0, 1, max(1, len(analysis.events)))
        if i > len(analysis.events):
            raise ScpiError(-222, f"Data out of range;event {i} (table has none)")
        e = analysis.events[i - 1]
        return (
            f"{_fmt(e.location_m, 2)},{e.type},{_fmt(e.loss_db, 3)},"
            f"{_fmt(e.reflectance_db, 2)},{_fmt(e.cumulative_db, 3)}"
        )

    @query("CALCulate:ATTenuation?")
    def _att(self, call: Call) -> float:
        call.nargs(0)
        _, analysis = self._need()
        return round(analysis.attenuation_db_per_km, 5)
