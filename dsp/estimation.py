"""Parameter estimation for heterodyne CV-QKD: T, excess noise, SNR with standard errors.

Model (docs/physics.md, shot-noise units, per real quadrature sample)::

    y = t x + z,   t = sqrt(eta T / 2),   Var z = sigma^2 = 1 + v_el + eta T xi / 2,

with ``x`` Alice's symbols (variance ``V_A`` per quadrature) and ``y`` Bob's
calibrated samples. A block of ``n`` complex symbols gives ``m = 2n`` real pairs
(I and Q are independent and identically distributed).

Estimators (least squares through the origin, as Leverrier et al. 2010)::

    t_hat = sum(x y) / sum(x^2)
    sigma2_hat = sum((y - t_hat x)^2) / (m - 1)
    T_hat = 2 t_hat^2 / eta
    xi_hat = 2 (sigma2_hat - 1 - v_el) / (eta T_hat)
    SNR_hat = t_hat^2 V_A / sigma2_hat

Standard errors (derived here, checked by Monte Carlo in tests/dsp/test_estimation.py):

* ``SE(t) = sqrt(sigma2 / sum(x^2))``: conditional on ``x``, ``t_hat - t`` is
  ``sum(x z) / sum(x^2)``, normal with this variance (unconditionally
  ``sigma^2 / ((m - 2) V_A)``, the same to O(1/m)).
* ``SE(sigma2) = sigma2 sqrt(2 / (m - 1))`` (chi-square with ``m - 1`` degrees of
  freedom); ``sigma2_hat`` is independent of ``t_hat`` given ``x``.
* ``SE(T) = 4 t SE(t) / eta`` (delta method on ``2 t^2 / eta``).
* ``SE(xi)^2 = (2 / (eta T))^2 (SE(sigma2)^2 + SE(v_el)^2) + (xi SE(T) / T)^2``
  (delta method; ``t_hat`` and ``sigma2_hat`` uncorrelated; ``v_el`` from an
  independent calibration).
* ``SE(SNR) / SNR = sqrt(4 SE(t)^2 / t^2 + 2 / (m - 1) [+ 2 / m])``, the bracketed
  term when ``V_A`` is the block's empirical ``mean(x^2)`` rather than a given value.

Worst case (Leverrier, Grosshans, Grangier 2010), each bound failing with probability
``eps_PE / 2``, ``z = z_{eps_PE/2}`` with ``erfc(z / sqrt 2) = eps_PE``::

    t_min = t_hat - z SE(t),    sigma2_max = sigma2_hat + z sigma2_hat sqrt(2 / m),
    T_worst = 2 t_min^2 / eta,  xi_worst = 2 (sigma2_max - 1 - v_el) / (eta T_worst).

Leverrier et al. sacrifice the ``m`` disclosed symbols; after successful
reconciliation Alice knows Bob's data and all ``N`` symbols can serve for estimation
and key alike (Ruppert, Usenko, Filip 2014): ``all_symbols=True``.

The uncertainty of ``eta`` (factory calibration) and of the shot-noise level are not
included: they rescale ``T`` and ``sigma2`` systematically and are the calibration's
business.

References
----------
A. Leverrier, F. Grosshans, P. Grangier, Phys. Rev. A 81, 062343 (2010).
L. Ruppert, V. C. Usenko, R. Filip, Phys. Rev. A 90, 062310 (2014).
F. Laudenbach et al., Adv. Quantum Technol. 1, 1800011 (2018), sec. 5.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike

from dsp.keyrate import z_quantile

__all__ = [
    "Estimates",
    "EstimationError",
    "estimate_electronic_noise",
    "estimate_parameters",
    "split_for_estimation",
]


class EstimationError(ValueError):
    """The data do not allow an estimate (no correlation, degenerate, too short)."""


@dataclass(frozen=True)
class Estimates:
    """Channel estimates from one block, with standard errors and worst-case bounds.

    All values are finite floats. ``T`` is the channel transmittance (before the
    detector efficiency), ``xi`` the excess noise referred to the channel input (SNU),
    ``snr`` the per-quadrature SNR at Bob's output. ``n`` complex symbols were used;
    ``n_total`` is the block size (None when unknown), ``all_symbols`` whether those
    ``n`` are the whole block (Ruppert 2014) rather than a disclosed subset.
    ``eps_pe`` is None when no worst-case bound was asked for, and then the worst-case
    fields equal the point estimates. ``T_stderr`` and ``xi_stderr`` include the
    shot-noise calibration's error (``*_calibration``, zero when ``n0_rel_stderr`` was 0).
    """

    n: int
    n_total: int | None
    all_symbols: bool
    V_A: float
    V_A_empirical: float
    eta: float
    v_el: float
    v_el_stderr: float
    t: float
    t_stderr: float
    sigma2: float
    sigma2_stderr: float
    T: float
    T_stderr: float
    xi: float
    xi_stderr: float
    snr: float
    snr_stderr: float
    phase: float
    eps_pe: float | None
    z: float
    t_min: float
    sigma2_max: float
    T_worst: float
    xi_worst: float
    n0_rel_stderr: float = 0.0
    T_stderr_calibration: float = 0.0
    xi_stderr_calibration: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready: no NaN, no infinity)."""
        return asdict(self)


