"""Optical power meter firmware (Keysight N7744A-style, channel 1).

The meter sits at the far end of its link behind a DWDM drop filter of the sync laser's
channel (``filter_channel`` in the world config; null = broadband), so it reads the
transmitter's sync laser (``SOUR2``) through the switch and the fibre: link loss =
SOUR2 power - reading.

``SENS1:POW:WAV`` (m, calibration wavelength), ``SENS1:POW:UNIT DBM|W``,
``SENS1:POW:ATIME`` (s, averaging time; reading noise falls as 1/sqrt(atime)),
``READ1:POW?`` (new measurement; the clock advances by atime), ``FETC1:POW?`` (last
reading), logging: ``SENS1:FUNC:PAR:LOGG <n>,<atime>``, ``SENS1:FUNC:STAT LOGG,STAR``
(runs n readings, advancing the clock and firing scenario events on the way),
``SENS1:FUNC:STAT?`` (``LOGGING_STABILITY,COMPLETE`` / ``NONE,COMPLETE``),
``SENS1:FUNC:RES?`` (block of n float32 little-endian readings in watts).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from drivers import grid
from drivers.ieee488 import encode_block
from emulator.scpi import Call, DeviceSpec, ScpiDevice, ScpiError, command, query

if TYPE_CHECKING:
    from emulator.world import PowerMeterHw, World

REL_NOISE_AT_100MS = 2.3e-4
"""Relative reading noise (0.001 dB) at 100 ms averaging."""
NEP_W_AT_100MS = 1e-12
"""Noise-equivalent power (about -90 dBm) at 100 ms averaging."""
MAX_LOG_POINTS = 1_000_000


class PowerMeter(ScpiDevice):
    """Power meter firmware at the far end of one link."""

    def __init__(self, spec: DeviceSpec, world: World, hw: PowerMeterHw) -> None:
        self.world = world
        self.hw = hw
        self._last_w: float | None = None
        self._log_n = 100
        self._log_atime = 0.1
        self._log_state = "NONE"
        self._log: np.ndarray | None = None
        super().__init__(spec, hw.resource)

    def reset(self) -> None:
        super().reset()
        self._last_w = None
        self._log_n = 100
        self._log_atime = 0.1
        self._log_state = "NONE"
        self._log = None

    def state(self) -> dict:
        s = super().state()
        s.update(
            {
                "log_points": self._log_n,
                "log_atime_s": self._log_atime,
                "log_state": self._log_state,
            }
        )
        return s

    def _readings(self, n: int, atime: float) -> np.ndarray:
        """``n`` consecutive readings in watts, each advancing the clock by ``atime``."""
        out = np.empty(n, dtype=np.float64)
        scale = math.sqrt(0.1 / atime)
        done = 0
        world = self.world
        with world.lock:
            while done < n:
                nxt = world.next_event_time()
                k = n - done
                if math.isfinite(nxt):
                    k = min(k, max(1, math.ceil((nxt - world.now) / atime)))
                p = world.powermeter_power_w(self.hw)
                rng = world.rng
                vals = p * (1.0 + REL_NOISE_AT_100MS * scale * rng.standard_normal(k))
                vals += NEP_W_AT_100MS * scale * rng.standard_normal(k)
                out[done : done + k] = np.abs(vals)
                world.advance(k * atime)
                done += k
        return out

    def _format(self, watts: float) -> float:
        if self.props["unit"] == "W":
            return float(f"{watts:.6E}")
        return round(grid.watt_to_dbm(max(watts, 1e-30)), 4)

    @query("READ1:POWer?")
    def _read(self, call: Call) -> float:
        call.nargs(0)
        self._last_w = float(self._readings(1, float(self.props["atime_s"]))[0])
        return self._format(self._last_w)

    @query("FETCh1:POWer?")
    def _fetch(self, call: Call) -> float:
        call.nargs(0)
        if self._last_w is None:
            raise ScpiError(-230, "Data corrupt or stale;no reading yet (READ1:POW?)")
        return self._format(self._last_w)

    @command("SENSe1:FUNCtion:PARameter:LOGGing")
    def _log_par(self, call: Call) -> None:
        call.nargs(2)
        n = call.int(0, 1, MAX_LOG_POINTS)
        atime = call.float(1, "S", 1e-4, 10.0)
        self._log_n = n
        self._log_atime = atime

    @query("SENSe1:FUNCtion:PARameter:LOGGing?")
    def _log_par_q(self, call: Call) -> str:
        call.nargs(0)
        return f"{self._log_n},{self._log_atime:.6E}"

    @command("SENSe1:FUNCtion:STATe")
    def _func_state(self, call: Call) -> None:
        call.nargs(2)
        func = call.choice(0, ["LOGGing", "NONE"])
        action = call.choice(1, ["STARt", "STOP"])
        if action == "STOP":
            self._log_state = "NONE"
            return
        if func != "LOGGing":
            raise ScpiError(-221, "Settings conflict;only LOGG can be started")
        self._log = self._readings(self._log_n, self._log_atime)
        self._last_w = float(self._log[-1])
        self._log_state = "LOGGING_STABILITY"

    @query("SENSe1:FUNCtion:STATe?")
    def _func_state_q(self, call: Call) -> str:
        call.nargs(0)
        return f"{self._log_state},COMPLETE"

    @query("SENSe1:FUNCtion:RESult?")
    def _result(self, call: Call) -> bytes:
        call.nargs(0)
        if self._log is None:
            raise ScpiError(
                -230, "Data corrupt or stale;no logging result (SENS1:FUNC:STAT LOGG,STAR)"
            )
        return encode_block(self._log.astype("<f4").tobytes())

    @query("SENSe1:POWer:REFerence:CHANnel?")
    def _filter(self, call: Call) -> int:
        """Extension: the ITU channel of the drop filter in front of the meter (0 = none)."""
        call.nargs(0)
        return self.hw.filter_channel or 0
