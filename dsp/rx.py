"""Bob's receiver DSP: raw ADC samples in, calibrated symbols in shot-noise units out.

Every stage is a function usable alone; :func:`process_frame` chains them (docs/dsp.md):

1. :func:`check_clipping`, :func:`to_complex` - raw int16 I/Q to complex64 volts, DC removed.
2. :func:`spectrum` - one FFT of the whole record (complex64, 7-smooth length).
3. :func:`find_pilots`, :func:`pilot_snr` - carrier-frequency offset (coarse) from the two
   pilot lines, and their strength.
4. :func:`extract_pilots` - each pilot to baseband through the Wiener phase smoother,
   decimated.
5. :func:`recover_clock` - DAC/ADC clock ratio from the pilots' phase difference (free of
   laser phase noise) and the carrier offset.
6. :func:`estimate_linewidth`, :func:`pilot_halfwidth`, :func:`combine_pilots`,
   :func:`derotate` - pilot-aided phase recovery (carrier offset + laser phase noise) at the
   full ADC rate, with the smoother matched to the measured linewidth and pilot SNR and the
   pilots combined with maximal-ratio weights from their tracks' own noise.
7. :func:`taper_edges`, :func:`matched_filter` - RRC matched filter and decimation to
   2 samples/symbol in the frequency domain (exact response, no truncated taps).
8. :func:`coarse_timing` - correlation with the Zadoff-Chu preamble (frame sync).
9. :func:`fine_timing`, :func:`sample_symbols` - fractional timing, then polyphase
   interpolation at the clock-corrected instants of every slot of the looping frame.
10. :func:`preamble_gain`, :func:`global_phase` - residual global phase from the preamble and
    from revealed symbols.

:func:`phase_noise_excess` predicts what laser phase noise costs (tracking residual and the
pilots' Lorentzian skirts in the quantum band); :func:`measure_phase_error` measures the
tracking residual on the capture and :func:`correct_for_phase_error` takes it out of the
estimates to judge the channel itself. All heavy arrays are complex64; the whole record is
processed at once (about 190 MB per 1e6-symbol frame on top of the imports).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numba
import numpy as np
import scipy.fft as sfft

from dsp.frame import FrameFormat


class DspError(ValueError):
    """The capture cannot be processed; the message says what is wrong."""


class ClippingError(DspError):
    """The ADC clipped (input too strong or gain too high)."""


class NoPilotError(DspError):
    """No pilot tone was found where the frame format puts it."""


class NoPreambleError(DspError):
    """No Zadoff-Chu preamble was found in the capture."""


class CalibrationError(DspError):
    """Calibration captures are missing or inconsistent."""


@dataclass(frozen=True)
class AdcScaling:
    """Volts from raw codes: ``(raw - yoff) * ymult + yzero`` (``WFMO:YMUL/YOFF/YZER``)."""

    ymult: float
    yoff: float = 0.0
    yzero: float = 0.0

    def __post_init__(self) -> None:
        for name in ("ymult", "yoff", "yzero"):
            if not math.isfinite(getattr(self, name)):
                raise DspError(f"ADC scaling {name} is not finite")
        if self.ymult == 0.0:
            raise DspError("ADC scaling ymult is zero")


# --------------------------------------------------------------------------- raw samples
_RAILS_HI = {((1 << (b - 1)) - 1) << s for b in range(8, 17) for s in (0, 16 - b)}
_RAILS_LO = {-(1 << (b - 1)) << s for b in range(8, 17) for s in (0, 16 - b)}


def check_clipping(i_raw: np.ndarray, q_raw: np.ndarray, max_fraction: float = 1e-5) -> None:
    """Raise :class:`ClippingError` if more than ``max_fraction`` of samples sit on a rail.

    A rail is the full-scale code of an 8..16-bit ADC, right- or left-justified in int16
    (e.g. +2047/-2048 or +32752/-32768 for 12 bits). A clipped record piles samples up on
    its extreme code; a Gaussian record reaches its extremes only a few times.
    """
    if i_raw.size == 0 or q_raw.size == 0:
        raise DspError("capture is empty")
    for name, ch in (("I (CH1)", i_raw), ("Q (CH2)", q_raw)):
        hi = int(ch.max())
        lo = int(ch.min())
        count = 0
        if hi in _RAILS_HI:
            count += int(np.count_nonzero(ch == hi))
        if lo in _RAILS_LO:
            count += int(np.count_nonzero(ch == lo))
        if count > max(8, max_fraction * ch.size):
            raise ClippingError(
                f"ADC clipped on {name}: {count} of {ch.size} samples at full scale "
                f"({lo}..{hi}); reduce the LO power, the input power or the gain"
            )


def to_complex(
    i_raw: np.ndarray,
    q_raw: np.ndarray,
    scale_i: AdcScaling,
    scale_q: AdcScaling,
    n_out: int | None = None,
) -> np.ndarray:
    """Complex64 volts ``I + iQ`` with each channel's mean (ADC offset) removed.

    With ``n_out`` the result is zero-padded to that length (ready for an FFT, no copy).
    """
    if i_raw.shape != q_raw.shape or i_raw.ndim != 1:
        raise DspError(f"I and Q records differ in shape: {i_raw.shape} vs {q_raw.shape}")
    n = i_raw.size
    x = np.zeros(max(n, n_out or 0), dtype=np.complex64)
    v = x[:n]
    v.real = i_raw
    v.imag = q_raw
    v.real -= np.float32(v.real.mean(dtype=np.float64))
    v.imag -= np.float32(v.imag.mean(dtype=np.float64))
    v.real *= np.float32(scale_i.ymult)
    v.imag *= np.float32(scale_q.ymult)
    return x


def fft_length(n: int, fmt: FrameFormat) -> int:
    """Smallest ``2^a 3^b 5^c 7^d >= n`` that is a multiple of ``2 * sps_adc`` (fast FFTs)."""
    m = 2 * fmt.sps_adc
    best = 1 << max(0, (n - 1).bit_length())
    p7 = 1
    while p7 < 2 * n:
        p5 = p7
        while p5 < 2 * n:
            p3 = p5
            while p3 < 2 * n:
                size = p3
                while size < n:
                    size *= 2
                if size % m == 0 and size < best:
                    best = size
                p3 *= 3
            p5 *= 5
        p7 *= 7
    return best


def spectrum(x: np.ndarray, n_fft: int, overwrite: bool = False) -> np.ndarray:
    """Complex64 FFT of ``x`` zero-padded to ``n_fft`` (``overwrite`` may reuse ``x``)."""
    if x.size == n_fft:
        return sfft.fft(x, workers=1, overwrite_x=overwrite)
    return sfft.fft(x, n=n_fft, workers=1)


# --------------------------------------------------------------------------- pilots
@dataclass(frozen=True)
class PilotSearch:
    """Coarse pilot positions (FFT bins) and their strength."""

    k1: int
    k2: int
    n_fft: int
    peak_to_floor_db: float


def find_pilots(x_spec: np.ndarray, fmt: FrameFormat) -> PilotSearch:
    """Locate the two pilots (``+-pilot_offset_hz`` + CFO) in the capture's spectrum.

    Raises :class:`NoPilotError` when either window holds no line at least 20 dB above the
    window's median, or when the two lines do not agree on a clock ratio within
    ``max_clock_ppm``.
    """
    n = x_spec.size
    fs = fmt.adc_rate_hz
    half = int(fmt.cfo_range_hz / fs * n)
    kp = round(fmt.pilot_offset_hz / fs * n)
    ks = []
    ratios = []
    for sign in (+1, -1):
        idx = (np.arange(sign * kp - half, sign * kp + half + 1)) % n
        p = np.abs(x_spec[idx]) ** 2
        j = int(np.argmax(p))
        floor = float(np.median(p[::7]))
        ratio = float(p[j]) / floor if floor > 0 else math.inf
        if not ratio > 100.0:
            raise NoPilotError(
                f"no pilot tone near {sign * fmt.pilot_offset_hz / 1e6:+g} MHz "
                f"(+-{fmt.cfo_range_hz / 1e6:g} MHz): peak only "
                f"{10 * math.log10(max(ratio, 1e-30)):.1f} dB "
                "above the noise floor; is the transmitter playing this frame format?"
            )
        ks.append(sign * kp - half + j)
        ratios.append(ratio)
    k1, k2 = ks
    ppm = ((k1 - k2) / (2.0 * kp) - 1.0) * 1e6
    # a phase-noise-broadened line (<~1 MHz) may shift the coarse peak a little
    tol = fmt.max_clock_ppm + 2e6 * 2e6 / fs
    if abs(ppm) > tol:
        raise NoPilotError(
            f"pilot lines at {k1 / n * fs / 1e6:.3f} and {k2 / n * fs / 1e6:.3f} MHz imply a "
            f"clock mismatch of {ppm:.0f} ppm (limit {fmt.max_clock_ppm:g} ppm)"
        )
    return PilotSearch(k1=k1, k2=k2, n_fft=n, peak_to_floor_db=10 * math.log10(min(ratios)))


@dataclass(frozen=True)
class PilotTracks:
    """Each pilot shifted from its coarse bin to DC and decimated.

    ``q1[m]``, ``q2[m]`` are samples at ADC times ``m * step``; the first ``n_valid`` lie
    inside the record (the rest is FFT padding).
    """

    q1: np.ndarray
    q2: np.ndarray
    step: float
    search: PilotSearch
    n_valid: int
    noise_gain: float = 1.0
    """``sum(response^2) / n_fft``: a track's complex noise variance over the input's."""


def _pilot_gap(fmt: FrameFormat) -> float:
    """Room around each pilot (Hz): to the quantum band edge and to the other pilot."""
    return min(
        fmt.pilot_offset_hz - fmt.band_edge_hz,
        fmt.adc_rate_hz - 2 * fmt.pilot_offset_hz,
        fmt.pilot_offset_hz,
    )


def smoother_response(f_hz: np.ndarray, halfwidth_hz: float, support_hz: float) -> np.ndarray:
    """Wiener phase smoother ``1 / (1 + (f / B)^2)``, cosine-tapered to zero at ``support``.

    The taper starts at ``0.8 * support``; ``halfwidth_hz = inf`` gives a flat window.
    """
    a = np.abs(np.asarray(f_hz, dtype=np.float64))
    h = 1.0 / (1.0 + (a / halfwidth_hz) ** 2)
    edge = a > 0.8 * support_hz
    h[edge] *= np.cos(0.5 * np.pi * np.minimum(a[edge] / support_hz - 0.8, 0.2) / 0.2) ** 2
    return h


def _filtered_tracks(
    x_spec: np.ndarray, search: PilotSearch, taper: np.ndarray, k: int, n_dec: int
) -> list[np.ndarray]:
    """Each pilot's bins ``kc - k .. kc + k`` times ``taper``, to DC, decimated to ``n_dec``."""
    n = x_spec.size
    offs = np.arange(-k, k + 1)
    tracks = []
    for kc in (search.k1, search.k2):
        buf = np.zeros(n_dec, dtype=np.complex64)
        buf[offs % n_dec] = x_spec[(kc + offs) % n] * taper
        tracks.append(sfft.ifft(buf, workers=1) * np.float32(n_dec / n))
    return tracks


