"""Noise calibration moved to another carrier offset through the captures' spectra.

Synthetic captures with strongly coloured shot noise (a first-order 60 MHz low-pass at
1 GSa/s, so moving the matched filter by 40 MHz changes N0 by several per cent) and white
electronic noise. ``at_cfo`` must reproduce the calibration computed directly at the new
offset from the same captures: both are estimates from the same samples, so they differ
only by the filter's discretisation on ``PSD_BINS`` bins and by which samples the
symbol-spaced decimation keeps, well below the statistical error ``n0_rel_stderr``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from dsp.calibration import calibrate
from dsp.frame import FrameFormat
from dsp.rx import AdcScaling

FMT = FrameFormat(n_symbols=131072, preamble_length=2039)
SCALE = AdcScaling(ymult=1e-4)


def _capture(rng: np.random.Generator, n: int, std: float, lowpass_hz: float | None):
    z = rng.standard_normal(n) + 1j * rng.standard_normal(n)
    if lowpass_hz is not None:
        b, a = signal.butter(1, lowpass_hz / (FMT.adc_rate_hz / 2))
        z = signal.lfilter(b, a, z)
    z *= std / np.sqrt(np.mean(np.abs(z) ** 2) / 2)
    return np.round(z.real).astype(np.int16), np.round(z.imag).astype(np.int16), SCALE, SCALE


@pytest.fixture(scope="module")
def captures():
    rng = np.random.default_rng(21)
    shot = [_capture(rng, 1 << 20, 2000.0, 60e6) for _ in range(2)]
    el = _capture(rng, 1 << 19, 300.0, None)
    return shot, el


def test_at_cfo_matches_direct_calibration(captures):
    shot, el = captures
    c0 = calibrate(shot, el, 0.65, FMT, cfo_hz=0.0)
    c40 = calibrate(shot, el, 0.65, FMT, cfo_hz=40e6)
    moved = c0.at_cfo(40e6, FMT)
    assert abs(c40.n0 / c0.n0 - 1) > 10 * c0.n0_rel_stderr  # the offset matters here
    assert abs(moved.n0 / c40.n0 - 1) < 0.2 * c0.n0_rel_stderr
    assert abs(moved.v_el / c40.v_el - 1) < 0.02
    assert moved.cfo_hz == 40e6 and moved.n_shot == c0.n_shot
    assert c0.at_cfo(0.0, FMT) is c0


def test_pooled_shot_captures_count_every_sample(captures):
    shot, el = captures
    one = calibrate(shot[0], el, 0.65, FMT)
    both = calibrate(shot, el, 0.65, FMT)
    assert both.n_shot == 2 * one.n_shot
    assert both.n0_rel_stderr < one.n0_rel_stderr
