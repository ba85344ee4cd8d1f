"""One frame on the GPU: its textures, the displaced sphere and the GLSL MAT's program.

A :class:`Scene` draws the frame as the TouchDesigner component does: td_bridge's sphere mesh, the
component's vertex and pixel shaders (generator/render/glsl.py), the uniforms td_bridge.render_setup
gives the GLSL MAT, and camera matrices from td_bridge.geometry. Images come back as (H, W, 3)
uint8 with row 0 at the top.

A scene may also hold the frame before it, as the component does during Blend Time: the shader then crossfades
colour and depth from that frame at the blend factor (td_bridge.depth.blend_depth). Without one, the frame's own
textures are bound as the previous ones and the factor is 1: the single-frame drawing, exactly.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from td_bridge.depth import DepthMapping
from td_bridge.geometry import sphere_mesh
from td_bridge.protocol import Frame, check_arrays
from td_bridge.render_setup import material_settings, shader_uniforms
from td_bridge.top_frames import to_top

from .gl import glsl_version
from .glsl import POSITION, POSITION_ATTRIBUTES, pixel_shader, vertex_shader

MAX_SIZE = 16384  # pixels per side: the schema's largest eye and dome images


def set_uniforms(program: Any, values: Mapping[str, Any]) -> None:
    """Write values into the program's uniforms; vectors are cut to the uniform's size, matrices are
    numpy arrays in math (row-major) order. Uniforms the compiler removed are skipped."""
    for name, value in values.items():
        if name not in program:
            continue
        if isinstance(value, np.ndarray):
            program[name].write(np.ascontiguousarray(value.T, dtype="f4").tobytes())  # GL is column-major
        elif isinstance(value, tuple):
            program[name].value = value[:program[name].dimension]
        else:
            program[name].value = value


def _textures(ctx: Any, top: Any) -> tuple[Any, Any]:
    """(depth, colour) textures of a frame in TouchDesigner's layout, sampled as the GLSL MAT's samplers are."""
    import moderngl

    size = (top.depth.shape[1], top.depth.shape[0])
    depth = ctx.texture(size, 1, data=top.depth.tobytes(), dtype="nu2")
    color = ctx.texture(size, 3, data=top.rgb.tobytes())
    color.repeat_x, color.repeat_y = True, False  # wrap across the seam, clamp at the poles
    color.filter = (moderngl.LINEAR, moderngl.LINEAR)
    return depth, color


# Texture units: the frame, the ODS renderer's ray origins (generator/render/ods.py), the previous frame.
UNITS = {"sDepth": 0, "sColor": 1, "sOrigin": 2, "sDepthPrev": 3, "sColorPrev": 4}


class Scene:
    """A frame (``rgb`` (H, W, 3) uint8, ``depth`` (H, W) uint16) ready to draw with validated display
    parameters and an edge mode (td_bridge.params DISPLAY_PARAMS / VIEW_PARAMS ``edges``); optionally blended from
    a ``previous`` frame ((rgb, depth), any size) at factor ``blend`` (0: the previous frame, 1: this one)."""

    def __init__(self, ctx: Any, rgb: np.ndarray, depth: np.ndarray, display: Mapping[str, Any],
                 edges: str = "cull", samples: int = 4, previous: tuple[np.ndarray, np.ndarray] | None = None,
                 blend: float = 1.0) -> None:
        check_arrays(rgb, depth)
        if previous is not None:
            check_arrays(*previous)
        if samples not in (1, 2, 4, 8):
            raise ValueError(f"samples must be 1, 2, 4 or 8, got {samples}")
        self.ctx, self.samples, self.display = ctx, samples, dict(display)
        self.material = material_settings(edges)  # fade: premultiplied blending, no depth writes (as the GLSL MAT)
        self.mapping = DepthMapping.from_params(display)
        top = to_top(Frame(rgb, depth, {}))
        self.size = (depth.shape[1], depth.shape[0])
        self.depth, self.color = _textures(ctx, top)
        before = top if previous is None else to_top(Frame(previous[0], previous[1], {}))
        # no previous frame: this frame's own textures stand in for it (the shader does not read them at blend 1)
        self.depth_prev, self.color_prev = (self.depth, self.color) if previous is None else _textures(ctx, before)
        self.uniforms: dict[str, Any] = {
            **{name: unit for name, unit in UNITS.items() if name != "sOrigin"},
            **shader_uniforms(display, edges, top.poles, before.poles, 1.0 if previous is None else blend)}
        extremes = [depth.min(), depth.max()] + ([] if previous is None else [previous[1].min(), previous[1].max()])
        radii = self.mapping(np.array(extremes, np.float32) / np.float32(65535))
        # nearest and farthest surface from the centre (a blended depth lies between the two frames' depths)
        self.radii = (float(radii.min()), float(radii.max()))
        mesh = sphere_mesh(display["mesh_rows"], display["mesh_cols"])
        self.version = glsl_version(ctx)
        self.program = ctx.program(vertex_shader=vertex_shader(self.version),
                                   fragment_shader=pixel_shader(self.version))
        set_uniforms(self.program, self.uniforms)
        self._vbo = ctx.buffer(np.ascontiguousarray(mesh.directions, dtype="f4").tobytes())
        self._ibo = ctx.buffer(np.ascontiguousarray(mesh.triangles, dtype="i4").tobytes())
        self._vao = ctx.vertex_array(self.program, [(self._vbo, "3f", POSITION_ATTRIBUTES[POSITION])],
                                     index_buffer=self._ibo, index_element_size=4)
        self._targets: dict[tuple[int, int, int], tuple[Any, Any]] = {}

    def set_blend(self, blend: float) -> None:
        """Draw at blend factor ``blend`` from now on (0: the previous frame, 1: this one; 1 without a previous)."""
        if not 0.0 <= blend <= 1.0:
            raise ValueError(f"blend must be in [0, 1], got {blend}")
        self.uniforms["uBlend"] = (float(blend) if self.depth_prev is not self.depth else 1.0, 0.0, 0.0, 0.0)
        set_uniforms(self.program, {"uBlend": self.uniforms["uBlend"]})

    def bind_textures(self) -> None:
        self.depth.use(UNITS["sDepth"])
        self.color.use(UNITS["sColor"])
        self.depth_prev.use(UNITS["sDepthPrev"])
        self.color_prev.use(UNITS["sColorPrev"])

    def target(self, width: int, height: int, samples: int | None = None) -> tuple[Any, Any]:
        """(draw framebuffer, resolved framebuffer) of this size and multisampling (default: the scene's),
        kept for the next frame of a video."""
        if not (1 <= width <= MAX_SIZE and 1 <= height <= MAX_SIZE):
            raise ValueError(f"image size {width}x{height} is out of range (1-{MAX_SIZE} per side)")
        samples = self.samples if samples is None else samples
        key = (width, height, samples)
        if key not in self._targets:
            ctx, size = self.ctx, (width, height)
            multi = samples if samples > 1 else 0  # 1 would make a multisampled buffer that cannot be read
            draw = ctx.framebuffer(ctx.renderbuffer(size, samples=multi), ctx.depth_renderbuffer(size, samples=multi))
            resolved = ctx.framebuffer(ctx.renderbuffer(size)) if samples > 1 else draw
            self._targets[key] = (draw, resolved)
        return self._targets[key]

    def read(self, width: int, height: int, samples: int | None = None) -> np.ndarray:
        """The drawn image, resolved, as (height, width, 3) uint8 with row 0 at the top."""
        draw, resolved = self.target(width, height, samples)
        if resolved is not draw:
            self.ctx.copy_framebuffer(resolved, draw)
        data = np.frombuffer(resolved.read(components=3, alignment=1), np.uint8)
        return data.reshape(height, width, 3)[::-1].copy()

    def draw(self, world_to_proj: np.ndarray, width: int, height: int) -> np.ndarray:
        """The displaced sphere seen through a 4×4 world → clip matrix (OpenGL conventions)."""
        import moderngl

        draw, _ = self.target(width, height)
        draw.use()
        self.ctx.enable(moderngl.DEPTH_TEST)
        if self.material["blending"]:
            self.ctx.enable(moderngl.BLEND)
            self.ctx.blend_func = moderngl.ONE, moderngl.ONE_MINUS_SRC_ALPHA
        else:
            self.ctx.disable(moderngl.BLEND)
        self.ctx.disable(moderngl.CULL_FACE)  # the camera is inside the sphere, as the component renders it
        draw.depth_mask = True  # clearing honours the mask
        draw.clear(0.0, 0.0, 0.0, 0.0)
        draw.depth_mask = self.material["depthwriting"]
        draw.use()  # the framebuffer applies its depth mask when it is bound
        self.bind_textures()
        set_uniforms(self.program, {"uTDWorldToProj": np.asarray(world_to_proj, dtype=np.float64)})
        self._vao.render(moderngl.TRIANGLES)
        return self.read(width, height)

    def release(self) -> None:
        for draw, resolved in self._targets.values():
            for fbo in {draw, resolved}:
                for attachment in (*fbo.color_attachments, fbo.depth_attachment):
                    if attachment is not None:
                        attachment.release()
                fbo.release()
        textures = {self.color, self.depth, self.color_prev, self.depth_prev}
        for thing in (self._vao, self._ibo, self._vbo, self.program, *textures):
            thing.release()
        self._targets.clear()
