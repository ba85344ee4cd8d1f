import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from td_bridge import protocol as wire


def make_frame(width=8, height=4, seed=0, **meta):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    depth = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    header = wire.frame_header(rgb, depth, frame_id="f-1", seq=3, meta={"prompt": "p", **meta}, near=1.0, far=9.0)
    return rgb, depth, header


def as_bytes(parts):
    return [bytes(p) for p in parts]


@settings(max_examples=40, deadline=None)
@given(width=st.integers(1, 64), height=st.integers(1, 64), seed=st.integers(0, 2**32 - 1))
def test_frame_round_trip(width, height, seed):
    rgb, depth, header = make_frame(width, height, seed)
    frame = wire.decode_frame(as_bytes(wire.encode_frame(rgb, depth, header)))
    np.testing.assert_array_equal(frame.rgb, rgb)
    np.testing.assert_array_equal(frame.depth, depth)
    assert frame.depth.dtype == np.uint16 and frame.rgb.dtype == np.uint8
    assert frame.meta["prompt"] == "p" and frame.frame_id == "f-1" and frame.seq == 3
    assert (frame.width, frame.height) == (width, height)
    assert frame.meta["depth"]["near"] == 1.0 and frame.meta["depth"]["encoding"] == "inverse_relative"


def test_depth_is_little_endian_on_the_wire():
    rgb, depth, header = make_frame()
    depth[0, 0] = 0x0102
    parts = as_bytes(wire.encode_frame(rgb, depth, header))
    assert parts[3][:2] == b"\x02\x01"
    assert wire.decode_frame(parts).depth[0, 0] == 0x0102


def test_big_endian_depth_is_sent_little_endian():
    rgb, depth, header = make_frame()
    frame = wire.decode_frame(as_bytes(wire.encode_frame(rgb, depth.astype(">u2"), header)))
    np.testing.assert_array_equal(frame.depth, depth)


def test_rows_start_at_the_top():
    rgb, depth, header = make_frame(width=2, height=2)
    rgb[0] = 255
    rgb[1] = 0
    parts = as_bytes(wire.encode_frame(rgb, depth, header))
    assert parts[2][:6] == b"\xff" * 6 and header["origin"] == "top-left"


def mutate(change):
    rgb, depth, header = make_frame()
    header = json.loads(json.dumps(header))
    parts = as_bytes(wire.encode_frame(rgb, depth, header))
    parts = change(header, parts) or parts
    if parts[1] is None:
        parts[1] = json.dumps(header).encode()
    return parts


def set_header(**changes):
    def change(header, parts):
        for key, value in changes.items():
            if value is KeyError:
                header.pop(key)
            else:
                header[key] = value
        parts[1] = None
    return change


def set_nested(section, key, value):
    def change(header, parts):
        header[section][key] = value
        parts[1] = None
    return change


def replace_part(index, data):
    def change(header, parts):
        parts[index] = data
    return change


