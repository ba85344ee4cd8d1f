"""`train autoencoder` and `train unet` on tiny SD-shaped models and demo-frame datasets (CPU, offline)."""

from __future__ import annotations

import json
import multiprocessing
import sys

import numpy as np
import pytest
import torch

import tiny_train
import train_ddp_worker
from conftest import RunningServer, wait_for
from generator.__main__ import main
from generator.backends import load_backend
from generator.train.autoencoder import AutoencoderTrainer, load_vae, reconstruction_errors, widen
from generator.train.dataset import DatasetError, RGBDDataset
from generator.train.losses import Perceptual
from generator.train.options import AUTOENCODER, AUTOENCODER_DEFAULTS, UNET, UNET_DEFAULTS, ConfigError, resolve
from generator.train.unet import UNetTrainer
from td_bridge.params import validate_generation
from td_bridge.receiver import CommandClient, FrameReceiver


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one state per process (precision, device); each test's trainers start from none, as a
    `python -m generator train …` process does."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    sd = tiny_train.build_sd(root / "sd")
    rgbd = root / "rgbd-ae"
    widen(load_vae(str(sd)), 6).save_pretrained(rgbd / "vae")  # an untrained widened autoencoder for the U-Net
    return {"root": root, "sd": sd, "rgbd": rgbd,
            "train": tiny_train.demo_dataset(root / "lib", root / "train", range(8)),
            "val": tiny_train.demo_dataset(root / "libval", root / "val", range(100, 104))}


def ae_config(world, out, **overrides):
    values = {"dataset": str(world["train"]), "output": str(out), "vae": str(world["sd"]), "batch_size": 2,
              "lr": 2e-3, "steps": 4, "disc_start": 2, "disc_layers": 2, "checkpoint_every": 1000, "log_every": 1,
              **overrides}
    return resolve(values, AUTOENCODER, AUTOENCODER_DEFAULTS)


def unet_config(world, out, **overrides):
    values = {"dataset": str(world["train"]), "output": str(out), "base": str(world["sd"]), "vae": str(world["rgbd"]),
              "batch_size": 2, "lr": 1e-3, "steps": 4, "checkpoint_every": 1000, "log_every": 1,
              "validation_steps": 2, **overrides}
    return resolve(values, UNET, UNET_DEFAULTS)


def ae_trainer(config):
    torch.manual_seed(1)
    return AutoencoderTrainer(config, perceptual=Perceptual(tiny_train.TinyFeatures()))


def val_batch(world, count=4):
    data = RGBDDataset(world["val"])
    return torch.stack([data[i]["pixel_values"] for i in range(count)])


@pytest.mark.parametrize("channels", [6, 4])
def test_widened_autoencoder_reproduces_the_rgb_autoencoder_at_initialisation(world, channels):
    rgb_vae = load_vae(str(world["sd"]))
    wide = widen(rgb_vae, channels)
    assert (wide.config.in_channels, wide.config.out_channels) == (channels, channels)
    x = val_batch(world)[:, :3]
    depth = torch.rand(x.shape[0], channels - 3, *x.shape[2:]) * 2 - 1  # any depth: it must not change the RGB
    with torch.no_grad():
        z_rgb = rgb_vae.encode(x).latent_dist.mode()
        z_wide = wide.encode(torch.cat([x, depth], 1)).latent_dist.mode()
        torch.testing.assert_close(z_wide, z_rgb, rtol=0, atol=1e-6)
        out_rgb, out_wide = rgb_vae.decode(z_rgb).sample, wide.decode(z_rgb).sample
    torch.testing.assert_close(out_wide[:, :3], out_rgb, rtol=0, atol=1e-6)
    grey = out_rgb.mean(1, keepdim=True).expand(-1, channels - 3, -1, -1)  # new rows: the RGB rows' mean
    torch.testing.assert_close(out_wide[:, 3:], grey, rtol=0, atol=1e-5)
    assert widen(wide, channels) is wide  # an RGBD autoencoder is fine-tuned as it is
    with pytest.raises(ConfigError, match="widening needs an RGB"):
        widen(wide, 10 - channels)


