"""A tiny random-weight ldm3d-sr in the hub layout, built on the spot (a few MB, seconds).

The tiny LDM3D of tests/tiny_ldm3d.py with a 4-channel VAE, its U-Net replaced by an 8-channel one (noisy +
low-resolution latents) that embeds the noise level as a class (``class_embed_type`` None, ``num_class_embeds`` 1000
as stabilityai/stable-diffusion-x4-upscaler's unet/config.json), a DDPM ``low_res_scheduler`` (linear betas
0.0001-0.02 over 1000 steps, as that repository's low_res_scheduler) and a model_index.json naming
StableDiffusionUpscaleLDM3DPipeline with max_noise_level 350.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

import tiny_ldm3d

PIPELINE = "StableDiffusionUpscaleLDM3DPipeline"


def build(model: Path, seed: int = 0, max_noise_level: int = 350, **unet_overrides: Any) -> Path:
    """Write a tiny upscaler into the folder ``model`` and return it; ``unet_overrides`` change the U-Net config."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    tiny_ldm3d.build(model, vae_channels=4, unet_in_channels=8, seed=seed)
    torch.manual_seed(seed + 1)
    config = {**UNet2DConditionModel.load_config(model / "unet"), "class_embed_type": None, "num_class_embeds": 1000,
              **unet_overrides}
    for stale in model.glob("unet/*"):
        stale.unlink()
    UNet2DConditionModel.from_config(config).save_pretrained(model / "unet")
    DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", num_train_timesteps=1000) \
        .save_pretrained(model / "low_res_scheduler")
    index = json.loads((model / "model_index.json").read_text(encoding="utf-8"))
    index.update(_class_name=PIPELINE, low_res_scheduler=["diffusers", "DDPMScheduler"],
                 max_noise_level=max_noise_level)
    (model / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    return model


def edit_json(path: Path, **changes: Any) -> None:
    """Change keys of a JSON config in place (None removes a key)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(changes)
    path.write_text(json.dumps({k: v for k, v in data.items() if v is not None}), encoding="utf-8")