def extract_pilots(
    x_spec: np.ndarray,
    search: PilotSearch,
    halfwidth_hz: float,
    fmt: FrameFormat,
    n_samples: int | None = None,
) -> PilotTracks:
    """Filter each pilot to baseband with the Wiener phase smoother, decimated.

    For a Wiener (Lorentzian-laser) phase observed in white noise the optimal two-sided
    smoother has the response ``1 / (1 + (f / B)^2)``, with corner
    ``B = sqrt(dnu fs snr / pi)`` (:func:`pilot_halfwidth`); it is applied to the complex
    pilot, whose phase changes little within the filter's memory ``1 / (2 pi B)``. The
    response is truncated at ``5 B`` (or the gap to the quantum band and the other pilot)
    with a cosine taper, and the track is decimated to about 2.5 times that support.
    """
    n = x_spec.size
    fs = fmt.adc_rate_hz
    support = min(5.0 * halfwidth_hz, 0.4 * _pilot_gap(fmt))
    k = max(8, int(support / fs * n))
    n_dec = sfft.next_fast_len(int(2.5 * k) + 1)
    taper = smoother_response(np.arange(-k, k + 1) * (fs / n), halfwidth_hz, k * fs / n)
    taper32 = taper.astype(np.float32)
    q1, q2 = _filtered_tracks(x_spec, search, taper32, k, n_dec)
    step = n / n_dec
    valid = n_dec if n_samples is None else min(n_dec, int(n_samples / step))
    return PilotTracks(
        q1=q1,
        q2=q2,
        step=step,
        search=search,
        n_valid=valid,
        noise_gain=float(np.sum(taper**2) / n),
    )


@dataclass(frozen=True)
class ClockEstimate:
    """Clock ratio and carrier offset.

    Attributes
    ----------
    ratio : float
        ``(R_dac / R_dac,nom) / (R_adc / R_adc,nom)``: symbols arrive every
        ``sps_adc / ratio`` ADC samples.
    nu1, nu2 : float
        Pilot frequencies in cycles per ADC sample.
    cfo_hz : float
        Carrier offset (transmitter minus LO) at the nominal ADC rate.
    """

    ratio: float
    nu1: float
    nu2: float
    cfo_hz: float

    @property
    def ppm(self) -> float:
        """Clock mismatch in ppm (DAC relative to ADC)."""
        return (self.ratio - 1.0) * 1e6


