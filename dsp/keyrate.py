"""Secret key rate of Gaussian-modulated coherent-state CV-QKD with heterodyne detection.

Protocol: GG02 with Gaussian modulation of variance ``V_A`` (SNU), heterodyne
(phase-diverse) detection at Bob, reverse reconciliation, collective attacks. Detector
imperfections (efficiency ``eta``, electronic noise ``v_el``) are either *trusted*
(outside Eve's control) or *untrusted* (attributed to Eve).

Conventions are those of ``docs/physics.md``: shot-noise units, excess noise ``xi``
referred to the channel input, and per quadrature at Bob after calibration

    y = sqrt(eta T / 2) x_A + z,   Var z = 1 + v_el + eta T xi / 2.

Rates are in bits per (complex) symbol.

Formulas
--------
With ``V = V_A + 1``, ``chi_line = 1/T - 1 + xi``,
``chi_het = (2 - eta + 2 v_el) / eta`` and ``chi_tot = chi_line + chi_het / T``
(Laudenbach et al. 2018, sec. 4):

* ``I_AB = log2((V + chi_tot) / (1 + chi_tot)) = log2(1 + SNR)``,
* ``chi_BE = G(l1) + G(l2) - G(l3) - G(l4)`` (the fifth eigenvalue is 1), with
  ``l1,2^2 = (A +- sqrt(A^2 - 4B)) / 2``, ``l3,4^2 = (C +- sqrt(C^2 - 4D)) / 2``,

  ``A = V^2 (1 - 2T) + 2T + T^2 (V + chi_line)^2``, ``B = T^2 (V chi_line + 1)^2``,
  ``C = [A chi_het^2 + B + 1 + 2 chi_het (V sqrt(B) + T (V + chi_line))
  + 2 T (V^2 - 1)] / [T (V + chi_tot)]^2``,
  ``D = [(V + sqrt(B) chi_het) / (T (V + chi_tot))]^2``,

  and ``G(x) = ((x+1)/2) log2((x+1)/2) - ((x-1)/2) log2((x-1)/2)``.

* Untrusted detector (Laudenbach et al. 2018, sec. 7.3): the detector loss and noise
  are Eve's, so the same formulas apply to an ideal detector (``eta = 1``,
  ``v_el = 0``) behind a channel of transmittance ``eta T`` and excess noise
  ``xi + 2 v_el / (eta T)``; ``I_AB`` is unchanged.

* Finite size (Leverrier, Grosshans, Grangier 2010, eq. for ``K``): of ``N`` symbols,
  ``m`` are disclosed for parameter estimation and ``n = N - m`` make the key,

      K = (n / N) [beta I_AB - chi_BE(T_worst, xi_worst) - Delta(n)],
      Delta(n) = 7 sqrt(log2(2 / eps_smooth) / n) + (2 / n) log2(1 / eps_PA),

  (``7 = 2 dim H_X + 3`` for a binary raw key), ``T_worst`` and ``xi_worst`` the
  ``eps_PE`` confidence bounds of :func:`worst_case_parameters`. The protocol is then
  ``eps = eps_PE + eps_smooth + eps_PA + eps_EC`` secure. With all symbols used for
  estimation after reconciliation (Ruppert, Usenko, Filip 2014) ``m = n = N``.

* PLOB bound (Pirandola, Laurenza, Ottaviani, Banchi 2017): ``-log2(1 - T)``.

References
----------
F. Laudenbach et al., "Continuous-variable quantum key distribution with Gaussian
modulation - the theory of practical implementations", Adv. Quantum Technol. 1,
1800011 (2018), arXiv:1703.09278.
A. Leverrier, F. Grosshans, P. Grangier, "Finite-size analysis of a
continuous-variable quantum key distribution", Phys. Rev. A 81, 062343 (2010).
L. Ruppert, V. C. Usenko, R. Filip, "Long-distance continuous-variable quantum key
distribution with efficient channel estimation", Phys. Rev. A 90, 062310 (2014).
S. Pirandola et al., "Fundamental limits of repeaterless quantum communications",
Nat. Commun. 8, 15043 (2017).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np
from scipy import optimize, special

__all__ = [
    "FiniteSizeResult",
    "KeyRateResult",
    "asymptotic_key_rate",
    "best_modulation_variance",
    "capacity",
    "entropy_g",
    "fibre_transmittance",
    "finite_size_correction",
    "finite_size_key_rate",
    "holevo_bound",
    "key_rate_from_estimates",
    "mutual_information",
    "plob_bound",
    "snr",
    "symplectic_eigenvalues",
    "untrusted_equivalent",
    "worst_case_parameters",
    "z_quantile",
]


def _check(
    V_A: float, T: float, xi: float, eta: float, v_el: float, *, allow_t0: bool = False
) -> None:
    """Validate physical parameters; raise ValueError naming the bad one."""
    values = {"V_A": V_A, "T": T, "xi": xi, "eta": eta, "v_el": v_el}
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"key rate: parameter {name}={value!r} is not a finite number")
    if V_A <= 0:
        raise ValueError(f"key rate: modulation variance V_A={V_A} must be > 0 (SNU)")
    low_ok = T >= 0 if allow_t0 else T > 0
    if not (low_ok and T < 1):
        raise ValueError(f"key rate: transmittance T={T} must be in (0, 1)")
    if xi < 0:
        raise ValueError(f"key rate: excess noise xi={xi} must be >= 0 (SNU)")
    if not 0 < eta <= 1:
        raise ValueError(f"key rate: detector efficiency eta={eta} must be in (0, 1]")
    if v_el < 0:
        raise ValueError(f"key rate: electronic noise v_el={v_el} must be >= 0 (SNU)")


def entropy_g(nu: float) -> float:
    """Von Neumann entropy (bits) of a thermal mode of symplectic eigenvalue ``nu``.

    ``G(nu) = ((nu+1)/2) log2((nu+1)/2) - ((nu-1)/2) log2((nu-1)/2)``; ``G(1) = 0``.
    Values below 1 by rounding are treated as 1.

    Parameters
    ----------
    nu : float
        Symplectic eigenvalue (>= 1 in SNU).

    Returns
    -------
    float
        Entropy in bits.
    """
    if not math.isfinite(nu):
        raise ValueError(f"entropy_g: symplectic eigenvalue {nu!r} is not finite")
    if nu <= 1.0:
        return 0.0
    a = (nu + 1.0) / 2.0
    b = (nu - 1.0) / 2.0
    return a * math.log2(a) - b * math.log2(b)


def snr(V_A: float, T: float, xi: float, eta: float, v_el: float) -> float:
    """Signal-to-noise ratio per quadrature at Bob's heterodyne output.

    ``SNR = (eta T V_A / 2) / (1 + v_el + eta T xi / 2)`` (docs/physics.md).

    Parameters
    ----------
    V_A, T, xi, eta, v_el : float
        Modulation variance (SNU), channel transmittance, excess noise at the channel
        input (SNU), detector efficiency, electronic noise (SNU).

    Returns
    -------
    float
        The SNR (linear, same for both quadratures).
    """
    _check(V_A, T, xi, eta, v_el, allow_t0=True)
    return (eta * T * V_A / 2.0) / (1.0 + v_el + eta * T * xi / 2.0)


def capacity(snr_value: float) -> float:
    """Shannon capacity ``log2(1 + SNR)`` in bits per complex symbol (two quadratures).

    This is the mutual information of Gaussian-modulated heterodyne data and the
    yardstick for the reconciliation efficiency ``beta = R_code / capacity``.

    Parameters
    ----------
    snr_value : float
        Per-quadrature SNR (>= 0).

    Returns
    -------
    float
        Bits per complex symbol.
    """
    if not (math.isfinite(snr_value) and snr_value >= 0):
        raise ValueError(f"capacity: SNR={snr_value!r} must be a finite number >= 0")
    return math.log1p(snr_value) / math.log(2.0)


def mutual_information(V_A: float, T: float, xi: float, eta: float, v_el: float) -> float:
    """Alice-Bob mutual information ``I_AB`` (bits/symbol) for heterodyne detection.

    ``I_AB = log2((V + chi_tot) / (1 + chi_tot)) = log2(1 + SNR)`` (Laudenbach et al.
    2018, sec. 4). The same for trusted and untrusted detector noise.
    """
    return capacity(snr(V_A, T, xi, eta, v_el))


def untrusted_equivalent(T: float, xi: float, eta: float, v_el: float) -> tuple[float, float]:
    """Channel equivalent to an untrusted detector: ``(eta T, xi + 2 v_el / (eta T))``.

    Eve is granted the detector loss and electronic noise; Bob then has an ideal
    heterodyne detector (``eta = 1``, ``v_el = 0``) and sees the same statistics.
    """
    return eta * T, xi + 2.0 * v_el / (eta * T)


def symplectic_eigenvalues(
    V_A: float, T: float, xi: float, eta: float, v_el: float, *, trusted: bool = True
) -> tuple[float, float, float, float]:
    """Symplectic eigenvalues ``(l1, l2, l3, l4)`` for the Holevo bound.

    ``l1, l2`` belong to Eve's state ``rho_E`` (= ``rho_AB``), ``l3, l4`` to
    Eve's state conditioned on Bob's heterodyne outcome (the fifth one is 1).
    The small member of each pair is computed as ``sqrt(B) / l1`` (resp.
    ``sqrt(D) / l3``) to avoid cancellation.
    """
    _check(V_A, T, xi, eta, v_el)
    if not trusted:
        T, xi = untrusted_equivalent(T, xi, eta, v_el)
        eta, v_el = 1.0, 0.0
        if T >= 1:
            raise ValueError(f"key rate: effective transmittance eta*T={T} must be < 1")
    V = V_A + 1.0
    chi_line = 1.0 / T - 1.0 + xi
    chi_het = (2.0 - eta + 2.0 * v_el) / eta
    chi_tot = chi_line + chi_het / T
    A = V * V * (1.0 - 2.0 * T) + 2.0 * T + T * T * (V + chi_line) ** 2
    sqrt_B = T * (V * chi_line + 1.0)
    denom = T * (V + chi_tot)
    C = (
        A * chi_het**2
        + sqrt_B**2
        + 1.0
        + 2.0 * chi_het * (V * sqrt_B + T * (V + chi_line))
        + 2.0 * T * (V * V - 1.0)
    ) / denom**2
    sqrt_D = (V + sqrt_B * chi_het) / denom
    l1 = math.sqrt((A + math.sqrt(max(A * A - 4.0 * sqrt_B**2, 0.0))) / 2.0)
    l3 = math.sqrt((C + math.sqrt(max(C * C - 4.0 * sqrt_D**2, 0.0))) / 2.0)
    return l1, sqrt_B / l1, l3, sqrt_D / l3


def holevo_bound(
    V_A: float, T: float, xi: float, eta: float, v_el: float, *, trusted: bool = True
) -> float:
    """Holevo information ``chi_BE`` (bits/symbol) between Bob's data and Eve.

    Reverse reconciliation, heterodyne detection, collective attacks; see the module
    docstring for the formulas (Laudenbach et al. 2018, sec. 4 and 7.3).

    Parameters
    ----------
    V_A, T, xi, eta, v_el : float
        Modulation variance (SNU), channel transmittance in (0, 1), excess noise at
        the channel input (SNU), detector efficiency in (0, 1], electronic noise (SNU).
    trusted : bool
        Whether the detector's loss and electronic noise are trusted.

    Returns
    -------
    float
        ``chi_BE`` in bits per symbol.
    """
    l1, l2, l3, l4 = symplectic_eigenvalues(V_A, T, xi, eta, v_el, trusted=trusted)
    return entropy_g(l1) + entropy_g(l2) - entropy_g(l3) - entropy_g(l4)


@dataclass(frozen=True)
class KeyRateResult:
    """Asymptotic key rate and its parts (bits per symbol)."""

    rate: float
    I_AB: float
    chi_be: float
    beta: float
    snr: float
    trusted: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def _check_beta(beta: float) -> None:
    if not (math.isfinite(beta) and 0 < beta <= 1):
        raise ValueError(f"key rate: reconciliation efficiency beta={beta!r} must be in (0, 1]")


def asymptotic_key_rate(
    V_A: float,
    T: float,
    xi: float,
    eta: float,
    v_el: float,
    beta: float,
    *,
    trusted: bool = True,
) -> KeyRateResult:
    """Asymptotic reverse-reconciliation key rate ``K = beta I_AB - chi_BE``.

    The rate is returned as computed, negative when no key can be made (clip for
    display).

    Parameters
    ----------
    V_A, T, xi, eta, v_el : float
        See :func:`holevo_bound`.
    beta : float
        Reconciliation efficiency in (0, 1].
    trusted : bool
        Trusted (default) or untrusted detector noise.

    Returns
    -------
    KeyRateResult
    """
    _check_beta(beta)
    s = snr(V_A, T, xi, eta, v_el)
    i_ab = capacity(s)
    chi = holevo_bound(V_A, T, xi, eta, v_el, trusted=trusted)
    return KeyRateResult(beta * i_ab - chi, i_ab, chi, beta, s, trusted)


def plob_bound(T: float) -> float:
    """PLOB repeaterless bound ``-log2(1 - T)`` (bits per channel use)."""
    if not (math.isfinite(T) and 0 <= T < 1):
        raise ValueError(f"PLOB bound: transmittance T={T!r} must be in [0, 1)")
    return -math.log1p(-T) / math.log(2.0)


def fibre_transmittance(
    length_km: float, att_db_per_km: float = 0.2, extra_loss_db: float = 0.0
) -> float:
    """Transmittance ``10^(-(att * L + extra) / 10)`` of a fibre link.

    Parameters
    ----------
    length_km : float
        Fibre length (km, >= 0).
    att_db_per_km : float
        Attenuation (dB/km), 0.2 for standard SMF at 1550 nm.
    extra_loss_db : float
        Connectors, splices, switch insertion loss (dB, >= 0).
    """
    for name, value in (
        ("length_km", length_km),
        ("att_db_per_km", att_db_per_km),
        ("extra_loss_db", extra_loss_db),
    ):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"fibre_transmittance: {name}={value!r} must be finite and >= 0")
    return 10.0 ** (-(att_db_per_km * length_km + extra_loss_db) / 10.0)


def z_quantile(eps_pe: float) -> float:
    """``z_{eps/2}`` with ``erfc(z / sqrt 2) = eps``: each one-sided bound fails w.p. eps/2.

    ``eps_pe = 1e-10`` gives ``z = 6.47`` (Leverrier et al. 2010).
    """
    if not (0 < eps_pe < 1):
        raise ValueError(f"eps_PE={eps_pe!r} must be in (0, 1)")
    return math.sqrt(2.0) * float(special.erfcinv(eps_pe))


def worst_case_parameters(
    V_A: float,
    T: float,
    xi: float,
    eta: float,
    v_el: float,
    m: int,
    eps_pe: float = 1e-10,
) -> tuple[float, float]:
    """Expected worst-case ``(T_worst, xi_worst)`` after estimation on ``m`` symbols.

    Leverrier et al. 2010 with the heterodyne model ``y = t x + z`` on ``2m`` real
    samples (two quadratures per symbol), ``t = sqrt(eta T / 2)``,
    ``sigma^2 = 1 + v_el + eta T xi / 2``:

        t_min = t - z_{eps/2} sqrt(sigma^2 / (2 m V_A)),
        sigma^2_max = sigma^2 + z_{eps/2} sigma^2 sqrt(2 / (2 m)),
        T_worst = 2 t_min^2 / eta,
        xi_worst = 2 (sigma^2_max - 1 - v_el) / (eta T_worst).

    This is the planning version (true values in, typical bounds out); measured data
    go through :func:`dsp.estimation.estimate_parameters`.

    Returns
    -------
    tuple of float
        ``(T_worst, xi_worst)``; ``T_worst = 0`` when ``t_min <= 0`` (no key possible),
        and then ``xi_worst`` is ``xi``.
    """
    _check(V_A, T, xi, eta, v_el)
    if m < 2:
        raise ValueError(f"worst-case parameters: m={m} estimation symbols, need >= 2")
    z = z_quantile(eps_pe)
    m_real = 2 * m
    t = math.sqrt(eta * T / 2.0)
    sigma2 = 1.0 + v_el + eta * T * xi / 2.0
    t_min = t - z * math.sqrt(sigma2 / (m_real * V_A))
    sigma2_max = sigma2 + z * sigma2 * math.sqrt(2.0 / m_real)
    if t_min <= 0:
        return 0.0, xi
    T_w = 2.0 * t_min * t_min / eta
    return T_w, 2.0 * (sigma2_max - 1.0 - v_el) / (eta * T_w)


def finite_size_correction(n: int, eps_smooth: float = 1e-10, eps_pa: float = 1e-10) -> float:
    """Leverrier et al. 2010 ``Delta(n) = 7 sqrt(log2(2/eps_s)/n) + (2/n) log2(1/eps_PA)``."""
    if n < 1:
        raise ValueError(f"finite-size correction: n={n} key symbols, need >= 1")
    for name, eps in (("eps_smooth", eps_smooth), ("eps_PA", eps_pa)):
        if not (0 < eps < 1):
            raise ValueError(f"finite-size correction: {name}={eps!r} must be in (0, 1)")
    return 7.0 * math.sqrt(math.log2(2.0 / eps_smooth) / n) + 2.0 / n * math.log2(1.0 / eps_pa)


@dataclass(frozen=True)
class FiniteSizeResult:
    """Finite-size key rate (bits per transmitted symbol) with everything it used.

    ``rate`` is ``(n/N)(beta I_AB - chi_be_worst - delta)``, negative when no key can
    be made; when the estimation bound leaves no transmittance (``T_worst = 0``) the
    rate and ``chi_be_worst`` are 0. ``N`` symbols in the block, ``m`` used for
    estimation, ``n`` for the key; ``eps_total`` is the security parameter.
    """

    rate: float
    I_AB: float
    chi_be_worst: float
    delta: float
    T_worst: float
    xi_worst: float
    N: int
    n: int
    m: int
    beta: float
    eps_pe: float
    eps_smooth: float
    eps_pa: float
    eps_total: float
    all_symbols: bool
    trusted: bool

    @property
    def key_bits(self) -> float:
        """Secret bits from the whole block (``rate * N``, may be negative)."""
        return self.rate * self.N

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-ready)."""
        return asdict(self)


