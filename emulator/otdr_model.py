"""OTDR trace synthesis from the fibre, and the instrument's own event analysis of its trace.

Synthesis (what the photodiode sees, in linear power, then displayed in one-way dB):

* Rayleigh backscatter from ``[z - dz_p, z]`` where ``dz_p = c tau / (2 n)`` is the pulse
  length in distance: ``p_bs(z) = tau_ns * (1550 nm / lambda)^4 * 10^(-2 A(z) / 10)`` in
  units of the 1 ns backscatter at launch (``B_1ns = -79.5 dB`` at 1550 nm), where ``A(z)``
  is the one-way loss up to ``z`` (switch, fibre attenuation, events).
* Fresnel reflections of reflectance ``R``: a flat-topped peak of height
  ``R / B_1ns * 10^(-2 A / 10)`` and width ``dz_p`` starting at the event (event dead zone),
  clipped at the receiver's saturation level, followed by a recovery tail whose length
  grows with the pulse width (attenuation dead zone).
* Additive receiver noise of rms ``SIGMA0 / sqrt(tau_ns * t_avg)``: the noise floor falls as
  ``1/sqrt(averaging time)``.
* Display: ``y = 5 log10(p / P_REF)`` (one-way convention: the backscatter slope reads the
  fibre attenuation in dB/km), clipped to ``[0, 65.535]`` dB and quantised to 1 mdB.

Distances are converted with the instrument's index of refraction setting: a wrong IOR
stretches the distance axis by ``n_true / n_set``.

Analysis: the fibre end from the noise floor, reflective events as peaks above a median
baseline (located at the half-height of their leading edge), non-reflective events from a
two-window weighted line-fit step detector (located at the centroid of the step response
minus half the pulse length), then a common slope and per-segment levels give each event's
loss and the cumulative loss. Nothing here reads the truth: only the noisy trace and the
instrument's own settings.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field

import numpy as np

C = 299_792_458.0
BS_1NS_DB = -79.5
"""Backscatter coefficient for a 1 ns pulse at 1550 nm (two-way, dB)."""
SIGMA0 = 0.17
"""Receiver noise rms in units of the 1 ns launch backscatter, for 1 ns x 1 s."""
P_REF = 1e-8
"""Display zero: y = 5 log10(p / P_REF)."""
P_SAT = 1e5
"""Receiver saturation (y = 65 dB)."""
Y_MAX = 65.535
FRONT_REFLECTANCE_DB = -45.0
"""The OTDR's own front-panel connector."""
TAIL_GAIN = 3e-3
LOSS_THRESHOLD_DB = 0.1
"""Smallest non-reflective loss the analysis reports."""
REFLECTANCE_THRESHOLD_DB = 0.3
"""Smallest peak (one-way dB above the backscatter) the analysis reports as reflective."""

PULSE_WIDTHS_S = (
    3e-9,
    10e-9,
    20e-9,
    50e-9,
    100e-9,
    200e-9,
    500e-9,
    1e-6,
    2e-6,
    5e-6,
    10e-6,
    20e-6,
)
WAVELENGTHS_M = (1310e-9, 1550e-9, 1625e-9, 1650e-9)
SPACINGS_M = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
MAX_POINTS = 131072

EVENT_REFLECTIVE = "REFLECTIVE"
EVENT_NONREFLECTIVE = "NONREFLECTIVE"
EVENT_END = "END"


@dataclass(frozen=True)
class OtdrSettings:
    wavelength_m: float = 1625e-9
    pulse_s: float = 100e-9
    range_m: float = 50_000.0
    averaging_s: float = 10.0
    ior: float = 1.4682


@dataclass
class FibrePath:
    """What the OTDR looks into (true distances along the fibre)."""

    front_loss_db: float = 0.0
    length_m: float = 0.0
    ior: float = 1.4682
    attenuation_db_per_km: float = 0.2
    events: list[tuple[float, float, float | None]] = field(default_factory=list)
    """(position_m, one-way loss dB, reflectance dB or None), before the end."""
    end_reflectance_db: float | None = -50.0


@dataclass
class OtdrTrace:
    settings: OtdrSettings
    spacing_m: float
    y_db: np.ndarray
    """Displayed level in dB (float64, already quantised to 1 mdB)."""
    start_m: float = 0.0

    @property
    def points(self) -> int:
        return int(self.y_db.shape[0])

    def encode(self) -> bytes:
        """Payload of ``TRAC:DATA?``: big-endian uint32 count, then big-endian uint16 mdB."""
        codes = np.rint(self.y_db * 1000.0).astype(">u2")
        return struct.pack(">I", self.points) + codes.tobytes()

    def parameters(self) -> str:
        """``TRAC:PAR?``: points,spacing_m,start_m,wavelength_m,pulse_s,ior,range_m,averaging_s."""
        s = self.settings
        return (
            f"{self.points},{self.spacing_m:.6G},{self.start_m:.6G},{s.wavelength_m:.6G},"
            f"{s.pulse_s:.6G},{s.ior:.6G},{s.range_m:.6G},{s.averaging_s:.6G}"
        )


