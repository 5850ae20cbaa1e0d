"""One-time message authentication (Wegman-Carter style) with a never-reused key pool.

Every protocol message is tagged with Poly1305 (RFC 8439) under a fresh 32-byte one-time
key. Poly1305 with a one-time key is an almost-universal hash followed by a one-time pad:
forging a tag succeeds with probability at most ``8 * ceil(L/16) / 2^106`` for an L-byte
message, information-theoretically, as long as no key is used twice. The keys come from a
:class:`MacKeyPool`, bootstrapped from a pre-shared secret and refilled with previously
distilled key; the pool hands each key out once and erases it.

Both parties hold identical pools and consume keys in the same order: key number ``i``
authenticates the ``i``-th message sent in one direction. Each direction has its own pool
so the two streams never compete for keys.
"""

from __future__ import annotations

import hmac
from collections import deque

from cryptography.hazmat.primitives.poly1305 import Poly1305

__all__ = [
    "KEY_BYTES",
    "TAG_BYTES",
    "MacKeyExhaustedError",
    "MacKeyPool",
    "forgery_probability",
    "tag",
    "verify",
]

KEY_BYTES = 32
TAG_BYTES = 16


class MacKeyExhaustedError(RuntimeError):
    """The MAC key pool is empty: no message can be authenticated."""


class MacKeyPool:
    """A FIFO of one-time 32-byte MAC keys; every key is handed out exactly once.

    Parameters
    ----------
    material
        Initial key material (the pre-shared secret), a multiple of 32 bytes.
    """

    def __init__(self, material: bytes = b"") -> None:
        self._keys: deque[bytes] = deque()
        self._issued = 0
        self.add(material)

    def add(self, material: bytes) -> None:
        """Append fresh key material (a multiple of 32 bytes)."""
        if len(material) % KEY_BYTES:
            raise ValueError(f"MAC key material must be a multiple of {KEY_BYTES} bytes")
        for i in range(0, len(material), KEY_BYTES):
            self._keys.append(bytes(material[i : i + KEY_BYTES]))

    def take(self) -> tuple[int, bytes]:
        """Remove and return ``(index, key)``; the index counts keys issued so far."""
        if not self._keys:
            raise MacKeyExhaustedError("MAC key pool exhausted: refill it from distilled key")
        key = self._keys.popleft()
        index = self._issued
        self._issued += 1
        return index, key

    @property
    def available(self) -> int:
        """Keys left."""
        return len(self._keys)

    @property
    def issued(self) -> int:
        """Keys handed out so far."""
        return self._issued


def tag(key: bytes, message: bytes) -> bytes:
    """Poly1305 tag of ``message`` under the one-time ``key``."""
    return Poly1305.generate_tag(key, message)


def verify(key: bytes, message: bytes, mac: bytes) -> bool:
    """Constant-time check of a Poly1305 tag."""
    return hmac.compare_digest(Poly1305.generate_tag(key, message), mac)


def forgery_probability(message_bytes: int) -> float:
    """Bound on the success probability of one forgery against a one-time key."""
    return 8 * max(1, -(-message_bytes // 16)) / 2.0**106
