"""CV-QKD transmitter: tunable laser (Keysight N7711A-style) + I/Q AWG (M8195A-style) + VOA.

Commands (``SOUR1`` the quantum-signal laser, ``SOUR2`` the classical sync laser):
``SOUR<n>:GRID:CHAN`` (*ext*, ITU channel n: 190.0 THz + n x 100 GHz), ``SOUR<n>:WAV`` (m),
``SOUR<n>:FREQ`` (Hz), ``SOUR<n>:POW`` (dBm), ``SOUR<n>:POW:STAT``, ``OUTP1``, ``OUTP:ATT``
(*ext*, VOA dB), ``FREQ:RAST`` (DAC Sa/s), ``TRAC1:DEF 1,<n>``, ``TRAC1:DATA 1,0,#<block>``
(int16 little-endian, interleaved I0,Q0,I1,Q1,..., full scale 32767), ``INIT:IMM``, ``ABOR``,
``SENS:POW?`` (*ext*, monitor tap: output power in dBm).
"""

from __future__ import annotations

import numpy as np

from drivers import grid
from drivers.base import (
    Instrument,
    boolean,
    control,
    in_range,
    integer_in_range,
    measurement,
)

__all__ = ["Transmitter", "iq_to_dac"]

DAC_FULL_SCALE = 32767
WAVELENGTH_RANGE_M = (grid.channel_to_wavelength(grid.CHANNEL_MAX), grid.channel_to_wavelength(1))
FREQUENCY_RANGE_HZ = (grid.channel_to_frequency(1), grid.channel_to_frequency(grid.CHANNEL_MAX))


def iq_to_dac(iq: np.ndarray) -> np.ndarray:
    """DAC samples ``(N, 2)`` int16 from complex full-scale units or an ``(N, 2)`` int16 array.

    Complex input is in units of DAC full scale: ``|I|, |Q| <= 1`` (1.0 -> 32767).
    """
    arr = np.asarray(iq)
    if np.iscomplexobj(arr):
        if arr.ndim != 1:
            raise ValueError(f"iq: complex samples must be 1-D, got shape {arr.shape}")
        if arr.size == 0:
            return np.empty((0, 2), dtype="<i2")
        # (I, Q) pairs as a real view: one pass for the range check, one for the scaling
        pairs = np.ascontiguousarray(arr).view(arr.real.dtype).reshape(-1, 2)
        lo, hi = float(pairs.min()), float(pairs.max())
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < -1.0 or hi > 1.0:
            peak = max(abs(lo), abs(hi))
            raise ValueError(
                f"iq: complex samples must lie within DAC full scale |I|,|Q| <= 1, peak {peak:g}"
            )
        scaled = pairs * DAC_FULL_SCALE
        np.rint(scaled, out=scaled)
        return scaled.astype("<i2")
    if arr.ndim == 2 and arr.shape[1] == 2 and arr.dtype == np.int16:
        return arr.astype("<i2", copy=False)
    raise ValueError(
        f"iq: expected complex samples or an (N, 2) int16 array, got {arr.dtype} {arr.shape}"
    )


class Transmitter(Instrument):
    """Alice: ITU-grid laser, I/Q AWG, VOA, monitor tap and a classical sync laser."""

    role = "transmitter"
    max_points = 64 * 1024 * 1024

    channel = control(
        "SOUR1:GRID:CHAN?",
        "SOUR1:GRID:CHAN %d",
        "Signal laser ITU channel (190.0 THz + n x 100 GHz)",
        validator=integer_in_range(grid.CHANNEL_MIN, grid.CHANNEL_MAX),
        cast=lambda r: int(float(r)),
    )
    wavelength = control(
        "SOUR1:WAV?",
        "SOUR1:WAV %.12g",
        "Signal laser vacuum wavelength",
        validator=in_range(*WAVELENGTH_RANGE_M),
        unit="m",
    )
    frequency = control(
        "SOUR1:FREQ?",
        "SOUR1:FREQ %.12g",
        "Signal laser optical frequency",
        validator=in_range(*FREQUENCY_RANGE_HZ),
        unit="Hz",
    )
    power_dbm = control(
        "SOUR1:POW?",
        "SOUR1:POW %g",
        "Signal laser power",
        validator=in_range(-10, 13.5),
        unit="dBm",
    )
    laser_enabled = boolean("SOUR1:POW:STAT?", "SOUR1:POW:STAT %s", "Signal laser on")
    output = boolean("OUTP1?", "OUTP1 %s", "Optical output enabled")
    voa_db = control(
        "OUTP:ATT?",
        "OUTP:ATT %g",
        "VOA attenuation at the output",
        validator=in_range(0, 90),
        unit="dB",
    )
    dac_rate = control(
        "FREQ:RAST?",
        "FREQ:RAST %.12g",
        "AWG sample rate",
        validator=in_range(1e8, 4e9),
        unit="Sa/s",
    )
    monitor_power_dbm = measurement("SENS:POW?", "Output power at the monitor tap", unit="dBm")
    sync_channel = control(
        "SOUR2:GRID:CHAN?",
        "SOUR2:GRID:CHAN %d",
        "Sync laser ITU channel",
        validator=integer_in_range(grid.CHANNEL_MIN, grid.CHANNEL_MAX),
        cast=lambda r: int(float(r)),
    )
    sync_power_dbm = control(
        "SOUR2:POW?", "SOUR2:POW %g", "Sync laser power", validator=in_range(-10, 13.5), unit="dBm"
    )
    sync_output = boolean("SOUR2:POW:STAT?", "SOUR2:POW:STAT %s", "Sync laser on")

    def upload_iq(self, iq: np.ndarray) -> int:
        """Upload a looping I/Q waveform (segment 1); returns the number of samples."""
        dac = iq_to_dac(iq)
        n = dac.shape[0]
        if not 1 <= n <= self.max_points:
            raise ValueError(f"upload_iq: {n} samples, expected 1..{self.max_points}")
        self.write(f"TRAC1:DEF 1,{n}")
        self.write_block("TRAC1:DATA 1,0,", dac.tobytes())
        return n

    def play(self) -> None:
        """Start the AWG (the waveform loops until :meth:`stop`)."""
        self.write("INIT:IMM")

    def stop(self) -> None:
        """Stop the AWG (the modulator output goes dark)."""
        self.write("ABOR")
