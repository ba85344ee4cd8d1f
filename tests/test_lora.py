"""LoRA adapters on the tests' tiny LDM3D: LoRA files written by peft (diffusers naming) and by hand (kohya naming),
loaded through diffusers' loaders, per-frame weights, fusing, unloading, refusals."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import tiny_ldm3d
from generator.backends import BackendUnavailable, load_backend
from generator.backends.lora import LoraError, file_sha256, parse
from td_bridge.params import ParamError, validate_generation

pytestmark = pytest.mark.usefixtures("one_torch_thread")
RANK, ALPHA = 4, 8.0


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_ldm3d.build(tmp_path_factory.mktemp("lora") / "tiny-4c", vae_channels=4)


def attention_linears(unet):
    """The U-Net's attention projections, as SD 1.x LoRAs target them."""
    return {name: module for name, module in unet.named_modules()
            if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in ("to_q", "to_k", "to_v", "0")
            and ".attn" in name}


@pytest.fixture(scope="module")
def peft_lora(model, tmp_path_factory):
    """A LoRA on the U-Net and the text encoder, written as diffusers' training scripts write them (peft)."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModel

    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    text_encoder = CLIPTextModel.from_pretrained(model / "text_encoder")
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    # peft itself: transformers' own add_adapter wants a newer peft than PyPI has (0.22)
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["q_proj", "k_proj", "v_proj"]),
                            text_encoder)
    with torch.no_grad():
        for module in (unet, text_encoder):
            for name, parameter in module.named_parameters():
                if "lora_" in name:
                    parameter.normal_(0.0, 0.3)
    folder = tmp_path_factory.mktemp("peft-lora")
    StableDiffusionLoraLoaderMixin.save_lora_weights(
        folder, unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(text_encoder))
    return folder / "pytorch_lora_weights.safetensors"


def kohya_weights(unet, seed=2):
    """{module name: (down, up)} for every attention projection: kohya's lora_down (r × in) and lora_up (out × r)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: (torch.randn(RANK, module.in_features, generator=generator) * 0.3,
                   torch.randn(module.out_features, RANK, generator=generator) * 0.3)
            for name, module in attention_linears(unet).items()}


@pytest.fixture(scope="module")
def kohya_lora(model, tmp_path_factory):
    """A U-Net LoRA in kohya/A1111 naming (lora_unet_…, lora_down/lora_up, alpha), written by hand."""
    from diffusers import UNet2DConditionModel

    weights = kohya_weights(UNet2DConditionModel.from_pretrained(model / "unet"))
    state = {}
    for name, (down, up) in weights.items():
        key = "lora_unet_" + name.replace(".", "_")
        state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                      f"{key}.alpha": torch.tensor(ALPHA)})
    path = tmp_path_factory.mktemp("kohya-lora") / "style.safetensors"
    save_file(state, str(path))
    return path, weights


@pytest.fixture(scope="module")
def plain(model):
    return load_backend(str(model))


def run(backend, **overrides):
    params = validate_generation({"prompt": "a misty forest at dawn", "seed": 3, "steps": 2, "width": 64,
                                  "height": 64, "guidance": 1.0, "seamless": False, **overrides})
    return backend.generate(params, lambda step, total: None, lambda: False)


def test_a_lora_in_each_naming_changes_the_frame(model, plain, peft_lora, kohya_lora):
    base = run(plain)
    for source, targets in ((peft_lora, ("unet", "text_encoder")), (kohya_lora[0], ("unet",))):
        backend = load_backend(str(model), loras=(str(source),))
        (lora,) = backend.loras.loaded.values()
        assert lora.targets == targets and lora.sha256 == file_sha256(source)
        out = run(backend)
        assert not np.array_equal(out.rgb, base.rgb), source
        assert out.info["loras"] == [{"name": lora.name, "source": str(source), "file": source.name,
                                      "sha256": lora.sha256, "scale": 1.0}]


def test_scale_zero_and_none_are_the_model_without_the_lora(model, plain, peft_lora):
    backend = load_backend(str(model), loras=(f"style={peft_lora}:0.7",))
    base = run(plain)
    np.testing.assert_array_equal(run(backend, lora_1="style", lora_1_scale=0.0).rgb, base.rgb)
    np.testing.assert_array_equal(run(backend, lora_1="none").rgb, base.rgb)
    default, explicit = run(backend), run(backend, lora_1="style", lora_1_scale=0.7)  # all slots empty: 0.7
    np.testing.assert_array_equal(default.rgb, explicit.rgb)
    assert not np.array_equal(run(backend, lora_1="style", lora_1_scale=1.5).rgb, default.rgb)
    np.testing.assert_array_equal(run(backend).rgb, default.rgb)  # weights change between frames and come back


