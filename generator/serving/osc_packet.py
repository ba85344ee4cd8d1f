"""Structural checks of an OSC 1.0 datagram, done before any OSC library parses it.

python-osc 1.10.2 loops forever on a bundle element with a negative size, lets invalid
UTF-8 escape its dispatcher and honours future timetags by stalling. Everything here is
bounds-checked arithmetic over the raw bytes: sizes, alignment, nesting, UTF-8, type tags.
"""

from __future__ import annotations

MAX_DATAGRAM = 16384  # a 2000-character prompt in UTF-8 fits with room to spare
MAX_DEPTH = 4  # bundles inside bundles
MAX_ADDRESS = 256
BUNDLE = b"#bundle\0"
FIXED_SIZES = {"i": 4, "f": 4, "c": 4, "r": 4, "h": 8, "d": 8, "t": 8, "T": 0, "F": 0, "N": 0, "I": 0}


class OscPacketError(ValueError):
    """The datagram is not a well-formed OSC packet within DepthFusion's limits."""


def check_datagram(data: bytes) -> None:
    """Raise OscPacketError unless ``data`` is a complete, well-formed OSC packet."""
    if not data:
        raise OscPacketError("empty datagram")
    if len(data) > MAX_DATAGRAM:
        raise OscPacketError(f"datagram of {len(data)} bytes; the limit is {MAX_DATAGRAM}")
    if len(data) % 4:
        raise OscPacketError(f"datagram of {len(data)} bytes is not a multiple of 4")
    _check_packet(data, 0, len(data), 0)


def leading_address(data: bytes) -> str:
    """The address a packet, well-formed or not, starts with ("#bundle" for a bundle); "" when none
    is readable. For error replies only: never trusted beyond that."""
    head = data[:MAX_ADDRESS + 1].split(b"\0", 1)[0]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return ""
    return text if text.startswith(("/", "#bundle")) and text.isprintable() and len(text) <= MAX_ADDRESS else ""


def _check_packet(data: bytes, start: int, end: int, depth: int) -> None:
    if data.startswith(BUNDLE, start):
        _check_bundle(data, start, end, depth)
    elif data[start:start + 1] == b"/":
        _check_message(data, start, end)
    else:
        raise OscPacketError("a packet must start with '/' (message) or '#bundle'")


def _check_bundle(data: bytes, start: int, end: int, depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise OscPacketError(f"bundles nested deeper than {MAX_DEPTH}")
    pos = start + 16  # "#bundle\0" + 8-byte timetag
    if pos > end:
        raise OscPacketError("bundle shorter than its header")
    while pos < end:
        if pos + 4 > end:
            raise OscPacketError("bundle element size is truncated")
        size = int.from_bytes(data[pos:pos + 4], "big", signed=True)
        if size <= 0 or size % 4 or pos + 4 + size > end:
            raise OscPacketError(f"bundle element size {size} is not positive, aligned and in bounds")
        _check_packet(data, pos + 4, pos + 4 + size, depth + 1)
        pos += 4 + size


def _read_string(data: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    nul = data.find(b"\0", pos, end)
    if nul < 0:
        raise OscPacketError(f"{what} is not NUL-terminated")
    try:
        text = data[pos:nul].decode("utf-8")
    except UnicodeDecodeError:
        raise OscPacketError(f"{what} is not valid UTF-8") from None
    after = (nul + 4) & ~3
    if after > end:
        raise OscPacketError(f"{what} padding runs past the packet")
    return text, after


def _check_message(data: bytes, start: int, end: int) -> None:
    address, pos = _read_string(data, start, end, "address")
    if len(address) > MAX_ADDRESS or any(ord(ch) < 0x20 or ch in " #" for ch in address):
        raise OscPacketError("address is too long or holds spaces, '#' or control characters")
    if pos >= end:
        raise OscPacketError(f"{address}: no type tag string")
    tags, pos = _read_string(data, pos, end, "type tag string")
    if not tags.startswith(","):
        raise OscPacketError(f"{address}: type tag string must start with ','")
    for tag in tags[1:]:
        if tag in FIXED_SIZES:
            pos += FIXED_SIZES[tag]
        elif tag == "s" or tag == "S":
            _, pos = _read_string(data, pos, end, f"{address}: string argument")
        elif tag == "b":
            if pos + 4 > end:
                raise OscPacketError(f"{address}: blob size is truncated")
            size = int.from_bytes(data[pos:pos + 4], "big", signed=True)
            pos += 4 + ((size + 3) & ~3 if size >= 0 else 0)
            if size < 0:
                raise OscPacketError(f"{address}: negative blob size")
        else:
            raise OscPacketError(f"{address}: unsupported type tag {tag!r}")
        if pos > end:
            raise OscPacketError(f"{address}: arguments run past the packet")
    if pos != end:
        raise OscPacketError(f"{address}: {end - pos} bytes after the last argument")
