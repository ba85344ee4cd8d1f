"""Equirectangular geometry (numpy only).

Conventions (docs and shaders follow these): right-handed, Y up, the viewer looks down −Z.
u ∈ [0, 1] runs left→right over longitude θ = 2πu − π; v ∈ [0, 1] runs top→bottom over
latitude φ = π/2 − πv. Direction(θ, φ) = (cos φ sin θ, sin φ, −cos φ cos θ), so the image
centre (u = v = 0.5) looks straight ahead (−Z) and u = 0.75 looks right (+X).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .depth import blend_depth


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


# ------------------------------------------------------------------ sphere mesh


@dataclass(frozen=True)
class SphereMesh:
    """A UV sphere of unit radius on a (rows + 1) × (cols + 1) vertex grid.

    Vertex (i, j) has index i·(cols + 1) + j and sits at equirect (u, v) = (j/cols, i/rows):
    the seam column is duplicated (u = 0 and u = 1 coincide) so UVs never wrap backwards, and
    each pole row keeps distinct vertices (u at the middle of its segment) so the texture
    does not pinch. Triangles face the origin (counter-clockwise seen from the centre), and
    pole rows have one triangle per segment, never a degenerate one.
    """

    rows: int
    cols: int
    directions: np.ndarray  # (N, 3) float32 unit vectors = positions at radius 1
    normals: np.ndarray  # (N, 3) float32, pointing at the origin
    uvs: np.ndarray  # (N, 2) float32, image convention (v = 0 at the top)
    triangles: np.ndarray  # (M, 3) int32

    @property
    def vertex_count(self) -> int:
        return len(self.directions)


def sphere_mesh(rows: int, cols: int) -> SphereMesh:
    """Equirectangular unit sphere with ``rows`` latitude and ``cols`` longitude segments."""
    if not (isinstance(rows, int) and isinstance(cols, int) and 2 <= rows <= 8192 and 3 <= cols <= 16384):
        raise ValueError(f"need 2 <= rows <= 8192 and 3 <= cols <= 16384 integers, got rows={rows}, cols={cols}")
    u = np.tile(np.arange(cols + 1, dtype=np.float64) / cols, (rows + 1, 1))
    v = np.repeat(np.arange(rows + 1, dtype=np.float64)[:, None] / rows, cols + 1, axis=1)
    u[[0, -1], :] = np.minimum(u[[0, -1], :] + 0.5 / cols, 1.0)  # pole rows: mid-segment u
    directions = uv_to_direction(u, v).reshape(-1, 3)
    directions[: cols + 1] = (0.0, 1.0, 0.0)  # exact poles
    directions[-(cols + 1):] = (0.0, -1.0, 0.0)

    grid = np.arange((rows + 1) * (cols + 1), dtype=np.int32).reshape(rows + 1, cols + 1)
    a, b = grid[:-1, :-1], grid[:-1, 1:]  # top-left, top-right of each quad
    c, d = grid[1:, :-1], grid[1:, 1:]  # bottom-left, bottom-right
    upper = np.stack([a, b, d], axis=-1)  # (rows, cols, 3); none in the top row (a, b are the pole)
    lower = np.stack([a, d, c], axis=-1)  # the top row's pole triangle uses pole vertex j (a)
    bottom = np.stack([a[-1], b[-1], c[-1]], axis=-1)  # bottom row: pole vertex j (c), not j + 1
    triangles = np.concatenate([upper[1:-1].reshape(-1, 3), lower[:-1].reshape(-1, 3), bottom])
    if not _faces_origin(directions, triangles[:1]):
        triangles = triangles[:, ::-1]
    return SphereMesh(
        rows=rows,
        cols=cols,
        directions=directions.astype(np.float32),
        normals=(-directions).astype(np.float32),
        uvs=np.stack([u.ravel(), v.ravel()], axis=-1).astype(np.float32),
        triangles=np.ascontiguousarray(triangles, dtype=np.int32),
    )


def _faces_origin(positions: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    p0, p1, p2 = (positions[triangles[:, k]] for k in range(3))
    normal = np.cross(p1 - p0, p2 - p0)
    return np.einsum("ij,ij->i", normal, p0 + p1 + p2) < 0


class Displacer:
    """Radial displacement of a sphere mesh by a depth map of a fixed size, vectorised.

    Sampling is bilinear between pixel centres, wrapping across the 0°/360° seam and
    clamping at the top and bottom rows (as a GL texture with REPEAT on s, CLAMP on t);
    the pole vertices all take the mean of the first/last image row, so each pole stays a
    single point. The mesh is a regular grid, so the interpolation is separable: rows
    first, then columns, with indices and weights computed once.
    """

    def __init__(self, mesh: SphereMesh, depth_shape: tuple[int, int]) -> None:
        height, width = depth_shape
        if not (1 <= height <= 16384 and 1 <= width <= 16384):
            raise ValueError(f"depth size {width}x{height} is out of range")
        self.mesh, self.shape = mesh, (height, width)
        grid = mesh.uvs.reshape(mesh.rows + 1, mesh.cols + 1, 2).astype(np.float64)
        x = grid[1, :, 0] * width - 0.5  # any non-pole row holds the column u values
        y = np.clip(grid[:, 0, 1] * height - 0.5, 0.0, height - 1)
        x0, y0 = np.floor(x), np.floor(y)
        self._fx = (x - x0).astype(np.float32)
        self._fy = (y - y0).astype(np.float32)[:, None]
        self._x0 = x0.astype(np.intp) % width
        self._x1 = (self._x0 + 1) % width
        self._y0 = y0.astype(np.intp)
        self._y1 = np.minimum(self._y0 + 1, height - 1)

    def sample(self, depth: np.ndarray) -> np.ndarray:
        """Depth in [0, 1] (float32) at every vertex; uint16 input is scaled by 1/65535."""
        depth = np.asarray(depth)
        if depth.shape != self.shape:
            raise ValueError(f"depth is {depth.shape}, this displacer was built for {self.shape}")
        if depth.dtype == np.uint16:
            image = depth.astype(np.float32) * np.float32(1.0 / 65535.0)
        else:
            image = depth.astype(np.float32, copy=False)
        rows = image.take(self._y1, axis=0)  # lerp in place: rows = top + (bottom − top)·fy
        top = image.take(self._y0, axis=0)
        rows -= top
        rows *= self._fy
        rows += top  # (rows + 1, width)
        d = rows.take(self._x1, axis=1)
        left = rows.take(self._x0, axis=1)
        d -= left
        d *= self._fx
        d += left  # (rows + 1, cols + 1)
        d[0] = image[0].mean()
        d[-1] = image[-1].mean()
        return d.reshape(-1)

    def __call__(self, depth: np.ndarray, mapping) -> np.ndarray:
        """(N, 3) float32 displaced positions: direction · mapping(sampled depth)."""
        return self.mesh.directions * mapping(self.sample(depth))[:, None]


def displace_blended(mesh: SphereMesh, previous_depth: np.ndarray, depth: np.ndarray, blend: float,
                     mapping) -> np.ndarray:
    """(N, 3) float32 positions of ``mesh`` crossfading from ``previous_depth`` to ``depth`` (each of any size) at
    blend factor ``blend`` (0: the previous frame, 1: the new one): each frame sampled as :class:`Displacer`
    samples it (poles included), the samples blended by td_bridge.depth.blend_depth, then mapped. What the GLSL
    MAT draws during Blend Time (depthfusion_common.glsl)."""
    after = Displacer(mesh, np.shape(depth)).sample(depth)
    before = after if blend >= 1 else Displacer(mesh, np.shape(previous_depth)).sample(previous_depth)
    return mesh.directions * mapping(blend_depth(before, after, blend))[:, None]


def discontinuous_triangles(triangles: np.ndarray, radii: np.ndarray, max_jump: float = 0.1) -> np.ndarray:
    """True for triangles whose vertex radii differ by more than ``max_jump`` relative to the
    nearest one: the rubber sheets stretched across a depth edge, to cull or fade."""
    if not max_jump > 0:
        raise ValueError(f"max_jump must be positive, got {max_jump}")
    r0, r1, r2 = np.take(np.asarray(radii, dtype=np.float32), np.asarray(triangles).T)
    nearest = np.maximum(np.minimum(np.minimum(r0, r1), r2), np.float32(1e-12))
    farthest = np.maximum(np.maximum(r0, r1), r2)
    return farthest - nearest > max_jump * nearest


# ------------------------------------------------------------------ stereo


def rotation_matrix(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Head rotation (3×3): roll about Z, then pitch about X, then yaw about Y (degrees)."""
    y, p, r = np.radians([yaw_deg, pitch_deg, roll_deg])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return ry @ rx @ rz


