"""End to end on an emulated 25 km link, short version of ``hil/bench/e2e.py``.

One 2^18-symbol capture through the SCPI drivers, Bob's DSP, estimation and the
two-party distillation. At this block size the finite-size bound at 25 km is negative
(the bench uses 4 captures of 2^20 symbols), so the test checks the wiring and the
accounting: the keys agree, reconciliation leaks exactly what the code rates say, privacy
amplification keeps exactly what the leftover hash lemma allows, and nothing exceeds the
bounds at the emulator's true parameters.
"""

from __future__ import annotations

import math

import pytest

from dsp.privacy import output_length
from hil.bench.e2e import distil_emulated_link, rows_from


@pytest.fixture(scope="module")
def short_run():
    return distil_emulated_link(frames=1, n_symbols=1 << 18, seed=7, block_bits=100_000, beta=0.83)


def test_e2e_short_block_accounting(short_run):
    out = short_run
    acct = out["accounting"]
    truth, est = out["truth"], out["estimates"]
    assert out["symbols"] > 250_000  # the quantum symbols less the 2000 revealed
    # T-hat: its standard error on 2.6e5 symbols is ~0.5 % of T (0.0013)
    assert abs(est["T"] - truth["T"]) < 0.02 * truth["T"]
    assert 0.5 < out["beta"] < 1.0 and out["ldpc_frames"] >= 4
    # reconciliation: each kept frame leaks m and keeps N + p - m = beta C(SNR) N bits
    kept_real = acct["n_symbols"]
    per_real = 0.5 * math.log2(1.0 + out["snr_hat"])
    kept_rate = (acct["reconciled_bits"] - acct["leak_ec_bits"]) / kept_real
    assert kept_rate == pytest.approx(out["beta"] * per_real, rel=0.01)
    assert acct["leak_ver_bits"] == 127 * out["ldpc_frames_ok"]
    # privacy amplification keeps exactly the leftover-hash-lemma length
    want = output_length(
        int(acct["reconciled_bits"]),
        int(kept_real),
        acct["eve_bits_per_symbol"],
        acct["leak_ec_bits"],
        acct["leak_ver_bits"],
        out["eps"],
    )
    assert out["pa_output_bits"] == want
    assert out["distilled_bits_per_symbol"] <= max(out["finite_size_at_estimates"], 0.0) + 1e-3
    assert out["distilled_bits_per_symbol"] < out["asymptotic_at_truth"]
    assert out["finite_size_at_truth"] < out["asymptotic_at_truth"]
    names = [r.name for r in rows_from(out)]
    assert "e2e_distilled_bits_per_symbol@25km" in names
