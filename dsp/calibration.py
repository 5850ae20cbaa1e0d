"""Shot-noise and electronic-noise calibration through the same filters as the signal.

Two captures calibrate the receiver (docs/physics.md):

* electronic noise: LO off (``SENS:LO:STAT OFF``), only the detector electronics remain;
* shot noise: LO on, input shutter closed (``INP:STAT OFF``): vacuum noise + electronics.

Each goes through the signal path's matched filter, shifted by the frame's carrier offset so
the filter sees the same part of the front end's noise spectrum as the quantum band did,
and is sampled once per symbol. With ``V_shot`` and ``V_el`` the per-quadrature variances
(V^2), one shot-noise unit is ``N0 = V_shot - V_el`` and the electronic noise is
``v_el = V_el / N0`` SNU.

The front end's noise is not white (its analogue low-pass), so N0 depends on where the
filter sits: with the emulator's 400 MHz Butterworth, moving the band by 50 MHz changes N0
by ~1 %, which is 0.03 SNU of excess noise on a 12 km link. When the carrier offset is not
known at calibration time, :meth:`NoiseCalibration.at_cfo` moves the result to the
frame's offset using the captures' power spectra (``PSD_BINS`` bins, kept with the
calibration; the ratio of two filtered sums over the same spectrum, so it adds no
statistical error of its own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from dsp.estimation import estimate_electronic_noise
from dsp.frame import FrameFormat
from dsp.rx import (
    AdcScaling,
    CalibrationError,
    check_clipping,
    fft_length,
    matched_filter,
    spectrum,
    to_complex,
)


@dataclass(frozen=True)
class NoiseCalibration:
    """Calibration result.

    Attributes
    ----------
    n0 : float
        Shot-noise variance per quadrature after the matched filter (V^2): one SNU.
    v_el : float
        Electronic noise in SNU.
    eta : float
        Detector efficiency (``CAL:EFF?``).
    v_el_stderr : float
        Standard error of ``v_el`` (:func:`dsp.estimation.estimate_electronic_noise`).
    n_shot, n_el : int
        Symbol-spaced complex samples behind each variance.
    cfo_hz : float
        Carrier offset the matched filter was placed at.
    psd_shot, psd_el : ndarray or None
        Power spectra of the captures (``PSD_BINS`` bins over ``[0, fs)``, arbitrary
        common scale), for :meth:`at_cfo`.
    """

    n0: float
    v_el: float
    eta: float
    v_el_stderr: float
    n_shot: int
    n_el: int
    cfo_hz: float = 0.0
    psd_shot: np.ndarray | None = field(default=None, repr=False, compare=False)
    psd_el: np.ndarray | None = field(default=None, repr=False, compare=False)

    def at_cfo(self, cfo_hz: float, fmt: FrameFormat) -> NoiseCalibration:
        """The calibration with the matched filter at ``cfo_hz`` instead of ``self.cfo_hz``.

        Each variance is scaled by ``sum(P * W(cfo)) / sum(P * W(self.cfo))``, ``P`` its
        capture's power spectrum and ``W`` the matched filter's power response; errors
        and sample counts are unchanged. Without spectra (or at the same offset) returns
        ``self``.
        """
        if self.psd_shot is None or self.psd_el is None or cfo_hz == self.cfo_hz:
            return self
        w_new = _filter_power(cfo_hz, fmt, self.psd_shot.size)
        w_old = _filter_power(self.cfo_hz, fmt, self.psd_shot.size)
        v_el_abs = self.v_el * self.n0
        v_shot = (self.n0 + v_el_abs) * float(self.psd_shot @ w_new / (self.psd_shot @ w_old))
        el_old = float(self.psd_el @ w_old)
        v_el_new = v_el_abs * float(self.psd_el @ w_new) / el_old if el_old > 0 else v_el_abs
        n0 = v_shot - v_el_new
        if not (math.isfinite(n0) and n0 > 0):
            raise CalibrationError(f"calibration moved to {cfo_hz / 1e6:.1f} MHz has N0 <= 0")
        return replace(self, n0=n0, v_el=v_el_new / n0, cfo_hz=float(cfo_hz))

    @property
    def n0_rel_stderr(self) -> float:
        """Relative standard error of ``n0``.

        ``N0 = V_shot - V_el``; a per-quadrature variance from ``k`` complex Gaussian samples
        has relative variance ``1 / k``, so
        ``(SE(N0) / N0)^2 = (1 + v_el)^2 / n_shot + v_el^2 / n_el``. An error ``e`` in ``N0``
        scales ``T-hat`` by ``1 - e`` and shifts ``xi-hat`` by ``-2 e / (eta T)``.
        """
        return math.sqrt((1 + self.v_el) ** 2 / self.n_shot + self.v_el**2 / self.n_el)


PSD_BINS = 1 << 14
"""Bins of the calibration captures' power spectra (61 kHz at 1 GSa/s; the matched
filter's response changes over ~10 MHz)."""


def _filter_power(cfo_hz: float, fmt: FrameFormat, bins: int) -> np.ndarray:
    """Matched-filter power response at the centres of ``bins`` bins over ``[0, fs)``
    when the filter is centred on ``cfo_hz``."""
    f = (np.arange(bins) + 0.5) * (fmt.adc_rate_hz / bins)
    f = (f - cfo_hz + fmt.adc_rate_hz / 2) % fmt.adc_rate_hz - fmt.adc_rate_hz / 2
    r = np.asarray(fmt.rrc_spectrum(np.abs(f)), dtype=np.float64)
    return r * r