def test_autoencoder_steps_lower_held_out_depth_error(world):
    out = world["root"] / "ae"
    config = ae_config(world, out, steps=30, disc_start=15, val_dataset=str(world["val"]), validate_every=30,
                       log_every=5)
    before = reconstruction_errors(widen(load_vae(str(world["sd"])), 6), val_batch(world))
    trainer = ae_trainer(config)
    folder = trainer.run()
    after = reconstruction_errors(load_vae(str(folder)), val_batch(world))
    assert after["depth_error"] < 0.7 * before["depth_error"], (before, after)
    rows = (out / "logs" / "autoencoder.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"loss", "rec", "perceptual", "kl", "g_loss", "d_weight", "d_loss", "val_depth_error"} <= set(header)
    last = dict(zip(header, rows[-1].split(",")))
    assert float(last["step"]) == 30 and float(last["val_depth_error"]) == pytest.approx(after["depth_error"])
    assert load_vae(str(folder)).config.out_channels == 6


def test_unet_steps_lower_the_loss(world):
    config = unet_config(world, world["root"] / "unet-loss", steps=25, ema=False)
    trainer = UNetTrainer(config)
    trainer.setup()
    batch = {"pixel_values": val_batch(world), "caption": ["a misty forest at dawn"] * 4}

    def fixed_loss():
        generator = torch.Generator().manual_seed(0)
        latents, text = trainer._condition(batch)
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, 1000, (latents.shape[0],), generator=generator)
        with torch.no_grad():
            predicted = trainer.unet(trainer.noise.add_noise(latents, noise, t), t, text).sample
        return torch.nn.functional.mse_loss(predicted, noise).item()

    before = fixed_loss()
    batches = trainer._batches()
    for _ in range(config.steps):
        trainer.train_batch(next(batches))
    assert fixed_loss() < 0.8 * before


def _state(trainer, model):
    tensors = {f"model.{k}": v for k, v in trainer.accelerator.unwrap_model(model).state_dict().items()}
    for n, opt in enumerate(o for o in (trainer.opt, getattr(trainer, "d_opt", None)) if o is not None):
        for i, per_param in opt.state_dict()["state"].items():
            tensors |= {f"opt{n}.{i}.{k}": v for k, v in per_param.items() if torch.is_tensor(v)}
    if getattr(trainer, "ema", None) is not None:
        tensors |= {f"ema.{i}": p for i, p in enumerate(trainer.ema.shadow_params)}
    return tensors


@pytest.mark.parametrize("stage", ["autoencoder", "unet"])
def test_resume_continues_bit_identically(world, stage):
    make = (lambda out, **kw: ae_trainer(ae_config(world, out, disc_start=1, **kw))) if stage == "autoencoder" \
        else (lambda out, **kw: UNetTrainer(unet_config(world, out, grad_accum=2, ema_decay=0.9, **kw)))
    root = world["root"] / f"resume-{stage}"
    whole = make(root / "whole", steps=4, checkpoint_every=2)
    whole.run()
    model = "model" if stage == "autoencoder" else "unet"
    expected = _state(whole, getattr(whole, model))
    checkpoint = root / "whole" / "checkpoints" / "step-00000002"
    assert json.loads((checkpoint / "trainer.json").read_text())["step"] == 2
    resumed = make(root / "resumed", steps=4, resume=str(checkpoint))
    resumed.run()
    got = _state(resumed, getattr(resumed, model))
    assert got.keys() == expected.keys() and len(got) > 10
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not different, different[:5]
    rows = (root / "resumed" / "logs" / f"{stage}.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["3", "4"]
    whole_rows = (root / "whole" / "logs" / f"{stage}.csv").read_text().splitlines()
    assert [r.split(",")[2] for r in rows[1:]] == [r.split(",")[2] for r in whole_rows[3:]]  # same losses
    with pytest.raises(ConfigError, match="other settings .*batch_size 2 → 1"):
        make(root / "changed", steps=4, resume=str(checkpoint), batch_size=1).run()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="the ranks are forked")
def test_two_processes_keep_replicas_identical(world, tmp_path):
    from safetensors.torch import load_file

    config = {"dataset": str(world["train"]), "output": str(tmp_path / "run"), "base": str(world["sd"]),
              "vae": str(world["rgbd"]), "batch_size": 2, "lr": 1e-3, "steps": 2, "ema": False,
              "checkpoint_every": 2, "validation_prompts": ""}
    assert train_ddp_worker.run_two(config, tmp_path) == [0, 0]
    seen = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert [s["processes"] for s in seen] == [2, 2] and [s["rank"] for s in seen] == [0, 1]
    read = [set(sum(s["read"], [])) for s in seen]
    assert read[0] and not read[0] & read[1]  # each process read its own images
    replicas = [load_file(str(tmp_path / f"rank-{r}.safetensors")) for r in range(2)]
    assert all(torch.equal(replicas[0][k], replicas[1][k]) for k in replicas[0])
    initial = load_file(str(world["sd"] / "unet" / "diffusion_pytorch_model.safetensors"))
    assert any(not torch.equal(initial[k], replicas[0][k]) for k in initial)  # and they did train
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints" / "step-00000002").glob("random_states_*")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]


