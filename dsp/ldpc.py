"""Binary LDPC codes for reverse reconciliation: reproducible construction and a decoder.

Codes are built from a multi-edge-type (MET) ensemble: node types given by their
fraction of the block length and their number of sockets per edge type, sockets of each
edge type joined by a seeded random permutation (repeated pairs dropped). Only the
ensemble, the block length and the seed are stored; the parity-check matrix is rebuilt
identically on both sides (:func:`build_code`).

The decoder (:func:`decode_syndrome`) is a layered sum-product decoder in the
log-likelihood-ratio domain, compiled with numba, float32 throughout. Checks are grouped
into blocks of up to 128 checks of one degree that share no variable; updating a block at
once equals updating its checks one by one, and lets the per-edge arithmetic (tanh and
atanh by polynomial, no library call) run as vector instructions. It decodes a
*syndrome*: it looks for the word ``w`` with ``H w = s`` that best matches the channel
LLRs, which is what reverse reconciliation needs (Bob sends the syndrome of his word,
Alice holds the LLRs). The choice of this decoder over alternatives was measured; see
``docs/distillation.md``.

:func:`de_converges` and :func:`de_threshold` run sum-product density evolution of an
ensemble (population dynamics) on any symmetric channel given as an LLR sampler; the code
family's ensembles were chosen with them.
"""

from __future__ import annotations

import hashlib
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
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def rate(self) -> float:
        """Design rate ``1 - m/n`` (the leak is ``m`` bits whatever the rank of H)."""
        return 1.0 - self.m / self.n

    @property
    def edges(self) -> int:
        return int(self.chk_var.size)

    @property
    def digest(self) -> bytes:
        """8-byte fingerprint of the parity-check matrix and the variables' node types
        (which choose the punctured and shortened bits). Both parties must hold the same
        code; two hosts that build it differently (another version of this package or of
        numpy, whose random streams the construction draws from) disagree on it."""
        d = self._cache.get("digest")
        if d is None:
            h = hashlib.sha256()
            h.update(np.ascontiguousarray(self.chk_ptr, dtype="<i8").tobytes())
            h.update(np.ascontiguousarray(self.chk_var, dtype="<i4").tobytes())
            h.update(np.ascontiguousarray(self.var_kind, dtype="<i1").tobytes())
            d = self._cache["digest"] = h.digest()[:8]
        return d

    @classmethod
    def from_checks(
        cls,
        chk_ptr: np.ndarray,
        chk_var: np.ndarray,
        var_kind: np.ndarray,
        seed: int,
        ensemble: Ensemble,
    ) -> LDPCCode:
        """The code whose check ``c`` holds variables ``chk_var[chk_ptr[c]:chk_ptr[c+1]]``
        (ascending within each check); the variable-major view is derived."""
        chk_ptr = np.asarray(chk_ptr, dtype=np.int64)
        chk_var = np.asarray(chk_var, dtype=np.int32)
        var_kind = np.asarray(var_kind, dtype=np.int8)
        nv = int(var_kind.size)
        if chk_ptr[-1] != chk_var.size or (
            chk_var.size and not 0 <= chk_var.min() <= chk_var.max() < nv
        ):
            raise ValueError("inconsistent parity-check arrays")
        order = np.argsort(chk_var, kind="stable")
        var_ptr = np.zeros(nv + 1, dtype=np.int64)
        np.cumsum(np.bincount(chk_var, minlength=nv), out=var_ptr[1:])
        return cls(
            n=nv,
            m=int(chk_ptr.size - 1),
            chk_ptr=chk_ptr,
            chk_var=chk_var,
            var_ptr=var_ptr,
            var_edge=order.astype(np.int64),
            var_kind=var_kind,
            seed=seed,
            ensemble=ensemble,
        )

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


