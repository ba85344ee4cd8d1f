"""What the page and the web server say to each other over the WebSocket.

Browser → server: text, one JSON object ``{"id"?, "cmd", "args"?}`` of at most 64 KiB. ``cmd`` is one of
COMMANDS; ``args`` are checked here against the one schema (td_bridge.params) before anything is forwarded to the
generator's command socket, which checks them again. ``display`` is the page's own: display and view settings for
this connection (DISPLAY_PARAMS, VIEW_PARAMS).

Server → browser: text JSON (``reply``, ``view``, ``status``, ``progress``, ``error``) and binary frames:
a little-endian uint32 header length, the header JSON, RGB (H·W·3 bytes) and depth (H·W little-endian uint16),
both with row 0 at the bottom, as the component's textures (td_bridge.top_frames.to_top).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import Any, Mapping

from td_bridge import protocol as wire
from td_bridge.params import (DISPLAY_PARAMS, GENERATION_PARAMS, LIVE_PARAMS, VIEW_PARAMS, Param, ParamError,
                              coerce_given, find_param, validate_all)
from td_bridge.render_setup import clip_range, shader_uniforms
from td_bridge.top_frames import to_top

from ..frames import display_for_frame

MAX_MESSAGE_BYTES = wire.MAX_REQUEST_BYTES
LIBRARY_LIMIT = 200  # frames a page lists at once
SEARCH = Param("search", str, "", "Text in a kept frame's prompt or cue.", max_length=200)
LIMIT = Param("limit", int, 50, "Frames to list.", minimum=1, maximum=LIBRARY_LIMIT)
ON = Param("on", bool, False, "Live session on or off.")
CUE = find_param("cue", GENERATION_PARAMS)
HEADER_FIELDS = ("frame_id", "kind", "seq", "prompt", "seed", "model", "backend", "created_at")


class MessageError(ValueError):
    """A message from the page is malformed or asks for something not allowed."""


@dataclass(frozen=True)
class Command:
    """A checked request from the page: ``cmd`` with schema-valid ``args``; ``id`` echoed in the reply."""

    id: str | None
    cmd: str
    args: dict[str, Any]


def _params(args: Mapping[str, Any], params: tuple[Param, ...]) -> dict[str, Any]:
    """Only the values given, each coerced by its schema parameter; all problems in one MessageError."""
    try:
        return coerce_given(args, params)
    except ParamError as exc:
        raise MessageError(str(exc)) from None


def _job_id(args: Mapping[str, Any], required: bool) -> dict[str, Any]:
    if set(args) - {"job_id"}:
        raise MessageError(f"unknown arguments: {', '.join(sorted(set(args) - {'job_id'}))}")
    if "job_id" not in args:
        if required:
            raise MessageError("job_id is required")
        return {}
    if not wire.is_valid_id(args["job_id"]):
        raise MessageError("job_id: not a valid id")
    return {"job_id": args["job_id"]}


def _recall(args: Mapping[str, Any]) -> dict[str, Any]:
    if len(args) != 1 or not set(args) <= {"frame_id", "cue"}:
        raise MessageError("recall takes one of frame_id or cue")
    if "frame_id" in args:
        if not wire.is_valid_id(args["frame_id"]):
            raise MessageError("frame_id: not a valid id")
        return {"frame_id": args["frame_id"]}
    cue = _params(args, (CUE,))
    if not cue["cue"]:
        raise MessageError("cue: empty")
    return cue


def _no_args(args: Mapping[str, Any]) -> dict[str, Any]:
    if args:
        raise MessageError("takes no arguments")
    return {}


CHECKS = {
    "generate": lambda args: _params(args, GENERATION_PARAMS),
    "live": lambda args: _params(args, (ON, *GENERATION_PARAMS, *LIVE_PARAMS)),
    "cancel": lambda args: _job_id(args, required=False),
    "job": lambda args: _job_id(args, required=True),
    "status": _no_args,
    "library": lambda args: _params(args, (SEARCH, LIMIT)),
    "recall": _recall,
    "display": lambda args: _params(args, (*DISPLAY_PARAMS, *VIEW_PARAMS)),
}
COMMANDS = tuple(CHECKS)


def parse_command(text: str) -> Command:
    """The page's request, checked: MessageError says what is wrong."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_MESSAGE_BYTES:
        raise MessageError(f"message longer than {MAX_MESSAGE_BYTES} bytes")
    try:
        message = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise MessageError(f"not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise MessageError("a message is a JSON object")
    unknown = set(message) - {"id", "cmd", "args"}
    if unknown:
        raise MessageError(f"unknown fields: {', '.join(sorted(map(str, unknown)))[:200]}")
    request_id = message.get("id")
    if request_id is not None and not wire.is_valid_id(request_id):
        raise MessageError("id: 1-64 characters of A-Z a-z 0-9 . _ : -")
    cmd, args = message.get("cmd"), message.get("args", {})
    if cmd not in CHECKS:
        raise MessageError(f"cmd must be one of {', '.join(COMMANDS)}")
    if not isinstance(args, dict):
        raise MessageError("args must be a JSON object")
    try:
        return Command(request_id, cmd, CHECKS[cmd](args))
    except MessageError as exc:
        raise MessageError(f"{cmd}: {exc}") from None


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def text(kind: str, **fields: Any) -> str:
    """A server → page JSON message of type ``kind``."""
    return json.dumps({"type": kind, **fields}, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@dataclass(frozen=True)
class PackedFrame:
    """A frame ready for the page: the binary message, its header and the pole depths (uPoles)."""

    data: bytes
    meta: dict[str, Any]
    poles: tuple[float, float]


def pack_frame(frame: wire.Frame) -> PackedFrame:
    """The binary WebSocket message of a decoded frame (rows bottom first, as the shader samples them)."""
    top = to_top(frame)
    header = {key: frame.meta[key] for key in HEADER_FIELDS if key in frame.meta}
    header.update(width=frame.width, height=frame.height, poles=list(top.poles))
    encoded = wire.encode_json(header)
    depth = top.depth.astype("<u2", copy=False)
    data = b"".join((struct.pack("<I", len(encoded)), encoded, top.rgb.tobytes(), depth.tobytes()))
    return PackedFrame(data, dict(frame.meta), top.poles)


def view_message(settings: Mapping[str, Any], frame: PackedFrame | None) -> str:
    """Display and view settings in force for a frame (metric mapping takes its recorded near/far unless given),
    with the shader's uniforms and camera clip planes worked out by td_bridge as for the component."""
    given_display = {k: v for k, v in settings.items() if any(p.name == k for p in DISPLAY_PARAMS)}
    given_view = {k: v for k, v in settings.items() if any(p.name == k for p in VIEW_PARAMS)}
    display = display_for_frame(given_display, frame.meta if frame else {})
    display, view = validate_all((display, DISPLAY_PARAMS), (given_view, VIEW_PARAMS))
    uniforms = shader_uniforms(display, view["edges"], frame.poles if frame else (0.5, 0.5))
    return text("view", display=display, view=view, uniforms=uniforms, clip=list(clip_range(display, view)))
