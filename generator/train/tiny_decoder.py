"""``python -m generator train tiny-decoder``: distil an LDM3D model's VAE decoder into a TAESD-sized RGBD decoder.

The teacher is the model's full VAE decoder, frozen and run in fp32 (the 6-channel model's depth bytes need it);
the student a decode-only ``AutoencoderTiny`` (backends/tiny_decoder.py) that turns the U-Net's latents into RGB
and one depth channel. Latents come from

- ``--dataset DIR`` (built by ``dataset build``): its images encoded by the model's VAE encoder at every step (a
  posterior sample, scaled by the VAE's scaling factor, as the U-Net sees them), or
- ``--from-model PROMPTS``: the model's own sampling (our LDM3DBackend, ``--sample-steps``), made once into
  ``OUTPUT/latents/`` (one file per prompt and seed, reused when a run is resumed or repeated; slow on a CPU).

Per step: a random crop of the latents (``--resolution``; a seamless run rolls each latent by a random number of
columns first and keeps the whole width, so the seam lands anywhere and wraps), the teacher's decode of the same
latents as target (RGB in [0, 1]; depth as generation reads it, the 6-channel bytes unpacked to one value in
[0, 1]), and the loss

    L1(RGB) + w_p·P(RGB) + w_d·(L1(depth) + w_g·(|∂x Δdepth| + |∂y Δdepth|)) [+ w_adv·hinge generator loss]

with P the LPIPS-style distance of losses.py, finite differences that wrap across the seam in seamless runs, and
an optional PatchGAN on RGB + depth (off by default). Validation: the mean absolute RGB and depth error against
the full decoder on held-out latents, and previews (``OUTPUT/validation/step-N/``, the full decoder's in
``validation/full/``). Output: ``OUTPUT`` itself is the decoder folder that ``--decoder OUTPUT`` loads.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..backends.base import BackendUnavailable
from ..backends.seamless import set_seamless
from ..backends.tiny_decoder import (full_unit, make_decoder, parameter_count, save_decoder, teacher_info, tiny_unit,
                                     to_frame, vae_scale_factor)
from .autoencoder import load_vae
from .dataset import RGBDDataset
from .engine import Trainer
from .latents import LatentSet, latent_jobs, latent_set, pending, read_prompts, roll_and_crop, sample_into
from .losses import PatchDiscriminator, Perceptual, load_perceptual
from .options import ConfigError

log = logging.getLogger("depthfusion.train.tiny_decoder")

LATENTS = "latents"


def gradient_loss(pred: torch.Tensor, target: torch.Tensor, wrap: bool) -> torch.Tensor:
    """Mean |∂x pred − ∂x target| + |∂y pred − ∂y target| by forward differences; ``wrap``: the last column's
    x-difference is taken to the first (the 0°/360° seam)."""
    def dx(t: torch.Tensor) -> torch.Tensor:
        return torch.roll(t, -1, dims=-1) - t if wrap else t[..., 1:] - t[..., :-1]

    def dy(t: torch.Tensor) -> torch.Tensor:
        return t[..., 1:, :] - t[..., :-1, :]

    return (dx(pred) - dx(target)).abs().mean() + (dy(pred) - dy(target)).abs().mean()


@torch.no_grad()
def decoder_errors(tiny: Any, teacher: Any, latents: torch.Tensor, batch_size: int = 8) -> dict[str, float]:
    """Mean absolute error of the tiny decoder against the full one on [0, 1]: RGB, and depth as generation reads
    it (one value per pixel)."""
    totals = {"rgb_error": 0.0, "depth_error": 0.0}
    device = next(tiny.parameters()).device
    for start in range(0, len(latents), batch_size):
        z = latents[start:start + batch_size].to(device)
        mine, full = tiny_unit(tiny, z.float()), full_unit(teacher, z)
        totals["rgb_error"] += (mine[:, :3] - full[:, :3]).abs().mean().item() * len(z)
        totals["depth_error"] += (mine[:, 3:] - full[:, 3:]).abs().mean().item() * len(z)
    return {k: v / len(latents) for k, v in totals.items()}


def sample_latents(config: SimpleNamespace, prompts: list[str], split: str, seamless: bool, accelerator: Any,
                   folder: Path) -> LatentSet:
    """Latents of ``prompts`` × ``samples_per_prompt`` seeds from the model's own sampling, made once into
    ``folder`` (existing files with the same settings are kept); processes share the work."""
    folder.mkdir(parents=True, exist_ok=True)
    jobs = latent_jobs(config, prompts, split, seamless, folder)
    mine = pending(jobs, accelerator)
    if mine:
        from ..backends.ldm3d import LDM3DBackend

        try:
            backend = LDM3DBackend.load(config.model, device=str(accelerator.device), revision=config.revision,
                                        local_files_only=config.offline)
        except BackendUnavailable as exc:
            raise ConfigError(f"--from-model: {exc}") from None
        sample_into(backend, mine, accelerator, f"{split} latents ({config.sample_steps} steps each)")
        del backend
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    accelerator.wait_for_everyone()
    return latent_set(jobs)


class Decode(nn.Module):
    """The student's forward (what data-parallel wraps): latents → (B, 4, H, W) RGB + depth, unclamped [0, 1]."""

    def __init__(self, tiny: Any) -> None:
        super().__init__()
        self.tiny = tiny

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return tiny_unit(self.tiny, latents, clamp=False)


