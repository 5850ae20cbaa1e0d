"""Reverse multidimensional reconciliation (dimension 8) with rate-adaptive LDPC codes.

Bob's data define the key (reverse reconciliation). Per group of 8 real symbols Bob
draws 8 uniform key bits ``b``, forms ``u = (1 - 2 b) / sqrt(8)`` on the unit sphere and
publishes the octonion ``c = conj(y) u`` (Leverrier et al., PRA 77, 042325 (2008)):
``y c = |y|^2 u`` (Artin's theorem: ``y`` and ``u`` generate an associative subalgebra),
so Alice's ``v = x c`` is ``rho |y|^2 u`` plus isotropic Gaussian noise. This turns the
Gaussian channel at per-dimension SNR ``s`` into a binary-input AWGN channel of the same
SNR, whose LLRs Alice computes from ``v`` alone (``c`` is independent of ``b``, since
``u`` is uniform and independent of ``y``). Bob then sends the syndrome of his word under
an LDPC code; Alice decodes.

Rate adaptation: a frame carries ``N`` data bits (one per real symbol) in a mother code of
length ``n`` and ``m`` checks. Either ``s = n - N`` bits are shortened (fixed to 0, known
to Alice) or ``p = n - N`` bits are punctured (random bits of Bob, unknown to Alice), and
``N`` is chosen so that the effective rate hits ``beta * C(snr)``:

    R_eff = (n - m - s) / N,   beta = R_eff / C(snr),   C(snr) = 0.5 log2(1 + snr).

The reconciliation leak of a frame is ``m`` bits; Bob's reconciled string (his data bits
plus punctured bits) has ``N + p`` uniform bits, so ``N + p - m = R_eff N``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import numba
import numpy as np

from dsp.ldpc import (
    LLR_CLIP,
    STALL_PATIENCE,
    Ensemble,
    LDPCCode,
    build_code,
    decode_syndrome,
    syndrome,
)

__all__ = [
    "DIM",
    "CodeSpec",
    "FramePlan",
    "alice_decode",
    "biawgn_capacity",
    "bob_encode",
    "capacity",
    "code_family",
    "family_beta",
    "frame_data_bits",
    "md_capacity",
    "md_channel",
    "met_ensemble",
    "octonion_conj",
    "octonion_mul",
    "operating_beta",
    "plan_frame",
    "random_bits",
    "reveal_count",
    "reveal_order",
    "select_code",
]

DIM = 8


def capacity(snr: float) -> float:
    """Gaussian channel capacity per real dimension, ``0.5 log2(1 + snr)`` bits."""
    if snr <= 0:
        raise ValueError(f"SNR must be positive, got {snr}")
    return 0.5 * math.log2(1.0 + snr)


def biawgn_capacity(snr: float | np.ndarray) -> np.ndarray:
    """Capacity (bits per use) of the binary-input AWGN channel ``+-sqrt(snr) + N(0, 1)``,
    by 80-point Gauss-Hermite quadrature of ``1 - E log2(1 + exp(-2 snr - 2 sqrt(snr) z))``
    (accurate to 1e-9 for SNR <= 10)."""
    z, w = np.polynomial.hermite_e.hermegauss(80)
    g = np.asarray(snr, dtype=np.float64)[..., None]
    loss = np.logaddexp(0.0, -2.0 * g - 2.0 * np.sqrt(g) * z) / math.log(2.0)
    return 1.0 - (loss * w).sum(axis=-1) / math.sqrt(2.0 * math.pi)


def md_capacity(snr: float) -> float:
    """Capacity (bits per bit) of the channel d = 8 MD reconciliation leaves: the ceiling
    of its efficiency is ``md_capacity(snr) / capacity(snr)``.

    Given the octonion ``c`` (whose norm is ``|y|``), Alice's ``v`` is a BPSK word
    ``rho |y|^2 u`` in noise of variance proportional to ``|y|^2``, so each group of 8
    bits sees a BIAWGN channel of SNR ``snr X / 8`` with ``X = |y|^2 / var(y)``
    chi-square with 8 degrees of freedom (the same LLR scale is exact for every group).
    Averaging the BIAWGN capacity over that fading is exact; by 40-point generalised
    Gauss-Laguerre quadrature. SNR 0.05, 0.1, 0.3, 1: 0.994, 0.989, 0.972, 0.919 of
    ``capacity(snr)``: at SNR 1 no binary code reaches beta 0.95 through d = 8 MD.
    """
    if not (math.isfinite(snr) and snr > 0):
        raise ValueError(f"SNR must be positive and finite, got {snr}")
    # X / 2 ~ Gamma(4): weight t^3 e^-t, normalised by Gamma(4) = 6.
    t, w = _laguerre_3()
    return float((w * biawgn_capacity(snr * 2.0 * t / DIM)).sum() / 6.0)


@functools.cache
def _laguerre_3() -> tuple[np.ndarray, np.ndarray]:
    from scipy.special import roots_genlaguerre

    t, w = roots_genlaguerre(40, 3.0)
    return t, w


def _cd_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cayley-Dickson product of hypercomplex numbers stored as length-2^k vectors."""
    k = a.shape[-1]
    if k == 1:
        return a * b
    h = k // 2
    p, q = a[..., :h], a[..., h:]
    r, s = b[..., :h], b[..., h:]
    return np.concatenate(
        [_cd_mul(p, r) - _cd_mul(_cd_conj(s), q), _cd_mul(s, p) + _cd_mul(q, _cd_conj(r))],
        axis=-1,
    )


