"""`train lcm-lora` on tiny random-weight LDM3D teachers (CPU, offline): the consistency loss falls, the distilled
2-step student is closer to the teacher's 50-step output than 2 lcm steps without the LoRA, resume is exact, the
output loads with `--lora`, bad inputs are refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import tiny_ldm3d
import tiny_train
from generator.__main__ import main
from generator.backends import load_backend
from generator.train.dataset import DatasetError
from generator.train.lcm_lora import (INFO_FILE, LORA_FILE, DDIMSolver, LcmLoraTrainer, boundary_scalings,
                                      frame_distances)
from generator.train.options import LCM_LORA, LCM_LORA_DEFAULTS, ConfigError, resolve
from td_bridge.params import validate_generation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ("a misty forest at dawn", "a sunlit courtyard", "a desert at night", "a room")
W_RANGE = (1.0, 3.0)  # the teacher's guidance 2 … 4; the reference frames use the middle, 3


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def build_teacher(folder, vae_channels=6, seed=0):
    """tiny_ldm3d's model with a smaller U-Net (widths 16/32) and a 3-level VAE (scale factor 4), so that a 64×64
    frame is 16×16 latents and a distillation step takes tens of milliseconds."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    tiny_ldm3d.build(folder, vae_channels=vae_channels, seed=seed)
    torch.manual_seed(seed)
    UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=16, in_channels=4,
                         out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                         up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
                         attention_head_dim=4, norm_num_groups=8).save_pretrained(folder / "unet")
    AutoencoderKL(in_channels=vae_channels, out_channels=vae_channels, block_out_channels=(16, 16, 32),
                  norm_num_groups=8, down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, latent_channels=4).save_pretrained(folder / "vae")
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("lcm-lora")
    prompts = root / "prompts.txt"
    prompts.write_text("# one a line\n" + "\n".join(PROMPTS) + "\n", encoding="utf-8")
    m6 = build_teacher(root / "m6")
    # the teacher's own samples, made once: every run below copies them (same records: reused, not sampled again)
    sampler = LcmLoraTrainer(config({"m6": m6, "prompts": prompts}, root / "samples"))
    sampler._sources(sampler._load_teacher())
    return {"root": root, "m6": m6, "prompts": prompts, "latents": root / "samples" / "latents",
            "train": tiny_train.demo_dataset(root / "lib", root / "train", range(4), channels=6, size=32)}


def config(world, out, **overrides):
    values = {"model": str(world["m6"]), "from_teacher": str(world["prompts"]), "output": str(out),
              "sample_width": 64, "sample_height": 64, "sample_steps": 10, "samples_per_prompt": 2, "rank": 8,
              "alpha": 8, "lora_conv": True, "w_min": W_RANGE[0], "w_max": W_RANGE[1], "batch_size": 8, "lr": 5e-3,
              "steps": 100, "seamless": False, "checkpoint_every": 1000, "log_every": 10, "validation_prompts": "",
              **overrides}
    if "latents" in world and values.get("from_teacher") and not (out / "latents").exists():
        shutil.copytree(world["latents"], out / "latents")
    return resolve(values, LCM_LORA, LCM_LORA_DEFAULTS)


def frames(backend, steps, guidance, scheduler, seeds=range(5000, 5004), prompts=("a misty forest at dawn", "a room")):
    out = []
    for seed in seeds:  # held out: the teacher's training samples used seeds 0 … 7
        for prompt in prompts:
            params = validate_generation({"prompt": prompt, "seed": seed, "steps": steps, "guidance": guidance,
                                          "scheduler": scheduler, "width": 64, "height": 64, "seamless": False})
            out.append(backend.generate(params, lambda step, total: None, lambda: False))
    return out


