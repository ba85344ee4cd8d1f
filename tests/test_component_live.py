"""The TouchDesigner component's live session logic (td_bridge.component), without TouchDesigner: start, steer and
stop against a demo generator; the live input, Keep and Take against a recording stand-in for the command socket
(tests/fake_generator.py), which shows what goes over the wire and when."""

import threading
import time

import numpy as np
import pytest

import td_bridge.component as component
from conftest import SMALL, wait_for
from fake_generator import FakeGenerator
from generator.backends.demo import DemoBackend
from td_bridge.component import ComponentController, InputPacer, describe_live
from td_bridge.params import GENERATION_PARAMS, LIVE_PARAMS, ParamError, defaults
from td_bridge.protocol import decode_upload
from td_bridge.top_frames import from_top

WORKER = "depthfusion-commands"  # the controller's worker thread


@pytest.fixture
def controller():
    c = ComponentController(timeout=2.0)
    yield c
    c.close()


@pytest.fixture
def fake():
    generator = FakeGenerator()
    yield generator
    generator.close()


def answered(controller, count):
    """Wait until the worker has ``count`` answers waiting for the main thread, then pick them up (one update)."""
    wait_for(lambda: len(controller._replies) >= count, what=f"{count} answers")
    assert len(controller._replies) == count
    controller.update()


def top_image(height=6, width=8, value=0.5):
    """What a TOP's numpyArray() gives: float32 RGBA, row 0 at the bottom (each row its own red)."""
    image = np.full((height, width, 4), value, np.float32)
    image[..., 0] = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    return image


def test_live_starts_shows_live_frames_and_stops(server, controller):
    controller.connect(server.frames, server.commands)
    values = {**defaults(GENERATION_PARAMS), **defaults(LIVE_PARAMS), **SMALL, "prompt": "a tide pool", "seed": 3}
    controller.live(True, values)
    frame = wait_for(controller.update, timeout=10, what="a live frame")
    assert frame.live and frame.meta["prompt"] == "a tide pool" and controller.state.frame_id == frame.frame_id
    state = wait_for(lambda: controller.update() is None and controller.state.live_frames and controller.state,
                     what="the live status")
    assert state.live_on and state.status.startswith("live ") and state.status.endswith(" · demo"), state.status
    assert server.server.live.summary()["params"]["seed"] == 3
    controller.steer({"seed": 4, "transition": 0.0})
    wait_for(lambda: server.server.live.summary()["params"]["seed"] == 4, what="the steering")
    controller.live(False)
    wait_for(lambda: controller.update() is None and not controller.state.live_on, what="live off")
    assert controller.state.status == "idle · demo" and controller.state.last_error == ""
    assert not server.server.live.summary()["on"]


def test_bad_live_values_are_refused_before_anything_is_sent(fake, controller):
    controller.connect("tcp://127.0.0.1:1", fake.address)
    with pytest.raises(ParamError, match=r"live_fps: 500.0 is out of range"):
        controller.live(True, {"live_fps": 500.0})
    with pytest.raises(ParamError, match="unknown parameter 'zoom'"):
        controller.steer({"zoom": 2})
    with pytest.raises(ParamError, match="cue: 101 characters is too long"):
        controller.keep("f-1", "x" * 101)
    with pytest.raises(ParamError, match="no frame on screen to take yet"):
        controller.take("")
    with pytest.raises(ParamError, match="upscale_factor"):
        controller.take("f-1", {"upscale_factor": 100})
    time.sleep(0.1)
    assert fake.requests == []


def test_steering_is_newest_wins_and_merged(fake, controller):
    controller.connect("tcp://127.0.0.1:1", fake.address)
    controller.live(True, {"prompt": "first", "live_fps": 12})
    answered(controller, 1)
    fake.hold()  # the generator is busy: steering piles up on the main thread's side
    controller.steer({"prompt": "second"})
    wait_for(lambda: len(fake.commands("live")) == 2, what="the first steering in flight")
    for values in ({"prompt": "third"}, {"seed": 7}, {"prompt": "fourth", "transition": 0.5}):
        controller.steer(values)  # none of these queues: each updates the one waiting
    assert controller._commands.qsize() == 1
    fake.release()
    answered(controller, 2)
    assert [args for args, _ in fake.commands("live")] == [
        {"on": True, "prompt": "first", "live_fps": 12.0}, {"prompt": "second"},
        {"prompt": "fourth", "seed": 7, "transition": 0.5}]
    controller.live(False)
    answered(controller, 1)
    assert fake.commands("live")[-1][0] == {"on": False}


