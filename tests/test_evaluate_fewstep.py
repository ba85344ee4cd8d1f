"""``evaluate fewstep`` on the tiny LDM3D: a LoRA written here on the fast side, a tiny decoder, a tiny CLIP and a
small perceptual network; the metrics recomputed from the written frames; identical set-ups; the teacher untouched
by the fast side's LoRA; bad inputs refused before any model loads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from generator.__main__ import main
from generator.estimators.alignment import consistency
from generator.evaluate import fewstep
from generator.evaluate.clip import ClipScorer
from generator.evaluate.ssim import psnr, ssim
from generator.images import read_rgb_png
from td_bridge.depth import from_uint16, read_depth_png
from td_bridge.params import validate_generation
from tests import tiny_clip, tiny_ldm3d

pytestmark = pytest.mark.usefixtures("one_torch_thread")
CAPTIONS = ["a misty forest at dawn", "a sunlit courtyard"]


class TinyTrunk(nn.Module):
    """Two random feature taps with the perceptual network's interface (a list of maps and ``channels``)."""

    channels = (4, 8)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 8, 3, 2, 1)

    def forward(self, x):
        a = torch.relu(self.a(x))
        return [a, torch.relu(self.b(a))]


def tiny_perceptual():
    from generator.train.losses import Perceptual

    return fewstep.PerceptualDistance(Perceptual(TinyTrunk()), "tiny-trunk")


def write_lora(unet_folder, path, seed=2, rank=4):
    """A U-Net LoRA in kohya naming on every attention projection, written by hand (as tests/test_lora.py does)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(unet_folder)
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in unet.named_modules():
        if isinstance(module, nn.Linear) and ".attn" in name and name.split(".")[-1] in ("to_q", "to_k", "to_v"):
            key = "lora_unet_" + name.replace(".", "_")
            state[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.3
            state[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.3
            state[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(state, str(path))
    return path


def write_decoder(model, folder):
    """A random tiny decoder whose record matches the model's VAE (the layout `train tiny-decoder` writes)."""
    from generator.backends.tiny_decoder import make_decoder, save_decoder, teacher_info
    from generator.train.autoencoder import load_vae

    torch.manual_seed(3)
    vae = load_vae(str(model))
    return save_decoder(make_decoder(4, 2, 8, 1), folder, teacher_info(vae, str(model), False, 0))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from generator.train.losses import VGG16Features

    root = tmp_path_factory.mktemp("fewstep")
    model = tiny_ldm3d.build(root / "ldm3d", vae_channels=4)
    captions = root / "captions.txt"
    captions.write_text("\n".join(CAPTIONS) + "\n", encoding="utf-8")
    torch.manual_seed(4)
    vgg = root / "vgg16.safetensors"  # random weights in torchvision's layout: the real run's loading path
    save_file({f"features.{k}": v.contiguous() for k, v in VGG16Features().features.state_dict().items()}, str(vgg))
    lin = root / "vgg.pth"  # random per-channel weights in LPIPS's layout
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(VGG16Features.channels)}, lin)
    return {"root": root, "model": model, "captions": captions, "clip": tiny_clip.build(root / "clip"),
            "lora": write_lora(model / "unet", root / "distilled.safetensors"),
            "decoder": write_decoder(model, root / "tiny-decoder"), "vgg": vgg, "lin": lin}


@pytest.fixture(scope="module")
def cli_run(world):
    """The command end to end: --fast lcm with its LoRA replaced by the one written here, 2 step counts, the tiny
    decoder, a teacher of 4 DDIM steps."""
    out = world["root"] / "out"
    code = main(["evaluate", "fewstep", "--model", str(world["model"]), "--captions", str(world["captions"]),
                 "--fast", "lcm", "--lora", f"lcm={world['lora']}", "--steps", "1,2", "--decoder",
                 str(world["decoder"]), "--teacher-steps", "4", "--size", "64", "--seeds", "11,5", "--clip-model",
                 str(world["clip"]), "--perceptual", str(world["vgg"]), "--perceptual-lin", str(world["lin"]),
                 "--device", "cpu", "-o", str(out)])
    assert code == 0
    return out, json.loads((out / "fewstep.json").read_text(encoding="utf-8"))