def eye_positions(ipd: float, head_position=(0.0, 0.0, 0.0), head_rotation=None) -> tuple[np.ndarray, np.ndarray]:
    """(left, right) eye positions: ±ipd/2 along the head's right axis."""
    if not (np.isfinite(ipd) and ipd >= 0):
        raise ValueError(f"ipd must be a non-negative number, got {ipd}")
    rotation = np.eye(3) if head_rotation is None else np.asarray(head_rotation, dtype=np.float64)
    head = np.asarray(head_position, dtype=np.float64)
    right = rotation @ np.array([1.0, 0.0, 0.0])
    return head - right * ipd / 2, head + right * ipd / 2


def view_matrix(eye, rotation=None) -> np.ndarray:
    """World → eye 4×4 matrix for a camera at ``eye`` with ``rotation`` (camera looks down −Z)."""
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    m = np.eye(4)
    m[:3, :3] = r.T
    m[:3, 3] = -r.T @ np.asarray(eye, dtype=np.float64)
    return m


def frustum(left: float, right: float, bottom: float, top: float, near: float, far: float) -> np.ndarray:
    """OpenGL perspective matrix for an (asymmetric) frustum, as glFrustum."""
    if not (0 < near < far) or right == left or top == bottom:
        raise ValueError("need 0 < near < far and a non-empty window")
    return np.array([
        [2 * near / (right - left), 0, (right + left) / (right - left), 0],
        [0, 2 * near / (top - bottom), (top + bottom) / (top - bottom), 0],
        [0, 0, -(far + near) / (far - near), -2 * far * near / (far - near)],
        [0, 0, -1, 0],
    ])


