"""Depth encodings and depth-to-distance mappings (numpy only; Pillow imported lazily for PNG).

DepthFusion depth is *relative inverse depth* d in [0, 1] (1 = nearest), carried as uint16
(65535 = 1.0). With a known metric range, d maps to distance by r = 1 / (A·d + B) with
A = 1/near − 1/far and B = 1/far, so d = 1 is ``near`` and d = 0 is ``far``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEPTH_MAX = 65535


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
