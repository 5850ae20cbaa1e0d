"""The beta/FER table of ``make bench``: its rows and the MD ceiling beside each beta."""

from __future__ import annotations

import pytest

from dsp.reconciliation import capacity, md_capacity
from hil.bench.distill import SNRS, beta_table


def test_beta_table_rows_carry_the_md_ceiling() -> None:
    rows = {r.name: r for r in beta_table(20_000, 2, workers=1)}
    for snr in SNRS:
        ceiling = rows[f"md_ceiling@snr={snr}"].value
        assert ceiling == pytest.approx(md_capacity(snr) / capacity(snr))
        beta = rows[f"beta@snr={snr}"].value
        fer = rows[f"fer@snr={snr}"].value
        assert 0.8 < beta < ceiling and 0.0 <= fer <= 1.0
        assert rows[f"eff_beta@snr={snr}"].value == pytest.approx(beta * (1 - fer))
        # Disclosures only rescue frames, at a beta lower by 0.02 or 0.04.
        lost = rows[f"fer_disclosed@snr={snr}"].value
        eff = rows[f"eff_beta_disclosed@snr={snr}"].value
        assert lost <= fer and beta * (1 - fer) <= eff + 1e-12
        assert eff <= beta * (1 - lost) + 1e-12 and eff >= (beta - 0.04) * (1 - lost) - 1e-12
    assert rows["md_ceiling@snr=1.0"].value < 0.92
