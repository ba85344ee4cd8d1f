"""Measure the running TouchDesigner's camera and projection conventions on a rendered test frame (numpy only).

The component's Diagnose publishes :func:`test_frame` (coloured discs on a grey sphere: one at +X, one straight
ahead at −Z, one at the zenith, one at the nadir, a *near* and a *far* one beside, or above and below, the view
direction), lets TouchDesigner render it, reads its TOPs back (``TOP.numpyArray()``: float32 (H, W, 4) RGBA, row 0
at the BOTTOM) and calls :func:`check`. Each :class:`Finding` is verified, wrong (with the override that fixes it,
by TouchDesigner parameter name, where one exists) or could not check. What is measured, and the overrides
(td_bridge.params.CONVENTION_PARAMS):

* ``equirect_orientation`` (ods_left/ods_right): +X at u = 0.75 and −Z at u = 0.5 (turned by the head's yaw). A
  mirror reverses the markers' order, a turn shifts both. Overrides: ``equirect_mirror`` flips the outputs left to
  right after the Projection TOPs; ``equirect_yaw`` is added to the Projection TOPs' turn, taken to move the image
  content to larger u by yaw/360 as the head's yaw does (the docs do not say which way it turns).
* ``eye_order`` and ``window_x_sign`` (render_left/render_right): the disparity (left − right, pixels) of the
  markers against td_bridge's off-axis stereo under four hypotheses: the left image from the left or the right
  camera, each with its Window X shifting its frustum towards its own side (docs) or away. A left image from the
  right camera has no override (the cameras' IPD Shift is documented); ``window_x_sign`` reverses Window X.
* ``side_by_side``, ``top_bottom``, ``ods_top_bottom``: the Layout TOPs' first cell (left, top) holds the left eye:
  their cells' disparities against the eye read-backs'. No override (it is the Layout TOP's input order).
* ``ods_left_index`` and ``ods_ipd_shift`` (ods_left/ods_right): ODS parallax, u(left eye) − u(right eye) =
  2·asin(b/ρ)/2π for eye radius b and horizontal distance ρ, against four hypotheses: ods_left shows camera index
  of the left eye or not, and IPD Shift read as each eye's offset (half) or the eyes' distance (whole). A swapped
  camera index and a reversed IPD Shift sign (``ods_ipd_sign``) swap the eyes alike, so the images cannot tell
  them apart: the fix is given as ``ods_left_index``, with the sign as set.
* ``dome_tilt_sign`` (dome): angles of the zenith, nadir, +X and −Z markers from the fisheye centre (invariant to
  how the fisheye is turned or mirrored) with the camera tilted up (docs) or down by dome_tilt.

A hypothesis is decided when its worst marker error is within tolerance (TOL_PX plus TOL_FRACTION of the expected
disparity; POSITION_TOL_PX for positions) and every rival's exceeds it by MARGIN_PX and by the best one's own
error; otherwise the finding is "could not check" (e.g. an IPD too small to measure), with the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from . import geometry as g
from .depth import LINEAR, DepthMapping, inverse_depth_from_distance, to_uint16
from .params import CONVENTION_PARAMS, DISPLAY_PARAMS, VIEW_PARAMS, td_name, validate_all
from .td_builds import ODS_IPD_SIGN_FIXED, Build

VERIFIED, WRONG, UNCHECKED = "verified", "wrong", "could not check"

BACKGROUND = (128, 128, 128)
COLOURS = {"+X": (255, 0, 0), "-Z": (0, 255, 0), "zenith": (0, 0, 255), "nadir": (255, 255, 0),
           "near": (255, 0, 255), "far": (0, 255, 255)}
MARKER_RADIUS = 8.0  # degrees: 70 px across in a 1280 px wide 360° image
COLOUR_TOL = 0.35  # RGB distance (0..1 per channel) within which a pixel counts towards a marker
MIN_WEIGHT = 4.0  # pixels' worth of marker colour needed to call it found
TOL_PX = 1.0  # disparity: worst marker error allowed for the picked hypothesis, plus TOL_FRACTION of its size
TOL_FRACTION = 0.1
MARGIN_PX = 0.5  # every rival hypothesis must be worse by this, and by the best one's own error
POSITION_TOL_PX = 4.0  # absolute marker positions (equirect orientation, dome)
CHECKS: tuple[str, ...] = ("equirect_orientation", "eye_order", "window_x_sign", "side_by_side", "top_bottom",
                           "ods_left_index", "ods_ipd_shift", "ods_top_bottom", "dome_tilt_sign")
PARALLAX_MARKERS = ("near", "far", "-Z", "+X")  # for disparity: two or three depths, all below ODS's pole fade


@dataclass(frozen=True)
class Finding:
    """One convention or check: status VERIFIED, WRONG or UNCHECKED; ``fix`` maps TouchDesigner parameter names to
    the values that make it right (empty unless wrong; empty and wrong: no override fixes it)."""

    name: str
    status: str
    detail: str
    fix: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Marker:
    """A coloured disc of the test frame, MARKER_RADIUS degrees around ``direction`` from the sphere's centre;
    ``depth`` (uint16 code) covers ``depth_radius`` degrees around it (0: it sits on the background)."""

    name: str
    direction: tuple[float, float, float]
    depth: int
    distance: float
    depth_radius: float

    @property
    def colour(self) -> tuple[int, int, int]:
        return COLOURS[self.name]

    @property
    def position(self) -> np.ndarray:
        return np.asarray(self.direction) * self.distance


# ------------------------------------------------------------------ the test frame


def _inverse(mapping: DepthMapping, distance: float) -> float:
    """Depth in [0, 1] that ``mapping`` turns into ``distance`` (clipped to what it can reach)."""
    if mapping.mode != LINEAR:
        return float(inverse_depth_from_distance(distance, mapping.near, mapping.far))
    if mapping.strength == 0:
        return 0.5
    return float(np.clip(0.5 - (distance / mapping.radius - 1) / mapping.strength, 0.0, 1.0))


def _distances(mapping: DepthMapping, view: Mapping[str, Any]) -> tuple[float, float, float]:
    """(background, near, far) target distances: the background at the convergence distance, the near marker as
    near as the mapping allows but twice the eyes' reach from the centre, the far one as far as it allows."""
    nearest, farthest = float(mapping(np.float32(1.0))), float(mapping(np.float32(0.0)))
    background = min(max(view["convergence"], nearest), farthest)
    reach = math.hypot(view["head_x"], view["head_y"], view["head_z"]) + view["ipd"] / 2
    return background, min(max(nearest, 2 * reach), background), farthest


