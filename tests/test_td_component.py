"""The TouchDesigner component, built and run against the strict td stand-in (tests/tdstub/td.py)
and a live demo generator. What only TouchDesigner can show (cooking, the .tox file, the GPU)
is not covered here."""

import sys

import numpy as np
import pytest

from conftest import ROOT, SMALL, wait_for
from generator.backends.demo import DemoBackend
from td_bridge.params import DISPLAY_PARAMS, GENERATION_PARAMS, td_name

sys.path[:0] = [str(ROOT / "tests" / "tdstub"), str(ROOT / "touchdesigner")]
import build_depthfusion  # noqa: E402
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


def test_the_builder_makes_the_documented_network(comp):
    assert comp.path == "/project1/DepthFusion"
    kinds = {child.name: child.OPType for child in comp.children}
    assert kinds == {"td_bridge": "baseCOMP", "DepthFusionExt": "textDAT", "rgb_top": "textDAT", "rgb": "scriptTOP",
                     "depth_top": "textDAT", "depth": "scriptTOP", "frames": "executeDAT",
                     "pulses": "parameterexecuteDAT"}
    assert [page.name for page in comp.customPages] == ["Connection", "Generate", "Depth", "Status"]
    for name in ("rgb", "depth"):
        top = comp.op(name)
        assert top._resolve(top.par.callbacks.eval()) is comp.op(f"{name}_top")
        assert comp.op(f"{name}_top").text == (ROOT / "touchdesigner" / "callbacks" / f"{name}_top.py").read_text()
    assert comp.op("frames").par.framestart.eval() and comp.op("frames").par.active.eval()
    pulses = comp.op("pulses")
    assert pulses._resolve(pulses.par.op.eval()) is comp and pulses.par.onpulse.eval()
    embedded = {dat.name: dat.text for dat in comp.op("td_bridge").children}
    assert embedded == {p.stem: p.read_text(encoding="utf-8") for p in (ROOT / "td_bridge").glob("*.py")}
    assert comp.par.promoteextension1.eval() and callable(comp.Connect) and callable(comp.Generate)


def test_custom_parameters_follow_the_schema(comp):
    for param in GENERATION_PARAMS + DISPLAY_PARAMS:
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
