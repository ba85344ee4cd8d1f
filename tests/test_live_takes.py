"""Live input (img2img), stream batching, Keep and Take (generator.serving.live, the live_input/keep/take commands): on the demo
backend through the server, and on the tiny LDM3D through the session and backend API."""

import numpy as np
import pytest

from conftest import wait_for
from generator.backends import DemoBackend
from generator.backends.base import RGBD
from generator.fast import take_defaults
from generator.library import FrameLibrary
from generator.serving.live import MID_DEPTH, LiveSession, resized, similarity
from td_bridge import protocol as wire
from td_bridge.params import validate_generation
from td_bridge.receiver import CommandClient, CommandError
from test_live import LIVE, Collector, FakeClock, session

NOTHING = (lambda s, n: None, lambda: False)


def camera(seed, width=96, height=48):
    """An input frame: smooth colour gradients, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    channels = [(np.sin(x / width * rng.uniform(2, 6) + rng.uniform(0, 6)) * 0.5 + 0.5) * 255 for _ in range(3)]
    return np.stack(channels, axis=2).astype(np.uint8)


@pytest.fixture
def running(make_server, tmp_path):
    library = FrameLibrary(tmp_path / "library")
    srv = make_server(DemoBackend(step_delay=0.002), library=library)
    collector = Collector(srv.frames)
    with CommandClient(srv.commands, timeout=5.0) as client:
        yield srv, client, collector, library
    collector.close()


def newest_live(collector):
    return wait_for(lambda: collector.frames and collector.frames[-1].live and collector.frames[-1],
                    what="a live frame")


# ------------------------------------------------------------ live input


def test_an_input_frame_is_mixed_into_the_demo_frame_at_its_strength_and_clearing_it_goes_back(running):
    srv, client, collector, _ = running
    client.live(True, prompt="a room", seed=4, transition=0, input_strength=0.25, **LIVE)
    plain = newest_live(collector)
    image = camera(1)
    reply = client.live_input(image)
    assert reply == {"accepted": True, "similarity": None}
    frame = wait_for(lambda: (f := collector.frames[-1]).meta["live"]["input_strength"] is not None and f,
                     what="a frame made from the input")
    expected = np.rint(0.75 * resized(image, 128, 64).astype(np.float32) + 0.25 * plain.rgb.astype(np.float32))
    np.testing.assert_array_equal(frame.rgb, expected.astype(np.uint8))
    np.testing.assert_array_equal(frame.depth, plain.depth)  # the demo keeps its own depth
    assert client.status()["live"]["input"] is True
    assert client.live_input(None)["accepted"] is True
    wait_for(lambda: collector.frames[-1].meta["live"]["input_strength"] is None, what="a text-only frame again")
    np.testing.assert_array_equal(collector.frames[-1].rgb, plain.rgb)
    assert client.status()["live"]["input"] is False


def test_a_similar_input_frame_makes_no_new_frame_and_a_different_one_does(running):
    srv, client, collector, _ = running
    client.live(True, prompt="a room", seed=4, transition=0, input_similarity=0.98, **LIVE)
    client.live_input(camera(1))
    wait_for(lambda: collector.frames and collector.frames[-1].meta["live"]["input_strength"] is not None,
             what="a frame made from the input")
    wait_for(lambda: client.status()["live"]["idle"], what="idle")
    count = session(srv).frames
    noisy = np.clip(camera(1).astype(np.int16) + 1, 0, 255).astype(np.uint8)  # a camera's sensor noise
    reply = client.live_input(noisy)
    assert reply["accepted"] is False and 0.98 <= reply["similarity"] < 1.0
    assert client.status()["live"]["idle"] is True and session(srv).frames == count
    reply = client.live_input(camera(2))
    assert reply["accepted"] is True and reply["similarity"] < 0.98
    wait_for(lambda: session(srv).frames > count, what="a frame for the changed input")


def test_similarity_of_frames():
    a = camera(1)
    assert similarity(a, a) == 1.0
    assert similarity(a, 255 - a) < 0.7
    assert similarity(a, camera(1, width=48)) is None


@pytest.mark.parametrize("args, data, code, words", [
    ({"image": {"width": 4, "height": 4, "format": "rgb8"}}, b"\0" * 47, "bad_request", "48"),
    ({"image": {"width": 99999, "height": 4, "format": "rgb8"}}, b"\0" * 48, "bad_request", "width and height"),
    ({"image": {"width": 4, "height": 4, "format": "rgba"}}, b"\0" * 48, "bad_request", "format"),
    ({"image": {"width": 4, "height": 4, "format": "rgb8"}}, None, "bad_request", "data part"),
    ({"clear": True}, b"\0" * 48, "bad_request", "no image"),
    ({"clear": "yes"}, None, "bad_request", "clear"),
    ({"image": {"width": 4, "height": 4, "format": "rgb8"}, "input_strength": 2}, b"\0" * 48, "bad_params",
     "input_strength"),
    ({"image": {"width": 4, "height": 4, "format": "rgb8"}, "zoom": 2}, b"\0" * 48, "bad_params", "zoom"),
])
def test_hostile_uploads_are_refused_and_the_session_goes_on(running, args, data, code, words):
    srv, client, collector, _ = running
    client.live(True, prompt="a room", seed=1, transition=0, **LIVE)
    newest_live(collector)
    with pytest.raises(CommandError) as error:
        client.request("live_input", args, data=data)
    assert error.value.code == code and words in str(error.value)
    status = client.status()["live"]
    assert status["on"] is True and status["input"] is False
    count = session(srv).frames
    client.live(prompt="a forest")
    wait_for(lambda: session(srv).frames > count, what="a frame after the refused upload")


def test_the_ldm3d_input_is_encoded_with_the_last_frames_depth(tmp_path):
    calls = []

    class Img2img(DemoBackend):  # records what a backend with encode/start_noise is handed
        def encode(self, params):
            return np.zeros((1, 1))

        def start_noise(self, params):
            return np.zeros((1, 1))

        def generate(self, params, progress, cancelled, **given):
            calls.append(given)
            return DemoBackend.generate(self, params, progress, cancelled)

    live = LiveSession(Img2img(), LIVE, clock=FakeClock())
    live.start({"prompt": "a room", "seed": 1, "input_strength": 0.4})
    live.set_input(camera(1))
    _, first = live.next_frame(*NOTHING)
    assert calls[-1]["strength"] == 0.4 and (calls[-1]["image"].depth == MID_DEPTH).all()
    np.testing.assert_array_equal(calls[-1]["image"].rgb, resized(camera(1), 128, 64))
    live.set_input(camera(2))
    live.next_frame(*NOTHING)
    np.testing.assert_array_equal(calls[-1]["image"].depth, first.depth)


# ------------------------------------------------------------ keep


def test_keep_stores_exactly_the_live_frame_on_screen(running):
    srv, client, collector, library = running
    client.live(True, prompt="a room", seed=4, transition=0, **LIVE)
    shown = newest_live(collector)
    reply = client.keep(shown.frame_id, cue="opening")
    assert reply == {"frame_id": shown.frame_id, "cue": "opening", "saved": True}
    header, rgb, depth = library.load(shown.frame_id)
    np.testing.assert_array_equal(rgb, shown.rgb)
    np.testing.assert_array_equal(depth, shown.depth)
    assert header["kind"] == "frame" and header["cue"] == "opening" and header["live"] == shown.meta["live"]
    assert client.keep(shown.frame_id)["saved"] is False  # kept already
    kept = client.get_frame(cue="opening")
    assert kept.frame_id == shown.frame_id and not kept.live
    np.testing.assert_array_equal(kept.rgb, shown.rgb)


def test_keep_refuses_what_it_cannot_keep(running, make_server):
    srv, client, collector, _ = running
    with pytest.raises(CommandError) as error:
        client.keep("20261207T000000.000000Z-00000000")
    assert error.value.code == "not_found"
    with pytest.raises(CommandError) as error:
        client.request("keep", {"frame_id": "latest", "cue": "x" * 101})
    assert error.value.code == "bad_params"
    with pytest.raises(CommandError) as error:
        client.request("keep", {"frame": "latest"})
    assert error.value.code == "bad_request"
    bare = make_server(DemoBackend())
    with CommandClient(bare.commands, timeout=5.0) as other:
        with pytest.raises(CommandError) as error:
            other.keep()
    assert error.value.code == "unavailable" and "library" in str(error.value)


def test_live_frames_do_not_push_other_frames_out_of_memory(make_server):
    srv = make_server(DemoBackend(step_delay=0.001), history=2)
    with CommandClient(srv.commands, timeout=5.0) as client:
        job = client.generate(prompt="a hall", seed=2, **LIVE)
        done = wait_for(lambda: (j := client.job(job["job_id"]))["state"] == "done" and j, what="the job")
        client.live(True, prompt="a room", seed=1, transition=600, live_fps=0, **LIVE)
        wait_for(lambda: session(srv).frames >= 1, what="the first live frame")
        client.live(prompt="a forest")  # a long blend: frames keep coming
        wait_for(lambda: session(srv).frames >= 8, what="live frames")
        assert client.get_frame(done["frame_id"]).meta["prompt"] == "a hall"


# ------------------------------------------------------------ take


def test_a_take_renders_the_shown_blend_again_at_full_quality_and_keeps_it(running):
    srv, client, collector, library = running
    client.live(True, prompt="a room", seed=1, transition=0, live_fps=20, **LIVE)
    newest_live(collector)
    client.live(prompt="a forest", seed=2, transition=600)  # a long blend: the frames on screen are mid-way
    shown = wait_for(lambda: (f := collector.frames[-1]).meta["live"]["blend"] and f, what="a blended frame")
    reply = client.take(shown.frame_id)
    params = reply["params"]
    assert params["steps"] == 50 and params["prompt"] == "a forest" and params["seed"] == 2
    done = wait_for(lambda: (j := client.job(reply["job_id"]))["state"] == "done" and j, what="the take", timeout=10)
    assert done["saved"] is True
    header, rgb, depth = library.load(done["frame_id"])
    assert header["kind"] == "frame" and header["take"]["live_frame"] == shown.frame_id
    assert header["job_id"] == reply["job_id"]
    assert header["take"]["blend"] == shown.meta["live"]["blend"]
    assert header["take"]["from"] == {"prompt": "a room", "negative_prompt": "", "seed": 1}
    # the demo draws the same scene at any step count: the take is the shown frame, pixel for pixel
    np.testing.assert_array_equal(rgb, shown.rgb)
    np.testing.assert_array_equal(depth, shown.depth)
    assert client.status()["live"]["on"] is True  # live frames went on


def test_take_refuses_changing_the_frame_and_unknown_frames(running):
    srv, client, collector, _ = running
    with pytest.raises(CommandError) as error:
        client.take()
    assert error.value.code == "not_found" and "no live frame" in str(error.value)
    client.live(True, prompt="a room", seed=1, transition=0, **LIVE)
    shown = newest_live(collector)
    for args, code, words in (({"prompt": "a forest"}, "bad_params", "keeps"),
                              ({"steps": 0}, "bad_params", "steps"),
                              ({"frame_id": "20261207T000000.000000Z-00000000"}, "not_found", "live frames"),
                              ({"frame_id": "../x"}, "bad_request", "frame_id"),
                              ({"upscale": True}, "unavailable", "upscaler")):
        with pytest.raises(CommandError) as error:
            client.request("take", {"frame_id": shown.frame_id, **args})
        assert error.value.code == code and words in str(error.value), args
    assert client.take(shown.frame_id, steps=3)["params"]["steps"] == 3


def test_take_defaults_leave_the_fast_preset_out():
    assert take_defaults(None, {"steps": 30, "prompt": "x"}, {}) == {"steps": 30}
    assert take_defaults("lcm", {}, {"lcm": 1.0}) == {"lora_1": "none"}
    assert take_defaults("lcm", {"guidance": 5.0}, {"lcm": 1.0, "style": 0.7}) == {
        "guidance": 5.0, "lora_1": "style", "lora_1_scale": 0.7}


# ------------------------------------------------------------ LDM3D


@pytest.fixture(scope="module")
def tiny_backend(tmp_path_factory):
    pytest.importorskip("diffusers")
    import tiny_ldm3d
    from generator.backends import load_backend

    return load_backend(str(tiny_ldm3d.build(tmp_path_factory.mktemp("ldm3d") / "tiny-6c", vae_channels=6)))


def test_an_ldm3d_take_is_the_full_step_frame_of_the_same_prompt_and_seed(tiny_backend):
    live = LiveSession(tiny_backend, {"steps": 2, "width": 64, "height": 64, "seamless": False}, clock=FakeClock())
    live.start({"prompt": "a misty forest", "seed": 5})
    header, _ = live.next_frame(*NOTHING)
    params = live.take_params(header["frame_id"], {"steps": 4})
    take_header, result = live.take(params, *NOTHING)
    full = validate_generation({"prompt": "a misty forest", "seed": 5, "steps": 4, "width": 64, "height": 64,
                                "seamless": False})
    plain = tiny_backend.generate(full, *NOTHING)
    np.testing.assert_array_equal(result.rgb, plain.rgb)  # the same computation: bit for bit
    np.testing.assert_array_equal(result.depth, plain.depth)
    assert take_header["params"]["steps"] == 4 and take_header["take"]["live_frame"] == header["frame_id"]
    assert take_header["kind"] == "frame" and result.info["decoder"] == "full"


def test_ldm3d_img2img_runs_the_strengths_share_of_the_steps_from_the_noised_input(tiny_backend):
    import torch

    params = validate_generation({"prompt": "a room", "seed": 3, "steps": 4, "width": 64, "height": 64,
                                  "seamless": False})
    image = RGBD(camera(3, 64, 64), np.full((64, 64), 40000, dtype=np.uint16))
    seen = []
    forward = tiny_backend.unet.forward

    def spy(sample, timestep, *args, **kwargs):
        seen.append((sample.clone(), int(timestep)))
        return forward(sample, timestep, *args, **kwargs)

    tiny_backend.unet.forward = spy
    try:
        result = tiny_backend.generate(params, *NOTHING, image=image, strength=0.5)
    finally:
        del tiny_backend.unet.forward
    assert result.info["steps_run"] == 2 and result.info["input_strength"] == 0.5
    frame = tiny_backend.prepare(params)  # the plain schedule: img2img starts half-way along it
    assert [t for _, t in seen] == frame.scheduler.timesteps[2:].tolist()
    with torch.inference_mode():
        start = frame.scheduler.timesteps[2:3]
        expected = frame.scheduler.add_noise(tiny_backend.encode_image(image, params), tiny_backend.start_noise(params),
                                             start)
    torch.testing.assert_close(seen[0][0][1:], expected)  # guided: [negative, prompt] rows of the same latents
    plain = tiny_backend.generate(params, *NOTHING)
    assert not np.array_equal(plain.rgb, result.rgb)
    with pytest.raises(ValueError, match="input image is 32x32"):
        tiny_backend.generate(params, *NOTHING, image=RGBD(camera(3, 32, 32), np.zeros((32, 32), np.uint16)))


def test_the_frame_path_reads_live_frames():
    rgb, depth = np.zeros((2, 4, 3), np.uint8), np.zeros((2, 4), np.uint16)
    header = wire.frame_header(rgb, depth, frame_id="f1", seq=1, kind="live")
    frame = wire.decode_frame_parts(wire.encode_frame_parts(rgb, depth, header))
    assert frame.live and frame.meta["kind"] == "live"
    bad = {**header, "kind": "movie"}
    with pytest.raises(wire.ProtocolError, match="kind"):
        wire.decode_frame_parts(wire.encode_frame_parts(rgb, depth, bad))


def test_ldm3d_img2img_matches_diffusers_img2img_pipeline(tmp_path):
    """The reference: diffusers' StableDiffusionImg2ImgPipeline on the same tiny 4-channel weights, handed the
    latents our encode_image makes (a 4-channel tensor is taken as latents), with the same seeded generator."""
    import tiny_ldm3d
    import torch
    from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline
    from generator.backends import load_backend

    backend = load_backend(str(tiny_ldm3d.build(tmp_path / "tiny-4c", vae_channels=4)))
    params = validate_generation({"prompt": "a room", "negative_prompt": "blurry", "seed": 3, "steps": 5,
                                  "width": 64, "height": 64, "seamless": False})
    rng = np.random.default_rng(0)
    image = RGBD(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), rng.integers(0, 65535, (64, 64), np.uint16))
    with torch.inference_mode():
        latents = backend.encode_image(image, params)
        ours = backend._denoise(backend.prepare(params, image=image, strength=0.6), *NOTHING)
    pipe = StableDiffusionImg2ImgPipeline(
        vae=backend.vae, text_encoder=backend.text_encoder, tokenizer=backend.tokenizer, unet=backend.unet,
        scheduler=DDIMScheduler.from_config(backend.scheduler_config), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(prompt="a room", negative_prompt="blurry", image=latents, strength=0.6, num_inference_steps=5,
                     guidance_scale=7.0, generator=torch.Generator("cpu").manual_seed(3), output_type="latent").images
    torch.testing.assert_close(ours, reference)
    assert (ours - latents).abs().max() > 0.1  # it did denoise


def test_osc_keeps_and_takes_the_newest_live_frame(make_server, tmp_path):
    from conftest import free_udp_port
    from generator.serving.osc import OscConfig
    from test_osc import OscClient

    library = FrameLibrary(tmp_path / "library")
    srv = make_server(DemoBackend(), osc=OscConfig(port=free_udp_port()), library=library, defaults=LIVE)
    osc = OscClient(srv.server.osc.port)
    try:
        address, args = osc.ask("/depthfusion/take")
        assert address == "/depthfusion/error" and "no live frame" in args[1]
        assert osc.ask("/depthfusion/live", 1) == ("/depthfusion/live", [1])
        wait_for(lambda: srv.server._live_history, what="a published live frame")
        address, args = osc.ask("/depthfusion/keep", "finale")
        assert address == "/depthfusion/kept" and library.get(args[0]).cue == "finale"
        address, args = osc.ask("/depthfusion/take")
        assert address == "/depthfusion/queued" and args[1] == session(srv).params["seed"]
        address, args = osc.ask("/depthfusion/keep", "x" * 101)
        assert address == "/depthfusion/error" and "cue" in args[1]
    finally:
        osc.close()


# ------------------------------------------------------------ stream batching


def test_stream_batched_live_frames_come_steps_calls_late_and_match_sequential_frames(tiny_backend):
    clock = FakeClock()
    live = LiveSession(tiny_backend, {"steps": 3, "width": 64, "height": 64, "seamless": False}, clock=clock)
    live.start({"prompt": "a room", "seed": 1, "transition": 0, "stream_batch": True})
    made = [live.next_frame(*NOTHING) for _ in range(3)]
    assert made[:2] == [None, None] and made[2] is not None  # a frame comes out at the third call: 3 steps
    header, result = made[2]
    plain = tiny_backend.generate(validate_generation({**header["params"]}), *NOTHING)
    assert header["params"]["prompt"] == "a room" and header["kind"] == "live"
    assert np.abs(result.rgb.astype(int) - plain.rgb).max() <= 1  # a batch of 3 rounds like a batch of 1, nearly
    live.update({"prompt": "a misty forest"})
    out = [live.next_frame(*NOTHING) for _ in range(3)]  # a cut: the change shows after as many calls as steps
    assert out[:2] == [None, None] and out[2][0]["params"]["prompt"] == "a misty forest"
    assert live.summary()["idle"] is True and live.next_frame(*NOTHING) is None  # nothing changed: idle
    live.update({"prompt": "a gallery", "transition": 2.0})
    blends = []
    for _ in range(6):  # a blend enters a frame at every call: after the warm-up one comes out per call
        clock.now += 0.5
        out = live.next_frame(*NOTHING)
        blends.append(out and (out[0]["live"]["blend"], out[0]["params"]["prompt"]))
    # the end (blend None) entered at the fourth call, when the blend had run its 2 s
    assert blends == [None, None, (0.25, "a gallery"), (0.5, "a gallery"), (0.75, "a gallery"), (None, "a gallery")]
    assert live.next_frame(*NOTHING) is None and live.summary()["idle"] is True


def test_a_restart_never_shows_frames_left_in_flight_by_a_stop(tiny_backend):
    live = LiveSession(tiny_backend, {"steps": 3, "width": 64, "height": 64, "seamless": False}, clock=FakeClock())
    live.start({"prompt": "a room", "seed": 1, "transition": 0, "stream_batch": True})
    assert live.next_frame(*NOTHING) is None and live.wait_s() == 0.0  # one frame in flight
    live.stop()
    assert live.next_frame(*NOTHING) is None and live.wait_s() is None
    live.start({"prompt": "a misty forest"})
    out = [live.next_frame(*NOTHING) for _ in range(3)]
    assert out[:2] == [None, None] and out[2][0]["params"]["prompt"] == "a misty forest"


def test_a_receiver_that_does_not_read_holds_back_a_few_frames_not_the_stream(make_server):
    """Live frames are dropped for a slow receiver, never queued: after the stream ran while it did not read, the
    receiver finds only the few frames its socket buffers hold, then the newest."""
    import zmq

    srv = make_server(DemoBackend(), stall_timeout=0.5)
    ctx = zmq.Context()
    slow = ctx.socket(zmq.SUB)
    slow.setsockopt(zmq.LINGER, 0)
    slow.setsockopt(zmq.RCVHWM, 2)
    slow.setsockopt(zmq.SUBSCRIBE, wire.TOPIC_FRAME)
    slow.connect(srv.frames)
    try:
        with CommandClient(srv.commands, timeout=5.0) as client:
            client.live(True, prompt="a room", seed=1, transition=600, live_fps=0, width=1024, height=512, steps=1)
            wait_for(lambda: session(srv).frames >= 1, what="the first live frame")
            client.live(prompt="a forest")  # a long blend: a new frame every time
            wait_for(lambda: session(srv).frames >= 40, timeout=60, what="40 live frames")
            client.live(False)
            held = 0
            while slow.poll(500):
                slow.recv_multipart()
                held += 1
        assert held <= 12, f"{held} of {session(srv).frames} frames were queued for a receiver that did not read"
        assert srv.server._publisher.superseded > 0 and len(srv.server._live_history) <= 16
    finally:
        slow.close()
        ctx.term()


def test_the_measured_rate_holds_at_slow_rates_and_falls_to_zero_when_frames_stop():
    clock = FakeClock()
    live = LiveSession(DemoBackend(), LIVE, clock=clock)
    live.start({"prompt": "a room", "seed": 1, "live_fps": 0, "transition": 600})
    live.next_frame(*NOTHING)
    live.update({"prompt": "a forest"})  # a long blend: frames keep coming
    for _ in range(5):
        clock.now += 3.0  # one frame every 3 s: slower than any fixed 2 s window sees
        live.next_frame(*NOTHING)
    assert live.summary()["fps"] == pytest.approx(1 / 3.0, rel=1e-3)
    clock.now += 5.0
    assert live.summary()["fps"] == pytest.approx(1 / 3.0, rel=1e-3)  # within twice the interval: still running
    clock.now += 2.0
    assert live.summary()["fps"] == 0.0


def test_the_tiny_ldm3d_served_live_publishes_frames_steadily_never_faster_than_the_target(make_server,
                                                                                           tiny_backend):
    srv = make_server(tiny_backend, defaults={"steps": 2, "width": 64, "height": 64, "seamless": False})
    collector = Collector(srv.frames)
    try:
        with CommandClient(srv.commands, timeout=5.0) as client:
            client.live(True, prompt="a room", seed=1, transition=0, live_fps=8)
            wait_for(lambda: collector.frames, what="the first live frame", timeout=10)
            client.live(prompt="a misty forest", transition=600)  # a long blend: a new frame at every tick
            wait_for(lambda: len(collector.frames) >= 8, what="8 live frames", timeout=20)
            client.live(False)
        started = [f.meta["created_at"] - f.meta["timings"]["generate_s"] for f in collector.frames
                   if f.meta["live"]["blend"] is not None]
        assert len(started) >= 5 and all(f.meta["backend"] == "ldm3d" for f in collector.frames)
        gaps = np.diff(started)
        assert gaps.min() >= 1 / 8 - 0.005, gaps  # paced: frames start never faster than live_fps
        blends = [f.meta["live"]["blend"] for f in collector.frames if f.meta["live"]["blend"] is not None]
        assert blends == sorted(blends)  # the blend moves on from frame to frame
    finally:
        collector.close()