def _cd_conj(a: np.ndarray) -> np.ndarray:
    out = -a
    out[..., 0] = a[..., 0]
    return out


def _octonion_table() -> np.ndarray:
    eye = np.eye(DIM)
    return np.stack([np.stack([_cd_mul(eye[i], eye[j]) for j in range(DIM)]) for i in range(DIM)])


_OCT = _octonion_table()
_OCT_K = np.argmax(np.abs(_OCT), axis=2)
_OCT_S = np.take_along_axis(_OCT, _OCT_K[:, :, None], axis=2)[:, :, 0]


def octonion_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise octonion product of ``(k, 8)`` arrays."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != DIM or b.shape != a.shape:
        raise ValueError(f"octonion product needs two (k, 8) arrays, got {a.shape}, {b.shape}")
    return _oct_mul(a, b, _OCT_K, _OCT_S)


@numba.njit(cache=True)
def _oct_mul(a, b, kk, ss):  # pragma: no cover - compiled
    """``e_i e_j = ss[i, j] e_kk[i, j]``: 64 signed products per row (no BLAS, so one
    core and no thread pool)."""
    out = np.zeros_like(a)
    for r in range(a.shape[0]):
        for i in range(DIM):
            ai = a[r, i]
            for j in range(DIM):
                out[r, kk[i, j]] += ss[i, j] * ai * b[r, j]
    return out


def octonion_conj(a: np.ndarray) -> np.ndarray:
    """Row-wise octonion conjugate."""
    return _cd_conj(np.asarray(a, dtype=float))


