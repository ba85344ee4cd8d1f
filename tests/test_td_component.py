"""The TouchDesigner component, built and run against the strict td stand-in (tests/tdstub/td.py)
and a live demo generator. What only TouchDesigner can show (cooking, the .tox file, the GPU)
is not covered here."""

import re
import sys

import numpy as np
import pytest

from conftest import ROOT, SMALL, wait_for
from generator.backends.demo import DemoBackend
from td_bridge.params import DISPLAY_PARAMS, GENERATION_PARAMS, VIEW_PARAMS, td_name
from td_bridge.render_setup import render_settings, shader_uniforms

sys.path[:0] = [str(ROOT / "tests" / "tdstub"), str(ROOT / "touchdesigner")]
import build_depthfusion  # noqa: E402
import shader_source  # noqa: E402
import td  # noqa: E402  - the stand-in
from DepthFusionExt import PYZMQ_HELP, load_package  # noqa: E402


@pytest.fixture
def comp():
    component = build_depthfusion.build(td, td.make_root(), ROOT / "touchdesigner")
    yield component
    component.ext.DepthFusionExt.onDestroyTD()


class Frames:
    """TouchDesigner's frame loop, played by the test: the Execute DAT's onFrameStart."""

    def __init__(self, component):
        self.dat, self.n = component.op("frames"), 0

    def until(self, predicate, what, timeout=10.0):
        def step():
            self.n += 1
            self.dat.simulate_frame_start(self.n)
            return predicate()
        return wait_for(step, timeout=timeout, what=what)


NETWORK = {
    "td_bridge": "baseCOMP", "DepthFusionExt": "textDAT", "rgb_top": "textDAT", "rgb": "scriptTOP",
    "depth_top": "textDAT", "depth": "scriptTOP", "frames": "executeDAT", "parameters": "parameterexecuteDAT",
    "vertex": "textDAT", "pixel": "textDAT", "displace": "glslMAT", "sphere": "geometryCOMP",
    "cam_left": "cameraCOMP", "cam_right": "cameraCOMP", "render_left": "renderTOP", "render_right": "renderTOP",
    "side_by_side": "layoutTOP", "top_bottom": "layoutTOP", "cam_ods": "cameraCOMP", "render_ods": "renderTOP",
    "ods_select_left": "renderselectTOP", "ods_select_right": "renderselectTOP", "ods_left": "projectionTOP",
    "ods_right": "projectionTOP", "ods_top_bottom": "layoutTOP", "cam_dome": "cameraCOMP",
    "render_dome": "renderTOP", "dome": "projectionTOP", "osc_callbacks": "textDAT", "osc_in": "oscinDAT",
    **{f"out_{name}": "outTOP" for name in build_depthfusion.OUTPUTS},
}


def test_the_builder_makes_the_documented_network(comp):
    assert comp.path == "/project1/DepthFusion"
    assert {child.name: child.OPType for child in comp.children} == NETWORK
    assert [page.name for page in comp.customPages] == ["Connection", "Generate", "Depth", "Sphere", "Stereo",
                                                        "Outputs", "OSC", "Status"]
    for name in ("rgb", "depth"):
        top = comp.op(name)
        assert top._resolve(top.par.callbacks.eval()) is comp.op(f"{name}_top")
        assert comp.op(f"{name}_top").text == (ROOT / "touchdesigner" / "callbacks" / f"{name}_top.py").read_text()
    assert comp.op("frames").par.framestart.eval() and comp.op("frames").par.active.eval()
    changes = comp.op("parameters")
    assert changes._resolve(changes.par.op.eval()) is comp and changes.par.onpulse.eval()
    assert changes.par.valuechange.eval() and {"Generate", "Ipd", "Meshrows", "Oscport"} <= set(
        changes.par.pars.eval().split())
    embedded = {dat.name: dat.text for dat in comp.op("td_bridge").children}
    assert embedded == {p.stem: p.read_text(encoding="utf-8") for p in (ROOT / "td_bridge").glob("*.py")}
    assert comp.par.promoteextension1.eval() and callable(comp.Connect) and callable(comp.Generate)


def test_the_sphere_and_its_material(comp):
    geo = comp.op("sphere")
    assert [child.name for child in geo.children] == ["mesh"]  # the new COMP's torus is gone
    mesh = geo.op("mesh")
    assert (mesh.par.type.eval(), mesh.par.texture.eval(), mesh.par.orient.eval()) == ("mesh", "equirectangularin", "y")
    assert mesh.display and mesh.render and mesh.par.upole.eval()
    mat = comp.op("displace")
    assert geo.par.material.eval() is mat  # through the parent shortcut: no path that breaks on a move
    assert mat._resolve(mat.par.vdat.eval()).text == shader_source.vertex_source()
    assert mat._resolve(mat.par.pdat.eval()).text == shader_source.pixel_source()
    assert mat.par.glslversion.eval() == "glsl460"
    samplers = {mat.par[f"sampler{i}name"].eval(): mat._resolve(mat.par[f"sampler{i}top"].eval())
                for i in range(mat.seq.sampler.numBlocks)}
    assert samplers == {"sDepth": comp.op("depth"), "sColor": comp.op("rgb")}
    assert mat.par.sampler0filter.eval() == "nearest" and mat.par.sampler0extendu.eval() == "repeat"
    declared = set(re.findall(r"uniform vec\d (\w+);", shader_source.vertex_source() + shader_source.pixel_source()))
    assert {mat.par[f"vec{i}name"].eval() for i in range(mat.seq.vec.numBlocks)} == declared


