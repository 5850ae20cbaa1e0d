"""A small synthetic channel following docs/physics.md, written independently of emulator/.

Used by the DSP tests (and as a fallback by the DSP bench) to exercise the receiver chain
without instruments: ideal band-limited DAC (long Kaiser-windowed sinc), clock offsets,
carrier offset, Wiener laser phase noise, channel loss, excess noise, shot and electronic
noise, 12-bit ADC left-justified in int16.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

from drivers.grid import photon_energy
from dsp.rx import AdcScaling
from dsp.waveform import TxFrame

TAPS = 64


def _table(phases: int = 2048) -> np.ndarray:
    half = TAPS // 2
    frac = np.arange(phases + 1)[:, None] / phases
    j = np.arange(TAPS)[None, :]
    t = frac + half - 1 - j
    w = np.i0(10.0 * np.sqrt(np.clip(1 - (t / half) ** 2, 0, None))) / np.i0(10.0)
    h = np.sinc(t) * w
    return (h / h.sum(axis=1, keepdims=True)).astype(np.float64)


@numba.njit(cache=True)
def _resample(d: np.ndarray, u0: float, r: float, n: int, table: np.ndarray) -> np.ndarray:
    """Periodic band-limited interpolation of ``d`` at ``u0 + m r``."""
    size = d.size
    taps = table.shape[1]
    half = taps // 2
    phases = table.shape[0] - 1
    out = np.empty(n, dtype=np.complex128)
    for m in range(n):
        u = u0 + m * r
        i = int(math.floor(u))  # noqa: RUF046 (numba)
        p = int((u - i) * phases + 0.5)
        acc = 0j
        for j in range(taps):
            acc += table[p, j] * d[(i - half + 1 + j) % size]
        out[m] = acc
    return out


@dataclass
class SynthCapture:
    """One synthetic capture plus its calibration captures and the truth."""

    i: np.ndarray
    q: np.ndarray
    shot: tuple[np.ndarray, np.ndarray]
    electronic: tuple[np.ndarray, np.ndarray]
    scale: AdcScaling
    v_a: float
    monitor_power_w: float
    t: float
    eta: float
    xi: float
    v_el: float


def synth_capture(
    tx: TxFrame,
    rng: np.random.Generator,
    *,
    t: float = 0.5,
    eta: float = 0.6,
    xi: float = 0.0,
    v_el: float = 0.05,
    v_a: float = 4.0,
    linewidth_hz: float = 0.0,
    cfo_hz: float = 0.0,
    ppm_tx: float = 0.0,
    ppm_rx: float = 0.0,
    n_points: int | None = None,
    shot_rms_lsb: float = 25.0,
    frequency_hz: float = 193.4e12,
    start: float | None = None,
) -> SynthCapture:
    """Simulate Bob's ADC records for ``tx`` played in a loop (plus calibration captures).

    ``linewidth_hz`` is the sum of both lasers' linewidths. The VOA is set so that Alice's
    modulation variance is ``v_a``; the monitor power that implies is returned as well.
    """
    fmt = tx.fmt
    n = fmt.capture_points if n_points is None else n_points
    fs = fmt.adc_rate_hz
    d = tx.i.astype(np.float64) + 1j * tx.q.astype(np.float64)
    # kappa from V_A = 2 kappa^2 A^2 E_p / R_dac
    kappa = math.sqrt(v_a * fmt.dac_rate_hz / (2 * tx.amplitude**2 * tx.pulse_energy))
    p_out = kappa**2 * photon_energy(frequency_hz) * tx.mean_power
    r = (1 + ppm_tx * 1e-6) / (1 + ppm_rx * 1e-6) * fmt.dac_rate_hz / fs
    u0 = rng.uniform(0, d.size) if start is None else start
    e = _resample(d, u0, r, n, _table()) * kappa  # sqrt(photons/s)
    m = np.arange(n)
    phi = 2 * np.pi * cfo_hz / fs * m
    if linewidth_hz > 0:
        phi += np.cumsum(rng.normal(0, math.sqrt(2 * np.pi * linewidth_hz / fs), n))
    sig = math.sqrt(2 * eta * t / fs) * e * np.exp(1j * (phi + rng.uniform(0, 2 * np.pi)))
    noise_std = math.sqrt(1 + eta * t * xi / 2)

    def detect(s: np.ndarray | None, lo_on: bool) -> tuple[np.ndarray, np.ndarray]:
        g = shot_rms_lsb if lo_on else 0.0
        z = rng.standard_normal(n) + 1j * rng.standard_normal(n)
        v = g * ((0 if s is None else s) + (noise_std if s is not None else 1.0) * z)
        v = v + shot_rms_lsb * math.sqrt(v_el) * (
            rng.standard_normal(n) + 1j * rng.standard_normal(n)
        )
        ci = np.clip(np.rint(v.real), -2048, 2047).astype(np.int16) * np.int16(16)
        cq = np.clip(np.rint(v.imag), -2048, 2047).astype(np.int16) * np.int16(16)
        return ci, cq

    i, q = detect(sig, True)
    shot = detect(None, True)
    el = detect(None, False)
    return SynthCapture(
        i=i,
        q=q,
        shot=shot,
        electronic=el,
        scale=AdcScaling(ymult=1e-3 / 16),
        v_a=v_a,
        monitor_power_w=p_out,
        t=t,
        eta=eta,
        xi=xi,
        v_el=v_el,
    )


def moment_estimates(x_alpha: np.ndarray, y: np.ndarray, eta: float, v_el: float) -> dict:
    """Simple moment estimates of T and xi from Alice's alpha and Bob's SNU symbols."""
    xa = np.concatenate([2 * x_alpha.real, 2 * x_alpha.imag])
    yb = np.concatenate([y.real, y.imag]).astype(np.float64)
    tau = np.dot(xa, yb) / np.dot(xa, xa)  # sqrt(eta T / 2)
    resid = yb - tau * xa
    sigma2 = np.mean(resid**2)
    t_hat = 2 * tau**2 / eta
    xi_hat = (sigma2 - 1 - v_el) / (eta * t_hat / 2)
    v_a = np.mean(xa**2)
    return {"t": t_hat, "xi": xi_hat, "sigma2": sigma2, "v_a": v_a, "n": xa.size}
