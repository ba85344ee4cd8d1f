"""td_bridge.render_setup: the component's cameras agree with td_bridge.geometry's stereo math.

TouchDesigner's camera is modelled here from Derivative's Camera COMP page: transform
T·R·(IPD shift) with R = Rz·Ry·Rx for rotate order xyz, a symmetric perspective from the vertical
FOV, and Window X moving the image by that fraction of its width.
"""

import math

import numpy as np
import pytest

from td_bridge import geometry
from td_bridge.depth import DepthMapping
from td_bridge.params import DISPLAY_PARAMS, VIEW_PARAMS, ParamError, defaults
from td_bridge.render_setup import (EYES, blend_factor, cube_face_size, render_settings, shader_uniforms, window_x,
                                    camera, clip_range)


def axis_rotation(axis, degrees):
    """Right-handed rotation about X (0), Y (1) or Z (2)."""
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([
        [[1, 0, 0], [0, c, -s], [0, s, c]],
        [[c, 0, s], [0, 1, 0], [-s, 0, c]],
        [[c, -s, 0], [s, c, 0], [0, 0, 1]],
    ][axis], dtype=float)


def td_camera_world(cam):
    """4×4 camera → world matrix of a TouchDesigner Camera COMP with these parameters."""
    assert cam["rord"] == "xyz"
    rotation = axis_rotation(2, cam["rz"]) @ axis_rotation(1, cam["ry"]) @ axis_rotation(0, cam["rx"])
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = (cam["tx"], cam["ty"], cam["tz"])
    shift = np.eye(4)
    shift[0, 3] = cam["ipdshift"]
    return m @ shift


def td_camera_projection(cam, aspect):
    """Perspective of a Camera COMP (Viewing Angle Method: vertical FOV) with Window X applied."""
    near, far = cam["near"], cam["far"]
    top = near * math.tan(math.radians(cam["fov"]) / 2)
    p = geometry.frustum(-top * aspect, top * aspect, -top, top, near, far)
    window = np.eye(4)
    window[0, 3] = 2 * cam["winx"]  # NDC x spans 2 units per image width
    return window @ p


def project(point, cam, aspect):
    clip = td_camera_projection(cam, aspect) @ np.linalg.inv(td_camera_world(cam)) @ np.append(point, 1.0)
    return clip[:3] / clip[3]


VIEWS = [
    {},
    {"ipd": 0.07, "convergence": 3.0, "fov": 60.0, "head_x": 0.4, "head_y": -0.2, "head_z": 1.5, "yaw": 30.0,
     "pitch": -20.0, "eye_width": 1920, "eye_height": 1080},
    {"ipd": 0.5, "convergence": 0.5, "fov": 120.0, "yaw": -170.0, "pitch": 80.0, "eye_width": 800,
     "eye_height": 1000},
]


@pytest.mark.parametrize("view", VIEWS)
def test_eye_cameras_sit_where_geometry_puts_the_eyes(view):
    settings = render_settings({}, view)
    v = {**defaults(VIEW_PARAMS), **view}
    rotation = geometry.rotation_matrix(v["yaw"], v["pitch"])
    expected = geometry.eye_positions(v["ipd"], (v["head_x"], v["head_y"], v["head_z"]), rotation)
    for eye, want in zip(EYES, expected):
        world = td_camera_world(settings[camera(eye)])
        np.testing.assert_allclose(world[:3, 3], want, atol=1e-12)
        np.testing.assert_allclose(world[:3, :3], rotation, atol=1e-12)