def frame(folder):
    return read_rgb_png(folder / "rgb.png"), read_depth_png(folder / "depth.png")


def test_the_command_writes_the_report_the_plot_and_the_frames(cli_run, world):
    out, result = cli_run
    teacher, *fast = result["results"]
    assert [(r["setup"], r["steps"]) for r in result["results"]] == [("teacher", 4), ("fast", 1), ("fast", 2)]
    assert teacher["scheduler"] == "ddim" and teacher["guidance"] == 7.0 and teacher["loras"] == []
    assert teacher["decoder"] == "full"
    for row in fast:  # the lcm preset's sampler and guidance, the LoRA given, the tiny decoder
        assert row["scheduler"] == "lcm" and row["guidance"] == 0.0 and row["loras"] == ["lcm"]
        assert row["decoder"] == f"tiny:{world['decoder']}" and row["frames"] == 2
        assert row["abs_rel"] > 0 and 0 <= row["delta1"] <= 1 and 0 < row["psnr"] < 100 and -1 <= row["ssim"] < 1
        assert row["perceptual"] > 0 and row["clip"] >= 0 and row["clip_teacher"] == teacher["clip"]
        assert row["frame_s"] > 0 and row["fps"] == pytest.approx(1 / row["frame_s"])
        assert row["speedup"] == pytest.approx(teacher["frame_s"] / row["frame_s"])
    assert result["seeds"] == [11, 5] and result["captions"] == CAPTIONS and not result["pano"]
    (lora,) = result["fast"]["loras"]
    assert lora["name"] == "lcm" and lora["file"] == "distilled.safetensors" and result["teacher"]["loras"] == []
    assert result["fast"]["params"] == {"scheduler": "lcm", "guidance": 0.0, "spacing": "auto"}
    assert result["machine"]["device"] == "cpu" and result["perceptual_model"] == f"{world['vgg']} + {world['lin']}"
    assert len(result["frames"]) == 6 and all((out / f["frame"] / "metadata.json").is_file()
                                              for f in result["frames"])
    markdown = (out / "fewstep.md").read_text(encoding="utf-8")
    assert "| set-up | steps | time/frame [s] ↓ | fps ↑ | × teacher | depth AbsRel ↓" in markdown
    assert "lcm 1" in markdown and "distilled.safetensors" in markdown and "fewstep.png" in markdown
    with Image.open(out / "fewstep.png") as image:
        assert image.size == (480 * 5, 340)  # AbsRel, PSNR, perceptual, CLIP, time
        assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 5


def test_the_metrics_are_what_the_metric_functions_give_for_the_written_frames(cli_run, world):
    from generator.train.losses import load_perceptual

    out, result = cli_run
    record = next(f for f in result["frames"] if f["setup"] == "fast" and f["steps"] == 2 and f["index"] == 1)
    teacher_record = next(f for f in result["frames"] if f["setup"] == "teacher" and f["index"] == 1)
    (rgb, depth), (t_rgb, t_depth) = frame(out / record["frame"]), frame(out / teacher_record["frame"])
    agreement = consistency(from_uint16(depth), from_uint16(t_depth))
    assert record["abs_rel"] == agreement.abs_rel and record["delta1"] == agreement.delta1
    a, b = (torch.from_numpy(np.array(x)).permute(2, 0, 1)[None].double() / 255 for x in (rgb, t_rgb))
    assert record["psnr"] == float(psnr(a, b)[0])
    assert record["ssim"] == pytest.approx(float(ssim(a, b)[0]), rel=1e-9, abs=1e-15)  # conv rounding by layout
    network = fewstep.PerceptualDistance(load_perceptual(str(world["vgg"]), str(world["lin"])), "again")
    assert record["perceptual"] == pytest.approx(network(rgb, t_rgb), rel=1e-5)
    clip = ClipScorer.load(str(world["clip"]), device="cpu")
    assert record["clip"] == pytest.approx(float(clip.scores([rgb], [CAPTIONS[1]])[0]), abs=1e-4)
    assert teacher_record["clip"] == pytest.approx(float(clip.scores([t_rgb], [CAPTIONS[1]])[0]), abs=1e-4)
    row = next(r for r in result["results"] if r["setup"] == "fast" and r["steps"] == 2)
    own = [f for f in result["frames"] if f["setup"] == "fast" and f["steps"] == 2]
    for key in ("abs_rel", "delta1", "psnr", "ssim", "perceptual", "clip"):
        assert row[key] == pytest.approx(np.mean([f[key] for f in own]))
    assert row["frame_s"] == pytest.approx(np.median([f["seconds"] for f in own]))