def off_axis_projection(eye_offset: float, convergence: float, fov_y_deg: float, aspect: float,
                        near: float = 0.05, far: float = 1000.0) -> np.ndarray:
    """Projection for an eye ``eye_offset`` along the head's right axis (−ipd/2 or +ipd/2)
    whose window is shared with the other eye at distance ``convergence``: objects there
    have zero parallax, nearer ones pop out, farther ones recede."""
    if not (convergence > 0 and 0 < fov_y_deg < 180 and aspect > 0):
        raise ValueError("need convergence > 0, 0 < fov_y < 180 and aspect > 0")
    top = near * np.tan(np.radians(fov_y_deg) / 2)
    half_width = top * aspect
    shift = eye_offset * near / convergence
    return frustum(-half_width - shift, half_width - shift, -top, top, near, far)


# The stereo defaults' rule (docs/geometry.md, "Stereo defaults: the rule"): the sphere at true scale (nearest
# surfaces 1 m away, the human IPD), and the convergence distance of flat outputs chosen so that a third of the
# parallax between the nearest and the farthest surface lies in front of the screen, two thirds behind it.
PARALLAX_FRONT_SHARE = 1.0 / 3.0


def focal_length_px(fov_y_deg: float, height: float) -> float:
    """Focal length in pixels of an eye image ``height`` pixels high with vertical field of view ``fov_y_deg``."""
    return float(height) / (2.0 * _tan_half(fov_y_deg))


def screen_parallax(distance, ipd: float, convergence: float, fov_y_deg: float, height: float):
    """Horizontal screen parallax in pixels (right eye's x − left eye's x) of a point at camera depth ``distance``
    for the eye pair of :func:`off_axis_projection` (eyes ±ipd/2, one window at ``convergence``):
    ipd · f · (1/convergence − 1/distance), f = :func:`focal_length_px`. Positive behind the screen (uncrossed),
    negative in front of it (crossed), 0 at the convergence distance; divide by the width for a fraction of it.
    The same for every point at that depth, wherever it is in the image (the eyes' axes are parallel)."""
    if not (convergence > 0 and ipd >= 0):
        raise ValueError(f"need convergence > 0 and ipd >= 0, got convergence={convergence}, ipd={ipd}")
    return ipd * focal_length_px(fov_y_deg, height) * (1.0 / convergence - 1.0 / np.asarray(distance, np.float64))


def parallax_budget(nearest: float, farthest: float, ipd: float, convergence: float, fov_y_deg: float,
                    width: float, height: float) -> tuple[float, float]:
    """(in front, behind): the parallax of the nearest and the farthest surface straight ahead, as fractions of
    the image width (the first negative when the nearest surface comes out of the screen)."""
    front, behind = (float(screen_parallax(z, ipd, convergence, fov_y_deg, height)) / width
                     for z in (nearest, farthest))
    return front, behind


