"""DepthFusion wire protocol, version 1 (language-neutral description: docs/protocol.md).

Every ZeroMQ message is multipart; part 0 names its kind:

* ``frame``    -> [b"frame", header JSON, RGB bytes, depth bytes]; the header's ``kind`` is ``frame``, or
  ``live`` for a frame of the live session (never in the frame library)
* ``progress`` -> [b"progress", event JSON]
* ``status``   -> [b"status", event JSON]

RGB is uint8 (H, W, 3), depth is little-endian uint16 (H, W) holding relative inverse
depth (65535 = nearest), both row-major with row 0 at the top. Requests and replies are
single JSON objects; a ``get_frame`` reply is followed by the three frame parts.
Nothing is ever unpickled: JSON and raw bytes only, checked before use.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

PROTOCOL_VERSION = 1

TOPIC_FRAME = b"frame"
TOPIC_PROGRESS = b"progress"
TOPIC_STATUS = b"status"
EVENT_TOPICS = (TOPIC_PROGRESS, TOPIC_STATUS)

MAX_HEADER_BYTES = 64 * 1024
STAMP_BYTES = 256  # room a header keeps for what the publisher adds: seq, server_id, sent_at, recalled_at
MAX_REQUEST_BYTES = 64 * 1024
MAX_REPLY_BYTES = 1024 * 1024  # a reply's JSON part (a get_frame reply's frame parts have their own limits)
MAX_SIDE = 16384
MAX_PIXELS = 8192 * 8192
MAX_ID_LENGTH = 64
MAX_UPLOAD_PIXELS = 8192 * 4096  # an image sent with a request (estimate): up to an 8K panorama
UPLOAD_FORMAT = "rgb8"  # (H, W, 3) uint8, rows top first, no padding
MASK_FORMAT = "gray8"  # (H, W) uint8, rows top first: 255 repaints, 0 keeps (a remix's mask image)
UPLOAD_CHANNELS = {UPLOAD_FORMAT: 3, MASK_FORMAT: 1}
FRAME_KINDS = ("frame", "live")  # a frame header's kind: a kept frame, or a live session's frame

DEPTH_ENCODING = "inverse_relative"
DEPTH_MAX = 65535

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")


class ProtocolError(ValueError):
    """A message does not follow the DepthFusion wire protocol.

    ``request_id`` is set when the offending request carried a usable id, so the error
    reply can still name it.
    """

    request_id: str | None = None


@dataclass(frozen=True)
class Frame:
    """One RGBD frame: ``rgb`` (H, W, 3) uint8, ``depth`` (H, W) uint16, ``meta`` the header."""

    rgb: np.ndarray
    depth: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def frame_id(self) -> str:
        return self.meta["frame_id"]

    @property
    def seq(self) -> int:
        return self.meta["seq"]

    @property
    def live(self) -> bool:
        """A frame of the live session (not in the frame library: Keep stores it)."""
        return self.meta.get("kind") == "live"

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]


def is_valid_id(value: Any) -> bool:
    """True for ids (frame ids, job ids) this protocol accepts: 1-64 safe characters."""
    return isinstance(value, str) and _ID_RE.match(value) is not None


def encode_json(obj: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON, as every message of this protocol is written."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def _load_json_object(data: bytes, what: str, limit: int) -> dict[str, Any]:
    if len(data) > limit:
        raise ProtocolError(f"{what} is {len(data)} bytes; the limit is {limit}")
    try:
        obj = json.loads(bytes(data).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"{what} is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def _reject_constant(name: str) -> None:
    raise ProtocolError(f"JSON constant {name} is not allowed")


def check_version(obj: dict[str, Any], what: str) -> None:
    """Raise ProtocolError unless ``obj['protocol']`` is this module's version."""
    version = obj.get("protocol")
    if version != PROTOCOL_VERSION or isinstance(version, bool):
        raise ProtocolError(
            f"{what} uses protocol version {version!r}; this side speaks version {PROTOCOL_VERSION}"
        )


