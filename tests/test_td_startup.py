"""The TouchDesigner component's start-up, rebuilds and self-protection, against the td stand-in: a paused
timeline, another td_bridge on the path, a saved .tox that opens no port, a rebuild after editing the sources,
a broken old build, a project without /project1, fade blending, and a Script TOP that refuses one channel."""

import shutil
import sys

import numpy as np
import pytest

from conftest import ROOT
from td_bridge.protocol import Frame
from td_bridge.stamp import folder_stamp
from td_bridge.top_frames import to_top

sys.path[:0] = [str(ROOT / "tests" / "tdstub"), str(ROOT / "touchdesigner")]
import build_depthfusion  # noqa: E402
import td  # noqa: E402  - the stand-in

BUILDS = td.SUPPORTED_BUILDS
FOLDER = ROOT / "touchdesigner"


def frames(count=6):
    """Enough frames for the component to start and its first Diagnose's geometry check to finish."""
    for _ in range(count):
        td.simulate_frame()


def extension(comp):
    return comp.ext.DepthFusionExt


@pytest.fixture
def comp():
    component = build_depthfusion.build(td, td.make_root(), FOLDER)
    frames()
    yield component
    extension(component).onDestroyTD()


@pytest.mark.parametrize("build", BUILDS)
def test_the_component_starts_while_the_timeline_is_paused(build):
    root = td.make_root(build)
    td.simulate_timeline(False)  # a project saved paused opens paused
    component = build_depthfusion.build(td, root, FOLDER)
    frames()
    ext = extension(component)
    assert ext.started and ext.bridge and ext.controller is not None, ext.started_by
    assert "diagnose" in component.par.Status.eval() and component.op("diagnostics").text
    component.par.Ipd = 0.05  # settings follow while paused too
    frames(1)
    assert component.op("cam_right").par.ipdshift.eval() == 0.025
    component.initializeExtensions()  # Re-init Extensions while paused
    frames()
    assert extension(component) is not ext and extension(component).started and ext.closed
    extension(component).onDestroyTD()


def test_a_run_on_the_paused_timeline_waits_and_one_on_tdresources_does_not():
    """The stand-in's run() as Td_Module describes delayRef (td_hand.json: run_timing)."""
    td.make_root()
    td.simulate_timeline(False)
    calls = []
    td.run("args[0].append('timeline')", calls, delayFrames=1)
    td.run("args[0].append('independent')", calls, endFrame=True, delayFrames=1, delayRef=td.op.TDResources)
    frames(3)
    assert calls == ["independent"]
    td.simulate_timeline(True)
    frames(1)
    assert calls == ["independent"]  # due at the end of the timeline's next frame
    frames(1)
    assert calls == ["independent", "timeline"]


def test_the_embedded_td_bridge_wins_over_another_on_the_path(tmp_path):
    foreign = tmp_path / "site" / "td_bridge"
    foreign.mkdir(parents=True)
    (foreign / "__init__.py").write_text('__version__ = "9.9"\nFOREIGN = True\n', encoding="utf-8")
    component = build_depthfusion.build(td, td.make_root(), FOLDER)
    for name in [m for m in sys.modules if m.split(".")[0] == "td_bridge"]:
        del sys.modules[name]  # as in a fresh TouchDesigner whose Python path holds another td_bridge first
    sys.path.insert(0, str(tmp_path / "site"))
    frames()
    ext = extension(component)
    assert ext.bridge and not hasattr(sys.modules["td_bridge"], "FOREIGN")
    assert ext.bridge_from.startswith("the embedded copy 0.1.0+")
    report = component.op("diagnostics").text
    assert f"another td_bridge on the path ({foreign}) is version {folder_stamp(foreign)}" in report
    assert folder_stamp(foreign).startswith("9.9+")
    ext.onDestroyTD()


def test_a_broken_embedded_td_bridge_is_reported_not_raised():
    component = build_depthfusion.build(td, td.make_root(), FOLDER)
    component.op("bridge_source").op("__init__").text = "raise RuntimeError('broken on purpose')\n"
    frames()
    assert component.par.Status.eval().startswith("td_bridge missing")
    assert "RuntimeError: broken on purpose" in component.par.Lasterror.eval()
    assert component.op("osc_in").par.active.eval() is False  # the start failed: the port stays closed


@pytest.mark.parametrize("edges, blending", [("fade", True), ("cull", False), ("keep", False)])
def test_fade_blends_premultiplied_colour_and_writes_no_depth(comp, edges, blending):
    comp.par.Edges = edges
    frames(1)
    mat = comp.op("displace")
    assert mat.par.blending.eval() is blending and mat.par.depthwriting.eval() is (not blending)
    if blending:  # the pixel stage writes colour × alpha: One, One Minus Source Alpha
        assert (mat.par.srcblend.eval(), mat.par.destblend.eval()) == ("one", "omsa")
        assert mat.par.vec0valuew.eval() == 2.0