@dataclass(frozen=True)
class OtdrEvent:
    location_m: float
    type: str
    loss_db: float
    reflectance_db: float
    """NaN for non-reflective events."""
    cumulative_db: float


@dataclass
class OtdrAnalysis:
    events: list[OtdrEvent]
    attenuation_db_per_km: float
    end_m: float | None


def sample_spacing(range_m: float) -> float:
    for s in SPACINGS_M:
        if range_m / s < MAX_POINTS:
            return s
    return SPACINGS_M[-1]


def pulse_length_m(settings: OtdrSettings) -> float:
    """Pulse length in displayed distance: c tau / (2 n_set)."""
    return C * settings.pulse_s / (2.0 * settings.ior)


def noise_rms(settings: OtdrSettings) -> float:
    return SIGMA0 / math.sqrt(settings.pulse_s * 1e9 * settings.averaging_s)


def rayleigh_scale(wavelength_m: float) -> float:
    return (1550e-9 / wavelength_m) ** 4


def _tail_length_m(dzp: float) -> float:
    return 0.5 * dzp + 2.0


def synthesise(settings: OtdrSettings, path: FibrePath, rng: np.random.Generator) -> OtdrTrace:
    """A noisy displayed trace of ``path`` with ``settings``."""
    dz = sample_spacing(settings.range_m)
    n = int(settings.range_m / dz) + 1
    stretch = path.ior / settings.ior  # displayed metres per true metre
    dzp = pulse_length_m(settings)
    tau_ns = settings.pulse_s * 1e9
    s_l = rayleigh_scale(settings.wavelength_m)
    rho = tau_ns / dzp * s_l  # backscatter per displayed metre, 1-ns units
    alpha_disp = path.attenuation_db_per_km / 1000.0 / stretch  # dB per displayed metre
    end = path.length_m * stretch
    ev = sorted((p * stretch, loss, refl) for p, loss, refl in path.events)
    z_mid = (np.arange(n) + 0.5) * dz
    a = path.front_loss_db + alpha_disp * z_mid
    for pos, loss, _ in ev:
        a = a + np.where(z_mid > pos, loss, 0.0)
    t2 = 10.0 ** (-0.2 * a)
    bins = rho * dz * t2
    frac_in = np.clip((end - np.arange(n) * dz) / dz, 0.0, 1.0)
    bins *= frac_in
    refl_w = 10.0 ** (-BS_1NS_DB / 10.0)

    def add_reflection(pos: float, refl_db: float, loss_before: float) -> None:
        if pos >= n * dz:
            return
        w = 10.0 ** (refl_db / 10.0) * refl_w * 10.0 ** (-0.2 * loss_before)
        x = pos / dz
        j = int(x)
        f = x - j
        bins[j] += w * (1.0 - f)
        if j + 1 < n:
            bins[j + 1] += w * f

    add_reflection(0.0, FRONT_REFLECTANCE_DB, 0.0)
    cum = path.front_loss_db
    for pos, loss, refl in ev:
        if refl is not None and pos < end:
            add_reflection(pos, refl, cum + alpha_disp * pos)
        cum += loss
    if path.length_m > 0 and path.end_reflectance_db is not None:
        add_reflection(end, path.end_reflectance_db, cum + alpha_disp * end)
    csum = np.concatenate([[0.0], np.cumsum(bins)])
    k = np.arange(n, dtype=np.float64)
    lag = dzp / dz
    p = np.interp(k, np.arange(n + 1), csum) - np.interp(k - lag, np.arange(n + 1), csum, left=0.0)
    over = np.maximum(p - P_SAT, 0.0)
    p = np.minimum(p, P_SAT)
    if over.any():
        ell = _tail_length_m(dzp)
        decay = math.exp(-dz / ell)
        p = p + _exp_tail(over, decay, TAIL_GAIN * dz / ell)
    p = p + rng.standard_normal(n) * noise_rms(settings)
    y = 5.0 * np.log10(np.maximum(np.abs(p), 1e-3 * noise_rms(settings)) / P_REF)
    y = np.round(np.clip(y, 0.0, Y_MAX), 3)
    return OtdrTrace(settings=settings, spacing_m=dz, y_db=y)


