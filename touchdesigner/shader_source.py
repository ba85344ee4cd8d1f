"""The GLSL MAT's shader texts, put together from touchdesigner/shaders/.

The displacement math lives once, in shaders/depthfusion_common.glsl; each stage is that file
followed by the stage's own ``main``. The vertex stage starts with one line, ``#define DF_POSITION
TDPos()`` or ``… P``: the vertex position input of the TouchDesigner build it runs on
(td_bridge.td_builds), which DepthFusionExt rewrites at start. TouchDesigner adds its own header
(version, position input, TDDeform, …) in front; the tests add a stand-in header
(tests/test_shaders.py). Used by the builder inside TouchDesigner and by the tests, so both see the
same text.
"""

from __future__ import annotations

from pathlib import Path

from td_bridge.td_builds import position_line

SHADERS = Path(__file__).resolve().with_name("shaders")


def _read(name: str) -> str:
    return (SHADERS / name).read_text(encoding="utf-8")


def common_source() -> str:
    return _read("depthfusion_common.glsl")


def vertex_source(position: str = "TDPos()") -> str:
    """Text of the GLSL MAT's vertex shader DAT for a build whose position input is ``position``."""
    return position_line(position) + common_source() + "\n" + _read("depthfusion_vertex.glsl")


def pixel_source() -> str:
    """Text of the GLSL MAT's pixel shader DAT."""
    return common_source() + "\n" + _read("depthfusion_pixel.glsl")
