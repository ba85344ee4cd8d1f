"""The TouchDesigner component, built and run against the td stand-in (tests/tdstub/td.py, made from
Derivative's documentation data) under each modelled TouchDesigner build, with a live demo generator.
What only TouchDesigner can show (cooking, rendering, the .tox file, the GPU) is not covered here."""

import re
import sys
import threading

import numpy as np
import pytest

from conftest import ROOT, SMALL, wait_for
from generator.backends.demo import DemoBackend
from td_bridge import stamp, td_builds
from td_bridge.params import DISPLAY_PARAMS, GENERATION_PARAMS, LIVE_PARAMS, VIEW_PARAMS, defaults, td_name
from td_bridge.render_setup import render_settings, shader_uniforms

sys.path[:0] = [str(ROOT / "tests" / "tdstub"), str(ROOT / "touchdesigner")]
import build_depthfusion  # noqa: E402
import shader_source  # noqa: E402
import td  # noqa: E402  - the stand-in
from DepthFusionExt import GEOMETRY_FRAMES, PYZMQ_HELP, load_package  # noqa: E402

BUILDS = td.SUPPORTED_BUILDS


def build_component(build):
    component = build_depthfusion.build(td, td.make_root(build), ROOT / "touchdesigner")
    for _ in range(3 + GEOMETRY_FRAMES):  # started (onInitTD or the run() fallback), then
        td.simulate_frame()  # its first Diagnose's geometry check has read back and taken its test frame away
    return component


@pytest.fixture(params=BUILDS)
def comp(request):
    component = build_component(request.param)
    yield component
    component.ext.DepthFusionExt.onDestroyTD()


def current_build():
    return td_builds.parse_build(td.app.version, td.app.build)


class Frames:
    """TouchDesigner's frame loop, played by the test."""

    def until(self, predicate, what, timeout=10.0):
        def step():
            td.simulate_frame()
            return predicate()
        return wait_for(step, timeout=timeout, what=what)


def shows_a_frame(comp):
    """A frame from the generator is in the Script TOPs (before it, they hold the small black idle frame)."""
    frame = comp.ext.DepthFusionExt.controller.frame
    image = comp.op("depth").stub_image
    return frame is not None and image is not None and image.shape[:2] == frame.depth.shape[:2]


def out_names():
    return [build_depthfusion.out_name(i, name) for i, name in enumerate(build_depthfusion.OUTPUTS)]


NETWORK = {
    "bridge_source": "baseCOMP", "DepthFusionExt": "textDAT", "rgb_top": "textDAT", "rgb": "scriptTOP",
    "depth_top": "textDAT", "depth": "scriptTOP", "rgb_prev_top": "textDAT", "rgb_prev": "scriptTOP",
    "depth_prev_top": "textDAT", "depth_prev": "scriptTOP", "frames": "executeDAT", "parameters": "parameterexecuteDAT",
    "vertex": "textDAT", "pixel": "textDAT", "displace": "glslMAT", "sphere": "geometryCOMP",
    "cam_left": "cameraCOMP", "cam_right": "cameraCOMP", "render_left": "renderTOP", "render_right": "renderTOP",
    "side_by_side": "layoutTOP", "top_bottom": "layoutTOP", "cam_ods": "cameraCOMP", "render_ods": "renderTOP",
    "ods_select_left": "renderselectTOP", "ods_select_right": "renderselectTOP", "ods_left": "projectionTOP",
    "ods_right": "projectionTOP", "ods_flip_left": "flipTOP", "ods_flip_right": "flipTOP",
    "ods_top_bottom": "layoutTOP", "shader_info": "infoDAT", "cam_dome": "cameraCOMP",
    "render_dome": "renderTOP", "dome": "projectionTOP", "osc_callbacks": "textDAT", "osc_in": "oscinDAT",
    "diagnostics": "textDAT", **{name: "outTOP" for name in out_names()},
}


def test_the_builder_makes_the_documented_network(comp):
    assert comp.path == "/project1/DepthFusion"
    assert {child.name: child.OPType for child in comp.children} == NETWORK
    assert [page.name for page in comp.customPages] == [
        "Connection", "Generate", "LoRA", "Live", "Upscale", "Remix", "Depth", "Sphere", "Stereo", "Outputs", "OSC",
        "Diagnose", "Status"]
    for name in ("rgb", "depth", "rgb_prev", "depth_prev"):  # the newest frame, the previous one (Blend Time)
        top = comp.op(name)
        assert top.stub_resolve(top.par.callbacks.eval()) is comp.op(f"{name}_top")
        assert comp.op(f"{name}_top").text == (ROOT / "touchdesigner" / "callbacks" / f"{name}_top.py").read_text()
        assert top.par.format.eval() == ("rgba8fixed" if name.startswith("rgb") else "mono16fixed")
    assert comp.op("frames").par.framestart.eval() and comp.op("frames").par.active.eval()
    changes = comp.op("parameters")
    assert changes.stub_resolve(changes.par.op.eval()) is comp and changes.par.onpulse.eval()
    assert changes.par.valuechange.eval() and {"Generate", "Diagnose", "Ipd", "Meshrows", "Oscport",
                                               "Shaderposition"} <= set(changes.par.pars.eval().split())
    embedded = {dat.name: dat.text for dat in comp.op("bridge_source").children}
    sources = {p.stem: p.read_text(encoding="utf-8") for p in (ROOT / "td_bridge").glob("*.py")}
    assert embedded == {**sources, "VERSION_STAMP": stamp.source_stamp(sources)}
    assert (comp.seq.ext.numBlocks, comp.par.ext0object.eval(), comp.par.ext0promote.eval()) == (
        1, build_depthfusion.EXTENSION, True)
    assert callable(comp.Connect) and callable(comp.Generate) and callable(comp.Diagnose)