def _around_view(yaw_deg: float, right_deg: float, up_deg: float) -> tuple[float, float, float]:
    """Unit direction ``right_deg`` right of and ``up_deg`` above the horizon straight ahead of the head's yaw."""
    u = 0.5 + (right_deg - yaw_deg) / 360  # yaw turns the head left: towards smaller u
    return tuple(float(x) for x in g.uv_to_direction(u, 0.5 - up_deg / 180))


def _near_far_directions(yaw_deg: float, side: float) -> list[tuple[float, float, float]]:
    """Near and far either side of the view direction, or above and below it where that would cover the +X or
    −Z marker (``side`` degrees from them keeps their colour clear of the depth discs)."""
    fixed = np.array([(1.0, 0.0, 0.0), (0.0, 0.0, -1.0)])
    for offsets in (((-side, 0.0), (side, 0.0)), ((0.0, side), (0.0, -side))):
        pair = [_around_view(yaw_deg, *offset) for offset in offsets]
        clear = np.degrees(np.arccos(np.clip(np.array(pair) @ fixed.T, -1.0, 1.0))) >= side - 1e-6
        if clear.all():
            break
    return pair


def markers(display: Mapping[str, Any], view: Mapping[str, Any]) -> tuple[Marker, ...]:
    """The test frame's markers for display and view parameters (validated here). Near and far sit beside (or
    above and below) the view direction, far enough that their depth discs (wider than the colour by two mesh cells
    and a degree, so culled edges never reach the colour) leave a marker's width between them free."""
    display, view = validate_all((display, DISPLAY_PARAMS), (view, VIEW_PARAMS))
    mapping = DepthMapping.from_params(display)
    depth_radius = MARKER_RADIUS + 2 * 180.0 / display["mesh_rows"] + 1.0
    side = MARKER_RADIUS + depth_radius + 2.0
    background, near, far = _distances(mapping, view)
    near_direction, far_direction = _near_far_directions(view["yaw"], side)

    def make(name: str, direction: tuple[float, float, float], distance: float, radius: float) -> Marker:
        code = int(to_uint16(_inverse(mapping, distance)))
        return Marker(name, direction, code, float(mapping(np.float32(code / 65535))), radius)

    return (make("+X", (1.0, 0.0, 0.0), background, 0.0), make("-Z", (0.0, 0.0, -1.0), background, 0.0),
            make("zenith", (0.0, 1.0, 0.0), background, 0.0), make("nadir", (0.0, -1.0, 0.0), background, 0.0),
            make("near", near_direction, near, depth_radius), make("far", far_direction, far, depth_radius))


