"""The LDM3D backend on tiny random-weight checkpoints, built and saved by the tests, loaded
through the same public path users call (no hub, CPU only)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest

import huggingface_hub
import torch  # noqa: E402  (the generator extra; `dev.py test` installs it)

import tiny_ldm3d  # noqa: E402
from conftest import ROOT, RunningServer, wait_for  # noqa: E402
from generator.backends import BackendUnavailable, Cancelled, load_backend  # noqa: E402
from generator.backends.ldm3d import make_scheduler  # noqa: E402
from td_bridge.params import validate_generation  # noqa: E402
from td_bridge.receiver import CommandClient, FrameReceiver  # noqa: E402


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm3d")
    return {channels: tiny_ldm3d.build(root / f"tiny-{channels}c", vae_channels=channels) for channels in (6, 4)}


@pytest.fixture(scope="session")
def backends(models):
    return {channels: load_backend(str(path)) for channels, path in models.items()}


def params(**overrides):
    return validate_generation({"prompt": "a misty forest at dawn", "seed": 7, "steps": 3, "width": 128,
                                "height": 64, "seamless": False, **overrides})


def run(backend, latents=None, **overrides):
    return backend.generate(params(**overrides), lambda s, n: None, lambda: False, latents=latents)


@pytest.mark.parametrize("channels", [6, 4])
@pytest.mark.parametrize("width, height", [(64, 64), (128, 64)])
def test_shapes_and_dtypes(backends, channels, width, height):
    backend = backends[channels]
    assert backend.name == "ldm3d" and backend.variant.channels == channels and backend.variant.scale_factor == 2
    out = run(backend, width=width, height=height)
    assert out.rgb.shape == (height, width, 3) and out.rgb.dtype == np.uint8
    assert out.depth.shape == (height, width) and out.depth.dtype == np.uint16
    assert out.info["vae_channels"] == channels and out.near is None and out.far is None


@pytest.mark.parametrize("channels", [6, 4])
def test_same_seed_same_frame_other_seed_other_frame(backends, channels):
    a, b, c = run(backends[channels]), run(backends[channels]), run(backends[channels], seed=8)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert not np.array_equal(a.rgb, c.rgb)


def test_depth_decoding_per_variant(backends):
    image = np.zeros((1, 2, 6), np.float32)
    image[0, 0, 3:6] = [0.5, 0x12 / 255, 0x34 / 255]  # channel 3 unused by the 6-channel packing
    image[0, 1, 3:6] = [0.0, 1.0, 1.0]
    np.testing.assert_array_equal(backends[6].variant.decode_depth(image), [[0x1234, 0xFFFF]])
    np.testing.assert_array_equal(backends[4].variant.decode_depth(image[..., :4]), [[32768, 0]])


def module_calls(backend):
    """Record the input shapes of every text-encoder, U-Net and VAE-decoder call, in order."""
    calls: list[tuple] = []
    handles = [module.register_forward_hook(
        lambda m, args, out, name=name: calls.append((name, *(tuple(a.shape) for a in args if torch.is_tensor(a)))))
        for name, module in (("text", backend.text_encoder), ("unet", backend.unet), ("vae", backend.vae.decoder))]
    return calls, handles


@pytest.mark.parametrize("channels, guidance, scheduler, spacing", [
    (6, 7.5, "ddim", "auto"), (6, 1.0, "ddim", "auto"), (4, 7.5, "ddim", "auto"), (4, 1.0, "ddim", "auto"),
    (4, 7.5, "dpm++", "auto"), (4, 7.5, "euler", "auto"), (4, 1.0, "ddim", "trailing"), (4, 1.0, "euler", "trailing"),
    (6, 1.0, "lcm", "auto"), (4, 1.0, "lcm", "auto"), (4, 2.0, "lcm", "auto"), (6, 1.0, "tcd", "auto"),
    (4, 1.0, "tcd", "auto")])
def test_rgb_matches_the_deprecated_diffusers_pipeline(backends, channels, guidance, scheduler, spacing):
    """Cross-check only: the deprecated pipeline is never used at run time. The comparison is exact because both
    sides run the same modules on the same shapes in the same order (asserted first): CPU kernels may round
    differently by batch size (MKL on AVX-512 does), so equal results are promised only for equal computations."""
    from diffusers import StableDiffusionLDM3DPipeline

    ours = backends[channels]
    pipe = StableDiffusionLDM3DPipeline(
        vae=ours.vae, text_encoder=ours.text_encoder, tokenizer=ours.tokenizer, unet=ours.unet,
        scheduler=make_scheduler(scheduler, ours.scheduler_config, spacing), safety_checker=None,
        feature_extractor=None,
        image_encoder=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    calls, handles = module_calls(ours)
    try:
        theirs = pipe("a misty forest at dawn", num_inference_steps=3, guidance_scale=guidance, height=64, width=128,
                      output_type="np", generator=torch.Generator("cpu").manual_seed(7),
                      eta=0.45 if scheduler == "tcd" else 0.0).rgb[0]  # the pipeline passes eta to DDIM too
        their_calls = list(calls)
        calls.clear()
        out = run(ours, guidance=guidance, scheduler=scheduler, spacing=spacing, eta=0.45)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == their_calls
    np.testing.assert_array_equal(out.rgb, np.round(theirs * 255).astype(np.uint8))


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++", "euler"])
def test_generation_never_waits_on_a_tensor_value(backends, scheduler):
    """No per-step host synchronisation: nothing turns a tensor into a Python value before the image is copied
    out (on a GPU each such read waits for the device). Euler is checked for explicit reads only: its step
    compares sigmas that diffusers keeps on the host on purpose, which a CPU run cannot tell apart."""
    from torch.utils._python_dispatch import TorchDispatchMode

    reads = {"item", "_local_scalar_dense", "nonzero", "equal"} | ({"is_nonzero"} if scheduler != "euler" else set())
    seen: list[str] = []

    class Reads(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ in reads:
                seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Reads():
        run(backends[4], steps=4, scheduler=scheduler)
    assert seen == []


def test_schedulers_run_and_differ(backends):
    outs = {name: run(backends[4], scheduler=name, guidance=1.0) for name in ("ddim", "dpm++", "euler", "lcm", "tcd")}
    for name in ("dpm++", "euler", "lcm", "tcd"):
        assert not np.array_equal(outs["ddim"].rgb, outs[name].rgb), name
    assert not np.array_equal(outs["lcm"].rgb, outs["tcd"].rgb)


def test_spacing_and_eta_change_what_they_should(backends):
    """Trailing spacing changes DDIM's timesteps; eta changes tcd (its step noise) and nothing else; lcm and tcd
    are seeded: the same seed gives the same frame."""
    backend = backends[4]
    assert not np.array_equal(run(backend, guidance=1.0).rgb, run(backend, guidance=1.0, spacing="trailing").rgb)
    assert run(backend, scheduler="ddim", guidance=1.0, spacing="trailing").info["timestep_spacing"] == "trailing"
    assert not np.array_equal(run(backend, scheduler="tcd", guidance=1.0, eta=0.0).rgb,
                              run(backend, scheduler="tcd", guidance=1.0, eta=0.9).rgb)
    np.testing.assert_array_equal(run(backend, scheduler="ddim", eta=0.0).rgb, run(backend, scheduler="ddim", eta=0.9).rgb)
    for name in ("lcm", "tcd"):
        np.testing.assert_array_equal(run(backend, scheduler=name, guidance=1.0).rgb,
                                      run(backend, scheduler=name, guidance=1.0).rgb)
    with pytest.raises(ValueError, match="at most 50 steps"):
        run(backend, scheduler="lcm", steps=51)


def test_progress_per_step_and_cancellation_within_one_step(backends):
    backend = backends[6]
    calls, steps = [], []
    handle = backend.unet.register_forward_hook(lambda *a: calls.append(1))
    try:
        backend.generate(params(steps=5), lambda s, n: steps.append((s, n)), lambda: False)
        assert steps == [(i, 5) for i in range(1, 6)] and len(calls) == 5
        calls.clear()
        with pytest.raises(Cancelled):
            backend.generate(params(steps=50), lambda s, n: steps.append(s), lambda: len(calls) >= 2)
        assert len(calls) == 2  # stopped before the third U-Net pass
    finally:
        handle.remove()


@pytest.mark.parametrize("channels", [6, 4])
def test_seamless_mode_treats_the_panorama_as_a_cylinder(backends, channels):
    """With wrap-around padding the model is equivariant to horizontal rotation: starting from
    latents rolled by k cells gives the image rolled by k·scale pixels, so the left and right
    edges are neighbours like any other columns. Without it, the edges are image borders."""
    backend = backends[channels]
    latents = torch.randn((1, 4, 32, 64), generator=torch.Generator().manual_seed(3))
    shift = 4  # latent cells: a multiple of the U-Net's downsampling (2)
    rolled = torch.roll(latents, shift, dims=3)

    def image(lat, seamless):
        out = run(backend, latents=lat, seamless=seamless)
        return np.concatenate([out.rgb.astype(np.int32), out.depth[..., None].astype(np.int32) >> 8], axis=-1)

    wrapped = image(latents, True)
    np.testing.assert_allclose(image(rolled, True), np.roll(wrapped, shift * 2, axis=1), atol=1)
    plain = image(latents, False)
    assert np.abs(image(rolled, False) - np.roll(plain, shift * 2, axis=1)).max() > 8
    # the switch is reversible: off again gives exactly the plain result
    np.testing.assert_array_equal(image(latents, False), plain)


def test_invalid_generation_inputs(backends):
    with pytest.raises(ValueError, match="latents must have shape"):
        run(backends[6], latents=torch.zeros((1, 4, 8, 8)))
    backend = backends[6]
    with pytest.raises(ValueError, match="multiples of 2"):
        backend.generate({**params(), "width": 129}, lambda s, n: None, lambda: False)


@pytest.fixture(scope="session")
def broken_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("broken")
    return {
        "vae3": tiny_ldm3d.build(root / "vae3", vae_channels=3),
        "sr": tiny_ldm3d.build(root / "sr", unet_in_channels=8),
        "width": tiny_ldm3d.build(root / "width", text_width=16),
    }


@pytest.mark.parametrize(
    "case, options, message",
    [
        ("vae3", {}, "decodes 3 channels"),
        ("sr", {}, "ldm3d-sr"),
        ("width", {}, "cross-attention width"),
        ("missing", {}, "neither an existing folder nor a hub id"),
        ("empty", {}, "has no model_index.json: not a model folder in the diffusers layout"),
        ("garbage-config", {}, "cannot load LDM3D"),
        ("hub", {"local_files_only": True}, "nothing of Intel/ldm3d-pano is in the Hugging Face cache"),
        ("ok", {"dtype": "fp16"}, "fp16 is not supported on the CPU"),
        ("ok", {"device": "cuda"}, "sees no CUDA GPU"),
        ("ok", {"device": "tpu"}, "device must be"),
    ],
)
def test_loading_errors_are_clear(models, broken_models, tmp_path, monkeypatch, case, options, message):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    if case == "empty":
        (tmp_path / "empty").mkdir()
        model = str(tmp_path / "empty")
    elif case == "garbage-config":
        import shutil

        model = str(shutil.copytree(models[6], tmp_path / "garbage"))
        (tmp_path / "garbage" / "unet" / "config.json").write_text("{not json")
    elif case == "missing":
        model = str(tmp_path / "no" / "such" / "folder")
    elif case == "hub":
        model = "Intel/ldm3d-pano"
    elif case == "ok":
        model = str(models[6])
    else:
        model = str(broken_models[case])
    with pytest.raises(BackendUnavailable, match=message):
        load_backend(model, **options)


def test_generate_cli_with_a_local_model(models, tmp_path):
    out = tmp_path / "shot"
    result = subprocess.run([sys.executable, "-m", "generator", "generate", "a misty forest", "--model",
                             str(models[6]), "-o", str(out), "--width", "64", "--height", "64", "--steps", "2",
                             "--seed", "5"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["backend"] == "ldm3d" and meta["model"] == str(models[6]) and meta["backend_info"]["vae_channels"] == 6
    assert meta["params"]["scheduler"] == "ddim" and meta["seed"] == 5


def test_served_ldm3d_frames_and_progress(backends):
    srv = RunningServer(backends[4])
    try:
        with FrameReceiver(srv.frames) as rx, CommandClient(srv.commands, timeout=10) as client:
            wait_for(lambda: rx.connected)
            assert client.status()["backend"] == "ldm3d"
            job = client.generate(prompt="a desert at night", seed=2, width=64, height=64, steps=4)
            frame = wait_for(lambda: (f := rx.latest()) and f.meta["job_id"] == job["job_id"] and f, timeout=60)
            assert frame.rgb.shape == (64, 64, 3) and frame.meta["backend_info"]["vae_channels"] == 4
            assert rx.event("progress")["total"] == 4
    finally:
        srv.close()


def test_long_prompts_are_truncated_with_a_warning(backends, caplog):
    out = run(backends[6], prompt=" ".join(["misty forest"] * 60))
    assert out.rgb.shape == (64, 128, 3)
    assert re.search(r"only the first 77", caplog.text)


def test_compile_modes_are_checked_before_the_weights_load(models):
    from generator.backends.ldm3d import COMPILE_MODES, compile_mode

    assert [compile_mode(value) for value in (True, False, None, "", *COMPILE_MODES)] == [
        "default", None, None, None, *COMPILE_MODES]
    with pytest.raises(BackendUnavailable, match="compile mode must be one of default, reduce-overhead"):
        load_backend(str(models[4]), compile="cudagraphs")