def test_the_sphere_and_its_material(comp):
    geo = comp.op("sphere")
    assert [child.name for child in geo.children] == ["mesh"]  # the new COMP's torus is gone
    mesh = geo.op("mesh")
    assert (mesh.par.type.eval(), mesh.par.texture.eval(), mesh.par.orient.eval()) == ("mesh", "equirectangularin", "y")
    assert mesh.display and mesh.render and mesh.par.upole.eval()
    mat = comp.op("displace")
    assert geo.par.material.eval() is mat  # through the parent shortcut: no path that breaks on a move
    position = td_builds.vertex_position_input(current_build())
    assert mat.stub_resolve(mat.par.vdat.eval()).text == shader_source.vertex_source(position)
    assert mat.stub_resolve(mat.par.pdat.eval()).text == shader_source.pixel_source()
    assert mat.par.glslversion.eval() == "glsl460" and mat.errors() == ""
    samplers = {mat.par[f"sampler{i}name"].eval(): mat.stub_resolve(mat.par[f"sampler{i}top"].eval())
                for i in range(mat.seq.sampler.numBlocks)}
    assert samplers == {"sDepth": comp.op("depth"), "sColor": comp.op("rgb"), "sDepthPrev": comp.op("depth_prev"),
                        "sColorPrev": comp.op("rgb_prev")}
    assert mat.par.sampler0filter.eval() == "nearest" and mat.par.sampler0extendu.eval() == "repeat"
    assert mat.par.sampler2filter.eval() == "nearest" and mat.par.sampler3filter.eval() == "linear"
    text = shader_source.vertex_source() + shader_source.pixel_source()
    assert set(re.findall(r"uniform sampler2D (\w+);", text)) == set(samplers)
    declared = set(re.findall(r"uniform vec\d (\w+);", text))
    assert {mat.par[f"vec{i}name"].eval() for i in range(mat.seq.vec.numBlocks)} == declared


def test_renders_layouts_and_outputs_in_readme_order(comp):
    for eye in ("left", "right"):
        render = comp.op(f"render_{eye}")
        assert render.stub_resolve(render.par.camera.eval()) is comp.op(f"cam_{eye}")
        assert render.stub_resolve(render.par.geometry.eval()) is comp.op("sphere")
        assert (render.par.rendermode.eval(), render.par.cullface.eval()) == ("render2d", "neither")
    assert comp.op("render_ods").par.rendermode.eval() == "cubemapods"
    assert comp.op("render_dome").par.rendermode.eval() == "cubemap"
    for index, eye in enumerate(("left", "right")):
        select = comp.op(f"ods_select_{eye}")
        assert select.stub_resolve(select.par.top.eval()) is comp.op("render_ods")
        assert select.par.cameraindex.eval() == index
        projection = comp.op(f"ods_{eye}")
        assert projection.inputs == [select] and projection.par.output.eval() == "equirectangular"
    assert comp.op("dome").inputs == [comp.op("render_dome")] and comp.op("dome").par.output.eval() == "fisheye"
    eyes = "render_left render_right"
    layouts = {"side_by_side": (eyes, "horizlr"), "top_bottom": (eyes, "verttb"),
               "ods_top_bottom": ("ods_flip_left ods_flip_right", "verttb")}
    for name, (tops, align) in layouts.items():
        assert (comp.op(name).par.top.eval(), comp.op(name).par.align.eval()) == (tops, align)
    sources = {"left": "render_left", "right": "render_right", "side_by_side": "side_by_side",
               "top_bottom": "top_bottom", "ods": "ods_top_bottom", "dome": "dome", "rgb": "rgb", "depth": "depth"}
    # TouchDesigner orders a component's output connectors alphanumerically by Out TOP name
    assert [out.inputs[0].name for out in td.stub_out_tops(comp)] == [sources[o] for o in build_depthfusion.OUTPUTS]


def test_every_default_output_fits_non_commercial(comp):
    sizes = {out.name: (out.width, out.height) for out in td.stub_out_tops(comp)}
    assert sizes[out_names()[2]] == (1280, 720) and sizes[out_names()[3]] == (1280, 720)  # half packing
    assert all(max(size) <= td.BEHAVIOUR["noncommercial_texture_limit"] for size in sizes.values()), sizes
    comp.par.Packing = "full"
    td.simulate_frame()
    assert (comp.op("side_by_side").width, comp.op("top_bottom").height) == (2560, 1440)
    comp.Diagnose()
    assert "warning" in comp.par.Status.eval() and "out3_side_by_side: 2560×720, over" in comp.op("diagnostics").text


def applied(comp):
    display = {p.name: comp.par[td_name(p.name)].eval() for p in DISPLAY_PARAMS}
    view = {p.name: comp.par[td_name(p.name)].eval() for p in VIEW_PARAMS}
    for path, values in render_settings(display, view, current_build()).items():
        for name, value in values.items():
            assert comp.op(path).par[name].eval() == value, (path, name)
    mat = comp.op("displace")
    for i in range(mat.seq.vec.numBlocks):
        vector = shader_uniforms(display, view["edges"])[mat.par[f"vec{i}name"].eval()]
        assert tuple(mat.par[f"vec{i}value{axis}"].eval() for axis in "xyzw") == vector


