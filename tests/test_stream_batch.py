"""Stream batching (generator/backends/stream_batch.py) on the tests' tiny LDM3D, CPU: frames pushed through one
batched U-Net call per step equal the same frames denoised one by one (within GEMM rounding, with proof that the
tolerance catches a wrong timestep or a wrong prompt), one U-Net call per advance, warm-up, incompatible frames,
cancel and flush."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import tiny_ldm3d  # noqa: E402
from generator.backends import RGBD, Cancelled, load_backend  # noqa: E402
from generator.backends.stream_batch import StreamBatch  # noqa: E402
from td_bridge.params import validate_generation  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Batched and sequential frames differ by GEMM rounding only: here ≤3e-6 of the largest latent value (the random
# model's latents reach 40-80) and ≈1e-6 on the decoded [0, 1] images, which the random VAE flattens. Every
# timestep off by one moves a frame's latents by ≈1e-3 of their largest value and its image by ≈3e-3 to 2e-2;
# another prompt's embeddings move them by more. Both are checked, the latents being the finer test.
LATENT_TOL = 2e-5  # of the sequential frame's largest latent value
ATOL = 1e-4  # decoded images
FAR = 20  # a wrong frame differs by more than FAR times the tolerance (seen: ≥280 on latents, ≥50 on images)
SCHEDULERS = ("ddim", "lcm", "dpm++", "euler")
PROMPTS = ("a misty forest at dawn", "the sunlit courtyard at night", "a desert panorama")
NEVER = lambda: False  # noqa: E731


@pytest.fixture(scope="module")
def backend(tmp_path_factory):
    return load_backend(str(tiny_ldm3d.build(tmp_path_factory.mktemp("ldm3d") / "tiny-6c", vae_channels=6)))


@pytest.fixture
def made(backend, monkeypatch):
    """(final latents, decoded float image) of every frame the backend turns into an RGBD, by its state's id."""
    frames, last = {}, []
    decode, result = backend._decode, backend.result

    def decoding(latents, **kwargs):
        last[:] = [latents]
        return decode(latents, **kwargs)

    def recording(frame, image, **kwargs):
        frames[id(frame)] = (last[0], image)
        return result(frame, image, **kwargs)

    monkeypatch.setattr(backend, "_decode", decoding)
    monkeypatch.setattr(backend, "result", recording)
    return frames


def params(**overrides):
    return validate_generation({"prompt": PROMPTS[0], "seed": 7, "steps": 3, "width": 64, "height": 64,
                                "seamless": False, **overrides})


def mixed(count, **overrides):
    """Frames with other seeds and prompts, guided (7.5, 3) and unguided (1, 0.5) by turns."""
    return [params(seed=10 + i, prompt=PROMPTS[i % 3], guidance=(7.5, 1.0, 3.0, 0.5)[i % 4], **overrides)
            for i in range(count)]


def prepare(backend, frame_params, **kwargs):
    with torch.inference_mode():
        return backend.prepare(frame_params, **kwargs)


def sequential(backend, frame_params, *, t_offset=0, **kwargs):
    """(final latents, decoded image) of the plain one-frame loop; ``t_offset`` shifts every timestep the U-Net
    sees."""
    with torch.inference_mode():
        state = backend.prepare(frame_params, **kwargs)
        shift = backend.unet.register_forward_pre_hook(
            lambda module, args: (args[0], args[1] + t_offset, *args[2:]) if t_offset else None)
        try:
            latents = backend._denoise(state, lambda step, total: None, NEVER)
        finally:
            shift.remove()
        return latents, backend._decode(latents)


def stream(backend, frames, **kwargs):
    """Push ``frames`` (params) through a stream batch, one per advance, then flush: (states, results in order)."""
    batch, states, results = StreamBatch(backend), [], []
    for frame_params in frames:
        states.append(prepare(backend, frame_params, **kwargs))
        results += batch.advance(states[-1], NEVER)
    results += batch.flush(NEVER)
    assert batch.in_flight == 0 and len(results) == len(frames)
    return states, results


def differences(frame, expected):
    """How far a frame is from the expected one, in units of the tolerances: (latents, image)."""
    (latents, image), (expected_latents, expected_image) = frame, expected
    scale = float(expected_latents.abs().max())
    return (float((latents - expected_latents).abs().max()) / (LATENT_TOL * scale),
            float(np.abs(image - expected_image).max()) / ATOL)


