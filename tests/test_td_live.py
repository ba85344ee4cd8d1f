"""The component's Live page, built and run against the td stand-in (tests/tdstub/td.py): its parameters from the
schema, the Live toggle and steering, the Input TOP, Keep and Take. Against a demo generator end to end, and against
a recording stand-in for the command socket (tests/fake_generator.py) where a test must see exactly what went over
the wire, and when. What only TouchDesigner can show (when a real TOP cooks, numpyArray's cost) is not covered."""

import time

import numpy as np
import pytest

from conftest import SMALL, free_port, wait_for
from fake_generator import FakeGenerator
from generator.backends.demo import DemoBackend
from generator.library import FrameLibrary
from td_bridge.params import GENERATION_PARAMS, LIVE_PARAMS, UPSCALE_PARAMS, td_name
from td_bridge.protocol import decode_upload
from td_bridge.receiver import CommandClient
from td_bridge.top_frames import from_top
from test_td_component import BUILDS, Frames, build_component, shows_a_frame

import td  # noqa: E402  - the stand-in (test_td_component put tests/tdstub on the path)

# A Script TOP standing in for a camera: each cook a new picture, its rows (bottom first, as TouchDesigner's) from
# dark to bright red, its green counting the cooks.
CAMERA = '''import numpy as np

cooks = [0]


def onCook(scriptOp):
    cooks[0] += 1
    image = np.zeros((24, 32, 4), np.uint8)
    image[..., 0] = np.arange(24, dtype=np.uint8)[:, None] * 10
    image[..., 1] = cooks[0]
    image[..., 3] = 255
    scriptOp.copyNumpyArray(image)
'''


@pytest.fixture(params=BUILDS)
def comp(request):
    component = build_component(request.param)
    yield component
    component.ext.DepthFusionExt.onDestroyTD()


@pytest.fixture
def fake():
    generator = FakeGenerator()
    yield generator
    generator.close()


def connect(comp, commands, frames=None):
    """Point the component at a generator (frames: a port nobody publishes on, unless given) and connect."""
    comp.par.Framesaddress = frames or f"tcp://127.0.0.1:{free_port()}"
    comp.par.Commandsaddress = commands
    comp.par.Connect.pulse()


def sent(fake, cmd, count, what):
    """The args of the first ``count`` requests of ``cmd``, once that many arrived and no more came."""
    wait_for(lambda: len(fake.commands(cmd)) >= count, what=what)
    time.sleep(0.1)
    requests = [args for args, _ in fake.commands(cmd)]
    assert len(requests) == count, requests
    return requests


def camera(parent):
    callbacks = parent.create(td.textDAT, "camera_callbacks")
    callbacks.text = CAMERA
    top = parent.create(td.scriptTOP, "camera")
    top.par.callbacks = callbacks.name
    return top


def test_the_live_page_is_made_from_the_schema(comp):
    page = next(page for page in comp.customPages if page.name == "Live")
    assert [par.name for par in page.pars] == ["Live", *(td_name(p.name) for p in LIVE_PARAMS), "Inputtop", "Keep",
                                               "Take", "Takeupscale"]
    for param in LIVE_PARAMS:
        par = comp.par[td_name(param.name)]
        assert par.default == param.default and par.eval() == param.default and par.help == param.help
        if param.kind is float:
            assert (par.style, par.min, par.max, par.clampMin, par.clampMax) == ("Float", param.minimum,
                                                                                 param.maximum, True, True)
        else:
            assert param.kind is bool and par.style == "Toggle"
    assert comp.par.Live.eval() is False and comp.par.Takeupscale.eval() is False
    assert comp.par.Inputtop.style == "TOP" and comp.par.Keep.isPulse and comp.par.Take.isPulse
    status = next(page for page in comp.customPages if page.name == "Status")
    live = [par for par in status.pars if par.name.startswith("Live")]
    assert [par.name for par in live] == ["Liveon", "Liverate", "Liveframes", "Liveidle"]
    assert all(par.readOnly for par in live)
    watched = set(comp.op("parameters").par.pars.eval().split())
    assert {"Live", "Keep", "Take"} | {td_name(p.name) for p in GENERATION_PARAMS + LIVE_PARAMS} <= watched