def test_settings_follow_the_parameters_once_per_frame(comp):
    applied(comp)
    assert comp.op("cam_left").par.ipdshift.eval() == -0.032 and comp.op("sphere/mesh").par.rows.eval() == 256
    comp.par.Ipd, comp.par.Convergence, comp.par.Yaw, comp.par.Headz = 0.07, 3.0, 45.0, 0.5
    comp.par.Meshrows, comp.par.Mapping, comp.par.Edges, comp.par.Eyewidth = 128, "metric", "fade", 1920
    assert comp.op("cam_right").par.ipdshift.eval() == 0.032  # Parameter Execute runs at the frame
    td.simulate_frame()
    applied(comp)
    assert comp.op("cam_right").par.ipdshift.eval() == 0.035 and comp.op("render_left").par.resolutionw.eval() == 1920
    assert comp.op("displace").par.vec0valuew.eval() == 2.0  # fade
    comp.par.Far = 0.5  # below Near: a script can go where the sliders cannot
    td.simulate_frame()
    assert comp.par.Lasterror.eval().startswith("settings not applied: ")
    assert comp.op("cam_left").par.ipdshift.eval() == -0.035  # the last good settings stay
    comp.par.Far = 200.0
    td.simulate_frame()
    assert comp.par.Lasterror.eval() == ""


@pytest.mark.parametrize("signature", td.BEHAVIOUR["valuechange_signatures"])
def test_the_value_change_shim_takes_both_documented_signatures(signature):
    component = build_component(BUILDS[-1])
    td.simulate_build(BUILDS[-1], valuechange_args=tuple(signature))
    component.par.Ipd = 0.05
    td.simulate_frame()
    assert component.op("cam_right").par.ipdshift.eval() == 0.025
    component.ext.DepthFusionExt.onDestroyTD()


def test_the_ods_eye_sign_follows_the_build():
    for build in BUILDS:
        component = build_component(build)
        shift = component.op("cam_ods").par.ipdshift.eval()
        # 2023.12370 release notes: IPD Shift "now correctly negative for the left eye", reversed before
        fixed = td_builds.parse_build(*build.split(".")) >= td_builds.parse_build(
            *td.BEHAVIOUR["ods_ipd_sign_fixed_in"].split("."))
        assert shift == (0.032 if fixed else -0.032), build
        component.ext.DepthFusionExt.onDestroyTD()


def test_the_shader_position_input_follows_the_build_and_the_override(comp):
    mat, vertex = comp.op("displace"), comp.op("vertex")
    expected = td.stub_vertex_position_input()
    assert vertex.text.startswith(f"#define DF_POSITION {expected}\n") and mat.errors() == ""
    wrong = "p" if expected == "TDPos()" else "tdpos"
    comp.par.Shaderposition = wrong
    td.simulate_frame()
    assert mat.errors() == ""  # errors() does not cook, and nothing has drawn the sphere since the change
    report = comp.Diagnose()  # cooks a Render TOP (so the material compiles) before it reads the errors
    assert report.count("displace errors") == 1 and mat.errors()
    assert "displace info: 'TDPos' : undeclared identifier" in report or "displace info: 'P' : undeclared" in report
    assert "problem" in comp.par.Status.eval()
    comp.par.Shaderposition = "auto"
    td.simulate_frame()
    comp.op("render_left").cook(force=True)
    assert mat.errors() == "" and vertex.text == shader_source.vertex_source(expected)


def test_the_builders_names_match_the_builds_td_bridge_models():
    assert [td_builds.build_text(b) for b in (td_builds.OLDEST_SUPPORTED, td_builds.ODS_IPD_SIGN_FIXED,
                                              td_builds.EXTENSION_HOOKS_FROM)] == list(BUILDS)
    assert td.BEHAVIOUR["ods_ipd_sign_fixed_in"] == td_builds.build_text(td_builds.ODS_IPD_SIGN_FIXED)
    assert td.BEHAVIOUR["extension_hooks_from"] == td_builds.build_text(td_builds.EXTENSION_HOOKS_FROM)
    for build, position in td.BEHAVIOUR["vertex_position_input"].items():
        assert td_builds.vertex_position_input(td_builds.parse_build(*build.split("."))) == position
    assert td_builds.parse_build("2023", "11290") == td_builds.parse_build("2023", "2023.11290") == (2023, 11290)
    with pytest.raises(ValueError, match="cannot read a TouchDesigner build"):
        td_builds.parse_build("", "experimental")


def test_every_setting_written_is_in_the_documentation_data():
    """Each (operator type, parameter, menu value) that render_setup and the extension write."""
    for build in BUILDS:
        display, view = defaults(DISPLAY_PARAMS), {**defaults(VIEW_PARAMS), "packing": "full", "edges": "fade"}
        settings = render_settings(display, view, td_builds.parse_build(*build.split(".")))
        settings["osc_in"] = {"active": True, "port": 9001, "localaddress": "127.0.0.1"}
        for path, values in settings.items():
            docs = td.DOCS["operators"][NETWORK[path.split("/")[0]] if "/" not in path else "sphereSOP"]
            for name, value in values.items():
                assert name in docs["parameters"], (path, name)
                menu = docs["parameters"][name].get("menu")
                assert menu is None or value in menu, (path, name, value)
    vec = td.DOCS["operators"]["glslMAT"]["sequences"]["vec"]
    assert {"name", "valuex", "valuey", "valuez", "valuew"} <= set(vec)
    assert {"object", "name", "promote"} <= set(td.DOCS["operators"]["baseCOMP"]["sequences"]["ext"])
    assert "ipdshiftx" not in td.DOCS["operators"]["cameraCOMP"]["parameters"]


