"""The panorama backend on tiny random-weight pipelines of every supported class (tiny_pipelines): 2:1 frames
through ``--model FOLDER`` with depth from a tiny estimator, published and stored like LDM3D frames; seamless at
the 0°/360° seam; LoRAs; presets; the licence table and ``--commercial``."""

import json

import numpy as np
import pytest
import torch

import tiny_depth
import tiny_pipelines
from conftest import wait_for
from generator.__main__ import main
from generator.backends import BackendUnavailable, load_backend
from generator.backends.licences import COMMERCIAL, commercial_problems, licence_of, table
from generator.backends.lora import LoraError
from generator.backends.pano import LatentRoller
from generator.backends.pano_presets import PRESETS, with_preset
from generator.library import FrameLibrary
from td_bridge.params import ParamError, validate_generation
from td_bridge.receiver import CommandClient, FrameReceiver

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SIZE = {"width": 128, "height": 64, "steps": 2}
UNET_KINDS = ("sd", "sdxl")
TRANSFORMER_KINDS = ("z-image", "flux", "qwen-image")
GUIDANCE = {"sd": {"guidance_scale": 3.0}, "sdxl": {"guidance_scale": 3.0}, "flux": {"guidance_scale": 3.0},
            "z-image": {"guidance_scale": 2.0}, "qwen-image": {"true_cfg_scale": 3.0}}  # each pipeline's own terms


@pytest.fixture(scope="module")
def estimator(tmp_path_factory):
    return tiny_depth.build("depth_anything", tmp_path_factory.mktemp("estimator") / "depth-anything")


@pytest.fixture(scope="module", params=tiny_pipelines.KINDS)
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {kind: tiny_pipelines.build(kind, root / kind) for kind in tiny_pipelines.KINDS}


@pytest.fixture(scope="module")
def backends(models, estimator):
    return {kind: load_backend(str(folder), estimator=str(estimator)) for kind, folder in models.items()}


def params(**overrides):
    return validate_generation({"prompt": "a misty forest at dawn", "seed": 5, "guidance": 3.0, **SIZE, **overrides})


def run(backend, **overrides):
    return backend.generate(params(**overrides), lambda step, total: None, lambda: False)


