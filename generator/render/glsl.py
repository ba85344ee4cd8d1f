"""The TouchDesigner component's GLSL MAT outside TouchDesigner.

The shader text comes from ``touchdesigner/shader_source.py`` (the file the builder reads inside
TouchDesigner); in front of each stage goes the stand-in for what TouchDesigner declares: the
position input (``P``, and ``TDPos()`` as current TouchDesigner builds name it), ``TDDeform``,
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
GLSL_VERSION = "#version 450 core\n"  # OpenGL 4.5, what Mesa's llvmpipe offers; TouchDesigner says 460

TD_VERTEX_HEADER = """layout(location = 0) in vec3 P;
uniform mat4 uTDWorldToProj;
vec3 TDPos() { return P; }
vec4 TDDeform(vec3 p) { return vec4(p, 1.0); }
vec4 TDWorldToProj(vec4 p) { return uTDWorldToProj * p; }
"""
TD_PIXEL_HEADER = """void TDCheckDiscard() {}
vec4 TDOutputSwizzle(vec4 c) { return c; }
"""


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


def vertex_shader(version: str = GLSL_VERSION) -> str:
    """The GLSL MAT's vertex stage behind the stand-in header."""
    return version + TD_VERTEX_HEADER + shader_source().vertex_source()


def pixel_shader(version: str = GLSL_VERSION) -> str:
    """The GLSL MAT's pixel stage behind the stand-in header."""
    return version + TD_PIXEL_HEADER + shader_source().pixel_source()


def common_source() -> str:
    """depthfusion_common.glsl: the displacement functions (dfDisplace, dfRadiusAt, dfImageUV, …)."""
    return shader_source().common_source()
