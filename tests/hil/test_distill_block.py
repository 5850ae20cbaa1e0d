"""A block's distillation controls: the time budget (not spent on code builds) and the
backoff of beta after frames fail in a row."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from dsp import distill
from dsp.reconciliation import CodeSpec, code_family, family_beta
from hil import bench_file, procedures

N = 200_000  # complex symbols: four 1e5-bit reconciliation frames at SNR 0.3
SNR = 0.3
BUILD_DELAY_S = 3.0


def _block(
    budget_s: float = 90.0,
    beta: float | None = 0.85,
    snr: float = SNR,
    reveal: bool = True,
    n: int = N,
) -> tuple[bench_file.Bench, tuple, np.ndarray, np.ndarray]:
    bench = bench_file.load("malta-p2mp")
    run = dataclasses.replace(
        bench.run,
        beta=beta,
        ldpc_block_bits=100_000,
        distill_workers=0,
        epsilon=1e-6,
        distill_budget_s=budget_s,
    )
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(n) + 1j * rng.standard_normal(n)) * np.sqrt(snr / 2.0)
    y = x + (rng.standard_normal(n) + 1j * rng.standard_normal(n)) / np.sqrt(2.0)
    psk = bytes(range(256)) * 256
    config = distill.DistillConfig(
        block_bits=100_000, key_bits=256, beta=beta, reveal_steps=(0.02, 0.04) if reveal else ()
    )
    parties = (distill.Alice(psk, config, rng), distill.Bob(psk, config, rng))
    return dataclasses.replace(bench, run=run), parties, x, y


@pytest.fixture
def slow_builds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every code build takes BUILD_DELAY_S longer, and none is cached from other tests
    (in this process or in the code store)."""
    build = CodeSpec.build

    def slow(self: CodeSpec):  # type: ignore[no-untyped-def]
        time.sleep(BUILD_DELAY_S)
        return build(self)

    monkeypatch.setattr(CodeSpec, "build", slow)
    monkeypatch.setattr(procedures, "_CODE_CACHE", {})
    monkeypatch.setenv("CVQKD_CODE_CACHE", str(tmp_path))


def test_spent_budget_stops_the_block_and_keeps_its_frames() -> None:
    bench, parties, x, y = _block(budget_s=0.0)
    _parties, res = procedures.distill_job(bench, parties, x, y, SNR, 0.0)
    s = res.summary
    assert s["ldpc_frames"] == 1
    assert s["distill_stopped"] == "time budget of 0 s spent after 1 frames"
    assert res.alice_keys == res.bob_keys


@pytest.mark.usefixtures("slow_builds")
def test_code_builds_do_not_count_against_the_budget() -> None:
    # The build alone outlasts the budget; the frames themselves take well under it.
    bench, parties, x, y = _block(budget_s=BUILD_DELAY_S * 0.9)
    _parties, res = procedures.distill_job(bench, parties, x, y, SNR, 0.0)
    s = res.summary
    assert "distill_stopped" not in s
    assert s["ldpc_frames"] == 4 and s["ldpc_frames_ok"] == 4
    assert s["code_build_seconds"] >= BUILD_DELAY_S
    assert res.alice_keys == res.bob_keys and len(res.alice_keys) > 0


def _real(z: np.ndarray) -> np.ndarray:
    """Interleaved real and imaginary parts, as the runner hands a block to distillation."""
    return np.ascontiguousarray(z, dtype=np.complex128).view(np.float64)


def test_backoff_lowers_beta_at_every_snr_of_the_block() -> None:
    """Auto beta, a block of two parts (declared SNR 0.3, then 0.15) whose symbols are
    really at SNR 0.02: every frame fails. After each 3 failures in a row the target falls
    by BETA_STEP from the family's curve at each frame's own SNR (it used to stay fixed
    at the first part's beta less the step), and after BETA_BACKOFFS the block stops."""
    n = 600_000  # room for 12 frames; the first 3 lie in the first part
    _bench, (alice, bob), x, y = _block(beta=None, snr=0.02, reveal=False, n=n)
    segments = ((160_000, 0.3), (n - 160_000, 0.15))
    res, stopped = procedures._distill_frames(
        distill, alice, bob, _real(x), _real(y), segments, 0.0, 90.0
    )
    k = procedures.MAX_FAILED_IN_A_ROW
    assert len(res.frames) == k * (procedures.BETA_BACKOFFS + 1)
    assert all(f.status == "decode_failed" for f in res.frames)
    assert stopped == f"{k} reconciliation frames failed in a row (decode_failed)"
    assert res.alice_keys == res.bob_keys == []
    family = code_family(100_000)
    offset, snrs = 0, []
    for i, f in enumerate(res.frames):
        snr = procedures.segment_snr(segments, offset, 100_000)
        snrs.append(snr)
        expected = family_beta(family, snr) - procedures.BETA_STEP * (i // k)
        assert f.beta == pytest.approx(expected, abs=2e-3), (i, snr)
        offset += f.n_data
    # The backoffs happened in the second part, at another SNR than the first frames'.
    assert snrs[0] == pytest.approx(0.3) and snrs[-1] == pytest.approx(0.15)
    assert family_beta(family, 0.3) != pytest.approx(family_beta(family, 0.15), abs=0.01)