def test_unloading_restores_the_model_bit_for_bit(model, plain, peft_lora, kohya_lora):
    backend = load_backend(str(model))
    originals = {name: t.clone() for name, t in [*backend.unet.state_dict().items(),
                                                 *backend.text_encoder.state_dict().items()]}
    for spec in (f"a={peft_lora}", f"b={kohya_lora[0]}:0.5"):
        backend.loras.load(parse(spec))
    run(backend)
    backend.loras.fuse(backend.loras.weights(None))
    run(backend)
    backend.loras.unload()
    after = {**backend.unet.state_dict(), **backend.text_encoder.state_dict()}
    assert after.keys() == originals.keys()
    assert all(torch.equal(after[name], tensor) for name, tensor in originals.items())
    np.testing.assert_array_equal(run(backend).rgb, run(plain).rgb)


def test_fused_equals_unfused_within_rounding(model, peft_lora, kohya_lora):
    specs = (f"a={peft_lora}:0.8", f"b={kohya_lora[0]}:-0.6")
    unfused, fused = load_backend(str(model), loras=specs), load_backend(str(model), loras=specs, fuse_loras=True)
    a, b = run(unfused), run(fused)
    assert fused.loras.fused == {"a": 0.8, "b": -0.6} and b.info["loras_fused"]
    assert np.abs(a.rgb.astype(int) - b.rgb).max() <= 1  # float32: W·x + s·B(A·x) against (W + s·BA)·x
    assert np.abs(a.depth.astype(int) - b.depth).max() <= 64  # of 65535
    with pytest.raises(ParamError, match="fused"):
        fused.check(validate_generation({"lora_1": "a", "lora_1_scale": 0.3}))


def test_a_lora_merged_by_hand_generates_what_lora_generates(model, kohya_lora, tmp_path):
    """W + scale · alpha/rank · up · down written into a copy of the U-Net's weights."""
    from diffusers import UNet2DConditionModel

    path, weights = kohya_lora
    scale = 0.9
    merged = tmp_path / "merged"
    shutil.copytree(model, merged)
    unet = UNet2DConditionModel.from_pretrained(model / "unet")
    with torch.no_grad():
        for name, module in attention_linears(unet).items():
            down, up = weights[name]
            module.weight += scale * ALPHA / RANK * up @ down
    unet.save_pretrained(merged / "unet")
    by_hand, with_lora = run(load_backend(str(merged))), run(load_backend(str(model), loras=(f"{path}:{scale}",)))
    assert np.abs(by_hand.rgb.astype(int) - with_lora.rgb).max() <= 1
    assert np.abs(by_hand.depth.astype(int) - with_lora.depth).max() <= 64


def write(path, state):
    save_file(state, str(path))
    return path