@pytest.fixture(scope="module")
def distilled(world):
    """100 steps of distillation from the teacher's samples (batch 8): the fixed-batch loss before and during, and
    the trainer (its student) after saving the LoRA file."""
    run = LcmLoraTrainer(config(world, world["root"] / "distilled"))
    run.setup()
    generator = torch.Generator().manual_seed(0)
    items = [run.dataset[i] for i in range(8)]
    latents, text = torch.stack([i["latents"] for i in items]), run.embed([i["caption"] for i in items])
    index = torch.linspace(0, run.config.num_ddim_timesteps - 1, 8).round().long()  # across the whole grid
    noise, w = torch.randn(latents.shape, generator=generator), torch.full((8,), 2.0)

    def fixed_loss():
        with torch.no_grad():
            return run.distillation_loss(latents, text, index, noise, w).item()

    losses, batches = [fixed_loss()], run._batches()
    for step in range(1, run.config.steps + 1):
        run.train_batch(next(batches))
        if step % 25 == 0:
            losses.append(fixed_loss())
    run.step = run.config.steps
    return run, run.save_output(), losses


def test_the_consistency_loss_falls(distilled):
    _, _, losses = distilled
    assert losses[-1] < 0.8 * losses[0], losses  # here: 0.072 → 0.055, 0.044, 0.043, 0.040 (every 25 steps)
    assert all(np.isfinite(losses))


def test_the_two_step_student_is_closer_to_the_teacher_than_two_steps_without_the_lora(world, distilled):
    _, lora, _ = distilled
    plain, student = load_backend(str(world["m6"])), load_backend(str(world["m6"]), loras=(str(lora),))
    teacher = frames(plain, 50, 1.0 + sum(W_RANGE) / 2, "ddim")
    # mean absolute distance on [0, 1] (the teacher's frames from other seeds are 0.17 away); here, 2 steps: RGB
    # 0.0255 → 0.0199, depth 0.0227 → 0.0183 (lcm adds fresh noise before its second step, which bounds what any
    # student reaches: longer runs level off near 0.019); 1 step: RGB 0.0217 → 0.0132, depth 0.0201 → 0.0120
    for steps, ratio in ((2, 0.85), (1, 0.7)):
        without = frame_distances(frames(plain, steps, 1.0, "lcm"), teacher)
        with_lora = frame_distances(frames(student, steps, 1.0, "lcm"), teacher)
        assert with_lora["rgb_error"] < ratio * without["rgb_error"], (steps, without, with_lora)
        assert with_lora["depth_error"] < ratio * without["depth_error"], (steps, without, with_lora)


def test_the_output_loads_with_lora_as_trained(world, distilled):
    run, lora, _ = distilled
    info = json.loads((lora.parent / INFO_FILE).read_text())
    assert lora.name == LORA_FILE and info["teacher"] == str(world["m6"]) and info["vae_channels"] == 6
    assert (info["rank"], info["alpha"], info["steps"], info["seamless"]) == (8, 8.0, 100, False)
    assert info["w_range"] == list(W_RANGE) and info["guidance_range"] == [2.0, 4.0] and info["loss"] == "huber"
    backend = load_backend(str(world["m6"]), loras=(str(lora),))
    (loaded,) = backend.loras.loaded.values()
    assert loaded.targets == ("unet",)
    x = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    t, text = torch.tensor([999, 499]), run.embed(["a room", "a desert at night"])
    with torch.no_grad():
        trained = run.student.eval()(x, t, text).sample
        backend.loras.activate(backend.loras.weights(None))
        again = backend.unet(x, t, text).sample
        backend.loras.activate({loaded.name: 0.0})
        off = backend.unet(x, t, text).sample
        with run.teacher() as teacher:
            base = teacher(x, t, text).sample
    assert torch.equal(trained, again)  # alpha = rank: bit for bit
    assert torch.equal(off, base) and not torch.equal(trained, base)  # LoRA off: the teacher


