"""Error verification: a polynomial universal hash over the prime field GF(2^127 - 1).

After decoding, Bob sends a fresh random hash key ``k`` and the tag of his reconciled
word; Alice compares it with the tag of her decoded word. The word is cut into 126-bit
chunks ``m_1 .. m_L`` (all below the prime) followed by its bit length, and

    tag = sum_i m_i k^(L+1-i) + len * k^0  (mod p),  p = 2^127 - 1.

For two different words of at most ``L`` chunks the tags collide for at most ``L`` values
of ``k`` (roots of a nonzero polynomial of degree <= L), so with ``k`` uniform the failure
probability (an undetected error) is at most ``L / p`` (about ``1e-35`` for a 1e6-bit
word). The tag is public: its :data:`TAG_BITS` bits are counted as leaked key material.
The key must be drawn after the words are fixed (Bob draws it after decoding ends), which
is what makes the bound hold; it need not be secret.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "PRIME",
    "TAG_BITS",
    "failure_probability",
    "poly_hash",
    "random_hash_key",
]

PRIME = (1 << 127) - 1
CHUNK_BITS = 126
TAG_BITS = 127


def _chunks(bits: np.ndarray) -> list[int]:
    b = np.asarray(bits, dtype=np.uint8).ravel()
    if b.size and int(b.max()) > 1:
        raise ValueError("verification input must be a 0/1 bit array")
    nchunk = max(1, -(-b.size // CHUNK_BITS))
    flat = np.zeros(nchunk * CHUNK_BITS, dtype=np.uint8)
    flat[: b.size] = b
    padded = np.zeros((nchunk, 128), dtype=np.uint8)
    padded[:, 128 - CHUNK_BITS :] = flat.reshape(nchunk, CHUNK_BITS)
    raw = np.packbits(padded, axis=1)
    return [int.from_bytes(row.tobytes(), "big") for row in raw]


def poly_hash(bits: np.ndarray, key: int) -> int:
    """Tag of a bit array under hash key ``key`` (an integer in ``[0, PRIME)``)."""
    if not 0 <= key < PRIME:
        raise ValueError("verification hash key out of range [0, 2^127 - 1)")
    acc = 0
    for m in _chunks(bits):
        acc = (acc * key + m) % PRIME
    return (acc * key + int(np.asarray(bits).size)) % PRIME


def random_hash_key(rng: np.random.Generator | None = None) -> int:
    """A uniform key in ``[0, PRIME)``: from ``rng`` (tests) or the OS CSPRNG."""
    if rng is None:
        import secrets

        return secrets.randbelow(PRIME)
    while True:
        k = int.from_bytes(rng.bytes(16), "big") >> 1
        if k < PRIME:
            return k


def failure_probability(nbits: int) -> float:
    """Upper bound on the probability that two different ``nbits`` words pass."""
    return (max(1, -(-nbits // CHUNK_BITS)) + 1) / PRIME
