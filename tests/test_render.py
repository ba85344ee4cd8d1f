"""The renderer (generator/render) on Mesa's llvmpipe: geometry measured on rendered images of analytic scenes.

Scenes are made here: a sphere of constant depth (a known distance everywhere) with marked features, and
bands of another depth. Expected values come from the geometry of the set-up, not from the renderer's code:
off-axis stereo puts a point at camera depth Z at disparity ipd·(1 − C/Z)·H / (2·C·tan(fov/2)) pixels (C the
convergence distance, H the image height); an ODS eye ray tangent to the circle of radius b hits a sphere of
radius R at azimuth atan(b / (√(R² − b²)·cos φ)) beside its own.
"""

import math
import sys

import numpy as np
import pytest

from conftest import run_cli
from td_bridge import geometry as g
from td_bridge.depth import inverse_depth_from_distance, to_uint16
from td_bridge.params import VIEW_PARAMS, validate

METRIC = {"mapping": "metric", "near": 0.5, "far": 100.0, "mesh_rows": 64, "mesh_cols": 128}
GREY = 100


def renderer(ctx, rgb, depth, display=METRIC, edges="keep", samples=4):
    from generator.render import Renderer

    return Renderer(rgb, depth, display, edges, samples=samples, ctx=ctx)


def scene(width=512, height=256, distance=4.0):
    """Grey RGB and a constant metric depth: a sphere of radius ``distance`` around the viewer."""
    rgb = np.full((height, width, 3), GREY, np.uint8)
    depth = np.full((height, width), to_uint16(inverse_depth_from_distance(distance, 0.5, 100.0)), np.uint16)
    return rgb, depth


def mark(rgb, u, v, color, radius_px=3.0):
    """A disc of ``color`` around image (u, v), in angle (wider towards the poles, as the panorama is)."""
    height, width = rgb.shape[:2]
    directions = g.pixel_directions(width, height)
    centre = g.uv_to_direction(u, v)
    angle = np.arccos(np.clip(directions @ centre, -1, 1))
    rgb[angle < radius_px * 2 * np.pi / width] = color


def centroid(image, channel):
    """(x, y) of the pixels where ``channel`` stands out, weighted by how much."""
    weight = np.clip(image[..., channel].astype(float) - image.mean(axis=-1) - 20, 0, None)
    assert weight.sum() > 0, "feature not in view"
    ys, xs = np.indices(weight.shape)
    return (xs * weight).sum() / weight.sum(), (ys * weight).sum() / weight.sum()


def predicted_disparity(ipd, convergence, camera_depth, height, fov):
    return ipd * (1 - convergence / camera_depth) * height / (2 * convergence * math.tan(math.radians(fov) / 2))


def view(**values):
    return validate(values, VIEW_PARAMS)


def actual_distance(distance):
    """The distance the 16-bit depth of ``distance`` stands for."""
    d = to_uint16(inverse_depth_from_distance(distance, 0.5, 100.0)) / 65535
    return 1 / ((1 / 0.5 - 1 / 100.0) * d + 1 / 100.0)


# ------------------------------------------------------------------ off-axis stereo


@pytest.mark.parametrize("distance", [2.0, 4.0, 9.0])
def test_a_feature_lands_at_the_disparity_ipd_convergence_and_fov_predict(ctx, distance):
    rgb, depth = scene(distance=distance)
    mark(rgb, 0.5, 0.5, (255, 0, 0))  # straight ahead
    mark(rgb, 0.5 + 20 / 360, 0.5, (0, 255, 0))  # 20° to the right: camera depth r·cos 20°
    settings = view(ipd=0.4, convergence=4.0, fov=60.0, eye_width=640, eye_height=360, packing="full")
    with renderer(ctx, rgb, depth) as r:
        left, right = r.eye(settings, "left"), r.eye(settings, "right")
    z = actual_distance(distance)
    for channel, camera_depth in ((0, z), (1, z * math.cos(math.radians(20)))):
        (xl, yl), (xr, yr) = centroid(left, channel), centroid(right, channel)
        expected = predicted_disparity(0.4, 4.0, camera_depth, 360, 60.0)
        assert xr - xl == pytest.approx(expected, abs=1.0), (channel, xr - xl, expected)
        assert yr == pytest.approx(yl, abs=0.25)  # parallel cameras: no vertical disparity
    if distance == 4.0:  # at the convergence distance the feature has no disparity at all
        assert abs(centroid(right, 0)[0] - centroid(left, 0)[0]) < 0.25


