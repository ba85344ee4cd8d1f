"""The live session (generator.serving.live): pacing, transitions, idle, stop, jobs between live frames, hostile
parameters — on the demo backend through the server, and the LDM3D blend through the backend's own API."""

import threading
import time

import numpy as np
import pytest
import zmq

from conftest import wait_for
from generator.backends import DemoBackend
from generator.library import FrameLibrary
from generator.serving.live import LiveSession, lerp, slerp
from td_bridge import protocol as wire
from td_bridge.params import validate_generation
from td_bridge.receiver import CommandClient, CommandError

LIVE = {"width": 128, "height": 64, "steps": 2}


class Collector:
    """Every frame the server publishes, in order, read on a thread as fast as they come."""

    def __init__(self, address):
        self.frames = []
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_FRAME)
        self._sock.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_STATUS)
        self._sock.connect(address)
        self.connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self.connected.wait(5), "no status heartbeat"

    def _run(self):
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            parts = self._sock.recv_multipart()
            if parts[0] == wire.TOPIC_FRAME:
                self.frames.append(wire.decode_frame_parts(parts[1:]))
            else:
                self.connected.set()

    def since(self, count):
        return self.frames[count:]

    def close(self):
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        self._ctx.term()


@pytest.fixture
def live_server(make_server):
    return make_server(DemoBackend(step_delay=0.005))


@pytest.fixture
def live_client(live_server):
    with CommandClient(live_server.commands, timeout=5.0) as c:
        yield c


@pytest.fixture
def frames(live_server):
    collector = Collector(live_server.frames)
    yield collector
    collector.close()


def session(server):
    return server.server.live


def demo_end(prompt, seed, **overrides):
    params = validate_generation({**LIVE, "prompt": prompt, "seed": seed, **overrides})
    return DemoBackend().generate(params, lambda s, n: None, lambda: False)


def test_a_live_frame_is_published_with_its_live_header_and_is_the_demo_frame(live_client, live_server, frames):
    state = live_client.live(True, prompt="a gallery interior", seed=3, transition=0, **LIVE)
    assert state["on"] is True and state["params"]["seed"] == 3
    frame = wait_for(lambda: frames.frames and frames.frames[-1], what="a live frame")
    assert frame.meta["kind"] == "live" and frame.live and frame.meta["live"]["frame"] >= 1
    assert frame.meta["job_id"] is None and frame.meta["prompt"] == "a gallery interior"
    end = demo_end("a gallery interior", 3)
    np.testing.assert_array_equal(frame.rgb, end.rgb)
    np.testing.assert_array_equal(frame.depth, end.depth)
    status = live_client.status()["live"]
    assert status["on"] is True and status["frames"] >= 1 and status["transition"] == 0 and status["blend"] is None
    assert status["live_fps"] == 10 and status["error"] is None


def test_frames_flow_at_about_the_target_rate(live_client, live_server, frames):
    live_client.live(True, prompt="a room", seed=1, transition=0, live_fps=10, **LIVE)
    wait_for(lambda: session(live_server).frames >= 1, what="the first live frame")
    live_client.live(prompt="a forest", transition=30)  # a long transition: a frame is due at every tick
    start_frames, started = session(live_server).frames, time.monotonic()
    time.sleep(1.5)
    rate = (session(live_server).frames - start_frames) / (time.monotonic() - started)
    assert 3.0 <= rate <= 12.0, f"{rate:.1f} frames/s for a target of 10"
    assert 0 < live_client.status()["live"]["fps"] <= 12.0


def test_a_cut_reaches_the_next_published_frame(live_client, live_server, frames):
    live_client.live(True, prompt="a room", seed=1, transition=0, **LIVE)
    wait_for(lambda: frames.frames, what="the first live frame")
    wait_for(lambda: live_client.status()["live"]["idle"], what="the session to go idle")
    seen = len(frames.frames)
    live_client.live(prompt="a misty forest", seed=2)
    frame = wait_for(lambda: frames.since(seen) and frames.since(seen)[0], what="the changed frame")
    # idle before the change: the first frame after it is the new prompt's, cut (transition 0), no blend
    assert frame.meta["prompt"] == "a misty forest" and frame.meta["live"]["blend"] is None
    np.testing.assert_array_equal(frame.rgb, demo_end("a misty forest", 2).rgb)