def _finite_rate(
    i_ab: float,
    T_w: float,
    xi_w: float,
    V_A: float,
    eta: float,
    v_el: float,
    beta: float,
    N: int,
    n: int,
    m: int,
    eps: tuple[float, float, float, float],
    all_symbols: bool,
    trusted: bool,
) -> FiniteSizeResult:
    eps_pe, eps_smooth, eps_pa, eps_ec = eps
    delta = finite_size_correction(n, eps_smooth, eps_pa)
    if T_w <= 0:
        chi, rate = 0.0, 0.0
    else:
        # Conservative caps: a statistical T_worst >= 1 or xi_worst < 0 is unphysical.
        T_eval, xi_eval = min(T_w, 1.0 - 1e-9), max(xi_w, 0.0)
        chi = holevo_bound(V_A, T_eval, xi_eval, eta, v_el, trusted=trusted)
        rate = (n / N) * (beta * i_ab - chi - delta)
    return FiniteSizeResult(
        rate=rate,
        I_AB=i_ab,
        chi_be_worst=chi,
        delta=delta,
        T_worst=T_w,
        xi_worst=xi_w,
        N=N,
        n=n,
        m=m,
        beta=beta,
        eps_pe=eps_pe,
        eps_smooth=eps_smooth,
        eps_pa=eps_pa,
        eps_total=eps_pe + eps_smooth + eps_pa + eps_ec,
        all_symbols=all_symbols,
        trusted=trusted,
    )


