"""Coherent receiver: phase-diverse front end with its own LO + real-time digitiser.

Transfer follows a Tektronix DPO70000-style digitiser: ``ACQ:STAT RUN`` then ``*OPC?``;
per channel ``DATA:SOUR CH1|CH2``, ``DATA:ENC SRI`` (signed, little-endian), ``DATA:WID 2``
(int16), ``WFMO:YMUL?``/``YOFF?``/``YZER?``/``XINC?`` and ``CURV?`` (one block). Volts are
``(raw - YOFF) * YMUL + YZER``. CH1 carries I, CH2 carries Q. *ext*: ``SENS:LO:CHAN``,
``SENS:LO:POW`` (dBm), ``SENS:LO:STAT``, ``INP:STAT`` (signal shutter), ``CAL:EFF?``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drivers import grid
from drivers.base import Instrument, boolean, control, in_range, integer_in_range, measurement

__all__ = ["Capture", "ChannelScale", "Receiver"]


@dataclass(frozen=True)
class ChannelScale:
    """``WFMO`` scaling of one channel: volts = (raw - yoff) * ymul + yzero."""

    ymul: float
    yoff: float
    yzero: float

    def volts(self, raw: np.ndarray) -> np.ndarray:
        return (
            (raw.astype(np.float32) - np.float32(self.yoff)) * np.float32(self.ymul)
        ) + np.float32(self.yzero)


@dataclass
class Capture:
    """One acquisition: complex volts ``I + jQ`` plus the raw codes and their scaling."""

    samples: np.ndarray  # complex64, volts
    sample_rate: float  # Sa/s, 1 / XINC
    raw_i: np.ndarray  # int16 codes of CH1
    raw_q: np.ndarray  # int16 codes of CH2
    scale_i: ChannelScale
    scale_q: ChannelScale
    clipping: float  # fraction of samples (I or Q) at the extreme codes of the record

    def __len__(self) -> int:
        return int(self.samples.size)


def _clipping_fraction(raw_i: np.ndarray, raw_q: np.ndarray, lo: int, hi: int) -> float:
    n = raw_i.size + raw_q.size
    if n == 0:
        return 0.0
    hits = 0
    for r in (raw_i, raw_q):
        hits += int(np.count_nonzero(r <= lo)) + int(np.count_nonzero(r >= hi))
    return hits / n


class Receiver(Instrument):
    """Bob: LO laser, signal shutter, heterodyne detector and a two-channel digitiser."""

    role = "receiver"
    #: Extreme ADC codes: 12-bit values left-justified in int16 (code << 4), as on
    #: Tektronix-style digitisers. A sample at either is counted as clipped.
    adc_code_min = -32768
    adc_code_max = 32752

    lo_channel = control(
        "SENS:LO:CHAN?",
        "SENS:LO:CHAN %d",
        "LO laser ITU channel",
        validator=integer_in_range(grid.CHANNEL_MIN, grid.CHANNEL_MAX),
        cast=lambda r: int(float(r)),
    )
    lo_power_dbm = control(
        "SENS:LO:POW?", "SENS:LO:POW %g", "LO power", validator=in_range(-3, 16), unit="dBm"
    )
    lo_enabled = boolean("SENS:LO:STAT?", "SENS:LO:STAT %s", "LO laser on")
    input_open = boolean("INP:STAT?", "INP:STAT %s", "Signal input shutter open")
    sample_rate = control(
        "ACQ:SRAT?",
        "ACQ:SRAT %.12g",
        "ADC sample rate",
        validator=in_range(1e8, 4e9),
        unit="Sa/s",
    )
    record_length = control(
        "ACQ:POIN?",
        "ACQ:POIN %d",
        "Points per channel per acquisition",
        validator=integer_in_range(1000, 33_554_432),
        cast=lambda r: int(float(r)),
    )
    efficiency = measurement("CAL:EFF?", "Detector efficiency from the factory calibration")

    def run(self) -> None:
        """Start one acquisition and wait for it to complete."""
        self.write("ACQ:STAT RUN")
        self.wait()

    def read_channel(self, channel: int) -> tuple[np.ndarray, ChannelScale, float]:
        """Raw int16 codes, scaling and XINC of channel 1 (I) or 2 (Q) of the last record."""
        if channel not in (1, 2):
            raise ValueError(f"read_channel: channel must be 1 or 2, got {channel!r}")
        self.write(f"DATA:SOUR CH{channel};:DATA:ENC SRI;:DATA:WID 2")
        scale = ChannelScale(
            ymul=float(self.query("WFMO:YMUL?")),
            yoff=float(self.query("WFMO:YOFF?")),
            yzero=float(self.query("WFMO:YZER?")),
        )
        xinc = float(self.query("WFMO:XINC?"))
        payload = self.query_block("CURV?")
        if len(payload) % 2:
            raise ValueError(
                f"{self.resource_name}: CURV? returned an odd byte count {len(payload)}"
            )
        raw = np.frombuffer(payload, dtype="<i2")
        return raw, scale, xinc

    def fetch(self) -> Capture:
        """Transfer both channels of the last acquisition."""
        raw_i, scale_i, xinc = self.read_channel(1)
        raw_q, scale_q, _ = self.read_channel(2)
        if raw_i.size != raw_q.size:
            raise ValueError(
                f"{self.resource_name}: CH1 has {raw_i.size} points but CH2 has {raw_q.size}"
            )
        samples = np.empty(raw_i.size, dtype=np.complex64)
        samples.real = scale_i.volts(raw_i)
        samples.imag = scale_q.volts(raw_q)
        return Capture(
            samples=samples,
            sample_rate=1.0 / xinc,
            raw_i=raw_i,
            raw_q=raw_q,
            scale_i=scale_i,
            scale_q=scale_q,
            clipping=_clipping_fraction(raw_i, raw_q, self.adc_code_min, self.adc_code_max),
        )

    def acquire(self) -> Capture:
        """Run one acquisition and transfer it (``ACQ:STAT RUN``, ``*OPC?``, two ``CURV?``)."""
        self.run()
        return self.fetch()