def build_code(
    ensemble: Ensemble, n: int, seed: int, cycles: int = 3, chain: bool = False
) -> LDPCCode:
    """Build a code of length about ``n`` from ``ensemble``, reproducibly from ``seed``.

    Degree-2 variables of an edge type are rewired until none lies on a cycle of at most
    ``cycles`` of them (such cycles are low-weight codewords; :func:`_break_short_cycles`).
    With ``chain`` they are instead laid along one path of checks (an accumulator), so
    none lies on any cycle of degree-2 variables (:func:`_chain_edges`).

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
        has_two = bool(np.any(vdeg[:, t] == 2))
        if chain and has_two:
            cs, col = _chain_edges(cdeg[:, t], vdeg[:, t], rng, ensemble.name, t)
        else:
            cs = np.repeat(np.arange(nc), cdeg[:, t])
            col = vs[rng.permutation(vs.size)]
        if has_two and not chain:
            left = _break_short_cycles(
                cs, col, vdeg[:, t] == 2, nc, int(rng.integers(2**31)), cycles
            )
            if left:
                raise ValueError(
                    f"ensemble {ensemble.name!r}, n={n}, seed={seed}: {left} degree-2 edges of "
                    f"type {t} still on cycles of <= {cycles} degree-2 variables; use fewer"
                )
        rows.append(cs)
        cols.append(col)
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    key = np.unique(r.astype(np.int64) * nv + c)
    r = (key // nv).astype(np.int64)
    c = (key % nv).astype(np.int32)
    chk_ptr = np.zeros(nc + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=nc), out=chk_ptr[1:])
    return LDPCCode.from_checks(chk_ptr, c, var_kind, seed, ensemble)


def _chain_edges(
    cdeg: np.ndarray, vdeg: np.ndarray, rng: np.random.Generator, name: str, t: int
) -> tuple[np.ndarray, np.ndarray]:
    """Edges of one type with its degree-2 variables on a path of distinct checks.

    The ``k`` degree-2 variables, in random order, join checks ``c_0 - c_1 - ... - c_k``
    (a random order of the checks with at least two sockets): a forest has no cycle, so
    no set of degree-2 variables is a codeword of the checks alone. The other sockets
    are joined at random. Returns (check, variable) per edge.
    """
    two = np.flatnonzero(vdeg == 2)
    k = two.size
    wide = np.flatnonzero(cdeg >= 2)
    if k + 1 > wide.size:
        raise ValueError(
            f"ensemble {name!r}: {k} degree-2 variables of edge type {t} need a path of "
            f"{k + 1} checks with >= 2 sockets, only {wide.size}; raise the degree-3 share"
        )
    path = rng.permutation(wide)[: k + 1]
    two = rng.permutation(two)
    used = np.zeros(cdeg.size, dtype=np.int64)
    np.add.at(used, path[:-1], 1)
    np.add.at(used, path[1:], 1)
    rest = np.repeat(np.arange(cdeg.size), cdeg - used)
    others = np.repeat(np.arange(vdeg.size), np.where(vdeg == 2, 0, vdeg))
    cs = np.concatenate([path[:-1], path[1:], rest])
    col = np.concatenate([two, two, others[rng.permutation(others.size)]])
    return cs, col


@numba.njit(cache=True)
def _on_short_cycle(k1, chk, var, partner, cptr, cedges, max_len, mark, queue):  # pragma: no cover
    """Whether the degree-2 variable on edge ``k1`` closes a cycle of at most ``max_len``
    degree-2 variables (a cycle of ``L`` of them is a codeword of the check set of weight
    ``L``, or of ``L (1 + d)`` with their ``d`` LDGM neighbours). ``cptr``/``cedges`` list
    each check's edges of degree-2 variables.

    Breadth-first search from the variable's two checks, ``max_len // 2`` and
    ``(max_len - 1) // 2`` steps deep, without the variable itself: the balls meet iff the
    checks are joined by a path of at most ``max_len - 1`` other degree-2 variables.
    ``mark`` (per check, the stamp of the last search that reached it; ``mark[-1]`` holds
    the stamp counter) and ``queue`` are scratch arrays.
    """
    v = var[k1]
    c1 = chk[k1]
    c2 = chk[partner[k1]]
    if c1 == c2:
        return True
    stamp = mark[-1] + 2
    mark[-1] = stamp
    depth_a = max_len // 2
    depth_b = (max_len - 1) // 2
    for side in range(2):
        start = c1 if side == 0 else c2
        depth = depth_a if side == 0 else depth_b
        mark_as = stamp + side
        if side == 1 and mark[start] == stamp:
            return True
        mark[start] = mark_as
        head = 0
        tail = 1
        queue[0] = start
        level_end = 1
        level = 0
        while head < tail and level < depth:
            c = queue[head]
            head += 1
            for i in range(cptr[c], cptr[c + 1]):
                ea = cedges[i]
                if var[ea] == v:
                    continue
                n = chk[partner[ea]]
                if side == 1 and mark[n] == stamp:
                    return True
                if mark[n] != mark_as:
                    mark[n] = mark_as
                    queue[tail] = n
                    tail += 1
            if head == level_end:
                level += 1
                level_end = tail
    return False


@numba.njit(cache=True)
def _break_short_cycles(chk, var, deg2_var, nc, seed, max_len):  # pragma: no cover
    """Rewire edges in place (``var[k]``: variable on edge ``k``, ``chk[k]`` its fixed
    check) so that no degree-2 variable lies on a cycle of <= ``max_len`` of them; returns
    the number of degree-2 edges still on one (0 unless ``max_len`` is too ambitious for
    the graph's density).

    Endpoint swaps between two degree-2 variables' edges keep every degree. Such cycles
    are low-weight codewords: with the MET codes' degree-2 core bits, decoding at 1e6 bits
    converged to one (a 2-cycle: 2 core + 48 degree-one bits) in about 1 frame in 20 at
    beta 0.90, a failure only the verification hash caught.
    """
    np.random.seed(seed)
    e = chk.size
    deg2 = deg2_var
    first = np.full(deg2.size, -1, dtype=np.int64)
    partner = np.full(e, -1, dtype=np.int64)
    for k in range(e):
        v = var[k]
        if deg2[v]:
            if first[v] < 0:
                first[v] = k
            else:
                partner[k] = first[v]
                partner[first[v]] = k
    d2e = np.flatnonzero(partner >= 0)
    cptr = np.zeros(nc + 1, dtype=np.int64)
    for k in d2e:
        cptr[chk[k] + 1] += 1
    for c in range(nc):
        cptr[c + 1] += cptr[c]
    cedges = np.empty(d2e.size, dtype=np.int64)
    fill = cptr[:-1].copy()
    for k in d2e:
        cedges[fill[chk[k]]] = k
        fill[chk[k]] += 1
    if d2e.size < 4:
        return 0
    mark = np.zeros(nc + 1, dtype=np.int64)
    queue = np.empty(nc, dtype=np.int64)
    for _ in range(12):
        changed = 0
        for k in d2e[np.random.permutation(d2e.size)]:
            if not _on_short_cycle(k, chk, var, partner, cptr, cedges, max_len, mark, queue):
                continue
            for _try in range(50):
                j = d2e[np.random.randint(d2e.size)]
                if var[j] == var[k] or chk[j] == chk[k]:
                    continue
                _swap(k, j, var, partner)
                if not _on_short_cycle(
                    k, chk, var, partner, cptr, cedges, max_len, mark, queue
                ) and not (
                    _on_short_cycle(j, chk, var, partner, cptr, cedges, max_len, mark, queue)
                ):
                    changed += 1
                    break
                _swap(k, j, var, partner)
        if changed == 0:
            break
    left = 0
    for k in d2e:
        left += _on_short_cycle(k, chk, var, partner, cptr, cedges, max_len, mark, queue)
    return left


@numba.njit(cache=True)
def _swap(ka, kb, var, partner):  # pragma: no cover - compiled
    """Exchange the variables on edges ``ka`` and ``kb`` (both of degree-2 variables)."""
    pa = partner[ka]
    pb = partner[kb]
    va = var[ka]
    var[ka] = var[kb]
    var[kb] = va
    partner[kb] = pa
    partner[pa] = kb
    partner[ka] = pb
    partner[pb] = ka


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


# --- Decoder -----------------------------------------------------------------------------

STALL_EVERY = 10
"""Iterations between the full counts of unsatisfied checks that drive the stall stop."""

STALL_PATIENCE = 40
"""Default stall patience of :func:`decode_syndrome` in iterations. Traced on 560 frames
of seven family codes at or just above their operating points (1e5 and 1e6 bits): the
65 frames that failed kept oscillating, between a few and tens of thousands of
unsatisfied checks, up to the cap, and gave up after 90 .. 137 iterations on average
instead of 200 .. 300 (25 % fewer iterations over all frames, 35 % for met-r0.10 at
1e5); 3 of the 495 frames that decoded had stalled longer (60 .. 90 iterations, all at
1e5 bits) and were lost (a patience of 30 would have lost 2 more at 1e6). In
``make bench`` at 1e6 bits one frame of 60 (met-r0.033, SNR 0.05) was lost that would
have decoded at iteration 260 after 130 iterations without progress, so the code family
turns the stop off from 5e5 bits (:class:`dsp.reconciliation.CodeSpec` ``patience``)."""

BLOCK_CHECKS = 128
"""Most checks per block of the decoder's schedule (measured: 64 is 35 % slower, 256 and
512 no faster)."""

# Float32 approximations, fitted by least squares on 2000 Chebyshev nodes of [0, 1]:
# 2^g ~ _EXP2(g) (relative error 7.7e-8) and log2(1 + w) ~ w * _LOG2(w) (2.0e-7). With
# the range reductions below, tanh(q/2) and 2 atanh(x) are within 5e-7 relative of the
# float64 functions over the whole range (tests/distill/test_ldpc_reconciliation.py).
_E0, _E1, _E2, _E3, _E4, _E5 = (
    np.float32(c)
    for c in (
        0.9999999269249829,
        0.6931529681766336,
        0.24015452988671884,
        0.05582360446230209,
        0.00899258403131803,
        0.001876232945197824,
    )
)
_L0, _L1, _L2, _L3, _L4, _L5, _L6, _L7 = (
    np.float32(c)
    for c in (
        1.4426947670986443,
        -0.7213107231240888,
        0.4800737521980479,
        -0.3534546976887347,
        0.25617973950572664,
        -0.15560001384759725,
        0.06378762653292867,
        -0.012370650973833308,
    )
)
_LOG2E = np.float32(1.0 / math.log(2.0))
_LN2 = np.float32(math.log(2.0))
_TINY = np.float32(1e-12)

_LANES = 32  # float32 lanes per unrolled vector loop iteration (4 x AVX2)

_FAST = {"cache": True, "fastmath": True, "error_model": "numpy"}


@numba.njit(inline="always", **_FAST)
def _tanh_half(q, floor):  # pragma: no cover - compiled
    """``tanh(q / 2)`` in float32 with no library call, so that loops vectorise; its
    magnitude is at least ``floor``."""
    a = min(abs(q), np.float32(LLR_CLIP))
    y = a * _LOG2E
    k = np.int32(y)
    g = np.float32(1.0) - (y - np.float32(k))
    p = _E0 + g * (_E1 + g * (_E2 + g * (_E3 + g * (_E4 + g * _E5))))
    e = p * np.int32((126 - k) << 23).view(np.float32)  # exp(-a) = 2^(g-1) * 2^-k
    a2 = a * a
    series = a * (  # 1 - exp(-a) without cancellation for small a
        np.float32(1.0)
        - a * np.float32(0.5)
        + a2 * np.float32(1.0 / 6.0)
        - a2 * a * np.float32(1.0 / 24.0)
        + a2 * a2 * np.float32(1.0 / 120.0)
        - a2 * a2 * a * np.float32(1.0 / 720.0)
    )
    num = max(series if a < np.float32(0.25) else np.float32(1.0) - e, floor)
    t = num / (np.float32(1.0) + e)
    return t if q >= 0 else -t


@numba.njit(inline="always", **_FAST)
def _two_atanh(x):  # pragma: no cover - compiled
    """``2 atanh(x) = log((1 + x) / (1 - x))`` in float32 (``|x|`` capped at 1 - 2^-23,
    so outputs are at most 16.6)."""
    ax = min(abs(x), np.float32(1.0 - 2.0**-23))
    u = np.float32(2.0) * ax / (np.float32(1.0) - ax)
    bits = np.float32(np.float32(1.0) + u).view(np.int32)
    ex = (bits >> 23) - 127
    mant = np.int32((bits & 0x7FFFFF) | 0x3F800000).view(np.float32)
    w = u if ex == 0 else mant - np.float32(1.0)
    p = _L0 + w * (_L1 + w * (_L2 + w * (_L3 + w * (_L4 + w * (_L5 + w * (_L6 + w * _L7))))))
    v = (np.float32(ex) + w * p) * _LN2
    return v if x >= 0 else -v


@numba.njit(cache=True)
def _close(slot, members, cnt, mask, chk_ptr, chk_var, chk_order, pos):  # pragma: no cover
    """Write open block ``slot`` to ``chk_order[pos:]`` and free its variables' bits."""
    k = cnt[slot]
    for j in range(k):
        c = members[slot, j]
        chk_order[pos + j] = c
        for e in range(chk_ptr[c], chk_ptr[c + 1]):
            mask[chk_var[e]] &= ~np.uint32(1 << slot)
    cnt[slot] = 0
    return k


