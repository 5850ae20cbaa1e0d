"""Bridge wire protocol v1: one binary ZeroMQ frame per message, big-endian.

Every message starts with a 5-byte header: magic ``b"QKB"``, protocol version (u8, 1)
and message type (u8). The byte layout of each type is documented in ``docs/kms.md``;
the codec here is the single source of truth for it. A ``BLOCK`` carries its own
SHA-256 digest over all preceding bytes, so a garbled frame is detected before anything
is stored.
"""

from __future__ import annotations

import hashlib
import json
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

MAGIC = b"QKB"
VERSION = 1
HEADER = struct.Struct(">3sBB")
DIGEST_LEN = 32
MAX_LINK_ID_LEN = 255
MAX_KEY_LEN = 65535
DEFAULT_MAX_FRAME_BYTES = 4 * 1024 * 1024


class MsgType(IntEnum):
    """Message types of protocol v1."""

    BLOCK = 1
    ACK = 2
    HEARTBEAT = 3
    HEARTBEAT_ACK = 4
    STATS_REQ = 5
    STATS = 6


class AckStatus(IntEnum):
    """Outcome carried by an ``ACK``: only ``COMMITTED`` and ``DUPLICATE`` end a retry."""

    COMMITTED = 0
    DUPLICATE = 1
    CONFLICT = 2
    FULL = 3
    ERROR = 4
    FORBIDDEN = 5


class ProtocolError(ValueError):
    """A frame that does not decode: wrong magic/version/type, truncated, bad digest."""


@dataclass
class KeyBlock:
    """One distilled key block: keys (UUID key_ID, bytes) of one link, with metadata."""

    link_id: str
    block_id: int
    keys: list[tuple[str, bytearray]]
    metadata: dict[str, Any] = field(default_factory=dict)
    digest: bytes = b""

    def wipe(self) -> None:
        """Zero every key buffer in place (after the store has committed its copy)."""
        for _, key in self.keys:
            key[:] = bytes(len(key))


@dataclass(frozen=True)
class Ack:
    link_id: str
    block_id: int
    status: AckStatus
    reason: str = ""


def _header(mtype: MsgType) -> bytes:
    return HEADER.pack(MAGIC, VERSION, int(mtype))


def peek_type(frame: bytes | memoryview) -> MsgType:
    """Check magic and version and return the message type."""
    if len(frame) < HEADER.size:
        raise ProtocolError(f"frame too short ({len(frame)} bytes) for the header")
    magic, version, mtype = HEADER.unpack_from(frame, 0)
    if magic != MAGIC:
        raise ProtocolError("bad magic (not a bridge frame)")
    if version != VERSION:
        raise ProtocolError(f"unsupported protocol version {version} (this is {VERSION})")
    try:
        return MsgType(mtype)
    except ValueError:
        raise ProtocolError(f"unknown message type {mtype}") from None


def encode_block(
    link_id: str,
    block_id: int,
    keys: Sequence[tuple[str, bytes | bytearray]],
    metadata: dict[str, Any] | None = None,
) -> bytearray:
    """Encode a ``BLOCK`` frame into a fresh (wipeable) bytearray."""
    link = link_id.encode()
    if not 0 < len(link) <= MAX_LINK_ID_LEN:
        raise ValueError(f"link id must be 1..{MAX_LINK_ID_LEN} UTF-8 bytes, got {link_id!r}")
    if not 0 <= block_id < 2**64:
        raise ValueError(f"block id must fit in u64, got {block_id}")
    if not keys:
        raise ValueError("a key block needs at least one key")
    meta = json.dumps(metadata or {}, sort_keys=True, separators=(",", ":")).encode()
    out = bytearray(_header(MsgType.BLOCK))
    out += struct.pack(">B", len(link)) + link
    out += struct.pack(">QI", block_id, len(keys))
    seen: set[bytes] = set()
    for key_id, key in keys:
        try:
            kid = uuid.UUID(str(key_id)).bytes
        except ValueError:
            raise ValueError(f"key_ID {key_id!r} is not a UUID") from None
        if kid in seen:
            raise ValueError(f"key_ID {key_id} appears twice in block {block_id}")
        seen.add(kid)
        if not 0 < len(key) <= MAX_KEY_LEN:
            raise ValueError(f"key {key_id} must be 1..{MAX_KEY_LEN} bytes, got {len(key)}")
        out += kid + struct.pack(">H", len(key))
        out += key
    out += struct.pack(">I", len(meta)) + meta
    out += hashlib.sha256(out).digest()
    return out


