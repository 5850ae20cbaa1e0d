"""Key-distillation benchmark: reconciliation efficiency and FER, decoder and PA speed.

Rows (all measured in this run, on synthetic correlated Gaussian data ``y = x + z`` at
the stated SNR, through the real multidimensional reverse reconciliation):

* ``beta@snr=S`` / ``fer@snr=S``: the efficiency of the code rate actually used (after
  puncturing/shortening) and the frame error rate over ``FRAMES`` frames (decoding or
  verification failure), at the family's operating point for that SNR;
  ``eff_beta@snr=S = beta * (1 - FER)`` charges the frame errors.
* ``reconcile_mbps_r0.1``: frame bits per second on one core (Bob's encoding + Alice's
  decoding + verification) at code rate about 0.1, beside a numpy FFT of the same length.
* ``decoder_ns_per_edge``: one layered sum-product iteration per edge, beside the ``ldpc``
  package's serial product-sum BP decoder on the same code and frame.
* ``pa_mbps_1e7_<method>``: privacy amplification input bits per second at 1e7 bits.

Frames of the table run on two worker processes to fit the ``make bench`` budget; the
throughput rows run on one core in this process.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from hil.bench import Row, best_time, ref_numpy_fft_seconds

AREA = "distill"
SNRS = (0.05, 0.1, 0.3, 1.0)


def _frames(
    args: tuple[float, int, int, int] | tuple[float, int, int, int, float],
) -> list[tuple[bool, float, int, float]]:
    """Run ``count`` frames at ``snr`` (optional 5th item: target beta instead of the
    code's operating point): (ok, beta, iterations, seconds) per frame."""
    from dsp.reconciliation import alice_decode, bob_encode, code_family, plan_frame, select_code
    from dsp.verification import poly_hash, random_hash_key

    snr, block, count, seed = args[:4]
    target = args[4] if len(args) > 4 else None
    family = code_family(block)
    spec = select_code(family, snr, target)
    code = spec.build()
    plan = plan_frame(code, snr, spec.beta_op if target is None else target)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        x = rng.standard_normal(plan.n_data)
        y = x + rng.standard_normal(plan.n_data) / math.sqrt(snr)
        t0 = time.perf_counter()
        enc = bob_encode(code, plan, y, rng)
        key = enc.key(plan)
        hk = random_hash_key(rng)
        tag = poly_hash(key, hk)
        res = alice_decode(code, plan, x, enc.public, enc.syndrome, spec.max_iter)
        ok = res.success and poly_hash(res.key, hk) == tag
        out.append((ok, plan.beta, res.iterations, time.perf_counter() - t0))
    return out


def beta_table(block: int, frames: int, workers: int = 2) -> list[Row]:
    """The beta/FER table over ``frames`` frames per SNR point."""
    jobs = []
    per = -(-frames // workers)
    for i, snr in enumerate(SNRS):
        for w in range(workers):
            jobs.append((snr, block, min(per, frames - w * per), 1000 * i + w))
    with ProcessPoolExecutor(max_workers=workers) as ex:
        results = list(ex.map(_frames, jobs))
    rows = []
    for snr in SNRS:
        res = [r for j, rr in zip(jobs, results, strict=True) if j[0] == snr for r in rr]
        fer = 1.0 - sum(r[0] for r in res) / len(res)
        beta = float(np.mean([r[1] for r in res]))
        its = float(np.mean([r[2] for r in res]))
        rows += [
            Row(AREA, f"beta@snr={snr}", beta, f"block {block}", target=">= 0.95 (goal 0.97)"),
            Row(AREA, f"fer@snr={snr}", fer, f"{len(res)} frames", target="<= 0.1"),
            Row(AREA, f"eff_beta@snr={snr}", beta * (1 - fer), "beta*(1-FER)"),
            Row(AREA, f"mean_iterations@snr={snr}", its, f"block {block}"),
        ]
    return rows


def reconcile_throughput(block: int, frames: int) -> Row:
    """One-core reconciliation throughput at rate ~0.1 (met-r0.10 at its operating SNR)."""
    from dsp.reconciliation import code_family

    spec = next(s for s in code_family(block) if s.name == "met-r0.10")
    snr = 2.0 ** (2 * spec.rate / spec.beta_op) - 1.0
    _frames((snr, block, 1, 7))  # compile and build outside the timing
    res = _frames((snr, block, frames, 8))
    bits = sum(block for _ in res)
    secs = sum(r[3] for r in res)
    ref = ref_numpy_fft_seconds(block)
    return Row(
        AREA,
        "reconcile_mbps_r0.1",
        bits / secs / 1e6,
        f"Mbit/s (1 core, block {block}, SNR {snr:.3f})",
        reference=f"numpy_fft_{block} Msamples/s",
        reference_value=block / ref / 1e6,
        target=">= 1 Mbit/s",
    )


def decoder_comparison(block: int) -> Row:
    """ns per edge per iteration: our layered SP vs the ldpc package's serial product-sum."""
    import scipy.sparse as sp
    from ldpc import BpDecoder

    from dsp.ldpc import decode_syndrome, syndrome
    from dsp.reconciliation import code_family

    spec = next(s for s in code_family(block) if s.name == "met-r0.10")
    code = spec.build()
    rng = np.random.default_rng(3)
    snr = 0.12  # below threshold: both decoders run all their iterations
    b = rng.integers(0, 2, code.n).astype(np.uint8)
    llr = 2 * snr * ((1 - 2.0 * b) + rng.standard_normal(code.n) / math.sqrt(snr))
    syn = syndrome(code, b)
    iters = 5
    decode_syndrome(code, llr, syn, 1)
    ours = best_time(lambda: decode_syndrome(code, llr, syn, iters), repeat=2)
    rows = np.repeat(np.arange(code.m), np.diff(code.chk_ptr))
    h = sp.csr_matrix(
        (np.ones(code.edges, dtype=np.uint8), (rows, code.chk_var)), shape=(code.m, code.n)
    )
    hard = (llr < 0).astype(np.uint8)
    dec = BpDecoder(
        h,
        error_channel=list(1.0 / (1.0 + np.exp(np.abs(llr)))),
        max_iter=iters,
        bp_method="product_sum",
        schedule="serial",
    )
    theirs = best_time(lambda: dec.decode(syndrome(code, hard) ^ syn), repeat=1)
    per = 1e9 / (iters * code.edges)
    return Row(
        AREA,
        "decoder_ns_per_edge",
        ours * per,
        "ns/edge/iteration",
        reference="ldpc-pkg BpDecoder product_sum serial",
        reference_value=theirs * per,
        target="lower is better",
    )


def pa_throughput(nbits: int) -> list[Row]:
    """Privacy amplification Mbit/s of input at ``nbits`` (output 10 % of input)."""
    from dsp.privacy import hash_bits, seed_bits

    rng = np.random.default_rng(5)
    x = rng.integers(0, 2, nbits, dtype=np.uint8)
    out = nbits // 10
    ref = ref_numpy_fft_seconds(1 << math.ceil(math.log2(nbits)), repeat=2)
    rows = []
    for method in ("mas", "toeplitz"):
        seed = rng.integers(0, 2, seed_bits(nbits, out, method), dtype=np.uint8)
        hash_bits(x[:1000], seed[: seed_bits(1000, 100, method)], 100, method)
        t = best_time(lambda m=method, s=seed: hash_bits(x, s, out, m), repeat=2)
        rows.append(
            Row(
                AREA,
                f"pa_mbps_{nbits:.0e}_{method}",
                nbits / t / 1e6,
                "Mbit/s (input)",
                reference="numpy_fft_2^k>=n Msamples/s",
                reference_value=(1 << math.ceil(math.log2(nbits))) / ref / 1e6,
                target=">= 100 Mbit/s",
            )
        )
    return rows


def run(quick: bool) -> list[Row]:
    """All distillation rows (``quick``: fewer frames, smaller sizes)."""
    block = 20_000 if quick else 100_000
    rows = beta_table(block, 8 if quick else 50)
    rows.append(reconcile_throughput(block, 2 if quick else 6))
    rows.append(decoder_comparison(block))
    rows += pa_throughput(10**6 if quick else 10**7)
    return rows