def test_a_change_while_frames_flow_is_on_screen_within_two_frames(live_client, live_server, frames):
    live_client.live(True, prompt="a room", seed=1, transition=0, live_fps=20, **LIVE)
    wait_for(lambda: frames.frames, what="the first live frame")
    live_client.live(prompt="a forest", transition=30)  # frames keep coming
    wait_for(lambda: session(live_server).frames >= 4, what="live frames")
    seen = len(frames.frames)
    live_client.live(prompt="a gallery interior", seed=8, transition=0)  # a cut, at most one frame in flight
    wait_for(lambda: any(f.meta["prompt"] == "a gallery interior" for f in frames.since(seen)),
             what="the changed frame")
    after = frames.since(seen)
    first = next(i for i, f in enumerate(after) if f.meta["prompt"] == "a gallery interior")
    assert first <= 1, f"the change showed only in the {first + 1}th frame after it"
    assert after[first].meta["live"]["blend"] is None  # transition 0: a cut
    np.testing.assert_array_equal(after[first].rgb, demo_end("a gallery interior", 8).rgb)
    wait_for(lambda: live_client.status()["live"]["idle"], what="idle after the cut")


def test_a_transition_crossfades_the_demo_ends(live_client, live_server, frames):
    live_client.live(True, prompt="a room", seed=1, transition=0, live_fps=30, **LIVE)
    wait_for(lambda: frames.frames, what="the first live frame")
    wait_for(lambda: live_client.status()["live"]["idle"], what="the session to go idle")
    seen = len(frames.frames)
    live_client.live(prompt="a desert landscape", seed=5, transition=0.6)
    wait_for(lambda: any(f.meta["live"]["blend"] is None for f in frames.since(seen)),
             timeout=10, what="the transition's end")
    after = frames.since(seen)
    old, new = demo_end("a room", 1), demo_end("a desert landscape", 5)
    between = [f for f in after if f.meta["live"]["blend"] is not None]
    assert len(between) >= 3, f"only {len(between)} frames between the ends"
    factors = [f.meta["live"]["blend"] for f in between]
    assert factors == sorted(factors) and 0 <= factors[0] and factors[-1] < 1
    for frame in between:
        t = frame.meta["live"]["blend"]
        assert frame.meta["live"]["from"] == {"prompt": "a room", "negative_prompt": "", "seed": 1}
        expected_rgb = np.rint(lerp(old.rgb.astype(np.float32), new.rgb.astype(np.float32), t))
        assert np.abs(frame.rgb.astype(np.int32) - expected_rgb).max() <= 1
        low, high = np.minimum(old.depth, new.depth), np.maximum(old.depth, new.depth)
        assert ((frame.depth >= low) & (frame.depth <= high)).all()
    middle = min(between, key=lambda f: abs(f.meta["live"]["blend"] - 0.5))
    assert not np.array_equal(middle.rgb, old.rgb) and not np.array_equal(middle.rgb, new.rgb)
    np.testing.assert_array_equal(after[-1].rgb, new.rgb)  # it ends on the new end exactly
    wait_for(lambda: live_client.status()["live"]["idle"], what="idle after the transition")


def test_idle_stops_generating_and_a_change_resumes(live_client, live_server, frames):
    live_client.live(True, prompt="a room", seed=1, transition=0, **LIVE)
    wait_for(lambda: live_client.status()["live"]["idle"], what="the session to go idle")
    count = session(live_server).frames
    time.sleep(0.5)
    assert session(live_server).frames == count
    assert live_client.status()["live"]["idle"] is True
    live_client.live(guidance=3.0)  # any change, not only the ends, makes a new frame
    wait_for(lambda: session(live_server).frames == count + 1, what="a frame after the change")
    wait_for(lambda: live_client.status()["live"]["idle"], what="idle again")


def test_stop_keeps_the_last_frame_and_publishes_nothing_more(live_client, live_server, frames):
    live_client.live(True, prompt="a room", seed=1, transition=0, live_fps=20, **LIVE)
    wait_for(lambda: frames.frames, what="the first live frame")
    live_client.live(prompt="a forest", transition=30)  # frames keep coming
    wait_for(lambda: session(live_server).frames >= 4, what="live frames")
    state = live_client.live(False)
    assert state["on"] is False
    published = live_client.status()["frames_published"]
    time.sleep(0.5)
    status = live_client.status()
    assert status["frames_published"] == published and status["live"]["on"] is False
    assert live_client.get_frame("latest").meta["frame_id"] == status["last_frame_id"]  # still on screen
    live_client.live(True)  # starting again resumes
    wait_for(lambda: live_client.status()["frames_published"] > published, what="live frames after a restart")


