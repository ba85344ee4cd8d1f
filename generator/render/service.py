"""Previews for the generator server: the ``render`` command drawn on a thread of its own.

The command loop must never wait for a render (seconds on a CPU), so it hands each request over with the
identity of the client that asked, and the render thread — the only one that touches its OpenGL context —
pushes the finished reply (JSON, then the PNG) to the server's worker socket, from which the command loop
sends it. At most ``MAX_WAITING`` renders wait; more are refused with ``queue_full``.
"""

from __future__ import annotations

import io
import logging
import queue
import threading
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from td_bridge import protocol as wire
from td_bridge.params import DISPLAY_PARAMS, VIEW_PARAMS, ParamError, validate

from ..frames import display_for_frame
from .gl import GLUnavailable, create_context
from .views import VIEWS, Renderer, output_size

log = logging.getLogger("depthfusion.render")

MAX_WAITING = 4
MAX_PIXELS = 4096 * 4096  # a preview no larger than a headset's ODS image
FRAME_KEYS = ("frame_id", "cue", "name")


class RenderQueueFull(Exception):
    """More previews are waiting than the render thread takes."""


@dataclass(frozen=True)
class RenderRequest:
    request_id: Any
    frame_id: str
    rgb: np.ndarray
    depth: np.ndarray
    view_name: str
    display: dict[str, Any]
    view: dict[str, Any]


def render_request(request_id: Any, frame_id: str, frame: wire.Frame, args: Mapping[str, Any]) -> RenderRequest:
    """A checked request: ``view`` (one of VIEWS, default sbs) and any display or view parameters; the frame's
    recorded near/far for metric mapping unless given. ParamError names every problem."""
    args = dict(args)
    view_name = args.pop("view", "sbs")
    if view_name not in VIEWS:
        raise ParamError(f"view: {view_name!r} is not one of {', '.join(VIEWS)}")
    display_names = {p.name for p in DISPLAY_PARAMS}
    problems = []
    try:
        display = display_for_frame({k: v for k, v in args.items() if k in display_names}, frame.meta)
    except ParamError as exc:
        problems.append(str(exc))
    try:
        view = validate({k: v for k, v in args.items() if k not in display_names}, VIEW_PARAMS)
    except ParamError as exc:
        problems.append(str(exc))
    if problems:
        raise ParamError("; ".join(problems))
    width, height = output_size(view_name, view)
    if width * height > MAX_PIXELS:
        raise ParamError(f"a {view_name} preview of {width}x{height} is larger than {MAX_PIXELS} pixels")
    return RenderRequest(request_id, frame_id, frame.rgb, frame.depth, view_name, display, view)


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)  # fast: a preview goes out at once
    return buffer.getvalue()


class RenderService:
    """The render thread; replies go to ``address`` (an inproc PULL) as [b"rendered", identity, envelope flag,
    reply, PNG?]."""

    def __init__(self, zmq_context: Any, address: str) -> None:
        self._queue: queue.Queue[tuple[tuple[bytes, list[bytes]], RenderRequest]] = queue.Queue(MAX_WAITING)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(zmq_context, address), name="depthfusion-render",
                                        daemon=True)
        self._thread.start()

    def submit(self, caller: tuple[bytes, list[bytes]], request: RenderRequest) -> None:
        try:
            self._queue.put_nowait((caller, request))
        except queue.Full:
            raise RenderQueueFull(f"{MAX_WAITING} previews are already waiting") from None

    def close(self, timeout: float) -> bool:
        """Stop after the render in progress; True when the thread has ended within ``timeout``."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self, zmq_context: Any, address: str) -> None:
        import zmq

        push = zmq_context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(address)
        ctx: Any = None
        try:
            while not self._stop.is_set():
                try:
                    (identity, envelope), request = self._queue.get(timeout=0.2)
                except queue.Empty:
                    continue
                try:
                    ctx = ctx or create_context()
                    parts = self._render(ctx, request)
                except GLUnavailable as exc:
                    parts = [wire.encode_error(request.request_id, "unavailable", str(exc))]
                except Exception as exc:  # a failed preview must not stop the thread
                    log.exception("render failed")
                    parts = [wire.encode_error(request.request_id, "internal", f"{type(exc).__name__}: {exc}")]
                push.send_multipart([b"rendered", identity, b"1" if envelope else b"", *parts])
        finally:
            push.close()
            if ctx is not None:
                ctx.release()

    @staticmethod
    def _render(ctx: Any, request: RenderRequest) -> list[bytes]:
        with Renderer(request.rgb, request.depth, request.display, request.view["edges"], ctx=ctx) as renderer:
            image = renderer.render(request.view_name, request.view)
        result = {"frame_id": request.frame_id, "view": request.view_name, "width": image.shape[1],
                  "height": image.shape[0], "format": "png"}
        return [wire.encode_reply(request.request_id, result), png_bytes(image)]