def test_fade_blends_faded_triangles_over_what_is_behind_them(ctx, monkeypatch):
    """A thin pole 2 m away in front of a wall at 6 m, seen from 0.3 m off centre: all its vertices border a
    depth edge, so fade makes it transparent. Blended (as the GLSL MAT is set in fade mode), the wall it is
    drawn over shows; written opaque with depth, as before, its transparent black hides the wall."""
    from generator.render import scene as scene_module
    from td_bridge.render_setup import material_settings

    rgb, depth = scene(width=256, height=128, distance=6.0)
    rgb[:] = (255, 255, 0)
    depth[52:76, 127:129] = to_uint16(inverse_depth_from_distance(2.0, 0.5, 100.0))
    settings = view(fov=60.0, eye_width=256, eye_height=144, head_x=0.3)
    images = {}
    for blending in (True, False):
        if not blending:
            monkeypatch.setattr(scene_module, "material_settings",
                                lambda edges: {**material_settings(edges), "blending": False, "depthwriting": True})
        with renderer(ctx, rgb, depth, edges="fade") as r:
            images[blending] = r.eye(settings, "left")[..., 0].astype(int)  # red: 255 on the wall
    dark = {blending: int((image < 128).sum()) for blending, image in images.items()}
    assert dark[True] < dark[False] - 20, dark  # wall where the faded pole used to paint black
    assert (images[True] >= images[False] - 2).all()  # blending never darkens


