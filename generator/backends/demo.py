"""Demo backend: procedural 360° RGBD panoramas with exact depth, no GPU and no weights.

A prompt and seed pick a :class:`DemoScene` (a room or a landscape with spheres around a
viewer at the origin). The scene is analytic, so tests can ray-trace it for ground truth.
Depth is encoded like LDM3D output: 16-bit relative inverse depth, 1 = near.
"""

from __future__ import annotations

import colorsys
import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from td_bridge.depth import inverse_depth_from_distance, to_uint16
from td_bridge.geometry import pixel_directions
from td_bridge.params import ParamError, requested_loras

from .base import RGBD, Cancelled, CancelledFn, ProgressFn

INDOOR_WORDS = ("room", "interior", "hall", "indoor", "inside", "studio", "gallery", "library", "kitchen")
OUTDOOR_WORDS = ("landscape", "outdoor", "mountain", "forest", "desert", "beach", "field", "ocean", "sky")
NEAR = 1.0  # every surface is at least this far: spheres keep 1 m clearance, floor and ceiling ≥ 1.2 m
LANDSCAPE_FAR = 100.0
LIGHT = np.array([0.35, 0.8, 0.45]) / np.linalg.norm([0.35, 0.8, 0.45])


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]
    radius: float
    color: tuple[float, float, float]