def _binned_power(spec: np.ndarray, bins: int) -> np.ndarray:
    """``|spec|^2`` summed into ``bins`` equal frequency bins over ``[0, fs)``."""
    k = (np.arange(spec.size, dtype=np.int64) * bins) // spec.size
    return np.bincount(k, weights=np.abs(spec).astype(np.float64) ** 2, minlength=bins)


def noise_samples(
    i_raw: np.ndarray,
    q_raw: np.ndarray,
    scale_i: AdcScaling,
    scale_q: AdcScaling,
    fmt: FrameFormat,
    cfo_hz: float = 0.0,
    psd: np.ndarray | None = None,
) -> np.ndarray:
    """Symbol-spaced matched-filter outputs (complex64, volts) of a noise capture.

    Samples one per symbol (independent for a Nyquist pulse), away from the record's ends
    where the circular filtering wraps. When ``psd`` (length ``PSD_BINS``) is given, the
    capture's binned power spectrum is added to it.
    """
    i_raw = np.asarray(i_raw)
    q_raw = np.asarray(q_raw)
    if i_raw.size < 1024 * fmt.sps_adc:
        raise CalibrationError(f"calibration capture too short ({i_raw.size} points)")
    check_clipping(i_raw, q_raw)
    x = to_complex(i_raw, q_raw, scale_i, scale_q)
    n_fft = fft_length(x.size, fmt)
    spec = spectrum(x, n_fft)
    del x
    if psd is not None:
        psd += _binned_power(spec, psd.size) / n_fft
    shift = round(cfo_hz / fmt.adc_rate_hz * n_fft)
    y2, _ = matched_filter(spec, fmt, shift_bins=shift)
    edge = 256
    valid = (i_raw.size * 2) // fmt.sps_adc
    return np.ascontiguousarray(y2[edge : valid - edge : 2])


def noise_variance(
    i_raw: np.ndarray,
    q_raw: np.ndarray,
    scale_i: AdcScaling,
    scale_q: AdcScaling,
    fmt: FrameFormat,
    cfo_hz: float = 0.0,
) -> tuple[float, int]:
    """Per-quadrature variance (V^2) of a noise capture after the matched filter, and the
    number of symbol-spaced complex samples behind it."""
    y = noise_samples(i_raw, q_raw, scale_i, scale_q, fmt, cfo_hz)
    var = float(np.mean(y.real.astype(np.float64) ** 2 + y.imag.astype(np.float64) ** 2) / 2)
    if not (math.isfinite(var) and var > 0):
        raise CalibrationError("calibration capture has zero or non-finite variance")
    return var, int(y.size)


def calibrate(
    shot: tuple[np.ndarray, np.ndarray, AdcScaling, AdcScaling]
    | list[tuple[np.ndarray, np.ndarray, AdcScaling, AdcScaling]],
    electronic: tuple[np.ndarray, np.ndarray, AdcScaling, AdcScaling],
    eta: float,
    fmt: FrameFormat,
    cfo_hz: float = 0.0,
) -> NoiseCalibration:
    """Shot-noise unit and electronic noise from the two calibration captures.

    Each capture is ``(i_raw, q_raw, scale_i, scale_q)``; ``shot`` may be a list of
    captures, pooled (the shot-noise unit's error enters every estimate, so it usually
    needs more samples than one record holds). ``cfo_hz`` is the frame's carrier offset
    (:attr:`dsp.rx.RxResult.cfo_hz`).
    """
    if not (math.isfinite(eta) and 0.0 < eta <= 1.0):
        raise CalibrationError(f"detector efficiency must be in (0, 1], got {eta}")
    shots = shot if isinstance(shot, list) else [shot]
    if not shots:
        raise CalibrationError("no shot-noise capture given")
    psd_shot = np.zeros(PSD_BINS)
    psd_el = np.zeros(PSD_BINS)
    ys = np.concatenate([noise_samples(*s, fmt, cfo_hz, psd_shot) for s in shots])
    ye = noise_samples(*electronic, fmt, cfo_hz, psd_el)
    v_shot = float(np.mean(np.abs(ys.astype(np.complex128)) ** 2) / 2)
    v_el = float(np.mean(np.abs(ye.astype(np.complex128)) ** 2) / 2)
    if not (math.isfinite(v_shot) and math.isfinite(v_el) and v_shot > 0):
        raise CalibrationError("calibration captures have zero or non-finite variance")
    if not v_shot - v_el > 0.05 * v_shot:
        raise CalibrationError(
            f"shot-noise capture ({v_shot:.4g} V^2) is not clearly above the electronic "
            f"noise ({v_el:.4g} V^2): was the LO on for the shot-noise capture?"
        )
    v, se, n0 = estimate_electronic_noise(ye, ys)
    return NoiseCalibration(
        n0=float(n0),
        v_el=float(v),
        eta=float(eta),
        v_el_stderr=float(se),
        n_shot=ys.size,
        n_el=ye.size,
        cfo_hz=float(cfo_hz),
        psd_shot=psd_shot / len(shots),
        psd_el=psd_el,
    )
