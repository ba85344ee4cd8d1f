"""The ldm3d-sr upscaler on a tiny random-weight checkpoint in the hub layout, loaded through the public path
(no hub, CPU only), and the tiling it rests on."""

import shutil

import numpy as np
import pytest

import torch

import tiny_upscaler
from generator.backends import BackendUnavailable, Cancelled
from generator.backends.tiles import make_plan, plan_axis, run_tiled
from generator.backends.upscale import UpscaleBackend, resize_bilinear, target_size
from td_bridge.params import UPSCALE_PARAMS, ParamError, validate

# a smooth source (a noise-free image is what upscalers see), 16 x 32 like a small 2:1 panorama
_Y, _X = np.mgrid[0:16, 0:32]
SOURCE_RGB = np.stack([128 + 100 * np.sin(2 * np.pi * _X / 32 + c) * np.cos(np.pi * _Y / 16) for c in range(3)],
                      -1).astype(np.uint8)
SOURCE_DEPTH = (32768 + 30000 * np.cos(2 * np.pi * _X / 32) * np.sin(np.pi * _Y / 16)).astype(np.uint16)


@pytest.fixture(scope="session")
def model(tmp_path_factory):
    return tiny_upscaler.build(tmp_path_factory.mktemp("upscaler") / "tiny-sr")


@pytest.fixture(scope="session")
def backend(model):
    return UpscaleBackend.load(str(model))


def params(**overrides):
    return validate({"upscale_factor": 2, "upscale_steps": 2, "upscale_seed": 3, "upscale_seamless": "no",
                     **overrides}, UPSCALE_PARAMS)


def run(backend, rgb=SOURCE_RGB, depth=SOURCE_DEPTH, progress=lambda s, n: None, cancelled=lambda: False,
        noise=None, **overrides):
    return backend.upscale(rgb, depth, params(**overrides), progress, cancelled, noise=noise)


def stacked(out):
    """RGB and the depth's high byte as one int array, to compare frames in 8-bit units."""
    return np.concatenate([out.rgb.astype(np.int32), out.depth[..., None].astype(np.int32) >> 8], axis=-1)


# ------------------------------------------------------------------ tiles


@pytest.mark.parametrize("length, tile, overlap, wrap", [(10, 16, 4, False), (40, 12, 3, False), (40, 12, 3, True),
                                                         (33, 8, 2, True), (17, 16, 4, False)])
def test_tile_spans_cover_the_axis_with_the_overlap(length, tile, overlap, wrap):
    spans = plan_axis(length, tile, overlap, wrap)
    covered = np.zeros(length, int)
    for span in spans:
        covered[np.arange(span.start, span.start + span.size) % length] += 1
        assert span.size <= tile and (wrap or span.start + span.size <= length)
    assert covered.min() >= 1
    if len(spans) > 1:
        ends = [(s.start + s.size) for s in spans]
        gaps = [ends[i] - spans[i + 1].start for i in range(len(spans) - 1)]
        gaps += [ends[-1] - length - spans[0].start] if wrap else []
        assert min(gaps) >= overlap


@pytest.mark.parametrize("wrap", [False, True])
def test_tiled_identity_and_scaling_are_exact(wrap):
    x = torch.randn((1, 3, 12, 40), generator=torch.Generator().manual_seed(0))
    plan = make_plan(12, 40, 8, wrap)
    assert plan.tiles > 3
    torch.testing.assert_close(run_tiled(lambda i, t: t, x, plan, out_channels=3), x)
    up = x.repeat_interleave(2, 2).repeat_interleave(2, 3)
    torch.testing.assert_close(run_tiled(lambda i, t: t.repeat_interleave(2, 2).repeat_interleave(2, 3), x, plan,
                                         scale_out=2, out_channels=3), up)
    torch.testing.assert_close(run_tiled(lambda i, t: t[..., ::2, ::2], up, plan, scale_in=2, out_channels=3), x)


def test_bilinear_resize_matches_torch_and_wraps_for_panoramas():
    x = torch.rand((1, 4, 5, 7), generator=torch.Generator().manual_seed(1))
    expected = torch.nn.functional.interpolate(x, size=(15, 28), mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize_bilinear(x, 15, 28, wrap=False), expected)
    # wrapping: resizing a rolled image is the resized image rolled (integral factor)
    wrapped = resize_bilinear(x, 15, 28, wrap=True)
    torch.testing.assert_close(resize_bilinear(torch.roll(x, 2, 3), 15, 28, wrap=True), torch.roll(wrapped, 8, 3))
    assert not torch.allclose(wrapped[..., 0], expected[..., 0])  # the first column mixes in the last one


