"""td_bridge.geometry_check: the test frame rendered by the project's own renderer (generator.render on llvmpipe)
as TouchDesigner would under the right conventions and under each wrong one; every wrong one is named with its fix
and nothing else is misreported. Read-backs are made as TOP.numpyArray() gives them: float32 RGBA, row 0 at the
bottom."""


import numpy as np
import pytest

from td_bridge import geometry as g
from td_bridge import geometry_check as gcheck
from td_bridge.params import CONVENTION_PARAMS, DISPLAY_PARAMS, VIEW_PARAMS, defaults, validate
from td_bridge.render_setup import clip_range

BUILD = (2025, 32280)
DISPLAY = validate({"mapping": "linear", "radius": 4.0, "strength": 1.0, "mesh_rows": 64, "mesh_cols": 128},
                   DISPLAY_PARAMS)
VIEW = validate({"ipd": 0.3, "convergence": 4.0, "eye_width": 320, "eye_height": 180, "ods_height": 160,
                 "dome_size": 256}, VIEW_PARAMS)
CONVENTIONS = defaults(CONVENTION_PARAMS)


def td_read(image):
    """A renderer image ((H, W, 3) uint8, row 0 at the top) as TOP.numpyArray() gives it."""
    rgb = image.astype(np.float32) / 255
    return np.ascontiguousarray(np.concatenate([rgb, np.ones(rgb.shape[:2] + (1,), np.float32)], axis=-1)[::-1])


def statuses(findings):
    return {f.name: f.status for f in findings}


# ------------------------------------------------------------------ renders


def eye(r, view, name, window, width, height):
    """An eye image whose frustum is shifted ``window`` (+1: as td_bridge.geometry, −1: the other way)."""
    rotation = g.rotation_matrix(view["yaw"], view["pitch"])
    left, right = g.eye_positions(view["ipd"], (view["head_x"], view["head_y"], view["head_z"]), rotation)
    offset = (-1 if name == "left" else 1) * view["ipd"] / 2
    projection = g.off_axis_projection(window * offset, view["convergence"], view["fov"],
                                       view["eye_width"] / view["eye_height"], *clip_range(DISPLAY, view))
    return r.scene.draw(projection @ g.view_matrix(left if name == "left" else right, rotation), width, height)


