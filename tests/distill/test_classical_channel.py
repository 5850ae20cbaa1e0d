"""The ZeroMQ classical channel on loopback."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from dsp.distill import Alice, BlockResult, Bob, DistillConfig, bob_run_block, distill_block
from hil.classical_channel import ZmqAliceServer, ZmqBobChannel

PSK = np.random.default_rng(98).bytes(512)
CFG = DistillConfig(block_bits=20_000, beta=0.8)


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    x = rng.standard_normal(16_664)
    return x, x + rng.standard_normal(x.size)


def _one_frame_over_zmq(alice: Alice, handler: Any, timeout_s: float) -> BlockResult:
    """Bob runs a one-frame block against ``handler`` (Alice or a wrapper) on loopback."""
    bob = Bob(PSK, CFG, np.random.default_rng(2))
    x, y = _data()
    alice.load_block(x)
    server = ZmqAliceServer(handler, "tcp://127.0.0.1:*")
    server.start()
    try:
        with ZmqBobChannel(server.endpoint, timeout_s=timeout_s) as chan:
            return bob_run_block(bob, y, 1.0, 0.05, chan, max_frames=1)
    finally:
        server.stop()


def test_block_over_zeromq_loopback():
    alice = Alice(PSK, CFG, np.random.default_rng(1))
    res = _one_frame_over_zmq(alice, alice, timeout_s=60)
    assert res.frames_ok == 1
    assert res.bob_keys and alice.committed[-1][1] == res.bob_keys


class _SlowPaReply:
    """Alice whose first PaAck arrives after Bob's timeout (a lost reply)."""

    def __init__(self, alice: Alice, delay_s: float) -> None:
        self.alice, self.delay_s, self.slowed = alice, delay_s, False

    def handle(self, data: bytes) -> bytes:
        reply = self.alice.handle(data)
        if len(self.alice.committed) == 1 and not self.slowed:
            self.slowed = True
            time.sleep(self.delay_s)
        return reply


def test_lost_pa_ack_over_zeromq_is_retransmitted():
    # Compile the decoder and build the code first (a fresh clone has no numba cache), so
    # that only the PaAck is slower than Bob's timeout.
    x, y = _data()
    warm = distill_block(
        Alice(PSK, CFG, np.random.default_rng(1)),
        Bob(PSK, CFG, np.random.default_rng(2)),
        x,
        y,
        1.0,
        0.05,
        max_frames=1,
    )
    assert warm.frames_ok == 1
    alice = Alice(PSK, CFG, np.random.default_rng(1))
    res = _one_frame_over_zmq(alice, _SlowPaReply(alice, 5.0), timeout_s=4.0)
    assert res.frames_ok == 1 and alice.retransmissions == 1
    assert res.bob_keys and alice.committed == [(res.block_id, res.bob_keys)]
