"""EXIT-chart design tool (dsp.code_design) against known thresholds."""

import math

import pytest

from dsp.code_design import exit_threshold, j_info, optimise_met
from dsp.ldpc import Ensemble
from dsp.reconciliation import _RSU_HALF, met_ensemble


def _biawgn(snr: float) -> float:
    return float(j_info(2.0 * snr))


def test_j_info_known_points() -> None:
    assert float(j_info(0.0)) == 0.0
    # BIAWGN capacity at sigma = 0.9787 (Es/N0 = 1/sigma^2) is 0.5 bit
    assert float(j_info(2.0 / 0.9787**2)) == pytest.approx(0.5, abs=2e-3)


def test_exit_threshold_regular_3_6() -> None:
    """The (3, 6) regular ensemble: sigma* = 0.8809 by density evolution."""
    ens = Ensemble(var_types=((1.0, (3,)),), chk_types=((0.5, (6,)),))
    snr, beta = exit_threshold(ens, _biawgn)
    assert 1.0 / math.sqrt(snr) == pytest.approx(0.8809, abs=0.003)
    assert 0.8 < beta < 0.9


def test_exit_threshold_rsu_half_within_one_percent() -> None:
    """Richardson-Shokrollahi-Urbanke rate 1/2, max degree 20: published sigma* 0.9669."""
    snr, _ = exit_threshold(_RSU_HALF, _biawgn)
    assert 1.0 / math.sqrt(snr) == pytest.approx(0.9669, rel=0.01)


def test_optimise_met_never_returns_worse_than_its_start() -> None:
    start = (1.5, 2.6, 0.45, 0.0)
    _, b0 = exit_threshold(met_ensemble(0.065, 1.5 * 0.065, 2.6, 0.45, "s"), _biawgn, steps=10)
    params, beta = optimise_met(0.065, start, evaluations=5, channel_info=_biawgn)
    assert beta >= b0 > 0.9
    assert len(params) == 4
