"""The TouchDesigner component's render settings, worked out without TouchDesigner.

``shader_uniforms`` gives the GLSL MAT's uniforms for td_bridge's depth mappings and the frame blend (the
shader tests feed the same values to the shaders on llvmpipe), ``blend_factor`` the blend's progress over Blend
Time; ``render_settings`` gives every derived operator parameter of the DepthFusion component (sphere mesh,
cameras, render sizes, 360° and dome projections) by operator name, for the extension to write when a parameter
changes.

TouchDesigner camera facts used here (Derivative's Camera COMP page): IPD Shift (``ipdshift``, one
value) moves a camera along its own X axis after rotation (right eye +IPD/2, left eye −IPD/2; for the
omni-directional stereo camera the sign depends on the build, see td_bridge.td_builds); Window X (``winx``)
shifts the image by that fraction of its width ("a Window X of −0.5 moves the previous centre of
the image to the left edge"), which makes the off-axis frustum of
:func:`td_bridge.geometry.off_axis_projection`. Where the docs can be read two ways (that Window X sign,
the ODS camera's eye order and IPD Shift, the Projection TOPs' orientation, the dome tilt) the
CONVENTION_PARAMS overrides apply; Diagnose measures them (td_bridge.geometry_check).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from .depth import LINEAR, DepthMapping
from .params import CONVENTION_PARAMS, DISPLAY_PARAMS, VIEW_PARAMS, validate_all
from .td_builds import ODS_IPD_SIGN_FIXED, Build, ods_ipd_shift

EDGE_MODES = {"keep": 0.0, "cull": 1.0, "fade": 2.0}  # uMapping.w, as depthfusion_pixel.glsl reads it
# GLSL MAT Common page: fade writes premultiplied colour (depthfusion_pixel.glsl), so it blends One /
# One Minus Source Alpha and writes no depth (a faded sheet must not hide what is behind it).
FADE_BLENDING = {"srcblend": "one", "destblend": "omsa"}

# Operator names inside the DepthFusion component (the builder creates them).
GEOMETRY, MESH, MATERIAL = "sphere", "mesh", "displace"
EYES = ("left", "right")
ODS_CAMERA, ODS_RENDER, DOME_CAMERA, DOME_RENDER, DOME = "cam_ods", "render_ods", "cam_dome", "render_dome", "dome"
SIDE_BY_SIDE, TOP_BOTTOM, ODS_TOP_BOTTOM = "side_by_side", "top_bottom", "ods_top_bottom"


def camera(eye: str) -> str:
    return f"cam_{eye}"


def render(eye: str) -> str:
    return f"render_{eye}"


def ods_select(eye: str) -> str:
    return f"ods_select_{eye}"


def ods(eye: str) -> str:
    return f"ods_{eye}"


def ods_flip(eye: str) -> str:
    """The Flip TOP after an eye's equirectangular Projection TOP (equirect_mirror)."""
    return f"ods_flip_{eye}"


# What the geometry check reads back (td_bridge.geometry_check's image names → operator names).
GEOMETRY_READBACK = {
    "render_left": render("left"), "render_right": render("right"), "side_by_side": SIDE_BY_SIDE,
    "top_bottom": TOP_BOTTOM, "ods_left": ods_flip("left"), "ods_right": ods_flip("right"),
    "ods_top_bottom": ODS_TOP_BOTTOM, "dome": DOME,
}


Vec4 = tuple[float, float, float, float]


def shader_uniforms(display: Mapping[str, Any], edges: str = "cull", poles: tuple[float, float] = (0.5, 0.5),
                    previous_poles: tuple[float, float] | None = None, blend: float = 1.0) -> dict[str, Vec4]:
    """The GLSL MAT's vector uniforms for validated display parameters and a frame's pole depths; during a frame
    blend also the previous frame's pole depths and the blend factor (0: the previous frame, 1: the new one, as
    td_bridge.depth.blend_depth). Without a blend (the default, factor 1) the previous poles are the frame's own."""
    if edges not in EDGE_MODES:
        raise ValueError(f"edges must be one of {', '.join(EDGE_MODES)}, got {edges!r}")
    if not 0.0 <= blend <= 1.0:
        raise ValueError(f"blend must be in [0, 1], got {blend}")
    mapping = DepthMapping.from_params(display)
    mode = 0.0 if mapping.mode == LINEAR else 1.0
    before = poles if previous_poles is None else previous_poles
    return {
        "uMapping": (mode, mapping.radius, mapping.strength, EDGE_MODES[edges]),
        "uRange": (mapping.near, mapping.far, float(display["cull_jump"]), 0.0),
        "uPoles": (float(poles[0]), float(poles[1]), float(before[0]), float(before[1])),
        "uMeshStep": (1.0 / display["mesh_cols"], 1.0 / display["mesh_rows"], 0.0, 0.0),
        "uBlend": (float(blend), 0.0, 0.0, 0.0),
    }


def blend_factor(elapsed: float, blend_time: float) -> float:
    """The frame blend's factor ``elapsed`` seconds after a new frame arrived, for Blend Time ``blend_time``: 0 → 1
    linearly; 1 (done) when the blend time is 0 (a cut), once it has passed, or when the clock went backwards."""
    if blend_time <= 0 or elapsed >= blend_time or elapsed < 0:
        return 1.0
    return float(elapsed) / float(blend_time)


def window_x(eye_offset: float, convergence: float, fov_y_deg: float, aspect: float) -> float:
    """Camera Window X that gives an eye ``eye_offset`` along the head's right axis the off-axis
    frustum sharing its window with the other eye at distance ``convergence``."""
    if not (convergence > 0 and 0 < fov_y_deg < 180 and aspect > 0):
        raise ValueError("need convergence > 0, 0 < fov_y < 180 and aspect > 0")
    return eye_offset / (2.0 * convergence * aspect * math.tan(math.radians(fov_y_deg) / 2))