@pytest.mark.parametrize("view", VIEWS)
def test_window_x_gives_geometrys_off_axis_projection(view):
    settings = render_settings({}, view)
    v = {**defaults(VIEW_PARAMS), **view}
    aspect = v["eye_width"] / v["eye_height"]
    for eye, sign in zip(EYES, (-1, 1)):
        cam = settings[camera(eye)]
        expected = geometry.off_axis_projection(sign * v["ipd"] / 2, v["convergence"], v["fov"], aspect,
                                                cam["near"], cam["far"])
        np.testing.assert_allclose(td_camera_projection(cam, aspect), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("view", VIEWS)
def test_points_at_the_convergence_distance_have_no_parallax(view):
    settings = render_settings({}, view)
    v = {**defaults(VIEW_PARAMS), **view}
    aspect = v["eye_width"] / v["eye_height"]
    rotation = geometry.rotation_matrix(v["yaw"], v["pitch"])
    head = np.array([v["head_x"], v["head_y"], v["head_z"]])
    rng = np.random.default_rng(3)
    for _ in range(20):
        local = np.array([*rng.uniform(-0.3, 0.3, 2), -v["convergence"]])  # on the convergence plane
        point = head + rotation @ local
        left, right = (project(point, settings[camera(eye)], aspect) for eye in EYES)
        np.testing.assert_allclose(left[:2], right[:2], atol=1e-9)
    nearer = head + rotation @ np.array([0.0, 0.0, -v["convergence"] / 2])
    left, right = (project(nearer, settings[camera(eye)], aspect) for eye in EYES)
    assert left[0] > right[0]  # crossed disparity: in front of the screen


def test_window_x_sign_and_size():
    assert window_x(-0.032, 10.0, 90.0, 1.0) == pytest.approx(-0.0016)
    assert window_x(0.032, 10.0, 90.0, 2.0) == pytest.approx(0.0008)
    for bad in [(0.03, 0.0, 90.0, 1.0), (0.03, 1.0, 180.0, 1.0), (0.03, 1.0, 90.0, 0.0)]:
        with pytest.raises(ValueError):
            window_x(*bad)


@pytest.mark.parametrize("display, view", [
    ({}, {}),
    ({"mapping": "linear", "radius": 2.0, "strength": 1.9}, {"head_z": 0.5}),
    ({"mapping": "metric", "near": 0.3, "far": 400.0}, {"head_x": 0.2, "head_y": 0.1}),
])
def test_clip_planes_hold_the_whole_displaced_sphere(display, view):
    d = {**defaults(DISPLAY_PARAMS), **display}
    v = {**defaults(VIEW_PARAMS), **view}
    near, far = clip_range(d, v)
    radii = DepthMapping.from_params(d)(np.linspace(0.0, 1.0, 101, dtype=np.float32))
    directions = geometry.pixel_directions(64, 32).reshape(-1, 3)
    head = np.array([v["head_x"], v["head_y"], v["head_z"]])
    distances = np.linalg.norm(directions[:, None, :] * radii[None, :, None] - head, axis=-1)
    assert 0 < near < distances.min() and distances.max() < far


def test_shader_uniforms_follow_the_mapping():
    display = {**defaults(DISPLAY_PARAMS), "mapping": "metric", "radius": 10.0, "strength": 1.0, "near": 0.5,
               "far": 50.0, "cull_jump": 0.2, "mesh_rows": 100, "mesh_cols": 400}
    uniforms = shader_uniforms(display, "fade", poles=(0.25, 0.75))
    assert uniforms == {"uMapping": (1.0, 10.0, 1.0, 2.0), "uRange": (0.5, 50.0, 0.2, 0.0),
                        "uPoles": (0.25, 0.75, 0.25, 0.75), "uMeshStep": (1 / 400, 1 / 100, 0.0, 0.0),
                        "uBlend": (1.0, 0.0, 0.0, 0.0)}  # no blend: the previous poles are the frame's own
    assert shader_uniforms({**defaults(DISPLAY_PARAMS), "mapping": "linear"}, "keep")["uMapping"][::3] == (0.0, 0.0)
    with pytest.raises(ValueError, match="edges"):
        shader_uniforms(defaults(DISPLAY_PARAMS), "blur")


def test_shader_uniforms_carry_the_frame_blend():
    uniforms = shader_uniforms(defaults(DISPLAY_PARAMS), "cull", (0.25, 0.75), previous_poles=(0.5, 0.125), blend=0.25)
    assert uniforms["uPoles"] == (0.25, 0.75, 0.5, 0.125) and uniforms["uBlend"] == (0.25, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="blend must be in"):
        shader_uniforms(defaults(DISPLAY_PARAMS), "cull", blend=1.5)


@pytest.mark.parametrize("elapsed, blend_time, factor", [(0.0, 0.5, 0.0), (0.125, 0.5, 0.25), (0.5, 0.5, 1.0),
                                                         (2.0, 0.5, 1.0), (0.0, 0.0, 1.0), (-1.0, 0.5, 1.0)])
def test_the_blend_factor_runs_from_0_to_1_over_blend_time(elapsed, blend_time, factor):
    assert blend_factor(elapsed, blend_time) == factor


def test_render_settings_sizes_and_validation():
    settings = render_settings({"mesh_rows": 64, "mesh_cols": 128}, {"ods_height": 1000, "dome_size": 1024})
    assert settings["sphere/mesh"] == {"rows": 64, "cols": 128}
    assert settings["ods_left"] == settings["ods_right"] == {"resolutionw": 2000, "resolutionh": 1000, "ry": 0.0}
    assert settings["render_ods"]["resolutionw"] == cube_face_size(1000) == 640
    assert settings["dome"] == {"fov": 180.0, "resolutionw": 1024, "resolutionh": 1024}
    assert settings["cam_dome"]["rx"] == 90.0 and settings["cam_ods"]["ipdshift"] == 0.032
    with pytest.raises(ParamError) as error:
        render_settings({"mesh_rows": 1}, {"ipd": -1, "edges": "blur"})
    assert all(name in str(error.value) for name in ("mesh_rows", "ipd", "edges"))


def test_stereo_layouts_pack_half_by_default_and_full_on_request():
    settings = render_settings({}, {"eye_width": 1280, "eye_height": 720, "ods_height": 640})
    assert settings["side_by_side"] == settings["top_bottom"] == {"resolutionw": 1280, "resolutionh": 720}
    assert settings["ods_top_bottom"] == {"resolutionw": 1280, "resolutionh": 1280}
    full = render_settings({}, {"eye_width": 1280, "eye_height": 720, "packing": "full"})
    assert full["side_by_side"] == {"resolutionw": 2560, "resolutionh": 720}
    assert full["top_bottom"] == {"resolutionw": 1280, "resolutionh": 1440}


def test_the_ods_ipd_sign_is_reversed_before_2023_12370():
    ipd = {"ipd": 0.07}
    assert render_settings({}, ipd, (2023, 12370))["cam_ods"]["ipdshift"] == 0.035
    assert render_settings({}, ipd, (2025, 31550))["cam_ods"]["ipdshift"] == 0.035
    assert render_settings({}, ipd, (2023, 11290))["cam_ods"]["ipdshift"] == -0.035


def test_the_convention_overrides_change_only_what_they_name():
    view = {"ipd": 0.06, "convergence": 3.0, "dome_tilt": 80.0}
    base = render_settings({}, view, (2025, 31550))
    overrides = {
        "window_x_sign": ("reversed", {("cam_left", "winx"): -base["cam_left"]["winx"],
                                       ("cam_right", "winx"): -base["cam_right"]["winx"]}),
        "ods_left_index": (1, {("ods_select_left", "cameraindex"): 1, ("ods_select_right", "cameraindex"): 0}),
        "ods_ipd_sign": ("reversed", {("cam_ods", "ipdshift"): -0.03}),
        "ods_ipd_shift": ("whole", {("cam_ods", "ipdshift"): 0.06}),
        "equirect_yaw": (90.0, {("ods_left", "ry"): 90.0, ("ods_right", "ry"): 90.0}),
        "equirect_mirror": (True, {("ods_flip_left", "flipx"): True, ("ods_flip_right", "flipx"): True}),
        "dome_tilt_sign": ("reversed", {("cam_dome", "rx"): -80.0}),
    }
    for name, (value, changed) in overrides.items():
        settings = render_settings({}, view, (2025, 31550), {name: value})
        differ = {(path, par) for path, values in settings.items() for par, v in values.items()
                  if base[path][par] != v}
        assert differ == set(changed), name
        assert all(settings[path][par] == pytest.approx(v) for (path, par), v in changed.items()), name
    assert render_settings({}, view, (2023, 11290), {"ods_ipd_sign": "normal"})["cam_ods"]["ipdshift"] == 0.03
    with pytest.raises(ParamError, match="window_x_sign"):
        render_settings({}, view, (2025, 31550), {"window_x_sign": "sideways"})


@pytest.mark.parametrize("edges, blending", [("keep", False), ("cull", False), ("fade", True)])
def test_fade_blends_premultiplied_colour_without_writing_depth(edges, blending):
    material = render_settings({}, {"edges": edges})["displace"]
    assert material == {"blending": blending, "srcblend": "one", "destblend": "omsa", "depthwriting": not blending}