def assert_equal_within_rounding(frame, expected):
    latents, image = differences(frame, expected)
    assert latents <= 1 and image <= 1, f"latents {latents:.3g}, image {image:.3g} times the tolerance"


def assert_far(frame, other):
    latents, image = differences(frame, other)
    assert latents > FAR and image > FAR, f"latents {latents:.3g}, image {image:.3g} times the tolerance"


@pytest.mark.parametrize("scheduler", SCHEDULERS + ("all",))
def test_frames_in_a_stream_batch_equal_sequential_frames(backend, made, scheduler):
    """One sampler for all frames, or ``all``: each frame its own, tcd too (linspace spacing: euler's timesteps are
    fractional, ddim's and dpm++'s integers, in one call); there the tolerance is shown to catch wrong frames."""
    if scheduler == "all":
        frames = [{**frame, "scheduler": name} for frame, name in zip(mixed(5, spacing="linspace"),
                                                                       ("ddim", "euler", "lcm", "dpm++", "tcd"))]
    else:
        frames = mixed(4, scheduler=scheduler)
    states, results = stream(backend, frames)
    assert [state for state, _ in results] == states  # same step counts: out in the order they went in
    for (state, rgbd), frame_params in zip(results, frames):
        expected = sequential(backend, frame_params)
        assert_equal_within_rounding(made[id(state)], expected)
        assert rgbd.rgb.shape == (64, 64, 3) and rgbd.info["scheduler"] == frame_params["scheduler"]
        rgb = np.clip(np.round(expected[1][..., :3] * 255), 0, 255)
        assert np.abs(rgbd.rgb.astype(np.int16) - rgb).max() <= 1
    if scheduler != "all":
        return
    # the tolerance is meaningful: every timestep off by one, or the prompt of another frame, is far outside it
    assert_far(made[id(states[0])], sequential(backend, frames[0], t_offset=1))  # guided
    assert_far(made[id(states[1])], sequential(backend, frames[1], t_offset=1))  # unguided
    # frames 1 and 3: both unguided, other prompts
    assert_far(made[id(states[1])], sequential(backend, frames[1], embeddings=backend.encode(frames[3])))


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_img2img_frames_with_fewer_steps_share_the_batch(backend, made, scheduler):
    rng = np.random.default_rng(3)
    image = RGBD(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), rng.integers(0, 65536, (64, 64), dtype=np.uint16))
    frames = mixed(4, scheduler=scheduler, steps=4)
    batch, states, results = StreamBatch(backend), [], []
    for i, frame_params in enumerate(frames):  # text-to-image (4 steps) and img2img at 0.5 (2 steps) by turns
        kwargs = {"image": image, "strength": 0.5} if i % 2 else {}
        states.append(prepare(backend, frame_params, **kwargs))
        results += batch.advance(states[-1], NEVER)
    results += batch.flush(NEVER)
    order = [states.index(state) for state, _ in results]
    assert order == [1, 0, 3, 2]  # an img2img frame (2 steps) overtakes the text-to-image frame before it (4)
    for i, (state, frame_params) in enumerate(zip(states, frames)):
        kwargs = {"image": image, "strength": 0.5} if i % 2 else {}
        assert_equal_within_rounding(made[id(state)], sequential(backend, frame_params, **kwargs))
    assert {rgbd.info.get("steps_run") for _, rgbd in results} == {None, 2}


