"""Camera paths through the scene and video files (PyAV, whose wheels carry FFmpeg and libx264).

A path moves the head inside the sphere so that parallax shows the depth, the way a 6DoF viewer does; each
path is one loop (the last frame leads back into the first): ``orbit`` circles the head position
horizontally, ``dolly`` moves forwards and back along the view direction, ``sway`` from side to side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from td_bridge import geometry as g

PATHS = ("orbit", "dolly", "sway")
MAX_SECONDS, MAX_FPS = 3600.0, 120


def head_positions(path: str, frames: int, amplitude: float, view: Mapping[str, Any]) -> np.ndarray:
    """(frames, 3) head positions along ``path``, ``amplitude`` metres from the view's head position, in the
    frame of the head turned by yaw."""
    if path not in PATHS:
        raise ValueError(f"path must be one of {', '.join(PATHS)}, got {path!r}")
    if not (isinstance(frames, int) and frames >= 1):
        raise ValueError(f"a video needs at least one frame, got {frames}")
    if not (np.isfinite(amplitude) and amplitude >= 0):
        raise ValueError(f"amplitude must be a non-negative number of metres, got {amplitude}")
    phase = 2 * np.pi * np.arange(frames) / frames
    zero = np.zeros_like(phase)
    local = {"orbit": np.stack([np.sin(phase), zero, 1 - np.cos(phase)], axis=-1) / 2,  # a circle through the start
             "dolly": np.stack([zero, zero, -np.sin(phase)], axis=-1),
             "sway": np.stack([np.sin(phase), zero, zero], axis=-1)}[path]
    head = np.array([view["head_x"], view["head_y"], view["head_z"]])
    return head + amplitude * local @ g.rotation_matrix(view["yaw"], 0.0).T


def check_timing(seconds: float, fps: int) -> int:
    """Frame count for a clip; ValueError for lengths or rates out of range."""
    if not (np.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
        raise ValueError(f"--seconds must be in (0, {MAX_SECONDS:g}], got {seconds}")
    if not (isinstance(fps, int) and 1 <= fps <= MAX_FPS):
        raise ValueError(f"--fps must be an integer in [1, {MAX_FPS}], got {fps}")
    return max(1, round(seconds * fps))


def write_video(path: str | Path, images: Iterable[np.ndarray], fps: int, crf: int = 18,
                on_frame: Callable[[], None] = lambda: None) -> int:
    """Encode (h, w, 3) uint8 images (even sizes) as H.264 (yuv420p) into an MP4; returns the frame count."""
    import av

    count = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for image in images:
            if stream is None:
                height, width = image.shape[:2]
                if width % 2 or height % 2:
                    raise ValueError(f"H.264 video needs an even width and height, got {width}x{height}")
                stream = container.add_stream("libx264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
                stream.options = {"crf": str(crf)}
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            container.mux(stream.encode(frame))
            count += 1
            on_frame()
        if stream is not None:
            container.mux(stream.encode(None))
    return count
