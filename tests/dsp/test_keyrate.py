"""Key-rate functions against an independent covariance-matrix evaluation.

The closed forms in ``dsp.keyrate`` (Laudenbach et al. 2018) are checked against a
second implementation written differently: the physical entangling-cloner attack is
built as a full covariance matrix of Alice's EPR mode, Bob's mode and Eve's two modes
(beam splitters as symplectic matrices), Eve's state and her state conditioned on
Bob's (noisy) heterodyne outcome are taken from it, and their entropies come from
symplectic spectra computed numerically (Cholesky + Hermitian eigenvalues).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from dsp import keyrate as kr

I2 = np.eye(2)
Z2 = np.diag([1.0, -1.0])
OMEGA1 = np.array([[0.0, 1.0], [-1.0, 0.0]])


def epr(v: float) -> np.ndarray:
    """Two-mode squeezed vacuum of variance v (SNU)."""
    c = math.sqrt(v * v - 1.0)
    return np.block([[v * I2, c * Z2], [c * Z2, v * I2]])


def beam_splitter(n_modes: int, i: int, j: int, tau: float) -> np.ndarray:
    """Symplectic matrix of a beam splitter of transmittance tau on modes i, j."""
    s = np.eye(2 * n_modes)
    a, b = math.sqrt(tau), math.sqrt(1.0 - tau)
    ii, jj = slice(2 * i, 2 * i + 2), slice(2 * j, 2 * j + 2)
    s[ii, ii], s[ii, jj] = a * I2, b * I2
    s[jj, ii], s[jj, jj] = -b * I2, a * I2
    return s


def symplectic_spectrum(gamma: np.ndarray) -> np.ndarray:
    """Symplectic eigenvalues: the positive spectrum of i L^T Omega L, gamma = L L^T."""
    n = gamma.shape[0] // 2
    omega = np.kron(np.eye(n), OMEGA1)
    low = np.linalg.cholesky(gamma)
    ev = np.linalg.eigvalsh(1j * (low.T @ omega @ low))
    return np.sort(ev[ev > 0])


def entropy(gamma: np.ndarray) -> float:
    """Von Neumann entropy (bits) of a Gaussian state, written with xlogx."""
    total = 0.0
    for nu in symplectic_spectrum(gamma):
        p, q = (nu + 1.0) / 2.0, (nu - 1.0) / 2.0
        total += p * math.log2(p) - (q * math.log2(q) if q > 1e-300 else 0.0)
    return total


def conditional(gamma: np.ndarray, keep: list[int], measured: int, noise: float) -> np.ndarray:
    """CM of modes ``keep`` after heterodyne of mode ``measured`` with added noise."""
    idx = [k for m in keep for k in (2 * m, 2 * m + 1)]
    jdx = [2 * measured, 2 * measured + 1]
    g_k = gamma[np.ix_(idx, idx)]
    s = gamma[np.ix_(idx, jdx)]
    g_m = gamma[np.ix_(jdx, jdx)] + noise * I2
    return g_k - s @ np.linalg.solve(g_m, s.T)


def cloner_state(V_A: float, T: float, xi: float) -> np.ndarray:
    """Modes [A, B, E1, E2]: EPR(V) on A-B, Eve's EPR(W) on E1-E2, cloner BS on B-E1."""
    V = V_A + 1.0
    W = 1.0 + T * xi / (1.0 - T)
    gamma = np.zeros((8, 8))
    gamma[:4, :4] = epr(V)
    gamma[4:, 4:] = epr(W)
    s = beam_splitter(4, 1, 2, T)
    return s @ gamma @ s.T


def reference(V_A, T, xi, eta, v_el, trusted):
    """(I_AB, chi_BE) from the full covariance matrix of the attack."""
    gamma = cloner_state(V_A, T, xi)
    A, B = 0, 1
    chi_het = (2.0 - eta + 2.0 * v_el) / eta  # heterodyne noise referred to Bob's input
    # I_AB: Alice's heterodyne prepares Bob's conditional state; Bob measures with chi_het.
    g_b = gamma[2:4, 2:4]
    g_b_a = conditional(gamma, [B], A, 1.0)
    i_ab = sum(0.5 * math.log2((g_b[q, q] + chi_het) / (g_b_a[q, q] + chi_het)) for q in range(2))
    if trusted:
        eve = [2, 3]
        idx = [4, 5, 6, 7]
        chi = entropy(gamma[np.ix_(idx, idx)]) - entropy(conditional(gamma, eve, B, chi_het))
    else:
        # Eve purifies A and Bob's mode after the detector's loss and noise.
        g_ab = gamma[:4, :4].copy()
        g_ab[2:4, 2:4] = eta * g_ab[2:4, 2:4] + (1.0 - eta + 2.0 * v_el) * I2
        g_ab[:2, 2:4] *= math.sqrt(eta)
        g_ab[2:4, :2] *= math.sqrt(eta)
        chi = entropy(g_ab) - entropy(conditional(g_ab, [A], B, 1.0))
    return i_ab, chi


