"""Every view the renderer makes of a frame: eye images and their stereo layouts, 360° stereo, dome, cube map.

Sizes and settings are the view parameters of td_bridge.params (VIEW_PARAMS), as the TouchDesigner component
reads them: eye images are eye_width × eye_height (side-by-side and top-bottom: packing half squeezes both eyes
into one eye's size, full puts them side by side), ODS eyes 2·ods_height × ods_height (left above right),
the dome dome_size², cube faces td_bridge.render_setup.cube_face_size of the 360° height.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from td_bridge import geometry as g
from td_bridge.params import DISPLAY_PARAMS, VIEW_PARAMS, validate_all
from td_bridge.render_setup import clip_range, cube_face_size

from . import cameras
from .gl import create_context
from .ods import OdsRenderer
from .scene import Scene

VIEWS = ("left", "right", "mono", "sbs", "tb", "anaglyph", "ods", "dome", "cubemap")


def anaglyph(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Red–cyan anaglyph: red from the left eye, green and blue from the right."""
    return np.concatenate([left[..., :1], right[..., 1:]], axis=-1)


def output_size(name: str, view: Mapping[str, Any]) -> tuple[int, int]:
    """(width, height) of view ``name``'s image for validated view parameters, before rendering it."""
    width, height = view["eye_width"], view["eye_height"]
    full = view["packing"] == "full"
    sizes = {"left": (width, height), "right": (width, height), "mono": (width, height),
             "anaglyph": (width, height), "sbs": (2 * width if full else width, height),
             "tb": (width, 2 * height if full else height), "ods": (2 * view["ods_height"], 2 * view["ods_height"]),
             "dome": (view["dome_size"], view["dome_size"])}
    if name == "cubemap":
        face = cube_face_size(view["ods_height"])
        return 6 * face, face
    if name not in sizes:
        raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {name!r}")
    return sizes[name]


class Renderer:
    """Renders one frame (rgb (H, W, 3) uint8, depth (H, W) uint16) with display parameters (DISPLAY_PARAMS) and
    the view parameters' edge mode; each :meth:`render` takes a view name and view parameters (VIEW_PARAMS).

    With ``previous`` (the frame before it, (rgb, depth) of any size) it draws the component's frame blend at
    factor ``blend`` (0: the previous frame, 1: this one; :meth:`set_blend` changes it): colour and depth
    crossfaded, depth before the mapping (td_bridge.depth.blend_depth). VIEW_PARAMS' blend_time, the component's
    timing of that blend, is not used here."""

    def __init__(self, rgb: np.ndarray, depth: np.ndarray, display: Mapping[str, Any] | None = None,
                 edges: str | None = None, samples: int = 4, ctx: Any = None,
                 previous: tuple[np.ndarray, np.ndarray] | None = None, blend: float = 1.0) -> None:
        display, view = validate_all((display or {}, DISPLAY_PARAMS), ({"edges": edges or "cull"}, VIEW_PARAMS))
        self._own_context = ctx is None
        self.ctx = create_context() if ctx is None else ctx
        self.scene = Scene(self.ctx, rgb, depth, display, view["edges"], samples, previous, blend)
        self._ods: OdsRenderer | None = None
        self._fisheye: cameras.Fisheye | None = None

    def set_blend(self, blend: float) -> None:
        """Render at blend factor ``blend`` from now on (no effect without a previous frame)."""
        self.scene.set_blend(blend)

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def eye(self, view: Mapping[str, Any], eye: str, width: int | None = None, height: int | None = None) -> np.ndarray:
        """One eye's image, eye_width × eye_height unless a (squeezed) size is given."""
        width, height = width or view["eye_width"], height or view["eye_height"]
        return self.scene.draw(cameras.eye_matrix(view, self.scene.display, eye), width, height)

    def pair(self, view: Mapping[str, Any], squeeze: str = "") -> tuple[np.ndarray, np.ndarray]:
        """(left, right); ``squeeze`` "width" or "height" halves that side (left gets the smaller half)."""
        width, height = view["eye_width"], view["eye_height"]
        sizes = {"": ((width, height),) * 2, "width": ((width // 2, height), (width - width // 2, height)),
                 "height": ((width, height // 2), (width, height - height // 2))}[squeeze]
        return self.eye(view, "left", *sizes[0]), self.eye(view, "right", *sizes[1])

    def cube_faces(self, position: np.ndarray, rotation: np.ndarray, size: int, view: Mapping[str, Any]) -> np.ndarray:
        """(6, size, size, 3) faces in CUBE_FACES order, camera-frame axes turned into the world by ``rotation``."""
        near, far = clip_range(self.scene.display, view)
        return np.stack([self.scene.draw(m, size, size)
                         for m in cameras.cube_face_matrices(position, rotation, near, far)])

    def ods(self, view: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        if self._ods is None:
            self._ods = OdsRenderer(self.scene)
        return self._ods.eyes(view)

    def render(self, name: str, view: Mapping[str, Any] | None = None) -> np.ndarray:
        """The image (rows top first, (h, w, 3) uint8) of view ``name`` (one of VIEWS)."""
        if name not in VIEWS:
            raise ValueError(f"view must be one of {', '.join(VIEWS)}, got {name!r}")
        (view,) = validate_all((view or {}, VIEW_PARAMS))
        if name in ("left", "right", "mono"):
            return self.eye(view, name)
        if name == "anaglyph":
            return anaglyph(*self.pair(view))
        if name in ("sbs", "tb"):  # packing half: one eye's size, each eye squeezed into its half (as TD does)
            squeeze = {"sbs": "width", "tb": "height"}[name] if view["packing"] == "half" else ""
            return {"sbs": g.side_by_side, "tb": g.top_bottom}[name](*self.pair(view, squeeze))
        if name == "ods":
            return g.top_bottom(*self.ods(view))
        head = cameras.head_position(view)
        if name == "dome":
            face = cube_face_size(view["dome_size"])
            if self._fisheye is None or self._fisheye.key != (view["dome_size"], view["dome_fov"], face):
                self._fisheye = cameras.Fisheye(view["dome_size"], view["dome_fov"], face)
            return self._fisheye(self.cube_faces(head, cameras.dome_rotation(view), face, view))
        faces = self.cube_faces(head, g.rotation_matrix(view["yaw"], 0.0), cube_face_size(view["ods_height"]), view)
        return np.concatenate(list(faces), axis=1)  # a 6 × 1 strip: +X, −X, +Y, −Y, +Z, −Z

    def release(self) -> None:
        if self._ods is not None:
            self._ods.release()
        self.scene.release()
        if self._own_context:
            self.ctx.release()