def _int_field(obj: dict[str, Any], key: str, lo: int, hi: int, what: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"{what} field '{key}' must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ProtocolError(f"{what} field '{key}' = {value} is outside [{lo}, {hi}]")
    return value


def _dict_field(obj: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"{what} field '{key}' must be an object, got {value!r}")
    return value


def _expect(obj: dict[str, Any], key: str, expected: Any, what: str) -> None:
    if obj.get(key) != expected:
        raise ProtocolError(f"{what} field '{key}' must be {expected!r}, got {obj.get(key)!r}")


# ---------------------------------------------------------------- frames


def frame_header(
    rgb: np.ndarray,
    depth: np.ndarray,
    *,
    frame_id: str,
    seq: int,
    meta: dict[str, Any] | None = None,
    near: float | None = None,
    far: float | None = None,
    kind: str = "frame",
) -> dict[str, Any]:
    """Build a frame header (``kind``: one of FRAME_KINDS); ``near``/``far`` give the metric range of the depth
    when known."""
    if kind not in FRAME_KINDS:
        raise ValueError(f"a frame's kind is one of {FRAME_KINDS}, got {kind!r}")
    height, width = depth.shape
    header: dict[str, Any] = dict(meta or {})
    header.update(
        protocol=PROTOCOL_VERSION,
        kind=kind,
        frame_id=frame_id,
        seq=seq,
        width=width,
        height=height,
        origin="top-left",
        rgb={"dtype": "uint8", "layout": "HWC", "channels": 3, "bytes": rgb.nbytes},
        depth={
            "dtype": "uint16",
            "byteorder": "little",
            "encoding": DEPTH_ENCODING,
            "bytes": depth.nbytes,
            "near": near,
            "far": far,
        },
    )
    return header


def check_arrays(rgb: np.ndarray, depth: np.ndarray) -> None:
    """Raise ProtocolError unless rgb is (H, W, 3) uint8 and depth (H, W) uint16, H, W in bounds."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ProtocolError(f"rgb must be a (H, W, 3) uint8 array, got {_describe(rgb)}")
    if not isinstance(depth, np.ndarray) or depth.dtype.newbyteorder("=") != np.uint16 or depth.ndim != 2:
        raise ProtocolError(f"depth must be a (H, W) uint16 array, got {_describe(depth)}")
    if rgb.shape[:2] != depth.shape:
        raise ProtocolError(f"rgb {rgb.shape[:2]} and depth {depth.shape} sizes differ")
    _check_size(depth.shape[1], depth.shape[0])


def _describe(a: Any) -> str:
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _check_size(width: int, height: int) -> None:
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE) or width * height > MAX_PIXELS:
        raise ProtocolError(
            f"frame size {width}x{height} is outside the limits (sides 1..{MAX_SIDE}, "
            f"at most {MAX_PIXELS} pixels)"
        )


def encode_header(header: dict[str, Any], reserve: int = 0) -> bytes:
    """The header as UTF-8 JSON; ProtocolError if it (plus ``reserve`` bytes still to come) would
    exceed :data:`MAX_HEADER_BYTES`, so no frame a conforming client must reject ever leaves."""
    data = encode_json(header)
    if len(data) + reserve > MAX_HEADER_BYTES:
        raise ProtocolError(f"frame header is {len(data)} bytes (+{reserve} to come); the limit is {MAX_HEADER_BYTES}")
    return data


def encode_frame_parts(rgb: np.ndarray, depth: np.ndarray, header: dict[str, Any]) -> list[Any]:
    """Parts after the topic: [header JSON, RGB buffer, depth buffer] (buffers not copied)."""
    check_arrays(rgb, depth)
    return [
        encode_header(header),
        memoryview(np.ascontiguousarray(rgb)).cast("B"),
        memoryview(np.ascontiguousarray(depth, dtype="<u2")).cast("B"),
    ]


def encode_frame(rgb: np.ndarray, depth: np.ndarray, header: dict[str, Any]) -> list[Any]:
    """A complete frame message: [b"frame", header, RGB, depth]."""
    return [TOPIC_FRAME, *encode_frame_parts(rgb, depth, header)]


def decode_frame_parts(parts: Sequence[Any]) -> Frame:
    """Decode [header, RGB, depth]; every size is checked before a buffer is viewed."""
    if len(parts) != 3:
        raise ProtocolError(f"a frame has 3 parts after its topic, got {len(parts)}")
    header_raw, rgb_raw, depth_raw = (memoryview(p) for p in parts)
    header = _load_json_object(header_raw.tobytes(), "frame header", MAX_HEADER_BYTES)
    check_version(header, "frame")
    if header.get("kind") not in FRAME_KINDS:
        raise ProtocolError(f"frame header field 'kind' must be one of {', '.join(FRAME_KINDS)}, "
                            f"got {header.get('kind')!r}")
    if not is_valid_id(header.get("frame_id")):
        raise ProtocolError(f"frame header field 'frame_id' is not a valid id: {header.get('frame_id')!r}")
    _int_field(header, "seq", 0, 2**63 - 1, "frame header")
    width = _int_field(header, "width", 1, MAX_SIDE, "frame header")
    height = _int_field(header, "height", 1, MAX_SIDE, "frame header")
    _check_size(width, height)
    _expect(header, "origin", "top-left", "frame header")

    rgb_info = _dict_field(header, "rgb", "frame header")
    for key, value in (("dtype", "uint8"), ("layout", "HWC"), ("channels", 3)):
        _expect(rgb_info, key, value, "frame header 'rgb'")
    depth_info = _dict_field(header, "depth", "frame header")
    for key, value in (("dtype", "uint16"), ("byteorder", "little"), ("encoding", DEPTH_ENCODING)):
        _expect(depth_info, key, value, "frame header 'depth'")
    for key in ("near", "far"):
        value = depth_info.get(key)
        if value is not None and not (_is_number(value) and value > 0):
            raise ProtocolError(f"frame header 'depth' field '{key}' must be a positive number or null")

    for name, info, raw, per_pixel in (("rgb", rgb_info, rgb_raw, 3), ("depth", depth_info, depth_raw, 2)):
        expected = width * height * per_pixel
        declared = _int_field(info, "bytes", 0, MAX_PIXELS * 3, f"frame header '{name}'")
        if declared != expected:
            raise ProtocolError(f"{name} declares {declared} bytes; {width}x{height} needs {expected}")
        if raw.nbytes != expected:
            raise ProtocolError(f"{name} part has {raw.nbytes} bytes; {width}x{height} needs {expected}")

    rgb = np.frombuffer(rgb_raw, dtype=np.uint8).reshape(height, width, 3)
    depth = np.frombuffer(depth_raw, dtype="<u2").reshape(height, width)
    if not np.little_endian:
        depth = depth.astype(np.uint16)
    return Frame(rgb=rgb, depth=depth, meta=header)


def decode_frame(parts: Sequence[Any]) -> Frame:
    """Decode a complete frame message [b"frame", header, RGB, depth]."""
    if not parts or bytes(parts[0]) != TOPIC_FRAME:
        raise ProtocolError("not a frame message")
    return decode_frame_parts(parts[1:])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------- events


def encode_event(topic: bytes, payload: dict[str, Any]) -> list[bytes]:
    """[topic, JSON] for a progress or status event."""
    if topic not in EVENT_TOPICS:
        raise ValueError(f"unknown event topic {topic!r}")
    body = {"protocol": PROTOCOL_VERSION, "kind": topic.decode(), **payload}
    return [topic, encode_json(body)]


def decode_event(parts: Sequence[Any]) -> dict[str, Any]:
    """Decode a progress or status event."""
    if len(parts) != 2 or bytes(parts[0]) not in EVENT_TOPICS:
        raise ProtocolError("not an event message")
    event = _load_json_object(bytes(parts[1]), "event", MAX_HEADER_BYTES)
    check_version(event, "event")
    return event


# ---------------------------------------------------------------- requests and replies


def encode_request(request_id: str, cmd: str, args: dict[str, Any] | None = None) -> bytes:
    return encode_json({"protocol": PROTOCOL_VERSION, "id": request_id, "cmd": cmd, "args": args or {}})


def decode_request(data: bytes) -> dict[str, Any]:
    """Decode and check a request; its ``id`` is checked first so an error reply can name it."""
    request = _load_json_object(data, "request", MAX_REQUEST_BYTES)
    if "id" in request and not is_valid_id(request["id"]):
        raise ProtocolError(f"request 'id' must be 1-{MAX_ID_LENGTH} letters, digits or ._:-")
    try:
        check_version(request, "request")
        if not isinstance(request.get("cmd"), str) or not request["cmd"]:
            raise ProtocolError("request field 'cmd' must be a non-empty string")
        if not isinstance(request.setdefault("args", {}), dict):
            raise ProtocolError("request field 'args' must be an object")
    except ProtocolError as exc:
        exc.request_id = request.get("id")
        raise
    return request


def encode_upload(rgb: np.ndarray) -> tuple[dict[str, Any], memoryview]:
    """The ``image`` argument and the data part of a request that carries an (H, W, 3) uint8 image."""
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ProtocolError(f"an uploaded image must be (H, W, 3) uint8, got {_describe(rgb)}")
    return _upload(rgb, UPLOAD_FORMAT)


def encode_mask(mask: np.ndarray) -> tuple[dict[str, Any], memoryview]:
    """The ``mask`` argument and the data part of a remix request that carries an (H, W) uint8 mask image."""
    if not isinstance(mask, np.ndarray) or mask.dtype != np.uint8 or mask.ndim != 2:
        raise ProtocolError(f"an uploaded mask must be (H, W) uint8, got {_describe(mask)}")
    return _upload(mask, MASK_FORMAT)


def _upload(pixels: np.ndarray, fmt: str) -> tuple[dict[str, Any], memoryview]:
    height, width = pixels.shape[:2]
    _check_upload_size(width, height)
    return {"width": width, "height": height, "format": fmt}, memoryview(np.ascontiguousarray(pixels)).cast("B")


def _check_upload_size(width: Any, height: Any) -> None:
    if not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SIDE for v in (width, height)):
        raise ProtocolError(f"an uploaded image's width and height must be integers in [1, {MAX_SIDE}]")
    if width * height > MAX_UPLOAD_PIXELS:
        raise ProtocolError(f"an uploaded image may have at most {MAX_UPLOAD_PIXELS:,} pixels, got {width}x{height}")


def decode_upload(image: Any, data: Any, fmt: str = UPLOAD_FORMAT, name: str = "image") -> np.ndarray:
    """The uint8 pixels of a request's ``name`` argument (``{width, height, format}``) and data part: (H, W, 3) for
    ``rgb8``, (H, W) for ``gray8``; sizes are checked before the buffer is touched."""
    if not isinstance(image, dict) or set(image) != {"width", "height", "format"}:
        raise ProtocolError(f"'{name}' must be {{\"width\", \"height\", \"format\"}}")
    if image["format"] != fmt:
        raise ProtocolError(f"'{name}' format must be {fmt!r}, got {image['format']!r}")
    width, height = image["width"], image["height"]
    _check_upload_size(width, height)
    channels = UPLOAD_CHANNELS[fmt]
    if data is None:
        raise ProtocolError(f"the {name}'s data part is missing: send [request, {fmt} bytes]")
    view = memoryview(data)
    expected = width * height * channels
    if view.nbytes != expected:
        raise ProtocolError(f"the {name} data has {view.nbytes} bytes; {width}x{height} {fmt} needs {expected}")
    pixels = np.frombuffer(view, dtype=np.uint8)
    return pixels.reshape(height, width, 3) if channels == 3 else pixels.reshape(height, width)


def encode_reply(request_id: str | None, result: dict[str, Any] | None = None) -> bytes:
    return encode_json({"protocol": PROTOCOL_VERSION, "id": request_id, "ok": True, "result": result or {}})


def encode_error(request_id: str | None, code: str, message: str) -> bytes:
    return encode_json(
        {"protocol": PROTOCOL_VERSION, "id": request_id, "ok": False, "error": {"code": code, "message": message}}
    )


def decode_reply(data: bytes) -> dict[str, Any]:
    reply = _load_json_object(data, "reply", MAX_REPLY_BYTES)
    check_version(reply, "reply")
    if not isinstance(reply.get("ok"), bool):
        raise ProtocolError("reply field 'ok' must be true or false")
    if not reply["ok"] and not isinstance(reply.get("error"), dict):
        raise ProtocolError("an error reply needs an 'error' object")
    return reply
