"""360° depth from a perspective depth model: split, estimate, align, blend (numpy only).

An equirectangular panorama is cut into overlapping square pinhole views (td_bridge.geometry's conventions),
each view's disparity is estimated, the views are aligned to each other by one global least-squares solve, and
the aligned views are blended back to equirectangular with weights that fade to zero at every view's border,
so the result has no seams (the 0°/360° one included) and the poles come from views looking straight at them.

A perspective model predicts the disparity of z-depth, the distance along its optical axis, up to a scale and
shift per view: Dₖ = sₖ / zₖ + tₖ. The panorama needs the inverse ray distance q = 1/r, and zₖ = r·cₖ with
cₖ = cos(angle from the view's axis), so q = aₖ·cₖ·Dₖ + bₖ·cₖ is linear in the unknowns (aₖ, bₖ). Every pixel
two views both see gives one equation aᵢcᵢDᵢ + bᵢcᵢ = aⱼcⱼDⱼ + bⱼcⱼ; the reference view's scale is fixed to 1.
(Because cₖ differs between views, the shifts are determined too: only one global scale is free.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from td_bridge.geometry import (direction_to_perspective_uv, direction_to_uv, perspective_uv_to_direction,
                                pixel_directions, rotation_matrix, uv_to_direction)

from ..backends.base import Cancelled, CancelledFn, ProgressFn

Predict = Callable[[np.ndarray, "View"], np.ndarray]
"""(S, S, 3) uint8 view image and its View → (S, S) disparity of z-depth, up to a scale and shift (relative
models) or in 1/metres (metric ones). Real estimators look only at the image."""

_SOLVE_WIDTH = 256  # the alignment compares views on an equirectangular grid this wide
_BAND_ROWS = 64  # rows blended at a time: bounds memory for large panoramas


@dataclass(frozen=True)
class View:
    """A square pinhole view looking at (yaw, pitch) degrees (td_bridge.geometry.rotation_matrix)."""

    yaw: float
    pitch: float
    fov: float

    @property
    def rotation(self) -> np.ndarray:
        return rotation_matrix(self.yaw, self.pitch)

    def reaches(self, low: float, high: float) -> bool:
        """Whether the view can see any latitude in [low, high] degrees (its corners are the farthest it sees)."""
        radius = np.degrees(np.arctan(np.tan(np.radians(self.fov) / 2) * np.sqrt(2)))
        return self.pitch - radius <= high and low <= self.pitch + radius


def _ring(count: int, pitch: float, fov: float, offset: float = 0.0) -> tuple[View, ...]:
    return tuple(View(offset + 360.0 * k / count, pitch, fov) for k in range(count))


LAYOUTS: dict[str, tuple[View, ...]] = {
    # the six cube faces, widened from 90° to 110° so neighbours overlap by 20° across every edge
    "cube": _ring(4, 0.0, 110.0) + (View(0.0, 90.0, 110.0), View(0.0, -90.0, 110.0)),
    # 8 views around the horizon, 6 above and 6 below (turned by 30°), one at each pole: 22 narrower views,
    # less distorted at their corners, each overlapping several neighbours
    "dense": _ring(8, 0.0, 80.0) + _ring(6, 50.0, 80.0, 30.0) + _ring(6, -50.0, 80.0, 30.0)
    + (View(0.0, 90.0, 80.0), View(0.0, -90.0, 80.0)),
}


def is_equirectangular(width: int, height: int) -> bool:
    """A 2:1 image (to a pixel) is taken for an equirectangular 360° panorama."""
    return abs(width - 2 * height) <= 1


def view_size(pano_width: int, fov: float) -> int:
    """Side of a view that keeps the panorama's resolution at its centre (even, 64 … 1024 px)."""
    side = pano_width * fov / 360.0
    return int(np.clip(2 * round(side / 2), 64, 1024))


