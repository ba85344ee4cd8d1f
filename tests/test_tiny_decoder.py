"""`train tiny-decoder` and `--decoder full|tiny|FOLDER` on tiny random-weight LDM3Ds (CPU, offline)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import tiny_ldm3d
import tiny_train
from generator.__main__ import main
from generator.backends import BackendUnavailable, load_backend
from generator.backends.ldm3d import LDM3DBackend, Variant
from generator.backends.tiny_decoder import (INFO_FILE, TinyDecoder, decoder_scale_factor, make_decoder, model_layout,
                                             open_decoder, parameter_count, save_decoder, teacher_info, tiny_unit)
from generator.images import read_rgb_png
from generator.train.autoencoder import load_vae
from generator.train.losses import Perceptual
from generator.train.options import TINY_DECODER, TINY_DECODER_DEFAULTS, ConfigError, resolve
from generator.train.tiny_decoder import TinyDecoderTrainer, decoder_errors, gradient_loss
from td_bridge.depth import read_depth_png, to_uint16
from td_bridge.params import validate_generation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ("a misty forest at dawn", "a sunlit courtyard", "a desert at night", "a room", "a 360 degree panorama")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-decoder")
    prompts = root / "prompts.txt"
    prompts.write_text("# one a line\n" + "\n".join(PROMPTS[:3]) + "\n\n", encoding="utf-8")
    (root / "val-prompts.txt").write_text(PROMPTS[4] + "\n", encoding="utf-8")
    return {"root": root, "m6": tiny_ldm3d.build(root / "ldm3d6"), "m4": tiny_ldm3d.build(root / "ldm3d4", 4),
            "train": tiny_train.demo_dataset(root / "lib", root / "train", range(8), channels=6, size=32),
            "val": tiny_train.demo_dataset(root / "libval", root / "val", range(100, 104), channels=6, size=32),
            "prompts": prompts, "val_prompts": root / "val-prompts.txt"}


def config(world, out, **overrides):
    values = {"model": str(world["m6"]), "dataset": str(world["train"]), "output": str(out), "batch_size": 4,
              "lr": 5e-3, "steps": 4, "resolution": 0, "decoder_channels": 16, "decoder_blocks": 1,
              "checkpoint_every": 1000, "log_every": 1, **overrides}
    return resolve(values, TINY_DECODER, TINY_DECODER_DEFAULTS)


def trainer(cfg):
    torch.manual_seed(1)  # the random perceptual network: the same in every run
    return TinyDecoderTrainer(cfg, perceptual=Perceptual(tiny_train.TinyFeatures()))


def sample(backend, width=128, height=64, seed=3, seamless=True):
    params = validate_generation({"prompt": "a room", "seed": seed, "steps": 2, "width": width, "height": height,
                                  "seamless": seamless})
    return backend.generate(params, lambda step, total: None, lambda: False)


@pytest.fixture(scope="module")
def pano_decoder(world):
    """A tiny decoder for the 4-channel model, distilled through the CLI from the model's own 2:1 samples."""
    out = world["root"] / "pano-decoder"
    args = ["train", "tiny-decoder", "--model", str(world["m4"]), "--from-model", str(world["prompts"]),
            "--val-prompts", str(world["val_prompts"]), "--output", str(out), "--sample-width", "128",
            "--sample-height", "64", "--sample-steps", "2", "--samples-per-prompt", "2", "--steps", "40",
            "--batch-size", "2", "--lr", "5e-3", "--resolution", "16", "--decoder-channels", "16",
            "--decoder-blocks", "1", "--perceptual", "none", "--validate-every", "40", "--log-every", "10"]
    assert main(args) == 0
    return out


