"""Authenticated two-party key distillation: Alice and Bob as separate objects.

The parties only exchange bytes (:mod:`dsp.distill_messages`), each message tagged with a
one-time Poly1305 key (:mod:`dsp.mac`) taken from a pool bootstrapped from a pre-shared
secret and refilled from the distilled key of every block. Bob drives (reverse
reconciliation: his data define the key):

1. per frame, Bob -> Alice ``FrameStart`` (octonions, syndrome, verification hash key and
   tag); Alice decodes, verifies and answers ``Ack`` (ok / decode failed / verify failed /
   rejected). A frame counts only if Bob receives an authentic ``Ack`` ok; otherwise
   both discard it and count it.
2. per block, Bob -> Alice ``PaStart`` (block id, accepted frames, output length, fresh
   seed); both hash the concatenated reconciled strings, refill their MAC pools from the
   head of the result, and cut the rest into fixed-size keys whose UUIDs derive from the
   block id and the key index. Alice answers ``PaAck``.

A message that fails authentication, is replayed or malformed is rejected; the run goes on
with the next frame. A lost reply is retransmitted as the same bytes (:func:`exchange`),
and Alice answers the retransmission with her cached reply, so both sides commit a
block or neither does unless every retransmission is lost too. :func:`distill_block`
runs a block over a channel object (in-process by default; :mod:`hil.classical_channel`
carries the same bytes over ZeroMQ).
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from dsp import mac
from dsp.distill_messages import (
    Ack,
    AckStatus,
    FrameStart,
    Message,
    MessageError,
    PaAck,
    PaStart,
    Reveal,
    decode_payload,
    encode_payload,
    frame_header,
    split_frame,
)
from dsp.ldpc import LDPCCode
from dsp.privacy import hash_bits, output_length, seed_bits
from dsp.reconciliation import (
    CodeSpec,
    FramePlan,
    alice_decode,
    bob_encode,
    capacity,
    code_family,
    family_beta,
    plan_frame,
    random_bits,
    reveal_count,
    reveal_order,
    select_code,
)
from dsp.verification import TAG_BITS, poly_hash, random_hash_key

__all__ = [
    "KEY_NAMESPACE",
    "Alice",
    "BlockResult",
    "Bob",
    "CodeMismatchError",
    "DistillConfig",
    "FrameStats",
    "InProcessChannel",
    "bob_run_block",
    "distill_block",
    "exchange",
    "key_id",
    "reconcile_frame",
]

KEY_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:cvqkd-hil:distilled-key")
_SEQ_WINDOW = 64
_NO_FRAME = (1 << 64) - 1


def key_id(block_id: bytes, index: int) -> uuid.UUID:
    """The UUID of key ``index`` of block ``block_id`` (identical on both sides)."""
    return uuid.uuid5(KEY_NAMESPACE, f"{block_id.hex()}:{index}")


LAST_FRAME_BETA_LOSS = 0.02
"""Efficiency a block's last frame may lose by shortening to fit the symbols left.
With 1e6-bit frames a runner block of 5.96e6 real symbols held 5 frames and 0.96e6
unused symbols whenever a frame needed 0.2 % more than a sixth of the block; at rate
0.18 each 0.1 % of shortening costs 0.004 of beta."""


@dataclass(frozen=True)
class DistillConfig:
    """Distillation parameters both parties must share.

    Attributes
    ----------
    block_bits
        LDPC mother-code length (1e5 .. 1e6 bits).
    beta
        Target reconciliation efficiency; ``None`` uses the chosen code's
        :func:`dsp.reconciliation.operating_beta` at the frame's SNR.
    pa_method
        ``"mas"`` or ``"toeplitz"`` (see :mod:`dsp.privacy`).
    eps_pa
        Privacy amplification failure probability.
    key_bits
        Size of each delivered key.
    reveal_steps
        After a failed decoding Bob may disclose data bits of the frame for another
        attempt: each step is the cumulative efficiency given up (``0.02`` discloses
        ``0.02 C(snr) N`` bits, counted as leaked). ``()``: a failed frame is dropped.
    beta_backoff
        Subtracted from the target at every SNR (``beta`` or the family's curve): a
        runner that sees frames fail in a row asks for less without fixing one beta for
        the frames of other SNRs that follow.
    """

    block_bits: int = 100_000
    beta: float | None = None
    pa_method: str = "mas"
    eps_pa: float = 1e-10
    key_bits: int = 256
    reveal_steps: tuple[float, ...] = (0.02, 0.04)
    beta_backoff: float = 0.0


class CodeMismatchError(RuntimeError):
    """Alice holds another parity-check matrix than Bob for the same code index."""


def _split_psk(psk: bytes) -> tuple[bytes, bytes]:
    half = len(psk) // 2 // mac.KEY_BYTES * mac.KEY_BYTES
    if half == 0:
        raise ValueError(
            f"pre-shared secret must hold at least {2 * mac.KEY_BYTES} bytes (two MAC keys)"
        )
    return psk[:half], psk[half : 2 * half]


class _Party:
    """Shared machinery: MAC pools, sealing/opening messages, codes, key cutting."""

    def __init__(
        self,
        send_material: bytes,
        recv_material: bytes,
        config: DistillConfig,
        rng: np.random.Generator | None,
    ) -> None:
        self.config = config
        self.send_pool = mac.MacKeyPool(send_material)
        self.recv_pool = mac.MacKeyPool(recv_material)
        self._rng = rng
        self._last_seq = -1
        self._family = code_family(config.block_bits)
        self._codes: dict[int, LDPCCode] = {}
        self.rejected = 0
        self.mac_bits_used = 0
        self.mac_bits_refilled = 0
        self.build_seconds = 0.0
        self.code_builder: Callable[[CodeSpec], LDPCCode] = CodeSpec.build

    def code(self, index: int) -> LDPCCode:
        """Mother code ``index`` of the family, made by ``code_builder`` on first use
        (``CodeSpec.build``; a caller may load it from a store instead). ``build_seconds``
        adds up the time that took, which a caller's time budget may leave out."""
        if not 0 <= index < len(self._family):
            raise MessageError(f"unknown code index {index}")
        if index not in self._codes:
            t0 = time.perf_counter()
            self._codes[index] = self.code_builder(self._family[index])
            self.build_seconds += time.perf_counter() - t0
        return self._codes[index]

    def target_beta(self, snr: float) -> float:
        """The efficiency a frame at this SNR asks for: ``config.beta``, or with ``None``
        the family's best operating point there (:func:`family_beta`), less
        ``config.beta_backoff``."""
        c = self.config
        base = c.beta if c.beta is not None else family_beta(self._family, snr)
        return base - c.beta_backoff

    def _seal(self, msg: Message) -> bytes:
        index, key = self.send_pool.take()
        self.mac_bits_used += 8 * mac.KEY_BYTES
        payload = encode_payload(msg)
        body = frame_header(msg.TYPE, index, len(payload)) + payload
        return body + mac.tag(key, body)

    def _open(self, data: bytes) -> Message:
        mtype, seq, payload, body, tag = split_frame(data)
        if seq <= self._last_seq:
            raise MessageError(f"replayed or stale message (sequence {seq})")
        if seq - self.recv_pool.issued >= _SEQ_WINDOW:
            raise MessageError(f"message sequence {seq} too far ahead")
        key = b""
        while self.recv_pool.issued <= seq:
            _, key = self.recv_pool.take()
        self._last_seq = seq
        if not mac.verify(key, body, tag):
            raise MessageError("authentication failed (wrong tag)")
        return decode_payload(mtype, payload)

    def _random_bits(self, k: int) -> np.ndarray:
        return random_bits(k, self._rng)

    def _random_bytes(self, k: int) -> bytes:
        return self._rng.bytes(k) if self._rng is not None else os.urandom(k)

    def _finish_block(
        self, block_id: bytes, key: np.ndarray, refill_keys: int, refill_first_send: bool
    ) -> list[tuple[uuid.UUID, bytes]]:
        """Refill both MAC pools from the head of ``key``, cut the rest into keys."""
        raw = np.packbits(key).tobytes()[: key.size // 8]
        per = min(refill_keys, len(raw) // (2 * mac.KEY_BYTES)) * mac.KEY_BYTES
        first, second = raw[:per], raw[per : 2 * per]
        if refill_first_send:
            self.send_pool.add(first)
            self.recv_pool.add(second)
        else:
            self.recv_pool.add(first)
            self.send_pool.add(second)
        self.mac_bits_refilled += 16 * per
        rest = raw[2 * per :]
        kb = self.config.key_bits // 8
        return [(key_id(block_id, i), rest[i * kb : (i + 1) * kb]) for i in range(len(rest) // kb)]


@dataclass
class FrameStats:
    """What happened to one frame."""

    frame_id: int
    code: str
    n_data: int
    punctured: int
    shortened: int
    rate: float
    beta: float
    leak_ec_bits: int
    status: str
    iterations: int = 0
    decode_seconds: float = 0.0
    revealed: int = 0
    attempts: int = 1


@dataclass
class _BobFrame:
    plan: FramePlan
    key: np.ndarray
    leak: int
    stats: FrameStats
    code_index: int


class Bob:
    """The receiver: his quadratures define the key; he drives the protocol.

    Parameters
    ----------
    psk
        Pre-shared secret (>= 64 bytes): first half authenticates Bob -> Alice, second
        half Alice -> Bob.
    config
        Shared parameters.
    rng
        Generator for tests; ``None`` (production) draws from the OS CSPRNG.
    """

    def __init__(
        self,
        psk: bytes,
        config: DistillConfig | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        ba, ab = _split_psk(psk)
        self._p = _Party(ba, ab, config or DistillConfig(), rng)
        self._y = np.zeros(0)
        self._offset = 0
        self._next_frame = 0
        self._block_first_frame = 0
        self._reveals = 0
        self._frames: dict[int, _BobFrame] = {}
        self._accepted: list[int] = []
        self._pending_pa: tuple[PaStart, np.ndarray] | None = None

    @property
    def party(self) -> _Party:
        return self._p

    @property
    def offset(self) -> int:
        """Real symbols of the current block the frames sent so far have used."""
        return self._offset

    def load_block(self, y: np.ndarray) -> None:
        """Start a block on Bob's calibrated quadratures (SNU, 1-D real)."""
        y = np.asarray(y, dtype=np.float64).ravel()
        if not np.all(np.isfinite(y)):
            raise ValueError("Bob's quadratures contain NaN or infinity")
        self._y = y
        self._offset = 0
        self._block_first_frame = self._next_frame
        self._reveals = 0
        self._frames.clear()
        self._accepted = []
        self._pending_pa = None

    def frame_message(self, snr: float) -> tuple[bytes, FrameStats] | None:
        """Build the next ``FrameStart``; ``None`` if too few symbols are left (the last
        frame of a block may be shortened to fit them, see ``LAST_FRAME_BETA_LOSS``)."""
        p = self._p
        beta = p.target_beta(snr)
        # On the family's curve the code is the one whose operating point that is.
        spec = select_code(p._family, snr, None if p.config.beta is None else beta)
        index = p._family.index(spec)
        code = p.code(index)
        plan = plan_frame(code, snr, beta)
        left = self._y.size - self._offset
        if plan.n_data > left:
            # The block's last symbols: a frame that fits by shortening the difference,
            # if that costs at most LAST_FRAME_BETA_LOSS (else they are left unused).
            try:
                plan = plan_frame(code, snr, beta, max_data=left)
            except ValueError:  # too few symbols left for any frame
                return None
            if plan.beta < beta - LAST_FRAME_BETA_LOSS:
                return None
        y = self._y[self._offset : self._offset + plan.n_data]
        enc = bob_encode(code, plan, y, p._rng)
        key = enc.key(plan)
        hkey = random_hash_key(p._rng)
        fid = self._next_frame
        msg = FrameStart(
            frame_id=fid,
            offset=self._offset,
            code_index=index,
            code_digest=code.digest,
            snr=float(snr),
            beta=float(beta),
            hash_key=hkey,
            hash_tag=poly_hash(key, hkey),
            public=enc.public,
            syndrome=enc.syndrome,
        )
        stats = FrameStats(
            frame_id=fid,
            code=spec.name,
            n_data=plan.n_data,
            punctured=int(plan.punctured.size),
            shortened=int(plan.shortened.size),
            rate=plan.rate,
            beta=plan.beta,
            leak_ec_bits=code.m,
            status="sent",
        )
        self._frames[fid] = _BobFrame(
            plan=plan, key=key, leak=code.m, stats=stats, code_index=index
        )
        self._next_frame += 1
        self._offset += plan.n_data
        return p._seal(msg), stats

    def reveal_message(self, frame_id: int) -> bytes | None:
        """After frame ``frame_id`` failed to decode, disclose more of its data bits for
        another attempt (the next of ``config.reveal_steps``); ``None`` when the steps
        are spent or the frame did not fail in decoding.

        The disclosed bits stay in the reconciled string and are counted as leaked, so
        the frame's rate and beta fall by the step; a wrong codeword found on a retry is
        caught by the same verification tag.
        """
        fr = self._frames[frame_id]
        st = fr.stats
        steps = self._p.config.reveal_steps
        if st.status != "decode_failed" or st.attempts > len(steps):
            return None
        plan = fr.plan
        code = self._p.code(fr.code_index)
        count = reveal_count(plan, steps[st.attempts - 1])
        idx = reveal_order(code, plan)[:count]
        fr.leak = code.m + count
        st.leak_ec_bits = fr.leak
        st.revealed = count
        st.rate = plan.rate - count / plan.n_data
        st.beta = st.rate / capacity(plan.snr)
        st.attempts += 1
        st.status = "sent"
        self._reveals += 1
        return self._p._seal(Reveal(frame_id=frame_id, values=fr.key[idx].astype(np.uint8)))

    def handle_ack(self, frame_id: int, data: bytes | None) -> FrameStats:
        """Process Alice's answer to frame ``frame_id`` (``None``: no answer)."""
        st = self._frames[frame_id].stats
        try:
            if data is None:
                raise MessageError("no answer")
            msg = self._p._open(data)
            if not isinstance(msg, Ack):
                raise MessageError(f"expected Ack, got {type(msg).__name__}")
        except MessageError:
            self._p.rejected += 1
            st.status = "rejected"
            return st
        st.iterations += msg.iterations
        if msg.frame_id != frame_id or msg.status == AckStatus.REJECTED:
            st.status = "rejected"
        elif msg.status == AckStatus.DECODE_FAILED:
            st.status = "decode_failed"
        elif msg.status == AckStatus.VERIFY_FAILED:
            st.status = "verify_failed"
        elif msg.status == AckStatus.CODE_MISMATCH:
            st.status = "code_mismatch"
            fr = self._frames[frame_id]
            raise CodeMismatchError(
                f"frame {frame_id}: Alice's parity-check matrix for code {st.code} differs "
                f"from Bob's (his digest {self._p.code(fr.code_index).digest.hex()}), so no "
                "frame can be reconciled: both hosts must run the same versions of "
                "cvqkd-hil and numpy"
            )
        elif msg.status == AckStatus.OK:
            st.status = "ok"
            self._accepted.append(frame_id)
        else:
            st.status = "rejected"
        return st

    def pa_message(
        self, eve_bits_per_symbol: float | Callable[[int], float]
    ) -> tuple[bytes, dict[str, float]]:
        """Build ``PaStart`` for the accepted frames; returns the bytes and the accounting."""
        p = self._p
        frames = [self._frames[f] for f in self._accepted]
        x = np.concatenate([f.key for f in frames]) if frames else np.zeros(0, dtype=np.uint8)
        n_sym = sum(f.plan.n_data for f in frames)
        chi = eve_bits_per_symbol(n_sym) if callable(eve_bits_per_symbol) else eve_bits_per_symbol
        leak_ec = sum(f.leak for f in frames)
        leak_ver = TAG_BITS * len(frames)
        out = (
            output_length(x.size, n_sym, float(chi), leak_ec, leak_ver, p.config.eps_pa)
            if frames
            else 0
        )
        seed = p._random_bits(seed_bits(x.size, out, p.config.pa_method)) if out else np.zeros(0)
        # One MAC key per message each way: frames, disclosures, this PaStart (+1 spare).
        refill = self._next_frame - self._block_first_frame + self._reveals + 2
        msg = PaStart(
            block_id=p._random_bytes(16),
            frame_ids=tuple(self._accepted),
            out_bits=out,
            method=p.config.pa_method,
            seed=seed.astype(np.uint8),
            refill_keys=refill,
        )
        self._pending_pa = (msg, x)
        acct = {
            "n_symbols": float(n_sym),
            "reconciled_bits": float(x.size),
            "leak_ec_bits": float(leak_ec),
            "leak_ver_bits": float(leak_ver),
            "eve_bits_per_symbol": float(chi),
            "pa_output_bits": float(out),
        }
        return p._seal(msg), acct

    def handle_pa_ack(self, data: bytes | None) -> tuple[bytes, list[tuple[uuid.UUID, bytes]]]:
        """Commit the block on an authentic ``PaAck`` ok; returns ``(block_id, keys)``."""
        if self._pending_pa is None:
            raise RuntimeError("no privacy amplification pending")
        msg, x = self._pending_pa
        self._pending_pa = None
        try:
            if data is None:
                raise MessageError("no answer")
            ack = self._p._open(data)
            if not isinstance(ack, PaAck) or ack.block_id != msg.block_id or not ack.ok:
                raise MessageError("privacy amplification not confirmed")
        except MessageError:
            self._p.rejected += 1
            return msg.block_id, []
        final = hash_bits(x, msg.seed, msg.out_bits, msg.method) if msg.out_bits else x[:0]
        return msg.block_id, self._p._finish_block(
            msg.block_id, final, msg.refill_keys, refill_first_send=True
        )


class Alice:
    """The transmitter: she corrects her view of Bob's key and answers his messages.

    Parameters are as for :class:`Bob` (same ``psk`` and ``config``).
    """

    def __init__(
        self,
        psk: bytes,
        config: DistillConfig | None = None,
        rng: np.random.Generator | None = None,
    ) -> None:
        ba, ab = _split_psk(psk)
        self._p = _Party(ab, ba, config or DistillConfig(), rng)
        self._x = np.zeros(0)
        self._keys: dict[int, np.ndarray] = {}
        self.committed: list[tuple[bytes, list[tuple[uuid.UUID, bytes]]]] = []
        self.decode_seconds = 0.0
        self.retransmissions = 0
        self._last: tuple[bytes, bytes] | None = None
        self._failed: tuple[FrameStart, FramePlan, LDPCCode] | None = None

    @property
    def party(self) -> _Party:
        return self._p

    def load_block(self, x: np.ndarray) -> None:
        """Start a block on Alice's symbols (SNU, 1-D real, aligned with Bob's)."""
        x = np.asarray(x, dtype=np.float64).ravel()
        if not np.all(np.isfinite(x)):
            raise ValueError("Alice's symbols contain NaN or infinity")
        self._x = x
        self._keys.clear()

    def handle(self, data: bytes) -> bytes:
        """Answer one message from Bob (always an authenticated reply).

        The same bytes as the previous request (Bob retransmitting after a lost reply) get
        the same reply again, with no new decoding, commit or MAC key: so a lost
        ``PaAck`` cannot leave the block committed on Alice's side only.
        """
        if self._last is not None and data == self._last[0]:
            self.retransmissions += 1
            return self._last[1]
        reply = self._answer(data)
        self._last = (data, reply)
        return reply

    def _answer(self, data: bytes) -> bytes:
        try:
            msg = self._p._open(data)
        except MessageError:
            self._p.rejected += 1
            return self._p._seal(Ack(frame_id=_NO_FRAME, status=AckStatus.REJECTED, iterations=0))
        if isinstance(msg, FrameStart):
            return self._p._seal(self._frame(msg))
        if isinstance(msg, PaStart):
            return self._p._seal(self._pa(msg))
        if isinstance(msg, Reveal):
            return self._p._seal(self._retry(msg))
        self._p.rejected += 1
        return self._p._seal(Ack(frame_id=_NO_FRAME, status=AckStatus.REJECTED, iterations=0))

    def _frame(self, msg: FrameStart) -> Ack:
        p = self._p
        try:
            code = p.code(msg.code_index)
            plan = plan_frame(code, msg.snr, msg.beta, max_data=msg.public.shape[0] * 8)
            if (
                msg.public.shape[0] * 8 != plan.n_data
                or msg.syndrome.size != code.m
                or msg.offset + plan.n_data > self._x.size
            ):
                raise MessageError("FrameStart does not match the code or Alice's symbols")
        except (MessageError, ValueError):
            return Ack(frame_id=msg.frame_id, status=AckStatus.REJECTED, iterations=0)
        if msg.code_digest != code.digest:
            return Ack(frame_id=msg.frame_id, status=AckStatus.CODE_MISMATCH, iterations=0)
        self._failed = None
        return self._decode(msg, plan, code, None)

    def _retry(self, msg: Reveal) -> Ack:
        """Decode the frame that just failed again, with the bits Bob disclosed."""
        failed = self._failed
        if failed is None or failed[0].frame_id != msg.frame_id:
            return Ack(frame_id=msg.frame_id, status=AckStatus.REJECTED, iterations=0)
        start, plan, code = failed
        if not 0 < msg.values.size <= plan.n_data:
            return Ack(frame_id=msg.frame_id, status=AckStatus.REJECTED, iterations=0)
        pos = plan.data_pos[reveal_order(code, plan)[: msg.values.size]]
        self._failed = None
        return self._decode(start, plan, code, (pos, msg.values))

    def _decode(
        self,
        msg: FrameStart,
        plan: FramePlan,
        code: LDPCCode,
        known: tuple[np.ndarray, np.ndarray] | None,
    ) -> Ack:
        spec = self._p._family[msg.code_index]
        t0 = time.perf_counter()
        res = alice_decode(
            code,
            plan,
            self._x[msg.offset : msg.offset + plan.n_data],
            msg.public,
            msg.syndrome,
            spec.max_iter,
            spec.patience,
            known,
        )
        self.decode_seconds += time.perf_counter() - t0
        if not res.success:
            self._failed = (msg, plan, code)
            return Ack(msg.frame_id, AckStatus.DECODE_FAILED, res.iterations)
        if poly_hash(res.key, msg.hash_key) != msg.hash_tag:
            return Ack(msg.frame_id, AckStatus.VERIFY_FAILED, res.iterations)
        self._keys[msg.frame_id] = res.key
        return Ack(msg.frame_id, AckStatus.OK, res.iterations)

    def _pa(self, msg: PaStart) -> PaAck:
        if any(f not in self._keys for f in msg.frame_ids):
            return PaAck(block_id=msg.block_id, ok=False)
        parts = [self._keys[f] for f in msg.frame_ids]
        x = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint8)
        try:
            if msg.out_bits and msg.seed.size != seed_bits(x.size, msg.out_bits, msg.method):
                raise ValueError("seed length does not match")
            final = hash_bits(x, msg.seed, msg.out_bits, msg.method) if msg.out_bits else x[:0]
        except (ValueError, ArithmeticError):
            return PaAck(block_id=msg.block_id, ok=False)
        keys = self._p._finish_block(msg.block_id, final, msg.refill_keys, refill_first_send=False)
        self.committed.append((msg.block_id, keys))
        self._keys.clear()
        return PaAck(block_id=msg.block_id, ok=True)


class Channel(Protocol):
    """Carries one request from Bob to Alice and her reply back."""

    def exchange(self, data: bytes) -> bytes | None: ...


@dataclass
class InProcessChannel:
    """Delivers Bob's bytes straight to ``alice.handle``.

    ``tamper`` (tests) may rewrite or drop (return ``None``) each message in flight;
    it receives ``(direction, index, data)`` with direction ``"ba"`` or ``"ab"``.
    """

    alice: Alice
    tamper: Callable[[str, int, bytes], bytes | None] | None = None
    _count: int = 0

    def exchange(self, data: bytes) -> bytes | None:
        i = self._count
        self._count += 1
        if self.tamper is not None:
            data = self.tamper("ba", i, data)  # type: ignore[assignment]
            if data is None:
                return None
        reply = self.alice.handle(data)
        if self.tamper is not None:
            return self.tamper("ab", i, reply)
        return reply


@dataclass
class BlockResult:
    """Outcome of one block: keys held by each side plus the accounting."""

    block_id: bytes
    alice_keys: list[tuple[uuid.UUID, bytes]]
    bob_keys: list[tuple[uuid.UUID, bytes]]
    frames: list[FrameStats]
    n_symbols_offered: int
    accounting: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def frames_ok(self) -> int:
        return sum(f.status == "ok" for f in self.frames)

    @property
    def frames_failed(self) -> int:
        return len(self.frames) - self.frames_ok

    @property
    def fer(self) -> float:
        """Fraction of frames discarded (decoding, verification or authentication)."""
        return self.frames_failed / len(self.frames) if self.frames else math.nan

    @property
    def beta(self) -> float:
        """Mean efficiency of the rates used."""
        return float(np.mean([f.beta for f in self.frames])) if self.frames else math.nan

    @property
    def key_bits(self) -> int:
        """Delivered key bits (after the MAC pool refill)."""
        return 8 * sum(len(k) for _, k in self.bob_keys)

    @property
    def secret_bits_per_symbol(self) -> float:
        """Delivered key per offered symbol: frame errors and all leaks charged."""
        return self.key_bits / self.n_symbols_offered if self.n_symbols_offered else 0.0


RETRIES = 2
"""Retransmissions of a request whose reply was lost, before Bob gives the exchange up."""


def exchange(channel: Channel, data: bytes, retries: int = RETRIES) -> bytes | None:
    """Send ``data`` and return Alice's reply, retransmitting the same bytes up to
    ``retries`` times while the reply is lost (``None``); Alice answers a retransmission
    with her cached reply (:meth:`Alice.handle`)."""
    for _ in range(retries + 1):
        reply = channel.exchange(data)
        if reply is not None:
            return reply
    return None


def reconcile_frame(
    bob: Bob, snr: float, channel: Channel, retries: int = RETRIES
) -> FrameStats | None:
    """Send Bob's next frame and, while Alice fails to decode it, his disclosures
    (:meth:`Bob.reveal_message`); ``None`` when the block has no frame left."""
    built = bob.frame_message(snr)
    if built is None:
        return None
    data, st = built
    st = bob.handle_ack(st.frame_id, exchange(channel, data, retries))
    while (rev := bob.reveal_message(st.frame_id)) is not None:
        st = bob.handle_ack(st.frame_id, exchange(channel, rev, retries))
    return st


def bob_run_block(
    bob: Bob,
    y_bob: np.ndarray,
    snr: float,
    eve_bits_per_symbol: float | Callable[[int], float],
    channel: Channel,
    max_frames: int | None = None,
    retries: int = RETRIES,
) -> BlockResult:
    """Bob's side of one block over any channel (Alice may run on another host).

    A lost reply is retried ``retries`` times (:func:`exchange`). Returns a
    :class:`BlockResult` whose ``alice_keys`` is empty (Alice holds hers).
    """
    t0 = time.perf_counter()
    bob.load_block(y_bob)
    frames: list[FrameStats] = []
    while max_frames is None or len(frames) < max_frames:
        st = reconcile_frame(bob, snr, channel, retries)
        if st is None:
            break
        frames.append(st)
    data, acct = bob.pa_message(eve_bits_per_symbol)
    block_id, bob_keys = bob.handle_pa_ack(exchange(channel, data, retries))
    return BlockResult(
        block_id=block_id,
        alice_keys=[],
        bob_keys=bob_keys,
        frames=frames,
        n_symbols_offered=int(np.asarray(y_bob).size),
        accounting=acct,
        seconds=time.perf_counter() - t0,
    )


def distill_block(
    alice: Alice,
    bob: Bob,
    x_alice: np.ndarray,
    y_bob: np.ndarray,
    snr: float,
    eve_bits_per_symbol: float | Callable[[int], float],
    channel: Channel | None = None,
    max_frames: int | None = None,
) -> BlockResult:
    """Distil one block from Alice's symbols and Bob's calibrated quadratures, in process.

    Parameters
    ----------
    alice, bob
        The two parties (same pre-shared secret and config).
    x_alice, y_bob
        Aligned real arrays in SNU (I and Q quadratures flattened). As many frames as fit
        are reconciled; leftover symbols are not used (but are charged to the key rate).
    snr
        Estimated per-dimension SNR of ``y`` w.r.t. ``x`` (from parameter estimation).
    eve_bits_per_symbol
        Eve's information per symbol (finite-size Holevo bound with estimation
        penalties, from the key-rate module), or a function of the number of symbols
        entering privacy amplification returning it.
    channel
        Classical channel; default an :class:`InProcessChannel` to ``alice``.
    max_frames
        Optional cap on frames in the block.
    """
    if np.asarray(x_alice).size != np.asarray(y_bob).size:
        raise ValueError(
            f"Alice has {np.asarray(x_alice).size} symbols, Bob {np.asarray(y_bob).size}"
        )
    alice.load_block(x_alice)
    res = bob_run_block(
        bob, y_bob, snr, eve_bits_per_symbol, channel or InProcessChannel(alice), max_frames
    )
    if alice.committed and alice.committed[-1][0] == res.block_id:
        res.alice_keys = alice.committed[-1][1]
    return res
