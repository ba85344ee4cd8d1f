"""Frames in the layout TouchDesigner's Script TOP takes (TD-free, so it is tested here).

TouchDesigner images start at the bottom-left; on the wire row 0 is the top. ``to_top`` flips
the rows and makes each array C-contiguous, with the channel axis ``copyNumpyArray`` expects
((H, W, C), C = 1..4). Give it to ``FrameReceiver(prepare=to_top)`` and the copies happen on
the receiver's thread: TouchDesigner's main thread only picks up finished arrays. ``poles``
are the shader's ``uPoles`` uniform (touchdesigner/shaders/depthfusion_common.glsl). ``from_top`` goes the
other way: a TOP's ``numpyArray()`` image as an upload (Depth from TOP, the live session's input);
``mask_from_top`` makes a remix mask of one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .protocol import Frame


@dataclass(frozen=True)
class TopFrame(Frame):
    """A Frame in TouchDesigner's layout: ``rgb`` (H, W, 3) uint8 and ``depth`` (H, W, 1) uint16,
    row 0 at the bottom."""

    poles: tuple[float, float] = (0.5, 0.5)  # depth (0..1) at the north and south pole


def to_top(frame: Frame) -> TopFrame:
    """The frame flipped to bottom-up rows, in contiguous arrays a Script TOP can copy."""
    rgb = np.ascontiguousarray(frame.rgb[::-1])
    depth = np.ascontiguousarray(frame.depth[::-1]).reshape(frame.depth.shape + (1,))
    scale = np.float32(1.0 / 65535.0)  # as td_bridge.geometry.Displacer samples uint16 depth
    poles = tuple(float((frame.depth[row].astype(np.float32) * scale).mean()) for row in (0, -1))
    return TopFrame(rgb, depth, frame.meta, poles)


def from_top(pixels: np.ndarray) -> np.ndarray:
    """A TOP's image as ``numpyArray()`` gives it (float in [0, 1], (H, W, C) with C = 1..4, row 0 at the bottom)
    as an upload: (H, W, 3) uint8, rows top first. One or two channels become grey from the first; alpha is
    dropped."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or not 1 <= pixels.shape[2] <= 4:
        raise ValueError(f"a TOP's image is (H, W, 1-4), got shape {pixels.shape}")
    pixels = np.repeat(pixels[..., :1], 3, axis=2) if pixels.shape[2] < 3 else pixels[..., :3]
    return np.ascontiguousarray(np.round(np.clip(pixels[::-1], 0.0, 1.0) * 255.0).astype(np.uint8))


def mask_from_top(pixels: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
    """A TOP's image as ``numpyArray()`` gives it as a remix mask: (H, W) uint8, rows top first, from its first
    channel (red; a Monochrome TOP's value): white repaints, black keeps. ``size`` (width, height) resamples it to
    the frame's size by nearest neighbour, so any TOP resolution of the frame's shape fits."""
    pixels = np.asarray(pixels)
    if pixels.ndim != 3 or not 1 <= pixels.shape[2] <= 4 or pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"a TOP's image is (H, W, 1-4), got shape {pixels.shape}")
    mask = pixels[::-1, :, 0]
    if size is not None:
        width, height = size
        rows = ((np.arange(height) + 0.5) * mask.shape[0] / height).astype(np.intp)
        cols = ((np.arange(width) + 0.5) * mask.shape[1] / width).astype(np.intp)
        mask = mask[rows[:, None], cols[None, :]]
    return np.ascontiguousarray(np.round(np.clip(mask, 0.0, 1.0) * 255.0).astype(np.uint8))