def recover_clock(tracks: PilotTracks, fmt: FrameFormat, edge: int = 64) -> ClockEstimate:
    """DAC/ADC clock ratio from the slope of ``arg(q1 conj(q2))``.

    Both pilots carry the same laser phase noise, so their phase difference is a straight
    line whose slope is the pilot spacing in ADC cycles. Block averages raise the SNR
    before unwrapping; a least-squares line gives the slope.
    """
    stop = tracks.n_valid - edge
    d = tracks.q1[edge:stop] * np.conj(tracks.q2[edge:stop])
    blk = 64
    m = d.size // blk
    if m < 8:
        raise DspError("capture too short for clock recovery")
    db = d[: m * blk].reshape(m, blk).sum(axis=1, dtype=np.complex128)
    # remove a coarse residual rotation first so block phases unwrap safely
    rot = np.angle(np.sum(db[1:] * np.conj(db[:-1])))
    t = np.arange(m, dtype=np.float64)
    ph = np.unwrap(np.angle(db * np.exp(-1j * rot * t))) + rot * t
    w = np.abs(db)
    tm = np.average(t, weights=w)
    slope = np.sum(w * (t - tm) * (ph - np.average(ph, weights=w))) / np.sum(w * (t - tm) ** 2)
    # slope: radians per block of blk decimated samples
    dnu = slope / (2 * np.pi * blk * tracks.step)
    n = tracks.search.n_fft
    spacing = (tracks.search.k1 - tracks.search.k2) / n + dnu
    nu_p = fmt.pilot_offset_hz / fmt.adc_rate_hz
    ratio = spacing / (2.0 * nu_p)
    # carrier: mean of the coarse bins plus the common residual rotation of both tracks
    nu1 = tracks.search.k1 / n + _mean_rotation(tracks.q1[edge:stop], tracks.step)
    nu2 = tracks.search.k2 / n + _mean_rotation(tracks.q2[edge:stop], tracks.step)
    cfo = 0.5 * (nu1 + nu2) * fmt.adc_rate_hz
    if abs(ratio - 1.0) * 1e6 > fmt.max_clock_ppm:
        raise DspError(
            f"clock mismatch {(ratio - 1) * 1e6:.1f} ppm exceeds {fmt.max_clock_ppm:g} ppm"
        )
    return ClockEstimate(ratio=float(ratio), nu1=float(nu1), nu2=float(nu2), cfo_hz=float(cfo))


def _mean_rotation(q: np.ndarray, step: float) -> float:
    """Mean frequency (cycles per ADC sample) of a decimated track."""
    r = np.sum(q[1:] * np.conj(q[:-1]), dtype=np.complex128)
    return float(np.angle(r) / (2 * np.pi * step))


@dataclass(frozen=True)
class CarrierTrack:
    """The carrier phase from both pilots, and how noisy each pilot's track is.

    Attributes
    ----------
    step : float
        ADC samples per track sample.
    theta : numpy.ndarray
        Unwrapped laser phase (rad, float64) on that grid, carrier offset ``nu_c`` removed.
    nu_c : float
        Mean carrier offset (cycles per ADC sample).
    amplitude : tuple of float
        Mean magnitude of each pilot's track.
    am_var : tuple of float
        Variance of each track's magnitude: laser phase noise leaves the magnitude alone,
        so this is the track's noise per quadrature (the same as in its phase).
    snr : float
        Both pilots' power over the per-sample complex noise variance at their
        frequencies (from ``am_var`` and the smoother's noise gain).
    noise_var : float
        Phase-error variance (rad^2) the pilots' noise leaves in ``theta`` (maximal-ratio
        combination: ``1 / sum(A_i^2 / am_var_i)``).
    """

    step: float
    theta: np.ndarray
    nu_c: float
    amplitude: tuple[float, float]
    am_var: tuple[float, float]
    snr: float
    noise_var: float


def _to_carrier(
    tracks: PilotTracks, clock: ClockEstimate, fmt: FrameFormat
) -> tuple[np.ndarray, np.ndarray, float]:
    """Both tracks rotated back to the carrier minus the mean offset ``nu_c``."""
    n = tracks.search.n_fft
    nu_p = clock.ratio * fmt.pilot_offset_hz / fmt.adc_rate_hz
    nu_c = clock.cfo_hz / fmt.adc_rate_hz
    f1 = (tracks.search.k1 / n - nu_p - nu_c) * tracks.step
    f2 = (tracks.search.k2 / n + nu_p - nu_c) * tracks.step
    r1 = np.empty_like(tracks.q1)
    r2 = np.empty_like(tracks.q2)
    _rotate_kernel(tracks.q1, f1, r1)
    _rotate_kernel(tracks.q2, f2, r2)
    return r1, r2, float(nu_c)


def _track_stats(r: np.ndarray, lo: int, hi: int) -> tuple[float, float]:
    """Mean and variance of ``|r[lo:hi]|`` (float64)."""
    mag = np.abs(r[lo:hi]).astype(np.float64)
    return float(mag.mean()), float(mag.var())


