"""The TouchDesigner component's logic against a live demo generator, without TouchDesigner."""

import time

import numpy as np
import pytest

from conftest import SMALL, RunningServer, free_port, wait_for
from generator.backends.demo import DemoBackend
from td_bridge.component import MAX_PENDING, ComponentController, describe_depth_check
from td_bridge.params import ParamError
from td_bridge.top_frames import TopFrame


@pytest.fixture
def controller():
    c = ComponentController(timeout=1.0)
    yield c
    c.close()


def next_frame(controller, what="frame", timeout=10.0):
    return wait_for(controller.update, timeout=timeout, what=what)


def test_generate_and_receive_top_ready_frames(server, controller):
    controller.connect(server.frames, server.commands)
    wait_for(lambda: controller.update() is None and controller.state.connected, what="heartbeat")
    assert controller.state.status == "idle · demo" and controller.state.backend == "demo"
    controller.generate({"prompt": "a desert at night", "seed": 4, **SMALL})
    frame = next_frame(controller)
    assert isinstance(frame, TopFrame) and frame.depth.shape == (64, 128, 1) and frame.rgb.flags.c_contiguous
    expected = DemoBackend().generate(frame.meta["params"], lambda s, n: None, lambda: False)
    np.testing.assert_array_equal(frame.rgb, expected.rgb[::-1])  # TD's rows: bottom first
    assert controller.state.frame_id == frame.frame_id and controller.frame is frame
    assert controller.state.job_id == frame.meta["job_id"] and controller.state.last_error == ""


def test_progress_and_cancel(make_server, controller):
    srv = make_server(DemoBackend(step_delay=0.05))
    controller.connect(srv.frames, srv.commands)
    wait_for(lambda: controller.update() is None and controller.state.connected)
    controller.generate({"prompt": "p", "seed": 1, "width": 128, "height": 64, "steps": 40})
    state = wait_for(lambda: controller.update() is None and controller.state.progress >= 0.1 and controller.state,
                     what="progress")
    assert state.status.startswith("generating ") and state.status.endswith("/40 · demo")
    controller.cancel()
    wait_for(lambda: controller.update() is None and controller.state.status == "idle · demo", what="cancelled")
    assert controller.frame is None and controller.state.progress == 0.0


def test_bad_values_are_refused_before_anything_is_sent(server, controller):
    controller.connect(server.frames, server.commands)
    with pytest.raises(ParamError, match=r"steps: .*\[1, 500\]"):
        controller.generate({"prompt": "p", "steps": 0})
    with pytest.raises(ParamError, match="1-100 characters"):
        controller.recall("   ")
    with pytest.raises(ValueError, match="tcp://HOST:PORT"):
        controller.connect("localhost", server.commands)


def test_errors_from_the_generator_show_in_last_error(server, controller):
    controller.connect(server.frames, server.commands)
    controller.recall("no such cue")
    wait_for(lambda: controller.update() is None and controller.state.last_error, what="the error")
    assert controller.state.last_error == "recall: not_found: no frame with cue 'no such cue'"
    controller.generate({"prompt": "p", "seed": 2, **SMALL})
    next_frame(controller)
    wait_for(lambda: controller.update() is None and controller.state.last_error == "", what="error cleared")


def test_a_missing_generator_never_stalls_the_main_thread(controller):
    port = free_port()
    frames, commands = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{free_port()}"
    controller.connect(frames, commands)
    started = time.perf_counter()
    controller.generate({"prompt": "p", **SMALL})
    slowest = 0.0
    for _ in range(60):  # ~1.2 s of TouchDesigner frames while the request times out
        tick = time.perf_counter()
        controller.update()
        slowest = max(slowest, time.perf_counter() - tick)
        time.sleep(0.02)
    assert time.perf_counter() - started < 5 and slowest < 0.1  # blocking would take the request timeout
    assert controller.state.status == f"waiting for the generator at {frames}" and not controller.state.connected
    assert "no reply from" in controller.state.last_error and "generator serve" in controller.state.last_error
    for _ in range(MAX_PENDING + 1):  # requests pile up while nothing answers; then a clear error
        try:
            controller.cancel()
        except ConnectionError as exc:
            assert "still waiting" in str(exc)
            break
    else:
        pytest.fail("the command queue never filled up")


def test_the_last_frame_stays_and_the_component_reconnects(controller):
    first = RunningServer()
    frames, commands = first.frames, first.commands
    controller.connect(frames, commands)
    wait_for(lambda: controller.update() is None and controller.state.connected)
    controller.generate({"prompt": "before the restart", "seed": 1, **SMALL})
    kept = next_frame(controller)
    first.close()
    wait_for(lambda: controller.update() is None and not controller.state.connected, timeout=10, what="gone")
    assert controller.frame is kept and controller.state.frame_id == kept.frame_id
    second = RunningServer(frames=frames, commands=commands)  # the same ports: a restarted generator
    try:
        wait_for(lambda: controller.update() is None and controller.state.connected, timeout=10, what="back")
        controller.generate({"prompt": "after the restart", "seed": 2, **SMALL})
        fresh = next_frame(controller)
        assert fresh.meta["prompt"] == "after the restart"
    finally:
        second.close()


def test_disconnect_keeps_the_frame_and_refuses_commands(server, controller):
    controller.connect(server.frames, server.commands)
    controller.generate({"prompt": "p", "seed": 3, **SMALL})
    frame = next_frame(controller)
    controller.disconnect()
    assert controller.frame is frame and controller.update() is None
    assert controller.state.status == "disconnected" and controller.state.frame_id == frame.frame_id
    with pytest.raises(ConnectionError, match="pulse Connect"):
        controller.generate({"prompt": "p"})


def test_estimate_checks_the_image_and_the_parameters_before_sending():
    controller = ComponentController()
    with pytest.raises(ParamError, match="pano"):
        controller.estimate(np.zeros((32, 64, 3), np.uint8), {"pano": "maybe"})
    with pytest.raises(ParamError, match="must be \\(H, W, 3\\) uint8"):
        controller.estimate(np.zeros((32, 64, 4), np.uint8), {})
    with pytest.raises(ConnectionError, match="not connected"):
        controller.estimate(np.zeros((32, 64, 3), np.uint8), {})


def test_the_depth_check_line():
    assert describe_depth_check(None) == ""
    assert describe_depth_check({"abs_rel": 0.08123, "delta1": 0.9, "model": "m"}) == "AbsRel 0.081 · δ1 0.900 (m)"
    assert describe_depth_check({"error": "boom"}) == "depth check failed: boom"
    assert describe_depth_check({"abs_rel": "x"}) == "depth check unreadable"