def test_live_input_is_converted_and_sent_on_the_worker_newest_wins(fake, controller, monkeypatch):
    threads = []
    converted = component.from_top

    def watched(pixels):
        threads.append(threading.current_thread().name)
        return converted(pixels)

    monkeypatch.setattr(component, "from_top", watched)
    controller.connect("tcp://127.0.0.1:1", fake.address)
    fake.hold()
    images = [top_image(value=v) for v in (0.1, 0.2, 0.3, 0.4)]
    controller.live_input(images[0])
    wait_for(lambda: fake.commands("live_input"), what="the first input in flight")
    big = np.zeros((2160, 3840, 4), np.float32)  # a 4K frame: converting it takes far longer than handing it over
    started = time.perf_counter()
    for pixels in (images[1], big, images[2], images[3]):
        controller.live_input(pixels)  # newest wins: each replaces the one not sent yet
    assert time.perf_counter() - started < 0.05 and controller._commands.qsize() == 1
    fake.release()
    answered(controller, 2)
    sent = fake.commands("live_input")
    assert len(sent) == 2 and threads == [WORKER, WORKER]  # the first, then only the newest
    for (args, data), pixels in zip(sent, (images[0], images[3])):
        assert set(args) == {"image"}
        np.testing.assert_array_equal(decode_upload(args["image"], data), from_top(pixels))
    fake.hold()
    controller.live_input(images[1])
    wait_for(lambda: len(fake.commands("live_input")) == 3, what="an input in flight")
    controller.live_input(images[2])
    controller.live_input(None)  # a clear replaces an input not sent yet, too
    fake.release()
    answered(controller, 2)
    assert fake.commands("live_input")[3:] == [({"clear": True}, None)]


def test_a_missing_generator_never_stalls_live_steering_or_input(controller):
    controller.connect("tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
    started = time.perf_counter()
    for index in range(200):  # far more than MAX_PENDING: newest-wins commands take one place each
        controller.steer({"seed": index})
        controller.live_input(top_image())
    assert time.perf_counter() - started < 0.5 and controller._commands.qsize() <= 2


def test_keep_and_take_name_the_frame_and_show_the_job(fake, controller):
    controller.connect("tcp://127.0.0.1:1", fake.address)
    fake.answers["take"] = {"job_id": "job-take-1", "params": {}}
    controller.keep("f-live-1", "dawn")
    controller.keep("f-live-2")
    controller.take("f-live-3")
    controller.take("f-live-4", {"upscale_factor": 2})
    answered(controller, 4)
    assert [args for args, _ in fake.commands("keep")] == [{"frame_id": "f-live-1", "cue": "dawn"},
                                                           {"frame_id": "f-live-2"}]
    takes = [args for args, _ in fake.commands("take")]
    assert takes[0] == {"frame_id": "f-live-3"}
    assert takes[1]["upscale"] is True and takes[1]["upscale_factor"] == 2.0 and takes[1]["frame_id"] == "f-live-4"
    assert set(takes[1]) == {"frame_id", "upscale"} | {k for k in takes[1] if k.startswith("upscale_")}
    assert controller.state.job_id == "job-take-1" and controller.state.last_error == ""


def test_generator_errors_land_in_last_error_and_inputs_do_not_clear_them(fake, controller):
    controller.connect("tcp://127.0.0.1:1", fake.address)
    fake.answers["take"] = ("bad_params", "steps: 900 is out of range; allowed: int in [1, 500]")
    controller.take("f-1")
    answered(controller, 1)
    assert controller.state.last_error == "take: bad_params: steps: 900 is out of range; allowed: int in [1, 500]"
    controller.live_input(top_image())  # answered {} many times a second: the error stays readable
    answered(controller, 1)
    assert controller.state.last_error.startswith("take: bad_params")
    fake.answers["live_input"] = ("unknown_command", "unknown command 'live_input'")
    controller.live_input(top_image())
    answered(controller, 1)
    assert controller.state.last_error == "live_input: unknown_command: unknown command 'live_input'"
    controller.keep("f-1")  # answered {}: a command people sent clears it
    answered(controller, 1)
    assert controller.state.last_error == ""


def test_the_input_pacer():
    pacer = InputPacer()
    assert pacer.due(0.0, 10.0) and pacer.changed(0)
    pacer.sent(0.0, 5)
    frames = [k / 60 for k in range(1, 61)]  # one second at 60 frames a second
    due = [t for t in frames if pacer.due(t, 10.0) and (pacer.sent(t, 5) or True)]
    assert len(due) == 10 and due[0] == pytest.approx(0.1)  # every sixth frame: at most 10 a second
    assert not pacer.changed(5) and pacer.changed(6)
    assert pacer.due(1.001, 0.0)  # 0: every frame
    pacer.reset()
    assert pacer.due(1.001, 10.0) and pacer.changed(5)


def test_the_live_status_line():
    assert describe_live({"on": True, "fps": 9.87, "idle": False}) == "live 9.9 fps"
    assert describe_live({"on": True, "fps": 0.0, "idle": True}) == "live 0.0 fps (idle)"


class FailingDemo(DemoBackend):
    """The demo backend, failing for one prompt."""

    def generate(self, params, progress, cancelled, **kwargs):
        if params["prompt"] == "boom":
            raise RuntimeError("the backend failed")
        return super().generate(params, progress, cancelled, **kwargs)


def test_a_failing_live_frame_shows_in_last_error_once(make_server, controller):
    server = make_server(FailingDemo())
    controller.connect(server.frames, server.commands)
    controller.live(True, {**SMALL, "prompt": "boom"})
    wait_for(lambda: controller.update() is None and controller.state.last_error, timeout=10, what="the live error")
    assert controller.state.last_error == "live: RuntimeError: the backend failed" and controller.state.live_on
    controller.keep("no-such-frame")  # another answer replaces it; the same live error is not reported again
    wait_for(lambda: controller.update() is None and controller.state.last_error.startswith("keep:"), what="keep")
    time.sleep(0.3)
    controller.update()
    assert controller.state.last_error.startswith("keep: ")