def test_the_default_decoder_is_taesd_sized():
    from diffusers import AutoencoderTiny

    default = make_decoder(4, 8)
    count = parameter_count(default)
    taesd = AutoencoderTiny(out_channels=4)  # diffusers' TAESD shape with RGB + depth out
    assert count == sum(p.numel() for p in taesd.decoder.parameters())
    assert 1.1e6 < count < 1.3e6, count
    assert default.config.num_decoder_blocks == (3, 3, 3, 1) and decoder_scale_factor(default.config) == 8
    assert decoder_scale_factor(make_decoder(4, 2).config) == 2
    assert sum(p.numel() for p in default.encoder.parameters()) < 1000  # decode only: a placeholder encoder


def test_every_16_bit_depth_comes_out_as_the_full_path_reads_it():
    depth = np.arange(65536, dtype=np.float64).reshape(256, 256) / 65535
    unit = np.concatenate([np.full((256, 256, 3), 0.5), depth[..., None]], axis=-1).astype(np.float32)
    for channels in (6, 4):
        image = model_layout(unit, channels)
        assert image.shape == (256, 256, channels)
        decoded = Variant(channels=channels, scale_factor=8).decode_depth(image)
        assert np.array_equal(decoded, np.arange(65536, dtype=np.uint16).reshape(256, 256))
        assert np.array_equal(decoded, to_uint16(unit[..., 3]))


def test_training_lowers_the_error_against_the_full_decoder(world):
    cfg = config(world, world["root"] / "lower", steps=40, val_dataset=str(world["val"]))
    run = trainer(cfg)
    run.setup()
    assert run.val_held_out and run.val_latents.shape == (4, 4, 16, 16)
    before = decoder_errors(run.tiny, run.teacher, run.val_latents)
    batches = run._batches()
    for _ in range(cfg.steps):
        metrics = run.train_batch(next(batches))
    after = decoder_errors(run.tiny, run.teacher, run.val_latents)
    assert after["rgb_error"] < 0.5 * before["rgb_error"], (before, after)
    assert after["depth_error"] < 0.5 * before["depth_error"], (before, after)
    assert {"rgb_l1", "perceptual", "depth_l1", "depth_grad"} <= set(metrics) and metrics["perceptual"] > 0


def test_the_trained_folder_generates_16_bit_depth(world, pano_decoder, tmp_path):
    info = json.loads((pano_decoder / INFO_FILE).read_text())
    assert info["seamless"] is True and info["vae_channels"] == 4 and info["steps"] == 40
    assert info["source"] == {"from_model": str(world["prompts"])}
    assert len(list((pano_decoder / "latents").glob("train-*.safetensors"))) == 6  # 3 prompts × 2 seeds
    rows = (pano_decoder / "logs" / "tiny-decoder.csv").read_text().splitlines()
    last = dict(zip(rows[0].split(","), rows[-1].split(",")))
    assert float(last["step"]) == 40 and float(last["val_rgb_error"]) < 0.2
    assert sorted(p.name for p in (pano_decoder / "validation" / "step-00000040").iterdir()) == \
        ["00.depth.png", "00.png", "01.depth.png", "01.png"]
    backend = LDM3DBackend.load(str(world["m4"]), decoder=str(pano_decoder))
    frame = sample(backend)
    assert frame.rgb.shape == (64, 128, 3) and frame.rgb.dtype == np.uint8
    assert frame.depth.shape == (64, 128) and frame.depth.dtype == np.uint16
    assert len(np.unique(frame.depth)) > 256 and np.any(frame.depth % 257)  # not 8-bit depth in 16-bit clothes
    assert frame.info["decoder"] == f"tiny:{pano_decoder}"
    full = sample(LDM3DBackend.load(str(world["m4"])))
    assert full.info["decoder"] == "full"
    assert np.abs(frame.rgb.astype(int) - full.rgb).mean() < 0.2 * 255  # it learnt the model's decoder
    code = main(["generate", "a room", "--model", str(world["m4"]), "--decoder", str(pano_decoder), "-o",
                 str(tmp_path / "shot"), "--width", "128", "--height", "64", "--steps", "2", "--seed", "3",
                 "--no-library"])
    assert code == 0
    meta = json.loads((tmp_path / "shot" / "metadata.json").read_text())
    assert meta["backend_info"]["decoder"] == f"tiny:{pano_decoder}"
    assert np.array_equal(read_depth_png(tmp_path / "shot" / "depth.png"), frame.depth)
    assert np.array_equal(read_rgb_png(tmp_path / "shot" / "rgb.png"), frame.rgb)
    installed = shutil.copytree(world["m4"], tmp_path / "model")  # --decoder tiny: MODEL/tiny-decoder
    shutil.copytree(pano_decoder, installed / "tiny-decoder", ignore=shutil.ignore_patterns("checkpoints", "latents"))
    again = sample(LDM3DBackend.load(str(installed), decoder="tiny"))
    assert np.array_equal(again.depth, frame.depth) and np.array_equal(again.rgb, frame.rgb)