def random_bits(k: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """``k`` uniform bits (uint8): from ``rng`` in tests, from the OS CSPRNG otherwise."""
    if rng is not None:
        return rng.integers(0, 2, size=k, dtype=np.uint8)
    raw = np.frombuffer(os.urandom(-(-k // 8)), dtype=np.uint8)
    return np.unpackbits(raw)[:k].copy()


@dataclass(frozen=True)
class CodeSpec:
    """A mother code of the family: ensemble, length, seed, decoder budget, operating beta.

    ``beta_op`` is the efficiency at which this code decodes at least 90 % of frames at
    its block length, as measured by ``hil/bench/distill.py``; it is the default target.
    ``cycles``: no degree-2 variable lies on a cycle of this many or fewer of them
    (:func:`dsp.ldpc.build_code`); ``chain``: the degree-2 core bits lie on one path of
    core checks instead, so they form no cycle at all (``cycles`` is then unused).
    ``op_snr``: the SNR ``beta_op`` was measured at, if not the code's own
    (``C = rate / beta_op``; irregular-r0.50 is measured shortened at SNR 1).
    ``patience``: the decoder's stall stop (:func:`dsp.ldpc.decode_syndrome`), 0 for off.
    """

    name: str
    ensemble: Ensemble
    n: int
    seed: int
    max_iter: int
    beta_op: float
    cycles: int = 3
    op_snr: float | None = None
    patience: int = STALL_PATIENCE
    chain: bool = False

    def build(self) -> LDPCCode:
        """Rebuild the parity-check matrix (identical on both sides)."""
        return build_code(self.ensemble, self.n, self.seed, self.cycles, self.chain)

    @property
    def rate(self) -> float:
        return self.ensemble.design_rate


def _mix(avg: float) -> list[tuple[int, float]]:
    """Two neighbouring integer degrees with weights averaging to ``avg``."""
    lo = math.floor(avg + 1e-9)
    f = avg - lo
    return [(lo, 1.0 - f), (lo + 1, f)] if f > 1e-6 else [(lo, 1.0)]


def met_ensemble(
    rate: float, core: float, ldgm: float, p3: float, name: str, skew: float = 0.0
) -> Ensemble:
    """Low-rate multi-edge-type ensemble (the shape of Richardson-Urbanke's, used for
    CV-QKD by Jouguet et al., PRA 84, 062317 (2011)).

    A fraction ``core`` of the bits are core bits: 2 (or, for a fraction ``p3`` of them, 3)
    edges of type 1 into a high-rate core code and edges of type 2 into LDGM checks; the
    other bits have degree one, each alone on an LDGM check (type 3) with on average
    ``ldgm`` core bits. The degree-3 core bits have ``skew`` more LDGM edges than the
    degree-2 ones (same mean). Socket counts balance exactly (degrees mixed between
    neighbouring integers), so density evolution of this ensemble describes the built code.
    """
    f1 = 1.0 - core
    mc = core - rate
    if not 0.0 < rate < core < 1.0:
        raise ValueError(f"MET ensemble needs 0 < rate < core fraction < 1, got {rate}, {core}")
    mean = ldgm * f1 / core
    two = [(core * (1 - p3) * w, (2, d, 0)) for d, w in _mix(mean - p3 * skew)]
    three = [(core * p3 * w, (3, d, 0)) for d, w in _mix(mean + (1 - p3) * skew)] if p3 else []
    var: list[tuple[float, tuple[int, ...]]] = []
    for i in range(max(len(two), len(three))):
        var += two[i : i + 1] + three[i : i + 1]
    var.append((f1, (0, 0, 1)))
    chk = [(f1 * w, (0, d, 1)) for d, w in _mix(ldgm)]
    chk += [(mc * w, (d, 0, 0)) for d, w in _mix(core * (2 + p3) / mc)]
    return Ensemble(var_types=tuple(var), chk_types=tuple(chk), name=name)


def _irregular(lam: dict[int, float], rho: dict[int, float], name: str) -> Ensemble:
    """Single-edge-type ensemble from edge-perspective degree distributions."""
    z = sum(v / k for k, v in lam.items())
    return Ensemble(
        var_types=tuple((v / k / z, (k,)) for k, v in lam.items()),
        chk_types=tuple((v / k / z, (k,)) for k, v in rho.items()),
        name=name,
    )


# Rate-1/2 BIAWGN-optimised ensemble with maximum variable degree 20 (Richardson,
# Shokrollahi and Urbanke, IEEE Trans. IT 47 (2001) 619, table I).
_RSU_HALF = _irregular(
    {2: 0.23403, 3: 0.21242, 6: 0.14690, 7: 0.10284, 20: 0.30381},
    {8: 0.71875, 9: 0.28125},
    "irregular-r0.50",
)

# (name, rate, core fraction, mean LDGM check degree, fraction of degree-3 core bits,
# LDGM skew, seed, iteration cap, operating beta at 1e5 bits, at 1e6 bits, longest
# cycle of degree-2 core bits removed at 1e5 bits, at 1e6 bits; 0: none, see below).
# Parameters of rates 0.033 .. 0.23 maximise the EXIT threshold on the MD channel
# (dsp.code_design), the others were picked on a grid by density evolution. Rates 0.033
# .. 0.14 lay their degree-2 core bits on a chain of core checks (CodeSpec.chain), so
# they have no cycle of degree-2 bits at all; that needs fewer degree-2 bits than core
# checks, and their degree-3 share is held 1 % above that bound in the optimisation.
# met-r0.033 has rate 0.95 C(0.05), so that it runs unpunctured at SNR 0.05 (puncturing
# core bits by 0.4 % raised its frame error rate there from ~0.10 to 0.16). The others'
# cycle limits are the largest the builder reaches at each length. Thresholds and the
# measured operating points (frame error rate <= 0.1 through the MD reconciliation) are
# in docs/distillation.md.
_MET_CODES = (
    ("met-r0.033", 0.03344, 0.04864, 2.70, 0.70, 37.0, 103, 300, 0.88, 0.95, 0, 0),
    ("met-r0.065", 0.065, 0.0940, 2.78, 0.70, 20.4, 106, 300, 0.91, 0.95, 0, 0),
    ("met-r0.10", 0.10, 0.1433, 2.88, 0.71, 14.7, 110, 300, 0.92, 0.94, 0, 0),
    ("met-r0.14", 0.14, 0.1869, 3.09, 0.76, 11.3, 115, 300, 0.92, 0.94, 0, 0),
    ("met-r0.18", 0.18, 0.206, 3.45, 0.47, 0.4, 120, 250, 0.90, 0.93, 5, 6),
    ("met-r0.23", 0.23, 0.257, 3.69, 0.47, 0.4, 125, 250, 0.90, 0.92, 4, 5),
    ("met-r0.30", 0.30, 0.33, 4.0, 0.45, 0.0, 130, 250, 0.87, 0.91, 3, 3),
)


_RSU_OP = (0.87, 0.88, 12, 12)
"""``irregular-r0.50``: operating beta at 1e5 and 1e6 bits, degree-2 cycle limit at each."""


def _cycles_at(n: int, c5: int, c6: int) -> int:
    """Cycle limit for length ``n``: the 1e6 one from 1e6 bits, the 1e5 one from 1e5,
    3 (reachable by every code) below."""
    return c6 if n >= 1_000_000 else c5 if n >= 100_000 else 3


def _beta_at(n: int, b5: float, b6: float) -> float:
    """Operating beta at length ``n``: interpolated in log10(n) between 1e5 and 1e6."""
    f = min(1.0, max(0.0, math.log10(n) - 5.0))
    return round(b5 + (b6 - b5) * f, 3)


def _patience_at(n: int) -> int:
    """Stall stop for length ``n``: on below 5e5 bits, off from there. A 1e6-bit frame
    can oscillate for 130 iterations and still decode (met-r0.033, SNR 0.05: converged at
    iteration 260, the last improvement at 130), and at the lengths where the key is
    made a frame is worth more than the seconds a failed one costs."""
    return STALL_PATIENCE if n < 500_000 else 0


def code_family(block_bits: int = 100_000) -> tuple[CodeSpec, ...]:
    """The mother codes covering SNR 0.03 .. 1 (rates 0.033 .. 0.5), length ``block_bits``."""
    if not 10_000 <= block_bits <= 2_000_000:
        raise ValueError(f"block length {block_bits} outside 1e4 .. 2e6 bits")
    patience = _patience_at(block_bits)
    met = tuple(
        CodeSpec(
            name,
            met_ensemble(r, fc, k, p3, name, skew),
            block_bits,
            seed,
            it,
            _beta_at(block_bits, b5, b6),
            _cycles_at(block_bits, c5, c6),
            patience=patience,
            chain=c6 == 0,
        )
        for name, r, fc, k, p3, skew, seed, it, b5, b6, c5, c6 in _MET_CODES
    )
    rsu = CodeSpec(
        "irregular-r0.50",
        _RSU_HALF,
        block_bits,
        150,
        200,
        _beta_at(block_bits, *_RSU_OP[:2]),
        _cycles_at(block_bits, *_RSU_OP[2:]),
        op_snr=1.0,
        patience=patience,
    )
    return (*met, rsu)


SHORTEN_PENALTY = 0.5
"""Efficiency charged per unit of shortening beyond ``PUNCTURE_FREE`` on top of the
equal-information rule in :func:`operating_beta` (from met-r0.18 at 1e6 bits, SNR 0.167:
the rule said 0.876, frames decoded at 0.83 and failed at 0.87)."""

PUNCTURE_FREE = 0.01
"""Puncturing (as a fraction of the data bits) that counts like shortening in
:func:`select_code`; more is a last resort."""


def operating_beta(spec: CodeSpec, snr: float) -> float:
    """The efficiency ``spec`` is expected to decode at, at this SNR.

    At its own operating SNR (``C0 = rate / beta_op``, or the information-equivalent
    capacity of ``op_snr``) it is ``beta_op``; above it, the
    code can only be punctured by ``PUNCTURE_FREE``, so the efficiency falls as
    ``rate / ((1 - PUNCTURE_FREE) C)``. Below it the code must be shortened, and
    shortening is not free: the known bits carry one bit each, so a fraction ``s`` with
    ``s + (1 - s) C = C0`` leaves the decoder as much information as at its own SNR, and
    the efficiency is ``(rate - s) / ((1 - s) C)`` (equal-information rule). Measured on
    met-r0.18 at 1e5 bits (operating point 0.90): rule 0.87 at SNR 0.25 (5 % shortened,
    FER 0/6 at 0.85, 1/6 at 0.90), rule 0.80 at SNR 0.167 (9 %, 0/6 at 0.80, 3/6 at 0.85,
    6/6 at 0.90); at 1e6 bits (0.93), rule 0.876 at SNR 0.167, 20 frames of 20 failed at
    0.87, 0.89 and 0.91 and 0 of 20 at 0.80 and 0.83. So the rule is a guide, not a bound,
    and shortening beyond ``PUNCTURE_FREE`` is charged ``SHORTEN_PENALTY`` per unit on
    top, which brings that 1e6 point to 0.836.
    """
    c = capacity(snr)
    c0 = spec.rate / spec.beta_op
    sa = 0.0
    if spec.op_snr is not None and spec.beta_op * capacity(spec.op_snr) < spec.rate:
        ca = capacity(spec.op_snr)  # measured shortened: the same rule, backwards
        sa = (spec.rate - spec.beta_op * ca) / (1.0 - spec.beta_op * ca)
        c0 = sa + (1.0 - sa) * ca
    if c >= c0:
        return min(spec.beta_op, spec.rate / ((1.0 - PUNCTURE_FREE) * c))
    s = (c0 - c) / (1.0 - c)
    extra = max(0.0, s - sa - PUNCTURE_FREE)
    return (spec.rate - s) / ((1.0 - s) * c) - SHORTEN_PENALTY * extra


def family_beta(family: tuple[CodeSpec, ...], snr: float) -> float:
    """The efficiency the family reaches at this SNR: the best :func:`operating_beta`
    over its codes (the code :func:`select_code` picks with no target).

    A sawtooth in SNR: highest at each code's own operating point, lower where a code
    must be shortened or punctured. The runner chooses the modulation variance on it
    (``run.beta: auto``), so a link sits where a code works best.
    """
    if not family:
        raise ValueError("family_beta needs at least one code")
    if not (math.isfinite(snr) and snr > 0):
        raise ValueError(f"family_beta: SNR {snr!r} must be positive")
    return max(operating_beta(spec, snr) for spec in family)


def select_code(family: tuple[CodeSpec, ...], snr: float, beta: float | None = None) -> CodeSpec:
    """The mother code to use at this SNR: with ``beta`` None the one with the highest
    :func:`operating_beta` (then run it at that beta); with a target ``beta``, among the
    codes expected to decode there, the one needing the least shortening (or puncturing
    up to ``PUNCTURE_FREE``), and if none is, the one with the most margin.

    Shortening costs efficiency (see :func:`operating_beta`) and puncturing the low-rate
    MET codes by more than a little fails outright (the punctured bits are core bits):
    met-r0.18 punctured by 7 % to rate 0.193 at SNR 0.37 failed 10 frames of 10 at beta
    0.85 (1e6 bits), where met-r0.30 shortened to the same rate decodes
    (docs/distillation.md). A code run at its own operating point may need a fraction of
    a per cent of puncturing (met-r0.10 at SNR 0.173: 0.1 %).
    """
    if not family:
        raise ValueError("select_code needs at least one code")
    ops = [operating_beta(spec, snr) for spec in family]
    if beta is None:
        return family[int(np.argmax(ops))]
    rt = beta * capacity(snr)
    costs = []
    for spec, op in zip(family, ops, strict=True):
        if op < beta - 1e-9:  # expected to fail: ranked after every code that is not
            costs.append(10.0 + beta - op)
        elif rt <= spec.rate:
            costs.append((spec.rate - rt) / (1.0 - rt))
        else:  # at most PUNCTURE_FREE, or op would be below beta
            costs.append(1.0 - spec.rate / rt)
    return family[int(np.argmin(costs))]


@dataclass(frozen=True)
class FramePlan:
    """How one frame uses its code: data, punctured and shortened positions and rates."""

    n_data: int
    data_pos: np.ndarray
    punctured: np.ndarray
    shortened: np.ndarray
    rate: float
    snr: float

    @property
    def beta(self) -> float:
        """Reconciliation efficiency of the rate actually used."""
        return self.rate / capacity(self.snr)

    @property
    def key_pos(self) -> np.ndarray:
        """Positions of the reconciled string: data then punctured bits."""
        return np.concatenate([self.data_pos, self.punctured])


def _data_bits(n: int, m: int, rt: float) -> tuple[int, int]:
    """Data bits ``N`` and shortened bits ``s`` of a frame at target rate ``rt`` in a code
    of length ``n`` with ``m`` checks (the rest of ``n - N`` is punctured)."""
    if rt <= 1.0 - m / n:
        # Shorten s bits; a few punctured bits absorb the rounding of N to a multiple of 8.
        n_data = min(n // DIM * DIM, int(m / (1.0 - rt)) // DIM * DIM)
        return n_data, min(n - n_data, max(0, math.floor(n - m - rt * n_data)))
    return min(n // DIM * DIM, math.floor((n - m) / rt / DIM) * DIM), 0


def frame_data_bits(spec: CodeSpec, snr: float, beta: float) -> int:
    """Symbols one frame of ``spec`` takes at this SNR and beta (what :func:`plan_frame`
    gives, from the specification alone: the built code's check count may differ by
    a few), to know how a block of symbols divides into frames."""
    n = spec.n
    m = round(n * (1.0 - spec.rate))
    return _data_bits(n, m, beta * capacity(snr))[0]


def plan_frame(code: LDPCCode, snr: float, beta: float, max_data: int | None = None) -> FramePlan:
    """Choose ``N`` and the punctured or shortened positions to hit ``beta`` at ``snr``.

    Positions are taken in a fixed pseudo-random order derived from the code's seed, so
    both parties compute the same plan from ``(code, snr, beta, max_data)``. Only bits of
    degree >= 2 are punctured (a punctured degree-1 bit would carry no information at
    all). The rate is rounded up (by less than ``8 / N``), so the plan's beta is never
    below the target.

    ``max_data`` caps ``N`` (the symbols left at the end of a block): the data bits the
    cap removes are shortened, so the rate and beta fall below the target (by
    ``(1 - R) / (R N)`` per bit; the caller decides whether that frame is worth it).
    """
    if not 0.0 < beta < 1.2:
        raise ValueError(f"target beta {beta} outside (0, 1.2)")
    rt = beta * capacity(snr)
    n, m = code.n, code.m
    if not 0.0 < rt < 1.0:
        raise ValueError(f"target rate {rt:.4f} outside (0, 1)")
    order = np.random.default_rng([code.seed, 0x5EED]).permutation(n)
    deg = np.diff(code.var_ptr)
    n_data, s = _data_bits(n, m, rt)
    if max_data is not None and max_data // DIM * DIM < n_data:
        cut = n_data - max(0, max_data // DIM * DIM)
        n_data -= cut
        s += cut
    if n_data <= 0:
        raise ValueError(f"no usable frame at SNR {snr} and beta {beta} with this code")
    shortened = np.sort(order[:s])
    rest = order[s:]
    pool = rest[deg[rest] >= 2]
    p = n - n_data - s
    if p > pool.size:
        raise ValueError(f"cannot puncture {p} bits of code with {pool.size} candidates")
    punctured = np.sort(pool[:p])
    rate = (n - m - s) / n_data
    if rate <= 0:
        raise ValueError(f"no usable frame at SNR {snr} and beta {beta} with this code")
    mask = np.ones(n, dtype=bool)
    mask[punctured] = False
    mask[shortened] = False
    return FramePlan(
        n_data=int(n_data),
        data_pos=np.flatnonzero(mask),
        punctured=punctured,
        shortened=shortened.astype(np.int64),
        rate=float(rate),
        snr=float(snr),
    )


def reveal_order(code: LDPCCode, plan: FramePlan) -> np.ndarray:
    """Data-bit indices (into ``plan.data_pos``) in the order Bob discloses them after
    a failed decoding: a fixed pseudo-random order from the code's seed, so both parties
    know which bit each disclosed value belongs to."""
    return np.random.default_rng([code.seed, 0x12E7EA1]).permutation(plan.n_data)


def reveal_count(plan: FramePlan, step: float) -> int:
    """Data bits to disclose so that the frame gives up ``step`` of efficiency
    (``ceil(step C N)``, at most ``N``); the frame's rate is then ``rate - count / N``."""
    return min(plan.n_data, math.ceil(step * capacity(plan.snr) * plan.n_data))


def _normalise(a: np.ndarray, n: int, who: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 1 or a.size < n:
        raise ValueError(f"{who} needs a 1-D array of at least {n} symbols, got {a.shape}")
    seg = a[:n]
    sd = float(np.sqrt(np.mean(seg * seg)))
    if not np.isfinite(sd) or sd == 0.0:
        raise ValueError(f"{who} symbols are all zero or not finite")
    return (seg / sd).reshape(-1, DIM)


@dataclass(frozen=True)
class BobFrame:
    """Bob's side of a frame: his word, the public data to send, his reconciled string."""

    word: np.ndarray
    public: np.ndarray
    syndrome: np.ndarray

    def key(self, plan: FramePlan) -> np.ndarray:
        return self.word[plan.key_pos]


def bob_encode(
    code: LDPCCode, plan: FramePlan, y: np.ndarray, rng: np.random.Generator | None = None
) -> BobFrame:
    """Draw Bob's bits, compute the octonions ``c = conj(y) u`` and the syndrome.

    ``y`` are Bob's calibrated quadratures (at least ``plan.n_data`` of them); they are
    normalised by their own RMS, so only Bob's data enter.
    """
    yn = _normalise(y, plan.n_data, "Bob's reconciliation")
    word = np.zeros(code.n, dtype=np.uint8)
    bits = random_bits(plan.n_data + plan.punctured.size, rng)
    data = bits[: plan.n_data]
    word[plan.data_pos] = data
    word[plan.punctured] = bits[plan.n_data :]
    u = (1.0 - 2.0 * data.reshape(-1, DIM)) / math.sqrt(DIM)
    c = octonion_mul(octonion_conj(yn), u).astype(np.float32)
    return BobFrame(word=word, public=c, syndrome=syndrome(code, word))


def alice_llr(plan: FramePlan, code: LDPCCode, x: np.ndarray, public: np.ndarray) -> np.ndarray:
    """Alice's LLRs over the whole code word from her symbols and Bob's octonions."""
    xn = _normalise(x, plan.n_data, "Alice's reconciliation")
    c = np.asarray(public, dtype=np.float64)
    if c.shape != xn.shape:
        raise ValueError(f"reconciliation public data has shape {c.shape}, expected {xn.shape}")
    v = octonion_mul(xn, c).ravel()
    s = plan.snr
    llr = np.zeros(code.n, dtype=np.float32)
    llr[plan.data_pos] = np.clip(2.0 * math.sqrt(s * (1.0 + s) / DIM) * v, -LLR_CLIP, LLR_CLIP)
    llr[plan.shortened] = LLR_CLIP
    return llr


def md_channel(snr: float) -> Callable[[np.random.Generator, int], np.ndarray]:
    """Sampler of Alice's LLRs (times the sign of Bob's bit) after multidimensional
    reconciliation of ``y = x + z`` at per-dimension ``snr``: the channel seen by the
    decoder, for :func:`dsp.ldpc.de_converges`."""

    def sample(rng: np.random.Generator, k: int) -> np.ndarray:
        n = -(-k // DIM) * DIM
        x = rng.standard_normal(n)
        y = x + rng.standard_normal(n) / math.sqrt(snr)
        xn = x.reshape(-1, DIM)
        yn = (y / math.sqrt(1.0 + 1.0 / snr)).reshape(-1, DIM)
        sign = 1.0 - 2.0 * rng.integers(0, 2, size=(n // DIM, DIM))
        v = octonion_mul(xn, octonion_mul(octonion_conj(yn), sign / math.sqrt(DIM)))
        llr = 2.0 * math.sqrt(snr * (1.0 + snr) / DIM) * v * sign
        return llr.ravel()[:k]

    return sample


@dataclass(frozen=True)
class AliceFrame:
    """Alice's decoding outcome: success, iterations, her reconciled string."""

    success: bool
    iterations: int
    key: np.ndarray


def alice_decode(
    code: LDPCCode,
    plan: FramePlan,
    x: np.ndarray,
    public: np.ndarray,
    synd: np.ndarray,
    max_iter: int = 200,
    patience: int = STALL_PATIENCE,
    known: tuple[np.ndarray, np.ndarray] | None = None,
) -> AliceFrame:
    """Decode Bob's word from Alice's symbols, his octonions and his syndrome
    (``max_iter``, ``patience``: see :func:`dsp.ldpc.decode_syndrome`).

    ``known``: ``(positions, values)`` of code bits Bob has disclosed (a retry after a
    failed decoding); they enter with full confidence, like shortened bits.
    """
    llr = alice_llr(plan, code, x, public)
    if known is not None:
        pos, val = known
        llr[pos] = LLR_CLIP * (1.0 - 2.0 * np.asarray(val, dtype=np.float32))
    res = decode_syndrome(code, llr, synd, max_iter, patience)
    return AliceFrame(success=res.success, iterations=res.iterations, key=res.word[plan.key_pos])