def test_frame(display: Mapping[str, Any], view: Mapping[str, Any], width: int = 512,
               height: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The equirectangular test frame: RGB (height, width, 3) uint8 and depth (height, width) uint16, row 0 at the
    top (td_bridge.protocol's frames)."""
    if not (16 <= width <= 16384 and 8 <= height <= 16384):
        raise ValueError(f"test frame size {width}x{height} is out of range")
    marks = markers(display, view)
    directions = g.pixel_directions(width, height)
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = BACKGROUND
    depth = np.full((height, width), marks[1].depth, np.uint16)  # −Z sits on the background
    for marker in marks:
        angle = np.degrees(np.arccos(np.clip(directions @ np.asarray(marker.direction), -1.0, 1.0)))
        if marker.depth_radius:
            depth[angle <= marker.depth_radius] = marker.depth
        rgb[angle <= MARKER_RADIUS] = marker.colour
    return rgb, depth


# ------------------------------------------------------------------ where the cameras see a marker


def _head(view: Mapping[str, Any]) -> np.ndarray:
    return np.array([view["head_x"], view["head_y"], view["head_z"]], dtype=np.float64)


def _eye_uv(points: np.ndarray, view: Mapping[str, Any], position: float, frustum: float) -> np.ndarray:
    """(…, 3) image (u, v from the top, camera depth) of world points in an eye camera at ``position`` along the
    head's right axis whose frustum is shifted for an eye at ``frustum`` (td_bridge.geometry.off_axis_projection)."""
    local = (points - _head(view)) @ g.rotation_matrix(view["yaw"], view["pitch"])
    z = -local[..., 2]
    half_h = math.tan(math.radians(view["fov"]) / 2)
    half_w = half_h * view["eye_width"] / view["eye_height"]
    with np.errstate(divide="ignore", invalid="ignore"):
        x = ((local[..., 0] - position) / z + frustum / view["convergence"]) / half_w
        y = local[..., 1] / z / half_h
    return np.stack([(1 + x) / 2, (1 - y) / 2, z], axis=-1)


def _rim(marker: Marker) -> np.ndarray:
    """Eight points on the edge of a marker's colour disc."""
    d = np.asarray(marker.direction)
    a = np.cross(d, (0.0, 1.0, 0.0) if abs(d[1]) < 0.9 else (1.0, 0.0, 0.0))
    a /= np.linalg.norm(a)
    b = np.cross(d, a)
    r = math.radians(MARKER_RADIUS)
    t = np.linspace(0, 2 * np.pi, 8, endpoint=False)[:, None]
    return (math.cos(r) * d + math.sin(r) * (np.cos(t) * a + np.sin(t) * b)) * marker.distance


def _in_eye(marker: Marker, view: Mapping[str, Any], offset: float) -> bool:
    uvz = _eye_uv(_rim(marker), view, offset, offset)
    return bool(np.all(uvz[:, 2] > 0) and np.all((uvz[:, :2] > 0) & (uvz[:, :2] < 1)))


def _ods_centre_u(marker: Marker, view: Mapping[str, Any]) -> float:
    """u of a marker seen from the ODS camera's centre (its eyes see it asin(b/ρ) either side)."""
    local = (marker.position - _head(view)) @ g.rotation_matrix(view["yaw"], 0.0)
    return float(g.direction_to_uv(local)[0])


def _ods_written(view: Mapping[str, Any], conventions: Mapping[str, Any]) -> float:
    """The IPD Shift the component writes (its magnitude): IPD/2 for half, IPD for whole."""
    return view["ipd"] / 2 if conventions["ods_ipd_shift"] == "half" else view["ipd"]


def _ods_eye_radius(semantics: str, written: float) -> float:
    """Each eye's distance from the ODS centre when TouchDesigner reads IPD Shift as ``semantics``."""
    return written if semantics == "half" else written / 2


def _ods_parallax(points: np.ndarray, view: Mapping[str, Any], radius: float) -> np.ndarray:
    """u(left eye) − u(right eye) of points for eyes ``radius`` off the ODS centre (NaN where inside the circle)."""
    rho = np.hypot(*(points - _head(view))[:, [0, 2]].T)
    with np.errstate(divide="ignore", invalid="ignore"):
        return 2 * np.arcsin(np.where(radius < rho, radius / rho, np.nan)) / (2 * np.pi)


def _eye_spread(marks: Mapping[str, Marker], view: Mapping[str, Any], conventions: Mapping[str, Any]) -> float:
    """The most an ODS eye may see the +X or −Z marker off the centre's view (in u), however IPD Shift is read."""
    written = _ods_written(view, conventions)
    points = np.array([marks["+X"].position, marks["-Z"].position])
    radii = (_ods_eye_radius(s, written) for s in ("half", "whole"))
    return max(float(np.nanmax(_ods_parallax(points, view, r), initial=0.0)) for r in radii) / 2


# ------------------------------------------------------------------ reading images back


class _Image:
    """A read-back as top-first RGB in [0, 1] (un-premultiplied) and a mask of covered pixels; marker lookups
    are cached."""

    def __init__(self, rgb: np.ndarray, valid: np.ndarray) -> None:
        self.rgb, self.valid = rgb, valid
        self._found: dict[tuple[str, bool], tuple[float, float] | None] = {}

    @classmethod
    def read(cls, image: Any) -> _Image:
        """From TOP.numpyArray() layout: rows bottom first, RGB/RGBA/grey, float in [0, 1] or integers."""
        a = np.asarray(image)
        scale = 1.0 / np.iinfo(a.dtype).max if np.issubdtype(a.dtype, np.integer) else 1.0
        a = a.astype(np.float32) * np.float32(scale)
        if a.ndim == 2:
            a = a[..., None]
        if a.ndim != 3 or not 1 <= a.shape[2] <= 4:
            raise ValueError(f"expected an (H, W[, C]) image with 1-4 channels, got shape {a.shape}")
        a = a[::-1]
        colour = a[..., :3] if a.shape[2] >= 3 else np.repeat(a[..., :1], 3, axis=2)
        alpha = a[..., -1] if a.shape[2] in (2, 4) else np.ones(a.shape[:2], np.float32)
        valid = alpha > 0.25
        rgb = np.clip(colour / np.where(valid, alpha, 1.0)[..., None], 0.0, 1.0)  # premultiplied or not
        return cls(rgb, valid)

    @property
    def width(self) -> int:
        return self.rgb.shape[1]

    @property
    def height(self) -> int:
        return self.rgb.shape[0]

    def cells(self, axis: int) -> tuple[_Image, _Image]:
        """The first (left, top) and second halves along ``axis`` (1: side by side, 0: top and bottom)."""
        half = [self.rgb.shape[axis] // 2]
        (rgb0, rgb1), (valid0, valid1) = np.split(self.rgb, half, axis), np.split(self.valid, half, axis)
        return _Image(rgb0, valid0), _Image(rgb1, valid1)

    def find(self, name: str, wrap: bool = False) -> tuple[float, float] | None:
        """(u, v) of marker ``name``'s colour (v from the top), None where it is not in the image."""
        key = (name, wrap)
        if key not in self._found:
            colour = np.asarray(COLOURS[name], np.float32) / 255
            distance = np.linalg.norm(self.rgb - colour, axis=-1)
            weight = np.clip(1 - distance / COLOUR_TOL, 0.0, 1.0) * self.valid
            self._found[key] = _centroid(weight, wrap)
        return self._found[key]


def _centroid(weight: np.ndarray, wrap: bool) -> tuple[float, float] | None:
    """Weighted centre (u, v) of pixel centres; with ``wrap`` the columns are circular (a 360° image's seam)."""
    total = float(weight.sum())
    if total < MIN_WEIGHT:
        return None
    height, width = weight.shape
    rows, cols = weight.sum(axis=1), weight.sum(axis=0)
    x = np.arange(width) + 0.5
    shift = 0
    if wrap:  # roll the blob to the middle, so a plain mean does not straddle the seam
        angle = 2 * np.pi * x / width
        middle = math.atan2(float(cols @ np.sin(angle)), float(cols @ np.cos(angle))) * width / (2 * np.pi)
        shift = int(round(width / 2 - middle))
        cols = np.roll(cols, shift)
    u = ((float(cols @ x) / total - shift) % width) / width
    return u, float(rows @ (np.arange(height) + 0.5)) / total / height


def locate(image: Any, name: str, wrap: bool = False) -> tuple[float, float] | None:
    """(u, v) of marker ``name`` (a COLOURS key) in a read-back (TOP.numpyArray() layout), v from the top; None
    where it is not found. ``wrap`` treats the left and right edges as one (equirectangular images)."""
    return _Image.read(image).find(name, wrap)


# ------------------------------------------------------------------ deciding between hypotheses


def _decide(errors: Mapping[tuple, float], attribute: int, tol: float) -> tuple[Any, tuple]:
    """(value of element ``attribute`` of the hypothesis with the smallest error, or None unless that error is
    within ``tol`` and every hypothesis with another value is clearly worse; that best hypothesis)."""
    best = min(errors, key=errors.__getitem__)
    rivals = [e for h, e in errors.items() if h[attribute] != best[attribute]]
    clear = errors[best] <= tol and all(e - errors[best] >= max(MARGIN_PX, errors[best]) for e in rivals)
    return (best[attribute] if clear else None), best


def _worst(measured: np.ndarray, predicted: np.ndarray) -> float:
    return float(np.max(np.abs(measured - predicted), initial=0.0))


def _numbers(values: Any) -> str:
    return ", ".join(f"{v:+.1f}" for v in values)


def _wrap(u: Any) -> Any:
    """A u difference brought into [−0.5, 0.5)."""
    return (np.asarray(u) + 0.5) % 1.0 - 0.5


def _circular_mean(u: Any) -> float:
    """Mean of u values on the circle [0, 1), in [−0.5, 0.5]."""
    angle = 2 * np.pi * np.asarray(u, dtype=np.float64)
    return math.atan2(float(np.sin(angle).sum()), float(np.cos(angle).sum())) / (2 * np.pi)


def _verdict(name: str, value: Any, intended: Any, detail: str, fix: dict[str, Any]) -> Finding:
    if value is None:
        return Finding(name, UNCHECKED, f"no clear answer: {detail}")
    if value == intended:
        return Finding(name, VERIFIED, detail)
    return Finding(name, WRONG, detail, fix)


def _missing(name: str, *needed: str) -> Finding:
    return Finding(name, UNCHECKED, f"needs {' and '.join(needed)}")


def _measure(reads: Mapping[str, _Image], names: tuple[str, ...], markers: tuple[str, ...],
             wrap: bool) -> tuple[list[str], dict[str, np.ndarray]]:
    """Markers found in every read of ``names``, and their u in each."""
    found = [m for m in markers if all(reads[n].find(m, wrap) is not None for n in names)]
    return found, {n: np.array([reads[n].find(m, wrap)[0] for m in found]) for n in names}


# ------------------------------------------------------------------ equirectangular orientation


def _fit_turn(measured: np.ndarray, expected: np.ndarray, width: int) -> tuple[int | None, float, str]:
    """(+1 or −1 for a plain or mirrored image, None if unclear; turn c in u: measured = s·expected + c; note)."""
    fits = {}
    for s in (1, -1):
        offsets = _wrap(measured - s * expected)
        c = _circular_mean(offsets)
        fits[(s,)] = (c, float(np.max(np.abs(_wrap(offsets - c)))) * width)
    sign, best = _decide({h: fit[1] for h, fit in fits.items()}, 0, POSITION_TOL_PX)
    return sign, fits[best][0], f"markers {fits[best][1]:.1f} px off the best {'mirrored ' * (best[0] < 0)}fit"


def _equirect_fix(sign: int, turn: float, conventions: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides that undo a measured ``u → sign·u + turn`` given the current ones (the mirror acts after the
    turn)."""
    mirror, yaw = conventions["equirect_mirror"], conventions["equirect_yaw"] / 360
    inherent_sign = -sign if mirror else sign
    inherent_turn = (-turn if mirror else turn) - yaw
    new_yaw = -inherent_turn * 360
    snapped = 90 * round(new_yaw / 90)  # the likely turns: quarters, within a degree
    new_yaw = float(180 - (180 - (snapped if abs(new_yaw - snapped) < 1.0 else round(new_yaw, 1))) % 360)
    fix: dict[str, Any] = {}
    if (inherent_sign < 0) != mirror:
        fix[td_name("equirect_mirror")] = inherent_sign < 0
    if abs(_wrap((new_yaw - conventions["equirect_yaw"]) / 360)) * 360 > 0.05:
        fix[td_name("equirect_yaw")] = new_yaw
    return fix


def _equirect(reads: Mapping[str, _Image], marks: Mapping[str, Marker], view: Mapping[str, Any],
              conventions: Mapping[str, Any]) -> tuple[Finding, int | None]:
    """The orientation finding and the image's sign (−1: mirrored; None if unknown). With both eyes the turn is
    their mean, where the parallax cancels; they may differ by twice an eye's parallax."""
    name, names = "equirect_orientation", [n for n in ("ods_left", "ods_right") if n in reads]
    if not names:
        return _missing(name, "ods_left or ods_right"), None
    expected = np.array([_ods_centre_u(marks[m], view) for m in ("+X", "-Z")])
    fits = {}
    for image in names:
        found, u = _measure(reads, (image,), ("+X", "-Z"), wrap=True)
        if len(found) < 2:
            return Finding(name, UNCHECKED, f"+X or -Z marker not found in {image}"), None
        fits[image] = (u[image], *_fit_turn(u[image], expected, reads[image].width))
    seen = "; ".join(f"{image}: +X at u = {u[0]:.3f}, -Z at u = {u[1]:.3f}" for image, (u, *_) in fits.items())
    detail = f"{seen} (expected {expected[0]:.3f}, {expected[1]:.3f})"
    signs, turns = {fit[1] for fit in fits.values()}, [fit[2] for fit in fits.values()]
    width, spread = max(reads[image].width for image in names), _eye_spread(marks, view, conventions)
    apart = abs(_wrap(turns[0] - turns[-1])) * width
    if None in signs or len(signs) > 1 or apart > POSITION_TOL_PX + 2 * spread * width:
        notes = "; ".join(fit[3] for fit in fits.values())
        return Finding(name, UNCHECKED, f"no consistent mirror or turn: {detail}; {notes}"), None
    sign = signs.pop()
    turn = _circular_mean(turns)
    allowed = POSITION_TOL_PX + (0 if len(names) == 2 else spread * width)
    if sign > 0 and abs(turn) * width <= allowed:
        return Finding(name, VERIFIED, detail), sign
    fix = _equirect_fix(sign, turn, conventions)
    shape = f"{'mirrored, ' * (sign < 0)}turned by {turn * 360:+.1f}°"
    if td_name("equirect_yaw") in fix:
        shape += " (Equirect Yaw taken to move the content right; if the fix leaves a turn of 180°, apply again)"
    return Finding(name, WRONG, f"{detail}: {shape}", fix), sign


# ------------------------------------------------------------------ flat stereo pair


def _flat_pair(reads: Mapping[str, _Image], marks: Mapping[str, Marker], view: Mapping[str, Any],
               conventions: Mapping[str, Any]) -> list[Finding]:
    """eye_order and window_x_sign from the markers' disparity in render_left − render_right."""
    if "render_left" not in reads or "render_right" not in reads:
        return [_missing(n, "render_left", "render_right") for n in ("eye_order", "window_x_sign")]
    b = view["ipd"] / 2
    visible = tuple(m for m in PARALLAX_MARKERS if _in_eye(marks[m], view, -b) and _in_eye(marks[m], view, b))
    found, u = _measure(reads, ("render_left", "render_right"), visible, wrap=False)
    width = reads["render_left"].width
    measured = (u["render_left"] - u["render_right"]) * width
    points = np.array([marks[m].position for m in found]).reshape(-1, 3)
    predicted = {}
    for side in (-1, 1):  # the left image's camera: left (−1, intended) or right of the head
        for window in (1, -1):  # its frustum shifted towards its own side (+1, intended) or away
            left = _eye_uv(points, view, side * b, window * side * b)[:, 0]
            right = _eye_uv(points, view, -side * b, -window * side * b)[:, 0]
            predicted[(side, window)] = (left - right) * width
    errors = {h: _worst(measured, p) for h, p in predicted.items()}
    tol = TOL_PX + TOL_FRACTION * float(np.max(np.abs(predicted[(-1, 1)]), initial=0.0))
    side, best = _decide(errors, 0, tol)
    window, _ = _decide(errors, 1, tol)
    seen = f"disparity of {', '.join(found) or 'no markers'} (render_left − render_right) {_numbers(measured)} px"
    order = (f"{seen}; left eye expected {_numbers(predicted[(-1, best[1])])}, the right camera's "
             f"{_numbers(predicted[(1, best[1])])}")
    shift = (f"{seen}; Window X as set expected {_numbers(predicted[(best[0], 1)])}, reversed "
             f"{_numbers(predicted[(best[0], -1)])}")
    if side == 1:
        order += ": the left image comes from the right camera, which no override fixes"
    flipped = {"docs": "reversed", "reversed": "docs"}[conventions["window_x_sign"]]
    return [_verdict("eye_order", side, -1, order, {}),
            _verdict("window_x_sign", window, 1, shift, {td_name("window_x_sign"): flipped})]


# ------------------------------------------------------------------ layouts


def _layout(name: str, reads: Mapping[str, _Image], eyes: tuple[str, str], axis: int, wrap: bool) -> Finding:
    """Whether a Layout TOP's first cell (left, axis 1; top, axis 0) holds the first of ``eyes``: the cells'
    disparities against the eyes' own."""
    if name not in reads or not all(e in reads for e in eyes):
        return _missing(name, name, *eyes)
    first, second = reads[name].cells(axis)
    cells = {"first": first, "second": second, **{e: reads[e] for e in eyes}}
    found, u = _measure(cells, tuple(cells), PARALLAX_MARKERS, wrap)
    width = first.width
    measured = _wrap(u["first"] - u["second"]) * width
    reference = _wrap(u[eyes[0]] - u[eyes[1]]) * width
    errors = {(1,): _worst(measured, reference), (-1,): _worst(measured, -reference)}
    order, _ = _decide(errors, 0, TOL_PX + TOL_FRACTION * float(np.max(np.abs(reference), initial=0.0)))
    cell = ("left", "right") if axis == 1 else ("top", "bottom")
    detail = (f"disparity of {', '.join(found) or 'no markers'} ({cell[0]} − {cell[1]} cell) {_numbers(measured)} "
              f"px, {eyes[0]} − {eyes[1]} {_numbers(reference)} px (in the cell's width)")
    if order == -1:
        detail += f": the {cell[0]} cell holds {eyes[1]}, which no override fixes"
    return _verdict(name, order, 1, detail, {})


# ------------------------------------------------------------------ omni-directional stereo


def _ods_sign_note(conventions: Mapping[str, Any], build: Build) -> str:
    sign = conventions["ods_ipd_sign"]
    if sign == "auto":
        sign = f"{'normal' if tuple(build) >= ODS_IPD_SIGN_FIXED else 'reversed'} (auto on {build[0]}.{build[1]})"
    return (f"a swapped camera index and a reversed IPD Shift sign look the same; the sign is taken as set: "
            f"{sign}")


def _ods(reads: Mapping[str, _Image], marks: Mapping[str, Marker], view: Mapping[str, Any],
         conventions: Mapping[str, Any], build: Build, sign: int | None) -> list[Finding]:
    """ods_left_index and ods_ipd_shift from the markers' parallax in ods_left − ods_right (``sign``: −1 where the
    equirect images are mirrored, which reverses it)."""
    names = ("ods_left_index", "ods_ipd_shift")
    if "ods_left" not in reads or "ods_right" not in reads:
        return [_missing(n, "ods_left", "ods_right") for n in names]
    if sign is None:
        return [Finding(n, UNCHECKED, "needs the equirect orientation, which could not be measured") for n in names]
    found, u = _measure(reads, ("ods_left", "ods_right"), PARALLAX_MARKERS, wrap=True)
    width = reads["ods_left"].width
    measured = sign * _wrap(u["ods_left"] - u["ods_right"]) * width
    points = np.array([marks[m].position for m in found]).reshape(-1, 3)
    written = _ods_written(view, conventions)
    predicted = {(order, semantics): order * _ods_parallax(points, view, _ods_eye_radius(semantics, written)) * width
                 for order in (1, -1) for semantics in ("half", "whole")}
    if any(np.isnan(p).any() for p in predicted.values()):
        return [Finding(n, UNCHECKED, "a marker lies inside the circle of the eyes: IPD too large") for n in names]
    errors = {h: _worst(measured, p) for h, p in predicted.items()}
    intended = conventions["ods_ipd_shift"]
    tol = TOL_PX + TOL_FRACTION * float(np.max(np.abs(predicted[(1, intended)]), initial=0.0))
    order, best = _decide(errors, 0, tol)
    semantics, _ = _decide(errors, 1, tol)
    seen = f"parallax of {', '.join(found) or 'no markers'} (ods_left − ods_right) {_numbers(measured)} px"
    index_detail = (f"{seen}; expected {_numbers(predicted[(1, best[1])])}, eyes swapped "
                    f"{_numbers(predicted[(-1, best[1])])} (IPD Shift read as {best[1]}); "
                    f"{_ods_sign_note(conventions, build)}")
    shift_detail = (f"{seen}; IPD Shift {written:g} read as each eye's offset (half) expected "
                    f"{_numbers(predicted[(best[0], 'half')])}, as the eyes' distance (whole) "
                    f"{_numbers(predicted[(best[0], 'whole')])}")
    return [_verdict(names[0], order, 1, index_detail, {td_name("ods_left_index"): 1 - conventions["ods_left_index"]}),
            _verdict(names[1], semantics, intended, shift_detail, {td_name("ods_ipd_shift"): semantics})]


# ------------------------------------------------------------------ dome


def _dome(reads: Mapping[str, _Image], marks: Mapping[str, Marker], view: Mapping[str, Any],
          conventions: Mapping[str, Any]) -> Finding:
    """dome_tilt_sign from the zenith, nadir, +X and −Z markers' angles from the fisheye centre."""
    name = "dome_tilt_sign"
    if "dome" not in reads:
        return _missing(name, "dome")
    image, half_fov = reads["dome"], view["dome_fov"] / 2
    px_per_degree = min(image.width, image.height) / 2 / half_fov
    names = ("zenith", "nadir", "+X", "-Z")
    measured = {}
    for m in names:
        spot = image.find(m)
        measured[m] = None if spot is None else math.hypot(spot[0] - 0.5, spot[1] - 0.5) * 2 * half_fov
    predicted, errors = {}, {}
    for sign in (1, -1):
        axis = g.rotation_matrix(view["yaw"], sign * view["dome_tilt"]) @ np.array([0.0, 0.0, -1.0])
        angles = {}
        for m in names:
            to = marks[m].position - _head(view)
            angles[m] = math.degrees(math.acos(np.clip(axis @ to / np.linalg.norm(to), -1.0, 1.0)))
        predicted[sign], errors[(sign,)] = angles, _dome_error(measured, angles, half_fov) * px_per_degree
    tilt, _ = _decide(errors, 0, POSITION_TOL_PX)

    def show(angles: Mapping[str, float | None], expected: bool) -> str:
        return ", ".join(f"{m} {_seen(a, half_fov, expected)}" for m, a in angles.items())

    detail = (f"angle from the fisheye centre: {show(measured, False)}; tilted up (docs) expected "
              f"{show(predicted[1], True)}, down {show(predicted[-1], True)}")
    flipped = {"docs": "reversed", "reversed": "docs"}[conventions["dome_tilt_sign"]]
    return _verdict(name, tilt, 1, detail, {td_name("dome_tilt_sign"): flipped})


def _seen(angle: float | None, half_fov: float, expected: bool) -> str:
    if angle is None or expected and angle - MARKER_RADIUS >= half_fov:
        return "not seen"
    if expected and angle + MARKER_RADIUS > half_fov:
        return "at the rim"
    return f"{angle:.1f}°"


def _dome_error(measured: Mapping[str, float | None], predicted: Mapping[str, float], half_fov: float) -> float:
    """Worst angle error (degrees) over markers predicted wholly inside or wholly outside the circle; a marker
    seen where none should be, or missing where one should be, counts as the circle's radius."""
    worst = 0.0
    for m, angle in predicted.items():
        seen = measured[m]
        if angle + MARKER_RADIUS <= half_fov:
            worst = max(worst, half_fov if seen is None else abs(seen - angle))
        elif angle - MARKER_RADIUS >= half_fov and seen is not None:
            worst = max(worst, half_fov)
    return worst


# ------------------------------------------------------------------ everything


def check(images: Mapping[str, Any], display: Mapping[str, Any], view: Mapping[str, Any],
          conventions: Mapping[str, Any], build: Build) -> list[Finding]:
    """Findings for TouchDesigner's renders of :func:`test_frame` (``images``: operator name → TOP.numpyArray()
    read-back; missing ones make the checks that need them "could not check") under the current display, view
    and convention parameters (validated here) on TouchDesigner ``build``."""
    display, view, conventions = validate_all((display, DISPLAY_PARAMS), (view, VIEW_PARAMS),
                                              (conventions, CONVENTION_PARAMS))
    marks = {m.name: m for m in markers(display, view)}
    reads = {name: _Image.read(image) for name, image in images.items() if image is not None}
    orientation, sign = _equirect(reads, marks, view, conventions)
    return [orientation,
            *_flat_pair(reads, marks, view, conventions),
            _layout("side_by_side", reads, ("render_left", "render_right"), axis=1, wrap=False),
            _layout("top_bottom", reads, ("render_left", "render_right"), axis=0, wrap=False),
            *_ods(reads, marks, view, conventions, build, sign),
            _layout("ods_top_bottom", reads, ("ods_left", "ods_right"), axis=0, wrap=True),
            _dome(reads, marks, view, conventions)]