def stereo(r, view, window=1, swap=False):
    """render_left, render_right and their half-packed Layouts as TouchDesigner makes them with the frusta shifted
    ``window`` and, with ``swap``, the left image from the right camera (the Layouts take the renders as they are)."""
    w, h = view["eye_width"], view["eye_height"]
    first, second = ("right", "left") if swap else ("left", "right")
    return {"render_left": eye(r, view, first, window, w, h), "render_right": eye(r, view, second, window, w, h),
            "side_by_side": np.concatenate([eye(r, view, first, window, w // 2, h),
                                            eye(r, view, second, window, w // 2, h)], axis=1),
            "top_bottom": np.concatenate([eye(r, view, first, window, w, h // 2),
                                          eye(r, view, second, window, w, h // 2)], axis=0)}


def ods(r, view, ipd=None):
    image = r.render("ods", {**view, "ipd": view["ipd"] if ipd is None else ipd})
    left, right = np.split(image, 2, axis=0)
    return {"ods_left": left, "ods_right": right, "ods_top_bottom": image}


def render_all(ctx, view):
    from generator.render import Renderer

    rgb, depth = gcheck.test_frame(DISPLAY, view)
    with Renderer(rgb, depth, DISPLAY, view["edges"], ctx=ctx) as r:
        images = {**stereo(r, view), **ods(r, view), "dome": r.render("dome", view)}
        variants = {"window": stereo(r, view, window=-1), "swapped": stereo(r, view, swap=True),
                    "cameras_swapped": stereo(r, view, window=-1, swap=True),
                    "ods_double": ods(r, view, 2 * view["ipd"]), "ods_halved": ods(r, view, view["ipd"] / 2),
                    "dome_down": r.render("dome", {**view, "dome_tilt": -view["dome_tilt"]}),
                    "renderer": {"render_left": r.render("left", view), "side_by_side": r.render("sbs", view)}}
    return images, variants


@pytest.fixture(scope="module")
def rendered(ctx):
    return render_all(ctx, VIEW)


def check(images, conventions=None, view=VIEW):
    reads = {name: td_read(image) for name, image in images.items()}
    return gcheck.check(reads, DISPLAY, view, {**CONVENTIONS, **(conventions or {})}, BUILD)


# ------------------------------------------------------------------ right and wrong conventions


@pytest.mark.parametrize("conventions", [{}, {"ods_ipd_shift": "whole"}, {"ods_ipd_sign": "reversed"}])
def test_the_right_conventions_verify_everything(rendered, conventions):
    """IPD Shift written whole and read whole is as right as half and half; the sign cannot be told from the
    camera index (see ods_left_index)."""
    findings = check(rendered[0], conventions)
    assert [f.name for f in findings] == list(gcheck.CHECKS)
    assert all(f.status == gcheck.VERIFIED and f.fix == {} for f in findings), findings


def test_the_stand_in_eyes_are_the_renderers_own(rendered):
    images, variants = rendered
    assert all(np.array_equal(images[name], image) for name, image in variants["renderer"].items())


def test_a_turned_head_and_full_packing_verify_everything(ctx):
    from generator.render import Renderer

    view = validate({**VIEW, "yaw": 35.0, "pitch": 10.0, "head_x": 0.2, "head_z": 0.3, "packing": "full",
                     "convergence": 3.0}, VIEW_PARAMS)
    rgb, depth = gcheck.test_frame(DISPLAY, view)
    with Renderer(rgb, depth, DISPLAY, view["edges"], ctx=ctx) as r:
        images = {name: r.render(view_name, view) for name, view_name in
                  (("render_left", "left"), ("render_right", "right"), ("side_by_side", "sbs"),
                   ("top_bottom", "tb"), ("dome", "dome"))}
        images.update(ods(r, view))
    assert images["side_by_side"].shape == (180, 640, 3)
    findings = check(images, view=view)
    assert all(f.status == gcheck.VERIFIED for f in findings), findings


def mirrored(images):
    flipped = {n: images[n][:, ::-1] for n in ("ods_left", "ods_right")}
    return {**images, **flipped, "ods_top_bottom": np.concatenate([flipped["ods_left"], flipped["ods_right"]])}


def turned(images, fraction):
    """The 360° outputs with their content moved right by ``fraction`` of the width."""
    shift = round(fraction * images["ods_left"].shape[1])
    return {**images, **{n: np.roll(images[n], shift, axis=1) for n in ("ods_left", "ods_right", "ods_top_bottom")}}


def ods_swapped(images):
    left, right = images["ods_right"], images["ods_left"]
    return {**images, "ods_left": left, "ods_right": right, "ods_top_bottom": np.concatenate([left, right])}


def swap_cells(images, name, axis):
    first, second = np.split(images[name], 2, axis=axis)
    return {**images, name: np.concatenate([second, first], axis=axis)}


# (case, images from (base, variants), conventions, {finding: fix} expected wrong; every other finding verified)
WRONG = [
    ("mirrored", lambda b, v: mirrored(b), {}, {"equirect_orientation": {"Equirectmirror": True}}),
    ("our mirror is the wrong one", lambda b, v: mirrored(b), {"equirect_mirror": True},
     {"equirect_orientation": {"Equirectmirror": False}}),
    ("turned 180", lambda b, v: turned(b, 0.5), {}, {"equirect_orientation": {"Equirectyaw": 180.0}}),
    ("turned 90", lambda b, v: turned(b, 0.25), {}, {"equirect_orientation": {"Equirectyaw": -90.0}}),
    ("our turn of 90 is the wrong one", lambda b, v: turned(b, 0.25), {"equirect_yaw": 90.0},
     {"equirect_orientation": {"Equirectyaw": 0.0}}),
    ("mirrored and turned 90", lambda b, v: turned(mirrored(b), 0.25), {},
     {"equirect_orientation": {"Equirectmirror": True, "Equirectyaw": -90.0}}),
    ("flat eyes swapped", lambda b, v: {**b, **v["swapped"]}, {}, {"eye_order": {}}),
    ("flat cameras swapped, windows as set", lambda b, v: {**b, **v["cameras_swapped"]}, {},
     {"eye_order": {}, "window_x_sign": {"Windowxsign": "reversed"}}),
    ("window x reversed", lambda b, v: {**b, **v["window"]}, {}, {"window_x_sign": {"Windowxsign": "reversed"}}),
    ("our reversed window x is wrong", lambda b, v: {**b, **v["window"]}, {"window_x_sign": "reversed"},
     {"window_x_sign": {"Windowxsign": "docs"}}),
    ("side by side cells swapped", lambda b, v: swap_cells(b, "side_by_side", 1), {}, {"side_by_side": {}}),
    ("top bottom cells swapped", lambda b, v: swap_cells(b, "top_bottom", 0), {}, {"top_bottom": {}}),
    ("ods camera indices swapped", lambda b, v: ods_swapped(b), {}, {"ods_left_index": {"Odsleftindex": 1}}),
    ("ods index 1 is the wrong one", lambda b, v: ods_swapped(b), {"ods_left_index": 1},
     {"ods_left_index": {"Odsleftindex": 0}}),
    ("ods swapped and mirrored", lambda b, v: mirrored(ods_swapped(b)), {},
     {"equirect_orientation": {"Equirectmirror": True}, "ods_left_index": {"Odsleftindex": 1}}),
    ("ods ipd shift read as half, written whole", lambda b, v: {**b, **v["ods_double"]}, {"ods_ipd_shift": "whole"},
     {"ods_ipd_shift": {"Odsipdshift": "half"}}),
    ("ods ipd shift read as whole, written half", lambda b, v: {**b, **v["ods_halved"]}, {},
     {"ods_ipd_shift": {"Odsipdshift": "whole"}}),
    ("ods layout right on top", lambda b, v: swap_cells(b, "ods_top_bottom", 0), {}, {"ods_top_bottom": {}}),
    ("dome tilted down", lambda b, v: {**b, "dome": v["dome_down"]}, {},
     {"dome_tilt_sign": {"Dometiltsign": "reversed"}}),
    ("our reversed dome tilt is wrong", lambda b, v: {**b, "dome": v["dome_down"]}, {"dome_tilt_sign": "reversed"},
     {"dome_tilt_sign": {"Dometiltsign": "docs"}}),
]


@pytest.mark.parametrize("case, make, conventions, wrong", WRONG, ids=[case[0] for case in WRONG])
def test_each_wrong_convention_is_named_with_its_fix_and_nothing_else(rendered, case, make, conventions, wrong):
    findings = check(make(*rendered), conventions)
    got = {f.name: f.fix for f in findings if f.status == gcheck.WRONG}
    assert got == wrong, findings
    assert all(f.status == gcheck.VERIFIED for f in findings if f.name not in wrong), findings


def test_without_eye_separation_the_stereo_checks_cannot_tell(ctx):
    from generator.render import Renderer

    view = validate({**VIEW, "ipd": 0.0}, VIEW_PARAMS)
    rgb, depth = gcheck.test_frame(DISPLAY, view)
    with Renderer(rgb, depth, DISPLAY, view["edges"], ctx=ctx) as r:
        images = {**stereo(r, view), **ods(r, view), "dome": r.render("dome", view)}
    got = statuses(check(images, view=view))
    assert got == {**{name: gcheck.UNCHECKED for name in gcheck.CHECKS},
                   "equirect_orientation": gcheck.VERIFIED, "dome_tilt_sign": gcheck.VERIFIED}


# ------------------------------------------------------------------ pure numpy


def disc(width, height, u, v, colour, radius_px, background=(0.5, 0.5, 0.5)):
    """A float RGB image (row 0 at the top) with a disc of ``colour`` (0..255) at (u, v)."""
    image = np.empty((height, width, 3), np.float32)
    image[:] = background
    ys, xs = np.indices((height, width)) + 0.5
    image[np.hypot(xs - u * width, ys - v * height) <= radius_px] = np.asarray(colour) / 255
    return image


def as_read(image, alpha=1.0, premultiplied=True):
    rgba = np.concatenate([image * (alpha if premultiplied else 1.0), np.full(image.shape[:2] + (1,), alpha)], -1)
    return rgba[::-1].astype(np.float32)


@pytest.mark.parametrize("form", ["rgba float", "premultiplied half alpha", "straight half alpha", "rgb uint8"])
def test_markers_are_found_in_any_read_back_form(form):
    image = disc(200, 100, 0.3, 0.7, gcheck.COLOURS["near"], 8)
    read = {"rgba float": lambda: as_read(image), "premultiplied half alpha": lambda: as_read(image, 0.5),
            "straight half alpha": lambda: as_read(image, 0.5, premultiplied=False),
            "rgb uint8": lambda: np.rint(image[::-1] * 255).astype(np.uint8)}[form]()
    u, v = gcheck.locate(read, "near")
    assert u * 200 == pytest.approx(60, abs=0.2) and v * 100 == pytest.approx(70, abs=0.2)
    assert gcheck.locate(read, "far") is None


def test_markers_are_not_found_where_the_image_is_transparent():
    assert gcheck.locate(as_read(disc(64, 32, 0.5, 0.5, gcheck.COLOURS["far"], 6), alpha=0.0), "far") is None


def test_a_marker_across_the_seam_wraps():
    image = disc(200, 100, 0.0, 0.5, gcheck.COLOURS["-Z"], 10)
    image[:, 190:] = disc(200, 100, 1.0, 0.5, gcheck.COLOURS["-Z"], 10)[:, 190:]
    u, _ = gcheck.locate(as_read(image), "-Z", wrap=True)
    assert min(u, 1 - u) * 200 < 0.2
    assert gcheck.locate(as_read(image), "-Z")[0] == pytest.approx(0.5, abs=0.05)  # without wrap: both edges


def test_missing_images_cannot_be_checked():
    findings = gcheck.check({}, DISPLAY, VIEW, CONVENTIONS, BUILD)
    assert [f.name for f in findings] == list(gcheck.CHECKS)
    assert all(f.status == gcheck.UNCHECKED and f.fix == {} and "needs" in f.detail for f in findings)


def test_the_test_frame_puts_each_marker_where_it_says():
    rgb, depth = gcheck.test_frame(DISPLAY, VIEW, 512, 256)
    assert rgb.shape == (256, 512, 3) and rgb.dtype == np.uint8 and depth.shape == (256, 512)
    assert depth.dtype == np.uint16
    for marker in gcheck.markers(DISPLAY, VIEW):
        u, v = g.direction_to_uv(np.asarray(marker.direction))
        assert tuple(rgb[int(v * 255.99), int(u * 511.99)]) == marker.colour
        assert depth[int(v * 255.99), int(u * 511.99)] == marker.depth
    assert tuple(rgb[128, 100]) == gcheck.BACKGROUND
    assert {tuple(c) for c in np.unique(rgb.reshape(-1, 3), axis=0)} == {gcheck.BACKGROUND, *gcheck.COLOURS.values()}


@pytest.mark.parametrize("display, view", [
    ({"mapping": "linear", "radius": 10.0, "strength": 1.0}, {"convergence": 10.0}),
    ({"mapping": "metric", "near": 1.0, "far": 100.0}, {"convergence": 10.0}),
    ({"mapping": "metric", "near": 0.01, "far": 20.0}, {"convergence": 2.0, "ipd": 0.064, "head_z": 0.4}),
])
def test_near_and_far_markers_straddle_the_convergence_distance(display, view):
    marks = {m.name: m for m in gcheck.markers(validate(display, DISPLAY_PARAMS), validate(view, VIEW_PARAMS))}
    convergence = view["convergence"]
    assert marks["near"].distance < 0.9 * convergence < convergence * 1.1 < marks["far"].distance
    assert marks["-Z"].distance == pytest.approx(convergence, rel=1e-3)
    assert marks["near"].distance >= 2 * (view.get("head_z", 0) + view.get("ipd", 0.064) / 2)


def test_an_unreachable_convergence_puts_the_background_at_the_nearest_surface():
    display = {"mapping": "linear", "radius": 10.0, "strength": 1.0}
    marks = {m.name: m for m in gcheck.markers(validate(display, DISPLAY_PARAMS),
                                                validate({"convergence": 1.0}, VIEW_PARAMS))}
    assert marks["-Z"].distance == marks["near"].distance == pytest.approx(5.0, rel=1e-3)


@pytest.mark.parametrize("fraction, mirror, fix", [
    (0.0, False, None), (0.5, False, {"Equirectyaw": 180.0}), (-0.25, False, {"Equirectyaw": 90.0}),
    (0.0, True, {"Equirectmirror": True}), (0.1, False, {"Equirectyaw": -36.0}),
])
def test_equirect_orientation_from_the_frame_itself(fraction, mirror, fix):
    """Without eye separation an ODS eye is the test frame seen from the centre."""
    view = validate({**VIEW, "ipd": 0.0}, VIEW_PARAMS)
    rgb, _ = gcheck.test_frame(DISPLAY, view, 640, 320)
    image = np.roll(rgb[:, ::-1] if mirror else rgb, round(fraction * 640), axis=1)
    finding = gcheck.check({"ods_left": td_read(image)}, DISPLAY, view, CONVENTIONS, BUILD)[0]
    assert finding.name == "equirect_orientation"
    assert (finding.status, finding.fix) == ((gcheck.VERIFIED, {}) if fix is None else (gcheck.WRONG, fix)), finding


@pytest.mark.parametrize("marker, status", [("zenith", gcheck.VERIFIED), ("nadir", gcheck.WRONG)])
def test_the_dome_centre_tells_the_tilt_sign(marker, status):
    dome = disc(256, 256, 0.5, 0.5, gcheck.COLOURS[marker], 12)
    finding = gcheck.check({"dome": as_read(dome)}, DISPLAY, VIEW, CONVENTIONS, BUILD)[-1]
    assert (finding.name, finding.status) == ("dome_tilt_sign", status), finding
    assert finding.fix == ({"Dometiltsign": "reversed"} if status == gcheck.WRONG else {})


def test_a_dome_that_shows_neither_pole_cannot_be_checked():
    dome = disc(256, 256, 0.5, 0.5, gcheck.COLOURS["-Z"], 12)
    assert gcheck.check({"dome": as_read(dome)}, DISPLAY, VIEW, CONVENTIONS, BUILD)[-1].status == gcheck.UNCHECKED