def test_seamless_decoding_wraps(world, pano_decoder):
    tiny, info = open_decoder(pano_decoder, load_vae(str(world["m4"])))
    decoder = TinyDecoder(tiny, info, pano_decoder, torch.device("cpu"))
    latents = torch.randn(1, 4, 16, 32, generator=torch.Generator().manual_seed(0))
    shift = 11  # latent columns; 22 pixels at scale factor 2
    with torch.no_grad():
        decoder.set_seamless(True)
        image = tiny_unit(tiny, latents)
        rolled = tiny_unit(tiny, torch.roll(latents, shift, dims=-1))
        torch.testing.assert_close(rolled, torch.roll(image, 2 * shift, dims=-1), rtol=0, atol=1e-5)
        seam = (image[..., 0] - image[..., -1]).abs().mean()
        inside = (image[..., 1:] - image[..., :-1]).abs().mean()
        assert seam < 2 * inside  # left and right edges meet like any two neighbouring columns
        decoder.set_seamless(False)
        plain = tiny_unit(tiny, torch.roll(latents, shift, dims=-1))
        assert (plain - torch.roll(image, 2 * shift, dims=-1)).abs().max() > 1e-3  # the check can fail
    depth = torch.rand(1, 1, 8, 8)
    seam_only = depth.clone()
    seam_only[..., -1] += 0.5
    assert gradient_loss(seam_only, depth, wrap=True) > gradient_loss(seam_only[..., :-1], depth[..., :-1], False)
    assert gradient_loss(depth, depth, wrap=True) == 0


def _state(run):
    tensors = {f"model.{k}": v for k, v in run.tiny.state_dict().items()}
    for n, opt in enumerate(o for o in (run.opt, run.d_opt) if o is not None):
        for i, per_param in opt.state_dict()["state"].items():
            tensors |= {f"opt{n}.{i}.{k}": v for k, v in per_param.items() if torch.is_tensor(v)}
    if run.disc is not None:
        tensors |= {f"disc.{k}": v for k, v in run.accelerator.unwrap_model(run.disc).state_dict().items()}
    return tensors


def test_resume_continues_bit_identically(world):
    root = world["root"] / "resume"
    options = {"steps": 4, "batch_size": 2, "seamless": True, "resolution": 16, "adv_weight": 0.1, "disc_layers": 1}
    whole = trainer(config(world, root / "whole", checkpoint_every=2, **options))
    whole.run()
    expected = _state(whole)
    checkpoint = root / "whole" / "checkpoints" / "step-00000002"
    resumed = trainer(config(world, root / "resumed", resume=str(checkpoint), **options))
    resumed.run()
    got = _state(resumed)
    assert got.keys() == expected.keys() and len(got) > 20
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, different[:5]
    rows = (root / "resumed" / "logs" / "tiny-decoder.csv").read_text().splitlines()
    whole_rows = (root / "whole" / "logs" / "tiny-decoder.csv").read_text().splitlines()
    assert "g_loss" in rows[0] and "d_loss" in rows[0]
    assert [r.split(",")[0] for r in rows[1:]] == ["3", "4"] and rows[1:] != whole_rows[3:]  # seconds differ
    assert [r.split(",")[2] for r in rows[1:]] == [r.split(",")[2] for r in whole_rows[3:]]  # same losses


