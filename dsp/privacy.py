"""Privacy amplification by 2-universal hashing, exact, in FFT time.

Two families, both with a fresh uniform seed per block:

* ``"mas"`` (default): multiply-add-shift over the integers (Dietzfelbinger, STACS 1996;
  Thorup, "High speed hashing for integers and strings", arXiv:1504.06804, sec. 3.3).
  For an ``n``-bit input ``x`` and ``a, b`` uniform below ``2^(n+l)``,
  ``h(x) = ((a x + b) mod 2^(n+l)) >> n`` is strongly universal onto ``l`` bits, so its
  collision probability is exactly ``2^-l`` as the leftover hash lemma needs.
* ``"toeplitz"``: ``l x n`` Toeplitz matrix over GF(2) defined by ``n + l - 1`` seed
  bits (Krawczyk, CRYPTO 1994); ``h(x) = T x`` is 2-universal.

Both products are computed exactly with a float64 real FFT. The integer product packs
``s`` bits per limb, with ``s`` chosen so that the worst-case rounding error bound of
the FFT convolution, ``||u||_2 ||v||_2 * 3 log2(N) * 4 eps`` (Brent, Percival and
Zimmermann, "Error bounds on complex floating-point multiplication with an FFT", 2007),
stays below 0.2; the Toeplitz product uses one bit per element (bound ~1e-6 at 1e8
bits). Every run also checks that all convolution values are within 0.25 of an integer
and raises otherwise, so a rounding error can never pass silently.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import scipy.fft as sfft

__all__ = [
    "PA_METHODS",
    "hash_bits",
    "mas_hash",
    "output_length",
    "seed_bits",
    "toeplitz_hash",
]

PA_METHODS = ("mas", "toeplitz")
_EPS = 2.0**-53
_ROUND_TOL = 0.25


def seed_bits(n: int, l: int, method: str = "mas") -> int:
    """Number of uniform seed bits the family needs for ``n`` input and ``l`` output bits."""
    if method == "mas":
        return 2 * (n + l)
    if method == "toeplitz":
        return n + l - 1
    raise ValueError(f"unknown privacy amplification method {method!r}; use one of {PA_METHODS}")


def output_length(
    reconciled_bits: int,
    n_symbols: int,
    eve_bits_per_symbol: float,
    leak_ec_bits: float,
    leak_ver_bits: float,
    eps_pa: float = 1e-10,
) -> int:
    """Secret bits extractable from one reconciled block (leftover hash lemma).

    ``l = floor(reconciled_bits - leak_ec - leak_ver - n_symbols * chi - 2 log2(1/eps_pa))``
    where ``reconciled_bits`` is the entropy of Bob's reconciled string (its length: his
    bits are uniform), ``chi`` Eve's information per symbol (finite-size Holevo bound
    with estimation penalties, from the key-rate module) and ``eps_pa`` the privacy
    amplification failure probability. Never negative.
    """
    if not 0.0 < eps_pa < 1.0:
        raise ValueError("eps_pa must be in (0, 1)")
    val = (
        reconciled_bits
        - leak_ec_bits
        - leak_ver_bits
        - n_symbols * eve_bits_per_symbol
        - 2.0 * math.log2(1.0 / eps_pa)
    )
    return max(0, math.floor(val))


def _as_bits(x: np.ndarray, name: str) -> np.ndarray:
    b = np.ascontiguousarray(x, dtype=np.uint8).ravel()
    if b.size and int(b.max()) > 1:
        raise ValueError(f"{name} must be a 0/1 bit array")
    return b


@numba.njit(cache=True)
def _round_parity(c, tol):  # pragma: no cover - compiled
    out = np.empty(c.size, dtype=np.uint8)
    worst = 0.0
    for i in range(c.size):
        r = np.rint(c[i])
        err = abs(c[i] - r)
        if err > worst:
            worst = err
        out[i] = np.int64(r) & 1
    return out, worst <= tol


def toeplitz_hash(x: np.ndarray, seed: np.ndarray, l: int) -> np.ndarray:
    """``T x`` over GF(2), ``T[i, j] = seed[i - j + n - 1]`` (``l x n`` Toeplitz).

    Parameters
    ----------
    x
        Input bits, length ``n``.
    seed
        ``n + l - 1`` uniform bits.
    l
        Output length.
    """
    xb = _as_bits(x, "privacy amplification input")
    sb = _as_bits(seed, "Toeplitz seed")
    n = xb.size
    if l <= 0:
        return np.zeros(0, dtype=np.uint8)
    if sb.size != n + l - 1:
        raise ValueError(f"Toeplitz seed has {sb.size} bits, needs n + l - 1 = {n + l - 1}")
    size = sfft.next_fast_len(n + l - 1, real=True)
    fx = sfft.rfft(xb.astype(np.float64), size)
    fs = sfft.rfft(sb.astype(np.float64), size)
    fx *= fs
    conv = sfft.irfft(fx, size)[n - 1 : n - 1 + l]
    out, exact = _round_parity(conv, _ROUND_TOL)
    if not exact:
        raise ArithmeticError("FFT convolution not exact (rounding error above 0.25)")
    return out


def _limb_bits(length_bits: int) -> int:
    for s in range(20, 0, -1):
        limbs = -(-length_bits // s)
        nfft = 2 * limbs + 2
        bound = (2.0**s - 1) ** 2 * limbs * 3.0 * math.log2(max(nfft, 2)) * 4.0 * _EPS
        if bound < 0.2:
            return s
    return 1


@numba.njit(cache=True)
def _to_limbs(bits, s, nlimbs):  # pragma: no cover - compiled
    out = np.zeros(nlimbs, dtype=np.float64)
    for i in range(nlimbs):
        v = 0
        base = i * s
        top = min(s, bits.size - base)
        for k in range(top):
            v |= np.int64(bits[base + k]) << k
        out[i] = v
    return out


@numba.njit(cache=True)
def _round_carry_bits(c, add, s, lo, hi, tol):  # pragma: no cover - compiled
    """Round the convolution, add ``add``, propagate carries, return bits ``lo:hi``."""
    out = np.zeros(hi - lo, dtype=np.uint8)
    mask = (np.int64(1) << s) - 1
    carry = np.int64(0)
    worst = 0.0
    for i in range(c.size):
        r = np.rint(c[i])
        err = abs(c[i] - r)
        if err > worst:
            worst = err
        v = np.int64(r) + np.int64(add[i]) + carry
        limb = v & mask
        carry = v >> s
        base = i * s
        for k in range(s):
            pos = base + k
            if lo <= pos < hi:
                out[pos - lo] = (limb >> k) & 1
    return out, worst <= tol


def mas_hash(x: np.ndarray, seed: np.ndarray, l: int) -> np.ndarray:
    """Multiply-add-shift hash ``((a x + b) mod 2^(n+l)) >> n`` as ``l`` bits.

    Parameters
    ----------
    x
        Input bits, length ``n``, least significant first.
    seed
        ``2 (n + l)`` uniform bits: ``a`` then ``b``, each ``n + l`` bits, least
        significant first.
    l
        Output length. The output is least significant bit first.
    """
    xb = _as_bits(x, "privacy amplification input")
    sb = _as_bits(seed, "multiply-add-shift seed")
    n = xb.size
    if l <= 0:
        return np.zeros(0, dtype=np.uint8)
    w = n + l
    if sb.size != 2 * w:
        raise ValueError(f"multiply-add-shift seed has {sb.size} bits, needs 2(n + l) = {2 * w}")
    s = _limb_bits(w)
    la = -(-w // s)
    lx = -(-n // s)
    a = _to_limbs(sb[:w], s, la)
    b = _to_limbs(sb[w:], s, la)
    xl = _to_limbs(xb, s, lx)
    size = sfft.next_fast_len(la + lx - 1, real=True)
    fa = sfft.rfft(a, size)
    fa *= sfft.rfft(xl, size)
    conv = sfft.irfft(fa, size)[:la]
    bits, exact = _round_carry_bits(conv, b, s, n, w, _ROUND_TOL)
    if not exact:
        raise ArithmeticError("FFT convolution not exact (rounding error above 0.25)")
    return bits


def hash_bits(x: np.ndarray, seed: np.ndarray, l: int, method: str = "mas") -> np.ndarray:
    """Apply the chosen family (see :data:`PA_METHODS`)."""
    if method == "mas":
        return mas_hash(x, seed, l)
    if method == "toeplitz":
        return toeplitz_hash(x, seed, l)
    raise ValueError(f"unknown privacy amplification method {method!r}; use one of {PA_METHODS}")