def test_a_wrong_parameter_name_leaves_the_component_alive(server, comp, monkeypatch):
    embedded = sys.modules["td_bridge.render_setup"]  # the component's own td_bridge, loaded from its Text DATs
    original = embedded.render_settings

    def with_typo(*args, **kwargs):
        settings = original(*args, **kwargs)
        settings["cam_left"]["ipdshiftx"] = -0.032  # a name Camera COMP does not have
        settings["dome"]["output"] = "domemaster"  # a menu value Projection TOP does not list
        return settings

    monkeypatch.setattr(embedded, "render_settings", with_typo)
    comp.par.Framesaddress, comp.par.Commandsaddress = server.frames, server.commands
    comp.par.Ipd = 0.07
    td.simulate_frame()
    error = comp.par.Lasterror.eval()
    assert "cam_left.ipdshiftx = -0.032: cameraCOMP has no parameter 'ipdshiftx'" in error
    assert "dome.output = 'domemaster': not in its menu" in error
    assert comp.op("cam_right").par.ipdshift.eval() == 0.035  # the other settings still apply
    report = comp.Diagnose()
    assert "cam_left.ipdshiftx" in report and "dome.output" in report and "2 problems" in comp.par.Status.eval()
    comp.par.Connect.pulse()
    Frames().until(lambda: comp.par.Connected.eval(), "connected")
    comp.par.Width, comp.par.Height, comp.par.Steps = SMALL["width"], SMALL["height"], SMALL["steps"]
    comp.par.Generate.pulse()
    Frames().until(lambda: shows_a_frame(comp), "frames despite the bad setting")


def test_generate_and_show_frames_from_a_live_generator(server, comp):
    comp.par.Framesaddress = server.frames
    comp.par.Commandsaddress = server.commands
    comp.par.Connect.pulse()  # through the Parameter Execute DAT to the extension
    frames = Frames()
    frames.until(lambda: comp.par.Connected.eval(), "connected")
    assert comp.par.Status.eval().startswith("idle · demo") and comp.par.Backend.eval() == "demo"
    comp.par.Prompt = "a desert at night"
    comp.par.Seed = 5
    comp.par.Width, comp.par.Height, comp.par.Steps = SMALL["width"], SMALL["height"], SMALL["steps"]
    comp.par.Scheduler = "euler"
    comp.par.Generate.pulse()
    frames.until(lambda: shows_a_frame(comp), "frame in the TOPs")
    rgb, depth = comp.op("rgb").stub_image, comp.op("depth").stub_image
    params = {p.name: comp.par[td_name(p.name)].eval() for p in GENERATION_PARAMS}
    expected = DemoBackend().generate(params, lambda s, n: None, lambda: False)
    np.testing.assert_array_equal(rgb, expected.rgb[::-1])  # TouchDesigner's rows: bottom first
    assert depth.dtype == np.uint16 and depth.shape == (64, 128, 1)
    np.testing.assert_array_equal(depth[:, :, 0], expected.depth[::-1])
    assert comp.par.Frameid.eval() and comp.par.Jobid.eval().startswith("job-") and comp.par.Lasterror.eval() == ""
    cooks = comp.op("rgb").totalCooks
    frames.until(lambda: True, "idle frames")
    assert comp.op("rgb").totalCooks == cooks  # the TOPs cook only when a new frame arrives
    report = comp.Diagnose()
    assert "depth: mono16fixed, 1 channel(s) sent, frame values intact" in report and comp.par.Status.eval().endswith("diagnose: OK")
    comp.op("depth").par.format = "rgba8fixed"  # what 'Use Input' may pick: 16-bit depth would lose 8 bits
    assert "depth: pixel format rgba8fixed, not mono16fixed" in comp.Diagnose()
    assert "depth: values off by up to" in comp.op("diagnostics").text