def test_renders_layouts_and_outputs(comp):
    for eye in ("left", "right"):
        render = comp.op(f"render_{eye}")
        assert render._resolve(render.par.camera.eval()) is comp.op(f"cam_{eye}")
        assert render._resolve(render.par.geometry.eval()) is comp.op("sphere")
        assert (render.par.rendermode.eval(), render.par.cullface.eval()) == ("render2d", "neither")
    assert comp.op("render_ods").par.rendermode.eval() == "cubemapods"
    assert comp.op("render_dome").par.rendermode.eval() == "cubemap"
    for index, eye in enumerate(("left", "right")):
        select = comp.op(f"ods_select_{eye}")
        assert select._resolve(select.par.top.eval()) is comp.op("render_ods")
        assert select.par.cameraindex.eval() == index
        projection = comp.op(f"ods_{eye}")
        assert projection.inputs == [select] and projection.par.output.eval() == "equirectangular"
    assert comp.op("dome").inputs == [comp.op("render_dome")] and comp.op("dome").par.output.eval() == "fisheye"
    eyes = "render_left render_right"
    layouts = {"side_by_side": (eyes, "horizlr"), "top_bottom": (eyes, "verttb"),
               "ods_top_bottom": ("ods_left ods_right", "verttb")}
    for name, (tops, align) in layouts.items():
        assert (comp.op(name).par.top.eval(), comp.op(name).par.align.eval()) == (tops, align)
    sources = {"left": "render_left", "right": "render_right", "side_by_side": "side_by_side",
               "top_bottom": "top_bottom", "ods": "ods_top_bottom", "dome": "dome", "rgb": "rgb", "depth": "depth"}
    assert {name: comp.op(f"out_{name}").inputs[0].name for name in build_depthfusion.OUTPUTS} == sources


def test_settings_follow_the_parameters(comp):
    def applied():
        display = {p.name: comp.par[td_name(p.name)].eval() for p in DISPLAY_PARAMS}
        view = {p.name: comp.par[td_name(p.name)].eval() for p in VIEW_PARAMS}
        for path, values in render_settings(display, view).items():
            for name, value in values.items():
                assert comp.op(path).par[name].eval() == value, (path, name)
        mat = comp.op("displace")
        for i in range(mat.seq.vec.numBlocks):
            vector = shader_uniforms(display, view["edges"])[mat.par[f"vec{i}name"].eval()]
            assert tuple(mat.par[f"vec{i}value{axis}"].eval() for axis in "xyzw") == vector

    applied()
    assert comp.op("cam_left").par.ipdshiftx.eval() == -0.032 and comp.op("sphere/mesh").par.rows.eval() == 256
    comp.par.Ipd, comp.par.Convergence, comp.par.Yaw, comp.par.Headz = 0.07, 3.0, 45.0, 0.5
    comp.par.Meshrows, comp.par.Mapping, comp.par.Edges, comp.par.Eyewidth = 128, "metric", "fade", 1920
    applied()
    assert comp.op("cam_right").par.ipdshiftx.eval() == 0.035 and comp.op("render_left").par.resolutionw.eval() == 1920
    assert comp.op("displace").par.vec0valuew.eval() == 2.0  # fade
    comp.par.Far = 0.5  # below Near: a script can go where the sliders cannot
    assert comp.par.Lasterror.eval().startswith("settings not applied: ")
    assert comp.op("cam_left").par.ipdshiftx.eval() == -0.035  # the last good settings stay


def test_osc_in_is_off_by_default_and_drives_the_component(server, comp):
    osc_in = comp.op("osc_in")
    assert (osc_in.par.active.eval(), osc_in.par.port.eval(), osc_in.par.localaddress.eval()) == (False, 9001,
                                                                                                 "127.0.0.1")
    assert not osc_in.simulate_receive("/depthfusion/ipd", [0.1])
    comp.par.Oscin, comp.par.Oscport = True, 9100
    assert osc_in.par.active.eval() and osc_in.par.port.eval() == 9100
    assert osc_in._resolve(osc_in.par.callbacks.eval()).text == (ROOT / "touchdesigner/callbacks/osc_in.py").read_text()

    osc_in.simulate_receive("/depthfusion/ipd", [0.1])
    assert comp.par.Ipd.eval() == 0.1 and comp.op("cam_right").par.ipdshiftx.eval() == 0.05
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
    frames = Frames(comp)
    frames.until(lambda: comp.par.Connected.eval(), "connected")
    osc_in.simulate_receive("/depthfusion/generate", ["a lighthouse in fog"])
    frames.until(lambda: comp.op("depth").image is not None, "the frame from an OSC generate")
    assert comp.par.Prompt.eval() == "a lighthouse in fog" and comp.op("depth").image.shape == (64, 128, 1)
    mat = comp.op("displace")
    poles = comp.ext.DepthFusionExt.controller.frame.poles
    assert (mat.par.vec2name.eval(), mat.par.vec2valuex.eval(), mat.par.vec2valuey.eval()) == ("uPoles", *poles)