def test_alpha_other_than_rank_is_kept_in_the_weights(world):
    run = LcmLoraTrainer(config(world, world["root"] / "alpha", rank=4, alpha=8, steps=2, batch_size=2,
                                lora_conv=False))
    lora = run.run()
    assert json.loads((lora.parent / INFO_FILE).read_text())["alpha_in_weights"] is True
    backend = load_backend(str(world["m6"]), loras=(str(lora),))
    backend.loras.activate(backend.loras.weights(None))
    x = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = run.student.eval()(x, torch.tensor([499]), run.embed(["a room"])).sample
        got = backend.unet(x, torch.tensor([499]), run.embed(["a room"])).sample
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def _state(run):
    tensors = {f"lora.{k}": v for k, v in run.student.state_dict().items() if ".lora_" in k}
    for i, per_param in run.opt.state_dict()["state"].items():
        tensors |= {f"opt.{i}.{k}": v for k, v in per_param.items() if torch.is_tensor(v)}
    return tensors


def test_resume_continues_bit_identically(world):
    """From a dataset (VAE posterior samples), seamless (random rolls) with crops and validation on the way."""
    root = world["root"] / "resume"
    options = {"dataset": str(world["train"]), "from_teacher": None, "steps": 4, "batch_size": 2, "seamless": True,
               "resolution": 16, "validation_prompts": "a room", "validate_every": 2, "validation_teacher_steps": 3,
               "validation_steps": 2, "log_every": 1}
    whole = LcmLoraTrainer(config(world, root / "whole", checkpoint_every=2, **options))
    whole.run()
    expected = _state(whole)
    checkpoint = root / "whole" / "checkpoints" / "step-00000002"
    from safetensors.torch import load_file

    saved = load_file(str(checkpoint / "model.safetensors"))
    assert saved and all(".lora_" in k for k in saved)  # the LoRA only: the teacher is the model itself
    resumed = LcmLoraTrainer(config(world, root / "resumed", resume=str(checkpoint), **options))
    resumed.run()
    got = _state(resumed)
    assert got.keys() == expected.keys() and len(got) > 40
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, different[:5]
    rows = (root / "resumed" / "logs" / "lcm-lora.csv").read_text().splitlines()
    whole_rows = (root / "whole" / "logs" / "lcm-lora.csv").read_text().splitlines()
    header = whole_rows[0].split(",")
    assert {"loss", "val_rgb_error", "val_depth_error"} <= set(header)
    assert [r.split(",")[0] for r in rows[1:]] == ["3", "4"]
    assert [r.split(",")[2] for r in rows[1:]] == [r.split(",")[2] for r in whole_rows[3:]]  # same losses
    assert sorted(p.name for p in (root / "whole" / "validation").iterdir()) == ["step-00000002", "step-00000004",
                                                                                 "teacher"]
    assert sorted(p.name for p in (root / "whole" / "validation" / "teacher").iterdir()) == ["00.depth.png", "00.png"]


def test_cli_distils_a_four_channel_panorama_teacher(world, tmp_path, capsys):
    m4 = build_teacher(tmp_path / "m4", vae_channels=4)
    out = tmp_path / "pano-lora"
    args = ["train", "lcm-lora", "--model", str(m4), "--from-teacher", str(world["prompts"]), "--output", str(out),
            "--sample-width", "128", "--sample-height", "64", "--sample-steps", "2", "--steps", "2", "--batch-size",
            "2", "--rank", "4", "--alpha", "4", "--lora-conv", "--lr", "1e-3", "--num-ddim-timesteps", "50",
            "--w-min", "3", "--w-max", "15", "--loss", "l2", "--validation-prompts", ""]
    assert main(args) == 0 and f"trained lcm-lora: {out / LORA_FILE}" in capsys.readouterr().out
    info = json.loads((out / INFO_FILE).read_text())
    assert info["seamless"] is True and info["vae_channels"] == 4 and info["size"] == [64, 128]
    assert info["source"] == {"from_teacher": str(world["prompts"])} and info["loss"] == "l2"
    assert len(list((out / "latents").glob("train-*.safetensors"))) == 4
    shot = tmp_path / "shot"
    code = main(["generate", "a room", "--model", str(m4), "--lora", f"lcm={out / LORA_FILE}", "--scheduler", "lcm",
                 "--steps", "2", "--guidance", "1", "--width", "128", "--height", "64", "-o", str(shot),
                 "--no-library"])
    assert code == 0
    meta = json.loads((shot / "metadata.json").read_text())
    assert meta["backend_info"]["loras"][0]["name"] == "lcm" and meta["backend_info"]["vae_channels"] == 4