def test_the_live_toggle_starts_steers_once_a_frame_and_stops(fake, comp):
    connect(comp, fake.address)
    comp.par.Live = True
    td.simulate_frame()  # Parameter Execute: onValueChange at the frame
    values = {p.name: comp.par[td_name(p.name)].eval() for p in GENERATION_PARAMS + LIVE_PARAMS}
    assert sent(fake, "live", 1, "live on") == [{"on": True, **values}]
    comp.par.Prompt, comp.par.Seed, comp.par.Transition = "a harbour at dusk", 11, 0.5
    for _ in range(4):
        td.simulate_frame()  # their changes are collected; one request at the next frame start; then nothing
    assert sent(fake, "live", 2, "steering")[1] == {"prompt": "a harbour at dusk", "seed": 11, "transition": 0.5}
    comp.par.Seed = 12
    for _ in range(3):
        td.simulate_frame()
    assert sent(fake, "live", 3, "more steering")[2] == {"seed": 12}  # only what changed
    comp.par.Live = False
    td.simulate_frame()
    assert sent(fake, "live", 4, "live off")[-1] == {"on": False}
    comp.par.Prompt = "not sent: live is off"
    for _ in range(3):
        td.simulate_frame()
    comp.par.Live = True
    td.simulate_frame()
    sent(fake, "live", 5, "live on again")
    comp.par.Disconnect.pulse()
    comp.par.Connect.pulse()  # a reconnect (the generator restarted, say) starts the session there again
    requests = sent(fake, "live", 6, "live on, after the reconnect")
    assert requests[4] == requests[5] == {"on": True, **values, "prompt": "not sent: live is off", "seed": 12,
                                          "transition": 0.5}
    assert comp.par.Lasterror.eval() == ""


def test_the_input_top_goes_at_most_live_fps_a_second_and_only_when_it_cooked(fake, comp):
    extension = comp.ext.DepthFusionExt
    extension.clock = lambda: td.absTime.seconds  # the stand-in's frames: 60 a second (td_hand.json: abstime)
    cam = camera(comp.parent())
    comp.par.Inputtop = "../camera"
    connect(comp, fake.address)
    handed = []  # what the main thread hands the controller: (time, image)
    hand_over = extension.controller.live_input
    extension.controller.live_input = lambda pixels: (handed.append((td.absTime.seconds, pixels)), hand_over(pixels))
    for _ in range(10):
        td.simulate_frame()
    assert handed == [] and cam.totalCooks == 0  # Live off: the TOP is not even read
    comp.par.Live = True
    td.simulate_frame()  # Live starts at this frame's value change; the first input goes at the next frame start
    for _ in range(60):  # one second
        td.simulate_frame()
    times = [t for t, _ in handed]
    assert len(times) == 10 and np.all(np.diff(times) >= 0.1 - 1e-3), times  # Live FPS 10
    cam.stub_cook_required = False  # a still image: nothing new to cook
    for _ in range(30):
        td.simulate_frame()
    assert len(handed) == 10
    cam.cook(force=True)  # something else cooked it (a viewer, another network)
    for _ in range(6):
        td.simulate_frame()
    assert len(handed) == 11
    newest = handed[-1][1]
    wait_for(lambda: fake.commands("live_input") and
             np.array_equal(decode_upload(**_upload(fake.commands("live_input")[-1])), from_top(newest)),
             what="the newest input on the wire")
    image = decode_upload(**_upload(fake.commands("live_input")[-1]))
    assert image.shape == (24, 32, 3) and image[0, 0, 0] == 230 and image[-1, 0, 0] == 0  # rows top first
    assert image[0, 0, 1] == comp.parent().op("camera_callbacks").module.cooks[0]  # the last cook's picture
    assert len(fake.commands("live_input")) <= 11  # newest wins: inputs the worker had no time for were dropped
    comp.par.Inputtop = ""
    for _ in range(3):
        td.simulate_frame()
    wait_for(lambda: fake.commands("live_input")[-1][0] == {"clear": True}, what="the input cleared")
    assert [args for args, _ in fake.commands("live_input")].count({"clear": True}) == 1


def _upload(request):
    args, data = request
    return {"image": args["image"], "data": data}


