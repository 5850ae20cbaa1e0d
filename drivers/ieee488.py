"""IEEE 488.2 definite-length arbitrary blocks (``#<n><len><bytes>``): the one codec.

Used by the emulated firmware (both directions) and by the drivers. Pure, no I/O.
The byte order of the payload is the caller's business and is stated at every use.
"""

from __future__ import annotations


class BlockError(ValueError):
    """A byte string is not a well-formed IEEE 488.2 definite-length block."""


def encode_block(payload: bytes) -> bytes:
    """Wrap ``payload`` as ``#<n><len><payload>``."""
    length = str(len(payload)).encode("ascii")
    if len(length) > 9:
        raise BlockError(f"block of {len(payload)} bytes exceeds the 999,999,999-byte limit")
    return b"#" + str(len(length)).encode("ascii") + length + payload


def block_header_length(data: bytes | bytearray | memoryview, start: int = 0) -> tuple[int, int]:
    """Parse the header at ``data[start:]``.

    Returns ``(header_size, payload_size)``. Raises :class:`BlockError` if the header is
    malformed or incomplete (use it to learn how many more bytes a stream reader needs).
    """
    view = bytes(data[start : start + 11])
    if len(view) < 2 or view[0:1] != b"#":
        raise BlockError("block must start with '#<n>'")
    n_char = view[1:2]
    if not n_char.isdigit() or n_char == b"0":
        raise BlockError(
            "indefinite-length (#0) or malformed block header; "
            "only definite-length blocks are accepted"
        )
    n = int(n_char)
    digits = view[2 : 2 + n]
    if len(digits) < n:
        raise BlockError("incomplete block header")
    if not digits.isdigit():
        raise BlockError(f"block length field {digits!r} is not decimal")
    return 2 + n, int(digits)


def decode_block(data: bytes | bytearray | memoryview, start: int = 0) -> tuple[bytes, int]:
    """Decode one block at ``data[start:]``.

    Returns ``(payload, end)`` where ``end`` is the index just past the payload.
    """
    header, size = block_header_length(data, start)
    begin = start + header
    end = begin + size
    if end > len(data):
        raise BlockError(f"block declares {size} bytes but only {len(data) - begin} follow")
    return bytes(data[begin:end]), end
