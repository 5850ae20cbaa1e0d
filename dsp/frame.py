"""The frame format shared by Alice's waveform builder and Bob's DSP (the one place for it).

A frame is a cyclic block of ``n_symbols`` symbol slots played by the AWG in an endless
loop. Slot 0 .. ``preamble_length - 1`` carry a constant-modulus Zadoff-Chu sequence (frame
synchronisation); the remaining slots carry Gaussian quantum symbols. Both are shaped by a
root-raised-cosine (RRC) pulse applied *cyclically* (the loop is seamless), and two pilot
tones at ``+pilot_offset_hz`` and ``-pilot_offset_hz`` from the carrier are added.

Why two pilots: both carry the same laser phase noise and carrier offset, so their product
gives the carrier offset and their ratio (phase difference) gives the DAC/ADC clock ratio
free of laser phase noise; their average tracks the laser phase for the quantum band.

Spectrum of the default format (DAC 1 GSa/s, ADC 1 GSa/s, 250 MBd, roll-off 0.1)::

      -500     -300 -250 -200     -137.5      0      137.5      200  250  300      500 MHz
        |        [ pilot2 ]          [=== quantum band ===]          [ pilot1 ]        |
                 search window          (shifted by CFO)              search window

The quantum band occupies ``(1 + rolloff) * symbol_rate / 2`` = 137.5 MHz each side; a
carrier offset of up to ``cfo_range_hz`` (60 MHz) shifts everything, pilots included, so
each pilot stays inside its search window and 52.5 MHz clear of the quantum band, and
inside the ADC Nyquist band (310 MHz < 500 MHz). The DAC reconstruction is band-limited,
so there are no images inside the band; the pilots are far from the DAC/ADC Nyquist edge.

Version history: 1 = this layout.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

FRAME_FORMAT_VERSION = 1


class FrameFormatError(ValueError):
    """A frame format is inconsistent (names the offending field)."""


@dataclass(frozen=True)
class FrameFormat:
    """Versioned frame format (all rates in Hz, powers relative in dB).

    Attributes
    ----------
    dac_rate_hz, adc_rate_hz : float
        Nominal DAC and ADC sample rates; both must be integer multiples of the symbol
        rate (4 samples/symbol by default).
    symbol_rate_hz : float
        Symbol rate (250 MBd).
    rolloff : float
        RRC roll-off factor.
    n_symbols : int
        Symbol slots per frame (preamble included).
    preamble_length : int
        Zadoff-Chu length (odd, ideally prime) in symbols.
    zc_root : int
        Zadoff-Chu root, coprime with ``preamble_length``.
    preamble_to_signal_db : float
        Power of one preamble symbol relative to the quantum symbol variance.
    pilot_offset_hz : float
        The two pilots sit at ``+-pilot_offset_hz`` from the carrier.
    pilot_to_signal_db : float
        Power of *each* pilot relative to the mean power of the quantum signal.
    cfo_range_hz : float
        Largest carrier offset the receiver searches for.
    max_clock_ppm : float
        Largest relative DAC/ADC clock mismatch the receiver accepts.
    dac_peak_fraction : float
        The frame's largest I or Q magnitude as a fraction of int16 full scale.
    capture_margin : int
        ADC samples captured beyond one frame (filter spans at both ends).
    version : int
        Format version (``FRAME_FORMAT_VERSION``).
    """

    dac_rate_hz: float = 1.0e9
    adc_rate_hz: float = 1.0e9
    symbol_rate_hz: float = 250.0e6
    rolloff: float = 0.1
    n_symbols: int = 1_000_000
    preamble_length: int = 4093
    zc_root: int = 1
    preamble_to_signal_db: float = 10.0
    pilot_offset_hz: float = 375.0e6
    pilot_to_signal_db: float = 15.0
    cfo_range_hz: float = 60.0e6
    max_clock_ppm: float = 150.0
    dac_peak_fraction: float = 0.9
    capture_margin: int = 16384
    version: int = FRAME_FORMAT_VERSION

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> FrameFormatError:
            return FrameFormatError(f"frame format field {name!r}: {why}")

        if self.version != FRAME_FORMAT_VERSION:
            raise bad(
                "version", f"{self.version} is not supported (expected {FRAME_FORMAT_VERSION})"
            )
        for name in ("dac_rate_hz", "adc_rate_hz", "symbol_rate_hz"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise bad(name, f"must be a positive finite rate, got {value}")
        for name in ("dac_rate_hz", "adc_rate_hz"):
            ratio = getattr(self, name) / self.symbol_rate_hz
            if abs(ratio - round(ratio)) > 1e-9 or round(ratio) < 2:
                raise bad(
                    name, f"must be an integer multiple >= 2 of the symbol rate (got {ratio:g})"
                )
        if not 0.0 < self.rolloff <= 1.0:
            raise bad("rolloff", f"must be in (0, 1], got {self.rolloff}")
        if self.preamble_length < 31 or self.preamble_length % 2 == 0:
            raise bad("preamble_length", f"must be odd and >= 31, got {self.preamble_length}")
        if math.gcd(self.zc_root, self.preamble_length) != 1:
            raise bad("zc_root", "must be coprime with preamble_length")
        if self.n_symbols < 4 * self.preamble_length:
            raise bad("n_symbols", f"must be >= 4 * preamble_length, got {self.n_symbols}")
        edge = self.band_edge_hz
        hi = self.pilot_offset_hz + self.cfo_range_hz
        if self.pilot_offset_hz - edge < 25e6:
            raise bad(
                "pilot_offset_hz",
                f"pilots at +-{self.pilot_offset_hz / 1e6:g} MHz are closer than 25 MHz to the "
                f"quantum band edge {edge / 1e6:g} MHz",
            )
        if hi >= 0.45 * min(self.adc_rate_hz, self.dac_rate_hz):
            raise bad(
                "pilot_offset_hz", f"pilot search window reaches {hi / 1e6:g} MHz, too near Nyquist"
            )
        cycles = self.pilot_offset_hz * self.frame_samples / self.dac_rate_hz
        if abs(cycles - round(cycles)) > 1e-6:
            raise bad(
                "pilot_offset_hz",
                "must complete an integer number of cycles per frame (seamless loop)",
            )
        if not 0.0 < self.dac_peak_fraction <= 1.0:
            raise bad("dac_peak_fraction", "must be in (0, 1]")
        if self.capture_margin < 2048:
            raise bad("capture_margin", "must be >= 2048 ADC samples")

    # --- derived quantities -------------------------------------------------------------
    @property
    def sps_dac(self) -> int:
        """DAC samples per symbol."""
        return round(self.dac_rate_hz / self.symbol_rate_hz)

    @property
    def sps_adc(self) -> int:
        """ADC samples per symbol (nominal clocks)."""
        return round(self.adc_rate_hz / self.symbol_rate_hz)

    @property
    def frame_samples(self) -> int:
        """DAC samples per frame (the AWG trace length)."""
        return self.n_symbols * self.sps_dac

    @property
    def frame_adc_samples(self) -> int:
        """ADC samples spanned by one frame at nominal clocks."""
        return self.n_symbols * self.sps_adc

    @property
    def capture_points(self) -> int:
        """Record length for one capture: a frame plus clock drift plus ``capture_margin``."""
        drift = math.ceil(self.frame_adc_samples * self.max_clock_ppm * 1e-6)
        n = self.frame_adc_samples + 2 * drift + self.capture_margin
        return int(math.ceil(n / 1024) * 1024)

    @property
    def band_edge_hz(self) -> float:
        """Highest frequency of the quantum band relative to the carrier."""
        return 0.5 * (1.0 + self.rolloff) * self.symbol_rate_hz

    @property
    def quantum_slice(self) -> slice:
        """Symbol slots carrying quantum symbols."""
        return slice(self.preamble_length, self.n_symbols)

    @property
    def n_quantum(self) -> int:
        """Number of quantum symbols per frame."""
        return self.n_symbols - self.preamble_length

    def preamble(self) -> np.ndarray:
        """Unit-modulus Zadoff-Chu sequence ``exp(-i pi u n (n + 1) / N)`` (complex128)."""
        n = np.arange(self.preamble_length, dtype=np.float64)
        u, big_n = self.zc_root, self.preamble_length
        # n (n + 1) u mod 2N keeps the argument small and exact in float64
        arg = np.mod(n * (n + 1) * u, 2 * big_n)
        return np.exp(-1j * np.pi * arg / big_n)

    def rrc_spectrum(self, freqs_hz: np.ndarray) -> np.ndarray:
        """Root-raised-cosine amplitude response (1 in the pass band) at ``freqs_hz``."""
        f = np.abs(np.asarray(freqs_hz, dtype=np.float64))
        rs, b = self.symbol_rate_hz, self.rolloff
        f1 = 0.5 * (1.0 - b) * rs
        f2 = 0.5 * (1.0 + b) * rs
        out = np.zeros_like(f)
        out[f <= f1] = 1.0
        mid = (f > f1) & (f < f2)
        out[mid] = np.cos(0.5 * np.pi * (f[mid] - f1) / (b * rs))
        return out

    # --- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-safe) of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FrameFormat:
        """Inverse of :meth:`to_dict`; unknown or missing fields raise ``FrameFormatError``."""
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise FrameFormatError(f"unknown frame format field(s): {sorted(unknown)}")
        missing = names - set(data)
        if missing:
            raise FrameFormatError(f"missing frame format field(s): {sorted(missing)}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            value = data[f.name]
            kwargs[f.name] = int(value) if f.type in ("int", int) else float(value)
        return cls(**kwargs)
