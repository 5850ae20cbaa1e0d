"""Verification hash, privacy amplification, one-time MACs and message encoding."""

from __future__ import annotations

import numpy as np
import pytest

from dsp import mac
from dsp.distill_messages import (
    Ack,
    FrameStart,
    MessageError,
    PaStart,
    Reveal,
    decode_payload,
    encode_payload,
    split_frame,
)
from dsp.privacy import hash_bits, mas_hash, output_length, seed_bits, toeplitz_hash
from dsp.verification import PRIME, failure_probability, poly_hash, random_hash_key


def _toint(bits: np.ndarray) -> int:
    return int("".join(map(str, bits[::-1].tolist())), 2) if bits.size else 0


@pytest.mark.parametrize("n,l", [(1, 1), (8, 3), (127, 64), (1000, 513), (4099, 1500)])
def test_pa_equals_direct_computation(n, l):
    rng = np.random.default_rng(n)
    x = rng.integers(0, 2, n).astype(np.uint8)
    seed = rng.integers(0, 2, seed_bits(n, l, "toeplitz")).astype(np.uint8)
    t = np.array([[seed[i - j + n - 1] for j in range(n)] for i in range(l)], dtype=np.int64)
    assert np.array_equal(toeplitz_hash(x, seed, l), (t @ x) % 2)
    seed = rng.integers(0, 2, seed_bits(n, l, "mas")).astype(np.uint8)
    a, b = _toint(seed[: n + l]), _toint(seed[n + l :])
    direct = ((a * _toint(x) + b) % (1 << (n + l))) >> n
    assert _toint(mas_hash(x, seed, l)) == direct


def test_pa_rejects_bad_input():
    with pytest.raises(ValueError):
        hash_bits(np.zeros(10, np.uint8), np.zeros(3, np.uint8), 4, "mas")
    with pytest.raises(ValueError):
        hash_bits(np.zeros(10, np.uint8), np.zeros(13, np.uint8), 4, "sha")


def test_output_length_accounting():
    # 1e5 reconciled bits, leak 9e4, 2 tags, chi 0.001 on 1e5 symbols, eps 2^-50.
    out = output_length(100_000, 100_000, 0.001, 90_000, 254, 2.0**-50)
    assert out == 100_000 - 90_000 - 254 - 100 - 100
    assert output_length(1000, 1000, 0.9, 900, 127) == 0


def test_verification_hash():
    rng = np.random.default_rng(5)
    w = rng.integers(0, 2, 10_000).astype(np.uint8)
    k = random_hash_key(rng)
    assert 0 <= poly_hash(w, k) < PRIME
    assert poly_hash(w, k) == poly_hash(w.copy(), k)
    w2 = w.copy()
    w2[1234] ^= 1
    assert poly_hash(w2, k) != poly_hash(w, k)
    assert poly_hash(w[:-1], k) != poly_hash(np.append(w[:-1], 0), k)  # length is hashed
    assert failure_probability(10**6) < 1e-33


def test_mac_pool_never_reuses_and_exhausts():
    pool = mac.MacKeyPool(bytes(range(64)))
    a, b = pool.take(), pool.take()
    assert a[0] == 0 and b[0] == 1 and a[1] != b[1]
    with pytest.raises(mac.MacKeyExhaustedError):
        pool.take()
    with pytest.raises(ValueError):
        pool.add(b"short")
    key = bytes(32)
    t = mac.tag(b"\x01" * 32, b"hello")
    assert mac.verify(b"\x01" * 32, b"hello", t)
    assert not mac.verify(key, b"hello", t)


def test_messages_round_trip_and_reject_garbage():
    rng = np.random.default_rng(6)
    fs = FrameStart(
        frame_id=3,
        offset=800,
        code_index=1,
        code_digest=b"\x01\x02\x03\x04\x05\x06\x07\x08",
        snr=0.1,
        beta=0.9,
        hash_key=random_hash_key(rng),
        hash_tag=12345,
        public=rng.standard_normal((10, 8)).astype(np.float32),
        syndrome=rng.integers(0, 2, 77).astype(np.uint8),
    )
    got = decode_payload(fs.TYPE, encode_payload(fs))
    assert isinstance(got, FrameStart) and got.frame_id == 3 and got.hash_key == fs.hash_key
    assert got.code_digest == fs.code_digest
    assert np.array_equal(got.public, fs.public) and np.array_equal(got.syndrome, fs.syndrome)
    pa = PaStart(b"\x07" * 16, (1, 2, 5), 99, "mas", np.ones(33, np.uint8), 7)
    got = decode_payload(pa.TYPE, encode_payload(pa))
    assert got == PaStart(b"\x07" * 16, (1, 2, 5), 99, "mas", got.seed, 7)
    assert np.array_equal(got.seed, pa.seed)
    assert decode_payload(Ack.TYPE, encode_payload(Ack(1, 0, 5))) == Ack(1, 0, 5)
    rv = Reveal(frame_id=4, values=rng.integers(0, 2, 13).astype(np.uint8))
    got = decode_payload(rv.TYPE, encode_payload(rv))
    assert isinstance(got, Reveal) and got.frame_id == 4 and np.array_equal(got.values, rv.values)
    with pytest.raises(MessageError):
        decode_payload(rv.TYPE, encode_payload(rv)[:-1])
    for bad in (b"", b"CVD1" + b"\0" * 40, b"XXXX" + b"\0" * 40):
        with pytest.raises(MessageError):
            split_frame(bad)
    with pytest.raises(MessageError, match="protocol version"):  # a peer of the old format
        split_frame(b"CVD1" + b"\0" * 40)
    with pytest.raises(MessageError):
        decode_payload(fs.TYPE, encode_payload(fs)[:-3])
    with pytest.raises(MessageError):
        decode_payload(99, b"")


@pytest.mark.parametrize("n,l", [(300_001, 40_003), (1_000_000, 999_993)])
def test_mas_exact_at_larger_size_against_big_integers(n, l):
    # GMP (FFT multiplication at these sizes) against Python's own integers, sizes not
    # multiples of 8 so that the packing edges are exercised.
    rng = np.random.default_rng(n)
    x = rng.integers(0, 2, n).astype(np.uint8)
    seed = rng.integers(0, 2, seed_bits(n, l, "mas")).astype(np.uint8)

    def big(bits: np.ndarray) -> int:
        return int.from_bytes(np.packbits(bits[::-1]).tobytes(), "big") >> (-bits.size % 8)

    a, b = big(seed[: n + l]), big(seed[n + l :])
    direct = ((a * big(x) + b) % (1 << (n + l))) >> n
    assert big(mas_hash(x, seed, l)) == direct