@pytest.fixture(scope="module")
def trained(world):
    out = world["root"] / "trained"
    UNetTrainer(unet_config(world, out, steps=3, validate_every=3)).run()
    return out


def test_trained_folder_generates_and_serves(world, trained, tmp_path, capsys):
    previews = sorted(p.name for p in (trained / "validation" / "step-00000003").iterdir())
    assert previews == ["00.depth.png", "00.png"]
    code = main(["generate", "a misty forest at dawn", "--model", str(trained), "-o", str(tmp_path / "shot"),
                 "--width", "64", "--height", "64", "--steps", "2", "--seed", "3", "--no-library"])
    assert code == 0
    meta = json.loads((tmp_path / "shot" / "metadata.json").read_text())
    assert meta["backend"] == "ldm3d" and meta["backend_info"]["vae_channels"] == 6
    srv = RunningServer(load_backend(str(trained)))
    try:
        with FrameReceiver(srv.frames) as rx, CommandClient(srv.commands, timeout=10) as client:
            wait_for(lambda: rx.connected)
            job = client.generate(prompt="a desert at night", seed=2, width=64, height=64, steps=2)
            frame = wait_for(lambda: (f := rx.latest()) and f.meta["job_id"] == job["job_id"] and f, timeout=60)
            assert frame.rgb.shape == (64, 64, 3) and frame.depth.dtype == np.uint16
    finally:
        srv.close()


def test_bad_configs_get_clear_errors(world, tmp_path, monkeypatch):
    toml = tmp_path / "train.toml"
    toml.write_text('dataset = "x"\nlearning_rate = 1e-5\n')
    with pytest.raises(ConfigError, match="unknown options learning_rate"):
        resolve({"config": toml}, UNET, UNET_DEFAULTS)
    toml.write_text(f'dataset = "{world["train"]}"\noutput = "{tmp_path / "o"}"\nbatch_size = 0\n')
    with pytest.raises(ConfigError, match=r"batch_size \(.*train.toml\) must be in \[1, 4096\], got 0"):
        resolve({"config": toml}, UNET, UNET_DEFAULTS)
    assert resolve({"config": toml, "batch_size": 3}, UNET, UNET_DEFAULTS).batch_size == 3  # flags win
    with pytest.raises(ConfigError, match="--dataset is required"):
        resolve({}, AUTOENCODER, AUTOENCODER_DEFAULTS)
    with pytest.raises(ConfigError, match="fewer than one batch"):
        UNetTrainer(unet_config(world, tmp_path / "b", batch_size=9)).run()
    with pytest.raises(ConfigError, match="run `train autoencoder` first"):
        UNetTrainer(unet_config(world, tmp_path / "c", vae=str(world["sd"]))).setup()
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    with pytest.raises(ConfigError, match="needs the tensorboard package"):
        UNetTrainer(unet_config(world, tmp_path / "t", log_with="tensorboard"))
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ConfigError, match="needs bitsandbytes"):
        UNetTrainer(unet_config(world, tmp_path / "d", use_8bit_adam=True)).setup()
    with pytest.raises(ConfigError, match="no checkpoint under"):
        UNetTrainer(unet_config(world, tmp_path / "e", resume="latest")).run()
    with pytest.raises(DatasetError, match="not a dataset made by"):
        UNetTrainer(unet_config(world, tmp_path / "f", dataset=str(tmp_path))).run()
    args = ["train", "unet", "--dataset", str(world["train"]), "--output", str(tmp_path / "g"),
            "--base", str(tmp_path / "nowhere"), "--steps", "1"]
    assert main(args) == 2
    assert main(["train", "autoencoder", "--dataset", str(world["train"]), "--output", str(tmp_path / "h"),
                 "--vae", str(world["sd"]), "--perceptual", str(tmp_path / "missing.safetensors"),
                 "--perceptual-lin", "equal", "--offline"]) == 2


def test_options_bf16_checkpointing_min_snr_run_a_step(world):
    config = unet_config(world, world["root"] / "options", steps=1, mixed_precision="bf16",
                         gradient_checkpointing=True, snr_gamma=5.0, validation_prompts="")
    trainer = UNetTrainer(config)
    trainer.setup()
    start = {k: v.clone() for k, v in trainer.accelerator.unwrap_model(trainer.unet).state_dict().items()}
    metrics = trainer.train_batch(next(trainer._batches()))
    assert np.isfinite(metrics["loss"])
    unet = trainer.accelerator.unwrap_model(trainer.unet)
    assert unet.is_gradient_checkpointing
    assert any(not torch.equal(start[k], v) for k, v in unet.state_dict().items())