def _split(N: int, pe_fraction: float, all_symbols: bool) -> tuple[int, int]:
    if N < 4:
        raise ValueError(f"finite-size key rate: block size N={N} too small")
    if all_symbols:
        return N, N
    if not 0 < pe_fraction < 1:
        raise ValueError(f"finite-size key rate: pe_fraction={pe_fraction!r} must be in (0, 1)")
    m = max(2, round(N * pe_fraction))
    n = N - m
    if n < 1:
        raise ValueError(f"finite-size key rate: no key symbols left (N={N}, m={m})")
    return n, m


def finite_size_key_rate(
    V_A: float,
    T: float,
    xi: float,
    eta: float,
    v_el: float,
    beta: float,
    N: int,
    *,
    pe_fraction: float = 0.5,
    all_symbols: bool = False,
    eps_pe: float = 1e-10,
    eps_smooth: float = 1e-10,
    eps_pa: float = 1e-10,
    eps_ec: float = 0.0,
    trusted: bool = True,
) -> FiniteSizeResult:
    """Expected finite-size key rate for a block of ``N`` symbols (Leverrier 2010).

    ``K = (n/N) [beta I_AB(T, xi) - chi_BE(T_worst, xi_worst) - Delta(n)]`` with
    ``m = pe_fraction N`` symbols disclosed for estimation and ``n = N - m`` for the
    key, or ``m = n = N`` when ``all_symbols`` (Ruppert et al. 2014: estimation on
    all symbols after successful reconciliation). ``(T_worst, xi_worst)`` from
    :func:`worst_case_parameters`. Security: ``eps_pe + eps_smooth + eps_pa + eps_ec``.

    Parameters
    ----------
    V_A, T, xi, eta, v_el, beta : float
        See :func:`asymptotic_key_rate`.
    N : int
        Symbols in the block.
    pe_fraction : float
        Fraction disclosed for parameter estimation (ignored with ``all_symbols``).
    all_symbols : bool
        Estimate on all symbols after reconciliation (no disclosed symbols).
    eps_pe, eps_smooth, eps_pa, eps_ec : float
        Failure probabilities of estimation, smoothing, privacy amplification and
        error correction (the last only enters ``eps_total``).
    trusted : bool
        Trusted or untrusted detector noise.

    Returns
    -------
    FiniteSizeResult
    """
    _check_beta(beta)
    n, m = _split(int(N), pe_fraction, all_symbols)
    T_w, xi_w = worst_case_parameters(V_A, T, xi, eta, v_el, m, eps_pe)
    i_ab = mutual_information(V_A, T, xi, eta, v_el)
    return _finite_rate(
        i_ab,
        T_w,
        xi_w,
        V_A,
        eta,
        v_el,
        beta,
        int(N),
        n,
        m,
        (eps_pe, eps_smooth, eps_pa, eps_ec),
        all_symbols,
        trusted,
    )