def test_osc_in_is_off_by_default_and_drives_the_component(server, comp):
    osc_in = comp.op("osc_in")
    assert (osc_in.par.active.eval(), osc_in.par.port.eval(), osc_in.par.localaddress.eval()) == (False, 9001,
                                                                                                 "127.0.0.1")
    assert not osc_in.simulate_receive("/depthfusion/ipd", [0.1])
    comp.par.Oscin, comp.par.Oscport = True, 9100
    td.simulate_frame()
    assert osc_in.par.active.eval() and osc_in.par.port.eval() == 9100
    assert osc_in.stub_resolve(osc_in.par.callbacks.eval()).text == (
        ROOT / "touchdesigner/callbacks/osc_in.py").read_text()

    osc_in.simulate_receive("/depthfusion/ipd", [0.1])
    td.simulate_frame()
    assert comp.par.Ipd.eval() == 0.1 and comp.op("cam_right").par.ipdshift.eval() == 0.05
    for address, args, error in [("/depthfusion/ipd", [5.0], "ipd: 5.0 is out of range"),
                                 ("/depthfusion/ipd", ["wide"], "not a valid float"),
                                 ("/depthfusion/zoom", [1], "unknown address"),
                                 ("/other/ipd", [1], "listens under /depthfusion/"),
                                 ("/depthfusion/recall", [], "recall: takes 1 argument")]:
        osc_in.simulate_receive(address, args)
        assert error in comp.par.Lasterror.eval(), address
    assert comp.par.Ipd.eval() == 0.1

    osc_in.simulate_receive("/depthfusion/framesaddress", [server.frames])  # not addressable: Connection page
    assert "unknown address" in comp.par.Lasterror.eval()
    comp.par.Framesaddress, comp.par.Commandsaddress = server.frames, server.commands
    osc_in.simulate_receive("/depthfusion/connect", [])
    for name, value in (("width", SMALL["width"]), ("height", SMALL["height"]), ("steps", SMALL["steps"])):
        osc_in.simulate_receive(f"/depthfusion/{name}", [value])
    frames = Frames()
    frames.until(lambda: comp.par.Connected.eval(), "connected")
    osc_in.simulate_receive("/depthfusion/generate", ["a lighthouse in fog"])
    frames.until(lambda: shows_a_frame(comp), "the frame from an OSC generate")
    assert comp.par.Prompt.eval() == "a lighthouse in fog" and comp.op("depth").stub_image.shape == (64, 128, 1)
    mat = comp.op("displace")
    poles = comp.ext.DepthFusionExt.controller.frame.poles
    assert (mat.par.vec2name.eval(), mat.par.vec2valuex.eval(), mat.par.vec2valuey.eval()) == ("uPoles", *poles)


def test_custom_parameters_follow_the_schema(comp):
    for param in GENERATION_PARAMS + LIVE_PARAMS + DISPLAY_PARAMS + VIEW_PARAMS:
        par = comp.par[td_name(param.name)]
        assert par.isCustom and par.default == param.default and par.eval() == param.default
        if param.choices:
            assert par.style == "Menu" and par.menuNames == list(param.choices)
        elif param.kind in (int, float):
            assert (par.min, par.max, par.clampMin, par.clampMax) == (param.minimum, param.maximum, True, True)
        assert par.help == param.help
    status = next(page for page in comp.customPages if page.name == "Status")
    assert all(par.readOnly for par in status.pars) and {p.name for p in status.pars} >= {"Status", "Lasterror"}
    assert comp.par.Framesaddress.eval() == "tcp://127.0.0.1:5555" and comp.par.Autoconnect.eval() is True
    assert comp.par.Shaderposition.menuNames == list(td_builds.POSITION_MENU)


def test_bad_values_and_unknown_cues_show_in_last_error(server, comp):
    comp.par.Framesaddress, comp.par.Commandsaddress = server.frames, server.commands
    comp.par.Connect.pulse()
    comp.par.Steps = 0  # a script can go past the slider's clamp
    comp.par.Generate.pulse()
    assert comp.par.Lasterror.eval().startswith("steps: 0 is out of range")
    comp.par.Recallname = "no such cue"
    comp.par.Recall.pulse()
    Frames().until(lambda: "no frame with cue" in comp.par.Lasterror.eval(), "the generator's answer")
    comp.par.Commandsaddress = "localhost"
    comp.par.Connect.pulse()
    assert "tcp://HOST:PORT" in comp.par.Lasterror.eval()


def test_a_failing_callback_never_raises_into_touchdesigner(comp):
    extension = comp.ext.DepthFusionExt
    extension.controller.frame = type("Broken", (), {"rgb": np.zeros((2, 2), np.uint8)})()  # wrong shape
    comp.op("rgb").cook(force=True)
    assert "CookRgb: ValueError: copyNumpyArray needs shape" in comp.par.Lasterror.eval()
    extension.controller.frame = None
    td.simulate_frame()  # the frame loop goes on


@pytest.mark.parametrize("build", BUILDS)
def test_reinit_and_rebuild_close_the_old_extension(build):
    component = build_component(build)
    old = component.ext.DepthFusionExt
    assert old.started and old.started_by == ("onInitTD" if td_builds.has_extension_hooks(current_build())
                                              else "run(endFrame, delayRef=op.TDResources)")
    component.initializeExtensions()  # Re-init Extensions: __delTD__ or onDestroyTD, by build
    assert old.closed and old.controller is None
    td.simulate_frame()
    td.simulate_frame()
    new = component.ext.DepthFusionExt
    assert new is not old and new.started and not old.started_by == "" and old.closed
    threads = threading.active_count()
    rebuilt = build_depthfusion.build(td, component.parent(), ROOT / "touchdesigner")
    assert rebuilt.name == "DepthFusion" and [c.name for c in rebuilt.parent().children] == ["DepthFusion"]
    assert new.closed and not component.valid
    td.simulate_frame()
    td.simulate_frame()
    assert rebuilt.ext.DepthFusionExt.started
    rebuilt.ext.DepthFusionExt.onDestroyTD()
    wait_for(lambda: threading.active_count() <= threads, what="the old extensions' threads to end")


def test_init_touches_no_operator_until_started():
    root = td.make_root(BUILDS[0])
    component = build_depthfusion.build(td, root, ROOT / "touchdesigner")
    extension = component.ext.DepthFusionExt
    assert not extension.started and extension.controller is None and component.op("diagnostics").text == ""
    td.simulate_frame()
    td.simulate_frame()
    assert extension.started and "diagnose: OK" in component.op("diagnostics").text
    extension.onDestroyTD()
    extension.onDestroyTD()  # idempotent
    extension.__delTD__()


