"""Typed key-distillation protocol messages and their authenticated byte encoding.

Wire format of one message (all integers big-endian)::

    magic  b"CVD2"        4 bytes (CVD1: before FrameStart carried the code's digest)
    type   uint8           message type (see :class:`MsgType`)
    seq    uint64          index of the one-time MAC key in the sender's pool
    length uint32          payload length
    payload                type-specific, below
    tag    16 bytes        Poly1305 tag over everything before it, one-time key ``seq``

The MAC key index doubles as the sequence number: the receiver accepts only indices it
has not seen (strictly increasing), so a replayed message is rejected without consuming
anything, and a key is never used for two messages. Decoding never trusts a field before
the tag has been checked; any malformed input raises :class:`MessageError`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

import numpy as np

from dsp.mac import TAG_BYTES

__all__ = [
    "Ack",
    "AckStatus",
    "FrameStart",
    "Message",
    "MessageError",
    "MsgType",
    "PaAck",
    "PaStart",
    "Reveal",
    "decode_payload",
    "encode_payload",
    "frame_header",
    "split_frame",
]

MAGIC = b"CVD2"
_HEAD = struct.Struct(">4sBQI")
MAX_PAYLOAD = 1 << 30


class MessageError(ValueError):
    """A message is malformed, unauthenticated, replayed or of an unexpected type."""


class MsgType(enum.IntEnum):
    FRAME_START = 1
    ACK = 2
    PA_START = 3
    PA_ACK = 4
    REVEAL = 5


class AckStatus(enum.IntEnum):
    OK = 0
    DECODE_FAILED = 1
    VERIFY_FAILED = 2
    REJECTED = 3
    CODE_MISMATCH = 4  # Alice's parity-check matrix differs from Bob's (FrameStart digest)


@dataclass(frozen=True)
class FrameStart:
    """Bob -> Alice: everything Alice needs to reconcile and verify one frame."""

    frame_id: int
    offset: int
    code_index: int
    code_digest: bytes  # LDPCCode.digest of Bob's matrix, 8 bytes
    snr: float
    beta: float
    hash_key: int
    hash_tag: int
    public: np.ndarray
    syndrome: np.ndarray

    TYPE = MsgType.FRAME_START


@dataclass(frozen=True)
class Ack:
    """Alice -> Bob: outcome of a frame (``status`` is an :class:`AckStatus`)."""

    frame_id: int
    status: int
    iterations: int

    TYPE = MsgType.ACK


@dataclass(frozen=True)
class PaStart:
    """Bob -> Alice: privacy amplification of the listed frames into ``out_bits`` bits."""

    block_id: bytes
    frame_ids: tuple[int, ...]
    out_bits: int
    method: str
    seed: np.ndarray
    refill_keys: int

    TYPE = MsgType.PA_START


@dataclass(frozen=True)
class PaAck:
    """Alice -> Bob: she has applied the block's privacy amplification (or not)."""

    block_id: bytes
    ok: bool

    TYPE = MsgType.PA_ACK


@dataclass(frozen=True)
class Reveal:
    """Bob -> Alice: after a failed decoding, the values of the first ``values.size``
    data bits of the frame in its reveal order (cumulative), for another attempt."""

    frame_id: int
    values: np.ndarray

    TYPE = MsgType.REVEAL


Message = FrameStart | Ack | PaStart | PaAck | Reveal

_FS = struct.Struct(">QQH8sdd16s16sII")
_ACK = struct.Struct(">QBI")
_PA = struct.Struct(">16sIQ8sQI")
_PAACK = struct.Struct(">16sB")
_REV = struct.Struct(">QI")


def _u128(v: int) -> bytes:
    return int(v).to_bytes(16, "big")


def encode_payload(msg: Message) -> bytes:
    """Payload bytes of a message (without header or tag)."""
    if isinstance(msg, FrameStart):
        pub = np.ascontiguousarray(msg.public, dtype=">f4")
        syn = np.packbits(np.asarray(msg.syndrome, dtype=np.uint8))
        head = _FS.pack(
            msg.frame_id,
            msg.offset,
            msg.code_index,
            bytes(msg.code_digest),
            msg.snr,
            msg.beta,
            _u128(msg.hash_key),
            _u128(msg.hash_tag),
            pub.shape[0],
            int(np.asarray(msg.syndrome).size),
        )
        return head + pub.tobytes() + syn.tobytes()
    if isinstance(msg, Ack):
        return _ACK.pack(msg.frame_id, msg.status, msg.iterations)
    if isinstance(msg, PaStart):
        seed = np.packbits(np.asarray(msg.seed, dtype=np.uint8))
        ids = struct.pack(f">{len(msg.frame_ids)}Q", *msg.frame_ids)
        head = _PA.pack(
            msg.block_id,
            len(msg.frame_ids),
            msg.out_bits,
            msg.method.encode().ljust(8, b"\0"),
            int(np.asarray(msg.seed).size),
            msg.refill_keys,
        )
        return head + ids + seed.tobytes()
    if isinstance(msg, PaAck):
        return _PAACK.pack(msg.block_id, 1 if msg.ok else 0)
    if isinstance(msg, Reveal):
        bits = np.asarray(msg.values, dtype=np.uint8)
        return _REV.pack(msg.frame_id, bits.size) + np.packbits(bits).tobytes()
    raise TypeError(f"not a distillation message: {type(msg).__name__}")


