"""Depth encodings, depth → radius mappings and clean-up filters (numpy only; Pillow lazily).

DepthFusion depth is *relative inverse depth* d in [0, 1] (1 = nearest), carried as uint16
(65535 = 1.0). Two mappings turn it into the radius of a sphere vertex:

* linear (the DepthFusion paper's rule): r = R·(1 + s·(0.5 − d)); d = 1 pulls a vertex
  toward the origin, d = 0 pushes it out, d = 0.5 leaves it on the sphere of radius R;
  strength s ∈ [0, 2) keeps r > 0.
* metric: with a known range, r = 1 / (A·d + B), A = 1/near − 1/far, B = 1/far, so d = 1
  is ``near`` and d = 0 is ``far``.

Non-finite depth (NaN, ±inf) is replaced explicitly: by 0.5 for linear (the vertex stays on
the sphere) and by 0 for metric (the far limit); everything is clipped to [0, 1].

A new frame may crossfade in from the previous one (Blend Time): :func:`blend_depth` blends the two depths
before the mapping, so a halfway blend displaces to the radius of the mean depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

DEPTH_MAX = 65535
LINEAR, METRIC = "linear", "metric"
MAPPINGS = (LINEAR, METRIC)


def _check_range(near: float, far: float) -> None:
    if not (np.isfinite(near) and np.isfinite(far) and 0 < near < far):
        raise ValueError(f"need 0 < near < far (finite), got near={near}, far={far}")


def inverse_depth_from_distance(distance: np.ndarray, near: float, far: float) -> np.ndarray:
    """Relative inverse depth in [0, 1] for metric distances (clipped to [near, far]; NaN → far)."""
    _check_range(near, far)
    dist = np.nan_to_num(np.asarray(distance, dtype=np.float64), nan=far, posinf=far, neginf=near)
    dist = np.clip(dist, near, far)
    return (1.0 / dist - 1.0 / far) / (1.0 / near - 1.0 / far)


def distance_from_inverse_depth(d: np.ndarray, near: float, far: float) -> np.ndarray:
    """Metric distance for relative inverse depth ``d`` (clipped to [0, 1]; NaN → 0, i.e. far)."""
    _check_range(near, far)
    d = np.clip(np.nan_to_num(np.asarray(d, dtype=np.float64), nan=0.0), 0.0, 1.0)
    return 1.0 / ((1.0 / near - 1.0 / far) * d + 1.0 / far)


def to_uint16(d: np.ndarray) -> np.ndarray:
    """Quantise d in [0, 1] to uint16 (round to nearest; out-of-range clipped, NaN → 0)."""
    d = np.clip(np.nan_to_num(np.asarray(d, dtype=np.float64), nan=0.0), 0.0, 1.0)
    return np.rint(d * DEPTH_MAX).astype(np.uint16)


def from_uint16(depth16: np.ndarray) -> np.ndarray:
    """uint16 depth as float32 in [0, 1]."""
    return np.asarray(depth16, dtype=np.float32) / np.float32(DEPTH_MAX)


def write_depth_png(path: str | Path, depth16: np.ndarray) -> None:
    """Write (H, W) uint16 depth as a 16-bit greyscale PNG."""
    from PIL import Image

    depth16 = np.asarray(depth16)
    if depth16.dtype != np.uint16 or depth16.ndim != 2:
        raise ValueError(f"depth PNG needs a (H, W) uint16 array, got {depth16.dtype} {depth16.shape}")
    Image.fromarray(np.ascontiguousarray(depth16)).save(path, format="PNG")


def read_depth_png(path: str | Path) -> np.ndarray:
    """Read a 16-bit greyscale PNG as (H, W) uint16 (8-bit files are scaled by 257)."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            data = np.asarray(image)
            if data.min(initial=0) < 0 or data.max(initial=0) > DEPTH_MAX:
                raise ValueError(f"{path}: values outside the 16-bit range")
            return data.astype(np.uint16)
        if image.mode == "L":
            return np.asarray(image).astype(np.uint16) * 257
        raise ValueError(f"{path}: expected a greyscale depth PNG, got mode {image.mode}")


