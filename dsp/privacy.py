"""Privacy amplification by 2-universal hashing, exact.

Two families, both with a fresh uniform seed per block:

* ``"mas"`` (default): multiply-add-shift over the integers (Dietzfelbinger, STACS 1996;
  Thorup, "High speed hashing for integers and strings", arXiv:1504.06804, sec. 3.3).
  For an ``n``-bit input ``x`` and ``a, b`` uniform below ``2^(n+l)``,
  ``h(x) = ((a x + b) mod 2^(n+l)) >> n`` is strongly universal onto ``l`` bits, so its
  collision probability is exactly ``2^-l`` as the leftover hash lemma needs. Computed
  with GMP big integers (``gmpy2``): the bit arrays are packed with ``np.packbits`` and
  read with ``mpz.from_bytes``, one exact multiplication, and the ``l`` output bits are
  unpacked again.
* ``"toeplitz"``: ``l x n`` Toeplitz matrix over GF(2) defined by ``n + l - 1`` seed
  bits (Krawczyk, CRYPTO 1994); ``h(x) = T x`` is 2-universal. Computed with a float64
  real FFT, one bit per element: the worst-case rounding bound of the convolution,
  ``||u||_2 ||v||_2 * 3 log2(N) * 4 eps`` (Brent, Percival and Zimmermann, "Error bounds
  on complex floating-point multiplication with an FFT", 2007), is ~1e-6 at 1e8 bits, and
  every run also checks that all convolution values are within 0.25 of an integer and
  raises otherwise, so a rounding error can never pass silently. About 10 times slower
  than ``mas``; kept for peers that use the Toeplitz family.
"""

from __future__ import annotations

import math

import gmpy2
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


def _to_mpz(bits: np.ndarray) -> gmpy2.mpz:
    """The integer whose bit ``i`` is ``bits[i]``."""
    return gmpy2.mpz.from_bytes(np.packbits(bits, bitorder="little").tobytes(), "little")


def _from_mpz(value: gmpy2.mpz, nbits: int) -> np.ndarray:
    """The ``nbits`` low bits of ``value >= 0``, least significant first."""
    raw = value.to_bytes(-(-nbits // 8), "little")
    return np.unpackbits(np.frombuffer(raw, dtype=np.uint8), bitorder="little")[:nbits]


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
    a, b = _to_mpz(sb[:w]), _to_mpz(sb[w:])
    h = gmpy2.f_mod_2exp(a * _to_mpz(xb) + b, w) >> n
    return _from_mpz(h, l)


def hash_bits(x: np.ndarray, seed: np.ndarray, l: int, method: str = "mas") -> np.ndarray:
    """Apply the chosen family (see :data:`PA_METHODS`)."""
    if method == "mas":
        return mas_hash(x, seed, l)
    if method == "toeplitz":
        return toeplitz_hash(x, seed, l)
    raise ValueError(f"unknown privacy amplification method {method!r}; use one of {PA_METHODS}")
