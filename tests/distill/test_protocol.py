"""Two-party distillation: identical keys, discarded frames, tampering, MAC key use."""

from __future__ import annotations

import numpy as np
import pytest

import dsp.distill as distill_mod
from dsp import mac
from dsp.distill import Alice, Bob, DistillConfig, InProcessChannel, distill_block, key_id

PSK = np.random.default_rng(99).bytes(1024)
CFG = DistillConfig(block_bits=20_000, beta=0.8)
SNR = 1.0


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n) * 2.0
    y = 0.3 * x + rng.standard_normal(n) * 0.6 / np.sqrt(SNR)  # SNR = 0.36 / 0.36
    return x, y


def _parties(cfg: DistillConfig = CFG) -> tuple[Alice, Bob]:
    return Alice(PSK, cfg, np.random.default_rng(11)), Bob(PSK, cfg, np.random.default_rng(12))


def test_identical_keys_with_agreed_ids_over_two_blocks():
    alice, bob = _parties()
    start = bob.party.send_pool.available
    for block in range(2):
        x, y = _data(3 * 16_664, block)
        res = distill_block(alice, bob, x, y, SNR, 0.05, max_frames=2)
        assert res.frames_ok == 2 and res.fer == 0.0
        assert res.bob_keys and res.alice_keys == res.bob_keys
        assert all(len(k) == 32 for _, k in res.bob_keys)
        assert res.bob_keys[3][0] == key_id(res.block_id, 3)
        acct = res.accounting
        assert acct["pa_output_bits"] > 0 and acct["leak_ec_bits"] == 2 * 10_000
        assert abs(res.beta - 0.8) < 1e-3
        # each block spends frames + 1 keys per direction and refills frames + 2
        assert bob.party.send_pool.available == start + block + 1
    # the pools stay in step: what Bob sends Alice can open, and vice versa
    assert bob.party.send_pool.available == alice.party.recv_pool.available
    assert bob.party.recv_pool.available == alice.party.send_pool.available


def test_last_frame_shortens_to_fit_the_block_if_that_costs_little():
    # A frame needs 16,664 symbols. 16 short of two frames: the second is shortened by 16
    # bits (beta 0.8 -> 0.799) and both decode; 1,664 short it would lose 0.13: one frame.
    for short, frames in ((16, 2), (1_664, 1)):
        alice, bob = _parties()
        x, y = _data(2 * 16_664 - short, 6)  # seed 6: every frame decodes
        res = distill_block(alice, bob, x, y, SNR, 0.05)
        assert len(res.frames) == frames and res.frames_ok == frames
        assert res.bob_keys and res.alice_keys == res.bob_keys
        last = res.frames[-1]
        if frames == 2:
            assert last.n_data == 16_664 - short and last.shortened >= short
            assert 0.8 - distill_mod.LAST_FRAME_BETA_LOSS < last.beta < 0.8
        else:
            assert last.n_data == 16_664 and abs(last.beta - 0.8) < 1e-3


def test_failed_frames_rescued_by_disclosed_bits_and_charged():
    # 2e4-bit frames at beta 0.88 often fail; Bob then discloses data bits in steps of
    # 2, 4 and 8 % of beta. The rescued frames carry the disclosed bits as leak and the
    # lower beta, and both keys still agree. Without steps the same data lose them.
    psk = np.random.default_rng(98).bytes(8192)
    steps = (0.02, 0.04, 0.08)
    x, y = _data(12 * 17_000, 3)
    results = {}
    for reveal in (steps, ()):
        cfg = DistillConfig(block_bits=20_000, beta=0.88, reveal_steps=reveal)
        alice = Alice(psk, cfg, np.random.default_rng(11))
        bob = Bob(psk, cfg, np.random.default_rng(12))
        res = distill_block(alice, bob, x, y, SNR, 0.05)
        assert res.bob_keys and res.alice_keys == res.bob_keys
        results[reveal] = res
    res = results[steps]
    rescued = [f for f in res.frames if f.status == "ok" and f.attempts > 1]
    assert len(rescued) >= 3
    c = 0.5 * np.log2(1 + SNR)
    for f in rescued:
        assert f.revealed == int(np.ceil(steps[f.attempts - 2] * c * f.n_data))
        assert f.leak_ec_bits == 10_000 + f.revealed
        assert f.beta == pytest.approx(0.88 - f.revealed / (f.n_data * c), abs=1e-3)
    ok = [f for f in res.frames if f.status == "ok"]
    assert res.accounting["leak_ec_bits"] == sum(f.leak_ec_bits for f in ok)
    plain = results[()]
    assert all(f.attempts == 1 and f.revealed == 0 for f in plain.frames)
    assert plain.frames_ok < res.frames_ok


def test_disclosure_for_a_frame_that_did_not_fail_is_rejected():
    alice, bob = _parties()
    x, _y = _data(16_664, 2)
    alice.load_block(x)
    msg = distill_mod.Reveal(frame_id=0, values=np.ones(16, dtype=np.uint8))
    ack = bob.party._open(alice.handle(bob.party._seal(msg)))
    assert ack.status == distill_mod.AckStatus.REJECTED


def test_failed_decoding_discarded_by_both_and_counted():
    alice, bob = _parties(DistillConfig(block_bits=20_000, beta=1.1))
    x, y = _data(20_000, 3)
    res = distill_block(alice, bob, x, y, SNR, 0.05, max_frames=1)
    assert [f.status for f in res.frames] == ["decode_failed"]
    assert res.frames[0].attempts == 1 + len(CFG.reveal_steps)  # disclosures did not help
    assert res.fer == 1.0 and res.bob_keys == [] and res.alice_keys == []


