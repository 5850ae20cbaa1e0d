"""Waveform propagation: the transmitter's DAC samples in, the receiver's ADC samples out.

Implements docs/physics.md on sampled waveforms. Everything is expressed in
*sample-normalised shot-noise units*: at the ADC sample rate ``fs`` complex white shot noise
of unit spectral density per quadrature has per-sample variance ``fs``; dividing by
``sqrt(fs)`` gives unit variance per quadrature, so the signal term of one ADC sample is

    s[m] = sqrt(2 eta T / fs) * E(t_m) * exp(i phi(t_m))

with ``E`` in sqrt(photons/s). A unit-energy matched filter ``h`` (``sum h**2 == 1``) over
these samples then yields ``y = sqrt(2 eta T) alpha + z`` with ``Var(z) = 1`` per quadrature
from shot noise, as in the physics contract.

The DAC reconstruction is ideal band-limited interpolation of the periodic sequence,
approximated by a Kaiser-windowed sinc (``TAPS`` taps, ``PHASES`` table rows, linear
interpolation between rows): its error is below -90 dB for content up to 0.4 of the DAC
rate (see ``tests/emulator/test_physics_resampler.py``). The kernels are numba-compiled
loops over complex64 data; only the sample clock position is kept in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np

TAPS = 32
"""Length of the windowed-sinc interpolation kernel (even)."""
PHASES = 1024
"""Fractional-delay rows in the kernel table (linear interpolation between rows)."""
KAISER_BETA = 9.0
"""Kaiser window shape (interpolation error about -94 dB up to 0.4 fs with 32 taps)."""

PHASE_BLOCK = 1
"""ADC samples per laser phase-noise increment (the phase is linear inside a block). One:
a Wiener phase at the full sample rate keeps the Lorentzian skirts of a strong pilot tone
out to the Nyquist frequency, where part of them falls into the quantum band (with 100 kHz
lasers and 15 dB pilots that is ~0.02 SNU of excess noise, see docs/dsp.md); coarser blocks
would cut those skirts off above ``fs / (2 PHASE_BLOCK)`` and flatter the receiver."""

ADC_BITS = 12
ADC_LSB_SHIFT = 16 - ADC_BITS
"""The 12-bit code is left-justified in int16 (raw = code * 16), as on Tektronix scopes."""
ADC_CODE_MAX = 2 ** (ADC_BITS - 1) - 1
ADC_CODE_MIN = -(2 ** (ADC_BITS - 1))


def _kernel_table(taps: int = TAPS, phases: int = PHASES, beta: float = KAISER_BETA) -> np.ndarray:
    """Rows ``p = 0..phases``: weights for fractional delay ``p / phases`` (row sums are 1)."""
    half = taps // 2
    frac = np.arange(phases + 1, dtype=np.float64)[:, None] / phases
    j = np.arange(taps, dtype=np.float64)[None, :]
    # tap j multiplies x[i - half + 1 + j]; its distance from u = i + frac is t
    t = frac + half - 1 - j
    w = np.i0(beta * np.sqrt(np.clip(1.0 - (t / half) ** 2, 0.0, None))) / np.i0(beta)
    h = np.sinc(t) * w
    h /= h.sum(axis=1, keepdims=True)
    return np.ascontiguousarray(h.astype(np.float32))


_TABLE = _kernel_table()


@numba.njit(cache=True, nogil=True, fastmath=True)
def _resample_kernel(
    xr: np.ndarray,
    xi: np.ndarray,
    n_period: int,
    table: np.ndarray,
    u0: float,
    ratio: float,
    amp: float,
    cfo_rad_per_sample: float,
    phase0: float,
    dphase: np.ndarray,
    out: np.ndarray,
) -> None:
    """out[m] = amp * x(u0 + m*ratio) * exp(i*phi[m]), phi = phase0 + m*cfo + phase walk.

    ``xr``/``xi`` hold the periodic sequence padded with ``taps`` wrapped samples on each
    side. ``dphase[b]`` is the phase-walk increment over block ``b`` of ``PHASE_BLOCK``
    samples, spread linearly over the block. The carrier is re-anchored to the exactly
    accumulated float64 phase at every block start and advanced by complex rotation inside.
    """
    taps = table.shape[1]
    phases = table.shape[0] - 1
    half = taps // 2
    two_pi = 2.0 * math.pi
    ph = phase0
    c = 1.0
    s = 0.0
    c2 = 1.0
    s2 = 0.0
    for m in range(out.shape[0]):
        if m % PHASE_BLOCK == 0:
            ph = ph % two_pi
            c = math.cos(ph)
            s = math.sin(ph)
            d = dphase[m // PHASE_BLOCK]
            step = cfo_rad_per_sample + d / PHASE_BLOCK
            c2 = math.cos(step)
            s2 = math.sin(step)
            ph += PHASE_BLOCK * cfo_rad_per_sample + d
        u = u0 + m * ratio
        fl = math.floor(u)
        frac = u - fl
        i = int(fl) % n_period
        pos = frac * phases
        p = int(pos)
        if p >= phases:
            p = phases - 1
        a = np.float32(pos - p)
        b = np.float32(1.0) - a
        base = i - half + 1 + taps
        ar = np.float32(0.0)
        ai = np.float32(0.0)
        for j in range(taps):
            wj = b * table[p, j] + a * table[p + 1, j]
            ar += wj * xr[base + j]
            ai += wj * xi[base + j]
        out[m] = complex(amp * (ar * c - ai * s), amp * (ar * s + ai * c))
        c, s = c * c2 - s * s2, c * s2 + s * c2


class PeriodicWaveform:
    """A periodic complex sequence prepared for :func:`resample_periodic` (padded, split).

    Preparing once per upload saves two copies of the waveform per acquisition.
    """

    __slots__ = ("mean_power", "n", "xi", "xr")

    def __init__(self, x: np.ndarray) -> None:
        x = np.ascontiguousarray(x, dtype=np.complex64)
        self.n = int(x.shape[0])
        taps = _TABLE.shape[1]
        reps = -(-2 * taps // self.n) + 1
        tiled = np.tile(x, reps) if reps > 1 else x
        xp = np.concatenate([tiled[-taps:], x, tiled[:taps]])
        self.xr = np.ascontiguousarray(xp.real)
        self.xi = np.ascontiguousarray(xp.imag)
        flat = x.view(np.float32)
        self.mean_power = float(np.dot(flat, flat)) / self.n


def resample_periodic(
    x: np.ndarray | PeriodicWaveform,
    u0: float,
    ratio: float,
    n_out: int,
    amp: float = 1.0,
    cfo_rad_per_sample: float = 0.0,
    phase0: float = 0.0,
    dphase: np.ndarray | None = None,
) -> np.ndarray:
    """Band-limited samples of the periodic sequence ``x`` at positions ``u0 + m * ratio``.

    Positions are in units of ``x``'s sample interval; optionally scaled by ``amp`` and
    rotated by a carrier offset and a phase-noise walk (``dphase`` = increments per block of
    ``PHASE_BLOCK`` samples, see :func:`wiener_increments`). Returns complex64 of length
    ``n_out``.
    """
    wf = x if isinstance(x, PeriodicWaveform) else PeriodicWaveform(x)
    n_blocks = -(-n_out // PHASE_BLOCK)
    if dphase is None:
        dphase = np.zeros(n_blocks, dtype=np.float32)
    if dphase.shape[0] < n_blocks:
        raise ValueError(f"dphase has {dphase.shape[0]} blocks, {n_blocks} needed")
    out = np.empty(n_out, dtype=np.complex64)
    _resample_kernel(
        wf.xr,
        wf.xi,
        wf.n,
        _TABLE,
        float(u0) % wf.n,
        float(ratio),
        float(amp),
        float(cfo_rad_per_sample),
        float(phase0),
        dphase,
        out,
    )
    return out


@numba.njit(cache=True, nogil=True)
def _detect_kernel(
    sig: np.ndarray,
    noise: np.ndarray,
    noise_std: float,
    el: np.ndarray,
    el_std: float,
    b: np.ndarray,
    a: np.ndarray,
    gain: float,
    shift: int,
    code_min: int,
    code_max: int,
    out_i: np.ndarray,
    out_q: np.ndarray,
) -> None:
    """Add input noise, run the analogue biquad low-pass, add electronic noise, quantise."""
    z1r = 0.0
    z1i = 0.0
    z2r = 0.0
    z2i = 0.0
    b0, b1, b2 = b[0], b[1], b[2]
    a1, a2 = a[1], a[2]
    scale = 1 << shift
    for m in range(sig.shape[0]):
        xr = sig[m].real + noise_std * noise[m].real
        xi = sig[m].imag + noise_std * noise[m].imag
        yr = b0 * xr + z1r
        yi = b0 * xi + z1i
        z1r = b1 * xr - a1 * yr + z2r
        z1i = b1 * xi - a1 * yi + z2i
        z2r = b2 * xr - a2 * yr
        z2i = b2 * xi - a2 * yi
        vr = gain * yr + el_std * el[m].real
        vi = gain * yi + el_std * el[m].imag
        qr = round(vr)
        qi = round(vi)
        qr = min(max(qr, code_min), code_max)
        qi = min(max(qi, code_min), code_max)
        out_i[m] = np.int16(int(qr) * scale)
        out_q[m] = np.int16(int(qi) * scale)


@dataclass(frozen=True)
class DetectorParams:
    """What the receiver hardware does to the field (all hidden from the host except eta)."""

    eta: float
    """Detector efficiency."""
    v_el: float
    """Electronic noise in SNU at the reference LO power (white, independent of LO power)."""
    bandwidth_hz: float
    """-3 dB bandwidth of the analogue front end (2nd-order Butterworth)."""
    lo_ref_w: float
    """LO power at which one shot-noise unit is ``shot_rms_lsb`` ADC codes rms (pre-filter)."""
    shot_rms_lsb: float
    """Per-quadrature rms of white shot noise per sample, in ADC codes, at ``lo_ref_w``."""


def analogue_filter(bandwidth_hz: float, fs: float) -> tuple[np.ndarray, np.ndarray]:
    """2nd-order Butterworth low-pass at ``bandwidth_hz`` (clamped to 0.45 fs).

    Bilinear transform with pre-warping, so the -3 dB point is exact; returns ``(b, a)``.
    """
    k = math.tan(math.pi * min(bandwidth_hz, 0.45 * fs) / fs)
    norm = 1.0 / (1.0 + math.sqrt(2.0) * k + k * k)
    b0 = k * k * norm
    b = np.array([b0, 2.0 * b0, b0])
    a = np.array([1.0, 2.0 * (k * k - 1.0) * norm, (1.0 - math.sqrt(2.0) * k + k * k) * norm])
    return b, a


def detect(
    sig: np.ndarray,
    det: DetectorParams,
    fs: float,
    lo_w: float,
    input_noise_var: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Heterodyne detection + ADC of sample-normalised signal ``sig`` (complex64).

    ``input_noise_var`` is the per-quadrature variance of the white noise at the detector
    input in SNU (1 for shot noise, plus ``eta T xi / 2``; 0 with the LO off). Returns raw
    int16 I and Q codes (12-bit left-justified).
    """
    n = sig.shape[0]
    gain = det.shot_rms_lsb * math.sqrt(max(lo_w, 0.0) / det.lo_ref_w)
    el_std = det.shot_rms_lsb * math.sqrt(det.v_el)
    b, a = analogue_filter(det.bandwidth_hz, fs)
    noise = rng.standard_normal(2 * n, dtype=np.float32).view(np.complex64)
    el = rng.standard_normal(2 * n, dtype=np.float32).view(np.complex64)
    out_i = np.empty(n, dtype=np.int16)
    out_q = np.empty(n, dtype=np.int16)
    _detect_kernel(
        sig,
        noise,
        math.sqrt(max(input_noise_var, 0.0)),
        el,
        el_std,
        b,
        a,
        gain,
        ADC_LSB_SHIFT,
        ADC_CODE_MIN,
        ADC_CODE_MAX,
        out_i,
        out_q,
    )
    return out_i, out_q


def wiener_increments(
    n: int, linewidth_hz: float, fs: float, rng: np.random.Generator
) -> np.ndarray:
    """Phase increments (float32) of a Lorentzian laser for ``n`` samples at ``fs``.

    One increment per block of ``PHASE_BLOCK`` samples, variance
    ``2 pi linewidth * PHASE_BLOCK / fs`` (a Wiener process sampled at fs / PHASE_BLOCK).
    """
    n_blocks = -(-n // PHASE_BLOCK)
    if linewidth_hz <= 0.0:
        return np.zeros(n_blocks, dtype=np.float32)
    std = math.sqrt(2.0 * math.pi * linewidth_hz * PHASE_BLOCK / fs)
    d = rng.standard_normal(n_blocks, dtype=np.float32)
    d *= np.float32(std)
    return d