def test_each_class_generates_a_2to1_frame_through_model_folder(kind, models, estimator, tmp_path):
    out, library = tmp_path / "frame", tmp_path / "library"
    assert main(["generate", "a misty forest at dawn", "-o", str(out), "--model", str(models[kind]), "--estimator",
                 str(estimator), "--library", str(library), "--seed", "5", "--width", "128", "--height", "64",
                 "--steps", "2", "--guidance", "3"]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    info = meta["backend_info"]
    assert meta["backend"] == "pano" and info["pipeline"] == tiny_pipelines.CLASSES[kind]
    assert (meta["width"], meta["height"]) == (128, 64) and info["depth"]["projection"] == "equirectangular"
    assert info["estimator"] == str(estimator) and info["seam"] != "none"
    assert {key: info[key] for key in GUIDANCE[kind]} == GUIDANCE[kind]
    assert [entry["component"] for entry in info["licences"]] == [str(models[kind]), str(estimator)]
    (entry,) = FrameLibrary(library).find("", 10)
    _, rgb, depth = FrameLibrary(library).load(entry.frame_id)
    assert rgb.shape == (64, 128, 3) and depth.dtype == np.uint16 and depth.max() > depth.min()


def test_frames_are_published_and_stored_like_ldm3d_frames(kind, backends, make_server, tmp_path):
    library = FrameLibrary(tmp_path / "library")
    server = make_server(backends[kind], library=library)
    with FrameReceiver(server.frames) as receiver, CommandClient(server.commands, timeout=30.0) as client:
        wait_for(lambda: receiver.connected, what="the receiver to hear the status heartbeat")
        job = client.generate(prompt="a sunlit courtyard", seed=7, **SIZE)
        frame = wait_for(receiver.latest, timeout=60, what="a panorama frame")
    assert frame.meta["job_id"] == job["job_id"] and frame.meta["backend"] == "pano"
    assert frame.rgb.shape == (64, 128, 3) and frame.depth.shape == (64, 128)
    _, rgb, depth = wait_for(lambda: library.find("", 10) and library.load(frame.frame_id), what="the stored frame")
    np.testing.assert_array_equal(rgb, frame.rgb)
    np.testing.assert_array_equal(depth, frame.depth)


def test_sizes_the_pipeline_cannot_make_are_refused_before_queueing(backends):
    with pytest.raises(ParamError, match="2:1"):
        backends["sd"].check(params(width=128, height=128))
    # the schema's multiples of 8 fit these tiny models; 2x2 patches (packed for FLUX and Qwen-Image) on an 8x VAE
    # need 16 (2:1: 1040x520 no)
    assert {kind: backend.factor for kind, backend in backends.items()} == {"sd": 2, "sdxl": 2, "z-image": 4,
                                                                           "flux": 4, "qwen-image": 4}


# ------------------------------------------------------------------ seamless


def seam_mismatch(backend, seamless, monkeypatch):
    """How far the frame made from start noise rolled by half the width is from the frame rolled by half: 0 when no
    column is special, so the 0°/360° seam is as continuous as any neighbouring pair (the seam pair of one is an
    interior pair of the other). Meaningful on random weights, where the image itself has no structure to see."""
    plain = run(backend, seamless=seamless).rgb.astype(float)
    original = backend.pipe.prepare_latents
    half = plain.shape[1] // 2

    def rolled(*args, **kwargs):
        return torch.roll(original(*args, **kwargs), half // 2, dims=-1)  # latents: scale factor 2

    monkeypatch.setattr(backend.pipe, "prepare_latents", rolled)
    shifted = run(backend, seamless=seamless).rgb.astype(float)
    monkeypatch.undo()
    return np.abs(np.roll(plain, half, axis=1) - shifted).max()


@pytest.mark.parametrize("unet_kind", UNET_KINDS)
def test_unet_frames_wrap_around_the_seam(unet_kind, backends, monkeypatch):
    backend = backends[unet_kind]
    assert seam_mismatch(backend, True, monkeypatch) <= 2  # uint8 rounding of float noise
    assert seam_mismatch(backend, False, monkeypatch) > 20


def correlation(a, b):
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("transformer_kind", TRANSFORMER_KINDS)
def test_transformer_latents_roll_between_steps_and_back_before_decoding(transformer_kind, backends, monkeypatch):
    """Seamless: the transformer denoises the picture with SeamOverlap's context columns on each side; after each
    step the edges are blended with their copies, rolled, and the copies made anew; the latents decoded are those
    of the frame's own start noise (an unseamed run's), rolled back; the picture keeps its size."""
    backend = backends[transformer_kind]
    received, handed, decoded = [], [], []
    unpack, pack, decode = backend.unpack, backend.pack, backend.pipe.vae.decode
    monkeypatch.setattr(backend, "unpack", lambda latents, p: received.append(unpack(latents, p)) or received[-1])
    monkeypatch.setattr(backend, "pack", lambda grid: handed.append(grid) or pack(grid))
    monkeypatch.setattr(backend.pipe.vae, "decode",
                        lambda latents, *a, **k: decoded.append(latents.clone()) or decode(latents, *a, **k))
    frames = [run(backend, steps=3, guidance=1.0, seamless=seamless) for seamless in (True, False)]
    assert [frame.rgb.shape for frame in frames] == [(64, 128, 3)] * 2
    overlap, roller = backend.overlap(params()), backend._roller(params(steps=3))
    c, width = overlap.columns, 128 // (backend.factor // backend._patch)
    assert len(received) == 4 and all(grid.shape[-1] == width + 2 * c for grid in received)  # 3 steps, the result
    first = handed[1]  # handed[0]: the widened start noise
    assert torch.equal(first[..., c:-c], torch.roll(overlap.join(received[0]), roller.shift, dims=-1))
    assert torch.equal(first[..., :c], first[..., -2 * c:-c]) and torch.equal(first[..., -c:], first[..., c:2 * c])
    rolled, plain = decoded  # only the frame's own columns are decoded: the wide picture's ends are not neighbours
    assert rolled.shape == plain.shape and rolled.shape[-1] == width
    # the start noise dominates a tiny model's result: rolled back, the two line up
    assert correlation(rolled, plain) > 0.9 > correlation(rolled, plain.roll(32, -1))


@pytest.mark.parametrize("any_kind", tiny_pipelines.KINDS)
def test_our_decoding_is_the_pipelines_own(any_kind, backends):
    """decode_latents (the seamless transformers' decoding of their own columns) gives what the pipeline's own
    output_type="np" decoding gives for the same latents: scale, shift, Qwen-Image's per-channel statistics."""
    from generator.backends.vae_latents import decode_latents

    backend = backends[any_kind]
    given = params(seamless=False, steps=1)
    with torch.inference_mode():
        latents = backend.pipe(**backend._call_options(given), output_type="latent").images
        image = backend.pipe(**backend._call_options(given), output_type="np").images[0]
        ours = decode_latents(backend.pipe, backend.unpack(latents, given))
    assert ours.shape == image.shape == (64, 128, 3)
    np.testing.assert_allclose(ours, image, atol=1e-5)


@pytest.mark.parametrize("packed_kind", ("flux", "qwen-image"))
def test_our_encoding_is_the_img2img_pipelines_own(packed_kind, backends, monkeypatch):
    """encode_rgb (remix's source latents) gives what diffusers' own img2img pipeline of the family encodes for the
    same image (its _encode_vae_image, with the VAE's mean where it samples): FLUX's shift and scale, Qwen-Image's
    per-channel statistics of one video frame."""
    import importlib

    from generator.backends.vae_latents import encode_rgb

    backend = backends[packed_kind]
    name, cls = {"flux": ("flux.pipeline_flux_img2img", "FluxImg2ImgPipeline"),
                 "qwen-image": ("qwenimage.pipeline_qwenimage_img2img", "QwenImageImg2ImgPipeline")}[packed_kind]
    module = importlib.import_module(f"diffusers.pipelines.{name}")
    reference = getattr(module, cls)
    monkeypatch.setattr(module, "retrieve_latents", lambda output, generator=None: output.latent_dist.mode())
    rgb = np.random.default_rng(3).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    with torch.inference_mode():
        ours = encode_rgb(backend.pipe, rgb, backend.device)
        theirs = reference._encode_vae_image(backend.pipe, pixels[:, :, None] if packed_kind == "qwen-image"
                                             else pixels, generator=None)
    theirs = theirs[:, :, 0] if packed_kind == "qwen-image" else theirs
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_vae_that_asks_for_it_runs_in_fp32_and_goes_back_after(backends):
    """SDXL's VAE config says force_upcast (it overflows in fp16): our encode and decode run it in fp32, as diffusers'
    pipelines do, then hand it back in fp16; under model offload the pipeline's hooks put it back on the CPU."""
    import copy
    from types import SimpleNamespace

    from generator.backends.vae_latents import _running

    for asks, inside in ((True, torch.float32), (False, torch.float16)):
        vae, freed = copy.deepcopy(backends["sdxl"].pipe.vae).half(), []
        vae.register_to_config(force_upcast=asks)
        with _running(SimpleNamespace(vae=vae, maybe_free_model_hooks=lambda: freed.append(True))) as dtype:
            assert dtype == vae.dtype == inside
        assert vae.dtype == torch.float16 and freed == [True]


def test_auto_precision_is_bf16_for_transformers(models, estimator, monkeypatch):
    """--dtype auto asks for bf16 first for the transformer pipelines (trained in bf16; Qwen-Image overflows fp16)."""
    import generator.backends.ldm3d as ldm3d

    asked, pick = {}, ldm3d.pick_dtype
    monkeypatch.setattr(ldm3d, "pick_dtype", lambda name, device, bf16_first=False: asked.update(
        {name: bf16_first}) or pick(name, device, bf16_first))
    for kind_, first in (("sd", False), ("z-image", True)):
        load_backend(str(models[kind_]), estimator=str(estimator))
        assert asked == {"auto": first}
    cuda = torch.device("cuda")
    for supported, expected in ((True, torch.bfloat16), (False, torch.float16)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, supported=supported, **k: supported)
        assert pick("auto", cuda, bf16_first=True) is expected
        assert pick("auto", cuda) is torch.float16 and pick("auto", torch.device("cpu"), True) is torch.float32


def test_the_seam_overlap_blends_each_edge_with_its_copy_towards_the_seam():
    from generator.backends.pano import SeamOverlap

    overlap = SeamOverlap(columns=4, scale=8)
    inner = torch.arange(20.0).reshape(1, 1, 1, 20)
    wide = overlap.widen(inner)
    assert overlap.pixels == 32 and torch.equal(wide[..., :4], inner[..., -4:]) and torch.equal(wide[..., -4:],
                                                                                                inner[..., :4])
    assert torch.allclose(overlap.join(wide), inner)  # copies that agree change nothing
    left, right = wide.clone(), wide.clone()
    left[..., :4] += 8.0  # the copy of the last columns, denoised left of the first: other values
    right[..., -4:] += 8.0
    ramp = torch.tensor([1.0, 2.0, 3.0, 4.0])  # eighths: the copy's weight, one half at the seam
    assert torch.allclose(overlap.join(left) - inner, torch.cat([torch.zeros(16), ramp]).reshape(1, 1, 1, 20))
    assert torch.allclose(overlap.join(right) - inner, torch.cat([ramp.flip(0), torch.zeros(16)]).reshape(1, 1, 1, 20))


def test_latents_roll_by_whole_shifts_and_back():
    roller = LatentRoller(shift=8, steps=3)
    latents = torch.arange(64.0).reshape(1, 1, 1, 64)
    moved = roller(latents, 0)
    assert torch.equal(moved, torch.roll(latents, 8, dims=-1))
    assert torch.equal(roller(roller(moved, 1), 2), latents)  # the last step rolls the total back


@pytest.mark.parametrize("packed_kind", ("flux", "qwen-image"))
def test_guidance_reaches_the_pipeline_in_its_own_terms(packed_kind, backends, monkeypatch):
    """FLUX: one pass per step with g as its guidance embedding; Qwen-Image: a second, negative pass at g > 1."""
    backend = backends[packed_kind]
    calls = []
    forward = backend.pipe.transformer.forward

    def spy(*args, **kwargs):
        calls.append(kwargs.get("guidance"))
        return forward(*args, **kwargs)

    monkeypatch.setattr(backend.pipe.transformer, "forward", spy)
    for guidance in (3.0, 1.0):
        run(backend, guidance=guidance, seamless=False)
    if packed_kind == "flux":
        assert [float(g[0]) for g in calls] == [3.0, 3.0, 1.0, 1.0]
    else:
        assert calls == [None] * 6  # 2 steps x 2 passes, then 2 x 1


@pytest.mark.parametrize("packed_kind", ("flux", "qwen-image"))
def test_packed_latents_unpack_pack_and_roll_by_whole_patches(packed_kind, backends):
    backend = backends[packed_kind]
    pipe, roller = backend.pipe, backend._roller(params(steps=3))
    grid = torch.arange(4 * 32 * 64.0).reshape(1, 4, 32, 64)  # (B, C, H, W) latents of a 128x64 frame
    tokens = pipe._pack_latents(grid, 1, 4, 32, 64)
    assert tokens.shape == (1, 16 * 32, 16) and torch.equal(backend.unpack(tokens, params()), grid)
    assert torch.equal(backend.pack(grid), tokens)
    moved = backend.pack(roller(backend.unpack(tokens, params()), 0))
    assert moved.shape == tokens.shape and roller.shift == 16  # a quarter: 8 patches
    unpacked = pipe._unpack_latents(moved, 64, 128, pipe.vae_scale_factor).reshape(grid.shape)  # Qwen: (B, C, 1, …)
    assert torch.equal(unpacked, torch.roll(grid, 16, dims=-1))


@pytest.mark.parametrize("transformer_kind", TRANSFORMER_KINDS)
def test_the_vae_wraps_while_seamless(transformer_kind, backends):
    backend = backends[transformer_kind]
    shape = (1, 4, 1, 32, 64) if transformer_kind == "qwen-image" else (1, 4, 32, 64)  # Qwen-Image's: one frame
    latents = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    mismatch = {}
    for seamless in (True, False):
        run(backend, seamless=seamless, steps=1)  # sets the VAE as a frame would
        with torch.inference_mode():
            decode = lambda z: backend.pipe.vae.decode(z).sample  # noqa: E731
            mismatch[seamless] = (torch.roll(decode(latents), 64, dims=-1) - decode(torch.roll(latents, 32, -1))).abs().max()
    assert mismatch[True] < 1e-4 < mismatch[False]


@pytest.mark.parametrize("transformer_kind", TRANSFORMER_KINDS)
def test_the_vae_encoder_wraps_while_seamless(transformer_kind, backends):
    """Remix encodes its source with the wrapping VAE: an image rolled by whole latent cells encodes to the rolled
    encoding (the stride-2 downsamplers' own one-column right pad included: Qwen-Image's is a ZeroPad2d)."""
    from generator.backends.seamless import set_seamless
    from generator.backends.vae_latents import encode_rgb

    backend = backends[transformer_kind]
    rgb = np.random.default_rng(0).integers(0, 256, (64, 128, 3), dtype=np.uint8)
    mismatch = {}
    for seamless in (True, False):
        set_seamless(backend.pipe.vae, seamless)
        with torch.inference_mode():
            plain = encode_rgb(backend.pipe, rgb, backend.device)
            rolled = encode_rgb(backend.pipe, np.roll(rgb, 64, axis=1), backend.device)
        mismatch[seamless] = (torch.roll(plain, 64 // backend.pipe.vae_scale_factor, dims=-1) - rolled).abs().max()
    assert mismatch[True] < 1e-4 < mismatch[False], mismatch


# ------------------------------------------------------------------ LoRAs


def write_lora(kind, models, folder, seed=1):
    """A rank-4 LoRA on the denoiser's attention projections, saved as diffusers' training scripts save them."""
    import diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe_class = getattr(diffusers, tiny_pipelines.CLASSES[kind])
    part = "unet" if kind in UNET_KINDS else "transformer"
    model_class = getattr(diffusers, json.loads((models[kind] / part / "config.json").read_text())["_class_name"])
    model = model_class.from_pretrained(models[kind] / part)
    torch.manual_seed(seed)
    model.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.normal_(0.0, 1.0)  # strong enough to show through the tiny Qwen-Image VAE
    pipe_class.save_lora_weights(folder, **{f"{part}_lora_layers": get_peft_model_state_dict(model)})
    return folder / "pytorch_lora_weights.safetensors"


def test_a_lora_applies_and_is_recorded(kind, models, estimator, backends, tmp_path):
    path = write_lora(kind, models, tmp_path)
    backend = load_backend(str(models[kind]), estimator=str(estimator), loras=(f"style={path}:1.0",))
    plain, styled = run(backends[kind]).rgb.astype(float), run(backend)
    assert np.abs(styled.rgb.astype(float) - plain).mean() > 1.0
    (record,) = styled.info["loras"]
    assert record["name"] == "style" and len(record["sha256"]) == 64
    assert styled.info["licences"][1]["component"] == str(path)
    off = run(backend, lora_1="style", lora_1_scale=0.0).rgb.astype(float)
    assert np.abs(off - plain).max() <= 2


def test_a_lora_for_another_architecture_is_refused(models, estimator, tmp_path):
    path = write_lora("sd", models, tmp_path)
    with pytest.raises(LoraError, match=str(path)):
        load_backend(str(models["z-image"]), estimator=str(estimator), loras=(str(path),))


# ------------------------------------------------------------------ classes, presets


def test_unsupported_pipeline_classes_are_refused_by_name(models, tmp_path):
    folder = tmp_path / "sd3"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusion3Pipeline"}))
    with pytest.raises(BackendUnavailable, match="StableDiffusion3Pipeline is not supported.*QwenImagePipeline"):
        load_backend(str(folder))
    (folder / "model_index.json").write_text("[1, 2]")
    with pytest.raises(BackendUnavailable, match="no _class_name"):
        load_backend(str(folder))
    with pytest.raises(BackendUnavailable, match="preset:qwen-360"):
        load_backend("preset:nope")


def test_a_preset_sits_under_what_is_given():
    given, loras = with_preset("preset:qwen-360", {"steps": 20}, [])
    assert given == {"width": 2048, "height": 1024, "steps": 20, "guidance": 4.0}
    assert loras == ["qwen-360=ProGamerGov/qwen-360-diffusion/qwen-360-diffusion-int8-bf16-v1.safetensors:1.0"]
    assert with_preset("preset:qwen-360", {}, ["qwen-360=mine.safetensors"])[1] == ["qwen-360=mine.safetensors"]
    assert with_preset("some/model", {"steps": 3}, ["a.safetensors"]) == ({"steps": 3}, ["a.safetensors"])
    for preset in PRESETS.values():
        width, height = preset.params.get("width", 1024), preset.params.get("height", 512)
        assert width == 2 * height and preset.source and preset.unverified


# ------------------------------------------------------------------ licences


def test_every_licence_entry_has_a_source_and_every_named_model_an_entry():
    from generator.estimators.checkpoints import KNOWN
    from generator.fast import PRESETS as FAST

    entries = table()
    for name, entry in entries.items():
        assert entry.commercial in COMMERCIAL and entry.source, name
        assert entry.source.startswith("https://"), name
    named = [*KNOWN, "Intel/ldm3d", "Intel/ldm3d-4c", "Intel/ldm3d-pano", "Intel/ldm3d-sr",
             *("/".join(preset.lora.split("/")[:2]) for preset in FAST.values()),
             *("/".join(part.split("/")[:2]) for preset in PRESETS.values() for part in preset.components())]
    assert [name for name in named if name not in entries] == []
    assert entries["depth-anything/Depth-Anything-V2-Base-hf"].commercial == "no"
    assert entries["depth-anything/Depth-Anything-V2-Small-hf"].commercial == "yes"


def test_a_model_card_beside_a_folder_gives_its_licence(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\ntags: [x]\n---\n# a model\n")
    assert (licence_of(str(tmp_path)).licence, licence_of(str(tmp_path)).commercial) == ("Apache-2.0", "yes")
    assert licence_of(str(tmp_path / "missing")).commercial == "unknown"
    (tmp_path / "README.md").write_text("---\nlicense: other\n---\n")
    assert commercial_problems([str(tmp_path)])


def test_commercial_refuses_non_commercial_and_unknown_components_before_loading(monkeypatch, caplog, tmp_path):
    def never(*args, **kwargs):
        raise AssertionError("--commercial must refuse before anything loads")

    monkeypatch.setattr("generator.backends.load_backend", never)
    out = str(tmp_path / "out")
    assert main(["generate", "a room", "-o", out, "--model", "preset:flux-360", "--commercial"]) == 2
    assert "black-forest-labs/FLUX.1-dev: FLUX.1 [dev] Non-Commercial License does not allow commercial use" \
        in caplog.text
    caplog.clear()
    assert main(["generate", "a room", "-o", out, "--model", "Intel/ldm3d-pano", "--commercial",
                 "--lora", "style=some/where/x.safetensors"]) == 2
    assert "some/where/x.safetensors: unknown has no licence" in caplog.text
    caplog.clear()
    assert main(["serve", "--model", "preset:z-image-360", "--estimator", "depth-anything/Depth-Anything-V2-Large-hf",
                 "--commercial"]) == 2
    assert "Depth-Anything-V2-Large-hf: CC-BY-NC-4.0" in caplog.text and "Z-Image" not in caplog.text


def test_commercial_passes_components_whose_cards_allow_it(models, estimator, tmp_path):
    for folder, licence in ((models["sd"], "mit"), (estimator, "apache-2.0")):
        (folder / "README.md").write_text(f"---\nlicense: {licence}\n---\n")
    try:
        out = tmp_path / "frame"
        assert main(["generate", "a room", "-o", str(out), "--model", str(models["sd"]), "--estimator",
                     str(estimator), "--no-library", "--commercial", "--width", "128", "--height", "64",
                     "--steps", "1"]) == 0
        licences = json.loads((out / "metadata.json").read_text())["backend_info"]["licences"]
        assert [(entry["licence"], entry["commercial"]) for entry in licences] == [("MIT", "yes"),
                                                                                   ("Apache-2.0", "yes")]
    finally:
        for folder in (models["sd"], estimator):
            (folder / "README.md").unlink()


def test_ldm3d_frames_list_their_licences_too(tmp_path):
    import tiny_ldm3d

    model = tiny_ldm3d.build(tmp_path / "ldm3d", vae_channels=4)
    (model / "README.md").write_text("---\nlicense: creativeml-openrail-m\n---\n")
    frame = run(load_backend(str(model)), width=64, height=64, seamless=False)
    assert frame.info["licences"] == [{"component": str(model), "licence": "CreativeML OpenRAIL-M",
                                       "commercial": "yes", "source": f"{model / 'README.md'} (front matter)"}]
