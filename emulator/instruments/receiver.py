"""Coherent receiver firmware: LO laser, input shutter, phase-diverse detector, digitiser.

Transfer follows a Tektronix DPO70000: ``ACQ:STAT RUN`` takes one acquisition of
``ACQ:POIN`` samples on both channels (CH1 = I, CH2 = Q) at ``ACQ:SRAT``; ``DATA:SOUR``
selects the channel, ``DATA:ENC SRI`` (signed little-endian; ``RIB`` = big-endian),
``DATA:WID 2``, ``DATA:STAR``/``DATA:STOP`` the 1-based sample range, and ``CURV?`` returns
the samples as an IEEE 488.2 block. Volts are ``(raw - YOFF) * YMUL + YZER``. The ADC is
12 bits, left-justified in int16 (raw = code * 16).

Extensions: ``SENS:LO:CHAN``/``SENS:LO:POW``/``SENS:LO:STAT`` (LO laser), ``INP:STAT``
(input shutter: OFF for a vacuum/shot-noise calibration), ``CAL:EFF?`` (factory-calibrated
detector efficiency).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from drivers import grid
from drivers.ieee488 import encode_block
from emulator import physics
from emulator.scpi import Call, DeviceSpec, ScpiDevice, ScpiError, command, query

if TYPE_CHECKING:
    from emulator.world import ReceiverHw, World

FULL_SCALE_V = 0.25
"""Volts at ADC code full scale (2048 codes)."""
YMUL = FULL_SCALE_V / 2.0 ** (physics.ADC_BITS - 1) / 2.0**physics.ADC_LSB_SHIFT


class Receiver(ScpiDevice):
    """Coherent receiver firmware on the far end of one link."""

    def __init__(self, spec: DeviceSpec, world: World, hw: ReceiverHw) -> None:
        self.world = world
        self.hw = hw
        self._lo_channel = world.tx.channel
        self._data: tuple[np.ndarray, np.ndarray] | None = None
        self._acq_srate = 0.0
        self._acquisitions = 0
        super().__init__(spec, hw.resource)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.props["lo_power_dbm"] = self.hw.lo_ref_dbm
        self._lo_channel = self.world.tx.channel
        self._data = None

    def state(self) -> dict:
        s = super().state()
        s["lo_channel"] = self._lo_channel
        s["acquisitions"] = self._acquisitions
        return s

    def lo_setpoint(self) -> tuple[float, float, bool]:
        """(LO set frequency Hz, LO power W, LO on) for the world."""
        return (
            grid.channel_to_frequency(self._lo_channel),
            grid.dbm_to_watt(self.props["lo_power_dbm"]),
            bool(self.props["lo_on"]),
        )

    @command("SENSe:LO:CHANnel")
    def _set_lo_chan(self, call: Call) -> None:
        call.nargs(1)
        self._lo_channel = call.int(0, grid.CHANNEL_MIN, grid.CHANNEL_MAX)

    @query("SENSe:LO:CHANnel?")
    def _get_lo_chan(self, call: Call) -> int:
        call.nargs(0)
        return self._lo_channel

    @query("SENSe:LO:FREQuency?")
    def _get_lo_freq(self, call: Call) -> float:
        call.nargs(0)
        return grid.channel_to_frequency(self._lo_channel)

    @command("ACQuire:STATe")
    def _acq(self, call: Call) -> None:
        call.nargs(1)
        what = call.args[0].strip().upper() if isinstance(call.args[0], str) else ""
        if what in ("STOP", "OFF", "0"):
            return
        if what not in ("RUN", "ON", "1"):
            raise ScpiError(-224, "Illegal parameter value;ACQ:STAT expects RUN|STOP|ON|OFF|1|0")
        p = self.props
        f_lo, lo_w, lo_on = self.lo_setpoint()
        srate = float(p["sample_rate_hz"])
        self._data = self.world.capture(
            self.hw,
            int(p["points"]),
            srate,
            f_lo,
            lo_w,
            lo_on,
            bool(p["input_open"]),
        )
        self._acq_srate = srate
        self._acquisitions += 1

    @query("ACQuire:STATe?")
    def _acq_q(self, call: Call) -> int:
        call.nargs(0)
        return 0

    @query("ACQuire:NUMacq?")
    def _numacq(self, call: Call) -> int:
        call.nargs(0)
        return self._acquisitions

    @query("CURVe?")
    def _curve(self, call: Call) -> bytes:
        call.nargs(0)
        if self._data is None:
            raise ScpiError(-230, "Data corrupt or stale;no acquisition (ACQ:STAT RUN)")
        ch = self._data[0 if self.props["source"] == "CH1" else 1]
        start = int(self.props["start"]) - 1
        stop = min(int(self.props["stop"]), ch.shape[0])
        if start >= stop:
            raise ScpiError(-221, "Settings conflict;DATA:STAR beyond DATA:STOP or the record")
        dtype = "<i2" if self.props["encoding"] == "SRIbinary" else ">i2"
        return encode_block(ch[start:stop].astype(dtype, copy=False).tobytes())

    @query("WFMOutpre:YMULt?")
    def _ymul(self, call: Call) -> float:
        call.nargs(0)
        return YMUL

    @query("WFMOutpre:YOFF?")
    def _yoff(self, call: Call) -> float:
        call.nargs(0)
        return 0.0

    @query("WFMOutpre:YZERo?")
    def _yzero(self, call: Call) -> float:
        call.nargs(0)
        return 0.0

    @query("WFMOutpre:XINCr?")
    def _xinc(self, call: Call) -> float:
        call.nargs(0)
        srate = self._acq_srate or float(self.props["sample_rate_hz"])
        return 1.0 / srate

    @query("WFMOutpre:NR_Pt?")
    def _nrpt(self, call: Call) -> int:
        call.nargs(0)
        if self._data is None:
            return 0
        n = self._data[0].shape[0]
        start = int(self.props["start"]) - 1
        return max(0, min(int(self.props["stop"]), n) - start)

    @query("CALibration:EFFiciency?")
    def _eff(self, call: Call) -> float:
        call.nargs(0)
        return round(self.hw.detector.eta, 4)
