"""The component's GLSL MAT stages as WebGL 2 (GLSL ES 3.0) shaders: one source, a small macro header and footer.

Each stage is touchdesigner/shader_source.py's text, unchanged. In front goes what TouchDesigner would declare
(position input, ``TDDeform``, ``TDWorldToProj``, ``TDCheckDiscard``, ``TDOutputSwizzle``, as the renderer's
stand-in in generator/render/glsl.py) plus default precisions. GLSL ES 3.0 has no interface blocks between stages,
so the header turns the stage's block into a plain struct variable (``#define out struct`` in the vertex stage,
``#define in struct`` in the pixel stage, and ``main`` renamed); the footer ends those macros, declares the
varyings and a ``main`` that copies the struct across and calls the stage's own.
"""

from __future__ import annotations

from generator.render.glsl import POSITION, shader_source

VERSION = "#version 300 es\n"
PRECISION = "precision highp float;\nprecision highp int;\nprecision highp sampler2D;\n"
VERTEX_HEADER = """in vec3 tdPosition;
vec3 TDPos() { return tdPosition; }
uniform mat4 uTDWorldToProj;
vec4 TDDeform(vec3 p) { return vec4(p, 1.0); }
vec4 TDWorldToProj(vec4 p) { return uTDWorldToProj * p; }
#define main dfStageMain
#define out struct
"""
VERTEX_FOOTER = """
#undef out
#undef main
out vec3 vDirection;
out float vKeep;
void main()
{
    dfStageMain();
    vDirection = oVert.direction;
    vKeep = oVert.keep;
}
"""
PIXEL_HEADER = """void TDCheckDiscard() {}
vec4 TDOutputSwizzle(vec4 c) { return c; }
#define main dfStageMain
#define in struct
"""
PIXEL_FOOTER = """
#undef in
#undef main
in vec3 vDirection;
in float vKeep;
void main()
{
    iVert.direction = vDirection;
    iVert.keep = vKeep;
    dfStageMain();
}
"""
POSITION_ATTRIBUTE = "tdPosition"


def vertex_shader() -> str:
    """The GLSL MAT's vertex stage for WebGL 2."""
    return VERSION + PRECISION + VERTEX_HEADER + shader_source().vertex_source(POSITION) + VERTEX_FOOTER


def pixel_shader() -> str:
    """The GLSL MAT's pixel stage for WebGL 2."""
    return VERSION + PRECISION + PIXEL_HEADER + shader_source().pixel_source() + PIXEL_FOOTER
