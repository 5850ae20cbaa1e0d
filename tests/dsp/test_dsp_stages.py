"""Individual receiver stages on small synthetic signals (each stage testable alone)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsp import rx
from dsp.frame import FrameFormat

FMT = FrameFormat(n_symbols=65536, preamble_length=1021)


def two_pilots(n: int, ppm: float, cfo_hz: float, linewidth_hz: float, rng) -> np.ndarray:
    """The two pilots of FMT (amplitude 1 each) in white noise of variance 2 per sample."""
    m = np.arange(n)
    nu_p = FMT.pilot_offset_hz / FMT.adc_rate_hz * (1 + ppm * 1e-6)
    phi = 2 * np.pi * cfo_hz / FMT.adc_rate_hz * m
    if linewidth_hz:
        phi = phi + np.cumsum(rng.normal(0, math.sqrt(2 * np.pi * linewidth_hz / 1e9), n))
    x = np.exp(1j * (phi + 2 * np.pi * nu_p * m)) + np.exp(1j * (phi - 2 * np.pi * nu_p * m))
    x += rng.standard_normal(n) + 1j * rng.standard_normal(n)
    return x.astype(np.complex64)


@pytest.mark.parametrize("ppm", [-100.0, 3.0, 100.0])
def test_clock_and_cfo_from_pilots(ppm):
    rng = np.random.default_rng(int(ppm) + 500)
    n = 1 << 20
    x = two_pilots(n, ppm, -37.5e6, 0.0, rng)
    spec = rx.spectrum(x, n)
    search = rx.find_pilots(spec, FMT)
    tracks = rx.extract_pilots(spec, search, 2e6, FMT, n)
    clock = rx.recover_clock(tracks, FMT)
    # SNR 0.5 per sample per pilot over 1e6 samples: slope error ~1e-4 ppm
    assert clock.ppm == pytest.approx(ppm, abs=0.01)
    assert clock.cfo_hz == pytest.approx(-37.5e6, abs=5e3)
    assert rx.pilot_snr(spec, search, FMT) == pytest.approx(1.0, rel=0.1)


def test_linewidth_estimate_and_tracking():
    rng = np.random.default_rng(9)
    n = 1 << 21
    x = two_pilots(n, 20.0, 10e6, 200e3, rng) * np.float32(10.0)  # snr 100
    spec = rx.spectrum(x, n)
    search = rx.find_pilots(spec, FMT)
    tracks = rx.extract_pilots(spec, search, 2e6, FMT, n)
    clock = rx.recover_clock(tracks, FMT)
    step, theta, _ = rx.carrier_phase(tracks, clock, FMT)
    # ~100 independent 20-us lags in 2 ms: relative SE ~0.15
    assert rx.estimate_linewidth(step, theta[100:-100], 1e9) == pytest.approx(200e3, rel=0.45)
    b = rx.pilot_halfwidth(10.0, FMT, 200e3)
    assert b == pytest.approx(math.sqrt(200e3 * 1e9 * 10 / math.pi), rel=1e-9)
    tracking, leakage = rx.phase_noise_excess(FMT, 200e3, 10.0, b)
    # Wiener smoother: sqrt(pi dnu / (snr fs)) / 2 = 4.0e-3 rad^2
    assert tracking == pytest.approx(math.sqrt(math.pi * 200e3 / (10 * 1e9)) / 2, rel=0.05)
    assert 0 < leakage < 0.01


def test_fft_length_is_fast_and_aligned():
    for n in (1000, 4_018_176, 1_065_000, 12345):
        size = rx.fft_length(n, FMT)
        assert size >= n and size % (2 * FMT.sps_adc) == 0
        rest = size
        for p in (2, 3, 5, 7):
            while rest % p == 0:
                rest //= p
        assert rest == 1
        assert size < 1.1 * n + 64


def test_interpolator_accuracy():
    # a band-limited tone at the quantum band edge (0.275 cycles per 2-sps sample)
    m = np.arange(4096)
    f = 0.27
    y = np.exp(2j * np.pi * f * m).astype(np.complex64)
    t = np.linspace(100.0, 3900.0, 1001)
    v = rx.interpolate(y, t)
    # nearest of 1024 table rows: timing within 1/2048 sample, phase error <= 2 pi f / 2048
    assert np.max(np.abs(v - np.exp(2j * np.pi * f * t))) < 2 * np.pi * f / 2048 + 1e-4


def test_copy_circular_wraps():
    src = np.arange(10, dtype=np.complex64)
    out = np.empty(4, dtype=np.complex64)
    rx._copy_circular(src, 8, out)
    assert out.real.tolist() == [8, 9, 0, 1]
    rx._copy_circular(src, -3, out)
    assert out.real.tolist() == [7, 8, 9, 0]


def test_clipping_detection_ignores_gaussian_tails():
    rng = np.random.default_rng(1)
    codes = np.clip(np.rint(rng.normal(0, 300, 200_000)), -2048, 2047).astype(np.int16) * 16
    rx.check_clipping(codes, codes)  # 6.8 sigma from full scale: no clipping
    clipped = np.clip(np.rint(rng.normal(0, 900, 200_000)), -2048, 2047).astype(np.int16)
    with pytest.raises(rx.ClippingError, match="CH1"):
        rx.check_clipping(clipped, codes)


def test_measured_phase_error_matches_the_true_tracking_error():
    """rx.measure_phase_error against the actual error of the smoothed carrier phase."""
    rng = np.random.default_rng(21)
    n = 1 << 21
    m = np.arange(n)
    nu_p = FMT.pilot_offset_hz / FMT.adc_rate_hz
    walk = np.cumsum(rng.normal(0, math.sqrt(2 * np.pi * 200e3 / 1e9), n))
    phi = 2 * np.pi * 12e6 / 1e9 * m + walk
    x = 3.0 * (
        np.exp(1j * (phi + 2 * np.pi * nu_p * m)) + np.exp(1j * (phi - 2 * np.pi * nu_p * m))
    )
    x = (x + rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64)  # snr 9
    spec = rx.spectrum(x, n)
    search = rx.find_pilots(spec, FMT)
    clock = rx.recover_clock(rx.extract_pilots(spec, search, 2e6, FMT, n), FMT)
    b = rx.pilot_halfwidth(9.0, FMT, 200e3)
    track = rx.combine_pilots(rx.extract_pilots(spec, search, b, FMT, n), clock, FMT)
    assert track.snr == pytest.approx(9.0, rel=0.05)
    edge = int(FMT.capture_margin / 2 / track.step)
    j = np.arange(edge, int(n / track.step) - edge)
    err = track.theta[j] - walk[np.round(j * track.step).astype(int)]
    err -= np.polyval(np.polyfit(j, err, 1), j)
    true_var = float(np.var(err))
    est = rx.measure_phase_error(spec, search, clock, FMT, b, 200e3, n)
    # model ~ sqrt(pi dnu / (snr fs)) / 2 = 4.2e-3; the estimate within 3 of its SEs + 5 %
    assert est.var == pytest.approx(true_var, abs=3 * est.stderr + 0.05 * true_var)
    assert est.noise > 0 and est.lag > 0 and est.tail >= 0


def test_phase_error_correction_inverts_the_gain_loss():
    t, xi, v_a, s = 0.3, 0.02, 4.0, 0.01
    seen_t = t * math.exp(-s)
    seen_xi = xi * math.exp(s) + v_a * (math.exp(s) - 1)
    c = rx.correct_for_phase_error(seen_t, 1e-3, seen_xi, 1e-2, v_a, s, 0.0)
    assert abs(c.T - t) < 1e-12
    assert c.xi == pytest.approx(xi, abs=1e-12)
    assert abs(c.T_stderr - 1e-3 * math.exp(s)) < 1e-15
    wider = rx.correct_for_phase_error(seen_t, 1e-3, seen_xi, 1e-2, v_a, s, 1e-3)
    assert wider.T_stderr > c.T_stderr and wider.xi_stderr > c.xi_stderr
