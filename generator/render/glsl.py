"""The TouchDesigner component's GLSL MAT outside TouchDesigner.

The shader text comes from ``touchdesigner/shader_source.py`` (the file the builder reads inside
TouchDesigner); in front of each stage goes the stand-in for what TouchDesigner declares: the
position input (``P`` or ``TDPos()``, by build), ``TDDeform``,
``TDWorldToProj`` (here the eye camera's projection · view, the uniform ``uTDWorldToProj``),
``TDCheckDiscard`` and ``TDOutputSwizzle``. The renderer and tests/test_shaders.py share these
headers, so what the tests validate is what the renderer draws.
"""

from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from types import ModuleType

TOUCHDESIGNER = Path(__file__).resolve().parents[2] / "touchdesigner"
GLSL_VERSION = "#version 450 core\n"  # OpenGL 4.5 (gl.glsl_version: 410 on macOS); TouchDesigner says 460
POSITION = "TDPos()"  # the renderer's position input (current TouchDesigner builds; td_bridge.td_builds)

# What TouchDesigner declares in front of a GLSL MAT's code (only the names our shaders use). The vertex
# position input differs by build: P on 2023 builds, TDPos() on 2025 builds (td_bridge.td_builds).
POSITION_DECLARATIONS = {"P": "layout(location = 0) in vec3 P;\n",
                         "TDPos()": "layout(location = 0) in vec3 tdPosition;\nvec3 TDPos() { return tdPosition; }\n"}
POSITION_ATTRIBUTES = {"P": "P", "TDPos()": "tdPosition"}  # the vertex attribute each declaration reads
TD_VERTEX_FUNCTIONS = """uniform mat4 uTDWorldToProj;
vec4 TDDeform(vec3 p) { return vec4(p, 1.0); }
vec4 TDWorldToProj(vec4 p) { return uTDWorldToProj * p; }
"""
TD_PIXEL_FUNCTIONS = """void TDCheckDiscard() {}
vec4 TDOutputSwizzle(vec4 c) { return c; }
"""


def vertex_header(position: str = POSITION, version: str = GLSL_VERSION) -> str:
    """The stand-in in front of the vertex stage for a build whose position input is ``position``."""
    return version + POSITION_DECLARATIONS[position] + TD_VERTEX_FUNCTIONS


def pixel_header(version: str = GLSL_VERSION) -> str:
    return version + TD_PIXEL_FUNCTIONS


@lru_cache(maxsize=1)
def shader_source() -> ModuleType:
    """touchdesigner/shader_source.py, loaded from its file (touchdesigner/ is not a Python package)."""
    path = TOUCHDESIGNER / "shader_source.py"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rendering needs the checkout's touchdesigner/ folder")
    spec = importlib.util.spec_from_file_location("depthfusion_shader_source", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def vertex_shader(version: str = GLSL_VERSION, position: str = POSITION) -> str:
    """The GLSL MAT's vertex stage behind the stand-in header."""
    return vertex_header(position, version) + shader_source().vertex_source(position)


def pixel_shader(version: str = GLSL_VERSION) -> str:
    """The GLSL MAT's pixel stage behind the stand-in header."""
    return pixel_header(version) + shader_source().pixel_source()


def common_source() -> str:
    """depthfusion_common.glsl: the displacement functions (dfDisplace, dfRadiusAt, dfImageUV, …)."""
    return shader_source().common_source()