def test_keep_and_take_send_the_frame_on_screen(fake, make_server, comp):
    """Frames from a demo generator's live session; the component's commands to the recording stand-in."""
    server = make_server(DemoBackend(step_delay=0.002))
    connect(comp, fake.address, frames=server.frames)
    fake.answers["take"] = {"job_id": "job-take-1", "params": {}}
    extension, frames = comp.ext.DepthFusionExt, Frames()
    frames.until(lambda: comp.par.Connected.eval(), "the generator's heartbeat")
    with CommandClient(server.commands, timeout=5.0) as client:
        client.live(True, prompt="tide pools", **SMALL)
    frames.until(lambda: shows_a_frame(comp) and extension.controller.frame.live, "a live frame on screen")
    shown = comp.par.Frameid.eval()
    assert shown == extension.controller.frame.frame_id and extension.controller.frame.meta["kind"] == "live"
    comp.par.Keep.pulse()
    comp.par.Cue = "low tide"
    comp.par.Keep.pulse()
    comp.par.Take.pulse()
    comp.par.Takeupscale, comp.par.Upscalefactor = True, 2.0
    comp.par.Take.pulse()
    assert sent(fake, "keep", 2, "keep") == [{"frame_id": shown}, {"frame_id": shown, "cue": "low tide"}]
    takes = sent(fake, "take", 2, "take")
    assert takes[0] == {"frame_id": shown}
    upscale = {p.name: comp.par[td_name(p.name)].eval() for p in UPSCALE_PARAMS}
    assert takes[1] == {"frame_id": shown, "upscale": True, **upscale} and takes[1]["upscale_factor"] == 2.0
    frames.until(lambda: comp.par.Jobid.eval() == "job-take-1", "the take's job id")
    assert comp.par.Lasterror.eval() == ""


def test_generator_errors_and_bad_values_land_in_last_error(fake, comp):
    connect(comp, fake.address)
    for pulse, error in (("Keep", "no frame on screen to keep yet"), ("Take", "no frame on screen to take yet")):
        comp.par[pulse].pulse()
        assert comp.par.Lasterror.eval() == error
    comp.par.Livefps = 500.0  # a script can go past the slider's clamp
    comp.par.Live = True
    td.simulate_frame()
    assert comp.par.Lasterror.eval().startswith("live_fps: 500.0 is out of range") and fake.commands("live") == []
    comp.par.Live, comp.par.Livefps = False, 10.0
    fake.answers["take"] = ("bad_params", "steps: 900 is out of range; allowed: int in [1, 500]")
    comp.Take("f-1")
    Frames().until(lambda: comp.par.Lasterror.eval().startswith("take: bad_params"), "the generator's answer")
    fake.answers["keep"] = ("not_found", "frame f-1 is not one of the newest 32 frames")
    comp.Keep("f-1")
    Frames().until(lambda: comp.par.Lasterror.eval() == "keep: not_found: frame f-1 is not one of the newest 32 "
                   "frames", "the generator's answer")


def test_live_end_to_end_on_the_demo_generator(make_server, tmp_path, comp):
    """Live, the Input TOP, Keep and Take against the generator's own commands."""
    library = FrameLibrary(tmp_path / "library")
    server = make_server(DemoBackend(step_delay=0.002), library=library)
    extension, frames = comp.ext.DepthFusionExt, Frames()
    comp.par.Width, comp.par.Height, comp.par.Steps = SMALL["width"], SMALL["height"], SMALL["steps"]
    camera(comp.parent())
    comp.par.Inputtop, comp.par.Live = "../camera", True
    connect(comp, server.commands, frames=server.frames)
    frames.until(lambda: shows_a_frame(comp) and extension.controller.frame.live, "a live frame on screen")
    frames.until(lambda: comp.par.Liveon.eval() and comp.par.Liveframes.eval() > 0, "the live status")
    assert comp.par.Status.eval().startswith("live ") and comp.par.Lasterror.eval() == ""
    with CommandClient(server.commands, timeout=5.0) as client:
        wait_for(lambda: client.status()["live"]["input"], what="the camera as the live input")
        assert "live: toggle on, generator on" in comp.Diagnose()
        comp.par.Inputtop = ""
        frames.until(lambda: not client.status()["live"]["input"], "the input cleared")
    comp.par.Cue = "kept live"
    frames.until(lambda: extension.controller.frame.meta["params"]["cue"] == "kept live", "the cue steered in")
    shown = comp.par.Frameid.eval()
    comp.par.Keep.pulse()
    frames.until(lambda: library.get(shown) is not None, "the kept frame")
    assert library.load(shown)[0]["cue"] == "kept live"
    comp.par.Take.pulse()
    frames.until(lambda: comp.par.Jobid.eval().startswith("job-"), "the take's job")
    frames.until(lambda: len(library) == 2, "the take's frame in the library")  # the kept frame, and this
    assert comp.par.Lasterror.eval() == ""
    comp.par.Takeupscale = True  # this generator has no upscaler
    comp.par.Take.pulse()
    frames.until(lambda: "--upscaler" in comp.par.Lasterror.eval(), "the generator's answer")
    comp.par.Live = False
    frames.until(lambda: not comp.par.Liveon.eval(), "live off")
    assert not comp.par.Status.eval().startswith("live")