MALFORMED = {
    "wrong topic": (replace_part(0, b"status"), "not a frame"),
    "too few parts": (lambda h, p: p[:3], "3 parts"),
    "too many parts": (lambda h, p: p + [b"x"], "3 parts"),
    "header not json": (replace_part(1, b"{nope"), "not valid UTF-8 JSON"),
    "header not utf8": (replace_part(1, b"\xff\xfe"), "not valid UTF-8 JSON"),
    "header is a list": (replace_part(1, b"[1,2]"), "must be a JSON object"),
    "header NaN": (replace_part(1, b'{"protocol": NaN}'), "NaN"),
    "header too big": (replace_part(1, b" " * (wire.MAX_HEADER_BYTES + 1)), "limit"),
    "version 2": (set_header(protocol=2), "version 2"),
    "version missing": (set_header(protocol=KeyError), "version None"),
    "version as bool": (set_header(protocol=True), "version True"),
    "kind": (set_header(kind="event"), "'kind'"),
    "frame id missing": (set_header(frame_id=KeyError), "frame_id"),
    "frame id unsafe": (set_header(frame_id="../../etc"), "frame_id"),
    "seq negative": (set_header(seq=-1), "seq"),
    "seq float": (set_header(seq=1.5), "seq"),
    "width zero": (set_header(width=0), "width"),
    "width string": (set_header(width="8"), "width"),
    "width bool": (set_header(width=True), "width"),
    "height huge": (set_header(height=wire.MAX_SIDE + 1), "height"),
    "too many pixels": (set_header(width=wire.MAX_SIDE, height=wire.MAX_SIDE), "limits"),
    "origin": (set_header(origin="bottom-left"), "origin"),
    "rgb missing": (set_header(rgb=KeyError), "'rgb'"),
    "rgb dtype": (set_nested("rgb", "dtype", "float32"), "dtype"),
    "rgb layout": (set_nested("rgb", "layout", "CHW"), "layout"),
    "rgb channels": (set_nested("rgb", "channels", 4), "channels"),
    "depth dtype": (set_nested("depth", "dtype", "uint8"), "dtype"),
    "depth byteorder": (set_nested("depth", "byteorder", "big"), "byteorder"),
    "depth encoding": (set_nested("depth", "encoding", "metric"), "encoding"),
    "depth near negative": (set_nested("depth", "near", -1), "near"),
    "rgb bytes declared wrong": (set_nested("rgb", "bytes", 5), "declares 5 bytes"),
    "depth bytes declared wrong": (set_nested("depth", "bytes", 7), "declares 7 bytes"),
    "rgb part short": (lambda h, p: p[:2] + [p[2][:-1], p[3]], "rgb part has"),
    "depth part long": (lambda h, p: p[:3] + [p[3] + b"\0\0"], "depth part has"),
    "size claims more than sent": (set_header(width=16), "declares"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_frames_raise_protocol_error(case):
    change, message = MALFORMED[case]
    with pytest.raises(wire.ProtocolError, match=message):
        wire.decode_frame(mutate(change))


def test_version_error_names_both_versions():
    with pytest.raises(wire.ProtocolError) as info:
        wire.decode_frame(mutate(set_header(protocol=7)))
    assert "version 7" in str(info.value) and f"version {wire.PROTOCOL_VERSION}" in str(info.value)


@pytest.mark.parametrize(
    "rgb, depth",
    [
        (np.zeros((4, 8, 3), np.float32), np.zeros((4, 8), np.uint16)),
        (np.zeros((4, 8, 4), np.uint8), np.zeros((4, 8), np.uint16)),
        (np.zeros((4, 8, 3), np.uint8), np.zeros((4, 8), np.float32)),
        (np.zeros((4, 8, 3), np.uint8), np.zeros((4, 9), np.uint16)),
        (np.zeros((0, 8, 3), np.uint8), np.zeros((0, 8), np.uint16)),
        ([[1, 2, 3]], np.zeros((1, 1), np.uint16)),
    ],
)
def test_encoder_rejects_bad_arrays(rgb, depth):
    with pytest.raises(wire.ProtocolError):
        wire.encode_frame(rgb, depth, {})


def test_encoder_accepts_non_contiguous_arrays():
    rgb, depth, header = make_frame(width=8, height=8)
    view_rgb, view_depth = rgb[:, ::2], depth[:, ::2]
    header = wire.frame_header(view_rgb, view_depth, frame_id="f-2", seq=0)
    frame = wire.decode_frame(as_bytes(wire.encode_frame(view_rgb, view_depth, header)))
    np.testing.assert_array_equal(frame.rgb, view_rgb)
    np.testing.assert_array_equal(frame.depth, view_depth)


def test_events_round_trip_and_check_version():
    parts = wire.encode_event(wire.TOPIC_PROGRESS, {"step": 3, "total": 10})
    event = wire.decode_event(parts)
    assert event["kind"] == "progress" and event["step"] == 3
    with pytest.raises(wire.ProtocolError, match="version 9"):
        wire.decode_event([wire.TOPIC_STATUS, b'{"protocol": 9}'])
    with pytest.raises(wire.ProtocolError):
        wire.decode_event([b"frame", b"{}"])
    with pytest.raises(ValueError):
        wire.encode_event(b"other", {})


def test_requests_and_replies():
    request = wire.decode_request(wire.encode_request("a-1", "ping"))
    assert request == {"protocol": 1, "id": "a-1", "cmd": "ping", "args": {}}
    reply = wire.decode_reply(wire.encode_reply("a-1", {"x": 1}))
    assert reply["ok"] and reply["result"] == {"x": 1}
    error = wire.decode_reply(wire.encode_error("a-1", "bad_params", "no"))
    assert not error["ok"] and error["error"] == {"code": "bad_params", "message": "no"}


@pytest.mark.parametrize(
    "body, message",
    [
        (b'{"protocol": 1, "id": "x", "args": {}}', "'cmd'"),
        (b'{"protocol": 1, "id": "x", "cmd": ""}', "'cmd'"),
        (b'{"protocol": 1, "id": "x", "cmd": "ping", "args": [1]}', "'args'"),
        (b'{"protocol": 1, "id": "bad id!", "cmd": "ping"}', "'id'"),
        (b'{"protocol": 1, "id": 5, "cmd": "ping"}', "'id'"),
        (b'{"protocol": 0, "id": "x", "cmd": "ping"}', "version 0"),
        (b'"ping"', "JSON object"),
        (b"[" * 100000, "limit|JSON"),
    ],
)
def test_bad_requests(body, message):
    with pytest.raises(wire.ProtocolError, match=message):
        wire.decode_request(body)


def test_deeply_nested_request_is_rejected_not_crashing():
    body = b'{"protocol":1,"id":"x","cmd":"ping","args":' + b'{"a":' * 10000 + b"1" + b"}" * 10001
    with pytest.raises(wire.ProtocolError):
        wire.decode_request(body)


def test_encode_header_refuses_what_a_client_must_reject():
    fits = {"notes": "ü" * ((wire.MAX_HEADER_BYTES - wire.STAMP_BYTES - 20) // 2)}  # UTF-8, not \\u escapes
    assert len(wire.encode_header(fits, reserve=wire.STAMP_BYTES)) + wire.STAMP_BYTES <= wire.MAX_HEADER_BYTES
    with pytest.raises(wire.ProtocolError, match="the limit is 65536"):
        wire.encode_header({"notes": "ü" * (wire.MAX_HEADER_BYTES // 2)})
    with pytest.raises(wire.ProtocolError, match=r"\+256 to come"):
        wire.encode_header({"notes": "x" * (wire.MAX_HEADER_BYTES - 100)}, reserve=wire.STAMP_BYTES)