@dataclass(frozen=True)
class DemoScene:
    """An analytic scene around a viewer at the origin (Y up, −Z ahead)."""

    kind: str  # "room" or "landscape"
    near: float
    far: float
    box_min: tuple[float, float, float]  # room walls; for a landscape only box_min[1] (ground) counts
    box_max: tuple[float, float, float]
    spheres: tuple[Sphere, ...]
    base_color: tuple[float, float, float]
    accent_color: tuple[float, float, float]

    def distance(self, directions: np.ndarray) -> np.ndarray:
        """Exact distance from the origin to the first surface along each unit direction."""
        return self.trace(directions)[0]

    def trace(self, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(distance, surface id) per direction; id 0 = walls/ground/sky, k = sphere k−1."""
        d = np.asarray(directions, dtype=np.float64)
        t = self._background_distance(d)
        hit = np.zeros(d.shape[:-1], dtype=np.int32)
        for k, sphere in enumerate(self.spheres, start=1):
            c = np.asarray(sphere.center)
            b = d @ c
            disc = b * b - (c @ c - sphere.radius**2)
            root = np.sqrt(np.maximum(disc, 0.0))
            t_sphere = np.where(b - root > 0, b - root, b + root)
            closer = (disc >= 0) & (t_sphere > 0) & (t_sphere < t)
            t = np.where(closer, t_sphere, t)
            hit = np.where(closer, k, hit)
        return t, hit

    def _background_distance(self, d: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.kind == "room":
                lo, hi = np.asarray(self.box_min), np.asarray(self.box_max)
                per_axis = np.where(d > 0, hi / d, np.where(d < 0, lo / d, np.inf))
                return per_axis.min(axis=-1)
            ground = np.where(d[..., 1] < 0, self.box_min[1] / d[..., 1], np.inf)
            return np.minimum(ground, self.far)

    def shade(self, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 (…, 3), distance) for unit directions."""
        t, hit = self.trace(directions)
        p = directions * t[..., None]
        color = self._background_color(directions, p, t)
        for k, sphere in enumerate(self.spheres, start=1):
            mask = hit == k
            if not mask.any():
                continue
            n = (p[mask] - np.asarray(sphere.center)) / sphere.radius
            lambert = 0.25 + 0.75 * np.clip(n @ LIGHT, 0.0, 1.0)
            stripes = 0.85 + 0.15 * np.sign(np.sin(8.0 * np.arctan2(n[:, 0], n[:, 2])))
            color[mask] = np.asarray(sphere.color) * (lambert * stripes)[:, None]
        rgb = np.clip(np.rint(color * 255.0), 0, 255).astype(np.uint8)
        return rgb, t

    def _background_color(self, d: np.ndarray, p: np.ndarray, t: np.ndarray) -> np.ndarray:
        base, accent = np.asarray(self.base_color), np.asarray(self.accent_color)
        checker = (np.floor(p[..., 0]) + np.floor(p[..., 2])) % 2
        if self.kind == "room":
            lo, hi = np.asarray(self.box_min), np.asarray(self.box_max)
            floor = np.isclose(p[..., 1], lo[1])
            ceiling = np.isclose(p[..., 1], hi[1])
            grid = (np.abs(p - np.rint(p)) < 0.03).sum(axis=-1) >= 2
            wall = base * (0.55 + 0.35 * (d[..., 1] + 1.0)[..., None] / 2)
            color = np.where(grid[..., None], accent * 0.6, wall)
            color = np.where(floor[..., None], np.where(checker[..., None] > 0, accent, accent * 0.35), color)
            return np.where(ceiling[..., None], np.full(3, 0.92), color)
        sky_mix = np.clip(d[..., 1], 0.0, 1.0)[..., None]
        sky = (1 - sky_mix) * np.array([0.95, 0.85, 0.75]) + sky_mix * base
        sun = (d @ LIGHT) > 0.995
        sky = np.where(sun[..., None], np.array([1.0, 0.97, 0.85]), sky)
        fade = np.clip(1.0 - t / self.far, 0.2, 1.0)[..., None]
        ground = np.where(checker[..., None] > 0, accent, accent * 0.7) * fade + (1 - fade) * sky
        return np.where((d[..., 1] < 0)[..., None] & (t < self.far)[..., None], ground, sky)


def _rng_for(prompt: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{prompt}\x00{seed}".encode("utf-8")).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _hue_color(hue: float, saturation: float, value: float) -> tuple[float, float, float]:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(hue % 1.0, saturation, value))  # type: ignore[return-value]


def scene_for(prompt: str, seed: int) -> DemoScene:
    """The scene a prompt and seed stand for: same inputs, same scene."""
    rng = _rng_for(prompt, seed)
    words = prompt.lower()
    if any(w in words for w in INDOOR_WORDS):
        kind = "room"
    elif any(w in words for w in OUTDOOR_WORDS):
        kind = "landscape"
    else:
        kind = ("room", "landscape")[int(rng.integers(2))]
    hue = float(rng.random())
    if kind == "room":
        half_x, ceiling, half_z = rng.uniform([3.0, 1.2, 3.0], [7.0, 2.6, 7.0])
        box_min = (-half_x, -1.6, -half_z)
        box_max = (half_x, ceiling, half_z)
        far = float(np.linalg.norm(np.maximum(np.abs(box_min), np.abs(box_max)))) * 1.001
        floor_y = box_min[1]
    else:
        box_min, box_max = (-LANDSCAPE_FAR, -1.7, -LANDSCAPE_FAR), (LANDSCAPE_FAR, LANDSCAPE_FAR, LANDSCAPE_FAR)
        far = LANDSCAPE_FAR
        floor_y = box_min[1]
    spheres = []
    max_reach = (min(-box_min[0], -box_min[2], box_max[0], box_max[2]) - 0.2) if kind == "room" else 25.0
    for _ in range(int(rng.integers(3, 8))):
        radius = float(rng.uniform(0.3, 1.2))
        reach = max(max_reach - radius, 1.0 + radius)
        distance = float(rng.uniform(1.0 + radius, reach))
        angle = float(rng.uniform(-np.pi, np.pi))
        center = (distance * np.sin(angle), floor_y + radius, -distance * np.cos(angle))
        spheres.append(Sphere(center, radius, _hue_color(hue + rng.uniform(0.2, 0.8), 0.7, 0.95)))
    return DemoScene(
        kind=kind,
        near=NEAR,
        far=far,
        box_min=tuple(float(x) for x in box_min),  # type: ignore[arg-type]
        box_max=tuple(float(x) for x in box_max),  # type: ignore[arg-type]
        spheres=tuple(spheres),
        base_color=_hue_color(hue, 0.35, 0.9),
        accent_color=_hue_color(hue + 0.5, 0.45, 0.8),
    )


class DemoBackend:
    """Renders :func:`scene_for` scenes in row bands, one band per step."""

    name = "demo"
    model = "demo"

    def __init__(self, step_delay: float = 0.0) -> None:
        if not 0.0 <= step_delay <= 10.0:
            raise ValueError(f"demo step delay must be in [0, 10] seconds, got {step_delay}")
        self.step_delay = step_delay

    def check(self, params: dict[str, Any]) -> None:
        """The demo backend draws its scenes without a model: it cannot apply a LoRA (ParamError)."""
        if requested_loras(params):
            raise ParamError("the demo backend takes no LoRAs (serve an LDM3D model with --lora)")

    def generate(self, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn) -> RGBD:
        self.check(params)
        width, height, steps = params["width"], params["height"], params["steps"]
        scene = scene_for(params["prompt"], params["seed"])
        directions = pixel_directions(width, height)
        rgb = np.empty((height, width, 3), dtype=np.uint8)
        distance = np.empty((height, width), dtype=np.float64)
        bands = np.array_split(np.arange(height), min(steps, height))
        for step, rows in enumerate(bands, start=1):
            if cancelled():
                raise Cancelled()
            rgb[rows], distance[rows] = scene.shade(directions[rows])
            if self.step_delay:
                time.sleep(self.step_delay)
            progress(step, len(bands))
        depth = to_uint16(inverse_depth_from_distance(distance, scene.near, scene.far))
        return RGBD(rgb, depth, near=scene.near, far=scene.far, info={"scene": scene.kind})