def decode_block(frame: bytes | bytearray | memoryview) -> KeyBlock:
    """Decode and verify a ``BLOCK`` frame; key buffers are fresh bytearrays."""
    view = memoryview(frame)
    if peek_type(view) != MsgType.BLOCK:
        raise ProtocolError("not a BLOCK frame")
    if len(view) < HEADER.size + 1 + 12 + 4 + DIGEST_LEN:
        raise ProtocolError("BLOCK frame truncated")
    body, digest = view[:-DIGEST_LEN], bytes(view[-DIGEST_LEN:])
    if hashlib.sha256(body).digest() != digest:
        raise ProtocolError("BLOCK digest mismatch (garbled frame)")
    try:
        pos = HEADER.size
        (llen,) = struct.unpack_from(">B", body, pos)
        pos += 1
        link_id = bytes(body[pos : pos + llen]).decode()
        pos += llen
        block_id, n = struct.unpack_from(">QI", body, pos)
        pos += 12
        if n == 0:
            raise ProtocolError("BLOCK without keys")
        keys: list[tuple[str, bytearray]] = []
        for _ in range(n):
            kid = uuid.UUID(bytes=bytes(body[pos : pos + 16]))
            (klen,) = struct.unpack_from(">H", body, pos + 16)
            pos += 18
            if klen == 0 or pos + klen > len(body):
                raise ProtocolError("BLOCK key length out of range")
            keys.append((str(kid), bytearray(body[pos : pos + klen])))
            pos += klen
        (mlen,) = struct.unpack_from(">I", body, pos)
        pos += 4
        meta = json.loads(bytes(body[pos : pos + mlen]))
        pos += mlen
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"BLOCK body malformed: {exc}") from None
    if pos != len(body):
        raise ProtocolError("BLOCK has trailing bytes")
    if not isinstance(meta, dict):
        raise ProtocolError("BLOCK metadata is not a JSON object")
    return KeyBlock(link_id, block_id, keys, meta, digest)


def encode_ack(ack: Ack) -> bytes:
    link = ack.link_id.encode()[:MAX_LINK_ID_LEN]
    reason = ack.reason.encode()[:65535]
    return (
        _header(MsgType.ACK)
        + struct.pack(">B", len(link))
        + link
        + struct.pack(">QBH", ack.block_id, int(ack.status), len(reason))
        + reason
    )


def decode_ack(frame: bytes | memoryview) -> Ack:
    if peek_type(frame) != MsgType.ACK:
        raise ProtocolError("not an ACK frame")
    try:
        pos = HEADER.size
        (llen,) = struct.unpack_from(">B", frame, pos)
        link_id = bytes(frame[pos + 1 : pos + 1 + llen]).decode()
        pos += 1 + llen
        block_id, status, rlen = struct.unpack_from(">QBH", frame, pos)
        reason = bytes(frame[pos + 11 : pos + 11 + rlen]).decode()
        return Ack(link_id, block_id, AckStatus(status), reason)
    except (struct.error, UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"ACK malformed: {exc}") from None


def encode_heartbeat(seq: int, ack: bool = False) -> bytes:
    return _header(MsgType.HEARTBEAT_ACK if ack else MsgType.HEARTBEAT) + struct.pack(">Q", seq)


def decode_heartbeat(frame: bytes | memoryview) -> int:
    if len(frame) != HEADER.size + 8:
        raise ProtocolError("heartbeat frame has the wrong length")
    return struct.unpack_from(">Q", frame, HEADER.size)[0]


def encode_json(mtype: MsgType, payload: dict[str, Any]) -> bytes:
    """``STATS_REQ``/``STATS``: header + UTF-8 JSON object."""
    return _header(mtype) + json.dumps(payload, sort_keys=True).encode()


def decode_json(frame: bytes | memoryview) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(frame[HEADER.size :]) or b"{}")
    except ValueError as exc:
        raise ProtocolError(f"JSON payload malformed: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("JSON payload is not an object")
    return obj