def _as_flat(a: ArrayLike, name: str) -> tuple[np.ndarray, bool, int]:
    """Flat float64 or complex128 view (copy only to widen), complex flag, real count."""
    arr = np.asarray(a)
    if arr.size == 0:
        raise EstimationError(f"parameter estimation: {name} is empty")
    if np.iscomplexobj(arr):
        flat = arr.astype(np.complex128, copy=False).ravel()
        m = 2 * flat.size
        is_complex = True
    else:
        if not np.issubdtype(arr.dtype, np.number):
            raise EstimationError(f"parameter estimation: {name} is not numeric ({arr.dtype})")
        flat = arr.astype(np.float64, copy=False).ravel()
        m = flat.size
        if m % 2:
            raise EstimationError(
                f"parameter estimation: {name} has {m} real values; heterodyne data "
                "need an even number (I and Q of each symbol)"
            )
        is_complex = False
    if not np.isfinite(flat).all():
        raise EstimationError(f"parameter estimation: {name} contains NaN or infinity")
    return flat, is_complex, m


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Sum of products over all real components (I and Q) without copies."""
    return float(np.vdot(a, b).real)


def _quadrature_variance(a: np.ndarray, is_complex: bool) -> float:
    """Pooled per-quadrature sample variance (means removed)."""
    if is_complex:
        return float((np.var(a.real, ddof=1) + np.var(a.imag, ddof=1)) / 2.0)
    return float(np.var(a, ddof=1))


def _finite(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise EstimationError(f"parameter estimation: {name} is not finite ({value!r})")


def estimate_parameters(
    x: ArrayLike,
    y: ArrayLike,
    *,
    eta: float,
    v_el: float,
    V_A: float | None = None,
    v_el_stderr: float = 0.0,
    n0_rel_stderr: float = 0.0,
    eps_pe: float | None = 1e-10,
    n_total: int | None = None,
    all_symbols: bool = False,
    symbols: Literal["quadrature", "amplitude"] = "quadrature",
) -> Estimates:
    """Estimate ``T``, ``xi``, SNR and their errors from Alice's and Bob's data.

    Parameters
    ----------
    x : array_like
        Alice's symbols in SNU: complex (one per symbol) or real with I and Q values
        (an even count, aligned with ``y``). Quadratures ``x_A + i p_A`` (variance
        ``V_A`` each) by default; coherent amplitudes ``alpha`` with
        ``symbols="amplitude"`` (``x_A = 2 Re alpha``, docs/physics.md).
    y : array_like
        Bob's calibrated samples in SNU, same shape and type as ``x``, after phase
        correction (the real part of ``conj(x) y`` carries the correlation).
    eta : float
        Detector efficiency in (0, 1] (receiver calibration).
    v_el : float
        Electronic noise in SNU (>= 0), e.g. from :func:`estimate_electronic_noise`.
    V_A : float, optional
        Modulation variance from Alice's calibration; used for the SNR and kept for the
        key rate. Default: the block's ``mean(x^2)``.
    v_el_stderr : float
        Standard error of ``v_el``, propagated into ``xi_stderr``.
    n0_rel_stderr : float
        Relative standard error of the shot-noise unit the samples were normalised with
        (:attr:`dsp.calibration.NoiseCalibration.n0_rel_stderr`). An error ``e`` in
        ``N0`` scales ``T-hat`` by ``1 - e`` and shifts ``xi-hat`` by ``-2 e / (eta T)``;
        it is independent of the block's own noise, so the variances add. When it is
        positive the worst-case values carry it too, in the direction that hurts both
        ``T`` and ``xi``, and ``z`` is taken at ``eps_pe / 2``: each of the three bounds
        (``t``, ``sigma^2``, ``N0``) fails with probability ``eps_pe / 4`` (union bound).
    eps_pe : float or None
        Failure probability of the worst-case bounds (Leverrier 2010); None skips them
        (worst-case fields = point estimates, for asymptotic use only).
    n_total : int, optional
        Symbols in the whole block (for the finite-size key rate).
    all_symbols : bool
        The data are the whole block, used for estimation after reconciliation
        (Ruppert 2014); then ``n_total`` defaults to ``n``.
    symbols : {"quadrature", "amplitude"}
        What ``x`` holds (see ``x``). When ``V_A`` is given, a per-quadrature
        variance of ``x`` off by more than a factor 2 is rejected, which catches
        amplitudes passed as quadratures (a factor 4).

    Returns
    -------
    Estimates

    Raises
    ------
    EstimationError
        (a ValueError) on empty, mismatched or non-finite data, zero variance, no
        positive correlation (``t_hat <= 0``: lost sync or phase), or a block too short
        for a positive worst-case transmittance at ``eps_pe``.
    ValueError
        On out-of-range ``eta``, ``v_el``, ``V_A``, ``eps_pe`` or ``n_total``, or
        ``x`` whose variance contradicts ``V_A``.
    """
    if symbols not in ("quadrature", "amplitude"):
        raise ValueError(
            f"parameter estimation: symbols={symbols!r} must be 'quadrature' or 'amplitude'"
        )
    if not (math.isfinite(eta) and 0 < eta <= 1):
        raise ValueError(f"parameter estimation: eta={eta!r} must be in (0, 1]")
    if not (math.isfinite(v_el) and v_el >= 0):
        raise ValueError(f"parameter estimation: v_el={v_el!r} must be finite and >= 0")
    if not (math.isfinite(v_el_stderr) and v_el_stderr >= 0):
        raise ValueError(f"parameter estimation: v_el_stderr={v_el_stderr!r} must be >= 0")
    if not (math.isfinite(n0_rel_stderr) and 0 <= n0_rel_stderr < 0.1):
        raise ValueError(
            f"parameter estimation: n0_rel_stderr={n0_rel_stderr!r} must be in [0, 0.1)"
        )
    if V_A is not None and not (math.isfinite(V_A) and V_A > 0):
        raise ValueError(f"parameter estimation: V_A={V_A!r} must be finite and > 0")
    xf, x_complex, m = _as_flat(x, "x (Alice's symbols)")
    yf, y_complex, m_y = _as_flat(y, "y (Bob's samples)")
    if m != m_y or x_complex != y_complex:
        raise EstimationError(
            f"parameter estimation: x and y differ in length or type "
            f"({m // 2} vs {m_y // 2} symbols, complex {x_complex} vs {y_complex})"
        )
    scale = 2.0 if symbols == "amplitude" else 1.0  # x_A = 2 Re(alpha)
    n = m // 2
    if n < 2:
        raise EstimationError(f"parameter estimation: {n} symbol(s), need at least 2")
    if all_symbols:
        n_total = n if n_total is None else n_total
        if n_total != n:
            raise ValueError(
                f"parameter estimation: all_symbols with n_total={n_total} but {n} symbols given"
            )
    elif n_total is not None and n_total <= n:
        raise ValueError(
            f"parameter estimation: n_total={n_total} must exceed the {n} estimation symbols"
        )

    sxx = scale * scale * _dot(xf, xf)
    if sxx <= 0:
        raise EstimationError("parameter estimation: Alice's symbols x are all zero")
    sxy = scale * _dot(xf, yf)
    syy = _dot(yf, yf)
    t = sxy / sxx
    # Residual sum of squares without forming y - t x (bounded below by rounding).
    rss = max(syy - t * sxy, 0.0)
    sigma2 = rss / (m - 1)
    _finite(t=t, sigma2=sigma2)
    if sigma2 <= 1e-12 * max(syy / m, 1e-300):
        raise EstimationError(
            "parameter estimation: y is an exact multiple of x (no noise); samples not in SNU?"
        )
    if t <= 0:
        raise EstimationError(
            f"parameter estimation: no positive correlation between x and y (t_hat={t:.3g}); "
            "check frame sync and phase recovery"
        )
    v_emp = sxx / m
    v_a = v_emp if V_A is None else float(V_A)
    if not 0.5 <= v_emp / v_a <= 2.0:
        hint = (
            " (x looks like coherent amplitudes alpha: pass symbols='amplitude')"
            if symbols == "quadrature" and abs(v_emp / v_a - 0.25) < 0.1
            else ""
        )
        raise ValueError(
            f"parameter estimation: x has variance {v_emp:.4g} per quadrature but "
            f"V_A={v_a:.4g} SNU{hint}"
        )
    phase = 0.0
    if x_complex:
        cross = complex(np.vdot(xf, yf))
        phase = math.atan2(cross.imag, cross.real)  # unaffected by the amplitude scale

    t_se = math.sqrt(sigma2 / sxx)
    s2_se = sigma2 * math.sqrt(2.0 / (m - 1))
    T = 2.0 * t * t / eta
    T_se = 4.0 * t * t_se / eta
    xi = 2.0 * (sigma2 - 1.0 - v_el) / (eta * T)
    xi_se = math.sqrt((2.0 / (eta * T)) ** 2 * (s2_se**2 + v_el_stderr**2) + (xi * T_se / T) ** 2)
    T_cal = T * n0_rel_stderr
    xi_cal = 2.0 * n0_rel_stderr / (eta * T)
    T_se = math.hypot(T_se, T_cal)
    xi_se = math.hypot(xi_se, xi_cal)
    snr = t * t * v_a / sigma2
    rel2 = 4.0 * (t_se / t) ** 2 + 2.0 / (m - 1) + (2.0 / m if V_A is None else 0.0)
    snr_se = snr * math.sqrt(rel2)

    if eps_pe is None:
        z, t_min, s2_max, T_w, xi_w = 0.0, t, sigma2, T, xi
    else:
        z = z_quantile(eps_pe / 2 if n0_rel_stderr > 0 else eps_pe)
        t_min = t - z * t_se
        s2_max = sigma2 + z * sigma2 * math.sqrt(2.0 / m)
        if t_min <= 0:
            raise EstimationError(
                f"parameter estimation: {n} symbols are too few for eps_PE={eps_pe:g}: "
                f"worst-case t_min={t_min:.3g} <= 0 (t_hat={t:.3g}, SE {t_se:.3g}); "
                "use a longer block or a larger eps_PE"
            )
        T_w = 2.0 * t_min * t_min / eta
        xi_w = 2.0 * (s2_max - 1.0 - v_el) / (eta * T_w)
        if n0_rel_stderr > 0:
            shift = z * n0_rel_stderr
            if shift >= 0.5:
                raise EstimationError(
                    f"parameter estimation: shot-noise calibration too uncertain for "
                    f"eps_PE={eps_pe:g} (relative SE {n0_rel_stderr:.3g}); use longer "
                    "calibration captures"
                )
            T_w *= 1.0 - shift
            xi_w += 2.0 * shift / (eta * T_w)
    _finite(T=T, xi=xi, snr=snr, xi_stderr=xi_se, T_worst=T_w, xi_worst=xi_w)
    return Estimates(
        n=n,
        n_total=n_total,
        all_symbols=all_symbols,
        V_A=v_a,
        V_A_empirical=v_emp,
        eta=float(eta),
        v_el=float(v_el),
        v_el_stderr=float(v_el_stderr),
        t=t,
        t_stderr=t_se,
        sigma2=sigma2,
        sigma2_stderr=s2_se,
        T=T,
        T_stderr=T_se,
        xi=xi,
        xi_stderr=xi_se,
        snr=snr,
        snr_stderr=snr_se,
        phase=phase,
        eps_pe=eps_pe,
        z=z,
        t_min=t_min,
        sigma2_max=s2_max,
        T_worst=T_w,
        xi_worst=xi_w,
        n0_rel_stderr=float(n0_rel_stderr),
        T_stderr_calibration=T_cal,
        xi_stderr_calibration=xi_cal,
    )


def estimate_electronic_noise(electronic: ArrayLike, shot: ArrayLike) -> tuple[float, float, float]:
    """Electronic noise in SNU from calibration captures, with its standard error.

    ``electronic``: samples with the LO off (electronic noise only, variance ``e``);
    ``shot``: samples with the LO on and the input shutter closed (vacuum plus
    electronic noise, variance ``s``), both through the same filters as the data.
    Per quadrature, the shot-noise unit is ``N0 = s - e`` and ``v_el = e / N0``.
    Complex samples count as two real quadrature samples. Sample variances of
    Gaussian data have ``Var(s_hat) = 2 s^2 / (k - 1)``, so by the delta method

        SE(v_el)^2 = (s / N0^2)^2 2 e^2 / (k_e - 1) + (e / N0^2)^2 2 s^2 / (k_s - 1).

    Samples must be independent (one per symbol after the matched filter).

    Returns
    -------
    tuple of float
        ``(v_el, v_el_stderr, N0)``, ``N0`` in the captures' units squared.
    """
    ef, e_complex, k_e = _as_flat(electronic, "electronic-noise capture")
    sf, s_complex, k_s = _as_flat(shot, "shot-noise capture")
    if k_e < 4 or k_s < 4:
        raise EstimationError("electronic noise: calibration captures need >= 2 symbols each")
    e = _quadrature_variance(ef, e_complex)
    s = _quadrature_variance(sf, s_complex)
    n0 = s - e
    if not n0 > 0:
        raise EstimationError(
            f"electronic noise: shot-noise capture variance {s:.4g} does not exceed the "
            f"electronic-noise variance {e:.4g}; is the LO on in the shot-noise capture?"
        )
    v = e / n0
    se = math.sqrt(
        (s / n0**2) ** 2 * 2 * e * e / (k_e - 1) + (e / n0**2) ** 2 * 2 * s * s / (k_s - 1)
    )
    return v, se, n0


def split_for_estimation(
    n_total: int, pe_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random disjoint ``(pe_indices, key_indices)`` for a Leverrier-style disclosure.

    ``round(pe_fraction * n_total)`` symbols, chosen uniformly with ``rng`` (in
    production a generator seeded from ``secrets``), are disclosed for estimation.
    Both index arrays are sorted.
    """
    if n_total < 3:
        raise ValueError(f"split for estimation: n_total={n_total} too small")
    if not 0 < pe_fraction < 1:
        raise ValueError(f"split for estimation: pe_fraction={pe_fraction!r} not in (0, 1)")
    m = min(max(2, round(pe_fraction * n_total)), n_total - 1)
    perm = rng.permutation(n_total)
    return np.sort(perm[:m]), np.sort(perm[m:])