def test_the_saved_tox_opens_no_udp_port():
    td.make_root()
    component = build_depthfusion.main(FOLDER)  # builds and saves in one go, as in the Textport
    saved = component.stub_saved[component.op("osc_in").path]
    assert (saved["active"], saved["localaddress"], saved["port"]) == (False, "127.0.0.1", 9001)
    frames()
    extension(component).onDestroyTD()


def test_without_project1_the_component_is_built_into_the_root():
    root = td.make_root(project=False)
    component = build_depthfusion.main(FOLDER)
    assert component.path == "/DepthFusion" and root.op("DepthFusion") is component
    frames()
    assert extension(component).started
    extension(component).onDestroyTD()


def test_a_second_build_in_one_session_uses_the_edited_sources(tmp_path):
    repo = tmp_path / "depthfusion"
    for part in ("touchdesigner", "td_bridge"):
        shutil.copytree(ROOT / part, repo / part, ignore=shutil.ignore_patterns("__pycache__"))
    root = td.make_root()
    first = build_depthfusion.build(td, root, repo / "touchdesigner")
    assert first.op("osc_in").par.port.eval() == 9001
    edits = {"touchdesigner/parameters.py": ("OSC_PORT = 9001", "OSC_PORT = 9011"),
             "td_bridge/params.py": ('"Sphere latitude segments."', '"Sphere latitude segments (edited)."'),
             "touchdesigner/shaders/depthfusion_pixel.glsl": ("void main()", "// edited\nvoid main()")}
    for name, (old, new) in edits.items():
        text = (repo / name).read_text(encoding="utf-8")
        assert old in text, name
        (repo / name).write_text(text.replace(old, new), encoding="utf-8")
    second = build_depthfusion.build(td, root, repo / "touchdesigner")  # a git pull, then the same step again
    assert second.name == "DepthFusion" and not first.valid
    assert second.op("osc_in").par.port.eval() == 9011
    assert second.par.Meshrows.help == "Sphere latitude segments (edited)."
    assert "// edited" in second.op("pixel").text
    assert "(edited)" in second.op("bridge_source").op("params").text
    frames()
    extension(second).onDestroyTD()


def test_a_broken_old_build_does_not_stop_the_rebuild(comp, capsys, monkeypatch):
    def broken():
        raise RuntimeError("old extension exploded")

    monkeypatch.setattr(extension(comp), "onDestroyTD", broken)
    second = build_depthfusion.build(td, comp.parent(), FOLDER)
    assert second.name == "DepthFusion" and not comp.valid
    assert "old extension exploded" in capsys.readouterr().out
    frames()
    extension(second).onDestroyTD()


def _show(comp, depth):
    ext = extension(comp)
    ext.controller.frame = to_top(Frame(np.zeros(depth.shape + (3,), np.uint8), depth, {}))
    comp.op("depth").cook(force=True)


def test_depth_goes_as_three_channels_where_one_is_refused():
    td.make_root()
    td.simulate_script_top_channels("older")  # the Script TOP page's reading: 3 or 4 channels
    component = build_depthfusion.build(td, td.op("/project1"), FOLDER)
    frames()
    depth = np.arange(32 * 64, dtype=np.uint16).reshape(32, 64) * 31
    _show(component, depth)
    image = component.op("depth").stub_image
    assert image.shape == (32, 64, 3) and np.array_equal(image[..., 0], depth[::-1])
    assert "sending 3 channels" in component.par.Lasterror.eval()
    assert "depth: mono16fixed, 3 channel(s) sent, frame values intact" in component.Diagnose()
    extension(component).onDestroyTD()


def test_diagnose_switches_depth_to_three_channels_when_one_reads_back_wrong(comp, monkeypatch):
    """A TouchDesigner that takes one channel without complaint but keeps it wrong: only the read-back shows it."""
    real = td.scriptTOP.numpyArray

    def garbled(self, delayed=False, writable=False):
        image = real(self, delayed, writable)
        return image if image is None or self.stub_image.shape[2] != 1 else image * 0.5

    monkeypatch.setattr(td.scriptTOP, "numpyArray", garbled)
    _show(comp, np.full((16, 32), 40000, np.uint16))
    assert extension(comp).depth_channels == 1
    report = comp.Diagnose()
    assert extension(comp).depth_channels == 3
    assert "now sent as 3 channels, mono16fixed, frame values intact" in report
    frames()  # the geometry check's test frame goes; the frame comes back, as 3 channels
    assert comp.op("depth").stub_image.shape == (16, 32, 3)


# ------------------------------------------------------------------ Diagnose's geometry check, fed by our renderer