def combine_pilots(tracks: PilotTracks, clock: ClockEstimate, fmt: FrameFormat) -> CarrierTrack:
    """Phase of the quantum band's carrier: ``2 pi nu_c t + theta(t)``, with its quality.

    Each pilot track is brought back to the carrier (``+-`` the clock-scaled pilot offset)
    minus the mean carrier offset ``nu_c`` (cycles per ADC sample), so what is left varies
    slowly and unwraps safely. The tracks are combined with maximal-ratio weights
    ``A_i / am_var_i`` after aligning their constant phases: the two pilots sit at
    different places of the front end's response, so their noise levels differ. Statistics
    skip ``capture_margin / 2`` ADC samples at each end (the pilots stop there).
    """
    r1, r2, nu_c = _to_carrier(tracks, clock, fmt)
    m = tracks.n_valid
    edge = min(int(fmt.capture_margin / 2 / tracks.step), m // 8)
    lo, hi = edge, m - edge
    a1, v1 = _track_stats(r1, lo, hi)
    a2, v2 = _track_stats(r2, lo, hi)
    v1 = max(v1, 1e-30 * a1 * a1)
    v2 = max(v2, 1e-30 * a2 * a2)
    align = np.vdot(r2[lo:hi], r1[lo:hi])
    align /= abs(align) if abs(align) > 0 else 1.0
    r1 *= np.float32(a1 / v1)
    r1 += np.complex64(a2 / v2 * align) * r2
    theta = np.empty(r1.size, dtype=np.float64)
    _unwrapped_angle(r1, theta)
    # per quadrature a track's noise is am_var = sigma^2 noise_gain / 2
    g = max(tracks.noise_gain, 1e-30)
    snr = (a1 * a1 / v1 + a2 * a2 / v2) * g / 2.0
    noise = 1.0 / (a1 * a1 / v1 + a2 * a2 / v2)
    return CarrierTrack(
        step=tracks.step,
        theta=theta,
        nu_c=nu_c,
        amplitude=(a1, a2),
        am_var=(v1, v2),
        snr=float(snr),
        noise_var=float(noise),
    )


def carrier_phase(
    tracks: PilotTracks, clock: ClockEstimate, fmt: FrameFormat
) -> tuple[float, np.ndarray, float]:
    """``(step, theta, nu_c)`` of :func:`combine_pilots`."""
    c = combine_pilots(tracks, clock, fmt)
    return c.step, c.theta, c.nu_c


@numba.njit(cache=True, nogil=True)
def _rotate_kernel(q: np.ndarray, cycles_per_sample: float, out: np.ndarray) -> None:
    """``out[m] = q[m] exp(2 pi i f m)`` with the phase reduced exactly in float64."""
    for m in range(q.size):
        c = cycles_per_sample * m
        ph = 2.0 * math.pi * (c - math.floor(c))
        out[m] = q[m] * complex(math.cos(ph), math.sin(ph))


@numba.njit(cache=True, nogil=True)
def _unwrapped_angle(r: np.ndarray, out: np.ndarray) -> None:
    """Unwrapped ``angle(r)`` (float64)."""
    two_pi = 2.0 * math.pi
    prev = 0.0
    offset = 0.0
    for m in range(r.size):
        a = math.atan2(r[m].imag, r[m].real)
        if m:
            d = a - prev
            if d > math.pi:
                offset -= two_pi
            elif d < -math.pi:
                offset += two_pi
        prev = a
        out[m] = a + offset


@numba.njit(cache=True, nogil=True)
def _derotate_kernel(x: np.ndarray, step: float, theta: np.ndarray, nu_c: float) -> None:
    """Per decimated segment: exact phasor at its start, then a constant rotation."""
    n = x.size
    last = theta.size - 1
    two_pi = 2.0 * math.pi
    j = 0
    k = 0
    while k < n:
        k_end = min(n, int(math.ceil((j + 1) * step)))  # noqa: RUF046 (numba)
        if j >= last:
            k_end = n
        # phase at sample k: linear in k within the segment
        th0 = theta[min(j, last)]
        slope = 0.0 if j >= last else (theta[j + 1] - theta[j]) / step
        u0 = k - j * step
        cyc = nu_c * k
        ph = th0 + slope * u0 + two_pi * (cyc - math.floor(cyc))
        inc = slope + two_pi * nu_c
        zr = math.cos(ph)
        zi = -math.sin(ph)
        wr = math.cos(inc)
        wi = -math.sin(inc)
        for kk in range(k, k_end):
            xr = x[kk].real
            xi = x[kk].imag
            x[kk] = complex(xr * zr - xi * zi, xr * zi + xi * zr)
            zr, zi = zr * wr - zi * wi, zr * wi + zi * wr
        k = k_end
        j += 1


def derotate(x: np.ndarray, step: float, theta: np.ndarray, nu_c: float = 0.0) -> np.ndarray:
    """Multiply ``x`` in place by ``exp(-i (2 pi nu_c k + theta(k)))``.

    ``theta`` is given every ``step`` samples and linearly interpolated.
    """
    _derotate_kernel(x, float(step), np.ascontiguousarray(theta, dtype=np.float64), float(nu_c))
    return x


def taper_edges(x: np.ndarray, fmt: FrameFormat) -> np.ndarray:
    """Raised-cosine ramps over the first and last ``capture_margin / 8`` samples, in place.

    The strong pilots stop abruptly at the record's ends; unramped, that step leaks into
    the quantum band through the matched filter. Symbols are taken far from the ends.
    """
    m = min(fmt.capture_margin // 8, x.size // 8)
    ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)).astype(np.float32)
    x[:m] *= ramp
    x[x.size - m :] *= ramp[::-1]
    return x


# --------------------------------------------------------------------------- matched filter
def matched_filter_response(n_fft: int, fmt: FrameFormat) -> np.ndarray:
    """RRC matched filter, unit energy at the ADC rate, on bins ``0 .. kb - 1`` (positive
    frequencies of an ``n_fft``-point spectrum up to the band edge); it is even in f."""
    kb = math.ceil(fmt.band_edge_hz / fmt.adc_rate_hz * n_fft) + 1
    f = np.arange(kb, dtype=np.float64) * (fmt.adc_rate_hz / n_fft)
    return (np.sqrt(fmt.sps_adc) * fmt.rrc_spectrum(f)).astype(np.float32)


def _copy_circular(src: np.ndarray, start: int, out: np.ndarray) -> None:
    """``out[:] = src[(start + arange(out.size)) % src.size]`` with slice copies only."""
    n = src.size
    start %= n
    first = min(out.size, n - start)
    out[:first] = src[start : start + first]
    if first < out.size:
        out[first:] = src[: out.size - first]