# --------------------------------------------------------------------------- analysis


def _exp_tail(x: np.ndarray, decay: float, gain: float) -> np.ndarray:
    """Causal one-pole response ``y[k] = gain * sum_{j<=k} x[j] decay^(k-j)`` (FFT)."""
    n = x.shape[0]
    m = min(n, math.ceil(40.0 / max(-math.log(decay), 1e-12)) + 1)
    kernel = gain * decay ** np.arange(m)
    size = 1 << math.ceil(math.log2(n + m))
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(kernel, size), size)[:n]


def _running_median(x: np.ndarray, w: int) -> np.ndarray:
    """Centred running median over ``w`` (odd) samples, edges padded with the end values."""
    half = w // 2
    padded = np.concatenate([np.full(half, x[0]), x, np.full(half, x[-1])])
    return np.median(np.lib.stride_tricks.sliding_window_view(padded, w), axis=1)


def _moving_average(x: np.ndarray, w: int) -> np.ndarray:
    if w <= 1:
        return x.copy()
    c = np.concatenate([[0.0], np.cumsum(x)])
    half = w // 2
    idx = np.arange(x.shape[0])
    lo = np.clip(idx - half, 0, x.shape[0])
    hi = np.clip(idx - half + w, 0, x.shape[0])
    return (c[hi] - c[lo]) / np.maximum(hi - lo, 1)


