"""Alice's waveform builder: Gaussian symbols, RRC shaping, preamble, pilots, int16 scaling.

The frame is shaped *cyclically* in the frequency domain (exact RRC spectrum, no truncated
taps), so the AWG loop is seamless and the pulse has unit energy in DAC samples
(``sum p**2 == 1``). With the physics contract (docs/physics.md), a symbol ``a_j`` (DAC
units) then has the coherent amplitude ``alpha_j = kappa * a_j / sqrt(R_dac)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.fft as sfft

from drivers.grid import photon_energy
from dsp.frame import FrameFormat

INT16_FULL_SCALE = 32767


@dataclass(frozen=True)
class TxFrame:
    """One frame as uploaded to the AWG, with what Alice keeps for parameter estimation.

    Attributes
    ----------
    fmt : FrameFormat
        The frame format.
    symbols : numpy.ndarray
        Quantum symbols (complex128, unit design variance ``E|s|^2 = 1``), one per quantum
        slot (``fmt.quantum_slice``).
    i, q : numpy.ndarray
        int16 DAC samples, ``fmt.frame_samples`` each.
    amplitude : float
        DAC units per unit symbol: the symbol in DAC units is ``a_j = amplitude * s_j``.
    pulse_energy : float
        ``sum p[k]**2`` of the shaping pulse in DAC samples (1 by construction).
    mean_power : float
        ``mean(|d|^2)`` of the int16 samples actually played (DAC units squared).
    """

    fmt: FrameFormat
    symbols: np.ndarray
    i: np.ndarray
    q: np.ndarray
    amplitude: float
    pulse_energy: float
    mean_power: float

    def dac_iq(self) -> np.ndarray:
        """``(N, 2)`` int16 I/Q pairs (``drivers.Transmitter.upload_iq``)."""
        return np.stack((self.i, self.q), axis=1)

    def interleaved(self) -> np.ndarray:
        """int16 samples ``I0, Q0, I1, Q1, ...`` (the AWG upload order)."""
        out = np.empty(2 * self.i.size, dtype=np.int16)
        out[0::2] = self.i
        out[1::2] = self.q
        return out


def gaussian_symbols(n: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``n`` circular complex Gaussian symbols with ``E|s|^2 = 1`` (complex128).

    With ``rng`` (tests, simulations) the draw is reproducible; without it the uniform
    deviates come from ``os.urandom`` (cryptographic source) through Box-Muller.
    """
    if n < 0:
        raise ValueError(f"number of symbols must be >= 0, got {n}")
    if rng is not None:
        return (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * np.sqrt(0.5)
    words = np.frombuffer(os.urandom(16 * n), dtype=np.uint64).reshape(2, n) if n else None
    if words is None:
        return np.zeros(0, dtype=np.complex128)
    u = ((words >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53  # (0, 1)
    radius = np.sqrt(-np.log(u[0]))  # E radius^2 = 1
    return radius * np.exp(2j * np.pi * u[1])


def build_frame(
    fmt: FrameFormat,
    rng: np.random.Generator | None = None,
    symbols: np.ndarray | None = None,
) -> TxFrame:
    """Build one frame's int16 DAC samples.

    Parameters
    ----------
    fmt : FrameFormat
        Frame format.
    rng : numpy.random.Generator, optional
        Source of the Gaussian symbols; cryptographic (``os.urandom``) when omitted.
    symbols : numpy.ndarray, optional
        Quantum symbols to use instead of drawing them (``fmt.n_quantum`` values).

    Returns
    -------
    TxFrame
    """
    if symbols is None:
        symbols = gaussian_symbols(fmt.n_quantum, rng)
    symbols = np.asarray(symbols, dtype=np.complex128)
    if symbols.shape != (fmt.n_quantum,):
        raise ValueError(f"symbols must have shape ({fmt.n_quantum},), got {symbols.shape}")
    if not np.all(np.isfinite(symbols)):
        raise ValueError("symbols contain NaN or infinity")
    slots = np.empty(fmt.n_symbols, dtype=np.complex128)
    slots[: fmt.preamble_length] = fmt.preamble() * 10.0 ** (fmt.preamble_to_signal_db / 20.0)
    slots[fmt.preamble_length :] = symbols
    sps = fmt.sps_dac
    n = fmt.frame_samples
    # FFT of the zero-stuffed slot train is the slot DFT tiled sps times.
    spec = np.tile(sfft.fft(slots), sps)
    freqs = sfft.fftfreq(n, d=1.0 / fmt.dac_rate_hz)
    spec *= np.sqrt(sps) * fmt.rrc_spectrum(freqs)  # unit-energy pulse
    wave = sfft.ifft(spec)
    del spec
    # pilots: each with power pilot_to_signal_db above the quantum mean power 1/sps
    pilot_amp = np.sqrt(10.0 ** (fmt.pilot_to_signal_db / 10.0) / sps)
    k = np.arange(n, dtype=np.float64)
    ph = 2.0 * np.pi * fmt.pilot_offset_hz / fmt.dac_rate_hz * k
    wave += pilot_amp * (2.0 * np.cos(ph))  # e^{+i ph} + e^{-i ph}
    peak = max(np.abs(wave.real).max(), np.abs(wave.imag).max())
    gain = fmt.dac_peak_fraction * INT16_FULL_SCALE / peak
    i = np.rint(wave.real * gain).astype(np.int16)
    q = np.rint(wave.imag * gain).astype(np.int16)
    mean_power = float((np.dot(i.astype(np.float64), i) + np.dot(q.astype(np.float64), q)) / n)
    return TxFrame(
        fmt=fmt,
        symbols=symbols,
        i=i,
        q=q,
        amplitude=float(gain),
        pulse_energy=1.0,
        mean_power=mean_power,
    )


def alice_modulation_variance(
    monitor_power_w: float, frequency_hz: float, tx_frame: TxFrame, dac_rate: float
) -> float:
    """Alice's modulation variance ``V_A`` (SNU) from the transmitter's monitor power.

    docs/physics.md: ``kappa^2 = P_out / (h nu mean|d|^2)`` and
    ``alpha_j = kappa a_j sqrt(sum p^2 / R_dac)``; with ``V_A = 2 E|alpha|^2`` and
    ``a_j = amplitude * s_j`` (``E|s|^2 = 1``)::

        V_A = 2 kappa^2 amplitude^2 sum(p^2) / R_dac

    Parameters
    ----------
    monitor_power_w : float
        ``SENS:POW?`` reading converted to watts (AWG playing, output on).
    frequency_hz : float
        Optical carrier frequency.
    tx_frame : TxFrame
        The frame being played.
    dac_rate : float
        The AWG sample rate (``FREQ:RAST``).
    """
    for name, value in (
        ("monitor_power_w", monitor_power_w),
        ("frequency_hz", frequency_hz),
        ("dac_rate", dac_rate),
    ):
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be positive and finite, got {value}")
    kappa2 = monitor_power_w / (photon_energy(frequency_hz) * tx_frame.mean_power)
    return float(2.0 * kappa2 * tx_frame.amplitude**2 * tx_frame.pulse_energy / dac_rate)


def alice_symbols_snu(tx_frame: TxFrame, v_a: float) -> np.ndarray:
    """Alice's coherent amplitudes ``alpha_j`` (complex, SNU-scaled, ``x_A = 2 Re alpha``)."""
    return tx_frame.symbols * np.sqrt(0.5 * v_a)