class _EstimatesLike(Protocol):
    V_A: float
    snr: float
    eta: float
    v_el: float
    n: int
    n_total: int | None
    all_symbols: bool
    T_worst: float
    xi_worst: float
    eps_pe: float | None


def key_rate_from_estimates(
    est: _EstimatesLike,
    beta: float,
    *,
    eps_smooth: float = 1e-10,
    eps_pa: float = 1e-10,
    eps_ec: float = 0.0,
    trusted: bool = True,
) -> FiniteSizeResult:
    """Finite-size key rate of a measured block from :class:`dsp.estimation.Estimates`.

    ``I_AB = log2(1 + SNR_hat)`` uses the measured SNR (what reconciliation works
    with on these data), ``chi_BE`` the worst-case values ``(T_worst, xi_worst)``,
    a ``T_worst`` at or above 1 being capped just below 1 and a negative
    ``xi_worst`` raised to 0 (both conservative). The block has
    ``est.n_total`` symbols; ``est.n`` of them were used for estimation, and the key
    is made from ``n_total - n`` (or all ``n_total`` when ``est.all_symbols``).

    Raises
    ------
    ValueError
        If ``est.n_total`` is unknown or nothing is left for the key.
    """
    _check_beta(beta)
    if est.n_total is None:
        raise ValueError("key rate from estimates: Estimates.n_total (block size) is not set")
    N = int(est.n_total)
    n = N if est.all_symbols else N - int(est.n)
    if n < 1:
        raise ValueError(
            f"key rate from estimates: no key symbols (n_total={N}, estimation used {est.n})"
        )
    if not (math.isfinite(est.snr) and est.snr >= 0):
        raise ValueError(f"key rate from estimates: estimated SNR={est.snr!r} is not usable")
    i_ab = capacity(est.snr)
    eps_pe = est.eps_pe if est.eps_pe is not None else 0.0
    return _finite_rate(
        i_ab,
        est.T_worst,
        est.xi_worst,
        est.V_A,
        est.eta,
        est.v_el,
        beta,
        N,
        n,
        int(est.n),
        (eps_pe, eps_smooth, eps_pa, eps_ec),
        est.all_symbols,
        trusted,
    )