def _need(buf: bytes, n: int, what: str) -> None:
    if len(buf) != n:
        raise MessageError(f"{what}: payload is {len(buf)} bytes, expected {n}")


def decode_payload(mtype: int, payload: bytes) -> Message:
    """Parse an authenticated payload; raise :class:`MessageError` if malformed."""
    try:
        t = MsgType(mtype)
    except ValueError:
        raise MessageError(f"unknown message type {mtype}") from None
    try:
        if t is MsgType.FRAME_START:
            fid, off, code, digest, snr, beta, hk, ht, ngroups, nsyn = _FS.unpack_from(payload)
            npub = ngroups * 8 * 4
            nsb = -(-nsyn // 8)
            _need(payload, _FS.size + npub + nsb, "FrameStart")
            pub = np.frombuffer(payload, dtype=">f4", count=ngroups * 8, offset=_FS.size)
            syn = np.unpackbits(
                np.frombuffer(payload, dtype=np.uint8, count=nsb, offset=_FS.size + npub)
            )[:nsyn]
            if not (np.isfinite(snr) and np.isfinite(beta)) or snr <= 0 or beta <= 0:
                raise MessageError("FrameStart: SNR or beta not positive and finite")
            return FrameStart(
                frame_id=fid,
                offset=off,
                code_index=code,
                code_digest=digest,
                snr=snr,
                beta=beta,
                hash_key=int.from_bytes(hk, "big"),
                hash_tag=int.from_bytes(ht, "big"),
                public=pub.astype(np.float32).reshape(ngroups, 8),
                syndrome=syn.copy(),
            )
        if t is MsgType.ACK:
            _need(payload, _ACK.size, "Ack")
            fid, status, its = _ACK.unpack(payload)
            if status not in AckStatus._value2member_map_:
                raise MessageError(f"Ack: unknown status {status}")
            return Ack(frame_id=fid, status=status, iterations=its)
        if t is MsgType.PA_START:
            bid, nids, out_bits, meth, nseed, refill = _PA.unpack_from(payload)
            nsb = -(-nseed // 8)
            _need(payload, _PA.size + 8 * nids + nsb, "PaStart")
            ids = struct.unpack_from(f">{nids}Q", payload, _PA.size)
            seed = np.unpackbits(
                np.frombuffer(payload, dtype=np.uint8, count=nsb, offset=_PA.size + 8 * nids)
            )[:nseed]
            return PaStart(
                block_id=bid,
                frame_ids=tuple(ids),
                out_bits=out_bits,
                method=meth.rstrip(b"\0").decode("ascii"),
                seed=seed.copy(),
                refill_keys=refill,
            )
        if t is MsgType.REVEAL:
            fid, nbits = _REV.unpack_from(payload)
            nb = -(-nbits // 8)
            _need(payload, _REV.size + nb, "Reveal")
            values = np.unpackbits(
                np.frombuffer(payload, dtype=np.uint8, count=nb, offset=_REV.size)
            )[:nbits]
            return Reveal(frame_id=fid, values=values.copy())
        _need(payload, _PAACK.size, "PaAck")
        bid, ok = _PAACK.unpack(payload)
        return PaAck(block_id=bid, ok=bool(ok))
    except (struct.error, UnicodeDecodeError) as exc:
        raise MessageError(f"{t.name}: malformed payload ({exc})") from None


def frame_header(mtype: int, seq: int, payload_len: int) -> bytes:
    """The authenticated header preceding a payload."""
    return _HEAD.pack(MAGIC, int(mtype), seq, payload_len)


def split_frame(data: bytes) -> tuple[int, int, bytes, bytes, bytes]:
    """Split wire bytes into ``(type, seq, payload, authenticated_part, tag)``."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MessageError("message is not bytes")
    data = bytes(data)
    if len(data) < _HEAD.size + TAG_BYTES:
        raise MessageError(f"message too short ({len(data)} bytes)")
    magic, mtype, seq, length = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise MessageError(
            f"bad magic {magic!r}: not a distillation message of this protocol version "
            f"({MAGIC!r}; both hosts must run the same cvqkd-hil)"
        )
    if length > MAX_PAYLOAD or len(data) != _HEAD.size + length + TAG_BYTES:
        raise MessageError(f"message length field {length} does not match {len(data)} bytes")
    body = data[: _HEAD.size + length]
    return mtype, seq, data[_HEAD.size : _HEAD.size + length], body, data[-TAG_BYTES:]