def convergence_for_split(nearest: float, farthest: float, front_share: float = PARALLAX_FRONT_SHARE) -> float:
    """The convergence distance that puts ``front_share`` of the parallax between ``nearest`` and ``farthest``
    in front of the screen and the rest behind it: 1/C = (1 − front_share)/nearest + front_share/farthest
    (parallax is linear in 1/distance, so the split does not depend on the IPD, field of view or image size)."""
    if not (0 < nearest < farthest and 0 <= front_share <= 1):
        raise ValueError(f"need 0 < nearest < farthest and 0 <= front_share <= 1, got {nearest}, {farthest}, "
                         f"{front_share}")
    return 1.0 / ((1.0 - front_share) / nearest + front_share / farthest)


def ipd_for_parallax_span(span: float, nearest: float, farthest: float, fov_y_deg: float, width: float,
                          height: float) -> float:
    """The IPD whose parallax from ``nearest`` to ``farthest`` spans ``span`` of the image width (a fraction):
    what a flat output needs for a parallax budget that the human IPD does not reach (hyperstereo: the scene
    then looks smaller than true scale, by IPD / 0.064)."""
    if not (0 < nearest < farthest and span >= 0):
        raise ValueError(f"need 0 < nearest < farthest and span >= 0, got {nearest}, {farthest}, {span}")
    return span * width / (focal_length_px(fov_y_deg, height) * (1.0 / nearest - 1.0 / farthest))