# ------------------------------------------------------------------ the upscaler


def test_output_sizes_depth_and_metadata(backend):
    assert backend.name == "ldm3d-sr" and backend.spec.scale_factor == 2 and backend.spec.max_noise_level == 350
    out = run(backend)
    assert out.rgb.shape == (32, 64, 3) and out.rgb.dtype == np.uint8
    assert out.depth.shape == (32, 64) and out.depth.dtype == np.uint16
    assert len(np.unique(out.depth)) > 256  # 16-bit depth, not 8 bits widened
    assert out.info["source_size"] == [32, 16] and out.info["tiles"] == 1 and out.info["noise_level"] == 20
    sizes = [({"upscale_width": 48}, (48, 24)), ({"upscale_height": 40}, (80, 40)),
             ({"upscale_width": 40, "upscale_height": 40}, (40, 40)), ({"upscale_factor": 1.3}, (40, 24))]
    for given, expected in sizes:
        assert target_size((32, 16), params(**given)) == expected
    assert run(backend, upscale_height=24, upscale_steps=1).rgb.shape == (24, 48, 3)


def test_same_seed_same_frame_other_seed_other_frame(backend):
    a, b, c = run(backend), run(backend), run(backend, upscale_seed=4)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert not np.array_equal(a.rgb, c.rgb)


def test_noise_level_bounds(backend):
    low, high = run(backend, upscale_noise_level=0, upscale_steps=1), run(backend, upscale_noise_level=350,
                                                                           upscale_steps=1)
    assert not np.array_equal(low.rgb, high.rgb)
    with pytest.raises(ValueError, match="max_noise_level 350"):
        run(backend, upscale_noise_level=351)
    with pytest.raises(ParamError, match="upscale_noise_level"):
        params(upscale_noise_level=1000)


def test_progress_per_step_and_cancellation_between_steps(backend):
    calls, steps = [], []
    handle = backend.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        run(backend, upscale_steps=3, progress=lambda s, n: steps.append((s, n)))
        assert steps == [(1, 3), (2, 3), (3, 3)] and len(calls) == 3  # one batch-2 pass per step
        calls.clear()
        with pytest.raises(Cancelled):
            run(backend, upscale_steps=20, cancelled=lambda: len(calls) >= 2)
        assert len(calls) == 2
    finally:
        handle.remove()


def test_seamless_upscaling_treats_the_panorama_as_a_cylinder(backend):
    """With the wrap on, shifting the source by 4 pixels (and the noise by the same 4 output pixels' latents)
    shifts the result by 8 pixels: the left and right edges are neighbours like any other columns."""
    noise = torch.randn((2, 4, 16, 32), generator=torch.Generator().manual_seed(9))
    rolled_source = np.roll(SOURCE_RGB, 4, axis=1), np.roll(SOURCE_DEPTH, 4, axis=1)

    def pair(seamless):
        plain = stacked(run(backend, noise=noise, upscale_seamless=seamless))
        shifted = stacked(run(backend, *rolled_source, noise=torch.roll(noise, 4, dims=3),
                              upscale_seamless=seamless))
        return np.abs(shifted - np.roll(plain, 8, axis=1)).max()

    assert pair("yes") <= 2
    assert pair("no") > 8


def column_jumps(image):
    """Mean absolute step between neighbouring columns, per column boundary."""
    return np.abs(np.diff(image.astype(np.float64), axis=1)).mean(axis=(0, 2))


def test_tiled_matches_untiled_without_seams(backend):
    """64 x 128 from 16 x 32: one pass, and three overlapping tiles of 64 pixels (32 latent cells). The tiled frame
    stays close to the untiled one, and their difference steps no more at a tile edge than anywhere else (without
    the feathering it steps 3-4 times the median there)."""
    untiled = stacked(run(backend, upscale_factor=4))
    tiled_out = run(backend, upscale_factor=4, upscale_tile=64)
    tiled = stacked(tiled_out)
    assert tiled_out.info["tiles"] == 3
    difference = np.abs(tiled - untiled)
    other_seed = np.abs(stacked(run(backend, upscale_factor=4, upscale_seed=4)) - untiled).mean()
    assert difference.mean() < other_seed / 4 and np.percentile(difference, 99) < 40
    jumps = column_jumps(tiled - untiled)
    edges = {2 * s for span in make_plan(32, 64, 32, False).cols for s in (span.start, span.start + span.size)}
    assert max(jumps[e - 1] for e in edges if 0 < e < 128) <= 2 * np.median(jumps)