def test_a_missing_pyzmq_is_said_plainly(monkeypatch):
    monkeypatch.setitem(sys.modules, "zmq", None)  # what `import zmq` meets in a bare TouchDesigner
    for module in ("td_bridge.component", "td_bridge.receiver"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    component = build_component(BUILDS[-1])
    assert component.par.Status.eval().startswith("pyzmq missing · diagnose: 1 problem")
    assert component.par.Lasterror.eval() == PYZMQ_HELP and "TDPyEnvManager" in PYZMQ_HELP
    assert "pyzmq is missing" in component.op("diagnostics").text
    component.Generate()  # nothing to do, nothing raised
    Frames().until(lambda: True, "a frame")


def test_the_embedded_td_bridge_imports_from_its_text_dats(comp):
    sources = {dat.name: dat.text for dat in comp.op("bridge_source").children if dat.name != "VERSION_STAMP"}
    package = load_package("td_bridge_embedded_check", sources)
    try:
        from td_bridge_embedded_check.top_frames import to_top  # relative imports resolved

        assert package.PROTOCOL_VERSION == 1 and package.Frame.__module__ == "td_bridge_embedded_check.protocol"
        frame = package.Frame(np.zeros((2, 4, 3), np.uint8), np.arange(8, dtype=np.uint16).reshape(2, 4), {})
        assert to_top(frame).depth[0, :, 0].tolist() == [4, 5, 6, 7]
    finally:
        for name in [m for m in sys.modules if m.startswith("td_bridge_embedded_check")]:
            del sys.modules[name]
        sys.meta_path[:] = [f for f in sys.meta_path if getattr(f, "package", None) != "td_bridge_embedded_check"]
    with pytest.raises(ImportError, match="has no __init__"):
        load_package("td_bridge_broken", {"protocol": ""})


class LuminanceDepth:
    """A stand-in depth model (no torch): brighter is nearer."""

    model, family, kind, metric = "luminance", "depth_anything", "relative", False

    def predict(self, rgb, flip=False):
        return rgb.astype(np.float32).mean(axis=2) / 255.0


def test_depth_from_top_sends_the_tops_image_and_the_estimated_frame_comes_back(make_server, comp):
    server = make_server(estimator=lambda device: LuminanceDepth())
    photo = comp.parent().create(td.scriptTOP, "photo")  # e.g. a Movie File In of a photo, beside the component
    rows = np.linspace(0, 255, 48).astype(np.uint8)
    image = np.repeat(np.repeat(rows[:, None, None], 80, axis=1), 3, axis=2)  # TouchDesigner rows: bottom first
    photo.stub_image = np.concatenate([image, np.full((48, 80, 1), 255, np.uint8)], axis=2)  # RGBA
    comp.par.Framesaddress, comp.par.Commandsaddress = server.frames, server.commands
    comp.par.Depthtop, comp.par.Cue, comp.par.Pano = "../photo", "my photo", "no"
    comp.par.Connect.pulse()
    Frames().until(lambda: comp.par.Connected.eval(), "connected")
    comp.par.Depthfromtop.pulse()
    Frames().until(lambda: shows_a_frame(comp), "the estimated frame")
    frame = comp.ext.DepthFusionExt.controller.frame
    assert frame.meta["backend"] == "depth-estimation" and frame.meta["params"]["cue"] == "my photo"
    np.testing.assert_array_equal(comp.op("rgb").stub_image, image)  # the photo round-trips, rows and all
    depth = comp.op("depth").stub_image[:, 0, 0].astype(int)
    assert depth[0] == 0 and depth[-1] == 65535 and np.all(np.diff(depth) >= 0)  # the bright top is nearest
    assert comp.par.Jobid.eval().startswith("job-") and comp.par.Lasterror.eval() == ""


def test_depth_from_top_without_a_top_says_so(comp):
    comp.par.Depthfromtop.pulse()
    assert "set Depth Source TOP to a TOP" in comp.par.Lasterror.eval()


def test_the_depth_check_of_the_frame_on_screen_shows_on_the_status_page(make_server, comp):
    server = make_server(estimator=lambda device: LuminanceDepth(), depth_check=True)
    comp.par.Framesaddress, comp.par.Commandsaddress = server.frames, server.commands
    comp.par.Width, comp.par.Height, comp.par.Steps = 96, 64, 2
    comp.par.Connect.pulse()
    Frames().until(lambda: comp.par.Connected.eval(), "connected")
    comp.par.Generate.pulse()
    Frames().until(lambda: comp.par.Depthcheck.eval(), "the depth check")
    check = comp.ext.DepthFusionExt.controller.frame.meta["depth_check"]
    assert comp.par.Depthcheck.eval() == f"AbsRel {check['abs_rel']:.3f} · δ1 {check['delta1']:.3f} (luminance)"


class NearestUpscaler:
    """A stand-in for the ldm3d-sr upscaler (no torch): every pixel repeated ``upscale_factor`` times."""

    name, model = "ldm3d-sr", "nearest"

    def upscale(self, rgb, depth, params, progress, cancelled, source_meta=None):
        from generator.backends.base import RGBD

        k = int(params["upscale_factor"])
        progress(1, 1)
        return RGBD(rgb.repeat(k, 0).repeat(k, 1), depth.repeat(k, 0).repeat(k, 1))


def test_upscale_the_frame_on_screen_and_upscale_after_generating(make_server, comp):
    server = make_server(upscaler=lambda device: NearestUpscaler())
    comp.par.Framesaddress, comp.par.Commandsaddress = server.frames, server.commands
    comp.par.Width, comp.par.Height, comp.par.Steps, comp.par.Upscalefactor = 128, 64, 2, 2.0
    comp.par.Connect.pulse()
    Frames().until(lambda: comp.par.Connected.eval(), "connected")
    comp.par.Generate.pulse()
    Frames().until(lambda: shows_a_frame(comp), "the generated frame")
    source = comp.par.Frameid.eval()
    comp.par.Upscale.pulse()  # the frame on screen
    Frames().until(lambda: comp.op("depth").stub_image.shape == (128, 256, 1), "the upscaled frame")
    assert comp.ext.DepthFusionExt.controller.frame.meta["source_frame_id"] == source
    comp.par.Upscaleafter, comp.par.Seed = True, 9
    comp.par.Generate.pulse()  # generate, then upscale once the frame is out
    Frames().until(lambda: comp.ext.DepthFusionExt.controller.frame.meta.get("seed") == 9
                   and comp.op("depth").stub_image.shape == (128, 256, 1), "the generated-then-upscaled frame")
    assert comp.par.Lasterror.eval() == ""


def test_upscale_needs_a_frame_and_an_upscaler(server, comp):
    comp.par.Framesaddress, comp.par.Commandsaddress = server.frames, server.commands
    comp.par.Connect.pulse()
    comp.par.Upscale.pulse()
    assert comp.par.Lasterror.eval() == "no frame to upscale yet"
    comp.par.Upscaleafter = True
    comp.par.Generate.pulse()
    Frames().until(lambda: "--upscaler" in comp.par.Lasterror.eval(), "the generator's answer")


class RemixingDemo(DemoBackend):
    """The demo backend with a stand-in remix (no torch): the region painted white and near."""

    def remix(self, params, source, mask, progress, cancelled):
        from generator.backends.base import RGBD

        progress(1, 1)
        return RGBD(np.full_like(source.rgb, 255), np.full_like(source.depth, 60000))


def show_a_remixable_frame(make_server, comp):
    """Connect ``comp`` to a generator with RemixingDemo and show a generated 128x64 frame."""
    server = make_server(RemixingDemo())
    comp.par.Framesaddress, comp.par.Commandsaddress = server.frames, server.commands
    comp.par.Width, comp.par.Height, comp.par.Steps = 128, 64, 2
    comp.par.Connect.pulse()
    Frames().until(lambda: comp.par.Connected.eval(), "connected")
    comp.par.Generate.pulse()
    Frames().until(lambda: shows_a_frame(comp), "the generated frame")


def test_remix_the_frame_on_screen_with_the_region_parameters(make_server, comp):
    show_a_remixable_frame(make_server, comp)
    source = comp.par.Frameid.eval()
    comp.par.Remixyaw, comp.par.Remixwidth, comp.par.Remixfeather = 180.0, 60.0, 0.0
    comp.par.Remix.pulse()
    Frames().until(lambda: comp.ext.DepthFusionExt.controller.frame.meta.get("source_frame_id") == source,
                   "the remixed frame")
    meta = comp.ext.DepthFusionExt.controller.frame.meta
    assert meta["params"]["remix_yaw"] == 180.0 and meta["params"]["width"] == 128
    assert comp.par.Lasterror.eval() == ""


# A Script TOP holding a remix mask at half the frame's size: white in the top quarter of the right half (rows
# bottom first, as TouchDesigner's).
MASK = '''import numpy as np


def onCook(scriptOp):
    image = np.zeros((32, 64, 1), np.float32)
    image[24:, 32:] = 1.0
    scriptOp.copyNumpyArray(image)
'''


def test_remix_with_a_mask_top_repaints_its_white_resampled_to_the_frame(make_server, comp):
    callbacks = comp.parent().create(td.textDAT, "mask_callbacks")
    callbacks.text = MASK
    top = comp.parent().create(td.scriptTOP, "mask")
    top.par.callbacks = callbacks.name
    show_a_remixable_frame(make_server, comp)
    extension = comp.ext.DepthFusionExt
    source, before, generated_job = comp.par.Frameid.eval(), extension.controller.frame, comp.par.Jobid.eval()
    comp.par.Masktop = "../mask"
    comp.par.Remix.pulse()
    Frames().until(lambda: extension.controller.frame.meta.get("source_frame_id") == source, "the remixed frame")
    after = extension.controller.frame
    white = np.zeros((64, 128), bool)
    white[:16, 64:] = True  # rows top first: the mask's top quarter of the right half at the frame's size
    white = white[::-1]  # the TOP frame's rows bottom first
    assert (after.rgb[white] == 255).all()  # its depth is aligned to the kept depth round it (remix.md)
    assert np.array_equal(after.rgb[~white], before.rgb[~white])
    assert np.array_equal(after.depth[~white], before.depth[~white])
    assert after.meta["params"]["remix_mask"] and "remix_yaw" not in after.meta["params"]
    assert comp.par.Jobid.eval() not in ("", generated_job) and comp.par.Lasterror.eval() == ""  # the remix job's

    callbacks.text = MASK.replace("image[24:, 32:] = 1.0", "pass")  # all black: nothing to repaint
    top.cook(force=True)
    comp.par.Remix.pulse()
    Frames().until(lambda: "nothing" in comp.par.Lasterror.eval(), "the generator's refusal")


def vector(comp, name):
    """The GLSL MAT's Vectors-page values of uniform ``name``, and its x parameter."""
    mat = comp.op("displace")
    index = next(i for i in range(mat.seq.vec.numBlocks) if mat.par[f"vec{i}name"].eval() == name)
    return tuple(mat.par[f"vec{index}value{axis}"].eval() for axis in "xyzw"), mat.par[f"vec{index}valuex"]


def test_a_new_frame_crossfades_from_the_previous_one_over_blend_time(server, comp):
    """Blend Time 0.25 s is 15 frames of the stand-in's absolute time (60 frames a second, td_hand.json), which
    drives the extension's blend clock here (in TouchDesigner it is the wall clock: absTime pauses with the
    timeline)."""
    extension, frames = comp.ext.DepthFusionExt, Frames()
    extension.clock = lambda: td.absTime.seconds
    comp.par.Framesaddress, comp.par.Commandsaddress = server.frames, server.commands
    comp.par.Width, comp.par.Height, comp.par.Steps = SMALL["width"], SMALL["height"], SMALL["steps"]
    assert comp.par.Blendtime.eval() == 0.0 and comp.par.Blendtime.page.name == "Sphere"
    comp.par.Blendtime = 0.25
    comp.par.Connect.pulse()
    frames.until(lambda: comp.par.Connected.eval(), "connected")
    _, blend = vector(comp, "uBlend")
    assert blend.eval() == 1.0

    def arrives(seed):
        comp.par.Seed = seed
        comp.par.Generate.pulse()
        frames.until(lambda: extension.controller.frame is not None
                     and extension.controller.frame.meta.get("seed") == seed, f"frame {seed}")
        return extension.controller.frame

    first = arrives(1)  # from the black idle frame the start-up check left on screen
    assert blend.eval() == 0.0 and np.array_equal(comp.op("rgb_prev").stub_image, np.zeros((8, 16, 3), np.uint8))
    for _ in range(15):
        td.simulate_frame()
    assert blend.eval() == pytest.approx(1.0)
    td.simulate_frame()
    assert blend.eval() == 1.0

    second = arrives(2)
    assert blend.eval() == 0.0  # the arrival frame shows the previous frame; the blend runs from here
    for name, new, old in (("rgb", second.rgb, first.rgb), ("depth", second.depth, first.depth)):
        np.testing.assert_array_equal(comp.op(name).stub_image, new)
        np.testing.assert_array_equal(comp.op(f"{name}_prev").stub_image, old)  # one copy each, at the arrival
    assert vector(comp, "uPoles")[0] == (*second.poles, *first.poles)
    cooks = {name: comp.op(name).totalCooks for name in ("rgb", "depth", "rgb_prev", "depth_prev")}
    seen = []
    for dropped in (0, 0, 0, 5, 0, 0, 0, 0, 0, 0):  # absolute time decides, dropped frames included
        td.simulate_frame(dropped)
        seen.append(blend.eval())
    elapsed = np.cumsum([1, 1, 1, 6, 1, 1, 1, 1, 1, 1])
    assert seen == pytest.approx(np.minimum(elapsed / 15, 1.0), abs=1e-9) and seen[-1] == 1.0
    assert {name: comp.op(name).totalCooks for name in cooks} == cooks  # no per-frame copies, only the uniform
    blend.val = 0.5  # done: nothing writes it any more
    for _ in range(5):
        td.simulate_frame()
    assert blend.eval() == 0.5
    blend.val = 1.0

    comp.par.Blendtime = 0.0  # a cut, as before Blend Time existed: the previous frame's TOPs are not touched
    third = arrives(3)
    assert blend.eval() == 1.0 and vector(comp, "uPoles")[0] == (*third.poles, *third.poles)
    assert comp.op("rgb_prev").totalCooks == cooks["rgb_prev"]
    np.testing.assert_array_equal(comp.op("depth").stub_image, third.depth)

    comp.par.Blendtime = 60.0
    fourth = arrives(4)
    td.simulate_frame()
    assert 0.0 < blend.eval() < 0.01
    fifth = arrives(5)  # mid-blend: a new blend, from the frame the running one was heading to
    assert blend.eval() == 0.0 and vector(comp, "uPoles")[0] == (*fifth.poles, *fourth.poles)
    np.testing.assert_array_equal(comp.op("rgb_prev").stub_image, fourth.rgb)
    np.testing.assert_array_equal(comp.op("rgb").stub_image, fifth.rgb)
    td.simulate_frame()
    comp.Diagnose()  # the geometry check's test frame is a cut, and so is the frame put back after it
    assert blend.eval() == 1.0
    for _ in range(GEOMETRY_FRAMES + 1):
        td.simulate_frame()
    assert blend.eval() == 1.0 and np.array_equal(comp.op("rgb").stub_image, fifth.rgb)
    assert "diagnose: 0 problems" in comp.par.Status.eval() and "rgb_prev" not in comp.op("diagnostics").text
    comp.op("depth_prev").par.format = "rgba8fixed"  # what 'Use Input' may pick: the blend would lose 8 bits of depth
    assert "depth_prev: pixel format rgba8fixed, not mono16fixed" in comp.Diagnose()