def matched_filter(
    x_spec: np.ndarray, fmt: FrameFormat, shift_bins: int = 0, response: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Matched filter + decimation to 2 samples/symbol from a full-rate spectrum.

    ``shift_bins`` moves the spectrum down by that many bins first (CFO removal for the
    calibration captures, which have no pilots). Only the bins inside the quantum band are
    touched (the filter is zero outside). Returns ``(y2, Y2)``: the 2-sps signal (ADC time
    ``m * sps_adc / 2``) and its spectrum.
    """
    n = x_spec.size
    h = matched_filter_response(n, fmt) if response is None else response
    kb = h.size
    n2 = 2 * n // fmt.sps_adc
    y_spec = np.zeros(n2, dtype=np.complex64)
    pos = y_spec[:kb]
    _copy_circular(x_spec, shift_bins, pos)
    pos *= h
    neg = y_spec[n2 - kb + 1 :]
    _copy_circular(x_spec, shift_bins - kb + 1, neg)
    neg *= h[:0:-1]
    y2 = sfft.ifft(y_spec, workers=1)
    y2 *= np.float32(n2 / n)
    return y2, y_spec


# --------------------------------------------------------------------------- timing
def coarse_timing(y_spec: np.ndarray, fmt: FrameFormat) -> tuple[int, float]:
    """Frame sync: position (2-sps index) of preamble symbol 0 and the peak-to-mean ratio.

    Correlates with the Zadoff-Chu symbols at 1 sample/symbol (the inner half of the band,
    enough for detection); :func:`fine_timing` refines the position on the 2-sps signal.
    Raises :class:`NoPreambleError` when the correlation peak is not clearly above the
    background.
    """
    n2 = y_spec.size
    n1 = n2 // 2
    # 1 sample/symbol: keep the inner half of the 2-sps band (|f| < Rs/2), enough to detect
    y1 = np.concatenate((y_spec[: n1 // 2], y_spec[n2 - n1 // 2 :]))
    zc = np.zeros(n1, dtype=np.complex64)
    zc[: fmt.preamble_length] = fmt.preamble()
    y1 *= np.conj(sfft.fft(zc, workers=1))
    c = sfft.ifft(y1, workers=1, overwrite_x=True)
    p = c.real**2 + c.imag**2
    j = 2 * int(np.argmax(p))
    ratio = float(p[j // 2] / np.mean(p))
    if not (ratio > 40.0 and np.isfinite(ratio)):
        raise NoPreambleError(
            f"no Zadoff-Chu preamble found: correlation peak only {ratio:.1f} x the mean "
            "(need > 40); wrong frame format, no signal, or channel loss too high"
        )
    return j, ratio


INTERP_TAPS = 16
INTERP_PHASES = 1024


def _interp_table(taps: int = INTERP_TAPS, phases: int = INTERP_PHASES) -> np.ndarray:
    """Kaiser-windowed sinc rows for fractional delays ``p / phases``, ``p = 0..phases``."""
    half = taps // 2
    frac = np.arange(phases + 1, dtype=np.float64)[:, None] / phases
    j = np.arange(taps, dtype=np.float64)[None, :]
    t = j - (half - 1) - frac  # tap j multiplies y[n - half + 1 + j]
    w = np.i0(8.0 * np.sqrt(np.clip(1.0 - (t / half) ** 2, 0.0, None))) / np.i0(8.0)
    h = np.sinc(t) * w
    h /= h.sum(axis=1, keepdims=True)
    return np.ascontiguousarray(h.astype(np.float32))


@numba.njit(cache=True, nogil=True, inline="always")
def _interp_at(y: np.ndarray, t: float, table: np.ndarray) -> complex:
    """Polyphase interpolation of ``y`` at the (fractional) sample instant ``t``."""
    taps = table.shape[1]
    phases = table.shape[0] - 1
    n = int(math.floor(t))  # noqa: RUF046 (numba)
    p = int((t - n) * phases + 0.5)
    base = n - taps // 2 + 1
    accr = 0.0
    acci = 0.0
    for j in range(taps):
        v = y[base + j]
        w = table[p, j]
        accr += w * v.real
        acci += w * v.imag
    return complex(accr, acci)


@numba.njit(cache=True, nogil=True)
def _interp_kernel(y: np.ndarray, times: np.ndarray, table: np.ndarray, out: np.ndarray) -> None:
    for m in range(times.size):
        out[m] = _interp_at(y, times[m], table)


def interpolate(y2: np.ndarray, times: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
    """Band-limited values of ``y2`` at fractional indices ``times`` (complex64).

    ``y2`` is at 2 samples/symbol with content below 0.275 cycles/sample, so a 16-tap
    Kaiser-windowed sinc is accurate to about -90 dB. Times must lie at least
    ``INTERP_TAPS`` samples inside the record.
    """
    times = np.ascontiguousarray(times, dtype=np.float64)
    if times.size and (times.min() < INTERP_TAPS or times.max() > y2.size - INTERP_TAPS):
        raise DspError("symbol instants fall outside the capture (capture too short)")
    out = np.empty(times.size, dtype=np.complex64)
    _interp_kernel(y2, times, _interp_table() if table is None else table, out)
    return out


def _preamble_metric(y2: np.ndarray, t0: float, step: float, zc: np.ndarray, table) -> float:
    k = np.arange(zc.size, dtype=np.float64)
    v = interpolate(y2, t0 + k * step, table)
    return float(abs(np.sum(v * np.conj(zc), dtype=np.complex128)))


def fine_timing(y2: np.ndarray, j0: int, clock: ClockEstimate, fmt: FrameFormat) -> float:
    """Fractional position (2-sps index) of preamble symbol 0 near the coarse index ``j0``.

    The preamble correlation magnitude is symmetric around the true instant; two parabolic
    refinements on +-0.5 and +-0.1 samples locate its maximum.
    """
    step = 2.0 / clock.ratio
    zc = fmt.preamble().astype(np.complex64)
    table = _interp_table()
    t = float(j0)
    for h in (1.0, 0.5, 0.1):
        m = [_preamble_metric(y2, t + d, step, zc, table) for d in (-h, 0.0, h)]
        den = m[0] - 2 * m[1] + m[2]
        if den < 0:
            t += float(np.clip(0.5 * h * (m[0] - m[2]) / den, -h, h))
        else:
            t += h if m[2] > m[0] else -h
    return t


def symbol_times(t0: float, clock: ClockEstimate, fmt: FrameFormat, n_avail: int) -> np.ndarray:
    """2-sps instants of every frame slot (slot 0 = first preamble symbol).

    The frame loops, so slot ``k`` appears at ``t0 + k * step`` modulo one period; of the
    (one or two) occurrences inside the record the one farthest from the record's ends is
    taken, which keeps every symbol at least half the capture margin away from the edges.
    """
    step = 2.0 / clock.ratio
    period = fmt.n_symbols * step
    k = np.arange(fmt.n_symbols, dtype=np.float64)
    t = np.mod(t0 + k * step, period)  # first occurrence, in [0, period)
    later = t + period
    edge_first = np.minimum(t, n_avail - 1 - t)
    edge_later = np.minimum(later, n_avail - 1 - later)
    t = np.where(edge_later > edge_first, later, t)
    lo = float(INTERP_TAPS)
    if t.min() < lo or t.max() > n_avail - INTERP_TAPS:
        raise DspError(
            "capture shorter than one frame plus margins: record at least "
            f"{fmt.capture_points} points"
        )
    return t


@numba.njit(cache=True, nogil=True)
def _sample_cyclic_kernel(
    y: np.ndarray,
    t0: float,
    step: float,
    period: float,
    n_avail: int,
    table: np.ndarray,
    out: np.ndarray,
) -> int:
    """Interpolate every slot at the occurrence farthest from the record's ends.

    Returns the number of slots whose instant falls outside the usable record.
    """
    taps = table.shape[1]
    bad = 0
    for k in range(out.size):
        c = t0 + k * step
        t = c - math.floor(c / period) * period
        later = t + period
        e1 = min(t, n_avail - 1 - t)
        e2 = min(later, n_avail - 1 - later)
        if e2 > e1:
            t = later
        if t < taps or t > n_avail - taps:
            bad += 1
            out[k] = 0j
            continue
        out[k] = _interp_at(y, t, table)
    return bad


def sample_symbols(
    y2: np.ndarray, t0: float, clock: ClockEstimate, fmt: FrameFormat, n_avail: int | None = None
) -> np.ndarray:
    """One complex64 sample per frame slot (slot 0 = first preamble symbol).

    Same instants as :func:`symbol_times`, computed on the fly. ``n_avail`` is the number
    of valid 2-sps samples (the record without FFT padding).
    """
    step = 2.0 / clock.ratio
    avail = y2.size if n_avail is None else min(n_avail, y2.size)
    out = np.empty(fmt.n_symbols, dtype=np.complex64)
    bad = _sample_cyclic_kernel(
        y2, float(t0), step, fmt.n_symbols * step, int(avail), _interp_table(), out
    )
    if bad:
        raise DspError(
            f"capture shorter than one frame plus margins ({bad} symbols missing): record "
            f"at least {fmt.capture_points} points"
        )
    return out


def preamble_gain(slots: np.ndarray, fmt: FrameFormat) -> complex:
    """Complex gain of the received preamble relative to the transmitted one."""
    zc = fmt.preamble()
    amp = 10.0 ** (fmt.preamble_to_signal_db / 20.0)
    v = slots[: fmt.preamble_length].astype(np.complex128)
    return complex(np.vdot(zc, v) / (amp * zc.size))


def global_phase(y: np.ndarray, reference: np.ndarray) -> float:
    """Residual phase of ``y`` relative to known (revealed) ``reference`` symbols."""
    c = np.vdot(reference.astype(np.complex128), y.astype(np.complex128))
    if not (abs(c) > 0 and np.isfinite(c)):
        raise DspError("cannot estimate the global phase: no correlation with revealed symbols")
    return float(np.angle(c))


# --------------------------------------------------------------------------- whole chain
@dataclass
class RxResult:
    """Output of :func:`process_frame`.

    Attributes
    ----------
    symbols : numpy.ndarray
        Bob's quantum symbols ``y_I + i y_Q`` in SNU (per-quadrature shot-noise variance 1;
        in volts when no ``n0`` was given),
        phase-aligned with Alice's symbols, in Alice's order (``fmt.quantum_slice``).
    cfo_hz, clock_ppm : float
        Estimated carrier offset and DAC/ADC clock mismatch.
    frame_start : float
        ADC sample index of preamble symbol 0.
    pilot_db : float
        Weaker pilot's peak over the spectral floor (dB).
    preamble_peak : float
        Preamble correlation peak over its mean.
    phase : float
        Global phase removed (rad).
    pilot_snr : float
        Total pilot power over the per-sample noise variance.
    tracking_hz : float
        Phase-tracking half band used (Hz).
    linewidth_hz : float
        Estimated sum of both lasers' linewidths (Hz).
    phase_excess : float
        Predicted excess noise per unit ``V_A`` from laser phase noise
        (:func:`phase_noise_excess`, tracking plus pilot leakage); diagnostic only, the
        estimates count it as excess noise like everything else.
    phase_error_var : float
        Predicted residual phase-error variance (rad^2) after tracking (model, from the
        measured pilot SNR and linewidth); it lowers the coherent gain, so T-hat comes out
        low by about this fraction.
    phase_error_measured : PhaseErrorEstimate or None
        The same variance measured on the capture (``measure_phase=True``).
    timings : dict
        Wall time per stage (s); diagnostic only.
    """

    symbols: np.ndarray
    cfo_hz: float
    clock_ppm: float
    frame_start: float
    pilot_db: float
    preamble_peak: float
    phase: float
    pilot_snr: float = 0.0
    tracking_hz: float = 0.0
    linewidth_hz: float = 0.0
    phase_excess: float = 0.0
    phase_error_var: float = 0.0
    phase_error_measured: PhaseErrorEstimate | None = None
    timings: dict[str, float] = field(default_factory=dict)


def pilot_snr(x_spec: np.ndarray, search: PilotSearch, fmt: FrameFormat) -> float:
    """Total pilot power over the per-sample noise variance, ``sum |A_i|^2 / sigma^2``.

    The noise floor is the median bin power of the pilot search windows (for complex white
    noise the median of ``|X_k|^2`` is ``ln 2`` times its mean); the pilot power is the excess
    power within 10 MHz of each line (a Lorentzian line of 200 kHz keeps 99 % there).
    """
    n = x_spec.size
    fs = fmt.adc_rate_hz
    half = int(fmt.cfo_range_hz / fs * n)
    near = max(2, int(10e6 / fs * n))
    total = 0.0
    for kc in (search.k1, search.k2):
        window = np.abs(x_spec[np.arange(kc - half, kc + half + 1) % n]) ** 2
        mean_noise = float(np.median(window[::7])) / math.log(2.0)
        line = np.abs(x_spec[np.arange(kc - near, kc + near + 1) % n]) ** 2
        excess = float(np.sum(line, dtype=np.float64)) - line.size * mean_noise
        total += max(excess, 0.0) / (n * mean_noise)
    return total


def pilot_halfwidth(snr: float, fmt: FrameFormat, linewidth_hz: float) -> float:
    """Corner ``B`` (Hz) of the Wiener phase smoother for the pilots.

    The phase is a random walk of rate ``q = 2 pi dnu`` (rad^2/s, ``dnu`` the sum of both
    linewidths) seen in white noise of two-sided density ``1 / (2 snr fs)`` (rad^2/Hz,
    ``snr`` = pilot power over the per-sample complex noise variance); the Wiener smoother
    ``1 / (1 + (f / B)^2)`` has ``B = sqrt(dnu fs snr / pi)`` and leaves a phase error of
    variance ``sqrt(pi dnu / (snr fs)) / 2``. ``B`` stays clear of the quantum band and
    of the other pilot (``fs - 2 f_p`` away around the circle).
    """
    fs = fmt.adc_rate_hz
    gap = min(
        fmt.pilot_offset_hz - fmt.band_edge_hz, fs - 2 * fmt.pilot_offset_hz, fmt.pilot_offset_hz
    )
    b = math.sqrt(max(linewidth_hz, 1.0) * fs * max(snr, 1e-6) / math.pi)
    return float(min(max(b, 0.1e6), 0.2 * gap))


def phase_noise_excess(
    fmt: FrameFormat, linewidth_hz: float, snr: float, corner_hz: float
) -> tuple[float, float]:
    """Predicted excess noise per unit ``V_A`` from laser phase noise, and its two parts.

    Returns ``(tracking, leakage)``, both as fractions of the quantum signal power, so the
    excess noise referred to the channel input is ``V_A * (tracking + leakage)``:

    * tracking: the phase error the Wiener smoother leaves (:func:`pilot_halfwidth`):
      ``dnu / (pi B) * B^2 / (B^2 + ...)``, evaluated exactly for the smoother
      ``1 / (1 + (f / B)^2)`` as untracked laser phase plus filtered pilot noise;
    * leakage: each pilot's Lorentzian skirt (power ``dnu / (2 pi g^2)`` per Hz at offset
      ``g``, folded at the ADC rate) seen through the matched filter, relative to the quantum
      signal through the same filter. This is physics, not a DSP defect: the received
      pilots' phase-noise sidebands overlap the quantum band (docs/dsp.md).
    """
    fs = fmt.adc_rate_hz
    if linewidth_hz <= 0:
        return 0.0, 0.0
    f = np.linspace(-0.5 * fs, 0.5 * fs, 200001)
    df = f[1] - f[0]
    # tracking: untracked laser phase (1 - H)^2 S_phi + pilot noise H^2 / (2 snr fs)
    h = 1.0 / (1.0 + (f / corner_hz) ** 2)
    with np.errstate(divide="ignore"):
        s_phi = np.where(f != 0, linewidth_hz / (2 * np.pi * f**2), 0.0)
    tracking = float(np.sum((1 - h) ** 2 * s_phi + h**2 / (2 * max(snr, 1e-9) * fs)) * df)
    # leakage through the matched filter, both pilots, folded once on each side
    rrc2 = fmt.rrc_spectrum(f) ** 2
    band = rrc2 > 0
    leak = 0.0
    for fp in (fmt.pilot_offset_hz, -fmt.pilot_offset_hz):
        for fold in (-fs, 0.0, fs):
            g = f[band] - fp - fold
            leak += float(np.sum(rrc2[band] * linewidth_hz / (2 * np.pi * g**2)) * df)
    ratio = 10.0 ** (fmt.pilot_to_signal_db / 10.0)
    signal = float(np.sum(rrc2**2) * df) / fmt.symbol_rate_hz
    return tracking, ratio * leak / signal


@dataclass(frozen=True)
class PhaseErrorEstimate:
    """Residual phase-error variance of the pilot tracking, measured on the capture.

    ``var = noise + lag + tail`` (rad^2): the pilots' noise left in the smoothed phase (from
    the tracks' magnitude fluctuations), the laser phase the smoother does not follow
    (measured up to ``wide_hz`` from the pilots as their phase-modulation minus
    amplitude-modulation power), and a Lorentzian model beyond ``wide_hz``.
    """

    var: float
    stderr: float
    noise: float
    lag: float
    tail: float
    wide_hz: float


def measure_phase_error(
    x_spec: np.ndarray,
    search: PilotSearch,
    clock: ClockEstimate,
    fmt: FrameFormat,
    halfwidth_hz: float,
    linewidth_hz: float,
    n_samples: int,
) -> PhaseErrorEstimate:
    """Measure how much laser phase the pilot tracking misses (docs/dsp.md).

    With ``H_B`` the smoother of :func:`extract_pilots` and ``H_W`` a flat window of half
    width ``W`` (ten times ``B``, 60 MHz at least, at most 80 % of the room around the
    pilots), each pilot's ``w = (c_W - c_B) exp(-i theta_B) / A`` has
    ``Var(Im w) - Var(Re w) = int (H_W - H_B)^2 S_phi``: additive noise is circular and
    cancels, laser phase noise only modulates the phase. The smoothed track's own noise is
    the variance of its magnitude. What lies beyond ``W`` is modelled as a Lorentzian skirt
    of the measured linewidth (an upper bound when the lasers' frequency noise falls off).
    """
    n = x_spec.size
    fs = fmt.adc_rate_hz
    gap = _pilot_gap(fmt)
    wide = float(min(max(10.0 * halfwidth_hz, 60e6), 0.8 * gap))
    k = int(wide / fs * n)
    n_dec = sfft.next_fast_len(int(2.2 * k) + 1)
    f = np.arange(-k, k + 1) * (fs / n)
    support_b = min(5.0 * halfwidth_hz, 0.4 * gap)
    h_b = smoother_response(f, halfwidth_hz, support_b)
    h_b[np.abs(f) > support_b] = 0.0
    h_w = smoother_response(f, math.inf, wide)
    step = n / n_dec
    valid = min(n_dec, int(n_samples / step))
    narrow = PilotTracks(
        *_filtered_tracks(x_spec, search, h_b.astype(np.float32), k, n_dec),
        step=step,
        search=search,
        n_valid=valid,
    )
    track = combine_pilots(narrow, clock, fmt)
    edge = min(int(fmt.capture_margin / 2 / step), valid // 8)
    lo, hi = edge, valid - edge
    u = np.exp(-1j * track.theta[lo:hi]).astype(np.complex64)
    r_b = _to_carrier(narrow, clock, fmt)[:2]
    del narrow
    wide_tracks = PilotTracks(
        *_filtered_tracks(x_spec, search, h_w.astype(np.float32), k, n_dec),
        step=step,
        search=search,
        n_valid=valid,
    )
    r_w = _to_carrier(wide_tracks, clock, fmt)[:2]
    del wide_tracks
    # independent samples of the difference track: its bandwidth over the track rate
    n_ind = max((hi - lo) * float(np.sum((h_w - h_b) ** 2)) / (2 * k + 1) * n_dec / n, 1.0)
    lags, weights = [], []
    for rb, rw in zip(r_b, r_w, strict=True):
        g = np.vdot(u.conj(), rb[lo:hi]) / (hi - lo)  # mean of rb * u
        w = (rw[lo:hi] - rb[lo:hi]) * u / np.complex64(g)
        v_im = float(np.var(w.imag, dtype=np.float64))
        v_re = float(np.var(w.real, dtype=np.float64))
        var_se = math.sqrt(2.0 * (v_im**2 + v_re**2) / n_ind)
        lags.append(v_im - v_re)
        weights.append(1.0 / max(var_se, 1e-30) ** 2)
    lag = float(np.average(lags, weights=weights))
    lag_se = 1.0 / math.sqrt(sum(weights))
    # beyond the wide window: Lorentzian skirt, int (1 - H_W)(1 + H_W - 2 H_B) S_phi
    ff = np.linspace(-0.5 * fs, 0.5 * fs, 400001)
    hw = smoother_response(ff, math.inf, wide)
    hb = smoother_response(ff, halfwidth_hz, support_b)
    hb[np.abs(ff) > support_b] = 0.0
    with np.errstate(divide="ignore"):
        s_phi = np.where(ff != 0, linewidth_hz / (2 * np.pi * ff**2), 0.0)
    tail = float(np.sum((1 - hw) * (1 + hw - 2 * hb) * s_phi) * (ff[1] - ff[0]))
    noise = track.noise_var
    noise_se = noise * math.sqrt(2.0 / max((hi - lo) * step * halfwidth_hz / fs, 1.0))
    return PhaseErrorEstimate(
        var=noise + lag + tail,
        stderr=math.hypot(lag_se, noise_se),
        noise=noise,
        lag=lag,
        tail=tail,
        wide_hz=wide,
    )


@dataclass(frozen=True)
class ChannelEstimate:
    """``T`` and ``xi`` of the channel with the receiver's phase-error loss taken out."""

    T: float
    T_stderr: float
    xi: float
    xi_stderr: float


def correct_for_phase_error(
    t: float,
    t_stderr: float,
    xi: float,
    xi_stderr: float,
    v_a: float,
    var: float,
    var_stderr: float,
) -> ChannelEstimate:
    """Channel ``T`` and ``xi`` from the estimates and the residual phase-error variance.

    A Gaussian phase error of variance ``s`` scales the coherent gain by ``exp(-s / 2)`` and
    turns that part of the signal into noise, so the estimates are ``T exp(-s)`` and
    ``xi exp(s) + V_A (exp(s) - 1)``. Inverting with the measured ``s``
    (:func:`measure_phase_error`) gives the channel's own values; their standard errors
    include ``s``'s. This treats the receiver's phase error as a characterised (trusted)
    imperfection, like ``eta`` and ``v_el``: use it to judge the channel, not for security.
    """
    g = math.exp(var)
    t_c = t * g
    xi_c = xi / g - v_a * (1.0 - 1.0 / g)
    t_se = g * math.hypot(t_stderr, t * var_stderr)
    xi_se = math.hypot(xi_stderr / g, (xi + v_a) / g * var_stderr)
    return ChannelEstimate(T=t_c, T_stderr=t_se, xi=xi_c, xi_stderr=xi_se)


def estimate_linewidth(step: float, theta: np.ndarray, fs: float) -> float:
    """Sum of both lasers' linewidths (Hz) from the tracked carrier phase.

    For a Wiener phase the variance of ``theta(t + tau) - theta(t)`` grows as
    ``2 pi dnu tau``, while the estimation noise adds a constant once ``tau`` exceeds the
    tracking filter's memory; the slope between ``tau`` = 2 us and 20 us gives ``dnu``.
    Returns 0 when the record is too short.
    """
    l1 = max(1, round(2e-6 * fs / step))
    l2 = 10 * l1
    if theta.size < 20 * l2:
        return 0.0
    d1 = float(np.var(theta[l1:] - theta[:-l1]))
    d2 = float(np.var(theta[l2:] - theta[:-l2]))
    dnu = (d2 - d1) / (2 * math.pi * (l2 - l1) * step / fs)
    return max(dnu, 0.0) if math.isfinite(dnu) else 0.0


def process_frame(
    i_raw: np.ndarray,
    q_raw: np.ndarray,
    scale_i: AdcScaling,
    scale_q: AdcScaling,
    fmt: FrameFormat,
    n0: float | None = None,
    revealed_index: np.ndarray | None = None,
    revealed_alpha: np.ndarray | None = None,
    pilot_halfwidth_hz: float | None = None,
    linewidth_hint_hz: float = 200e3,
    measure_phase: bool = False,
) -> RxResult:
    """Raw ADC records to Bob's symbols in SNU.

    Parameters
    ----------
    i_raw, q_raw : numpy.ndarray
        int16 ADC codes of CH1 (I) and CH2 (Q), at least ``fmt.capture_points`` long.
    scale_i, scale_q : AdcScaling
        Code-to-volt scaling of each channel.
    fmt : FrameFormat
        The frame format Alice played.
    n0 : float, optional
        Shot-noise variance per quadrature (V^2) after the matched filter, from
        :mod:`dsp.calibration`; the output is divided by ``sqrt(n0)``. Without it the
        symbols stay in volts (calibrate afterwards with the frame's ``cfo_hz``, then
        divide by ``sqrt(n0)``).
    revealed_index, revealed_alpha : numpy.ndarray, optional
        Indices (into the quantum symbols) and values of symbols Alice revealed; used to
        remove the residual global phase. Without them the preamble phase is used.
    pilot_halfwidth_hz : float, optional
        Pilot band-pass half width (phase-tracking bandwidth); by default chosen by
        :func:`pilot_halfwidth` from the measured pilot SNR and ``linewidth_hint_hz``.
    linewidth_hint_hz : float
        Sum of both lasers' linewidths assumed for the first (narrow) tracking pass; the
        band is then set from the linewidth measured on that pass.
    measure_phase : bool
        Also measure the residual phase-error variance on the capture
        (:func:`measure_phase_error`, about 0.3 s per 1e6-symbol frame).
    """
    if n0 is not None and not (math.isfinite(n0) and n0 > 0):
        raise CalibrationError(f"shot-noise variance must be positive and finite, got {n0}")
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t_start
        now = time.perf_counter()
        timings[name] = now - t_start
        t_start = now

    i_raw = np.asarray(i_raw)
    q_raw = np.asarray(q_raw)
    if i_raw.size < fmt.frame_adc_samples + 4 * fmt.preamble_length:
        raise DspError(
            f"capture has {i_raw.size} points, fewer than one frame ({fmt.frame_adc_samples}); "
            f"record {fmt.capture_points} points"
        )
    check_clipping(i_raw, q_raw)
    n_fft = fft_length(i_raw.size, fmt)
    x = to_complex(i_raw, q_raw, scale_i, scale_q, n_out=n_fft)
    lap("convert")
    spec = spectrum(x, n_fft)
    lap("fft")
    search = find_pilots(spec, fmt)
    snr = pilot_snr(spec, search, fmt)
    if pilot_halfwidth_hz is None:
        # first pass: a narrow track is enough for the clock and the linewidth
        halfwidth = min(pilot_halfwidth(snr, fmt, linewidth_hint_hz), 2e6)
    else:
        halfwidth = pilot_halfwidth_hz
    tracks = extract_pilots(spec, search, halfwidth, fmt, i_raw.size)
    lap("pilots")
    clock = recover_clock(tracks, fmt)
    lap("clock")
    track = combine_pilots(tracks, clock, fmt)
    step, theta, nu_c = track.step, track.theta, track.nu_c
    trim = max(1, int(fmt.capture_margin / 8 / step))
    core = theta[trim : tracks.n_valid - trim]
    linewidth = estimate_linewidth(step, core, fmt.adc_rate_hz)
    # report the carrier offset from the slope of the tracked phase (noise-unbiased)
    slope = np.polyfit(np.arange(core.size) * step, core, 1)[0]
    cfo_hz = (nu_c + slope / (2 * np.pi)) * fmt.adc_rate_hz
    if pilot_halfwidth_hz is None:
        # retune the tracking band to the measured linewidth and the tracks' own noise
        # (their magnitude fluctuations; the spectral floor near the pilots is raised by
        # their phase-noise skirts and sloped by the front end), once more if that moved
        for _ in range(2):
            snr = track.snr
            halfwidth = pilot_halfwidth(snr, fmt, linewidth)
            tracks = extract_pilots(spec, search, halfwidth, fmt, i_raw.size)
            track = combine_pilots(tracks, clock, fmt)
            if abs(track.snr / snr - 1.0) < 0.2:
                break
        step, theta, nu_c = track.step, track.theta, track.nu_c
    snr = track.snr
    measured = None
    if measure_phase:
        measured = measure_phase_error(spec, search, clock, fmt, halfwidth, linewidth, i_raw.size)
    derotate(x, step, theta, nu_c)
    taper_edges(x, fmt)
    del tracks, theta
    lap("phase")
    del spec
    spec = spectrum(x, n_fft, overwrite=True)
    del x
    y2, y_spec = matched_filter(spec, fmt)
    del spec
    lap("matched_filter")
    j0, peak = coarse_timing(y_spec, fmt)
    del y_spec
    t0 = fine_timing(y2, j0, clock, fmt)
    lap("frame_sync")
    slots = sample_symbols(y2, t0, clock, fmt, n_avail=2 * i_raw.size // fmt.sps_adc)
    del y2
    lap("sample")
    g = preamble_gain(slots, fmt)
    if not (abs(g) > 0 and math.isfinite(abs(g))):
        raise NoPreambleError("preamble has no measurable amplitude after synchronisation")
    rot = np.complex64(np.conj(g) / abs(g) / math.sqrt(1.0 if n0 is None else n0))
    y = slots[fmt.quantum_slice] * rot
    phase = float(np.angle(g))
    if revealed_index is not None and revealed_alpha is not None:
        idx = np.asarray(revealed_index)
        if idx.size:
            extra = global_phase(y[idx], np.asarray(revealed_alpha))
            y *= np.complex64(np.exp(-1j * extra))
            phase += extra
    if not np.all(np.isfinite(y)):
        raise DspError("non-finite values in the processed symbols (corrupt capture?)")
    tracking_var, leakage = phase_noise_excess(fmt, linewidth, snr, halfwidth)
    lap("phase_global")
    return RxResult(
        symbols=y,
        cfo_hz=float(cfo_hz),
        clock_ppm=clock.ppm,
        frame_start=t0 * fmt.sps_adc / 2.0,
        pilot_db=search.peak_to_floor_db,
        preamble_peak=peak,
        phase=phase,
        pilot_snr=snr,
        tracking_hz=halfwidth,
        linewidth_hz=linewidth,
        phase_excess=tracking_var + leakage,
        phase_error_var=tracking_var,
        phase_error_measured=measured,
        timings=timings,
    )