GRID = list(
    itertools.product(
        [1.0, 2.5, 4.0, 10.0],  # V_A
        [0.01, 0.1, 0.316, 0.9],  # T
        [0.0, 0.01, 0.05],  # xi
        [0.5, 0.75, 1.0],  # eta
        [0.0, 0.1, 0.2],  # v_el
    )
)


@pytest.mark.parametrize("trusted", [True, False])
def test_closed_forms_match_covariance_matrix_on_grid(trusted: bool) -> None:
    # Both routes are double-precision evaluations of the same quantity; the
    # eigen-solvers are backward stable (error ~1e-16 * |gamma| ~ 1e-15), amplified by
    # at most ~1e3 by the S(E) - S(E|B) cancellation at T = 0.01, far below 1e-9.
    worst = 0.0
    for V_A, T, xi, eta, v_el in GRID:
        if not trusted and eta * T >= 1:
            continue
        i_ref, chi_ref = reference(V_A, T, xi, eta, v_el, trusted)
        res = kr.asymptotic_key_rate(V_A, T, xi, eta, v_el, 0.95, trusted=trusted)
        for got, want in ((res.I_AB, i_ref), (res.chi_be, chi_ref)):
            rel = abs(got - want) / abs(want)
            worst = max(worst, rel)
            assert rel < 1e-9, (V_A, T, xi, eta, v_el, got, want)
        k_ref = 0.95 * i_ref - chi_ref
        assert abs(res.rate - k_ref) <= 1e-9 * max(i_ref, chi_ref)
    assert worst < 1e-9


def test_untrusted_never_beats_trusted() -> None:
    for V_A, T, xi, eta, v_el in GRID[::7]:
        t = kr.holevo_bound(V_A, T, xi, eta, v_el, trusted=True)
        u = kr.holevo_bound(V_A, T, xi, eta, v_el, trusted=False)
        assert u >= t - 1e-12


def test_trusted_equals_untrusted_for_ideal_detector() -> None:
    a = kr.holevo_bound(4.0, 0.3, 0.02, 1.0, 0.0, trusted=True)
    b = kr.holevo_bound(4.0, 0.3, 0.02, 1.0, 0.0, trusted=False)
    assert a == pytest.approx(b, rel=1e-14)


def test_worked_example() -> None:
    """V_A=4, T=0.316 (about 25 km at 0.2 dB/km), xi=0.01, eta=0.6, v_el=0.05, beta=0.95.

    By hand: V = V_A + 1 = 5, chi_line = 1/0.316 - 1 + 0.01 = 2.1745569620,
    chi_het = (2 - 0.6 + 2*0.05)/0.6 = 2.5, chi_tot = chi_line + chi_het/T = 10.0859493671,
    SNR = (eta T V_A / 2) / (1 + v_el + eta T xi / 2) = 0.3792 / 1.050948 = 0.3608170909,
    I_AB = log2(1 + SNR) = log2((V + chi_tot)/(1 + chi_tot)) = 0.4444731654 bit.
    Trusted: symplectic eigenvalues l1..l4 = 3.7368426662, 1.0040026662, 3.0118873570,
    1.0014870348; chi_BE = G(l1) + G(l2) - G(l3) - G(l4) = 0.3330126548,
    K = 0.95 I_AB - chi_BE = 0.0892368523 bit/symbol.
    Untrusted (eta T = 0.1896, xi' = xi + 2 v_el/(eta T) = 0.5374261603): l1..l4 =
    4.2560231230, 1.1163191230, 3.4091156999, 1.0000000000; chi_BE = 0.6528323373,
    K = -0.2305828301 (no key).
    The literals were computed once with dsp.keyrate and are asserted again here
    against the covariance-matrix route.
    """
    V_A, T, xi, eta, v_el, beta = 4.0, 0.316, 0.01, 0.6, 0.05, 0.95
    assert kr.snr(V_A, T, xi, eta, v_el) == pytest.approx(0.3608170909, abs=1e-10)
    res = kr.asymptotic_key_rate(V_A, T, xi, eta, v_el, beta)
    assert kr.symplectic_eigenvalues(V_A, T, xi, eta, v_el) == pytest.approx(
        (3.7368426662, 1.0040026662, 3.0118873570, 1.0014870348), abs=1e-10
    )
    assert pytest.approx(0.4444731654, abs=1e-10) == res.I_AB
    assert res.chi_be == pytest.approx(0.3330126548, abs=1e-10)
    assert res.rate == pytest.approx(0.0892368523, abs=1e-10)
    unt = kr.asymptotic_key_rate(V_A, T, xi, eta, v_el, beta, trusted=False)
    assert kr.untrusted_equivalent(T, xi, eta, v_el) == pytest.approx((0.1896, 0.5374261603))
    assert kr.symplectic_eigenvalues(V_A, T, xi, eta, v_el, trusted=False) == pytest.approx(
        (4.2560231230, 1.1163191230, 3.4091156999, 1.0), abs=1e-10
    )
    assert unt.chi_be == pytest.approx(0.6528323373, abs=1e-10)
    assert unt.rate == pytest.approx(-0.2305828301, abs=1e-10)
    i_ref, chi_ref = reference(V_A, T, xi, eta, v_el, True)
    assert (res.I_AB, res.chi_be) == pytest.approx((i_ref, chi_ref), rel=1e-9)
    _, chi_ref_u = reference(V_A, T, xi, eta, v_el, False)
    assert unt.chi_be == pytest.approx(chi_ref_u, rel=1e-9)