def test_a_halfway_blend_draws_the_frame_of_the_mean_colour_at_the_mean_depth(ctx):
    """The component's frame blend, drawn by the renderer: halfway from a frame 2 m away to one 8 m away (other
    colours), every view is the frame of the mean colour at the mean depth (the marker's parallax shows the
    distance); blend 1 is the new frame alone, bit for bit. (Frames of different sizes: tests/test_shaders.py.)"""
    from generator.render import Renderer

    before_rgb, before_depth = scene(512, 256, distance=2.0)
    before_rgb[:] = (200, 0, 0)
    mark(before_rgb, 0.5, 0.5, (0, 200, 0))
    rgb, depth = scene(512, 256, distance=8.0)
    rgb[:] = (0, 0, 100)
    mark(rgb, 0.5, 0.5, (0, 100, 0))
    depth[:] += (int(depth[0, 0]) + int(before_depth[0, 0])) % 2  # an even sum: the mean depth is a uint16
    mean_rgb = ((before_rgb.astype(int) + rgb) // 2).astype(np.uint8)  # exact: every sum is even
    mean_depth = np.full(depth.shape, (int(depth[0, 0]) + int(before_depth[0, 0])) // 2, np.uint16)
    settings = view(ipd=0.4, convergence=4.0, fov=60.0, eye_width=160, eye_height=90, ods_height=32)

    def views(r):
        return [r.eye(settings, "left"), r.eye(settings, "right"), r.render("ods", settings)]

    with Renderer(rgb, depth, METRIC, "keep", ctx=ctx, previous=(before_rgb, before_depth), blend=0.5) as r:
        blended = views(r)
        r.set_blend(1.0)
        new_again = views(r)
    with Renderer(mean_rgb, mean_depth, METRIC, "keep", ctx=ctx) as r:
        mean = views(r)
    with Renderer(rgb, depth, METRIC, "keep", ctx=ctx) as r:
        alone = views(r)
    for got, expected in zip(blended, mean):
        difference = np.abs(got.astype(int) - expected)
        assert difference.max() <= 1 and difference.mean() < 0.01, (difference.max(), difference.mean())  # rounding
    assert all(np.array_equal(a, b) for a, b in zip(new_again, alone))
    assert centroid(blended[0], 1)[0] != pytest.approx(centroid(alone[0], 1)[0], abs=1.0)  # not the new frame's


def test_ipd_zero_gives_identical_eyes(ctx):
    from generator.backends.demo import DemoBackend
    from td_bridge.params import validate_generation

    params = validate_generation({"prompt": "a room", "seed": 3, "width": 512, "height": 256, "steps": 1})
    frame = DemoBackend().generate(params, lambda step, total: None, lambda: False)
    with renderer(ctx, frame.rgb, frame.depth, {"mesh_rows": 64, "mesh_cols": 128}, "cull") as r:
        left, right = r.render("left", {"ipd": 0.0, "eye_width": 320, "eye_height": 180}), \
            r.render("right", {"ipd": 0.0, "eye_width": 320, "eye_height": 180})
        parallax = r.render("right", {"ipd": 0.2, "eye_width": 320, "eye_height": 180})
    assert left.std() > 10 and np.array_equal(left, right)
    assert not np.array_equal(left, parallax)  # the scene has depth: a baseline shows it


@pytest.mark.parametrize("strength", [0.5, 1.5])
def test_the_linear_rule_at_depth_half_shows_no_parallax_at_the_sphere_radius(ctx, strength):
    rgb, _ = scene()
    depth = np.full(rgb.shape[:2], 32768, np.uint16)  # 0.5: stays on the sphere of radius R
    depth[:, 256 + 10:256 + 50] = 65535  # a band of depth 1.0 to the right: pulled in to R·(1 − s/2)
    mark(rgb, 0.5, 0.5, (255, 0, 0))
    mark(rgb, 0.5 + 30 / 512, 0.5, (0, 255, 0))  # in the near band
    display = {"mapping": "linear", "radius": 5.0, "strength": strength, "mesh_rows": 64, "mesh_cols": 128}
    settings = view(ipd=0.3, convergence=5.0, fov=60.0, eye_width=640, eye_height=360)
    with renderer(ctx, rgb, depth, display) as r:
        left, right = r.eye(settings, "left"), r.eye(settings, "right")
    assert abs(centroid(right, 0)[0] - centroid(left, 0)[0]) < 0.25
    near = 5.0 * (1 + strength * (0.5 - 1.0)) * math.cos(2 * math.pi * 30 / 512)
    disparity = centroid(right, 1)[0] - centroid(left, 1)[0]
    assert disparity == pytest.approx(predicted_disparity(0.3, 5.0, near, 360, 60.0), abs=1.0)
    assert disparity < -5  # nearer than the convergence distance: crossed


def test_half_packing_squeezes_both_eyes_into_one_eye_size(ctx):
    rgb, depth = scene()
    with renderer(ctx, rgb, depth) as r:
        half = r.render("sbs", {"eye_width": 320, "eye_height": 180, "packing": "half"})
        full = r.render("tb", {"eye_width": 320, "eye_height": 180, "packing": "full"})
    assert half.shape == (180, 320, 3) and full.shape == (360, 320, 3)


# ------------------------------------------------------------------ omni-directional stereo


def line_column(row, width):
    """Column (sub-pixel, circular about the image centre) of a bright meridian in an ODS row."""
    weight = np.clip(row[:, 0].astype(float) - GREY - 20, 0, None)
    assert weight.sum() > 0
    return (np.arange(width) * weight).sum() / weight.sum()


def test_ods_eyes_are_offset_as_tangent_rays_predict_and_agree_towards_the_poles(ctx):
    """A meridian straight ahead on spheres of two radii (rows of two depths): in each row the eyes see it
    2·atan(b / (√(R² − b²)·cos φ)) apart, b the eye radius after td_bridge's pole fade."""
    height, ipd = 256, 0.6
    rgb, depth = scene(1024, 512, distance=3.0)
    near_rows = slice(300, 360)  # latitudes −15° … −36°: a nearer band
    depth[near_rows] = to_uint16(inverse_depth_from_distance(1.5, 0.5, 100.0))
    rgb[:, 510:514] = (255, GREY, GREY)
    with renderer(ctx, rgb, depth, samples=1) as r:
        image = r.render("ods", {"ipd": ipd, "ods_height": height})
    left, right = image[:height], image[height:]
    width = 2 * height
    fade_radius = np.linalg.norm(g.ods_rays(width, height, ipd)[0][:, 0], axis=-1)
    checked, angular = 0, {}
    for row in [*range(2, height - 2, 6), height - 3]:
        latitude = math.pi / 2 - math.pi * (row + 0.5) / height
        v = (row + 0.5) / height
        radius = actual_distance(1.5 if 300 / 512 <= v < 360 / 512 else 3.0)
        if abs(v - 300 / 512) < 0.03 or abs(v - 360 / 512) < 0.03:
            continue  # rays near the band's edge may see the other depth
        b = fade_radius[row]
        expected = 2 * math.atan(b / (math.sqrt(radius**2 - b**2) * math.cos(latitude))) * width / (2 * math.pi)
        got = line_column(left[row], width) - line_column(right[row], width)
        assert got == pytest.approx(expected, abs=1.0), (row, got, expected)
        checked += 1
        angular[row] = got * 2 * math.pi / width * math.cos(latitude)  # the eyes' parallax on the sphere
    assert checked > 30
    equator = angular[128]
    assert equator > 0.15 and all(angular[row] < 0.02 * equator for row in (2, height - 3))  # 1.8° from a pole


def test_ods_left_and_right_differ_only_where_depth_varies_from_the_far_distance(ctx):
    from generator.backends.demo import DemoBackend
    from td_bridge.params import validate_generation

    params = validate_generation({"prompt": "a room", "seed": 5, "width": 512, "height": 256, "steps": 1})
    rgb = DemoBackend().generate(params, lambda step, total: None, lambda: False).rgb
    depth = np.zeros(rgb.shape[:2], np.uint16)  # everything at the far distance (100 m): no parallax
    near = (slice(100, 160), slice(200, 300))
    depth[near] = 60000  # but a near patch
    with renderer(ctx, rgb, depth, samples=1) as r:
        image = r.render("ods", {"ipd": 0.1, "ods_height": 256}).astype(int)
    left, right = image[:256], image[256:]
    difference = np.abs(left - right).max(axis=-1)
    patch = np.zeros_like(difference, bool)
    patch[90:170, 175:325] = True  # the near patch (15 px of disparity) and its rim
    # at 100 m the eyes see 2·asin(0.05 / 100) apart, 0.08 px on the equator, up to 2.2 times that in columns
    # towards the poles (1 / cos φ, less the pole fade): only edges change, by that part of their step
    step = np.abs(left - np.roll(left, 1, axis=1)).max(axis=-1)  # columns wrap around the seam
    edge = np.maximum(step, np.roll(step, -1, axis=1))
    assert (difference <= 0.2 * edge + 2)[~patch].mean() > 0.999
    assert difference[patch].mean() > 5


def test_ods_with_ipd_zero_is_the_panorama_itself(ctx):
    rgb, depth = scene(512, 256)
    rgb[:] = np.random.default_rng(1).integers(0, 256, rgb.shape, dtype=np.uint8)
    with renderer(ctx, rgb, depth, samples=1) as r:
        image = r.render("ods", {"ipd": 0.0, "ods_height": 256})
    assert np.array_equal(image[:256], rgb) and np.array_equal(image[256:], rgb)


def test_no_column_jump_at_the_seam(ctx):
    """The same scene turned by 180° (the seam moved from behind to ahead) renders the same images, turned back:
    in ODS, and in an eye camera looking at the seam."""
    from generator.backends.demo import DemoBackend
    from td_bridge.params import validate_generation

    params = validate_generation({"prompt": "a landscape", "seed": 4, "width": 512, "height": 256, "steps": 1})
    frame = DemoBackend().generate(params, lambda step, total: None, lambda: False)
    turned = np.roll(frame.rgb, 256, axis=1), np.roll(frame.depth, 256, axis=1)
    display = {"mesh_rows": 64, "mesh_cols": 128}
    eye = {"eye_width": 320, "eye_height": 180, "ipd": 0.2}
    with renderer(ctx, frame.rgb, frame.depth, display, samples=1) as r:
        ods, seam_ahead = r.render("ods", {"ipd": 0.3, "ods_height": 256}), r.render("sbs", {**eye, "yaw": 180.0})
    with renderer(ctx, *turned, display, samples=1) as r:
        ods_turned, seam_behind = r.render("ods", {"ipd": 0.3, "ods_height": 256}), r.render("sbs", eye)
    for a, b in ((ods, np.roll(ods_turned, -256, axis=1)), (seam_ahead, seam_behind)):
        difference = np.abs(a.astype(int) - b.astype(int))
        assert a.std() > 10 and difference.mean() < 0.05 and np.percentile(difference, 99.9) <= 2


# ------------------------------------------------------------------ dome and cube map


def test_dome_puts_the_zenith_in_the_centre_and_the_front_at_the_bottom(ctx):
    rgb, depth = scene()
    mark(rgb, 0.5, 0.5, (255, 0, 0), radius_px=6)  # front, on the horizon
    rgb[:6] = (0, 255, 0)  # the zenith cap
    with renderer(ctx, rgb, depth) as r:
        planetarium = r.render("dome", {"dome_size": 256})
        ahead = r.render("dome", {"dome_size": 256, "dome_tilt": 0.0})
        faces = r.render("cubemap", {"ods_height": 128})
    assert planetarium[128, 128, 1] > 200 and ahead[128, 128, 0] > 200
    x, y = centroid(planetarium, 0)
    assert x == pytest.approx(128, abs=1.5) and y > 250  # the circle's bottom edge
    assert planetarium[2, 2].max() == 0  # outside the 180° circle
    size = faces.shape[0]
    assert faces.shape == (size, 6 * size, 3)
    minus_z = faces[:, 5 * size:]  # the −Z face looks ahead
    x, y = centroid(minus_z, 0)
    assert x == pytest.approx(size / 2, abs=1.0) and y == pytest.approx(size / 2, abs=1.0)


# ------------------------------------------------------------------ command line, video, errors


@pytest.fixture(scope="module")
def frame_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frame")
    result = run_cli("generate", "a landscape", "-o", str(folder), "--model", "demo", "--seed", "2", "--steps", "1",
                     "--width", "256", "--height", "128", "--no-library")
    assert result.returncode == 0, result.stderr
    return folder


def test_render_cli_writes_the_view_and_names_a_360_file_for_players(ctx, frame_dir, tmp_path):
    out = tmp_path / "scene.png"
    result = run_cli("render", str(frame_dir), "-o", str(out), "--view", "ods", "--ods-height", "64", "--ipd", "0.1")
    assert result.returncode == 0, result.stderr
    from PIL import Image

    assert Image.open(out).size == (128, 128)
    assert "scene_360_TB.png" in result.stdout
    again = run_cli("render", str(frame_dir), "-o", str(out), "--view", "ods")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    bad = run_cli("render", str(frame_dir), "-o", str(tmp_path / "x.png"), "--fov", "200")
    assert bad.returncode == 2 and "fov: 200.0 is out of range" in bad.stderr
    missing = run_cli("render", "no-such-frame", "-o", str(tmp_path / "x.png"), "--no-library")
    assert missing.returncode == 2 and "neither a frame folder" in missing.stderr


def test_render_cli_reads_a_frame_id_from_the_library(ctx, tmp_path):
    library = tmp_path / "library"
    made = run_cli("generate", "a room", "-o", str(tmp_path / "frame"), "--model", "demo", "--seed", "7", "--steps",
                   "1", "--width", "128", "--height", "64", "--library", str(library))
    assert made.returncode == 0, made.stderr
    frame_id = made.stdout.split("(frame ")[1].split(",")[0]
    out = tmp_path / "left.png"
    result = run_cli("render", frame_id, "-o", str(out), "--view", "left", "--eye-width", "96", "--eye-height", "48",
                     "--library", str(library))
    assert result.returncode == 0, result.stderr
    from PIL import Image

    assert Image.open(out).size == (96, 48)
    unknown = run_cli("render", "20000101T000000Z-00000000", "-o", str(out), "--library", str(library))
    assert unknown.returncode == 2 and "nor a frame id in the library" in unknown.stderr


def test_an_ods_video_carries_spherical_stereo_metadata(ctx, frame_dir, tmp_path):
    import av

    out = tmp_path / "clip.mp4"
    result = run_cli("render", str(frame_dir), "--video", str(out), "--view", "ods", "--ods-height", "32",
                     "--seconds", "1", "--fps", "5", "--path", "sway", "--samples", "1")
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = list(container.decode(stream))
    assert len(frames) == 5 and (frames[0].width, frames[0].height) == (64, 64)
    side = {sd.type.name: bytes(sd) for sd in frames[0].side_data}
    assert "SPHERICAL" in side and "STEREO3D" in side  # FFmpeg read our sv3d and st3d boxes back
    assert int.from_bytes(side["STEREO3D"][:4], "little") == 2  # AV_STEREO3D_TOPBOTTOM
    assert int.from_bytes(side["SPHERICAL"][:4], "little") == 0  # AV_SPHERICAL_EQUIRECTANGULAR
    far = run_cli("render", str(frame_dir), "--video", str(tmp_path / "far.mp4"), "--view", "ods", "--amplitude", "50")
    assert far.returncode == 2 and "beyond the nearest surface" in far.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]  # nothing half-written left behind


def test_stereo_metadata_for_side_by_side_and_a_refusal_for_faststart_files(tmp_path):
    import av

    from generator.render.spherical import MetadataError, add_spherical_metadata
    from generator.render.video import write_video

    clip = tmp_path / "sbs.mp4"
    assert write_video(clip, (np.full((16, 32, 3), k * 40, np.uint8) for k in range(3)), fps=10) == 3
    add_spherical_metadata(clip, "left-right", equirectangular=False)
    with av.open(str(clip)) as container:
        frame = next(container.decode(container.streams.video[0]))
    side = {sd.type.name: bytes(sd) for sd in frame.side_data}
    assert "SPHERICAL" not in side and int.from_bytes(side["STEREO3D"][:4], "little") == 1  # AV_STEREO3D_SIDEBYSIDE
    faststart = tmp_path / "faststart.mp4"
    with av.open(str(faststart), mode="w", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv420p"
        container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((16, 32, 3), np.uint8), format="rgb24")))
        container.mux(stream.encode(None))
    before = faststart.read_bytes()
    with pytest.raises(MetadataError, match="faststart"):
        add_spherical_metadata(faststart, "top-bottom", equirectangular=True)
    assert faststart.read_bytes() == before
    with pytest.raises(ValueError, match="even width"):
        write_video(tmp_path / "odd.mp4", [np.zeros((15, 32, 3), np.uint8)], fps=10)