SMALL_VIEW = {"Mapping": "linear", "Radius": 4.0, "Strength": 1.0, "Meshrows": 64, "Meshcols": 128, "Ipd": 0.3,
              "Convergence": 4.0, "Eyewidth": 320, "Eyeheight": 180, "Odsheight": 160, "Domesize": 256}


def renders(ctx, comp, window=1.0, ods_swapped=False):
    """What TouchDesigner would draw of the component's test frame, from the project's renderer: eye frusta
    shifted ``window`` (+1 as the docs read Window X, −1 the other way), ODS eyes optionally swapped. Read-backs as
    TOP.numpyArray() gives them: float32 RGBA, row 0 at the bottom."""
    from generator.render import Renderer
    from td_bridge import geometry as g
    from td_bridge.geometry_check import test_frame
    from td_bridge.params import DISPLAY_PARAMS, VIEW_PARAMS, td_name
    from td_bridge.render_setup import clip_range

    display = {p.name: comp.par[td_name(p.name)].eval() for p in DISPLAY_PARAMS}
    view = {p.name: comp.par[td_name(p.name)].eval() for p in VIEW_PARAMS}
    rgb, depth = test_frame(display, view)
    rotation = g.rotation_matrix(view["yaw"], view["pitch"])
    positions = dict(zip(("left", "right"), g.eye_positions(view["ipd"], (0.0, 0.0, 0.0), rotation)))
    aspect = view["eye_width"] / view["eye_height"]

    def eye(r, name, width, height):
        offset = (-1 if name == "left" else 1) * view["ipd"] / 2
        projection = g.off_axis_projection(window * offset, view["convergence"], view["fov"], aspect,
                                           *clip_range(display, view))
        return r.scene.draw(projection @ g.view_matrix(positions[name], rotation), width, height)

    w, h = view["eye_width"], view["eye_height"]
    with Renderer(rgb, depth, display, view["edges"], ctx=ctx) as r:
        left, right = eye(r, "left", w, h), eye(r, "right", w, h)
        images = {"render_left": left, "render_right": right,
                  "side_by_side": np.concatenate([eye(r, "left", w // 2, h), eye(r, "right", w // 2, h)], axis=1),
                  "top_bottom": np.concatenate([eye(r, "left", w, h // 2), eye(r, "right", w, h // 2)], axis=0),
                  "dome": r.render("dome", view)}
        ods = r.render("ods", view)
    first, second = np.split(ods, 2, axis=0)
    if ods_swapped:
        first, second = second, first
    images.update({"ods_flip_left": first, "ods_flip_right": second, "ods_top_bottom": np.concatenate([first, second])})

    def read(image):
        rgba = np.concatenate([image / np.float32(255), np.ones(image.shape[:2] + (1,), np.float32)], axis=-1)
        return np.ascontiguousarray(rgba[::-1], dtype=np.float32)

    return {name: read(image) for name, image in images.items()}


def diagnose_with(comp, images):
    """Pulse Diagnose; while its test frame is shown, the TOPs 'draw' ``images``; then let it read them back."""
    comp.par.Diagnose.pulse()
    for name, image in images.items():
        comp.op(name).stub_rendered = image
    frames()
    return comp.op("diagnostics").text


@pytest.fixture
def small(comp):
    for name, value in SMALL_VIEW.items():
        comp.par[name].val = value
    frames(1)
    return comp


def test_diagnose_verifies_the_geometry_our_renderer_draws(small, ctx):
    report = diagnose_with(small, renders(ctx, small))
    for name in ("equirect_orientation", "eye_order", "window_x_sign", "ods_left_index", "ods_ipd_shift",
                 "dome_tilt_sign", "side_by_side", "top_bottom", "ods_top_bottom"):
        assert f"geometry {name}: verified" in report, (name, report)
    assert "wrong" not in report and extension(small).fixes == {}
    assert small.op("depth").stub_image.shape[:2] == (8, 16)  # the test frame is gone: the idle frame is back


def test_diagnose_names_wrong_conventions_and_apply_fixes_sets_them(small, ctx):
    report = diagnose_with(small, renders(ctx, small, window=-1.0, ods_swapped=True))
    assert "geometry window_x_sign: wrong" in report and "geometry ods_left_index: wrong" in report
    assert extension(small).fixes == {"Windowxsign": "reversed", "Odsleftindex": 1}, report
    assert "pulse Apply Fixes" in report and "problem" in small.par.Status.eval()
    winx = small.op("cam_left").par.winx.eval()
    small.par.Applyfixes.pulse()
    frames(1)
    assert (small.par.Windowxsign.eval(), small.par.Odsleftindex.eval()) == ("reversed", 1)
    assert small.op("cam_left").par.winx.eval() == pytest.approx(-winx)
    assert small.op("ods_select_left").par.cameraindex.eval() == 1
    assert "fixes applied: Windowxsign = reversed, Odsleftindex = 1" in small.par.Lasterror.eval()
