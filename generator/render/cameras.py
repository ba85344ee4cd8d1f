"""Camera matrices and panorama resampling, all from td_bridge.geometry and td_bridge.render_setup.

Matrices are 4×4 world → clip (OpenGL conventions) for :meth:`Scene.draw`. Eye cameras are the
component's: at the head position ±IPD/2 along the head's right axis, turned by yaw then pitch,
with off-axis frusta sharing a window at the convergence distance. Cube faces follow OpenGL's
cube-map rules (td_bridge.geometry.CUBE_FACES): face image row 0 is t = 0, column 0 is s = 0.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from td_bridge import geometry as g
from td_bridge.render_setup import clip_range

EYE_SIGNS = {"left": -1.0, "mono": 0.0, "right": 1.0}


def head_position(view: Mapping[str, Any]) -> np.ndarray:
    return np.array([view["head_x"], view["head_y"], view["head_z"]], dtype=np.float64)


def eye_matrix(view: Mapping[str, Any], display: Mapping[str, Any], eye: str) -> np.ndarray:
    """World → clip for the left, right or mono (head centre) eye camera of validated parameters (the frustum's
    aspect is the eye image's, eye_width / eye_height, also where a half-packed layout squeezes the image)."""
    if eye not in EYE_SIGNS:
        raise ValueError(f"eye must be one of {', '.join(EYE_SIGNS)}, got {eye!r}")
    rotation = g.rotation_matrix(view["yaw"], view["pitch"])
    left, right = g.eye_positions(view["ipd"], head_position(view), rotation)
    position = {"left": left, "right": right, "mono": (left + right) / 2}[eye]
    near, far = clip_range(display, view)
    offset = EYE_SIGNS[eye] * view["ipd"] / 2
    projection = g.off_axis_projection(offset, view["convergence"], view["fov"], view["eye_width"] / view["eye_height"],
                                          near, far)
    return projection @ g.view_matrix(position, rotation)


def cube_face_matrices(position: np.ndarray, rotation: np.ndarray, near: float, far: float) -> list[np.ndarray]:
    """World → clip for the six 90° cube faces (CUBE_FACES order) of a camera at ``position`` turned by
    ``rotation``, laid out so that the image read back (row 0 at the top) is the face's (s, t) grid."""
    matrices = []
    projection = g.frustum(-near, near, -near, near, near, far)
    for face in range(len(g.CUBE_FACES)):
        forward = g.cube_to_direction(face, 0.5, 0.5)
        s_axis = np.sqrt(2.0) * g.cube_to_direction(face, 1.0, 0.5) - forward
        t_axis = np.sqrt(2.0) * g.cube_to_direction(face, 0.5, 1.0) - forward
        axes = np.column_stack([s_axis, -t_axis, -forward])  # camera x, y (t grows downwards), z (backwards)
        matrices.append(projection @ g.view_matrix(position, rotation @ axes))
    return matrices


class CubeLookup:
    """Bilinear colours of fixed camera-frame directions (…, 3) in six n × n faces (CUBE_FACES order): where
    each direction falls is worked out once, so a video pays only the gather per frame."""

    def __init__(self, directions: np.ndarray, n: int) -> None:
        face, s, t = g.direction_to_cube(directions)
        x = np.clip(s * n - 0.5, 0.0, n - 1.0)
        y = np.clip(t * n - 0.5, 0.0, n - 1.0)
        x0, y0 = np.floor(x).astype(np.int32), np.floor(y).astype(np.int32)
        x1, y1 = np.minimum(x0 + 1, n - 1), np.minimum(y0 + 1, n - 1)
        fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
        base = face.astype(np.int32) * n * n
        self.n, self.shape = n, face.shape
        self.index = np.stack([base + y0 * n + x0, base + y0 * n + x1, base + y1 * n + x0, base + y1 * n + x1])
        self.weight = np.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy])[..., None]

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        if faces.shape != (6, self.n, self.n, 3):
            raise ValueError(f"expected six {self.n}×{self.n} RGB faces, got {faces.shape}")
        flat = faces.reshape(-1, 3)
        colour = sum(flat[index] * weight for index, weight in zip(self.index, self.weight))
        return np.clip(np.rint(colour), 0, 255).astype(np.uint8)


def dome_rotation(view: Mapping[str, Any]) -> np.ndarray:
    """The dome camera (render_setup's cam_dome: yaw, then tilt upwards)."""
    return g.rotation_matrix(view["yaw"], view["dome_tilt"])


class Fisheye:
    """Domemaster (size × size) from cube faces (n × n) rendered by the dome camera: the fisheye centre looks along
    the camera's view direction, its bottom edge towards the camera's down (td_bridge.geometry's domemaster with
    the zenith turned onto the camera's axis); black outside the circle."""

    def __init__(self, size: int, fov_deg: float, n: int) -> None:
        u = (np.arange(size) + 0.5) / size
        directions, self.inside = g.fisheye_uv_to_direction(u[None, :], u[:, None], fov_deg)
        to_camera = g.rotation_matrix(0.0, -90.0)  # the domemaster's zenith (+Y) onto the camera's forward (−Z)
        self.lookup = CubeLookup(directions[self.inside] @ to_camera.T, n)
        self.key = (size, fov_deg, n)

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        image = np.zeros(self.inside.shape + (3,), np.uint8)
        image[self.inside] = self.lookup(faces)
        return image