def side_by_side(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Left image | right image."""
    return np.concatenate([left, right], axis=1)


def top_bottom(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Left image above the right image (the usual over-under layout)."""
    return np.concatenate([left, right], axis=0)


# ------------------------------------------------------------------ omni-directional stereo


def ods_rays(width: int, height: int, ipd: float, pole_fade_start_deg: float = 60.0):
    """Omni-directional stereo rays per equirect pixel: (left origins, right origins, directions).

    Each eye sits on the circle of radius ipd/2, at ±(ipd/2)(cos θ, 0, sin θ) for pixel
    longitude θ, so its ray is tangent to the circle. Above ``pole_fade_start_deg`` latitude
    the separation fades smoothly to 0 at the poles, where ODS has no consistent baseline.
    """
    if not 0 <= pole_fade_start_deg < 90:
        raise ValueError(f"pole fade start must be in [0, 90) degrees, got {pole_fade_start_deg}")
    directions = pixel_directions(width, height)
    theta = 2 * np.pi * (np.arange(width) + 0.5) / width - np.pi
    phi = np.degrees(0.5 * np.pi - np.pi * (np.arange(height) + 0.5) / height)
    t = np.clip((90.0 - np.abs(phi)) / (90.0 - pole_fade_start_deg), 0.0, 1.0)
    fade = t * t * (3 - 2 * t)  # smoothstep
    radial = np.stack([np.cos(theta), np.zeros_like(theta), np.sin(theta)], axis=-1)
    offset = (ipd / 2) * fade[:, None, None] * radial[None, :, :]
    return -offset, offset, directions


# ------------------------------------------------------------------ fisheye (domemaster) and cube maps


def fisheye_uv_to_direction(u: np.ndarray, v: np.ndarray, fov_deg: float = 180.0) -> tuple[np.ndarray, np.ndarray]:
    """Directions for domemaster image coordinates, and a mask of pixels inside the circle.

    Equidistant fisheye: the image centre looks at the zenith (+Y), the bottom edge at the
    front (−Z), the right edge to the right (+X); radius ∝ angle from the zenith.
    """
    x = 2 * np.asarray(u, dtype=np.float64) - 1
    y = 1 - 2 * np.asarray(v, dtype=np.float64)
    r = np.hypot(x, y)
    alpha = r * np.radians(fov_deg) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        hx, hz = np.where(r > 0, x / r, 0.0), np.where(r > 0, y / r, 0.0)
    s = np.sin(alpha)
    return np.stack([s * hx, np.cos(alpha), s * hz], axis=-1), r <= 1.0


def direction_to_fisheye_uv(direction: np.ndarray, fov_deg: float = 180.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, inside) for directions; ``inside`` is False beyond the fisheye's field of view."""
    d = np.asarray(direction, dtype=np.float64)
    d = d / np.linalg.norm(d, axis=-1, keepdims=True)
    alpha = np.arccos(np.clip(d[..., 1], -1.0, 1.0))
    r = alpha / (np.radians(fov_deg) / 2)
    h = np.hypot(d[..., 0], d[..., 2])
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(h > 0, r * d[..., 0] / h, 0.0)
        y = np.where(h > 0, r * d[..., 2] / h, 0.0)
    return (x + 1) / 2, (1 - y) / 2, r <= 1.0 + 1e-12


CUBE_FACES = ("+X", "-X", "+Y", "-Y", "+Z", "-Z")
# OpenGL cube-map selection: face → (major axis, sign, sc axis and sign, tc axis and sign)
_CUBE = ((0, 1, (2, -1), (1, -1)), (0, -1, (2, 1), (1, -1)), (1, 1, (0, 1), (2, 1)),
         (1, -1, (0, 1), (2, -1)), (2, 1, (0, 1), (1, -1)), (2, -1, (0, -1), (1, -1)))


def direction_to_cube(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(face index into CUBE_FACES, s, t) with OpenGL's cube-map rules; s, t ∈ [0, 1]."""
    d = np.asarray(direction, dtype=np.float64)
    shape = d.shape[:-1]
    d = d.reshape(-1, 3)
    axis = np.argmax(np.abs(d), axis=1)
    face = 2 * axis + (d[np.arange(len(d)), axis] < 0)
    s, t = np.empty(len(d)), np.empty(len(d))
    for index, (major, _, (sa, ss), (ta, ts)) in enumerate(_CUBE):
        m = face == index
        ma = np.abs(d[m, major])
        s[m] = (ss * d[m, sa] / ma + 1) / 2
        t[m] = (ts * d[m, ta] / ma + 1) / 2
    return face.reshape(shape), s.reshape(shape), t.reshape(shape)


def cube_to_direction(face: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Unit directions for cube face indices and (s, t) ∈ [0, 1]: inverse of direction_to_cube."""
    face = np.asarray(face)
    sc, tc = 2 * np.asarray(s, dtype=np.float64) - 1, 2 * np.asarray(t, dtype=np.float64) - 1
    out = np.zeros(np.broadcast(face, sc, tc).shape + (3,))
    face, sc, tc = np.broadcast_arrays(face, sc, tc)
    for index, (major, msign, (sa, ss), (ta, ts)) in enumerate(_CUBE):
        m = face == index
        out[m, major] = msign
        out[m, sa] = ss * sc[m]
        out[m, ta] = ts * tc[m]
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


# ------------------------------------------------------------------ perspective (pinhole) views


def _tan_half(fov_deg: float) -> float:
    if not (np.isfinite(fov_deg) and 0 < fov_deg < 180):
        raise ValueError(f"a perspective view needs 0 < fov < 180 degrees, got {fov_deg}")
    return float(np.tan(np.radians(fov_deg) / 2))


def perspective_uv_to_direction(u: np.ndarray, v: np.ndarray, fov_deg: float, rotation=None) -> np.ndarray:
    """Unit world directions for image coordinates of a square pinhole view.

    u ∈ [0, 1] runs left→right, v ∈ [0, 1] top→bottom; ``fov_deg`` spans each side. The camera looks down its
    −Z with +Y up and +X right, turned into the world by ``rotation`` (camera → world, e.g. rotation_matrix).
    """
    half = _tan_half(fov_deg)
    x = (2 * np.asarray(u, dtype=np.float64) - 1) * half
    y = (1 - 2 * np.asarray(v, dtype=np.float64)) * half
    x, y = np.broadcast_arrays(x, y)
    d = np.stack([x, y, -np.ones_like(x)], axis=-1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    return d @ r.T


def direction_to_perspective_uv(direction: np.ndarray, fov_deg: float,
                                rotation=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u, v, inside) of world directions in a square pinhole view: the inverse of
    :func:`perspective_uv_to_direction`; ``inside`` is False behind the camera or outside the image."""
    half = _tan_half(fov_deg)
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    cam = np.asarray(direction, dtype=np.float64) @ r  # world → camera: rᵀ·d for each row vector
    ahead = -cam[..., 2]
    front = ahead > 1e-12
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(front, cam[..., 0] / np.where(front, ahead, 1.0), 0.0) / half
        y = np.where(front, cam[..., 1] / np.where(front, ahead, 1.0), 0.0) / half
    inside = front & (np.abs(x) <= 1.0 + 1e-12) & (np.abs(y) <= 1.0 + 1e-12)
    return (x + 1) / 2, (1 - y) / 2, inside