def test_a_job_queued_while_live_runs_and_only_it_is_saved(make_server, tmp_path):
    library = FrameLibrary(tmp_path)
    srv = make_server(DemoBackend(step_delay=0.005), library=library)
    with CommandClient(srv.commands, timeout=5.0) as client:
        client.live(True, prompt="a room", seed=1, transition=0, live_fps=20, **LIVE)
        wait_for(lambda: session(srv).frames >= 1, what="the first live frame")
        client.live(prompt="a forest", transition=30)
        job = client.generate(prompt="a gallery interior", seed=9, **LIVE)
        done = wait_for(lambda: (j := client.job(job["job_id"]))["state"] == "done" and j, what="the job")
        assert done["saved"] is True
        before = session(srv).frames
        wait_for(lambda: session(srv).frames > before + 2, what="live frames after the job")
        assert client.status()["live"]["on"] is True
        assert [entry.frame_id for entry in library.find("", 100)] == [done["frame_id"]]


@pytest.mark.parametrize("args, words", [
    ({"live_fps": -1}, "live_fps"),
    ({"live_fps": "fast"}, "live_fps"),
    ({"transition": 1e9}, "transition"),
    ({"on": "maybe"}, "on"),
    ({"frames_per_second": 5}, "unknown live parameter"),
    ({"prompt": "x" * 3000}, "prompt"),
    ({"width": 100}, "width"),
    ({"lora_1": "style"}, "LoRA"),
    ({"on": False, "steps": 0}, "steps"),
])
def test_hostile_live_parameters_are_refused_and_the_session_goes_on(live_client, live_server, args, words):
    live_client.live(True, prompt="a room", seed=1, transition=0, **LIVE)
    wait_for(lambda: session(live_server).frames >= 1, what="the first live frame")
    before = live_client.status()["live"]
    with pytest.raises(CommandError) as error:
        live_client.request("live", args)
    assert error.value.code in ("bad_params", "bad_request") and words in str(error.value)
    state = live_client.live()
    assert state["on"] is True and state["params"]["prompt"] == "a room" and state["live_fps"] == before["live_fps"]
    count = session(live_server).frames
    live_client.live(prompt="a forest")
    wait_for(lambda: session(live_server).frames > count, what="a frame after a good change")


def test_serve_live_starts_the_session_at_start_up(make_server):
    srv = make_server(DemoBackend(), defaults=LIVE, live=True)
    wait_for(lambda: session(srv).frames >= 1, what="a live frame without any command")


def test_slerp_ends_and_norm():
    torch = pytest.importorskip("torch")
    a = torch.randn((1, 4, 8, 16), generator=torch.Generator().manual_seed(1))
    b = torch.randn((1, 4, 8, 16), generator=torch.Generator().manual_seed(2))
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    middle = slerp(a, b, 0.5)
    assert abs(middle.norm() / a.norm() - 1) < 0.05  # a straight line's middle would be ~0.71 of it
    assert abs(lerp(a, b, 0.5).norm() / a.norm() - 1) > 0.2
    assert torch.allclose(slerp(a, a * 1.0, 0.3), a)  # parallel ends: the linear fallback