@pytest.mark.parametrize("path", ["orbit", "dolly", "sway"])
def test_camera_paths_loop_and_keep_their_amplitude(path):
    from generator.render.video import head_positions

    settings = view(head_x=0.5, yaw=90.0)
    positions = head_positions(path, 40, 0.3, settings)
    offsets = positions - [0.5, 0, 0]
    assert np.allclose(offsets[0], 0) and np.allclose(offsets[:, 1], 0)
    assert np.linalg.norm(offsets, axis=1).max() == pytest.approx(0.3, rel=0.01)
    if path == "dolly":  # along the view direction, which yaw 90 turns to −X
        assert np.allclose(offsets[:, 2], 0) and np.abs(offsets[:, 0]).max() > 0.29


def test_render_without_gl_fails_with_the_install_hint(monkeypatch, frame_dir, tmp_path, caplog):
    from generator import __main__ as cli
    from generator.render import views
    from generator.render.gl import GLUnavailable

    def missing():
        raise GLUnavailable("no OpenGL context through EGL (test); Debian/Ubuntu: apt-get install libegl1 …")

    monkeypatch.setattr(views, "create_context", missing)
    assert cli.main(["render", str(frame_dir), "-o", str(tmp_path / "x.png")]) == 2
    assert "apt-get install libegl1" in caplog.text and not (tmp_path / "x.png").exists()