def test_min_snr_weights_follow_the_formula(world):
    from diffusers import DDPMScheduler

    from generator.train.unet import min_snr_weights

    noise = DDPMScheduler.from_pretrained(str(world["sd"]), subfolder="scheduler")
    t = torch.tensor([0, 100, 500, 999])
    alphas = noise.alphas_cumprod[t]
    snr = alphas / (1 - alphas)
    torch.testing.assert_close(min_snr_weights(noise, t, 5.0), torch.clamp(snr, max=5.0) / snr)
    assert min_snr_weights(noise, t, 5.0)[0] < 1 and min_snr_weights(noise, t, 5.0)[-1] == 1


def test_perceptual_loads_vgg16_weights_and_passes_gradient_to_depth(tmp_path):
    from safetensors.torch import save_file

    from generator.train.autoencoder import _grey3
    from generator.train.losses import VGG16Features, load_perceptual

    torch.manual_seed(0)
    vgg = VGG16Features()
    save_file({f"features.{k}": v for k, v in vgg.features.state_dict().items()}, str(tmp_path / "vgg16.safetensors"))
    torch.save({f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) for k, c in enumerate(vgg.channels)},
               tmp_path / "lin.pth")
    perceptual = load_perceptual(str(tmp_path / "vgg16.safetensors"), str(tmp_path / "lin.pth"))
    assert torch.equal(perceptual.features.features[0].weight, vgg.features[0].weight)
    x = torch.rand(1, 6, 32, 32) * 2 - 1
    recon = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)
    distance = perceptual(_grey3(x), _grey3(recon))
    distance.sum().backward()
    assert distance.item() > 0 and recon.grad[:, 4:].abs().sum() > 0  # the depth bytes get a gradient
    assert perceptual(x[:, :3], x[:, :3]).item() == 0
    save_file({"head.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="no `features.N` keys"):
        load_perceptual(str(tmp_path / "other.safetensors"), "equal")
    assert load_perceptual("none") is None


def write_lin(path, channels, seed=0):
    """Per-channel weights in LPIPS's vgg.pth layout (lin<k>.model.1.weight of shape (1, C, 1, 1))."""
    path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    table = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=generator) for k, c in enumerate(channels)}
    torch.save(table, path)
    return table