# ------------------------------------------------------------ LDM3D: the blend through the backend's API

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture(scope="module")
def tiny_backend(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import tiny_ldm3d
    from generator.backends import load_backend

    return load_backend(str(tiny_ldm3d.build(tmp_path_factory.mktemp("ldm3d") / "tiny-6c", vae_channels=6)))


def ldm3d_params(**overrides):
    return validate_generation({"prompt": "a misty forest at dawn", "seed": 7, "steps": 2, "width": 64,
                                "height": 64, "seamless": False, **overrides})


def test_ldm3d_given_its_own_noise_and_embeddings_is_bit_identical(tiny_backend):
    import torch

    params = ldm3d_params()
    plain = tiny_backend.generate(params, lambda s, n: None, lambda: False)
    given = tiny_backend.generate(params, lambda s, n: None, lambda: False, latents=tiny_backend.start_noise(params),
                                  embeddings=tiny_backend.encode(params))
    np.testing.assert_array_equal(plain.rgb, given.rgb)
    np.testing.assert_array_equal(plain.depth, given.depth)
    with pytest.raises(ValueError, match="embeddings must have shape"):
        tiny_backend.generate(params, lambda s, n: None, lambda: False, embeddings=torch.zeros((1, 3, 32)))


def test_ldm3d_transition_slerps_the_noise_and_lerps_the_embeddings(tiny_backend):
    import torch

    calls = []
    generate = tiny_backend.generate

    class Spy:
        name, model = tiny_backend.name, tiny_backend.model
        check, encode, start_noise = tiny_backend.check, tiny_backend.encode, tiny_backend.start_noise

        def generate(self, params, progress, cancelled, latents=None, embeddings=None):
            calls.append((params, latents, embeddings))
            return generate(params, progress, cancelled, latents=latents, embeddings=embeddings)

    clock = FakeClock()
    live = LiveSession(Spy(), {"steps": 2, "width": 64, "height": 64, "seamless": False}, clock=clock)
    live.start({"prompt": "a room", "seed": 1, "transition": 2.0})
    header, _ = live.next_frame(lambda s, n: None, lambda: False)
    assert header["live"]["blend"] is None
    live.update({"prompt": "a misty forest", "seed": 2})
    new = dict(live.params)
    old = {**new, "prompt": "a room", "seed": 1}
    previous = 0.0
    for t in (0.0, 0.25, 0.5, 1.0):
        clock.now += 0.0 if t == 0.0 else 2.0 * (t - previous)
        previous = t
        header, result = live.next_frame(lambda s, n: None, lambda: False)
        params, latents, embeddings = calls[-1]
        assert params == new
        if t < 1.0:
            assert header["live"]["blend"] == pytest.approx(t)
            assert torch.equal(latents, slerp(tiny_backend.start_noise(old), tiny_backend.start_noise(new), t))
            assert torch.equal(embeddings, lerp(tiny_backend.encode(old), tiny_backend.encode(new), t))
        else:  # the end: exactly the new parameters' own frame
            assert header["live"]["blend"] is None
            plain = tiny_backend.generate(new, lambda s, n: None, lambda: False)
            np.testing.assert_array_equal(result.rgb, plain.rgb)
    assert not torch.equal(calls[-3][1], calls[-2][1])  # t = 0.25 and 0.5 start from different noise
    assert live.next_frame(lambda s, n: None, lambda: False) is None  # idle after the transition



def test_osc_starts_steers_and_stops_the_live_session(make_server):
    from conftest import free_udp_port
    from generator.serving.osc import OscConfig
    from test_osc import OscClient

    srv = make_server(DemoBackend(), osc=OscConfig(port=free_udp_port()))
    osc = OscClient(srv.server.osc.port)
    try:
        for address, value in [("/depthfusion/width", 128), ("/depthfusion/height", 64), ("/depthfusion/steps", 2),
                               ("/depthfusion/prompt", "a room"), ("/depthfusion/seed", 4),
                               ("/depthfusion/transition", 0.0)]:
            assert osc.ask(address, value)[0] == address  # the echo
        assert osc.ask("/depthfusion/live", 1) == ("/depthfusion/live", [1])
        live = session(srv)
        wait_for(lambda: live.frames >= 1, what="a live frame")
        assert live.params["prompt"] == "a room" and live.params["width"] == 128 and live.live["transition"] == 0
        count = live.frames
        assert osc.ask("/depthfusion/prompt", "a misty forest") == ("/depthfusion/prompt", ["a misty forest"])
        wait_for(lambda: live.params["prompt"] == "a misty forest" and live.frames > count,
                 what="the prompt set over OSC to reach the live session")
        address, args = osc.ask("/depthfusion/live_fps", 500)  # out of range: the bridge refuses it itself
        assert address == "/depthfusion/error" and "live_fps" in args[1]
        assert osc.ask("/depthfusion/live", 0) == ("/depthfusion/live", [0])
        assert live.on is False
    finally:
        osc.close()


def test_serve_live_flag(tmp_path):
    from conftest import Served

    served = Served("--model", "demo", "--no-library", "--osc-port", "0", "--live", "--width", "128", "--height", "64",
                    "--steps", "2")
    try:
        with CommandClient(served.commands, timeout=5.0) as client:
            wait_for(lambda: client.status()["live"]["frames"] >= 1, timeout=15, what="a live frame from serve --live")
            assert client.status()["live"]["on"] is True
    finally:
        assert served.stop() == 0
