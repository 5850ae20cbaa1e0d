"""Parameter estimation: standard errors and worst-case bounds against Monte Carlo.

Data follow docs/physics.md: y = sqrt(eta T / 2) x + z per quadrature, Var x = V_A,
Var z = 1 + v_el + eta T xi / 2. Each Monte Carlo draws R blocks of n complex symbols
(fixed seeds) and compares the spread of the estimates across blocks with the mean
standard error the function reports.

Tolerances: the sample standard deviation of R Gaussian-ish estimates has relative
standard error 1/sqrt(2 (R - 1)) (5.0 % for R = 200), so a 15 % band is a 3-sigma
test; means are tested within 4 standard errors of the mean (SD / sqrt(R)). The
delta-method errors are first order in 1/n; at n = 5e4 symbols the neglected terms
are below 1 % (relative SE of t_hat is 3 % even at 100 km).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsp import estimation as est
from dsp import keyrate as kr

R = 200
N_SYM = 50_000


def simulate(rng, n, V_A, T, xi, eta, v_el):
    """Real arrays of 2n quadrature samples (I, Q interleaved)."""
    x = rng.standard_normal(2 * n) * math.sqrt(V_A)
    noise = math.sqrt(1 + v_el + eta * T * xi / 2)
    y = math.sqrt(eta * T / 2) * x + noise * rng.standard_normal(2 * n)
    return x, y


def run_mc(seed, va, T, xi, eta, v_el, n=N_SYM, reps=R, **kw):
    """Estimates per block: (with V_A given, with V_A empirical)."""
    rng = np.random.default_rng(seed)
    given, empirical = [], []
    for _ in range(reps):
        x, y = simulate(rng, n, va, T, xi, eta, v_el)
        given.append(est.estimate_parameters(x, y, eta=eta, v_el=v_el, V_A=va, **kw))
        empirical.append(est.estimate_parameters(x, y, eta=eta, v_el=v_el, **kw))
    return given, empirical


def check_spread(rows, field, truth):
    values = np.array([getattr(r, field) for r in rows])
    reported = np.mean([getattr(r, field + "_stderr") for r in rows])
    sd = values.std(ddof=1)
    assert abs(sd / reported - 1) < 0.15, (field, sd, reported)
    assert abs(values.mean() - truth) < 4 * sd / math.sqrt(len(values)), (field, values.mean())
    return sd / reported


@pytest.mark.parametrize(
    ("seed", "T", "xi"),
    [(1, 0.316, 0.05), (2, 0.01, 0.01)],  # 25 km and 100 km at 0.2 dB/km
)
def test_standard_errors_match_monte_carlo(seed: int, T: float, xi: float) -> None:
    V_A, eta, v_el = 4.0, 0.6, 0.05
    rows, rows_empirical = run_mc(seed, V_A, T, xi, eta, v_el, eps_pe=None)
    check_spread(rows, "t", math.sqrt(eta * T / 2))
    check_spread(rows, "T", T)
    check_spread(rows, "xi", xi)
    check_spread(rows, "sigma2", 1 + v_el + eta * T * xi / 2)
    check_spread(rows, "snr", kr.snr(V_A, T, xi, eta, v_el))
    # With V_A taken from the block itself the SNR error gains the 2/m term.
    check_spread(rows_empirical, "snr", kr.snr(V_A, T, xi, eta, v_el))


def test_worst_case_bounds_cover_at_stated_rate() -> None:
    # With eps_PE = 0.1 each one-sided bound fails with probability 0.05: in R = 300
    # blocks, 15 expected failures, binomial SD 3.8; accept 3..30 (about 3.2-4 sigma).
    V_A, T, xi, eta, v_el = 4.0, 0.1, 0.02, 0.7, 0.1
    rows, _ = run_mc(4, V_A, T, xi, eta, v_el, n=10_000, reps=300, eps_pe=0.1)
    t_true = math.sqrt(eta * T / 2)
    s2_true = 1 + v_el + eta * T * xi / 2
    t_fail = sum(r.t_min > t_true for r in rows)
    s_fail = sum(r.sigma2_max < s2_true for r in rows)
    assert 3 <= t_fail <= 30
    assert 3 <= s_fail <= 30
    for r in rows:
        assert r.T_worst < r.T
        assert r.xi_worst > r.xi


def test_shot_noise_calibration_error_enters_errors_and_worst_case() -> None:
    # Each block is normalised with an N0 off by a factor 1 + e, e ~ N(0, 1 %), large
    # enough to dominate the statistical error of 5e4 symbols; v_el in SNU is off by
    # the same factor. The reported errors must then match the spread across blocks (15 %, as
    # above), and with eps_PE = 0.1 the worst-case xi may undershoot the truth in at
    # most ~5 % of blocks (accept <= 30 of 300, as above).
    V_A, T, xi, eta, v_el, rel = 4.0, 0.45, 0.01, 0.65, 0.02, 0.01
    rng = np.random.default_rng(11)
    rows = []
    for _ in range(300):
        x, y = simulate(rng, N_SYM, V_A, T, xi, eta, v_el)
        e = rel * rng.standard_normal()
        rows.append(
            est.estimate_parameters(
                x,
                y / math.sqrt(1 + e),
                eta=eta,
                v_el=v_el / (1 + e),
                V_A=V_A,
                n0_rel_stderr=rel,
                eps_pe=0.1,
            )
        )
    ratio_xi = check_spread(rows, "xi", xi)
    check_spread(rows, "T", T)
    assert rows[0].xi_stderr_calibration > 2 * math.sqrt(
        rows[0].xi_stderr ** 2 - rows[0].xi_stderr_calibration ** 2
    ), "the calibration error should dominate in this setting"
    assert sum(r.xi_worst < xi for r in rows) <= 30
    assert sum(r.T_worst > T for r in rows) <= 30
    without = est.estimate_parameters(
        *simulate(np.random.default_rng(12), N_SYM, V_A, T, xi, eta, v_el),
        eta=eta,
        v_el=v_el,
        V_A=V_A,
        eps_pe=0.1,
    )
    assert without.xi_stderr_calibration == 0.0 and ratio_xi > 0


def test_calibration_error_out_of_range_is_refused() -> None:
    x, y = simulate(np.random.default_rng(13), 1000, 4.0, 0.5, 0.01, 0.6, 0.02)
    with pytest.raises(ValueError, match="n0_rel_stderr"):
        est.estimate_parameters(x, y, eta=0.6, v_el=0.02, n0_rel_stderr=-0.01)


def test_complex_input_and_phase() -> None:
    rng = np.random.default_rng(5)
    n, V_A, T, xi, eta, v_el = 50_000, 4.0, 0.3, 0.02, 0.6, 0.05
    xr, yr = simulate(rng, n, V_A, T, xi, eta, v_el)
    x = xr[0::2] + 1j * xr[1::2]
    y = yr[0::2] + 1j * yr[1::2]
    a = est.estimate_parameters(x, y, eta=eta, v_el=v_el)
    b = est.estimate_parameters(xr, yr, eta=eta, v_el=v_el)
    assert pytest.approx(b.T, rel=1e-12) == a.T
    assert a.xi == pytest.approx(b.xi, rel=1e-9, abs=1e-12)
    assert a.n == n
    assert abs(a.phase) < 5 * a.t_stderr / a.t
    rotated = est.estimate_parameters(x, y * np.exp(0.2j), eta=eta, v_el=v_el)
    assert rotated.phase == pytest.approx(0.2, abs=0.01)
    assert rotated.T < a.T  # a residual phase lowers the apparent transmittance


def test_amplitude_convention() -> None:
    # The runner holds coherent amplitudes alpha (x_A = 2 Re alpha): same estimates
    # with symbols="amplitude"; passed as quadratures they are rejected, not misread.
    rng = np.random.default_rng(9)
    xr, yr = simulate(rng, 20_000, 4.0, 0.3, 0.02, 0.6, 0.05)
    x = xr[0::2] + 1j * xr[1::2]
    y = yr[0::2] + 1j * yr[1::2]
    a = est.estimate_parameters(x, y, eta=0.6, v_el=0.05, V_A=4.0)
    b = est.estimate_parameters(x / 2, y, eta=0.6, v_el=0.05, V_A=4.0, symbols="amplitude")
    assert pytest.approx(a.T, rel=1e-12) == b.T
    assert b.xi == pytest.approx(a.xi, rel=1e-9)
    with pytest.raises(ValueError, match="symbols='amplitude'"):
        est.estimate_parameters(x / 2, y, eta=0.6, v_el=0.05, V_A=4.0)


def test_electronic_noise_standard_error() -> None:
    # Calibration captures in volts: N0 = 2.5e-3 V^2 per quadrature, v_el = 0.08.
    rng = np.random.default_rng(6)
    n0, v_el, k = 2.5e-3, 0.08, 20_000
    vals, ses = [], []
    for _ in range(R):
        el = rng.standard_normal(2 * k) * math.sqrt(v_el * n0)
        shot = rng.standard_normal(2 * k) * math.sqrt((1 + v_el) * n0)
        v, se, n0_hat = est.estimate_electronic_noise(el, shot)
        vals.append(v)
        ses.append(se)
    sd = np.std(vals, ddof=1)
    assert abs(sd / np.mean(ses) - 1) < 0.15
    assert abs(np.mean(vals) - v_el) < 4 * sd / math.sqrt(R)
    assert n0_hat == pytest.approx(n0, rel=0.05)


def test_estimates_feed_the_key_rate() -> None:
    rng = np.random.default_rng(7)
    V_A, T, xi, eta, v_el, beta = 4.0, 0.316, 0.01, 0.6, 0.05, 0.95
    n = 200_000
    x, y = simulate(rng, n, V_A, T, xi, eta, v_el)
    e = est.estimate_parameters(x, y, eta=eta, v_el=v_el, V_A=V_A, all_symbols=True)
    assert (e.n, e.n_total) == (n, n)
    res = kr.key_rate_from_estimates(e, beta)
    assert (res.n, res.m, res.N) == (n, n, n)
    assert res.T_worst == e.T_worst
    assert res.rate < kr.asymptotic_key_rate(V_A, T, xi, eta, v_el, beta).rate
    assert all(math.isfinite(v) for v in e.as_dict().values() if isinstance(v, float))
    # Disclosed subset: n_total counts the whole block, the key uses the rest.
    pe, key = est.split_for_estimation(n, 0.25, rng)
    assert len(pe) == n // 4 and len(np.intersect1d(pe, key)) == 0
    idx = np.concatenate([2 * pe, 2 * pe + 1])
    e2 = est.estimate_parameters(x[idx], y[idx], eta=eta, v_el=v_el, V_A=V_A, n_total=n)
    res2 = kr.key_rate_from_estimates(e2, beta)
    assert (res2.n, res2.m, res2.N) == (n - n // 4, n // 4, n)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "message"),
    [
        (np.zeros(10), np.ones(10), {}, "all zero"),
        (np.ones(10), np.ones(8), {}, "differ"),
        (np.ones(9), np.ones(9), {}, "even"),
        (np.array([1.0, np.nan, 2, 3]), np.ones(4), {}, "NaN"),
        (np.arange(1.0, 11), 2 * np.arange(1.0, 11), {}, "no noise"),
        (np.arange(1.0, 11), -np.arange(1.0, 11) + np.sin(np.arange(10)), {}, "correlation"),
        (np.array([]), np.array([]), {}, "empty"),
        (np.ones(2), np.ones(2), {}, "at least 2"),
        (np.arange(1.0, 11), np.arange(1.0, 11), {"eta": 0.0}, "eta"),
    ],
)
def test_degenerate_input_raises_clear_error(x, y, kwargs, message) -> None:
    params = {"eta": 0.6, "v_el": 0.05} | kwargs
    with pytest.raises(ValueError, match=message):
        est.estimate_parameters(x, y, **params)


def test_too_short_block_for_eps_pe_raises() -> None:
    rng = np.random.default_rng(8)
    x, y = simulate(rng, 200, 4.0, 0.01, 0.01, 0.6, 0.05)
    with pytest.raises(est.EstimationError, match="too few"):
        est.estimate_parameters(x, y, eta=0.6, v_el=0.05)
    e = est.estimate_parameters(x, y, eta=0.6, v_el=0.05, eps_pe=None)
    assert e.T_worst == e.T