def _fake_decoder(folder, world, latent_channels=4, scale_factor=2, model="m6"):
    vae = load_vae(str(world[model]))
    info = teacher_info(vae, "elsewhere", False, 0) | {"latent_channels": latent_channels,
                                                       "scale_factor": scale_factor}
    return save_decoder(make_decoder(latent_channels, scale_factor, 8, 1), folder, info)


@pytest.mark.parametrize("case, message", [
    ("latent", r"latent channels 8 \(the model's: 4\)"),
    ("scale", r"latent-to-pixel scale factor 8 \(the model's: 2\)"),
    ("vae", r"VAE output channels 4 \(the model's: 6\)"),
    ("not a decoder", "is not a tiny decoder folder"),
    ("model folder", "is not a tiny decoder folder"),
    ("no tiny", r"has no tiny decoder .*train tiny-decoder --model"),
    ("nowhere", "choose full, tiny or a tiny decoder's folder"),
])
def test_unusable_decoders_are_refused_before_use(world, tmp_path, case, message):
    spec = {"latent": lambda: _fake_decoder(tmp_path / "d", world, latent_channels=8),
            "scale": lambda: _fake_decoder(tmp_path / "d", world, scale_factor=8),
            "vae": lambda: _fake_decoder(tmp_path / "d", world, model="m4"),
            "not a decoder": lambda: tmp_path,
            "model folder": lambda: world["m4"],
            "no tiny": lambda: "tiny",
            "nowhere": lambda: tmp_path / "missing"}[case]()
    with pytest.raises(BackendUnavailable, match=message):
        LDM3DBackend.load(str(world["m6"]), decoder=str(spec))


def test_cli_refusals(world, tmp_path, caplog):
    shot = ["generate", "a room", "-o", str(tmp_path / "shot"), "--width", "64", "--height", "64", "--steps", "1",
            "--no-library"]
    assert main(shot + ["--model", str(world["m6"]), "--decoder", "tiny"]) == 2
    assert "has no tiny decoder" in caplog.text
    assert main(shot + ["--model", "demo", "--decoder", "tiny"]) == 2
    with pytest.raises(BackendUnavailable, match="demo backend has no VAE"):
        load_backend("demo", decoder=str(tmp_path))
    other = tiny_ldm3d.build(tmp_path / "other", seed=1)  # same shape, other weights: a warning only
    _fake_decoder(tmp_path / "d", world)
    caplog.clear()
    LDM3DBackend.load(str(other), decoder=str(tmp_path / "d"))
    assert "whose VAE decoder weights differ" in caplog.text


def test_bad_training_configs_get_clear_errors(world, tmp_path):
    with pytest.raises(ConfigError, match="either --dataset DIR .* or --from-model"):
        trainer(config(world, tmp_path / "a", from_model=str(world["prompts"])))
    with pytest.raises(ConfigError, match="either --dataset"):
        trainer(config(world, tmp_path / "b", dataset=None))
    with pytest.raises(ConfigError, match="--model is required"):
        resolve({"dataset": "x", "output": "y"}, TINY_DECODER, TINY_DECODER_DEFAULTS)
    with pytest.raises(ConfigError, match="resolution 7 is not a multiple of the model's scale factor 2"):
        trainer(config(world, tmp_path / "c", resolution=7)).setup()
    with pytest.raises(ConfigError, match="--val-prompts goes with --from-model"):
        trainer(config(world, tmp_path / "d", val_prompts=str(world["val_prompts"]))).setup()
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(ConfigError, match="holds no prompts"):
        trainer(config(world, tmp_path / "e", dataset=None, from_model=str(empty))).setup()
    with pytest.raises(ConfigError, match="decodes 3 channels"):
        TinyDecoderTrainer(config(world, tmp_path / "f"), teacher=load_vae(str(tiny_train.build_sd(tmp_path / "sd"))),
                           perceptual=Perceptual(tiny_train.TinyFeatures())).setup()