def test_no_gl_context_names_what_to_install(monkeypatch):
    import moderngl

    from generator.render.gl import GLUnavailable, create_context

    def broken(**kwargs):
        raise Exception("libEGL.so.1: cannot open shared object file")

    monkeypatch.setattr(moderngl, "create_standalone_context", broken)
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(GLUnavailable, match="through EGL .*libegl1 libegl-mesa0 libgl1-mesa-dri"):
        create_context()
    monkeypatch.setattr(sys, "platform", "darwin")  # CGL: OpenGL 4.1 at most, never EGL
    with pytest.raises(GLUnavailable, match="needs OpenGL 4.1"):
        create_context()
    asked = []
    monkeypatch.setattr(moderngl, "create_standalone_context", lambda **kwargs: asked.append(kwargs))
    create_context()
    assert asked == [{"require": 410}]


def test_the_shaders_compile_as_glsl_410_for_macos(ctx):
    from generator.render.glsl import pixel_shader, vertex_shader
    from generator.render.ods import FULL_SCREEN, raycast_shader

    version = "#version 410 core\n"
    for vertex, fragment in ((vertex_shader(version), pixel_shader(version)),
                             (version + FULL_SCREEN, raycast_shader(version))):
        ctx.program(vertex_shader=vertex, fragment_shader=fragment).release()


