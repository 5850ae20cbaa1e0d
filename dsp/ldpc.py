"""Binary LDPC codes for reverse reconciliation: reproducible construction and a decoder.

Codes are built from a multi-edge-type (MET) ensemble: node types given by their
fraction of the block length and their number of sockets per edge type, sockets of each
edge type joined by a seeded random permutation (repeated pairs dropped). Only the
ensemble, the block length and the seed are stored; the parity-check matrix is rebuilt
identically on both sides (:func:`build_code`).

The decoder (:func:`decode_syndrome`) is a layered (serial, check by check) sum-product
decoder in the log-likelihood-ratio domain, compiled with numba, float32 messages,
float64 inside a check. It decodes a *syndrome*: it looks for the word ``w`` with
``H w = s`` that best matches the channel LLRs, which is what reverse reconciliation
needs (Bob sends the syndrome of his word, Alice holds the LLRs). The choice of this
decoder over alternatives was measured; see ``docs/distillation.md``.

:func:`de_converges` and :func:`de_threshold` run sum-product density evolution of an
ensemble (population dynamics) on any symmetric channel given as an LLR sampler; the code
family's ensembles were chosen with them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numba
import numpy as np

__all__ = [
    "DecodeResult",
    "Ensemble",
    "LDPCCode",
    "build_code",
    "de_converges",
    "de_threshold",
    "decode_syndrome",
    "syndrome",
]

LLR_CLIP = 40.0


@dataclass(frozen=True)
class Ensemble:
    """A multi-edge-type ensemble, node-perspective, normalised to the block length.

    Parameters
    ----------
    var_types, chk_types
        Tuples ``(fraction, degrees)``: ``fraction`` of the block length ``n`` is the
        number of nodes of this type, ``degrees[t]`` their number of edges of type ``t``.
    name
        A short label.
    """

    var_types: tuple[tuple[float, tuple[int, ...]], ...]
    chk_types: tuple[tuple[float, tuple[int, ...]], ...]
    name: str = ""

    @property
    def design_rate(self) -> float:
        """``1 - (checks / variables)``."""
        nv = sum(f for f, _ in self.var_types)
        nc = sum(f for f, _ in self.chk_types)
        return 1.0 - nc / nv


@dataclass(frozen=True, eq=False)
class LDPCCode:
    """A parity-check matrix in the two adjacency forms the decoder uses.

    Attributes
    ----------
    n, m
        Variables (bits) and checks (syndrome bits).
    chk_ptr, chk_var
        Check-major adjacency (CSR): edges of check ``c`` are ``chk_ptr[c]:chk_ptr[c+1]``,
        ``chk_var[e]`` their variable.
    var_ptr, var_edge
        Variable-major view: edges of variable ``v`` are ``var_edge[var_ptr[v]:var_ptr[v+1]]``.
    var_kind
        Per variable, the index of its node type in the ensemble (used to choose which
        bits to puncture or shorten).
    seed, ensemble
        What the code was built from.
    """

    n: int
    m: int
    chk_ptr: np.ndarray
    chk_var: np.ndarray
    var_ptr: np.ndarray
    var_edge: np.ndarray
    var_kind: np.ndarray
    seed: int
    ensemble: Ensemble = field(repr=False)

    @property
    def rate(self) -> float:
        """Design rate ``1 - m/n`` (the leak is ``m`` bits whatever the rank of H)."""
        return 1.0 - self.m / self.n

    @property
    def edges(self) -> int:
        return int(self.chk_var.size)

    def dense(self) -> np.ndarray:
        """The parity-check matrix as a dense uint8 array (small codes only)."""
        h = np.zeros((self.m, self.n), dtype=np.uint8)
        rows = np.repeat(np.arange(self.m), np.diff(self.chk_ptr))
        h[rows, self.chk_var] = 1
        return h


def _counts(fracs: list[float], n: int) -> np.ndarray:
    """Integer node counts proportional to ``fracs * n``, largest-remainder rounding."""
    raw = np.asarray(fracs, dtype=float) * n
    out = np.floor(raw).astype(np.int64)
    target = round(raw.sum())
    rem = raw - out
    for i in np.argsort(-rem)[: max(0, target - int(out.sum()))]:
        out[i] += 1
    return out


def build_code(ensemble: Ensemble, n: int, seed: int) -> LDPCCode:
    """Build a code of length about ``n`` from ``ensemble``, reproducibly from ``seed``.

    Socket counts of each edge type are matched exactly by adding or removing sockets on
    randomly chosen check nodes of that type; the exact ``n`` is ``sum(var counts)``.
    """
    if n < 16:
        raise ValueError(f"LDPC block length {n} too small")
    rng = np.random.default_rng(seed)
    ntypes = len(ensemble.var_types[0][1])
    vcount = _counts([f for f, _ in ensemble.var_types], n)
    ccount = _counts([f for f, _ in ensemble.chk_types], n)
    nv = int(vcount.sum())
    nc = int(ccount.sum())
    var_kind = np.repeat(np.arange(len(vcount)), vcount).astype(np.int8)
    chk_kind = np.repeat(np.arange(len(ccount)), ccount)
    vdeg = np.array([d for _, d in ensemble.var_types], dtype=np.int64)[var_kind]
    cdeg = np.array([d for _, d in ensemble.chk_types], dtype=np.int64)[chk_kind].copy()
    # Variable nodes are shuffled so that node types are interleaved along the block.
    perm_v = rng.permutation(nv)
    vdeg = vdeg[perm_v]
    var_kind = var_kind[perm_v]
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    for t in range(ntypes):
        vs = np.repeat(np.arange(nv), vdeg[:, t])
        diff = vs.size - int(cdeg[:, t].sum())
        holders = np.flatnonzero(cdeg[:, t] > 0)
        if holders.size == 0 and vs.size:
            raise ValueError(f"ensemble {ensemble.name!r}: edge type {t} has no check sockets")
        while diff != 0:
            pick = rng.choice(holders, size=min(abs(diff), holders.size), replace=False)
            if diff > 0:
                cdeg[pick, t] += 1
                diff -= pick.size
            else:
                pick = pick[cdeg[pick, t] > 1]
                cdeg[pick, t] -= 1
                diff += pick.size
        cs = np.repeat(np.arange(nc), cdeg[:, t])
        rows.append(cs)
        cols.append(vs[rng.permutation(vs.size)])
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    key = np.unique(r.astype(np.int64) * nv + c)
    r = (key // nv).astype(np.int64)
    c = (key % nv).astype(np.int32)
    chk_ptr = np.zeros(nc + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=nc), out=chk_ptr[1:])
    order = np.argsort(c, kind="stable")
    var_ptr = np.zeros(nv + 1, dtype=np.int64)
    np.cumsum(np.bincount(c, minlength=nv), out=var_ptr[1:])
    return LDPCCode(
        n=nv,
        m=nc,
        chk_ptr=chk_ptr,
        chk_var=c,
        var_ptr=var_ptr,
        var_edge=order.astype(np.int64),
        var_kind=var_kind,
        seed=seed,
        ensemble=ensemble,
    )


def syndrome(code: LDPCCode, word: np.ndarray) -> np.ndarray:
    """``H @ word mod 2`` as uint8, for a 0/1 word of length ``code.n``."""
    w = np.asarray(word, dtype=np.uint8)
    if w.shape != (code.n,):
        raise ValueError(f"word has shape {w.shape}, code needs ({code.n},)")
    return _syndrome(code.chk_ptr, code.chk_var, w)


@numba.njit(cache=True)
def _syndrome(chk_ptr, chk_var, w):  # pragma: no cover - compiled
    m = chk_ptr.size - 1
    s = np.zeros(m, dtype=np.uint8)
    for c in range(m):
        acc = 0
        for e in range(chk_ptr[c], chk_ptr[c + 1]):
            acc ^= w[chk_var[e]]
        s[c] = acc
    return s


@dataclass(frozen=True)
class DecodeResult:
    """Decoder output: hard decision, whether the syndrome is met, iterations used."""

    word: np.ndarray
    success: bool
    iterations: int


@numba.njit(cache=True, fastmath=True)
def _layered_sp(chk_ptr, chk_var, synd, llr, max_iter, clip):  # pragma: no cover - compiled
    n = llr.size
    m = chk_ptr.size - 1
    E = chk_var.size
    xmax = 1.0 - 2.0**-30
    clip32 = np.float32(clip)
    post = llr.astype(np.float32).copy()
    r = np.zeros(E, dtype=np.float32)
    maxdeg = 0
    for c in range(m):
        d = chk_ptr[c + 1] - chk_ptr[c]
        if d > maxdeg:
            maxdeg = d
    t = np.empty(maxdeg, dtype=np.float64)
    q = np.empty(maxdeg, dtype=np.float32)
    fwd = np.empty(maxdeg + 1, dtype=np.float64)
    hard = np.zeros(n, dtype=np.uint8)
    iters = 0
    ok = False
    for it in range(1, max_iter + 1):
        iters = it
        for c in range(m):
            a = chk_ptr[c]
            d = chk_ptr[c + 1] - a
            fwd[0] = 1.0 - 2.0 * synd[c]
            for k in range(d):
                qk = post[chk_var[a + k]] - r[a + k]
                q[k] = qk
                if qk > clip32:
                    qk = clip32
                elif qk < -clip32:
                    qk = -clip32
                em = np.expm1(np.float64(qk))
                tk = em / (em + 2.0)
                t[k] = tk
                fwd[k + 1] = fwd[k] * tk
            bwd = 1.0
            for k in range(d - 1, -1, -1):
                x = fwd[k] * bwd
                bwd *= t[k]
                if x > xmax:
                    x = xmax
                elif x < -xmax:
                    x = -xmax
                val = np.float32(np.log1p(2.0 * x / (1.0 - x)))
                r[a + k] = val
                post[chk_var[a + k]] = q[k] + val
        for v in range(n):
            hard[v] = 1 if post[v] < 0 else 0
        ok = True
        for c in range(m):
            acc = synd[c]
            for e in range(chk_ptr[c], chk_ptr[c + 1]):
                acc ^= hard[chk_var[e]]
            if acc:
                ok = False
                break
        if ok:
            break
    return hard, ok, iters


def decode_syndrome(
    code: LDPCCode, llr: np.ndarray, synd: np.ndarray, max_iter: int = 200
) -> DecodeResult:
    """Find the word matching the syndrome ``synd`` closest to the channel LLRs.

    Parameters
    ----------
    code
        The code.
    llr
        Per-bit log-likelihood ratios ``log P(bit=0)/P(bit=1)`` (0 for punctured bits, a
        large value for shortened bits known to be 0, minus it for known 1).
    synd
        The target syndrome (uint8, length ``code.m``).
    max_iter
        Iteration cap; decoding stops as soon as the syndrome is met.
    """
    llr = np.asarray(llr, dtype=np.float32)
    synd = np.asarray(synd, dtype=np.uint8)
    if llr.shape != (code.n,) or synd.shape != (code.m,):
        raise ValueError(
            f"decoder input shapes llr {llr.shape}, syndrome {synd.shape} do not match "
            f"the code (n={code.n}, m={code.m})"
        )
    word, ok, it = _layered_sp(code.chk_ptr, code.chk_var, synd, llr, int(max_iter), LLR_CLIP)
    return DecodeResult(word=word, success=bool(ok), iterations=int(it))


# --- Density evolution -------------------------------------------------------------------

_DE_CLIP = 50.0


def de_converges(
    ensemble: Ensemble,
    channel: Callable[[np.random.Generator, int], np.ndarray],
    pop: int = 20_000,
    max_iter: int = 2000,
    seed: int = 0,
) -> tuple[bool, int]:
    """Sum-product density evolution of a MET ensemble, by population dynamics.

    Each edge type keeps a population of ``pop`` variable-to-check and check-to-variable
    LLR samples (all-zero word; the channel is symmetric); an outgoing message of a node
    type is drawn from the channel and the populations of the node's other sockets. Node
    types are sampled in the edge perspective of each edge type. Stops when the mean
    entropy ``E log2(1 + exp(-L))`` of the bit posteriors (checks' messages of the last
    iteration) is below 1e-6 (converged) or when it has fallen by less than 0.5 % over 100
    iterations (stuck at a fixed point).

    ``channel(rng, k)`` returns ``k`` channel LLRs of a transmitted 0. Returns
    (converged, iterations).
    """
    rng = np.random.default_rng(seed)
    ntypes = len(ensemble.var_types[0][1])
    vf = np.array([f for f, _ in ensemble.var_types])
    vd = np.array([d for _, d in ensemble.var_types], dtype=np.int64)
    cf = np.array([f for f, _ in ensemble.chk_types])
    cd = np.array([d for _, d in ensemble.chk_types], dtype=np.int64)
    vcnt = [_counts(list(vf * vd[:, t] / np.dot(vf, vd[:, t])), pop) for t in range(ntypes)]
    ccnt = [_counts(list(cf * cd[:, t] / np.dot(cf, cd[:, t])), pop) for t in range(ntypes)]
    pcnt = [max(1000, int(pop * f / vf.sum())) for f in vf]
    lc = [np.zeros(pop) for _ in range(ntypes)]
    hist: list[float] = []
    for it in range(1, max_iter + 1):
        lv = []
        for t in range(ntypes):
            parts = []
            for j in np.flatnonzero(vcnt[t]):
                k = int(vcnt[t][j])
                msg = channel(rng, k).astype(np.float64)
                for s_ in range(ntypes):
                    deg = int(vd[j, s_]) - (s_ == t)
                    if deg > 0:
                        msg += lc[s_][rng.integers(0, pop, size=(k, deg))].sum(axis=1)
                parts.append(msg)
            lv.append(np.clip(np.concatenate(parts), -_DE_CLIP, _DE_CLIP))
        h = 0.0
        for j in range(vf.size):
            post = channel(rng, pcnt[j]).astype(np.float64)
            for s_ in range(ntypes):
                if vd[j, s_] > 0:
                    post += lc[s_][rng.integers(0, pop, size=(pcnt[j], vd[j, s_]))].sum(axis=1)
            h += vf[j] / vf.sum() * float(np.mean(np.logaddexp(0.0, -post))) / math.log(2.0)
        hist.append(h)
        if h < 1e-6:
            return True, it
        if it > 100 and h > 0.995 * hist[-101]:
            return False, it
        tv = [np.tanh(m / 2.0) for m in lv]
        for t in range(ntypes):
            parts = []
            for j in np.flatnonzero(ccnt[t]):
                k = int(ccnt[t][j])
                prod = np.ones(k)
                for s_ in range(ntypes):
                    deg = int(cd[j, s_]) - (s_ == t)
                    if deg > 0:
                        prod *= tv[s_][rng.integers(0, pop, size=(k, deg))].prod(axis=1)
                parts.append(prod)
            x = np.clip(np.concatenate(parts), -1.0 + 1e-15, 1.0 - 1e-15)
            lc[t] = 2.0 * np.arctanh(x)
    return False, max_iter


def de_threshold(
    ensemble: Ensemble,
    channel_at: Callable[[float], Callable[[np.random.Generator, int], np.ndarray]],
    lo: float,
    hi: float,
    steps: int = 8,
    **kw: int,
) -> float:
    """Smallest SNR in ``[lo, hi]`` at which :func:`de_converges` succeeds (bisection in
    log SNR, ``steps`` halvings); ``channel_at(snr)`` gives the channel sampler."""
    a, b = math.log(lo), math.log(hi)
    for _ in range(steps):
        mid = 0.5 * (a + b)
        if de_converges(ensemble, channel_at(math.exp(mid)), **kw)[0]:
            b = mid
        else:
            a = mid
    return math.exp(b)