# ------------------------------------------------------------------ sampling


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray, wrap_x: bool) -> np.ndarray:
    """Bilinear samples of (H, W[, C]) ``image`` at pixel positions x, y (pixel centres at integers)."""
    height, width = image.shape[:2]
    y = np.clip(y, 0.0, height - 1.0)
    if not wrap_x:
        x = np.clip(x, 0.0, width - 1.0)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    if image.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    x0 = x0.astype(np.intp)
    y0 = y0.astype(np.intp)
    x1, y1 = x0 + 1, np.minimum(y0 + 1, height - 1)
    if wrap_x:
        x0, x1 = x0 % width, x1 % width
    else:
        x1 = np.minimum(x1, width - 1)
    top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
    bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def render_view(rgb: np.ndarray, view: View, size: int) -> np.ndarray:
    """The (size, size, 3) uint8 perspective view of an equirectangular RGB image."""
    centres = (np.arange(size) + 0.5) / size
    directions = perspective_uv_to_direction(centres[None, :], centres[:, None], view.fov, view.rotation)
    u, v = direction_to_uv(directions)
    height, width = rgb.shape[:2]
    samples = _bilinear(rgb.astype(np.float32), u * width - 0.5, v * height - 0.5, wrap_x=True)
    return np.clip(np.rint(samples), 0, 255).astype(np.uint8)


@dataclass
class _Seen:
    """What one view contributes at a set of panorama directions."""

    weight: np.ndarray  # feathered, 0 outside the view
    cos: np.ndarray  # cosine of the angle from the view's axis
    disparity: np.ndarray  # the view's disparity, sampled


def _seen(directions: np.ndarray, view: View, disparity: np.ndarray) -> _Seen:
    u, v, inside = direction_to_perspective_uv(directions, view.fov, view.rotation)
    x, y = 2 * u - 1, 1 - 2 * v  # [-1, 1] across the view
    weight = np.where(inside, ((1 - x * x) * (1 - y * y)) ** 2, 0.0)
    half = np.tan(np.radians(view.fov) / 2)
    cos = 1.0 / np.sqrt(1 + (x * half) ** 2 + (y * half) ** 2)
    side = disparity.shape[0]
    sampled = np.zeros(weight.shape)
    sampled[inside] = _bilinear(disparity, u[inside] * side - 0.5, v[inside] * side - 0.5, wrap_x=False)
    return _Seen(weight, cos, sampled)


# ------------------------------------------------------------------ alignment


def solve_alignment(seen: list[_Seen], area: np.ndarray, reference: int = 0, shifts: bool = True,
                    ridge: float = 1e-6) -> np.ndarray:
    """(K, 2) per-view (a, b) with q = a·c·D + b·c agreeing between views in the least-squares sense.

    ``seen`` holds each view's samples on one common grid, ``area`` each grid point's weight (solid angle).
    Each pair of views seeing a point gives a residual weighted by sqrt(wᵢ·wⱼ·area); view ``reference`` keeps
    a = 1. Without ``shifts`` every b stays 0 (metric models: their disparity has no unknown offset, and a
    free shift could cancel a nearly constant reference view). A tiny ridge toward (1, 0) keeps a view that
    overlaps nothing, or sees a constant, determined.
    """
    count = len(seen)
    normal = np.zeros((2 * count, 2 * count))  # AᵀA of the stacked residuals, summed pair by pair
    for i in range(count):
        for j in range(i + 1, count):
            both = (seen[i].weight > 0) & (seen[j].weight > 0)
            if not both.any():
                continue
            omega = np.sqrt(seen[i].weight[both] * seen[j].weight[both] * area[both])
            ci, cj = omega * seen[i].cos[both], -omega * seen[j].cos[both]
            columns = np.stack([ci * seen[i].disparity[both], ci, cj * seen[j].disparity[both], cj])
            index = [2 * i, 2 * i + 1, 2 * j, 2 * j + 1]
            normal[np.ix_(index, index)] += columns @ columns.T
    if not normal.any():
        raise ValueError("no two views overlap; the layout cannot be aligned")
    # the ridge: ‖A·p‖² + λ²‖p − prior‖², λ² relative to the data's own scale
    strength = ridge**2 * np.trace(normal) / len(normal)
    normal += strength * np.eye(2 * count)
    rhs = strength * np.tile([1.0, 0.0], count)
    fixed = 2 * reference  # the reference scale: a_ref = 1 moves to the right-hand side
    free = [k for k in range(2 * count) if k != fixed and (shifts or k % 2 == 0)]
    solution = np.linalg.solve(normal[np.ix_(free, free)], rhs[free] - normal[free, fixed])
    params = np.zeros(2 * count)
    params[free], params[fixed] = solution, 1.0
    return params.reshape(count, 2)