def test_the_teacher_is_the_lora_free_model(cli_run, world):
    """The teacher's frames equal a plain generate of the model without LoRA, with the same seed; the fast frames
    differ (the LoRA, sampler and decoder did act)."""
    from generator.backends import load_backend

    out, result = cli_run
    plain = load_backend(str(world["model"]), device="cpu")
    for record in (f for f in result["frames"] if f["setup"] == "teacher"):
        params = validate_generation({"prompt": record["caption"], "seed": record["seed"], "steps": 4,
                                      "guidance": 7.0, "scheduler": "ddim", "width": 64, "height": 64,
                                      "seamless": False})
        expected = plain.generate(params, lambda s, t: None, lambda: False)
        rgb, depth = frame(out / record["frame"])
        np.testing.assert_array_equal(rgb, expected.rgb)
        np.testing.assert_array_equal(depth, expected.depth)
        meta = json.loads((out / record["frame"] / "metadata.json").read_text(encoding="utf-8"))
        assert meta["backend_info"]["loras"] == [] and meta["backend_info"]["decoder"] == "full"
        fast_rgb, _ = frame(out / f"frames/fast-2/{record['index']:03d}-seed{record['seed']}")
        assert not np.array_equal(fast_rgb, rgb)


def test_identical_configurations_agree_exactly(world, tmp_path):
    """The fast side set up as the teacher (no LoRA, same sampler and steps): depth AbsRel 0, δ1 1, PSNR 100 dB
    (the MSE floor), SSIM 1, perceptual 0, the same CLIP; one backend serves both."""
    from generator.backends import load_backend

    backend = load_backend(str(world["model"]), device="cpu")
    teacher = {"scheduler": "ddim", "steps": 3, "guidance": 5.0}
    options = fewstep.Options(model=str(world["model"]), captions=CAPTIONS, output=tmp_path / "same", steps=[3],
                              seeds=[0, 1], fast={"scheduler": "ddim", "guidance": 5.0}, teacher=teacher,
                              width=64, height=64)
    clip = ClipScorer.load(str(world["clip"]), device="cpu")
    result = fewstep.run(options, fewstep.Tools(teacher=backend, fast=backend, clip=clip,
                                                perceptual=tiny_perceptual(), clip_model="tiny-clip",
                                                perceptual_model="tiny-trunk"))
    teacher_row, row = result["results"]
    assert row["abs_rel"] == 0.0 and row["delta1"] == 1.0 and row["psnr"] == 100.0
    assert row["ssim"] == pytest.approx(1.0, abs=1e-12) and row["perceptual"] == 0.0
    assert row["clip"] == teacher_row["clip"] and row["clip_delta"] == 0.0
    assert json.loads((tmp_path / "same" / "fewstep.json").read_text())["results"][1]["psnr"] == 100.0


def test_a_panorama_size_generates_seamless_on_both_sides(world, tmp_path):
    from generator.backends import load_backend

    backend = load_backend(str(world["model"]), device="cpu")
    options = fewstep.Options(model=str(world["model"]), captions=CAPTIONS[:1], output=tmp_path / "pano",
                              steps=[1, 2], seeds=[7], fast={"scheduler": "ddim", "guidance": 1.0,
                                                             "spacing": "trailing"},
                              teacher={"scheduler": "ddim", "steps": 2, "guidance": 3.0}, width=128, height=64)
    result = fewstep.run(options, fewstep.Tools(teacher=backend, fast=backend))
    assert result["pano"] and all(f["seed"] == 7 for f in result["frames"])
    for record in result["frames"]:
        meta = json.loads((tmp_path / "pano" / record["frame"] / "metadata.json").read_text())
        assert meta["params"]["seamless"] and meta["params"]["width"] == 128
    assert [r["perceptual"] for r in result["results"]] == [None, None, None]  # not measured, not made up
    with Image.open(tmp_path / "pano" / "fewstep.png") as image:
        assert image.size == (480 * 3, 340)  # AbsRel, PSNR, time (no perceptual network, no CLIP)
    assert "–" in (tmp_path / "pano" / "fewstep.md").read_text(encoding="utf-8")