def test_loras_for_other_architectures_and_non_loras_are_refused(model, tmp_path):
    wide = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"  # in the tiny U-Net: 64 → 64
    cases = {
        "sdxl-shaped": ({f"{wide}.lora_A.weight": torch.zeros(4, 640), f"{wide}.lora_B.weight": torch.zeros(640, 4)},
                        f"{wide}.lora_A.weight' has shape (4, 640)"),
        "missing-module": ({"unet.down_blocks.3.attentions.0.proj_in.lora_A.weight": torch.zeros(4, 8),
                            "unet.down_blocks.3.attentions.0.proj_in.lora_B.weight": torch.zeros(8, 4)},
                           "names no module of this model's unet"),
        "not-a-lora": ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(3)}, "model.diffusion_model"),
    }
    for name, (state, message) in cases.items():
        path = write(tmp_path / f"{name}.safetensors", state)
        with pytest.raises(LoraError, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_backend(str(model), loras=(str(path),))
    pickle = tmp_path / "old.bin"
    torch.save({"a": torch.zeros(1)}, pickle)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    for source, message in ((pickle, "pickles"), (garbage, "not a readable"), (tmp_path / "nowhere", "hub id"),
                            (tmp_path, "exactly one .safetensors")):
        with pytest.raises(LoraError, match=message):
            load_backend(str(model), loras=(str(source),))


def test_requests_are_checked_before_they_are_queued(model, peft_lora, kohya_lora):
    backend = load_backend(str(model), loras=(f"a={peft_lora}", f"b={kohya_lora[0]}"))
    for values, message in (({"lora_1": "c"}, "'c' is not loaded; loaded: a, b"),
                            ({"lora_1": "a", "lora_2": "a"}, "a in more than one slot"),
                            ({"lora_1": "none", "lora_2": "a"}, "cannot stand beside")):
        with pytest.raises(ParamError, match=message):
            backend.check(validate_generation(values))
    assert backend.check(validate_generation({"lora_2": "b", "lora_2_scale": 0.5})) == {"b": 0.5}
    demo = load_backend("demo")
    with pytest.raises(ParamError, match="demo backend takes no LoRAs"):
        demo.check(validate_generation({"lora_1": "a"}))
    demo.check(validate_generation({}))
    with pytest.raises(BackendUnavailable, match="demo backend takes no LoRAs"):
        load_backend("demo", loras=(str(peft_lora),))
    with pytest.raises(LoraError, match="two LoRAs are named 'a'"):
        load_backend(str(model), loras=(f"a={peft_lora}", f"a={kohya_lora[0]}"))


@pytest.mark.parametrize("text, expected", [
    ("style.safetensors", ("style", "style.safetensors", 1.0)),
    ("lcm=latent-consistency/lcm-lora-sdv1-5:0.8", ("lcm", "latent-consistency/lcm-lora-sdv1-5", 0.8)),
    (r"C:\loras\x.safetensors", ("x", r"C:\loras\x.safetensors", 1.0)),
    (r"C:\loras\x.safetensors:-0.5", ("x", r"C:\loras\x.safetensors", -0.5)),
    ("ByteDance/Hyper-SD/Hyper-SD15-4steps-lora.safetensors", ("Hyper-SD15-4steps-lora",
                                                                "ByteDance/Hyper-SD/Hyper-SD15-4steps-lora.safetensors",
                                                                1.0)),
])
def test_lora_arguments(text, expected):
    spec = parse(text)
    assert (spec.name, spec.source, spec.scale) == expected


@pytest.mark.parametrize("text, message", [("x.safetensors:9", "outside"), (":0.5", "no source"),
                                            ("bad name!=x.safetensors", "usable LoRA name")])
def test_bad_lora_arguments(text, message):
    with pytest.raises(LoraError, match=message):
        parse(text)


def test_generate_cli_records_the_lora(model, kohya_lora, tmp_path):
    from conftest import run_cli

    out = tmp_path / "frame"
    result = run_cli("generate", "a room", "--model", str(model), "--lora", f"style={kohya_lora[0]}:0.5",
                     "--width", "64", "--height", "64", "--steps", "2", "--guidance", "1", "-o", str(out))
    assert result.returncode == 0, result.stderr
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["backend_info"]["loras"] == [{"name": "style", "source": str(kohya_lora[0]), "file": "style.safetensors",
                                              "sha256": file_sha256(kohya_lora[0]), "scale": 0.5}]


# ------------------------------------------------------------------ --fast presets

def test_a_preset_sits_under_what_is_given():
    from generator.fast import PRESETS, with_preset

    params, loras = with_preset("tcd", {"steps": 2}, ["style=x.safetensors"])
    assert params == {"scheduler": "tcd", "steps": 2, "guidance": 0.0, "eta": 0.3}
    assert loras == ["tcd=h1t/TCD-SD15-LoRA/pytorch_lora_weights.safetensors:1.0", "style=x.safetensors"]
    assert with_preset("lcm", {}, ["lcm=mine.safetensors:0.5"])[1] == ["lcm=mine.safetensors:0.5"]  # yours wins
    assert with_preset(None, {"steps": 3}, []) == ({"steps": 3}, [])
    hyper = {name: preset.params for name, preset in PRESETS.items() if name.startswith("hyper")}
    assert hyper["hyper"] == {"scheduler": "ddim", "spacing": "trailing", "steps": 4, "guidance": 0.0}
    assert hyper["hyper-1"] == {"scheduler": "tcd", "eta": 1.0, "steps": 1, "guidance": 0.0}
    assert all(parse(preset.lora_spec()).source.endswith(".safetensors") for preset in PRESETS.values())


def test_generate_fast_loads_the_preset_lora_from_the_hub_cache(model, peft_lora, tmp_path):
    """The preset's hub file, laid out in a Hugging Face cache as huggingface_hub does, offline."""
    import os
    import subprocess
    import sys

    from conftest import CLI_ENV, ROOT

    repo = tmp_path / "hub" / "models--latent-consistency--lcm-lora-sdv1-5"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(peft_lora, snapshot / "pytorch_lora_weights.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    env = {**CLI_ENV, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    for extra, steps in (((), 4), (("--steps", "2"), 2)):
        out = tmp_path / f"frame-{steps}"
        result = subprocess.run([sys.executable, "-m", "generator", "generate", "a room", "--model", str(model),
                                 "--fast", "lcm", "--offline", "--width", "64", "--height", "64", *extra,
                                 "-o", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        meta = json.loads((out / "metadata.json").read_text())
        assert {k: meta["params"][k] for k in ("scheduler", "steps", "guidance")} == {
            "scheduler": "lcm", "steps": steps, "guidance": 0.0}
        (lora,) = meta["backend_info"]["loras"]
        assert (lora["name"], lora["sha256"]) == ("lcm", file_sha256(peft_lora))
        assert "licence: openrail++" in result.stderr
    assert os.listdir(snapshot) == ["pytorch_lora_weights.safetensors"]