def test_worked_example_finite_size() -> None:
    """Same link, N = 1e9 symbols, half disclosed (m = n = 5e8), all epsilons 1e-10.

    z = sqrt(2) erfcinv(1e-10) = 6.4669510872; t = sqrt(eta T/2) = 0.3079, sigma^2 =
    1.050948; on 2m = 1e9 real samples t_min = t - z sqrt(sigma^2/(2m V_A)),
    sigma^2_max = sigma^2 (1 + z sqrt(2/(2m))), giving T_worst = 0.3157848709,
    xi_worst = 0.0132151735, chi_BE(T_worst, xi_worst) = 0.3358665216,
    Delta(n) = 7 sqrt(log2(2e10)/n) + 2 log2(1e10)/n = 0.0018313864,
    K = (n/N)(beta I_AB - chi - Delta) = 0.0422757996 bit/symbol, eps = 3e-10.
    With all symbols for estimation (Ruppert 2014, m = n = N): K = 0.0859075569.
    """
    V_A, T, xi, eta, v_el, beta = 4.0, 0.316, 0.01, 0.6, 0.05, 0.95
    N = 10**9
    res = kr.finite_size_key_rate(V_A, T, xi, eta, v_el, beta, N, pe_fraction=0.5)
    assert kr.z_quantile(1e-10) == pytest.approx(6.4669510872, abs=1e-10)
    assert (res.T_worst, res.xi_worst) == pytest.approx((0.3157848709, 0.0132151735), abs=1e-10)
    assert res.chi_be_worst == pytest.approx(0.3358665216, abs=1e-10)
    assert res.delta == pytest.approx(0.0018313864, abs=1e-10)
    assert res.rate == pytest.approx(0.0422757996, abs=1e-10)
    assert res.eps_total == pytest.approx(3e-10)
    # Independent recomputation of the same steps with scipy's normal quantile.
    from scipy.stats import norm

    z = norm.isf(1e-10 / 2)
    m = n = N // 2
    t, s2 = math.sqrt(eta * T / 2), 1 + v_el + eta * T * xi / 2
    t_min = t - z * math.sqrt(s2 / (2 * m * V_A))
    s2_max = s2 * (1 + z * math.sqrt(2 / (2 * m)))
    T_w = 2 * t_min**2 / eta
    xi_w = 2 * (s2_max - 1 - v_el) / (eta * T_w)
    _, chi_w = reference(V_A, T_w, xi_w, eta, v_el, True)
    i_ab, _ = reference(V_A, T, xi, eta, v_el, True)
    delta = 7 * math.sqrt(math.log2(2e10) / n) + 2 / n * math.log2(1e10)
    k = n / N * (beta * i_ab - chi_w - delta)
    assert res.rate == pytest.approx(k, rel=1e-9)
    ruppert = kr.finite_size_key_rate(V_A, T, xi, eta, v_el, beta, N, all_symbols=True)
    assert (ruppert.n, ruppert.m) == (N, N)
    assert ruppert.rate == pytest.approx(0.0859075569, abs=1e-10)


def test_helpers() -> None:
    assert kr.fibre_transmittance(25) == pytest.approx(10**-0.5)
    assert kr.fibre_transmittance(50, 0.2, 3.0) == pytest.approx(10**-1.3)
    assert kr.plob_bound(0.5) == pytest.approx(1.0)
    assert kr.capacity(1.0) == pytest.approx(1.0)
    assert kr.entropy_g(1.0) == 0.0
    assert kr.entropy_g(3.0) == pytest.approx(2 * math.log2(2) - 0.0)
    # The rate never beats PLOB (ideal detector, pure loss, perfect reconciliation).
    for T in (0.01, 0.1, 0.5):
        assert kr.asymptotic_key_rate(4.0, T, 0.0, 1.0, 0.0, 1.0).rate < kr.plob_bound(T)