def test_tiled_panorama_wraps_across_the_seam(backend):
    """Tiles running round the seam: against the one-pass panorama (circular convolutions), the difference steps
    across the 0°/360° seam no more than between other columns; tiles that stop at the borders step there."""
    circular = stacked(run(backend, upscale_factor=4, upscale_seamless="yes", upscale_steps=1))

    def seam_step(seamless):
        out = run(backend, upscale_factor=4, upscale_tile=64, upscale_seamless=seamless, upscale_steps=1)
        assert out.info["tiles"] == 3 and out.info["seamless"] == (seamless == "yes")
        difference = (stacked(out) - circular).astype(np.float64)
        return np.abs(difference[:, 0] - difference[:, -1]).mean() / np.median(column_jumps(difference))

    assert seam_step("yes") <= 2
    assert seam_step("no") > 3


def test_tiles_blend_a_padded_operator_close_to_one_pass():
    """A blur that zero-pads each tile: the feathered tiles stay within 0.1 of the one-pass blur,
    circular across the width for a wrapping plan."""
    x = torch.rand((1, 1, 32, 64), generator=torch.Generator().manual_seed(2))

    def blur(t, circular):
        for _ in range(3):
            t = torch.nn.functional.pad(t, (2, 2, 0, 0), mode="circular" if circular else "constant")
            t = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(t, (0, 0, 2, 2)), 5, 1)
        return t

    for wrap in (False, True):
        tiled = run_tiled(lambda i, t: blur(t, False), x, make_plan(32, 64, 32, wrap), out_channels=1)
        error = (tiled - blur(x, wrap)).abs()
        assert error.max() < 0.1 and error.mean() < 0.015  # the wrong border handling: 0.29 and 0.025


@pytest.mark.parametrize("overrides, message", [
    ({"upscale_factor": 0.5}, "upscale_factor"), ({"upscale_width": 12}, "multiple of 8"),
    ({"upscale_tile": 100}, "multiple of 64"), ({"upscale_scheduler": "plms"}, "not a choice"),
    ({"upscale_seamless": "maybe"}, "not a choice"), ({"upscale_steps": 0}, "upscale_steps"),
    ({"upscale_guidance": -1}, "upscale_guidance"), ({"upscale_seed": -2}, "upscale_seed"),
])
def test_bad_options_are_refused_by_the_schema(overrides, message):
    with pytest.raises(ParamError, match=message):
        params(**overrides)


@pytest.mark.parametrize("inputs, overrides, message", [
    ({}, {"upscale_width": 24}, "smaller than the source"),
    ({}, {"upscale_width": 8192, "upscale_height": 8192}, "megapixels"),
    ({}, {"upscale_seed": -1}, "must be resolved"),
    ({"rgb": SOURCE_RGB.astype(np.float32)}, {}, "uint8"),
    ({"depth": SOURCE_DEPTH[:8]}, {}, "the size of rgb"),
    ({"depth": SOURCE_DEPTH.astype(np.uint8)}, {}, "uint16"),
    ({"rgb": SOURCE_RGB[:4], "depth": SOURCE_DEPTH[:4]}, {}, "at least 8x8"),
    ({"noise": torch.zeros((2, 4, 8, 8))}, {}, "noise must have shape"),
])
def test_bad_inputs_are_refused(backend, inputs, overrides, message):
    with pytest.raises(ValueError, match=message):
        run(backend, **inputs, **overrides)


CONFIG_CASES = {
    "text-to-RGBD index": ("model_index.json", {"_class_name": "StableDiffusionLDM3DPipeline"}, "text-to-RGBD"),
    "no low-res scheduler": ("model_index.json", {"low_res_scheduler": None}, "lists no low_res_scheduler"),
    "U-Net of 4 channels": ("unet/config.json", {"in_channels": 4}, "takes 8"),
    "no class embedding": ("unet/config.json", {"num_class_embeds": None}, "needs 351"),
    "projection embedding": ("unet/config.json", {"class_embed_type": "projection"}, "cannot take a noise level"),
    "6-channel VAE": ("vae/config.json", {"in_channels": 6, "out_channels": 6}, "needs 4"),
    "DDIM low-res scheduler": ("low_res_scheduler/scheduler_config.json", {"_class_name": "DDIMScheduler"},
                               "not a DDPMScheduler"),
    "max level over the schedule": ("low_res_scheduler/scheduler_config.json", {"num_train_timesteps": 300},
                                    "fewer than max_noise_level"),
    "text width": ("text_encoder/config.json", {"hidden_size": 48}, "cross-attention width"),
}