class TinyDecoderTrainer(Trainer):
    """``perceptual`` and ``teacher`` (the model's AutoencoderKL) may be passed in (tests) instead of loaded."""

    stage = "tiny-decoder"

    def __init__(self, config: SimpleNamespace, accelerator: Any = None, perceptual: Perceptual | None = None,
                 teacher: Any = None) -> None:
        if (config.dataset is None) == (config.from_model is None):
            raise ConfigError("give either --dataset DIR (images encoded by the model's VAE) or --from-model "
                              "PROMPTS (latents sampled by the model)")
        super().__init__(config, accelerator)
        self._perceptual, self._teacher = perceptual, teacher

    # setup ------------------------------------------------------------------

    def _load_teacher(self) -> Any:
        config = self.config
        teacher = self._teacher if self._teacher is not None else load_vae(config.model, revision=config.revision,
                                                                           offline=config.offline)
        if teacher.config.out_channels not in (6, 4):
            raise ConfigError(f"{config.model}'s VAE decodes {teacher.config.out_channels} channels; an LDM3D VAE "
                              "decodes 6 (RGB + 3×8-bit depth) or 4 (RGB + depth)")
        return teacher.float().requires_grad_(False).eval().to(self.device)

    def _sources(self, channels: int) -> tuple[Any, Any, tuple[int, int]]:
        """(training set, held-out set or None, image size (h, w))."""
        config = self.config
        if config.dataset:
            if config.val_prompts:
                raise ConfigError("--val-prompts goes with --from-model; with --dataset use --val-dataset")
            data = RGBDDataset(Path(config.dataset), channels)
            val = RGBDDataset(Path(config.val_dataset), channels) if config.val_dataset else None
            return data, val, data.size
        if config.val_dataset:
            raise ConfigError("--val-dataset goes with --dataset; with --from-model use --val-prompts")
        size = (config.sample_height, config.sample_width)
        seamless = self._seamless(size)
        folder = self.output / LATENTS
        data = sample_latents(config, read_prompts(config.from_model), "train", seamless, self.accelerator, folder)
        val = sample_latents(config, read_prompts(config.val_prompts), "val", seamless, self.accelerator, folder) \
            if config.val_prompts else None
        return data, val, size

    def _seamless(self, size: tuple[int, int]) -> bool:
        return self.config.seamless if self.config.seamless is not None else size[1] == 2 * size[0]

    def setup(self) -> None:
        config = self.config
        perceptual = self._perceptual if self._perceptual is not None else \
            load_perceptual(config.perceptual, config.perceptual_lin)  # first: a missing file fails before sampling
        self.perceptual = perceptual.to(self.device) if perceptual is not None else None
        self.teacher = self._load_teacher()
        channels, scale = self.teacher.config.out_channels, vae_scale_factor(self.teacher)
        if config.resolution % scale:
            raise ConfigError(f"resolution {config.resolution} is not a multiple of the model's scale factor {scale}")
        for name in ("sample_width", "sample_height"):
            if config.from_model and getattr(config, name) % scale:
                raise ConfigError(f"{name} {getattr(config, name)} is not a multiple of the model's scale factor "
                                  f"{scale}")
        self.dataset, val, size = self._sources(channels)
        if size[0] % scale or size[1] % scale:
            raise ConfigError(f"the images are {size[1]}x{size[0]}, not multiples of the model's scale factor {scale}")
        self.seamless = self._seamless(size)
        set_seamless(self.teacher, self.seamless)  # its encoder too: panoramas are encoded seamlessly
        self.scale, self.size = scale, size
        cells = config.resolution // scale or max(size) // scale
        self.crop = (min(size[0] // scale, cells), size[1] // scale if self.seamless else min(size[1] // scale, cells))
        self.val_latents, self.val_held_out = self._validation_latents(val)
        tiny = make_decoder(self.teacher.config.latent_channels, scale, config.decoder_channels, config.decoder_blocks)
        set_seamless(tiny, self.seamless)
        tiny.encoder.requires_grad_(False)  # a placeholder: decode only
        tiny.decoder.train()
        model = Decode(tiny)
        betas = (config.adam_beta1, config.adam_beta2)
        opt = torch.optim.AdamW(tiny.decoder.parameters(), config.lr, betas, config.adam_eps, config.weight_decay)
        if config.adv_weight:
            smallest = 3 * 2 ** config.disc_layers
            if min(self.crop) * scale < smallest:
                raise ConfigError(f"a {config.disc_layers}-layer PatchGAN needs crops of at least {smallest} px "
                                  f"(raise resolution or lower disc_layers)")
            disc = PatchDiscriminator(4, layers=config.disc_layers)
            d_opt = torch.optim.AdamW(disc.parameters(), config.disc_lr or config.lr, betas, config.adam_eps,
                                      config.weight_decay)
            prepared = self.accelerator.prepare(model, disc, opt, d_opt, self.lr_schedule(opt),
                                                self.lr_schedule(d_opt))
            self.model, self.disc, self.opt, self.d_opt, self.sched, self.d_sched = prepared
            self.models = [self.model, self.disc]
        else:
            self.disc = self.d_opt = None
            self.model, self.opt, self.sched = self.accelerator.prepare(model, opt, self.lr_schedule(opt))
            self.models = [self.model]
        log.info("tiny-decoder: %d decoder parameters, teacher %s (%d-channel VAE, scale %d), %d training items, "
                 "crops of %dx%d latents%s, perceptual %s, adversarial %s", parameter_count(tiny), config.model,
                 channels, scale, len(self.dataset), self.crop[1], self.crop[0], ", seamless" if self.seamless else "",
                 "on" if self.perceptual else "off", "on" if config.adv_weight else "off")

    def _validation_latents(self, val: Any) -> tuple[torch.Tensor, bool]:
        """Fixed latents to validate on (posterior means of held-out images, or held-out samples); without a
        held-out set the first training items."""
        source = val if val is not None else self.dataset
        items = [source[i] for i in range(min(self.config.validation_items, len(source)))]
        if "latents" in items[0]:
            return torch.stack([i["latents"] for i in items]), val is not None
        x = torch.stack([i["pixel_values"] for i in items]).to(self.device)
        with torch.no_grad():
            z = self.teacher.encode(x).latent_dist.mode() * self.teacher.config.scaling_factor
        return z.float().cpu(), val is not None

    # training ---------------------------------------------------------------

    @property
    def tiny(self) -> Any:
        return self.accelerator.unwrap_model(self.model).tiny

    @torch.no_grad()
    def latents_of(self, batch: dict[str, Any]) -> torch.Tensor:
        if "latents" in batch:
            return batch["latents"].to(self.device).float()
        x = batch["pixel_values"].to(self.device)
        return (self.teacher.encode(x).latent_dist.sample() * self.teacher.config.scaling_factor).float()

    def train_batch(self, batch: dict[str, Any]) -> dict[str, float]:
        config, acc = self.config, self.accelerator
        latents = roll_and_crop(self.latents_of(batch), self.crop, self.seamless)
        with torch.no_grad():
            target = full_unit(self.teacher, latents)
        gan = self.disc is not None and self.step >= config.disc_start
        with acc.autocast():
            pred = self.model(latents).float()
            rgb, depth = pred[:, :3], pred[:, 3:]
            rgb_l1 = (rgb - target[:, :3]).abs().mean()
            depth_l1 = (depth - target[:, 3:]).abs().mean()
            grad = gradient_loss(depth, target[:, 3:], self.seamless)
            perceptual = self.perceptual(rgb * 2 - 1, target[:, :3] * 2 - 1).mean() \
                if self.perceptual is not None and config.perceptual_weight else rgb_l1.new_zeros(())
            loss = rgb_l1 + config.perceptual_weight * perceptual + config.depth_weight * (
                depth_l1 + config.gradient_weight * grad)
            metrics = {"rgb_l1": rgb_l1.item(), "perceptual": perceptual.item(), "depth_l1": depth_l1.item(),
                       "depth_grad": grad.item()}
            if gan:
                disc = acc.unwrap_model(self.disc).requires_grad_(False)  # the decoder's step leaves D alone
                g_loss = -disc(pred * 2 - 1).mean()
                loss = loss + config.adv_weight * g_loss
                metrics["g_loss"] = g_loss.item()
        metrics |= self.update(loss, *((target * 2 - 1, pred * 2 - 1) if gan else ()))
        return {"loss": loss.item(), **metrics, "lr": self.sched.get_last_lr()[0]}

    # validation and output --------------------------------------------------

    def validate(self) -> dict[str, float]:
        tiny = self.tiny
        was_training = tiny.decoder.training
        tiny.decoder.eval()
        errors = decoder_errors(tiny, self.teacher, self.val_latents, self.config.batch_size)
        if self.accelerator.is_main_process:
            self._previews(tiny)
        tiny.decoder.train(was_training)
        prefix = "val" if self.val_held_out else "train"
        return {f"{prefix}_{k}": v for k, v in errors.items()}

    @torch.no_grad()
    def _previews(self, tiny: Any) -> None:
        from td_bridge.depth import write_depth_png

        from ..images import write_rgb_png

        root = self.output / "validation"
        for name, decode in (("full", lambda z: full_unit(self.teacher, z)),
                             (f"step-{self.step:08d}", lambda z: tiny_unit(tiny, z))):
            folder = root / name
            if name == "full" and folder.is_dir():
                continue  # the full decoder's previews do not change
            folder.mkdir(parents=True, exist_ok=True)
            for number, z in enumerate(self.val_latents[:2]):
                rgb, depth = to_frame(decode(z[None].to(self.device))[0].permute(1, 2, 0).cpu().numpy())
                write_rgb_png(folder / f"{number:02d}.png", rgb)
                write_depth_png(folder / f"{number:02d}.depth.png", depth)

    def save_output(self) -> Path:
        if self.accelerator.is_main_process:
            config = self.config
            source = {"dataset": str(config.dataset)} if config.dataset else {"from_model": str(config.from_model)}
            info = teacher_info(self.teacher, config.model, self.seamless, self.step, source=source,
                                resolution=config.resolution, decoder_channels=config.decoder_channels,
                                decoder_blocks=config.decoder_blocks)
            save_decoder(self.tiny, self.output, info)
            log.info("tiny decoder saved to %s: generate with --decoder %s (or copy it to MODEL/tiny-decoder for "
                     "--decoder tiny)", self.output, self.output)
        self.accelerator.wait_for_everyone()
        return self.output