def test_hosts_with_different_matrices_stop_with_a_clear_error():
    """Alice's host builds another matrix for the code (as another numpy might): she
    answers the first frame with CODE_MISMATCH without decoding, and Bob stops."""
    import dataclasses

    alice, bob = _parties()
    alice.party.code_builder = lambda spec: dataclasses.replace(spec, seed=spec.seed + 1).build()
    x, y = _data(16_664, 5)
    with pytest.raises(distill_mod.CodeMismatchError, match="same versions") as err:
        distill_block(alice, bob, x, y, SNR, 0.05)
    assert "frame 0: Alice's parity-check matrix for code" in str(err.value)
    assert alice.decode_seconds == 0.0 and alice.committed == []
    code = bob.party.code(0)
    assert len(code.digest) == 8 and code.digest == bob.party.code(0).digest
    assert alice.party.code(0).digest != code.digest


def test_failed_verification_discarded(monkeypatch):
    calls = {"n": 0}
    real = distill_mod.poly_hash

    def lying_hash(bits, key):  # Bob's (first) call is honest, Alice's is off by one
        calls["n"] += 1
        return real(bits, key) + (calls["n"] % 2 == 0)

    monkeypatch.setattr(distill_mod, "poly_hash", lying_hash)
    alice, bob = _parties()
    x, y = _data(16_664, 4)
    res = distill_block(alice, bob, x, y, SNR, 0.05, max_frames=1)
    assert [f.status for f in res.frames] == ["verify_failed"]
    assert res.bob_keys == [] and res.alice_keys == []


def _run_with(tamper) -> tuple[distill_mod.BlockResult, Alice, Bob]:
    alice, bob = _parties()
    # Data whose 3 frames all decode untampered (FER at 2e4 bits, beta 0.8 is ~5 %; the
    # test is about the protocol, not about the codes).
    x, y = _data(3 * 16_664, 6)
    alice.load_block(x)
    chan = InProcessChannel(alice, tamper=tamper)
    res = distill_block(alice, bob, x, y, SNR, 0.05, channel=chan, max_frames=3)
    return res, alice, bob


@pytest.mark.parametrize("attack", ["flip", "wrong_tag", "replay", "flip_reply"])
def test_tampered_message_rejected_and_run_continues(attack):
    seen: list[bytes] = []

    def tamper(direction: str, i: int, data: bytes) -> bytes:
        if direction == "ba":
            seen.append(data)
        if attack == "flip" and direction == "ba" and i == 0:
            b = bytearray(data)
            b[len(b) // 2] ^= 0x10
            return bytes(b)
        if attack == "wrong_tag" and direction == "ba" and i == 0:
            return data[:-16] + bytes(16)
        if attack == "replay" and direction == "ba" and i == 1:
            return seen[0]
        if attack == "flip_reply" and direction == "ab" and i == 0:
            b = bytearray(data)
            b[20] ^= 0x01
            return bytes(b)
        return data

    res, alice, bob = _run_with(tamper)
    bad = 1 if attack == "replay" else 0
    statuses = [f.status for f in res.frames]
    assert statuses[bad] == "rejected"
    assert statuses.count("ok") == 2  # the other frames went through
    assert res.bob_keys and res.alice_keys == res.bob_keys
    assert alice.party.rejected + bob.party.rejected >= 1


@pytest.mark.parametrize("lost", [1, 3])  # Alice's Ack of frame 1, her PaAck
def test_lost_reply_is_retransmitted_and_both_commit(lost):
    def drop(direction: str, i: int, data: bytes) -> bytes | None:
        return None if direction == "ab" and i == lost else data

    res, alice, bob = _run_with(drop)
    assert [f.status for f in res.frames] == ["ok", "ok", "ok"]
    assert alice.retransmissions == 1
    assert res.bob_keys and res.alice_keys == res.bob_keys
    # Alice committed once and the MAC pools are still in step: the next block runs.
    assert len(alice.committed) == 1
    x, y = _data(16_664, 7)
    nxt = distill_block(alice, bob, x, y, SNR, 0.05, max_frames=1)
    assert nxt.bob_keys and nxt.alice_keys == nxt.bob_keys


def test_without_retransmission_a_lost_pa_ack_leaves_bob_without_the_block():
    alice, bob = _parties()
    x, y = _data(16_664, 6)
    alice.load_block(x)
    chan = InProcessChannel(alice, tamper=lambda d, i, b: None if (d, i) == ("ab", 1) else b)
    res = distill_mod.bob_run_block(bob, y, SNR, 0.05, chan, max_frames=1, retries=0)
    assert res.bob_keys == [] and alice.committed  # the case retransmission exists for


def test_mac_keys_never_reused(monkeypatch):
    used: list[bytes] = []
    real_tag = mac.tag

    def spy(key: bytes, message: bytes) -> bytes:
        used.append(key)
        return real_tag(key, message)

    monkeypatch.setattr(mac, "tag", spy)
    alice, bob = _parties()
    for block in range(2):
        x, y = _data(2 * 16_664, 10 + block)
        distill_block(alice, bob, x, y, SNR, 0.05, max_frames=2)
    assert len(used) == 2 * 2 * 3  # 2 blocks x 2 directions x (2 frames + PA)
    assert len(set(used)) == len(used)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="pre-shared secret"):
        Alice(b"short")
    alice, bob = _parties()
    with pytest.raises(ValueError, match="symbols"):
        distill_block(alice, bob, np.zeros(10), np.zeros(11), SNR, 0.0)
    assert alice.handle(b"garbage")  # an authenticated rejection, not an exception
    with pytest.raises(mac.MacKeyExhaustedError):
        a2 = Alice(bytes(64))
        for i in range(3):  # distinct: an identical request is a retransmission
            a2.handle(b"garbage %d" % i)