@pytest.mark.parametrize("case", CONFIG_CASES)
def test_configs_that_do_not_fit_are_refused_before_any_weights_load(model, tmp_path, monkeypatch, case):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    file, changes, message = CONFIG_CASES[case]
    broken = shutil.copytree(model, tmp_path / "broken")
    tiny_upscaler.edit_json(broken / file, **changes)

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded")

    for cls in (UNet2DConditionModel, AutoencoderKL, CLIPTextModel):
        monkeypatch.setattr(cls, "from_pretrained", no_weights)
    with pytest.raises(BackendUnavailable, match=message):
        UpscaleBackend.load(str(broken))


def test_missing_files_and_hub_ids_are_explained(model, tmp_path, monkeypatch):
    import huggingface_hub

    broken = shutil.copytree(model, tmp_path / "no-weights")
    for weights in broken.glob("unet/*.safetensors"):
        weights.unlink()
    with pytest.raises(BackendUnavailable, match="no weights in unet/"):
        UpscaleBackend.load(str(broken))
    with pytest.raises(BackendUnavailable, match="neither an existing folder nor a hub id"):
        UpscaleBackend.load(str(tmp_path / "nowhere"))
    linked = shutil.copytree(model, tmp_path / "linked")
    for weights in linked.glob("vae/*.safetensors"):
        weights.unlink()
        weights.symlink_to(tmp_path / "blobs-not-copied" / weights.name)
    with pytest.raises(BackendUnavailable, match="links to a file that is not there"):
        UpscaleBackend.load(str(linked))
    cache_folder = tmp_path / "models--Intel--ldm3d-sr"
    (cache_folder / "snapshots" / ("0" * 40)).mkdir(parents=True)
    with pytest.raises(BackendUnavailable, match="Hugging Face cache folder"):
        UpscaleBackend.load(str(cache_folder))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(BackendUnavailable, match="not in the local Hugging Face cache"):
        UpscaleBackend.load("Intel/ldm3d-sr", local_files_only=True)


# ------------------------------------------------------------------ the verbs


def test_generate_then_upscale_and_upscale_a_library_frame(model, tmp_path):
    """`generate --upscale` keeps the source and the upscaled frame in the library, linked; `upscale FRAME_ID`
    makes another from the library, `upscale FOLDER` one from a frame folder."""
    import json

    from generator.__main__ import main
    from generator.library import FrameLibrary

    library = tmp_path / "library"
    common = ["--upscaler", str(model), "--upscale-steps", "1", "--upscale-factor", "1.5", "--library", str(library)]
    assert main(["generate", "a courtyard", "--model", "demo", "--width", "128", "--height", "64", "--steps", "1",
                 "--seed", "5", "--cue", "yard", "-o", str(tmp_path / "big"), "--upscale", *common]) == 0
    meta = json.loads((tmp_path / "big" / "metadata.json").read_text(encoding="utf-8"))
    frames = FrameLibrary(library)
    source = frames.get(meta["source_frame_id"])
    assert source is not None and source.model == "demo" and meta["model"] == str(model)
    assert meta["backend"] == "ldm3d-sr" and (meta["width"], meta["height"]) == (192, 96)
    assert meta["prompt"] == "a courtyard" and meta["params"]["cue"] == "yard" and meta["seed"] == 5
    assert meta["params"]["upscale_steps"] == 1 and 0 <= meta["params"]["upscale_seed"] <= 2**31 - 1
    assert meta["backend_info"]["seamless"] is True  # generated seamless: auto wraps
    assert meta["backend_info"]["peak_memory_of"] == "process peak RSS"  # the upscaler's device: the CPU
    assert frames.latest_for_cue("yard").frame_id == meta["frame_id"]

    assert main(["upscale", source.frame_id, "-o", str(tmp_path / "again"), *common, "--upscale-seed", "8"]) == 0
    again = json.loads((tmp_path / "again" / "metadata.json").read_text(encoding="utf-8"))
    assert again["source_frame_id"] == source.frame_id and again["frame_id"] != meta["frame_id"]
    assert main(["upscale", str(tmp_path / "big"), "-o", str(tmp_path / "twice"), *common, "--no-library",
                 "--upscale-width", "256"]) == 0
    twice = json.loads((tmp_path / "twice" / "metadata.json").read_text(encoding="utf-8"))
    assert twice["source_frame_id"] == meta["frame_id"] and (twice["width"], twice["height"]) == (256, 128)
    assert main(["upscale", str(tmp_path / "twice"), "-o", str(tmp_path / "twice"), *common]) == 2  # no overwrite
    assert main(["upscale", "no-such-frame", "-o", str(tmp_path / "x"), *common]) == 2