def clip_range(display: Mapping[str, Any], view: Mapping[str, Any]) -> tuple[float, float]:
    """Camera near/far planes that keep the whole displaced sphere in view from the head position."""
    mapping = DepthMapping.from_params(display)
    if mapping.mode == LINEAR:
        closest = mapping.radius * (1 - mapping.strength / 2)
        farthest = mapping.radius * (1 + mapping.strength / 2)
    else:
        closest, farthest = mapping.near, mapping.far
    head = math.sqrt(view["head_x"] ** 2 + view["head_y"] ** 2 + view["head_z"] ** 2)
    near = min(0.05, 0.1 * max(closest - head, closest * 0.01))
    return near, 2 * (farthest + head)


def cube_face_size(equirect_height: int) -> int:
    """Cube map face size whose centre samples as densely as an equirectangular image this high."""
    return max(16, math.ceil(2 * equirect_height / math.pi / 8) * 8)


def ods_camera_shift(ipd: float, build: Build, conventions: Mapping[str, Any]) -> float:
    """The ODS camera's IPD Shift for validated CONVENTION_PARAMS: the build's sign unless ods_ipd_sign says
    otherwise, half or the whole IPD as ods_ipd_shift says."""
    sign = {"auto": math.copysign(1.0, ods_ipd_shift(1.0, build)), "normal": 1.0, "reversed": -1.0}
    size = ipd / 2 if conventions["ods_ipd_shift"] == "half" else ipd
    return sign[conventions["ods_ipd_sign"]] * size


def material_settings(edges: str) -> dict[str, Any]:
    """GLSL MAT blending and depth writing for an edge mode: fade blends premultiplied colour without writing
    depth; keep and cull draw opaque."""
    if edges not in EDGE_MODES:
        raise ValueError(f"edges must be one of {', '.join(EDGE_MODES)}, got {edges!r}")
    fade = edges == "fade"
    return {"blending": fade, **FADE_BLENDING, "depthwriting": not fade}


def render_settings(display: Mapping[str, Any], view: Mapping[str, Any], build: Build = ODS_IPD_SIGN_FIXED,
                    conventions: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Parameter values by operator name (``sphere/mesh`` is inside the Geometry COMP) for
    display and view parameters on TouchDesigner ``build`` (it sets the ODS IPD sign) with the
    CONVENTION_PARAMS overrides (defaults: the docs' reading); all are validated first (ParamError names every
    problem)."""
    display, view, conventions = validate_all((display, DISPLAY_PARAMS), (view, VIEW_PARAMS),
                                              (conventions or {}, CONVENTION_PARAMS))
    near, far = clip_range(display, view)
    head = {"tx": view["head_x"], "ty": view["head_y"], "tz": view["head_z"], "rz": 0.0, "rord": "xyz"}
    aspect = view["eye_width"] / view["eye_height"]
    settings: dict[str, dict[str, Any]] = {
        f"{GEOMETRY}/{MESH}": {"rows": display["mesh_rows"], "cols": display["mesh_cols"]},
        MATERIAL: material_settings(view["edges"]),
    }
    window_sign = -1.0 if conventions["window_x_sign"] == "reversed" else 1.0
    left_index = conventions["ods_left_index"]
    for eye, sign in zip(EYES, (-1.0, 1.0)):
        offset = sign * view["ipd"] / 2
        settings[camera(eye)] = {
            **head, "rx": view["pitch"], "ry": view["yaw"], "ipdshift": offset, "viewanglemethod": "vertfov",
            "fov": view["fov"], "winx": window_sign * window_x(offset, view["convergence"], view["fov"], aspect),
            "near": near, "far": far,
        }
        settings[render(eye)] = {"resolutionw": view["eye_width"], "resolutionh": view["eye_height"]}
        settings[ods_select(eye)] = {"cameraindex": left_index if eye == "left" else 1 - left_index}
        settings[ods(eye)] = {"resolutionw": 2 * view["ods_height"], "resolutionh": view["ods_height"],
                              "ry": conventions["equirect_yaw"]}
        settings[ods_flip(eye)] = {"flipx": conventions["equirect_mirror"]}
    face = cube_face_size(view["ods_height"])
    eye_w, eye_h = view["eye_width"], view["eye_height"]
    full = view["packing"] == "full"
    settings[SIDE_BY_SIDE] = {"resolutionw": 2 * eye_w if full else eye_w, "resolutionh": eye_h}
    settings[TOP_BOTTOM] = {"resolutionw": eye_w, "resolutionh": 2 * eye_h if full else eye_h}
    settings[ODS_TOP_BOTTOM] = {"resolutionw": 2 * view["ods_height"], "resolutionh": 2 * view["ods_height"]}
    settings[ODS_CAMERA] = {**head, "rx": 0.0, "ry": view["yaw"],
                            "ipdshift": ods_camera_shift(view["ipd"], build, conventions), "near": near, "far": far}
    settings[ODS_RENDER] = {"resolutionw": face, "resolutionh": face}
    tilt_sign = -1.0 if conventions["dome_tilt_sign"] == "reversed" else 1.0
    settings[DOME_CAMERA] = {**head, "rx": tilt_sign * view["dome_tilt"], "ry": view["yaw"], "ipdshift": 0.0,
                             "near": near, "far": far}
    dome_face = cube_face_size(view["dome_size"])
    settings[DOME_RENDER] = {"resolutionw": dome_face, "resolutionh": dome_face}
    settings[DOME] = {"fov": view["dome_fov"], "resolutionw": view["dome_size"], "resolutionh": view["dome_size"]}
    return settings
