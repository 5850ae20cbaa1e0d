"""The per-block distillation time budget: it stops a slow block, but not for code builds."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest

from dsp import distill
from dsp.reconciliation import CodeSpec
from hil import bench_file, procedures

N = 200_000  # complex symbols: four 1e5-bit reconciliation frames at SNR 0.3
SNR = 0.3
BUILD_DELAY_S = 3.0


def _block(budget_s: float) -> tuple[bench_file.Bench, tuple, np.ndarray, np.ndarray]:
    bench = bench_file.load("malta-p2mp")
    run = dataclasses.replace(
        bench.run,
        beta=0.85,
        ldpc_block_bits=100_000,
        distill_workers=0,
        epsilon=1e-6,
        distill_budget_s=budget_s,
    )
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(N) + 1j * rng.standard_normal(N)) * np.sqrt(SNR / 2.0)
    y = x + (rng.standard_normal(N) + 1j * rng.standard_normal(N)) / np.sqrt(2.0)
    psk = bytes(range(256)) * 256
    config = distill.DistillConfig(block_bits=100_000, key_bits=256, beta=0.85)
    parties = (distill.Alice(psk, config, rng), distill.Bob(psk, config, rng))
    return dataclasses.replace(bench, run=run), parties, x, y


@pytest.fixture
def slow_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every code build takes BUILD_DELAY_S longer, and none is cached from other tests."""
    build = CodeSpec.build

    def slow(self: CodeSpec):  # type: ignore[no-untyped-def]
        time.sleep(BUILD_DELAY_S)
        return build(self)

    monkeypatch.setattr(CodeSpec, "build", slow)
    monkeypatch.setattr(procedures, "_CODE_CACHE", {})


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