def test_upscale_a_folder_without_metadata_records_only_what_is_known(model, tmp_path):
    """A folder with only rgb.png and depth.png: the upscaled frame records no generation defaults as if they
    described the source (no seed -1, no 1024x512, no default prompt), only what is known: the source's size
    (from its images), the upscale parameters, and that it has no frame id."""
    import json

    from generator.__main__ import main
    from generator.images import write_rgb_png
    from td_bridge.depth import write_depth_png
    from td_bridge.params import GENERATION_PARAMS

    source = tmp_path / "photo"
    source.mkdir()
    write_rgb_png(source / "rgb.png", SOURCE_RGB)
    write_depth_png(source / "depth.png", SOURCE_DEPTH)
    assert main(["upscale", str(source), "-o", str(tmp_path / "up"), "--upscaler", str(model), "--no-library",
                 "--upscale-steps", "1", "--upscale-factor", "2", "--upscale-seed", "6"]) == 0
    meta = json.loads((tmp_path / "up" / "metadata.json").read_text(encoding="utf-8"))
    assert (meta["width"], meta["height"]) == (64, 32) and meta["backend_info"]["source_size"] == [32, 16]
    assert meta["seed"] is None and meta["prompt"] == "" and meta["negative_prompt"] == ""
    assert not {p.name for p in GENERATION_PARAMS} & set(meta["params"])  # nothing invented about the source
    assert meta["params"]["upscale_seed"] == 6 and meta["params"]["upscale_steps"] == 1
    assert meta["params"]["source_frame_id"] is None and meta["backend_info"]["seamless"] is True  # 2:1: auto wraps


def test_served_upscale_command_of_a_library_frame(model, tmp_path):
    """serve: `upscale` by cue queues a job on the worker; the upscaled frame is published and kept in the library
    as a new frame naming its source; what cannot be done is an error reply."""
    from conftest import RunningServer, wait_for
    from generator.library import FrameLibrary
    from td_bridge.receiver import CommandClient, CommandError, FrameReceiver

    library = FrameLibrary(tmp_path / "library")
    loads = []
    srv = RunningServer(library=library,
                        upscaler=lambda device: loads.append(device) or UpscaleBackend.load(str(model)))
    bare = RunningServer()
    try:
        with FrameReceiver(srv.frames) as rx, CommandClient(srv.commands, timeout=10) as client:
            wait_for(lambda: rx.connected)
            source_job = client.generate(prompt="a desert", width=128, height=64, steps=1, cue="dunes")
            source = wait_for(lambda: (f := rx.latest()) and f.meta["job_id"] == source_job["job_id"] and f)
            reply, _ = client.request("upscale", {"cue": "dunes", "upscale_factor": 1.5, "upscale_steps": 2})
            assert reply["params"]["source_frame_id"] == source.frame_id and reply["params"]["upscale_seed"] >= 0
            frame = wait_for(lambda: (f := rx.latest()) and f.meta["job_id"] == reply["job_id"] and f, timeout=60)
            assert frame.rgb.shape == (96, 192, 3) and frame.depth.dtype == np.uint16
            assert frame.meta["source_frame_id"] == source.frame_id and frame.meta["backend"] == "ldm3d-sr"
            entry = wait_for(lambda: library.get(frame.frame_id))
            assert entry.cue == "dunes" and library.latest_for_cue("dunes").frame_id == frame.frame_id
            assert len(loads) == 1  # loaded at the first upscale, once
            chained = client.generate(prompt="a canyon", width=128, height=64, steps=1, upscale=True,
                                      upscale_steps=1, upscale_factor=1.5, upscale_seed=4)
            assert chained["upscale"]["upscale_seed"] == 4
            first = wait_for(lambda: srv.server.jobs.get(chained["job_id"]).frame_id)
            upscaled = wait_for(lambda: (f := rx.latest()) and f.meta.get("source_frame_id") == first and f,
                                timeout=60)
            assert upscaled.rgb.shape == (96, 192, 3) and upscaled.meta["params"]["upscale_seed"] == 4
            for args, code in [({"cue": "nothing"}, "not_found"), ({"frame_id": source.frame_id,
                                                                  "upscale_steps": 0}, "bad_params"),
                               ({"frame_id": source.frame_id, "upscale_bogus": 1}, "bad_params")]:
                with pytest.raises(CommandError) as error:
                    client.request("upscale", args)
                assert error.value.code == code
            with pytest.raises(CommandError, match="without upscale = true") as error:
                client.generate(prompt="a canyon", upscale_steps=1)
            assert error.value.code == "bad_params"
        with CommandClient(bare.commands, timeout=10) as client:
            for cmd, args in [("upscale", {"frame_id": "latest"}), ("generate", {"upscale": True})]:
                with pytest.raises(CommandError, match="without an upscaler") as error:
                    client.request(cmd, args)
                assert error.value.code == "unavailable"
    finally:
        srv.close()
        bare.close()