def test_renderer_checks_its_inputs(ctx):
    rgb, depth = scene(64, 32)
    with pytest.raises(ValueError, match="sizes differ"):
        renderer(ctx, rgb, depth[:16])
    with pytest.raises(ValueError, match="edges"):
        renderer(ctx, rgb, depth, edges="blur")
    with renderer(ctx, rgb, depth) as r:
        with pytest.raises(ValueError, match="view must be one of"):
            r.render("stereo")
        with pytest.raises(ValueError, match="inside the nearest surface"):
            r.render("ods", {"head_x": 5.0})


def test_output_size_is_the_size_each_view_renders(ctx):
    from generator.render.views import VIEWS, output_size

    rgb, depth = scene(64, 32)
    with renderer(ctx, rgb, depth, samples=1) as r:
        for packing in ("half", "full"):
            settings = view(eye_width=33, eye_height=17, ods_height=16, dome_size=20, packing=packing)
            for name in VIEWS:
                image = r.render(name, settings)
                assert output_size(name, settings) == (image.shape[1], image.shape[0]), (name, packing)


# ------------------------------------------------------------------ the server's render command


def test_the_server_renders_previews_on_their_own_thread(ctx, make_server):
    import io
    import time

    import zmq
    from PIL import Image

    from conftest import wait_for
    from td_bridge import protocol as wire
    from td_bridge.receiver import CommandClient, CommandError

    server = make_server()
    with CommandClient(server.commands, timeout=60) as client:
        job = client.generate(prompt="a room", seed=1, width=128, height=64, steps=1)
        done = wait_for(lambda: (lambda j: j if j["state"] == "done" else None)(client.job(job["job_id"])), 10)
        result, parts = client.request("render", {"view": "anaglyph", "eye_width": 64, "eye_height": 32})
        assert result == {"frame_id": done["frame_id"], "view": "anaglyph", "width": 64, "height": 32, "format": "png"}
        with Image.open(io.BytesIO(bytes(parts[0].buffer))) as image:
            assert image.size == (64, 32) and image.mode == "RGB"
        for args, message in (({"view": "holo"}, "view: 'holo' is not one of"), ({"ipd": 5}, "ipd: 5"),
                              ({"view": "ods", "ods_height": 4096}, "larger than"),
                              ({"frame_id": "nope"}, "neither in memory")):
            with pytest.raises(CommandError, match=message):
                client.request("render", args)
        # a slow render does not hold up other commands: ping answers while it runs
        dealer = zmq.Context.instance().socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(server.commands)
        try:
            started = time.monotonic()
            dealer.send(wire.encode_request("slow", "render", {"view": "ods", "ods_height": 768}))
            time.sleep(0.2)
            pinged = time.monotonic()
            client.ping()
            ping_s = time.monotonic() - pinged
            assert dealer.poll(60_000), "no render reply"
            render_s = time.monotonic() - started
            reply = wire.decode_reply(dealer.recv_multipart()[0])
        finally:
            dealer.close()
    assert reply["ok"] and reply["result"]["width"] == 1536
    assert ping_s < 0.5 and ping_s < render_s / 2, (ping_s, render_s)  # llvmpipe: ~0.01 s against seconds