def _blend(seen: list[_Seen], params: np.ndarray) -> np.ndarray:
    """The feathered mean of the aligned views' q = (a·D + b)·c."""
    total, weights = np.zeros(seen[0].weight.shape), np.zeros(seen[0].weight.shape)
    for item, (a, b) in zip(seen, params):
        total += item.weight * (a * item.disparity + b) * item.cos
        weights += item.weight
    if not (weights > 0).all():
        raise RuntimeError("the view layout leaves directions uncovered")
    return total / weights


def _normalise(disparity: np.ndarray, metric: bool) -> np.ndarray:
    """Relative views are centred and scaled to unit spread first (an affine change the (a, b) absorb), so the
    ridge and the reference's a = 1 mean the same for every model; metric views keep their units."""
    disparity = np.asarray(disparity, dtype=np.float64)
    if metric:
        return disparity
    spread = disparity.std()
    return (disparity - disparity.mean()) / (spread if spread > 0 else 1.0)


# ------------------------------------------------------------------ the whole path


def pano_inverse_distance(rgb: np.ndarray, predict: Predict, *, layout: str = "dense", metric: bool = False,
                          progress: ProgressFn | None = None, cancelled: CancelledFn | None = None
                          ) -> tuple[np.ndarray, dict]:
    """(H, W) inverse ray distance q of an equirectangular RGB image, up to one global scale (in 1/metres of
    the reference view when ``metric``: then each view gets a scale only), and a summary (views, a and b)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown view layout {layout!r}; choose {', '.join(LAYOUTS)}")
    views = LAYOUTS[layout]
    height, width = rgb.shape[:2]
    disparities = []
    for k, view in enumerate(views, start=1):
        if cancelled is not None and cancelled():
            raise Cancelled()
        size = view_size(width, view.fov)
        predicted = np.asarray(predict(render_view(rgb, view, size), view), dtype=np.float64)
        if predicted.shape != (size, size):
            raise ValueError(f"the estimator returned {predicted.shape} for a {size}x{size} view")
        disparities.append(_normalise(predicted, metric))
        if progress is not None:
            progress(k, len(views))

    solve_w = min(width, _SOLVE_WIDTH)
    grid = pixel_directions(solve_w, max(solve_w // 2, 1))
    area = np.broadcast_to(np.cos(np.arcsin(np.clip(grid[..., 1], -1, 1))), grid.shape[:2])
    seen = [_seen(grid, v, d) for v, d in zip(views, disparities)]
    params = solve_alignment(seen, area, shifts=not metric)

    q = np.empty((height, width))
    u_centres = (np.arange(width) + 0.5) / width
    for start in range(0, height, _BAND_ROWS):
        rows = slice(start, min(start + _BAND_ROWS, height))
        v_centres = (np.arange(rows.start, rows.stop) + 0.5) / height
        band = uv_to_direction(u_centres[None, :], v_centres[:, None])
        latitudes = 90.0 - 180.0 * v_centres[[0, -1]]  # the band's top and bottom, degrees
        near = [k for k, view in enumerate(views) if view.reaches(latitudes[1], latitudes[0])]
        q[rows] = _blend([_seen(band, views[k], disparities[k]) for k in near], params[near])
    return q, {"layout": layout, "views": len(views),
               "alignment": [[round(float(a), 6), round(float(b), 6)] for a, b in params]}