def test_a_four_channel_dataset_trains(world, tmp_path):
    m4 = build_teacher(tmp_path / "m4", vae_channels=4)
    data = tiny_train.demo_dataset(tmp_path / "lib", tmp_path / "rgbd4", range(2), channels=4, size=32)
    lora = LcmLoraTrainer(config(world, tmp_path / "out", model=str(m4), dataset=str(data), from_teacher=None,
                                 steps=2, batch_size=2)).run()
    assert load_backend(str(m4), loras=(str(lora),)).loras.loaded


def test_the_solver_and_boundary_follow_diffusers_lcm_scheduler(world):
    from diffusers import LCMScheduler

    scheduler = LCMScheduler.from_pretrained(str(world["m6"]), subfolder="scheduler")
    solver = DDIMSolver(scheduler.alphas_cumprod, 50)
    scheduler.set_timesteps(4)
    assert set(scheduler.timesteps.tolist()) <= set(solver.timesteps.tolist())  # the lcm sampler's steps are on it
    assert solver.timesteps[0] == 19 and solver.timesteps[-1] == 999
    t = torch.tensor([0, 19, 499, 999])
    c_skip, c_out = boundary_scalings(t)
    for i, step in enumerate(t.tolist()):
        expected = scheduler.get_scalings_for_boundary_condition_discrete(step)
        assert c_skip[i].item() == pytest.approx(expected[0], rel=1e-6)
        assert c_out[i].item() == pytest.approx(expected[1], rel=1e-6)
    assert (c_skip[0].item(), c_out[0].item()) == (1.0, 0.0)  # the boundary: f(x, 0) = x


def test_bad_inputs_get_clear_errors(world, tmp_path):
    with pytest.raises(ConfigError, match="either --dataset DIR .* or --from-teacher"):
        LcmLoraTrainer(config(world, tmp_path / "a", dataset=str(world["train"])))
    with pytest.raises(ConfigError, match="either --dataset"):
        LcmLoraTrainer(config(world, tmp_path / "b", from_teacher=None))
    with pytest.raises(ConfigError, match="--w-min 5 is above --w-max 3"):
        LcmLoraTrainer(config(world, tmp_path / "c", w_min=5, w_max=3))
    with pytest.raises(ConfigError, match=r"rank \(flag\) must be in \[1, 1024\], got 0"):
        config(world, tmp_path / "d", rank=0)
    with pytest.raises(ConfigError, match="--model is required"):
        resolve({"from_teacher": "x", "output": "y"}, LCM_LORA, LCM_LORA_DEFAULTS)
    with pytest.raises(DatasetError, match="not a dataset made by"):
        LcmLoraTrainer(config(world, tmp_path / "e", dataset=str(tmp_path), from_teacher=None)).setup()
    sd = tiny_train.build_sd(tmp_path / "sd")
    with pytest.raises(ConfigError, match="not a usable LDM3D teacher: .*decodes 3 channels"):
        LcmLoraTrainer(config(world, tmp_path / "f", model=str(sd))).setup()
    with pytest.raises(ConfigError, match="resolution 6 is not a multiple of the model's scale factor 4"):
        LcmLoraTrainer(config(world, tmp_path / "g", resolution=6)).setup()
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        LcmLoraTrainer(config(world, tmp_path / "h", from_teacher=str(empty))).setup()
    args = ["train", "lcm-lora", "--model", str(world["m6"]), "--output", str(tmp_path / "i"), "--steps", "1"]
    assert main(args + ["--from-teacher", str(world["prompts"]), "--dataset", str(world["train"])]) == 2
    assert main(args + ["--from-teacher", str(world["prompts"]), "--w-min", "9", "--w-max", "2"]) == 2
    assert main(args + ["--dataset", str(tmp_path / "missing")]) == 2
