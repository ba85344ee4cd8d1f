"""Equirectangular geometry (numpy only).

Conventions (docs and shaders follow these): right-handed, Y up, the viewer looks down −Z.
u ∈ [0, 1] runs left→right over longitude θ = 2πu − π; v ∈ [0, 1] runs top→bottom over
latitude φ = π/2 − πv. Direction(θ, φ) = (cos φ sin θ, sin φ, −cos φ cos θ), so the image
centre (u = v = 0.5) looks straight ahead (−Z) and u = 0.75 looks right (+X).
"""

from __future__ import annotations

import numpy as np


def uv_to_direction(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Unit direction vectors (..., 3) for equirect coordinates u, v."""
    u, v = np.broadcast_arrays(np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64))
    theta = 2.0 * np.pi * u - np.pi
    phi = 0.5 * np.pi - np.pi * v
    cos_phi = np.cos(phi)
    return np.stack([cos_phi * np.sin(theta), np.sin(phi), -cos_phi * np.cos(theta)], axis=-1)


def direction_to_uv(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Equirect (u, v) of direction vectors (..., 3); need not be unit length. u ∈ [0, 1)."""
    d = np.asarray(direction, dtype=np.float64)
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    theta = np.arctan2(x, -z)
    phi = np.arctan2(y, np.hypot(x, z))
    u = np.mod((theta + np.pi) / (2.0 * np.pi), 1.0)
    v = (0.5 * np.pi - phi) / np.pi
    return u, v


def pixel_directions(width: int, height: int) -> np.ndarray:
    """(height, width, 3) unit directions through the pixel centres of an equirect image."""
    u = (np.arange(width) + 0.5) / width
    v = (np.arange(height) + 0.5) / height
    return uv_to_direction(u[None, :], v[:, None])
