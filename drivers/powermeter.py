"""Optical power meter (Keysight N7744A-style, channel 1).

``SENS1:POW:WAV`` (m), ``SENS1:POW:UNIT`` (``DBM``|``W``; the query answers 0 for dBm, 1 for
W), ``SENS1:POW:ATIME`` (s), ``READ1:POW?`` (new reading), ``FETC1:POW?`` (last reading),
logging: ``SENS1:FUNC:PAR:LOGG <points>,<atime>``, ``SENS1:FUNC:STAT LOGG,STAR``,
``SENS1:FUNC:STAT?`` (``...COMPLETE`` when done), ``SENS1:FUNC:RES?`` (block of float32
little-endian readings in W).
"""

from __future__ import annotations

import time

import numpy as np

from drivers import grid
from drivers.base import Instrument, InstrumentError, control, in_range, in_set

__all__ = ["PowerMeter"]


def _unit_reply(reply: str) -> str:
    text = reply.strip().upper().lstrip("+")
    if text in ("0", "DBM"):
        return "DBM"
    if text in ("1", "W", "WATT"):
        return "W"
    raise ValueError(f"unknown power unit {reply!r}")


class PowerMeter(Instrument):
    """Far-end power meter: single reads and logging runs."""

    role = "powermeter"
    max_log_points = 1_000_000

    wavelength = control(
        "SENS1:POW:WAV?",
        "SENS1:POW:WAV %.12g",
        "Calibration wavelength",
        validator=in_range(1.2e-6, 1.7e-6),
        unit="m",
    )
    unit = control(
        "SENS1:POW:UNIT?",
        "SENS1:POW:UNIT %s",
        "Reading unit (DBM or W)",
        validator=in_set(["DBM", "W"]),
        cast=_unit_reply,
    )
    averaging_time = control(
        "SENS1:POW:ATIME?",
        "SENS1:POW:ATIME %.12g",
        "Averaging time per reading",
        validator=in_range(1e-4, 10),
        unit="s",
    )

    def _to_dbm(self, value: float) -> float:
        return grid.watt_to_dbm(value) if self.unit == "W" else value

    def read_dbm(self) -> float:
        """A new reading, in dBm."""
        return self._to_dbm(float(self.query("READ1:POW?")))

    def fetch_dbm(self) -> float:
        """The last reading again, in dBm (no new measurement)."""
        return self._to_dbm(float(self.query("FETC1:POW?")))

    def log(self, points: int, averaging_time: float, poll_s: float = 0.01) -> np.ndarray:
        """Run a logging measurement; return ``points`` readings in W (float64)."""
        if isinstance(points, bool) or not isinstance(points, int):
            raise ValueError(f"PowerMeter.log: points must be an integer, got {points!r}")
        if not 1 <= points <= self.max_log_points:
            raise ValueError(
                f"PowerMeter.log: points {points} out of range [1, {self.max_log_points}]"
            )
        in_range(1e-4, 10)(averaging_time, "PowerMeter.log averaging_time")
        self.write(f"SENS1:FUNC:PAR:LOGG {points},{averaging_time:.12g}")
        self.write("SENS1:FUNC:STAT LOGG,STAR")
        deadline = time.monotonic() + 30.0 + 2.0 * points * averaging_time
        while "COMPLETE" not in self.query("SENS1:FUNC:STAT?").upper():
            if time.monotonic() > deadline:
                raise InstrumentError(
                    self.resource_name, "SENS1:FUNC:STAT?", None, "logging never completed"
                )
            time.sleep(poll_s)
        payload = self.query_block("SENS1:FUNC:RES?")
        if len(payload) % 4:
            raise InstrumentError(
                self.resource_name,
                "SENS1:FUNC:RES?",
                None,
                f"{len(payload)} bytes is not float32 data",
            )
        values = np.frombuffer(payload, dtype="<f4").astype(np.float64)
        if values.size != points:
            raise InstrumentError(
                self.resource_name,
                "SENS1:FUNC:RES?",
                None,
                f"{values.size} readings, expected {points}",
            )
        return values

    def log_dbm(self, points: int, averaging_time: float) -> np.ndarray:
        """:meth:`log` converted to dBm."""
        watts = self.log(points, averaging_time)
        with np.errstate(divide="ignore"):
            return 10.0 * np.log10(np.maximum(watts, 0.0) / 1e-3)
