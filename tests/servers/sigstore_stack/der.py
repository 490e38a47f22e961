"""Just enough DER to write RFC 3161 replies and X.509 extension values.

cryptography parses these structures but cannot build them, so the test TSA and
Fulcio assemble the bytes here. Only definite-length, single-byte tags are
supported; that covers everything the stack writes and reads.
"""

from __future__ import annotations

from datetime import UTC, datetime


def tlv(tag: int, body: bytes) -> bytes:
    """One tag-length-value element."""
    size = len(body)
    if size < 0x80:
        return bytes([tag, size]) + body
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + body


def sequence(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def set_of(*items: bytes) -> bytes:
    """A DER SET OF: members sorted by their encodings, as X.690 requires."""
    return tlv(0x31, b"".join(sorted(items)))


def context(number: int, body: bytes) -> bytes:
    """A constructed context tag ``[number]`` (EXPLICIT wrapper or IMPLICIT SET/SEQUENCE)."""
    return tlv(0xA0 | number, body)


def integer(value: int) -> bytes:
    width = max(1, (value.bit_length() + 8) // 8)
    return tlv(0x02, value.to_bytes(width, "big", signed=True))


def octet_string(value: bytes) -> bytes:
    return tlv(0x04, value)


def utf8_string(value: str) -> bytes:
    return tlv(0x0C, value.encode())


def null() -> bytes:
    return b"\x05\x00"


def oid(dotted: str) -> bytes:
    arcs = [int(part) for part in dotted.split(".")]
    body = bytearray()
    for arc in [arcs[0] * 40 + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        arc >>= 7
        while arc:
            chunk.append(0x80 | (arc & 0x7F))
            arc >>= 7
        body.extend(reversed(chunk))
    return tlv(0x06, bytes(body))


def generalized_time(moment: datetime) -> bytes:
    return tlv(0x18, moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ").encode())


def read(data: bytes, offset: int = 0) -> tuple[int, bytes, bytes, int]:
    """Parse the element at ``offset``: (tag, whole encoding, contents, next offset)."""
    tag = data[offset]
    first = data[offset + 1]
    start = offset + 2
    if first < 0x80:
        size = first
    else:
        width = first & 0x7F
        size = int.from_bytes(data[start : start + width], "big")
        start += width
    end = start + size
    if end > len(data):
        raise ValueError("truncated DER element")
    return tag, data[offset:end], data[start:end], end


def children(contents: bytes) -> list[tuple[int, bytes, bytes]]:
    """The elements inside a constructed value: (tag, whole encoding, contents) each."""
    found = []
    offset = 0
    while offset < len(contents):
        tag, whole, inner, offset = read(contents, offset)
        found.append((tag, whole, inner))
    return found