def test_best_modulation_variance_is_a_maximum() -> None:
    args = (0.316, 0.01, 0.6, 0.05, 0.95)
    v, k = kr.best_modulation_variance(*args)
    for dv in (0.9, 1.1):
        assert kr.asymptotic_key_rate(v * dv, *args).rate < k
    vf, kf = kr.best_modulation_variance(*args, N=10**9, pe_fraction=0.5)
    assert 0 < kf < k
    assert kr.finite_size_key_rate(vf * 1.1, *args, 10**9).rate < kf


def test_best_modulation_variance_follows_a_beta_curve() -> None:
    # Codes that reach 0.95 up to SNR 0.2 and 0.80 above: the best V_A sits at the step
    # (SNR 0.2, K 0.0761), above the best at a flat 0.80 (0.0374) and below a flat 0.95.
    T, xi, eta, v_el = 0.316, 0.01, 0.6, 0.05

    def curve(s: float) -> float:
        return 0.95 if s <= 0.2 else 0.80

    v, k = kr.best_modulation_variance(T, xi, eta, v_el, curve)
    s = kr.snr(v, T, xi, eta, v_el)
    assert 0.19 < s <= 0.2
    assert k == pytest.approx(kr.asymptotic_key_rate(v, T, xi, eta, v_el, 0.95).rate)
    assert k > kr.best_modulation_variance(T, xi, eta, v_el, 0.80)[1] * 1.5
    assert k < kr.best_modulation_variance(T, xi, eta, v_el, 0.95)[1]


@pytest.mark.parametrize(
    ("kwargs", "word"),
    [
        ({"T": 1.0}, "T="),
        ({"T": -0.1}, "T="),
        ({"eta": 0.0}, "eta"),
        ({"V_A": 0.0}, "V_A"),
        ({"xi": float("nan")}, "xi"),
        ({"v_el": -1.0}, "v_el"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs: dict, word: str) -> None:
    p = {"V_A": 4.0, "T": 0.3, "xi": 0.01, "eta": 0.6, "v_el": 0.05} | kwargs
    with pytest.raises(ValueError, match=word):
        kr.asymptotic_key_rate(**p, beta=0.95)


def test_finite_size_without_margin_gives_zero_not_nan() -> None:
    # A tiny block at 100 km: t_min <= 0, so no key; the result stays finite.
    res = kr.finite_size_key_rate(4.0, 0.01, 0.01, 0.6, 0.05, 0.95, 100)
    assert res.T_worst == 0.0
    assert res.rate == 0.0
    assert all(math.isfinite(v) for v in res.as_dict().values() if isinstance(v, float))


def test_monotone_in_excess_noise_and_distance() -> None:
    # More excess noise: less mutual information, more for Eve, less key. Longer
    # fibre at fixed V_A: less key. (Physical sanity, not a formula check.)
    for trusted in (True, False):
        prev = None
        for xi in (0.0, 0.01, 0.02, 0.05):
            r = kr.asymptotic_key_rate(4.0, 0.3, xi, 0.8, 0.02, 0.95, trusted=trusted)
            if prev is not None:
                assert r.I_AB < prev.I_AB and r.chi_be > prev.chi_be and r.rate < prev.rate
            prev = r
    rates = [
        kr.asymptotic_key_rate(4.0, kr.fibre_transmittance(L), 0.01, 0.6, 0.05, 0.95).rate
        for L in range(0, 200, 20)
        if L > 0
    ]
    assert all(a > b for a, b in itertools.pairwise(rates))


def test_key_rate_from_estimates_caps_unphysical_worst_case() -> None:
    from dsp.estimation import Estimates

    base = dict(
        n=1000,
        n_total=2000,
        all_symbols=False,
        V_A=4.0,
        V_A_empirical=4.0,
        eta=1.0,
        v_el=0.0,
        v_el_stderr=0.0,
        t=0.7,
        t_stderr=0.01,
        sigma2=1.0,
        sigma2_stderr=0.01,
        T=0.98,
        T_stderr=0.02,
        xi=-0.01,
        xi_stderr=0.01,
        snr=1.96,
        snr_stderr=0.01,
        phase=0.0,
        eps_pe=1e-10,
        z=6.47,
        t_min=0.71,
        sigma2_max=0.99,
        T_worst=1.01,
        xi_worst=-0.02,
    )
    res = kr.key_rate_from_estimates(Estimates(**base), 0.95, trusted=False)
    assert math.isfinite(res.rate) and math.isfinite(res.chi_be_worst)
    assert (res.n, res.m, res.N) == (1000, 1000, 2000)
    with pytest.raises(ValueError, match="n_total"):
        kr.key_rate_from_estimates(Estimates(**(base | {"n_total": None})), 0.95)