def test_upscale_over_osc(model, tmp_path):
    """OSC: the upscale_* parameters are sticky like the generation ones, /depthfusion/upscale CUE queues an
    upscale of the newest frame with that cue (reply /queued with the upscale seed)."""
    from conftest import RunningServer, free_udp_port, wait_for
    from generator.library import FrameLibrary
    from generator.serving.osc import OscConfig
    from test_osc import SMALL, OscClient

    library = FrameLibrary(tmp_path / "library")
    srv = RunningServer(osc=OscConfig(port=free_udp_port()), library=library,
                        upscaler=lambda device: UpscaleBackend.load(str(model)))
    client = OscClient(srv.server.osc.port)
    try:
        for address, value in [*SMALL, ("/depthfusion/cue", "act 1"), ("/depthfusion/upscale_steps", 1),
                               ("/depthfusion/upscale_factor", 1.5), ("/depthfusion/upscale_seed", 11)]:
            assert client.ask(address, value)[0] == address
        _, (job_id, _) = client.ask("/depthfusion/generate")
        source = wait_for(lambda: (j := srv.server.jobs.get(job_id)).state == "done" and j.frame_id)
        address, (upscale_job, seed) = client.ask("/depthfusion/upscale", "act 1")
        assert address == "/depthfusion/queued" and seed == 11
        frame_id = wait_for(lambda: (j := srv.server.jobs.get(upscale_job)).state == "done" and j.frame_id,
                            timeout=60)
        header, rgb, _ = library.load(frame_id)
        assert header["source_frame_id"] == source and rgb.shape == (96, 192, 3)
        assert client.ask("/depthfusion/upscale_noise_level", 1000)[0] == "/depthfusion/error"
        address, args = client.ask("/depthfusion/upscale")
        assert address == "/depthfusion/error" and "takes 1 argument" in args[1]
    finally:
        client.close()
        srv.close()


def test_pregenerate_upscales_the_cues_that_ask_and_skips_what_is_done(model, tmp_path, capsys):
    from generator.__main__ import main
    from generator.library import FrameLibrary

    cues = tmp_path / "cues.toml"
    cues.write_text('[defaults]\nwidth = 128\nheight = 64\nsteps = 1\n\n[[cue]]\nname = "plain"\nprompt = "a room"\n\n'
                    '[[cue]]\nname = "big"\nprompt = "a forest"\nupscale = true\nupscale_steps = 1\n'
                    'upscale_factor = 1.5\n', encoding="utf-8")
    run = ["pregenerate", str(cues), "--model", "demo", "--library", str(tmp_path / "lib"), "--upscaler", str(model)]
    assert main(run) == 0
    library = FrameLibrary(tmp_path / "lib")
    big, plain = library.latest_for_cue("big"), library.latest_for_cue("plain")
    assert len(library) == 3 and plain.model == "demo" and big.model == str(model)
    header, rgb, _ = library.load(big.frame_id)
    assert rgb.shape == (96, 192, 3) and library.get(header["source_frame_id"]).model == "demo"
    capsys.readouterr()
    assert main(run) == 0 and "2 cues, 2 already" in capsys.readouterr().out and len(library) == 3
    cues.write_text('[[cue]]\nname = "odd"\nupscale_steps = 1\n', encoding="utf-8")
    assert main(run) == 2