# ------------------------------------------------------------------ LDM3D encodings


def depth16_to_rgb8(depth16: np.ndarray) -> np.ndarray:
    """LDM3D's 3×8-bit packing of 16-bit depth: (unused 0, high byte, low byte), (H, W, 3) uint8."""
    depth16 = _as_uint16(depth16)
    packed = np.zeros(depth16.shape + (3,), dtype=np.uint8)
    packed[..., 1] = depth16 >> 8
    packed[..., 2] = depth16 & 0xFF
    return packed


def rgb8_to_depth16(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`depth16_to_rgb8`: 256·channel1 + channel2 (channel 0 is ignored)."""
    packed = np.asarray(packed)
    if packed.dtype != np.uint8 or packed.ndim != 3 or packed.shape[2] != 3:
        raise ValueError(f"packed depth must be (H, W, 3) uint8, got {packed.dtype} {packed.shape}")
    return (packed[..., 1].astype(np.uint16) << 8) | packed[..., 2].astype(np.uint16)


def depth16_from_vae6(channels: np.ndarray) -> np.ndarray:
    """16-bit depth from the 3 depth channels (3–5) of a decoded 6-channel LDM3D image in [0, 1].

    Each channel is an 8-bit byte scaled to [0, 1]: depth16 = 256·round(255·c4) + round(255·c5).
    """
    c = np.asarray(channels, dtype=np.float64)
    if c.ndim != 3 or c.shape[-1] != 3:
        raise ValueError(f"expected (H, W, 3) depth channels, got shape {c.shape}")
    c = np.clip(np.nan_to_num(c, nan=0.0), 0.0, 1.0)
    high = np.rint(c[..., 1] * 255.0).astype(np.uint16)
    low = np.rint(c[..., 2] * 255.0).astype(np.uint16)
    return (high << 8) | low


def depth16_to_vae6(depth16: np.ndarray) -> np.ndarray:
    """Inverse of :func:`depth16_from_vae6`: (H, W, 3) float32 channels in [0, 1]."""
    return depth16_to_rgb8(depth16).astype(np.float32) / np.float32(255.0)


def depth16_from_vae4(channel: np.ndarray) -> np.ndarray:
    """16-bit depth from the single depth channel of a decoded 4-channel LDM3D image in [0, 1]."""
    return to_uint16(channel)


# ------------------------------------------------------------------ depth → radius


def sanitize(d: np.ndarray, fill: float) -> np.ndarray:
    """float32 depth in [0, 1] with NaN and ±inf replaced by ``fill``."""
    d = np.asarray(d, dtype=np.float32)
    d = np.where(np.isfinite(d), d, np.float32(fill))
    return np.clip(d, 0.0, 1.0)


def radius_linear(d: np.ndarray, radius: float = 1.0, strength: float = 1.0) -> np.ndarray:
    """The paper's rule r = R·(1 + s·(0.5 − d)) (non-finite d → 0.5, i.e. r = R)."""
    _check_linear(radius, strength)
    return np.float32(radius) * (1.0 + np.float32(strength) * (0.5 - sanitize(d, 0.5)))


def radius_metric(d: np.ndarray, near: float, far: float) -> np.ndarray:
    """r = 1 / (A·d + B) for relative inverse depth d (non-finite d → 0, i.e. r = far)."""
    _check_range(near, far)
    a, b = np.float32(1.0 / near - 1.0 / far), np.float32(1.0 / far)
    return 1.0 / (a * sanitize(d, 0.0) + b)


def blend_depth(before: np.ndarray, after: np.ndarray, blend: float) -> np.ndarray:
    """The frame blend: depth crossfaded from the previous frame's ``before`` to the new frame's ``after``
    (sampled at the same points) at blend factor t, float32 (1 − t)·before + t·after (GLSL ``mix``), t clipped to
    [0, 1]; t = 1 is ``after`` itself (the shader then reads nothing of the previous frame).

    Depth is blended *before* the depth → radius mapping: halfway through a blend a vertex sits at
    ``mapping((d_before + d_after) / 2)``, the radius of the mean depth, not at the mean of the two radii. The
    depth image crossfades as the colour image does, and since inverse depth is what stereo parallax is
    proportional to (metric mapping: 1/r = A·d + B), every point's parallax changes at a constant rate through
    the blend; for the linear mapping the two readings are the same. Non-finite values go through as NaN and
    the mapping replaces them (:func:`sanitize`), as in the shader."""
    t = np.float32(min(max(float(blend), 0.0), 1.0))
    after = np.asarray(after, dtype=np.float32)
    if t >= 1:
        return after
    return (np.float32(1) - t) * np.asarray(before, dtype=np.float32) + t * after


def _check_linear(radius: float, strength: float) -> None:
    if not (np.isfinite(radius) and radius > 0):
        raise ValueError(f"radius must be a positive number, got {radius}")
    if not (np.isfinite(strength) and 0 <= strength < 2):
        raise ValueError(f"strength must be in [0, 2) so every radius stays positive, got {strength}")


@dataclass(frozen=True)
class DepthMapping:
    """How depth becomes radius; the one object the TD shader uniforms and exporters read."""

    mode: str = LINEAR
    radius: float = 1.0
    strength: float = 1.0
    near: float = 1.0
    far: float = 100.0

    def __post_init__(self) -> None:
        if self.mode not in MAPPINGS:
            raise ValueError(f"mapping must be one of {', '.join(MAPPINGS)}, got {self.mode!r}")
        if self.mode == LINEAR:
            _check_linear(self.radius, self.strength)
        else:
            _check_range(self.near, self.far)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DepthMapping:
        """The mapping described by validated display parameters (td_bridge.params)."""
        return cls(params["mapping"], params["radius"], params["strength"], params["near"], params["far"])

    def __call__(self, d: np.ndarray) -> np.ndarray:
        if self.mode == LINEAR:
            return radius_linear(d, self.radius, self.strength)
        return radius_metric(d, self.near, self.far)


# ------------------------------------------------------------------ clean-up filters


def _separable(d: np.ndarray, size: int, reduce) -> np.ndarray:
    """Apply ``reduce`` over odd ``size`` windows: rows wrap (360° seam), columns clamp."""
    if size < 1 or size % 2 == 0:
        raise ValueError(f"filter size must be a positive odd number, got {size}")
    half = size // 2
    if half == 0:
        return d
    if half > d.shape[1]:
        raise ValueError(f"filter size {size} is wider than the image ({d.shape[1]} px)")
    wrapped = np.concatenate([d[:, -half:], d, d[:, :half]], axis=1)
    rows = reduce(np.lib.stride_tricks.sliding_window_view(wrapped, size, axis=1), axis=-1)
    padded = np.pad(rows, ((half, half), (0, 0)), mode="edge")
    return reduce(np.lib.stride_tricks.sliding_window_view(padded, size, axis=0), axis=-1).astype(np.float32)


def dilate_near(d: np.ndarray, size: int = 3) -> np.ndarray:
    """Grow near surfaces (max filter) by ``size``//2 pixels, wrapping horizontally.

    Pushes the silhouettes of foreground objects past their colour edge, so border pixels
    are not smeared onto the background when the sphere is displaced.
    """
    return _separable(sanitize(d, 0.0), size, np.max)


def smooth(d: np.ndarray, size: int = 3) -> np.ndarray:
    """Box-filter depth over odd ``size`` windows, wrapping horizontally, clamping vertically."""
    return _separable(sanitize(d, 0.0), size, np.mean)


def _as_uint16(depth16: np.ndarray) -> np.ndarray:
    depth16 = np.asarray(depth16)
    if depth16.dtype != np.uint16:
        raise ValueError(f"expected uint16 depth, got {depth16.dtype}")
    return depth16