def test_custom_parameters_follow_the_schema(comp):
    for param in GENERATION_PARAMS + DISPLAY_PARAMS + VIEW_PARAMS:
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


def test_generate_and_show_frames_from_a_live_generator(server, comp):
    comp.par.Framesaddress = server.frames
    comp.par.Commandsaddress = server.commands
    comp.par.Connect.pulse()  # through the Parameter Execute DAT to the extension
    frames = Frames(comp)
    frames.until(lambda: comp.par.Connected.eval(), "connected")
    assert comp.par.Status.eval() == "idle · demo" and comp.par.Backend.eval() == "demo"
    comp.par.Prompt = "a desert at night"
    comp.par.Seed = 5
    comp.par.Width, comp.par.Height, comp.par.Steps = SMALL["width"], SMALL["height"], SMALL["steps"]
    comp.par.Scheduler = "euler"
    comp.par.Generate.pulse()
    frames.until(lambda: comp.op("depth").image is not None, "frame in the TOPs")
    rgb, depth = comp.op("rgb").image, comp.op("depth").image
    params = {p.name: comp.par[td_name(p.name)].eval() for p in GENERATION_PARAMS}
    expected = DemoBackend().generate(params, lambda s, n: None, lambda: False)
    np.testing.assert_array_equal(rgb, expected.rgb[::-1])  # TouchDesigner's rows: bottom first
    assert depth.dtype == np.uint16 and depth.shape == (64, 128, 1)
    np.testing.assert_array_equal(depth[:, :, 0], expected.depth[::-1])
    assert comp.par.Frameid.eval() and comp.par.Jobid.eval().startswith("job-") and comp.par.Lasterror.eval() == ""
    cooks = comp.op("rgb").totalCooks
    frames.until(lambda: True, "idle frames")
    assert comp.op("rgb").totalCooks == cooks  # the TOPs cook only when a new frame arrives


def test_bad_values_and_unknown_cues_show_in_last_error(server, comp):
    comp.par.Framesaddress, comp.par.Commandsaddress = server.frames, server.commands
    comp.par.Connect.pulse()
    comp.par.Steps = 0  # a script can go past the slider's clamp
    comp.par.Generate.pulse()
    assert comp.par.Lasterror.eval().startswith("steps: 0 is out of range")
    comp.par.Recallname = "no such cue"
    comp.par.Recall.pulse()
    Frames(comp).until(lambda: "no frame with cue" in comp.par.Lasterror.eval(), "the generator's answer")
    comp.par.Commandsaddress = "localhost"
    comp.par.Connect.pulse()
    assert "tcp://HOST:PORT" in comp.par.Lasterror.eval()


def test_a_missing_pyzmq_is_said_plainly(monkeypatch):
    monkeypatch.setitem(sys.modules, "zmq", None)  # what `import zmq` meets in a bare TouchDesigner
    for module in ("td_bridge.component", "td_bridge.receiver"):
        monkeypatch.delitem(sys.modules, module, raising=False)
    component = build_depthfusion.build(td, td.make_root(), ROOT / "touchdesigner")
    assert component.par.Status.eval() == "pyzmq missing"
    assert component.par.Lasterror.eval() == PYZMQ_HELP and "TDPyEnvManager" in PYZMQ_HELP
    component.Generate()  # nothing to do, nothing raised
    Frames(component).until(lambda: True, "a frame")


def test_the_embedded_td_bridge_imports_from_its_text_dats(comp):
    sources = {dat.name: dat.text for dat in comp.op("td_bridge").children}
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


@pytest.mark.parametrize(
    "action, message",
    [
        (lambda page: page.appendFloat("lowercase"), "invalid custom parameter name"),
        (lambda page: page.appendFloat("Mesh_rows"), "invalid custom parameter name"),
        (lambda page: page.appendSlider("Value"), "has no attribute 'appendSlider'"),
    ],
)
def test_the_stand_in_refuses_what_touchdesigner_refuses(action, message):
    page = td.make_root().appendCustomPage("Test")
    with pytest.raises((ValueError, AttributeError), match=message):
        action(page)


def test_the_stand_in_checks_copy_numpy_array():
    top = td.make_root().create(td.scriptTOP, "t")
    with pytest.raises(RuntimeError, match="outside onCook"):
        top.copyNumpyArray(np.zeros((2, 2, 3), np.uint8))
    top._cooking = True
    for bad, message in ((np.zeros((2, 2), np.uint8), "shape"), (np.zeros((2, 2, 5), np.uint8), "shape"),
                         (np.zeros((2, 2, 3), np.float64), "uint8, uint16 or float32")):
        with pytest.raises(ValueError, match=message):
            top.copyNumpyArray(bad)
    with pytest.raises(AttributeError, match="has no parameter 'callback'"):
        top.par.callback = "x"
