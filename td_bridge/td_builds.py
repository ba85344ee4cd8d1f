"""What differs between the TouchDesigner builds DepthFusion supports, from Derivative's release notes.

- 2023.11290: parameter sequences; the Extensions page is the ``ext`` sequence (``ext0object``,
  ``ext0name``, ``ext0promote``). The oldest build the component supports.
- 2023.12370: Omni-directional stereo overhauled; the camera's IPD Shift "is now correctly negative for the
  left eye and positive for the right eye. Was reversed before."
- 2025.30000 (POPs): the GLSL MAT documents ``TDPos()`` as the vertex position; older builds name the
  attribute ``P`` as the SOP does. Which build first declares ``TDPos()`` is not documented: this boundary
  is an assumption, and the component's *Shader Position* parameter overrides it.
- 2025.31550: extensions get ``onInitTD`` and ``onDestroyTD`` (``__delTD__`` before, on re-initialisation).
"""

from __future__ import annotations

import re

Build = tuple[int, int]

OLDEST_SUPPORTED: Build = (2023, 11290)
ODS_IPD_SIGN_FIXED: Build = (2023, 12370)
TDPOS_FROM: Build = (2025, 30000)
EXTENSION_HOOKS_FROM: Build = (2025, 31550)
POSITION_INPUTS = ("TDPos()", "P")
# The component's Shader Position menu (names → input; auto: vertex_position_input of the running build).
POSITION_MENU = {"auto": None, "tdpos": "TDPos()", "p": "P"}
# The vertex shader DAT's first line names its position input (touchdesigner/shader_source.py writes it).
POSITION_LINE = re.compile(r"#define DF_POSITION (\S+)\n")


def parse_build(version: str, build: str) -> Build:
    """(year, build) from ``app.version`` / ``app.build``: ``('2023', '11290')`` or a build that already reads
    ``'2023.11290'``."""
    text = str(build) if "." in str(build) else f"{version}.{build}"
    match = re.fullmatch(r"\s*(\d{3,4})\.(\d+)\s*", text)
    if match is None:
        raise ValueError(f"cannot read a TouchDesigner build from version {version!r}, build {build!r}")
    return int(match.group(1)), int(match.group(2))


def build_text(build: Build) -> str:
    return f"{build[0]}.{build[1]}"


def vertex_position_input(build: Build) -> str:
    """The GLSL MAT vertex position input to use on ``build``."""
    return "TDPos()" if build >= TDPOS_FROM else "P"


def ods_ipd_shift(ipd: float, build: Build) -> float:
    """The ODS camera's IPD Shift that puts the left eye at -IPD/2 and the right at +IPD/2 on ``build``."""
    return ipd / 2 if build >= ODS_IPD_SIGN_FIXED else -ipd / 2


def has_extension_hooks(build: Build) -> bool:
    """True where TouchDesigner itself calls ``onInitTD`` / ``onDestroyTD``."""
    return build >= EXTENSION_HOOKS_FROM


def position_line(position: str) -> str:
    """The vertex shader's first line for ``position`` (one of POSITION_INPUTS)."""
    if position not in POSITION_INPUTS:
        raise ValueError(f"the vertex position input is one of {', '.join(POSITION_INPUTS)}, not {position!r}")
    return f"#define DF_POSITION {position}\n"


def with_position(vertex_text: str, position: str) -> str:
    """``vertex_text`` with its first line set to ``position``."""
    if not POSITION_LINE.match(vertex_text):
        raise ValueError("the vertex shader text does not start with its #define DF_POSITION line")
    return POSITION_LINE.sub(position_line(position), vertex_text, count=1)