def _window_fits(
    z: np.ndarray, y: np.ndarray, w: np.ndarray, lo: np.ndarray, hi: np.ndarray, at: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted line fits over index windows [lo, hi): (value at ``at``, its variance)."""
    zc = z - z.mean()
    atc = at - z.mean()
    sums = [
        np.concatenate([[0.0], np.cumsum(v)]) for v in (w, w * zc, w * zc * zc, w * y, w * zc * y)
    ]
    s0, s1, s2, sy, szy = (s[hi] - s[lo] for s in sums)
    det = s0 * s2 - s1 * s1
    ok = (det > 1e-12 * np.maximum(s0 * s2, 1e-300)) & (s0 > 0)
    det = np.where(ok, det, 1.0)
    slope = (s0 * szy - s1 * sy) / det
    icpt = (s2 * sy - s1 * szy) / det
    val = icpt + slope * atc
    var = (s2 - 2 * atc * s1 + atc * atc * s0) / det
    return np.where(ok, val, np.nan), np.where(ok, var, np.inf)


def analyse(trace: OtdrTrace) -> OtdrAnalysis:
    """The instrument's event table from its own (noisy) trace."""
    st = trace.settings
    dz = trace.spacing_m
    y = trace.y_db
    n = y.shape[0]
    z = np.arange(n) * dz + trace.start_m
    dzp = pulse_length_m(st)
    lp = max(dzp / dz, 1.0)  # pulse length in samples
    sigma = noise_rms(st)
    ell = _tail_length_m(dzp)
    p = P_REF * 10.0 ** (y / 5.0)

    # fibre end: last point where the smoothed power stands clearly above the noise floor
    wn = max(16, round(lp / 2))
    ps = _moving_average(p, wn)
    thr_floor = 0.8 * sigma + 6.0 * 0.6 * sigma / math.sqrt(wn)
    above = np.nonzero(ps > thr_floor)[0]
    start_k = math.ceil((1.5 * dzp + 3.0 * ell + 10.0) / dz)
    if above.size == 0 or above[-1] <= start_k:
        return OtdrAnalysis([], float("nan"), None)
    last = int(above[-1])

    # reflective peaks above a median baseline computed on a decimated trace
    wr = max(1, round(lp / 8))
    ys = _moving_average(y, wr)
    blk = max(1, round(lp / 8))
    nb = n // blk
    yb = y[: nb * blk].reshape(nb, blk).mean(axis=1)
    base_b = _running_median(yb, 49)
    base = np.interp(np.arange(n), np.arange(nb) * blk + (blk - 1) / 2.0, base_b)
    sig_y = 2.17 * sigma / np.maximum(P_REF * 10.0 ** (base / 5.0), 1e-300) / math.sqrt(wr)
    excess = ys - base
    refl_mask = (excess > np.maximum(REFLECTANCE_THRESHOLD_DB, 6.0 * sig_y)) & (
        np.arange(n) >= start_k
    )
    refl_mask[last + int(lp) + wn + 1 :] = False
    reflective: list[tuple[float, int, int, float]] = []  # (location, k0, k1, peak height)
    k = 0
    idx = np.nonzero(refl_mask)[0]
    runs = np.split(idx, np.nonzero(np.diff(idx) > max(2, wr))[0] + 1) if idx.size else []
    for run in runs:
        if run.size < max(2, int(lp / 4)):
            continue
        k0, k1 = int(run[0]), int(run[-1])
        kp = k0 + int(np.argmax(ys[k0 : k1 + 1]))
        p_base = P_REF * 10.0 ** (base[k0] / 5.0)
        p_peak = P_REF * 10.0 ** (ys[kp] / 5.0)
        half = 0.5 * (p_base + p_peak)
        pss = P_REF * 10.0 ** (ys / 5.0)
        k = kp
        lo_lim = max(0, k0 - int(lp))
        while k > lo_lim and pss[k - 1] >= half:
            k -= 1
        if k > 0 and pss[k] != pss[k - 1]:
            frac = (half - pss[k - 1]) / (pss[k] - pss[k - 1])
            loc_k = (k - 1) + float(np.clip(frac, 0.0, 1.0))
        else:
            loc_k = float(k)
        # the instrument's displayed edge is delayed by half its smoothing window
        location = loc_k * dz + trace.start_m
        reflective.append((location, k0, k1, float(ys[kp] - base[k0])))

    # weights for line fits: usable backscatter only, excluding peaks and their dead zones
    gap = math.ceil(0.6 * lp) + 2
    win = max(int(8 * lp), int(60.0 / dz), 20)
    # weights from a heavily smoothed power, so a loss step does not tilt its own fits
    p_slow = _moving_average(p, 4 * win + 1)
    # y = 5 log10(p): var(y) = (5 / ln 10 * sigma / p)^2, so inverse-variance weights are
    wts = np.clip((p_slow / (2.1715 * sigma)) ** 2, 0.0, 1e8)
    wts[(p < 5.0 * sigma) | (p_slow < 10.0 * sigma)] = 0.0
    wts[:start_k] = 0.0
    end_cut = last - int(lp) - wn
    wts[max(end_cut, 0) :] = 0.0
    for loc, _k0, k1, _h in reflective:
        a0 = max(0, int(loc / dz) - 2)
        a1 = min(n, k1 + int((3.0 * ell) / dz) + 2)
        wts[a0:a1] = 0.0

    # two-window step detector for non-reflective events
    kk = np.arange(n)
    lo_l = np.clip(kk - gap - win, 0, n)
    hi_l = np.clip(kk - gap, 0, n)
    lo_r = np.clip(kk + gap, 0, n)
    hi_r = np.clip(kk + gap + win, 0, n)
    vl, varl = _window_fits(z, y, wts, lo_l, hi_l, z)
    vr, varr = _window_fits(z, y, wts, lo_r, hi_r, z)
    step = vl - vr
    sstd = np.sqrt(varl + varr)
    thr = np.maximum(LOSS_THRESHOLD_DB, 5.0 * sstd)
    cand = np.isfinite(step) & (step > thr) & (kk >= start_k) & (kk < end_cut)
    for loc, _k0, k1, _h in reflective:
        a0 = max(0, int(loc / dz) - gap - win)
        a1 = min(n, k1 + gap + win + int(3.0 * ell / dz))
        cand[a0:a1] = False
    nonrefl: list[float] = []
    idx = np.nonzero(cand)[0]
    runs = np.split(idx, np.nonzero(np.diff(idx) > 1)[0] + 1) if idx.size else []
    for run in runs:
        if run.size < 2:
            continue
        wgt = (step[run] - thr[run]).clip(min=0.0)
        if wgt.sum() <= 0:
            continue
        centre = float(np.sum(z[run] * wgt) / wgt.sum())
        nonrefl.append(centre - dzp / 2.0)

    # fibre end location
    end_m: float
    end_refl: float | None = None
    if reflective and reflective[-1][2] >= last - int(2 * lp) - wn:
        loc, _k0, _k1, h = reflective.pop()
        end_m = loc
        end_refl = h
    else:
        seg = wts > 0
        lvl = (
            float(np.median(ps[max(0, end_cut - int(4 * lp) - wn) : max(end_cut, 1)]))
            if seg.any()
            else float(ps[last])
        )
        halfp = 0.5 * lvl
        k = last
        while k > start_k and ps[k] < halfp:
            k -= 1
        frac = 0.0
        if k + 1 < n and ps[k] != ps[k + 1]:
            frac = float(np.clip((ps[k] - halfp) / (ps[k] - ps[k + 1]), 0.0, 1.0))
        end_m = (k + frac) * dz + trace.start_m - dzp / 2.0

    # common slope and per-segment levels (ramps of non-reflective events excluded)
    for loc in nonrefl:
        wts[max(0, int(loc / dz) - 2) : min(n, int((loc + dzp) / dz) + 3)] = 0.0
    marks = sorted(
        [(loc, EVENT_REFLECTIVE, h) for loc, _a, _b, h in reflective]
        + [(loc, EVENT_NONREFLECTIVE, float("nan")) for loc in nonrefl]
    )
    fit = _segment_levels(z, y, wts, marks, end_m)
    if fit is None:
        return OtdrAnalysis([], float("nan"), end_m)
    # a candidate whose measured loss stays under the threshold is noise: drop it, refit
    weak = [
        i
        for i, (_loc, kind, _h) in enumerate(marks)
        if kind == EVENT_NONREFLECTIVE and not _event_loss(fit[1], i) >= LOSS_THRESHOLD_DB
    ]
    if weak:
        marks = [m for i, m in enumerate(marks) if i not in weak]
        fit = _segment_levels(z, y, wts, marks, end_m)
        if fit is None:
            return OtdrAnalysis([], float("nan"), end_m)
    slope, levels = fit
    first = next((v for v in levels if v is not None), None)
    events: list[OtdrEvent] = []
    for i, (loc, kind, h) in enumerate(marks):
        before = next((levels[j] for j in range(i, -1, -1) if levels[j] is not None), None)
        after = next((levels[j] for j in range(i + 1, len(levels)) if levels[j] is not None), None)
        loss = (before - after) if before is not None and after is not None else float("nan")
        cum = (
            (first - (after + slope * loc))
            if first is not None and after is not None
            else float("nan")
        )
        refl = _reflectance(st, h) if kind == EVENT_REFLECTIVE else float("nan")
        events.append(OtdrEvent(loc, kind, loss, refl, cum))
    last_level = next((v for v in reversed(levels) if v is not None), None)
    cum_end = (
        first - (last_level + slope * end_m)
        if first is not None and last_level is not None
        else float("nan")
    )
    events.append(
        OtdrEvent(
            end_m,
            EVENT_END,
            0.0,
            _reflectance(st, end_refl) if end_refl is not None else float("nan"),
            cum_end,
        )
    )
    return OtdrAnalysis(events, -slope * 1000.0, end_m)


def _segment_levels(
    z: np.ndarray,
    y: np.ndarray,
    wts: np.ndarray,
    marks: list[tuple[float, str, float]],
    end_m: float,
) -> tuple[float, list[float | None]] | None:
    """Common backscatter slope and each segment's level at z = 0 (None if too short)."""
    bounds = [z[0]] + [m[0] for m in marks] + [end_m]
    seg_id = np.searchsorted(np.asarray(bounds[1:-1]), z, side="right")
    slopes: list[tuple[float, float]] = []
    for s in range(len(bounds) - 1):
        m = (seg_id == s) & (wts > 0)
        if m.sum() < 10:
            continue
        w_ = wts[m]
        zz = z[m]
        yy = y[m]
        zm = np.average(zz, weights=w_)
        szz = np.sum(w_ * (zz - zm) ** 2)
        if szz <= 0:
            continue
        b = np.sum(w_ * (zz - zm) * (yy - np.average(yy, weights=w_))) / szz
        slopes.append((b, szz))
    if not slopes:
        return None
    slope = sum(b * v for b, v in slopes) / sum(v for _b, v in slopes)
    levels: list[float | None] = []
    for s in range(len(bounds) - 1):
        m = (seg_id == s) & (wts > 0)
        if m.sum() < 5:
            levels.append(None)
            continue
        levels.append(float(np.average(y[m] - slope * z[m], weights=wts[m])))
    return slope, levels


def _event_loss(levels: list[float | None], i: int) -> float:
    """Loss of event ``i``: level of the segment before minus level of the one after."""
    before = next((levels[j] for j in range(i, -1, -1) if levels[j] is not None), None)
    after = next((levels[j] for j in range(i + 1, len(levels)) if levels[j] is not None), None)
    if before is None or after is None:
        return float("nan")
    return before - after


def _reflectance(st: OtdrSettings, height_db: float) -> float:
    """Reflectance from a peak ``height_db`` (one-way) above the backscatter level."""
    b = BS_1NS_DB + 10.0 * math.log10(st.pulse_s * 1e9 * rayleigh_scale(st.wavelength_m))
    return b + 10.0 * math.log10(max(10.0 ** (height_db / 5.0) - 1.0, 1e-12))
