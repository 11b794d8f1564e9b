"""Avro binary primitives for the hand-written fast codec.

Each reader takes ``(buf, pos)`` and returns ``(value, new_pos)``; a truncated buffer raises
``IndexError`` (reading a byte) or leaves ``pos`` past the end (slices), which the caller turns
into ``MalformedPayloadError``. A varint longer than 10 bytes, or a length that is negative or
runs past the end, is malformed: these are the length and varint bombs of RELIABILITY.md.
"""

from __future__ import annotations

from lukhas_context.schemas.exceptions import MalformedPayloadError

LONG_MIN = -(1 << 63)
LONG_MAX = (1 << 63) - 1


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """Reads one zig-zag varint ``long``."""
    b = buf[pos]
    pos += 1
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos
    n = b & 0x7F
    shift = 7
    while True:
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise MalformedPayloadError("varint longer than 10 bytes")
    if n >> 64:
        raise MalformedPayloadError("varint overflows 64 bits")
    return (n >> 1) ^ -(n & 1), pos


def read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    """Reads a length-prefixed ``bytes`` (also the body of ``string``)."""
    n, pos = read_long(buf, pos)
    end = pos + n
    if n < 0 or end > len(buf):
        raise MalformedPayloadError(f"length {n} at byte {pos} runs past the end ({len(buf)})")
    return buf[pos:end], end


def read_string(buf: bytes, pos: int) -> tuple[str, int]:
    raw, pos = read_bytes(buf, pos)
    try:
        return raw.decode("utf-8"), pos
    except UnicodeDecodeError as exc:
        raise MalformedPayloadError(f"string is not UTF-8: {exc}") from None


def read_fixed(buf: bytes, pos: int, size: int) -> tuple[bytes, int]:
    end = pos + size
    if end > len(buf):
        raise MalformedPayloadError(f"fixed({size}) at byte {pos} runs past the end")
    return buf[pos:end], end


def read_index(buf: bytes, pos: int, count: int, what: str) -> tuple[int, int]:
    """Reads a union branch or enum symbol index and checks it is in ``range(count)``."""
    i, pos = read_long(buf, pos)
    if not 0 <= i < count:
        raise MalformedPayloadError(f"{what} index {i} out of range({count})")
    return i, pos


def read_optional_long(buf: bytes, pos: int) -> tuple[int | None, int]:
    """Reads ``["null", "long"]``."""
    i, pos = read_index(buf, pos, 2, "union")
    if i == 0:
        return None, pos
    return read_long(buf, pos)


def read_string_map(buf: bytes, pos: int) -> tuple[dict[str, str], int]:
    """Reads ``{"type": "map", "values": "string"}`` (blocks; a negative count has a size)."""
    out: dict[str, str] = {}
    while True:
        count, pos = read_long(buf, pos)
        if count == 0:
            return out, pos
        if count < 0:
            count = -count
            _, pos = read_long(buf, pos)
        for _ in range(count):
            key, pos = read_string(buf, pos)
            out[key], pos = read_string(buf, pos)


_SMALL = [bytes([((n << 1) ^ (n >> 63)) & 0xFF]) for n in range(64)]


def write_long(n: int) -> bytes:
    """Encodes one zig-zag varint ``long``; ``n`` must fit in 64 signed bits."""
    if 0 <= n < 64:
        return _SMALL[n]
    if not LONG_MIN <= n <= LONG_MAX:
        raise OverflowError(f"{n} does not fit an Avro long")
    z = ((n << 1) ^ (n >> 63)) & 0xFFFFFFFFFFFFFFFF
    # Unrolled forms for up to 4 bytes (offsets, versions): the loop costs twice as much.
    if z < 0x4000:
        return bytes((z & 0x7F | 0x80, z >> 7)) if z >= 0x80 else bytes((z,))
    if z < 0x200000:
        return bytes((z & 0x7F | 0x80, (z >> 7) & 0x7F | 0x80, z >> 14))
    if z < 0x10000000:
        return bytes((z & 0x7F | 0x80, (z >> 7) & 0x7F | 0x80, (z >> 14) & 0x7F | 0x80, z >> 21))
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def write_bytes(b: bytes) -> bytes:
    return write_long(len(b)) + b


def write_optional_long(n: int | None) -> bytes:
    return b"\x00" if n is None else b"\x02" + write_long(n)


def write_string_map(m: dict[str, str]) -> bytes:
    if not m:
        return b"\x00"
    parts = [write_long(len(m))]
    for k, v in m.items():
        parts.append(write_bytes(k.encode()))
        parts.append(write_bytes(v.encode()))
    parts.append(b"\x00")
    return b"".join(parts)


def read_boolean(buf: bytes, pos: int) -> tuple[bool, int]:
    """Reads one ``boolean``: a single byte, 0 or 1."""
    byte = buf[pos]
    if byte > 1:
        raise MalformedPayloadError(f"boolean byte {byte}")
    return byte == 1, pos + 1
