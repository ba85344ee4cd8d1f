import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from generator.serving.osc_space import osc_message
from generator.serving.osc_packet import MAX_DATAGRAM, OscPacketError, check_datagram


def bundle(*elements, timetag=1):
    body = b"#bundle\0" + struct.pack(">Q", timetag)
    for element in elements:
        body += struct.pack(">i", len(element)) + element
    return body


@pytest.mark.parametrize("packet", [
    osc_message("/depthfusion/ping"),
    osc_message("/depthfusion/prompt", "ünïcödé ✓ " * 50),
    osc_message("/depthfusion/x", 1, 2.5, "s", True, False, None, b"blob!", 2**40),
    bundle(osc_message("/a", 1), bundle(osc_message("/b", "x"))),
    bundle(),
])
def test_well_formed_packets_pass(packet):
    check_datagram(packet)


@pytest.mark.parametrize("packet, message", [
    (b"", "empty"),
    (b"/abc", "NUL-terminated"),
    (b"/ab", "multiple of 4"),
    (b"x" * (MAX_DATAGRAM + 4), "limit"),
    (b"abc\0", "must start with"),
    # the 28-byte bundle with a negative element size that hangs python-osc 1.10.2
    (b"#bundle\0" + b"\0" * 8 + struct.pack(">i", -8) + b"/a\0\0,\0\0\0", "not positive"),
    (b"#bundle\0" + b"\0" * 8 + struct.pack(">i", 6) + b"/a\0\0,\0\0\0", "aligned"),
    (b"#bundle\0" + b"\0" * 8 + struct.pack(">i", 400) + b"/a\0\0,\0\0\0", "in bounds"),
    (b"#bundle\0" + b"\0" * 4, "shorter than its header"),
    (b"/\xff\xfe\0,\0\0\0", "UTF-8"),
    (b"/a\0\0,s\0\0\xff\xfe\0\0", "UTF-8"),
    (b"/a\0\0", "no type tag"),
    (b"/a\0\0x\0\0\0", "must start with ','"),
    (b"/a\0\0,q\0\0", "unsupported type tag"),
    (b"/a\0\0,[i]\0\0\0\0", "unsupported type tag"),
    (b"/a\0\0,i\0\0", "run past"),
    (b"/a\0\0,i\0\0\0\0\0\0\0\0\0\0", "after the last argument"),
    (b"/a\0\0,b\0\0" + struct.pack(">i", -4), "negative blob"),
    (b"/a\0\0,b\0\0" + struct.pack(">i", 4000), "run past"),
    (b"/a b\0\0\0\0,\0\0\0", "spaces"),
])
def test_malformed_packets_are_rejected(packet, message):
    with pytest.raises(OscPacketError, match=message):
        check_datagram(packet)


def test_nesting_is_limited():
    packet = osc_message("/a")
    for _ in range(5):
        packet = bundle(packet)
    with pytest.raises(OscPacketError, match="nested deeper"):
        check_datagram(packet)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_never_escape_as_other_errors(data):
    try:
        check_datagram(data)
    except OscPacketError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_whatever_passes_the_check_python_osc_can_parse(data):
    from pythonosc.osc_packet import OscPacket

    base = bytearray(bundle(osc_message("/depthfusion/steps", 3), osc_message("/depthfusion/prompt", "a room")))
    for _ in range(data.draw(st.integers(1, 4))):
        index = data.draw(st.integers(0, len(base) - 1))
        base[index] = data.draw(st.integers(0, 255))
    try:
        check_datagram(bytes(base))
    except OscPacketError:
        return
    OscPacket(bytes(base))  # must not raise or hang