def test_one_unet_call_per_advance_with_a_row_per_frame_and_two_per_guided_frame(backend, monkeypatch):
    calls = []
    forward = backend.unet.forward

    def counting(sample, timestep, **kwargs):
        calls.append((sample.shape[0], kwargs["encoder_hidden_states"].shape[0], timestep.tolist()))
        return forward(sample, timestep, **kwargs)

    monkeypatch.setattr(backend.unet, "forward", counting)
    batch, flight = StreamBatch(backend), []  # flight: [state, steps done] as the test expects them
    frames = [{**frame, "scheduler": name} for frame, name in zip(mixed(5, spacing="linspace"),
                                                                   ("ddim", "euler", "lcm", "dpm++", "euler"))]
    for frame_params in frames + [None] * 2:  # euler's timesteps (linspace: 999, 499.5, 0) are fractional
        state = prepare(backend, frame_params) if frame_params else None
        if state is not None:
            flight.append([state, 0])
        rows = sum(2 if s.guided else 1 for s, _ in flight)
        timesteps = [float(s.timesteps[done]) for s, done in flight for _ in range(2 if s.guided else 1)]
        calls.clear()
        out = batch.advance(state, NEVER)
        assert len(calls) == 1 and calls[0][:2] == (rows, rows) and calls[0][2] == timesteps
        for entry in flight:
            entry[1] += 1
        assert [s for s, _ in out] == [s for s, done in flight if done == len(s.timesteps)]
        flight = [entry for entry in flight if entry[1] < len(entry[0].timesteps)]
        assert batch.in_flight == len(flight)
    assert not flight and batch.in_flight == 0


@pytest.mark.parametrize("steps", [2, 3])
def test_the_first_frame_comes_out_at_the_nth_advance_then_one_per_advance(backend, steps):
    batch, states, out = StreamBatch(backend), [], []
    for frame_params in mixed(2 * steps, scheduler="lcm", steps=steps):
        states.append(prepare(backend, frame_params))
        out.append(batch.advance(states[-1], NEVER))
        assert batch.in_flight == min(len(states), steps - 1)  # the oldest has left when its last step ran
    assert [len(results) for results in out] == [0] * (steps - 1) + [1] * (steps + 1)
    rest = batch.flush(NEVER)
    assert len(rest) == steps - 1 and batch.in_flight == 0
    assert [state for results in out + [rest] for state, _ in results] == states


@pytest.mark.parametrize("change", [{"width": 128}, {"seamless": True}])
def test_an_incompatible_frame_enters_after_the_frames_in_flight_finish(backend, made, monkeypatch, change):
    frames = mixed(2) + [params(seed=30, guidance=7.5, **change)]
    calls = []
    forward = backend.unet.forward
    monkeypatch.setattr(backend.unet, "forward", lambda sample, *a, **k: calls.append(sample.shape) or
                        forward(sample, *a, **k))
    batch = StreamBatch(backend)
    states = [prepare(backend, frame_params) for frame_params in frames[:2]]
    assert batch.advance(states[0], NEVER) == [] and batch.advance(states[1], NEVER) == []
    states.append(prepare(backend, frames[2]))  # sets the U-Net's seamless for this frame: the others need theirs
    calls.clear()
    out = batch.advance(states[2], NEVER)
    assert [state for state, _ in out] == states[:2] and batch.in_flight == 1
    assert len(calls) == 3 and calls[-1][0] == 2  # the two old frames' last steps, then the new frame's first
    out += batch.flush(NEVER)
    assert [state for state, _ in out] == states and out[2][1].rgb.shape[1] == frames[2]["width"]
    for state, frame_params in zip(states, frames):
        assert_equal_within_rounding(made[id(state)], sequential(backend, frame_params))
    if "seamless" in change:  # wrap-around really was off for the old frames
        assert_far(made[id(states[0])], sequential(backend, {**frames[0], "seamless": True}))


def test_cancel_drops_every_frame_and_flush_finishes_them_all(backend):
    def filled(count):
        batch = StreamBatch(backend)
        states = [prepare(backend, frame_params) for frame_params in mixed(count)]
        for state in states:
            batch.advance(state, NEVER)
        return batch, states

    batch, _ = filled(2)
    with pytest.raises(Cancelled):  # cancelled as a frame enters: neither it nor the others go on
        batch.advance(prepare(backend, params(seed=40)), lambda: True)
    assert batch.in_flight == 0 and batch.flush(NEVER) == [] and batch.advance(None, NEVER) == []
    batch, _ = filled(3)
    assert batch.in_flight == 2  # the first has come out (3 steps)
    answers = iter([False, True])
    with pytest.raises(Cancelled):  # cancelled at the flush's second step
        batch.flush(lambda: next(answers))
    assert batch.in_flight == 0
    batch, _ = filled(2)
    batch.clear()
    assert batch.in_flight == 0
    batch, states = filled(4)
    assert [state for state, _ in batch.flush(NEVER)] == states[2:] and batch.in_flight == 0
