"""``python -m generator train unet``: LDM3D's second stage, the U-Net on the frozen widened autoencoder's latents.

The paper's recipe: start from Stable Diffusion v1.4's U-Net, text encoder and tokenizer (``--base``), the
autoencoder from ``train autoencoder`` (``--vae``) frozen, the CLIP text encoder frozen; t uniform over the
training schedule, loss ‖ε − ε_θ(z_t, t, c)‖² (v-prediction where the base's scheduler says so), Adam at 1e-5,
batch 32 (``batch_size × processes × grad_accum``). Options: EMA of the U-Net weights (the output then holds
the EMA weights), Min-SNR-γ loss weighting (Hang et al. 2023; γ = 5 is their suggestion), gradient
checkpointing, mixed precision (the frozen models run in that precision), 8-bit Adam from bitsandbytes.
Validation renders prompts with our LDM3D backend (RGB + depth previews under ``OUTPUT/validation``).
The output folder is a diffusers-layout LDM3D model: ``--model OUTPUT`` generates and serves with it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F

from ..backends.base import BackendUnavailable
from .autoencoder import load_vae
from .dataset import RGBDDataset
from .engine import Trainer
from .options import ConfigError

log = logging.getLogger("depthfusion.train.unet")



def _load_base(base: str, revision: str | None, offline: bool) -> dict[str, Any]:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(base).expanduser()
    name = str(folder) if folder.is_dir() else base
    if folder.is_dir() and not (folder / "unet" / "config.json").is_file():
        raise ConfigError(f"{folder} is not a diffusers model folder (no unet/config.json)")
    options = {"revision": revision, "local_files_only": offline}
    try:
        return {
            "tokenizer": CLIPTokenizer.from_pretrained(name, subfolder="tokenizer", **options),
            "text_encoder": CLIPTextModel.from_pretrained(name, subfolder="text_encoder", **options),
            "unet": UNet2DConditionModel.from_pretrained(name, subfolder="unet", low_cpu_mem_usage=False, **options),
            "noise": DDPMScheduler.from_pretrained(name, subfolder="scheduler", **options),
        }
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"cannot load the base model {base}: {type(exc).__name__}: {exc}") from None


def min_snr_weights(noise_scheduler: Any, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample loss weights min(SNR, γ)/SNR (ε-prediction) or min(SNR, γ)/(SNR + 1) (v-prediction)."""
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_scheduler, timesteps)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if noise_scheduler.config.prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr


class UNetTrainer(Trainer):
    """Stage 2; ``components`` (tokenizer, text_encoder, unet, noise, vae) may be passed in instead of loaded."""

    stage = "unet"

    def __init__(self, config: SimpleNamespace, accelerator: Any = None, components: dict[str, Any] | None = None):
        super().__init__(config, accelerator)
        self._components = components

    def setup(self) -> None:
        from diffusers.training_utils import EMAModel

        from ..backends.ldm3d import check_components

        config = self.config
        parts = dict(self._components) if self._components else _load_base(config.base, config.revision,
                                                                             config.offline)
        if "vae" not in parts:
            parts["vae"] = load_vae(config.vae or config.base, revision=None if config.vae else config.revision,
                                    offline=config.offline)
        try:
            self.variant = check_components(parts["tokenizer"], parts["text_encoder"], parts["unet"], parts["vae"])
        except BackendUnavailable as exc:
            hint = " (an RGB autoencoder: run `train autoencoder` first and pass --vae)" \
                if parts["vae"].config.out_channels == 3 else ""
            raise ConfigError(f"these parts do not make an LDM3D model: {exc}{hint}") from None
        self.dataset = RGBDDataset(Path(config.dataset), self.variant.channels)
        self.tokenizer, self.noise = parts["tokenizer"], parts["noise"]
        if self.noise.config.prediction_type not in ("epsilon", "v_prediction"):
            raise ConfigError(f"the base's scheduler predicts {self.noise.config.prediction_type!r}; "
                              "epsilon or v_prediction are trained here")
        # frozen models stay in fp32 (they are saved into the output as loaded) and run under autocast
        self.text_encoder = parts["text_encoder"].requires_grad_(False).eval().to(self.device)
        self.vae = parts["vae"].requires_grad_(False).eval().to(self.device)
        unet = parts["unet"].train()
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self.ema = None
        if config.ema:
            self.ema = EMAModel(unet.parameters(), decay=config.ema_decay, model_cls=type(unet),
                                model_config=unet.config)
            self.ema.to(self.device)
            self.accelerator.register_for_checkpointing(self.ema)
        optimizer = self._optimizer(unet)
        self.unet, self.opt, self.sched = self.accelerator.prepare(unet, optimizer, self.lr_schedule(optimizer))
        self.models = [self.unet]
        self.prompts = [p.strip() for p in config.validation_prompts.split("|") if p.strip()]
        log.info("unet: %d-channel LDM3D, dataset %d items, batch %d × %d processes × %d accumulation", 
                 self.variant.channels, len(self.dataset), config.batch_size, self.accelerator.num_processes,
                 config.grad_accum)

    def _optimizer(self, unet: Any) -> torch.optim.Optimizer:
        config = self.config
        kind = torch.optim.AdamW
        if config.use_8bit_adam:
            try:
                import bitsandbytes
            except ImportError:
                raise ConfigError("use_8bit_adam needs bitsandbytes (pip install bitsandbytes; CUDA GPUs), "
                                  "or leave it off") from None
            kind = bitsandbytes.optim.AdamW8bit
        return kind(unet.parameters(), lr=config.lr, betas=(config.adam_beta1, config.adam_beta2),
                    eps=config.adam_eps, weight_decay=config.weight_decay)

    @torch.no_grad()
    def _condition(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(scaled latents, text embeddings) from the frozen models."""
        x = batch["pixel_values"].to(self.device)
        tokens = self.tokenizer(batch["caption"], padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt").input_ids.to(self.device)
        with self.accelerator.autocast():
            latents = self.vae.encode(x).latent_dist.sample() * self.vae.config.scaling_factor
            text = self.text_encoder(tokens)[0]
        return latents.float(), text.float()

    def train_batch(self, batch: dict[str, Any]) -> dict[str, float]:
        latents, text = self._condition(batch)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.noise.config.num_train_timesteps, (latents.shape[0],), device=self.device)
        noisy = self.noise.add_noise(latents, noise, timesteps)
        target = noise if self.noise.config.prediction_type == "epsilon" else \
            self.noise.get_velocity(latents, noise, timesteps)
        with self.accelerator.autocast():
            predicted = self.unet(noisy, timesteps, text).sample
        per_sample = F.mse_loss(predicted.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if self.config.snr_gamma:
            per_sample = per_sample * min_snr_weights(self.noise, timesteps, self.config.snr_gamma)
        loss = per_sample.mean()
        self.accelerator.backward(loss)
        self.clip(self.unet.parameters())
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None and self.accelerator.sync_gradients:
            self.ema.step(self.unet.parameters())
        return {"loss": loss.item(), "lr": self.sched.get_last_lr()[0]}

    def _sampling_unet(self) -> Any:
        """The U-Net that samples and is saved: a copy holding the EMA weights, or the trained one."""
        unet = self.accelerator.unwrap_model(self.unet)
        if self.ema is None:
            return unet
        copy = type(unet).from_config(unet.config).to(self.device)
        self.ema.copy_to(copy.parameters())
        return copy

    def _scheduler_config(self) -> dict[str, Any]:
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.noise.config).config

    def validate(self) -> dict[str, float]:
        """RGB and depth previews of the validation prompts with the LDM3D backend (main process), at the
        dataset's size (at least 64 px a side, generation's smallest)."""
        if not self.accelerator.is_main_process or not self.prompts:
            return {}
        from td_bridge.depth import write_depth_png
        from td_bridge.params import validate_generation

        from ..backends.ldm3d import LDM3DBackend
        from ..images import write_rgb_png

        unet = self._sampling_unet()
        was_training = unet.training
        backend = LDM3DBackend("validation", self.tokenizer, self.text_encoder, unet.eval(), self.vae,
                               self._scheduler_config(), self.device, torch.float32)
        height, width = self.dataset.size
        folder = self.output / "validation" / f"step-{self.step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for number, prompt in enumerate(self.prompts):
            params = validate_generation({"prompt": prompt, "seed": number, "steps": self.config.validation_steps,
                                          "width": max(64, width), "height": max(64, height), "seamless": False})
            frame = backend.generate(params, lambda step, total: None, lambda: False)
            write_rgb_png(folder / f"{number:02d}.png", frame.rgb)
            write_depth_png(folder / f"{number:02d}.depth.png", frame.depth)
        unet.train(was_training)
        return {}

    def save_output(self) -> Path:
        """The diffusers-layout LDM3D folder (the EMA weights when EMA is on) that ``--model`` loads."""
        if self.accelerator.is_main_process:
            from diffusers import DDIMScheduler

            unet = self._sampling_unet()
            for name, part in (("tokenizer", self.tokenizer), ("text_encoder", self.text_encoder), ("unet", unet),
                               ("vae", self.vae)):
                part.save_pretrained(self.output / name)
            DDIMScheduler.from_config(self._scheduler_config()).save_pretrained(self.output / "scheduler")
            index = {"_class_name": "StableDiffusionLDM3DPipeline", "_diffusers_version": _diffusers_version(),
                     "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                     "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                     "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None],
                     "feature_extractor": [None, None], "requires_safety_checker": False}
            (self.output / "model_index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
            log.info("model saved to %s: python -m generator serve --model %s", self.output, self.output)
        self.accelerator.wait_for_everyone()
        return self.output


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__
