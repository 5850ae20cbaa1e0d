"""Band-limited DAC -> ADC resampling and the detector chain (emulator/physics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from emulator import physics


def _exact(spec: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Ideal band-limited (trigonometric) interpolation of a periodic sequence at ``u``."""
    n = spec.shape[0]
    k = np.fft.fftfreq(n) * n
    return np.exp(2j * np.pi * np.outer(u, k) / n) @ spec / n


@pytest.mark.parametrize("band", [0.2, 0.4])
def test_interpolation_error_far_below_the_dsp_budget(band: float) -> None:
    """Error power < -85 dB of the signal: the DSP budget is 0.005 SNU in total at 0 km,
    i.e. about -30 dB of a few-SNU signal, so the interpolator is negligible even for
    pilots 40 dB stronger than the quantum signal."""
    rng = np.random.default_rng(1)
    n = 2048
    m = np.abs(np.fft.fftfreq(n)) < band
    spec = np.zeros(n, complex)
    spec[m] = rng.standard_normal(m.sum()) + 1j * rng.standard_normal(m.sum())
    x = np.fft.ifft(spec)
    u0, ratio = 2042.37, 1.0 + 7.3e-6  # wraps around the period; clock offset 7.3 ppm
    y = physics.resample_periodic(x.astype(np.complex64), u0, ratio, 600)
    ref = _exact(spec, u0 + np.arange(600) * ratio)
    err_db = 10 * np.log10(np.mean(np.abs(y - ref) ** 2) / np.mean(np.abs(x) ** 2))
    assert err_db < -85.0, err_db


def test_rate_conversion_carrier_offset_and_phase_walk() -> None:
    rng = np.random.default_rng(2)
    n = 2048
    m = np.abs(np.fft.fftfreq(n)) < 0.3
    spec = np.zeros(n, complex)
    spec[m] = rng.standard_normal(m.sum()) + 1j * rng.standard_normal(m.sum())
    x = np.fft.ifft(spec)
    ratio = 1.0 / 1.6  # e.g. a 1 GSa/s DAC read by a 1.6 GSa/s ADC
    cfo = 0.05
    blk = physics.PHASE_BLOCK
    dphase = (rng.standard_normal(-(-3000 // blk)) * 0.05).astype(np.float32)
    y = physics.resample_periodic(
        x.astype(np.complex64), 10.0, ratio, 3000, amp=2.0, cfo_rad_per_sample=cfo,
        phase0=0.3, dphase=dphase,
    )  # fmt: skip
    k = np.arange(3000)
    # the walk: whole blocks before sample k, plus a linear share of the current block
    walk = np.concatenate([[0.0], np.cumsum(dphase.astype(np.float64))])[k // blk]
    walk += (k % blk) / blk * dphase[k // blk]
    phase = 0.3 + cfo * k + walk
    ref = 2.0 * _exact(spec, 10.0 + k * ratio) * np.exp(1j * phase)
    assert np.max(np.abs(y - ref)) / np.sqrt(np.mean(np.abs(ref) ** 2)) < 1e-3


def test_wiener_increments_variance() -> None:
    rng = np.random.default_rng(3)
    n = 200_000 * physics.PHASE_BLOCK
    d = physics.wiener_increments(n, 1e5, 1e9, rng)
    assert d.shape == (200_000,)
    # increment variance 2 pi dnu dt over a block dt = PHASE_BLOCK / fs; sample variance
    # relative standard error sqrt(2/N) = 0.3 %, 5 sigma bound
    var = 2 * math.pi * 1e5 * physics.PHASE_BLOCK / 1e9
    assert np.var(d) == pytest.approx(var, rel=5 * math.sqrt(2 / 200_000))
    assert not np.any(physics.wiener_increments(10, 0.0, 1e9, rng))


def test_detector_quantises_to_12_bits_and_clips() -> None:
    rng = np.random.default_rng(4)
    det = physics.DetectorParams(
        eta=0.6, v_el=0.0, bandwidth_hz=4e8, lo_ref_w=1e-2, shot_rms_lsb=100.0
    )
    sig = np.full(1000, 1e6 + 0j, dtype=np.complex64)  # far beyond full scale
    i, q = physics.detect(sig, det, 1e9, 1e-2, 1.0, rng)
    assert i.dtype == np.int16 and np.all(i[100:] == 2047 * 16) and np.all(i % 16 == 0)
    i, q = physics.detect(np.zeros(1000, np.complex64), det, 1e9, 0.0, 1.0, rng)
    assert not i.any() and not q.any()  # no LO, no electronic noise: nothing