@pytest.fixture
def no_lpips(tmp_path, monkeypatch):
    """No lpips package importable and an empty DepthFusion cache: LPIPS's vgg.pth is nowhere at hand."""
    monkeypatch.setenv("DEPTHFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(sys.modules, "lpips", None)
    return tmp_path / "cache" / "lpips" / "vgg.pth"


def test_the_perceptual_default_is_lpips_and_says_where_to_get_its_weights(world, tmp_path, no_lpips, caplog):
    from generator.train.losses import LPIPS_URL, layer_weights
    from generator.train.options import TINY_DECODER

    assert ae_config(world, tmp_path / "a").perceptual_lin == "lpips"
    assert resolve({"model": "m", "dataset": "d", "output": "o"}, TINY_DECODER).perceptual_lin == "lpips"
    with pytest.raises(ConfigError) as error:
        layer_weights("lpips", 2)
    for part in ("vgg.pth) were not found", "pip install --no-deps lpips", LPIPS_URL, str(no_lpips),
                 "--perceptual-lin FILE", "--perceptual-lin equal"):
        assert part in str(error.value)
    # the trainer checks it first: no VAE is loaded (this one does not exist) and no VGG16 is fetched
    with pytest.raises(ConfigError, match="vgg.pth"):
        AutoencoderTrainer(ae_config(world, tmp_path / "b", vae=str(tmp_path / "nowhere"))).setup()
    caplog.clear()
    assert main(["train", "autoencoder", "--dataset", str(world["train"]), "--output", str(tmp_path / "c"),
                 "--vae", str(world["sd"]), "--offline"]) == 2
    assert "vgg.pth) were not found" in caplog.text


def test_lpips_weights_come_from_the_package_or_the_cache_and_weigh_the_distance(tmp_path, no_lpips, monkeypatch):
    from generator.train.losses import layer_weights

    torch.manual_seed(2)
    features = tiny_train.TinyFeatures()
    x, y = torch.rand(2, 3, 16, 16) * 2 - 1, torch.rand(2, 3, 16, 16) * 2 - 1
    cached = write_lin(no_lpips, features.channels, seed=1)
    weights = layer_weights("lpips", 2)
    for got, (_name, want) in zip(weights, sorted(cached.items())):
        assert torch.equal(got, want.flatten())
    lpips, equal = Perceptual(features, weights), Perceptual(features)
    taps = [torch.nn.functional.normalize(f, dim=1, eps=1e-10).chunk(2) for f in
            features((torch.cat([x, y]) - lpips.shift) / lpips.scale)]
    by_hand = sum(((a - b) ** 2 * w.reshape(1, -1, 1, 1)).sum(1).mean((1, 2)) for (a, b), w in zip(taps, weights))
    torch.testing.assert_close(lpips(x, y), by_hand, rtol=1e-5, atol=0)
    assert not torch.allclose(lpips(x, y), equal(x, y))
    site = tmp_path / "site"  # an installed lpips package wins over the cache, and is found without importing it
    (site / "lpips").mkdir(parents=True)
    (site / "lpips" / "__init__.py").write_text("raise ImportError('lpips must not be imported')\n")
    packaged = write_lin(site / "lpips" / "weights" / "v0.1" / "vgg.pth", features.channels, seed=2)
    monkeypatch.delitem(sys.modules, "lpips")
    monkeypatch.syspath_prepend(str(site))
    assert torch.equal(layer_weights("lpips", 2)[1], packaged["lin1.model.1.weight"].flatten())
    assert torch.equal(layer_weights(str(no_lpips), 2)[0], cached["lin0.model.1.weight"].flatten())  # a file
    with pytest.raises(ConfigError, match="no LPIPS layer weight 'lin2.model.1.weight'"):
        layer_weights("lpips", 3)


def test_equal_perceptual_weights_are_an_explicit_choice_with_a_warning(caplog):
    from generator.train.losses import layer_weights

    caplog.set_level("WARNING", logger="depthfusion.train.losses")
    assert layer_weights("equal", 2) is None
    assert "equal channel weights: this is not LPIPS" in caplog.text and "--perceptual-weight" in caplog.text
    features = tiny_train.TinyFeatures()
    equal = Perceptual(features, layer_weights("equal", 2))
    assert [w.flatten().tolist() for w in equal.weights] == [[1 / c] * c for c in features.channels]


def test_cli_trains_both_stages_from_a_toml_config(world, tmp_path, capsys):
    toml = tmp_path / "train.toml"
    toml.write_text(f'dataset = "{world["train"]}"\nbatch_size = 2\nsteps = 2\nlr = 1e-4\nlog_every = 1\n')
    ae = ["train", "autoencoder", "--config", str(toml), "--output", str(tmp_path / "ae"), "--vae", str(world["sd"]),
          "--perceptual", "none", "--disc-layers", "2", "--disc-start", "1"]
    assert main(ae) == 0 and f"trained autoencoder: {tmp_path / 'ae' / 'vae'}" in capsys.readouterr().out
    unet = ["train", "unet", "--config", str(toml), "--output", str(tmp_path / "ldm3d"), "--base", str(world["sd"]),
            "--vae", str(tmp_path / "ae"), "--no-ema", "--validation-prompts", ""]
    assert main(unet) == 0 and "trained unet" in capsys.readouterr().out
    assert load_backend(str(tmp_path / "ldm3d")).variant.channels == 6
    rows = (tmp_path / "ldm3d" / "logs" / "unet.csv").read_text().splitlines()
    assert rows[0].startswith("step,epoch,loss,lr") and len(rows) == 3


def test_four_channel_model_trains_and_generates_a_panorama(world, tmp_path):
    data = tiny_train.demo_dataset(tmp_path / "lib", tmp_path / "rgbd4", range(4), channels=4)
    widen(load_vae(str(world["sd"])), 4).save_pretrained(tmp_path / "ae4" / "vae")
    out = UNetTrainer(unet_config(world, tmp_path / "ldm3d-4c", dataset=str(data), vae=str(tmp_path / "ae4"),
                                  steps=2, validation_prompts="")).run()
    backend = load_backend(str(out))
    assert backend.variant.channels == 4
    frame = backend.generate(validate_generation({"prompt": "a 360 degree panorama", "seed": 1, "steps": 2,
                                                  "width": 128, "height": 64}), lambda s, n: None, lambda: False)
    assert frame.rgb.shape == (64, 128, 3) and frame.depth.shape == (64, 128) and frame.depth.dtype == np.uint16