@numba.njit(cache=True)
def _schedule(chk_ptr, chk_var, var_deg, bmax):  # pragma: no cover - compiled
    """Blocks of at most ``bmax`` checks of one degree with no variable in common.

    Greedy: each check joins the first of 32 open blocks it does not conflict with
    (per-variable bit masks of the open blocks); a full block, or the fullest one when
    none fits, is closed. Returns the checks in block order and per block its degree,
    size and first slot; slots are laid out degree-major (``off + k * size + j`` is the
    ``k``-th edge of the block's ``j``-th check). Checks with a degree-one variable are
    blocked apart from the others (flag ``blk_c1``), with that variable in row 0: its
    message into the check is its channel LLR, constant over the iterations.
    """
    m = chk_ptr.size - 1
    n = var_deg.size
    first1 = np.full(m, -1, dtype=np.int64)
    for c in range(m):
        for e in range(chk_ptr[c], chk_ptr[c + 1]):
            if var_deg[chk_var[e]] == 1:
                first1[c] = e
                break
    deg = 2 * (chk_ptr[1:] - chk_ptr[:-1]) + (first1 >= 0)
    order = np.argsort(deg, kind="mergesort")
    ns = 32
    mask = np.zeros(n, dtype=np.uint32)
    members = np.empty((ns, bmax), dtype=np.int64)
    cnt = np.zeros(ns, dtype=np.int64)
    chk_order = np.empty(m, dtype=np.int64)
    blk_deg = np.empty(m, dtype=np.int64)
    blk_cnt = np.empty(m, dtype=np.int64)
    nb = 0
    pos = 0
    cur = -1
    for i in range(m + 1):
        d = deg[order[i]] if i < m else -1
        if d != cur:
            for s_ in range(ns):
                if cnt[s_] > 0:
                    k = _close(s_, members, cnt, mask, chk_ptr, chk_var, chk_order, pos)
                    blk_deg[nb] = cur
                    blk_cnt[nb] = k
                    nb += 1
                    pos += k
            cur = d
        if i == m:
            break
        c = order[i]
        used = np.uint32(0)
        for e in range(chk_ptr[c], chk_ptr[c + 1]):
            used |= mask[chk_var[e]]
        slot = -1
        for s_ in range(ns):
            if not (used >> s_) & 1:
                slot = s_
                break
        if slot < 0:
            slot = int(np.argmax(cnt))
            k = _close(slot, members, cnt, mask, chk_ptr, chk_var, chk_order, pos)
            blk_deg[nb] = cur
            blk_cnt[nb] = k
            nb += 1
            pos += k
        members[slot, cnt[slot]] = c
        cnt[slot] += 1
        for e in range(chk_ptr[c], chk_ptr[c + 1]):
            mask[chk_var[e]] |= np.uint32(1 << slot)
        if cnt[slot] == bmax:
            k = _close(slot, members, cnt, mask, chk_ptr, chk_var, chk_order, pos)
            blk_deg[nb] = cur
            blk_cnt[nb] = k
            nb += 1
            pos += k
    blk_c1 = (blk_deg[:nb] & 1).astype(np.uint8)
    blk_deg = blk_deg[:nb] // 2
    blk_cnt = blk_cnt[:nb].copy()
    blk_off = np.zeros(nb + 1, dtype=np.int64)
    blk_off[1:] = np.cumsum(blk_deg * blk_cnt)
    idx = np.empty(chk_var.size, dtype=np.int32)
    first = 0
    for b in range(nb):
        for j in range(blk_cnt[b]):
            cc = chk_order[first + j]
            k = 1 if blk_c1[b] else 0
            for e in range(chk_ptr[cc], chk_ptr[cc + 1]):
                if e == first1[cc]:
                    idx[blk_off[b] + j] = chk_var[e]
                else:
                    idx[blk_off[b] + k * blk_cnt[b] + j] = chk_var[e]
                    k += 1
        first += blk_cnt[b]
    return chk_order, blk_deg, blk_cnt, blk_off, blk_c1, idx