def best_modulation_variance(
    T: float,
    xi: float,
    eta: float,
    v_el: float,
    beta: float | Callable[[float], float],
    *,
    N: int | None = None,
    trusted: bool = True,
    V_A_range: tuple[float, float] = (0.1, 100.0),
    **finite_kwargs: Any,
) -> tuple[float, float]:
    """Modulation variance maximising the key rate, and that rate.

    Asymptotic rate when ``N`` is None, otherwise :func:`finite_size_key_rate` with
    ``finite_kwargs`` (``pe_fraction``, ``all_symbols``, epsilons). A log-spaced grid
    scan brackets the maximum, then a bounded Brent search refines it.

    ``beta`` is a number or a function of the SNR: the efficiency the reconciliation
    codes reach there (:func:`dsp.reconciliation.family_beta`). That curve is a
    sawtooth, so its grid is four times finer and the refinement is kept only if it
    beats the best grid point.

    Returns
    -------
    tuple of float
        ``(V_A_opt, rate_at_V_A_opt)``; the rate may be <= 0 (no key at any V_A).
    """
    lo, hi = V_A_range
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"best_modulation_variance: bad V_A_range={V_A_range!r}")

    def rate(v: float) -> float:
        b = beta(snr(v, T, xi, eta, v_el)) if callable(beta) else beta
        if N is None:
            return asymptotic_key_rate(v, T, xi, eta, v_el, b, trusted=trusted).rate
        return finite_size_key_rate(
            v, T, xi, eta, v_el, b, N, trusted=trusted, **finite_kwargs
        ).rate

    grid = np.geomspace(lo, hi, 161 if callable(beta) else 41)
    values = np.array([rate(float(v)) for v in grid])
    k = int(np.argmax(values))
    a, b = float(grid[max(k - 1, 0)]), float(grid[min(k + 1, len(grid) - 1)])
    res = optimize.minimize_scalar(
        lambda v: -rate(v), bounds=(a, b), method="bounded", options={"xatol": 1e-6 * b}
    )
    if res.success and -res.fun >= values[k]:
        return float(res.x), float(-res.fun)
    return float(grid[k]), float(values[k])