def test_step_and_seed_lists():
    assert fewstep.step_list(["1,2,4,8"]) == [1, 2, 4, 8] and fewstep.step_list(["1", "2,3"]) == [1, 2, 3]
    assert fewstep.seed_list(None, 5, 3) == [5, 6, 7] and fewstep.seed_list(["3,9", "1"], 0, 3) == [3, 9, 1]
    for values, message in ((["1,x"], "'x' is not a whole number"), (["0"], "0 is not a step count"),
                            (["2,4,2"], "2 given more than once"), (["1,,2"], "not a list of step counts"),
                            (["501"], "501 is not a step count")):
        with pytest.raises(ValueError, match=message):
            fewstep.step_list(values)
    with pytest.raises(ValueError, match="gives 2 seed"):
        fewstep.seed_list(["1,2"], 0, 3)
    with pytest.raises(ValueError, match="seed -1 is outside"):
        fewstep.seed_list(None, -1, 2)


def test_bad_inputs_get_clear_errors_before_any_model_loads(world, tmp_path, caplog, monkeypatch):
    import generator.backends as backends

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(backends, "load_backend", no_loading)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    (tmp_path / "a-file").write_text("x")
    captions, model, lora = str(world["captions"]), str(world["model"]), str(world["lora"])
    base = ["evaluate", "fewstep", "--model", model, "--captions", captions, "-o", str(tmp_path / "out"),
            "--device", "cpu"]
    cases = [
        (["--captions", str(tmp_path / "none.txt"), "--steps", "1"], "none.txt: no such captions file"),
        (["--captions", str(empty), "--steps", "1"], "empty.txt: holds no captions"),
        (["--steps", "1,two"], "--steps: 'two' is not a whole number"),
        (["--steps", "0,2"], "--steps: 0 is not a step count"),
        (["--steps", "4,4"], "--steps: 4 given more than once"),
        ([], "--steps: give the fast side's step counts"),
        (["--fast", "lcm", "--steps", "60"], "lcm takes at most 50 steps"),
        (["--steps", "2", "--lora", f"x={lora}", "--lora", f"x={lora}:0.5"], "two LoRAs are named 'x'"),
        (["--fast", "tcd", "--lora", "elsewhere/tcd.safetensors"], "two LoRAs are named 'tcd' (the --fast tcd"),
        (["--steps", "2", "--lora", "bad name=" + lora], "not a usable LoRA name"),
        (["--steps", "2", "--fuse-lora"], "--fuse-lora needs a LoRA"),
        (["--steps", "2", "--size", "100x64"], "width"),
        (["--steps", "2", "--size", "32"], "width"),
        (["--steps", "2", "--seeds", "1,2,3"], "--seeds gives 3 seed(s) for 2 caption(s)"),
        (["--steps", "2", "--guidance", "99"], "guidance"),
        (["--steps", "2", "--teacher-steps", "0"], "steps"),
        (["--steps", "2", "--decoder", str(tmp_path / "no-decoder")], "choose full, tiny or a tiny decoder's"),
        (["--steps", "2", "--decoder", "tiny"], "tiny-decoder does not exist"),
        (["--steps", "2", "--decoder", str(world["model"])], "is not a tiny decoder folder"),
        (["--steps", "2", "-o", str(tmp_path / "a-file")], "a file is in the way"),
        (["--steps", "2", "--model", "demo"], "--model demo: name the LDM3D teacher"),
    ]
    for extra, message in cases:
        caplog.clear()
        assert main([*base, *extra]) == 2, extra
        assert message in caplog.text, (extra, caplog.text)
    with pytest.raises(SystemExit):  # argparse: a preset that does not exist, --seed beside --seeds
        main([*base, "--fast", "turbo"])
    with pytest.raises(SystemExit):
        main([*base, "--steps", "1", "--seed", "1", "--seeds", "1,2"])