@numba.njit(**_FAST)
def _decode_blocks(
    blk_deg, blk_cnt, blk_off, blk_c1, idx, ssign, llr, max_iter, patience
):  # pragma: no cover - compiled
    """Layered sum-product over the schedule of :func:`_schedule`.

    The checks of a block share no variable, so updating them together is the same as
    updating them one after another; the per-edge arithmetic runs in loops over the
    block's slots that LLVM vectorises (gathers and scatters stay scalar), on buffers the
    size of one block. A check's extrinsic product is its full product divided by the
    edge's own factor, whose magnitude is held at >= 5e-13 so the division is safe (the
    error that causes is below 1e-12 in a message). In a block flagged ``blk_c1`` row 0
    holds degree-one variables: their factor ``t1`` is computed once, and their slot of
    ``r`` keeps the extrinsic product ``x`` (their posterior ``llr + 2 atanh(x)`` is
    needed only for the hard decision: it is negative when ``x < -t1``).

    Stall stop (``patience`` > 0): every ``STALL_EVERY`` iterations all unsatisfied checks
    are counted; decoding gives up when the fewest seen has not fallen by 1 % over the
    last ``patience`` iterations (otherwise the parity check stops at the first
    unsatisfied block).
    """
    n = llr.size
    nb = blk_deg.size
    post = llr.copy()
    r = np.zeros(idx.size, dtype=np.float32)
    t1 = np.ones(idx.size, dtype=np.float32)
    width = _LANES
    for b in range(nb):
        width = max(width, blk_deg[b] * ((blk_cnt[b] + _LANES - 1) // _LANES * _LANES))
    # Block buffers: rows padded to a multiple of _LANES so that the vector loops have no
    # scalar remainder (pad lanes hold stale finite values; their results are dropped).
    q = np.zeros(width, dtype=np.float32)
    t = np.ones(width, dtype=np.float32)
    u = np.zeros(width, dtype=np.float32)
    prod = np.ones(width, dtype=np.float32)
    hard = np.zeros(n, dtype=np.uint8)
    par = np.empty(width, dtype=np.uint8)
    sbit = (ssign < 0).astype(np.uint8)
    iters = 0
    ok = False
    best = idx.size + 1
    least = np.zeros(max_iter // STALL_EVERY + 1, dtype=np.int64)
    chk0 = np.zeros(nb + 1, dtype=np.int64)
    for b in range(nb):
        chk0[b + 1] = chk0[b] + blk_cnt[b]
        if blk_c1[b]:
            for e in range(blk_off[b], blk_off[b] + blk_cnt[b]):
                t1[e] = _tanh_half(llr[idx[e]], _TINY)
    for it in range(1, max_iter + 1):
        iters = it
        for b in range(nb):
            d = blk_deg[b]
            k_ = blk_cnt[b]
            off = blk_off[b]
            c0 = chk0[b]
            k1 = 1 if blk_c1[b] else 0
            w = (k_ + _LANES - 1) // _LANES * _LANES
            for j in range(w):
                prod[j] = np.float32(1.0)
            for j in range(k_):
                prod[j] = ssign[c0 + j]
            if k1:
                for j in range(k_):
                    prod[j] *= t1[off + j]
            for k in range(k1, d):
                for j in range(k_):
                    e = off + k * k_ + j
                    q[k * w + j] = post[idx[e]] - r[e]
            for k in range(k1, d):
                base = k * w
                for j in range(w):
                    tk = _tanh_half(q[base + j], _TINY)
                    t[base + j] = tk
                    prod[j] *= tk
            if k1:
                for j in range(k_):
                    r[off + j] = prod[j] / t1[off + j]
            for k in range(k1, d):
                base = k * w
                for j in range(w):
                    u[base + j] = _two_atanh(prod[j] / t[base + j])
            for k in range(k1, d):
                for j in range(k_):
                    e = off + k * k_ + j
                    r[e] = u[k * w + j]
                    post[idx[e]] = q[k * w + j] + u[k * w + j]
        for v in range(n):
            hard[v] = 1 if post[v] < 0 else 0
        for b in range(nb):
            if blk_c1[b]:
                for e in range(blk_off[b], blk_off[b] + blk_cnt[b]):
                    hard[idx[e]] = 1 if r[e] < -t1[e] else 0
        count = patience > 0 and it % STALL_EVERY == 0
        unsat = 0
        for b in range(nb):
            k_ = blk_cnt[b]
            off = blk_off[b]
            for j in range(k_):
                par[j] = sbit[chk0[b] + j]
            for k in range(blk_deg[b]):
                base = off + k * k_
                for j in range(k_):
                    par[j] ^= hard[idx[base + j]]
            for j in range(k_):
                unsat += par[j]
            if unsat and not count:
                break
        ok = unsat == 0
        if ok:
            break
        if count:
            mark = it // STALL_EVERY
            best = min(best, unsat)
            least[mark] = best
            back = mark - patience // STALL_EVERY
            if back >= 1 and best > np.float64(0.99) * least[back]:
                break
    return hard, ok, iters


def _code_schedule(code: LDPCCode) -> tuple[np.ndarray, ...]:
    """The decoder's block schedule of ``code``, built once and kept on the code.

    Variables are renumbered by decreasing degree (``perm[new] = old``), so that the
    variables the iterations touch (all but the degree-one ones) sit together in memory.
    """
    sched = code._cache.get("schedule")
    if sched is None:
        var_deg = np.diff(code.var_ptr)
        perm = np.argsort(-var_deg, kind="stable")
        inv = np.empty_like(perm)
        inv[perm] = np.arange(perm.size)
        chk_var = inv[code.chk_var].astype(np.int32)
        sched = (perm, *_schedule(code.chk_ptr, chk_var, var_deg[perm], BLOCK_CHECKS))
        code._cache["schedule"] = sched
    return sched


def decode_syndrome(
    code: LDPCCode,
    llr: np.ndarray,
    synd: np.ndarray,
    max_iter: int = 200,
    patience: int = STALL_PATIENCE,
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
    patience
        Give up when the fewest unsatisfied checks seen (counted every ``STALL_EVERY``
        iterations) has not fallen by 1 % in this many iterations; 0 runs to
        ``max_iter``. A frame that fails would otherwise cost the whole cap, several
        times a decoded one.
    """
    if patience < 0 or patience % STALL_EVERY:
        raise ValueError(
            f"decoder patience must be a multiple of {STALL_EVERY} >= 0, got {patience}"
        )
    llr = np.asarray(llr, dtype=np.float32)
    synd = np.asarray(synd, dtype=np.uint8)
    if llr.shape != (code.n,) or synd.shape != (code.m,):
        raise ValueError(
            f"decoder input shapes llr {llr.shape}, syndrome {synd.shape} do not match "
            f"the code (n={code.n}, m={code.m})"
        )
    if not np.all(np.isfinite(llr)):
        raise ValueError("decoder input LLRs contain NaN or infinity")
    perm, chk_order, blk_deg, blk_cnt, blk_off, blk_c1, idx = _code_schedule(code)
    ssign = (1.0 - 2.0 * synd[chk_order]).astype(np.float32)
    hard, ok, it = _decode_blocks(
        blk_deg, blk_cnt, blk_off, blk_c1, idx, ssign, llr[perm], int(max_iter), int(patience)
    )
    word = np.empty_like(hard)
    word[perm] = hard
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
