"""Omni-directional stereo: one ray per output pixel, cast in a fragment shader against the displaced sphere.

ODS gives every column its own eye position (tangent to the circle of radius IPD/2, faded to one point
towards the poles): td_bridge.geometry.ods_rays computes those origins per pixel and they go to the GPU as a
texture, so the renderer has no copy of that math. Casting per pixel makes each pixel exactly its own ray:
no slit seams, no interpolation of a non-linear projection across triangles, the 0°/360° seam and the poles
as continuous as the depth sampler (depthfusion_common.glsl, which also gives the surface and its edge test).
"""

from __future__ import annotations

import math
from importlib.resources import files
from typing import Any, Mapping

import numpy as np

from td_bridge import geometry as g

from .glsl import common_source
from .scene import UNITS, Scene, set_uniforms

FULL_SCREEN = """
void main()
{
    vec2 corner = vec2(float((gl_VertexID << 1) & 2), float(gl_VertexID & 2));  // one triangle over the screen
    gl_Position = vec4(corner * 2.0 - 1.0, 0.0, 1.0);
}
"""


def raycast_shader(version: str) -> str:
    return version + common_source() + "\n" + files(__package__).joinpath("ods_raycast.glsl").read_text("utf-8")


def march_steps(reach: float, radii: tuple[float, float], depth_width: int) -> int:
    """Steps from the nearest to the farthest radius: 8, plus 4 per depth texel the ray sweeps across as seen
    from the centre (a ray from ``reach`` off the centre turns by at most asin(reach / nearest radius)). Along
    so short a path the bilinear surface changes slope a few times at most: a step per quarter texel finds
    its first crossing."""
    sweep = math.asin(min(1.0, reach / radii[0])) * depth_width / (2 * math.pi)
    return int(min(2048, 8 + math.ceil(4 * sweep)))


class OdsRenderer:
    """Draws ODS equirectangular eye images (2·height × height) of a Scene."""

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.program = scene.ctx.program(vertex_shader=scene.version + FULL_SCREEN,
                                         fragment_shader=raycast_shader(scene.version))
        set_uniforms(self.program, {**scene.uniforms, "sOrigin": UNITS["sOrigin"]})
        self._vao = scene.ctx.vertex_array(self.program, [])
        self._rays: tuple[tuple[int, float], tuple[np.ndarray, np.ndarray]] | None = None

    def _origins(self, height: int, ipd: float) -> tuple[np.ndarray, np.ndarray]:
        key = (height, ipd)
        if self._rays is None or self._rays[0] != key:
            left, right, _ = g.ods_rays(2 * height, height, ipd)
            self._rays = key, tuple(np.ascontiguousarray(o[::-1], dtype="f4") for o in (left, right))  # GL rows
        return self._rays[1]

    def eyes(self, view: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        """(left, right) eye panoramas for validated view parameters: the ODS camera at the head position,
        turned by yaw (render_setup's cam_ods), each (ods_height, 2·ods_height, 3) uint8."""
        import moderngl

        height, ipd = view["ods_height"], view["ipd"]
        head = np.array([view["head_x"], view["head_y"], view["head_z"]])
        reach = float(np.linalg.norm(head)) + ipd / 2
        if reach >= self.scene.radii[0]:
            raise ValueError(f"ODS needs both eyes inside the nearest surface: head distance + ipd/2 = {reach:g} m, "
                             f"nearest surface {self.scene.radii[0]:g} m from the centre")
        set_uniforms(self.program, {
            "uBlend": self.scene.uniforms["uBlend"],  # the scene's blend factor, which set_blend may have changed
            "uHeadRotation": g.rotation_matrix(view["yaw"], 0.0), "uHead": tuple(float(x) for x in head),
            "uRadii": self.scene.radii,
            "uSteps": march_steps(reach, self.scene.radii, self.scene.size[0]),
        })
        ctx, images = self.scene.ctx, []
        draw, _ = self.scene.target(2 * height, height, samples=1)
        for origins in self._origins(height, ipd):
            texture = ctx.texture((2 * height, height), 3, data=origins.tobytes(), dtype="f4")
            texture.filter = (moderngl.NEAREST, moderngl.NEAREST)
            draw.use()
            ctx.disable(moderngl.DEPTH_TEST)
            draw.clear(0.0, 0.0, 0.0, 0.0)
            self.scene.bind_textures()
            texture.use(UNITS["sOrigin"])
            self._vao.render(moderngl.TRIANGLES, vertices=3)
            images.append(self.scene.read(2 * height, height, samples=1))
            texture.release()
        return images[0], images[1]

    def release(self) -> None:
        self._vao.release()
        self.program.release()
