"""``python -m generator train autoencoder``: SD's KL autoencoder widened to RGB + depth, then fine-tuned.

Widening (:func:`widen`), chosen so that the widened model's RGB is the original's at step 0:

- ``encoder.conv_in`` gains input channels whose weights are **zero**: depth adds nothing to the latent until
  training moves them, so the latent of (RGB, any depth) is the latent of RGB.
- ``decoder.conv_out`` gains output rows initialised to the **mean of the three RGB rows** (weights and bias):
  the depth channels start as the decoded image's grey level, a smooth start, and the RGB rows are untouched.

(Marigold instead repeats and halves input weights, which changes what RGB alone encodes to; we need RGB
unchanged.) An autoencoder that already has 6 or 4 channels (an LDM3D VAE) is fine-tuned as it is.

Loss per step, as CompVis' LPIPSWithDiscriminator: nll = Σ(|x − x̂| or (x − x̂)²) + w_p·(P(RGB) + P(depth)) per
image (P: the perceptual distance, on the RGB and on the depth map repeated to three channels, with gradient),
+ kl_weight·KL, + adaptive weight × disc_weight × hinge generator loss from ``disc_start`` on; the discriminator
has its own Adam and learns from the same step on. (LPIPSWithDiscriminator's learnable output log-variance is
left out, i.e. fixed at 0.)
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .dataset import RGBDDataset
from .engine import Trainer
from .losses import PatchDiscriminator, Perceptual, adaptive_weight, load_perceptual
from .options import ConfigError
from .packing import check_channels, depth_map

log = logging.getLogger("depthfusion.train.autoencoder")


def load_vae(spec: str, *, revision: str | None = None, offline: bool = False):
    """AutoencoderKL from a folder (its own, or a model folder's vae/) or a hub id (its vae/ subfolder)."""
    from diffusers import AutoencoderKL

    folder = Path(spec).expanduser()
    if folder.is_dir():
        subfolder = None if (folder / "config.json").is_file() else "vae"
        if subfolder and not (folder / "vae" / "config.json").is_file():
            raise ConfigError(f"{folder} holds neither an autoencoder (config.json) nor a model with vae/")
    else:
        subfolder = "vae"
    try:
        return AutoencoderKL.from_pretrained(str(folder) if folder.is_dir() else spec, subfolder=subfolder,
                                             revision=revision, local_files_only=offline, low_cpu_mem_usage=False)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"cannot load the autoencoder {spec}: {type(exc).__name__}: {exc}") from None


def widen(vae: Any, channels: int):
    """An AutoencoderKL for ``channels`` (6 or 4) with the RGB behaviour of the 3-channel ``vae`` (module doc)."""
    from diffusers import AutoencoderKL

    check_channels(channels)
    have = (vae.config.in_channels, vae.config.out_channels)
    if have == (channels, channels):
        return vae
    if have != (3, 3):
        raise ConfigError(f"the autoencoder takes {have[0]} and gives {have[1]} channels; widening needs an RGB "
                          f"(3-channel) one, or one with {channels} already")
    wide = AutoencoderKL.from_config({**vae.config, "in_channels": channels, "out_channels": channels})
    state = vae.state_dict()
    w_in, w_out, b_out = (state[k] for k in ("encoder.conv_in.weight", "decoder.conv_out.weight",
                                              "decoder.conv_out.bias"))
    extra = channels - 3
    state["encoder.conv_in.weight"] = torch.cat([w_in, w_in.new_zeros(w_in.shape[0], extra, *w_in.shape[2:])], 1)
    state["decoder.conv_out.weight"] = torch.cat([w_out, w_out.mean(0, keepdim=True).repeat(extra, 1, 1, 1)])
    state["decoder.conv_out.bias"] = torch.cat([b_out, b_out.mean().repeat(extra)])
    wide.load_state_dict(state)
    return wide if wide.dtype == vae.dtype else wide.to(vae.dtype)


class Reconstruct(nn.Module):
    """encode → sample the posterior → decode, as one forward (what data-parallel wraps): (x̂, KL per image)."""

    def __init__(self, vae: Any) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.sample()).sample, posterior.kl()


def _grey3(images: torch.Tensor) -> torch.Tensor:
    return depth_map(images).repeat(1, 3, 1, 1)


@torch.no_grad()
def reconstruction_errors(vae: Any, batch: torch.Tensor) -> dict[str, float]:
    """Mean absolute error of the reconstruction (posterior mode) on [0, 1]: RGB and depth (as decoded)."""
    recon = vae.decode(vae.encode(batch).latent_dist.mode()).sample.clamp(-1, 1)
    rgb = ((recon[:, :3] - batch[:, :3]).abs().mean() / 2).item()
    depth = ((depth_map(recon) - depth_map(batch)).abs().mean() / 2).item()
    return {"rgb_error": rgb, "depth_error": depth}


class AutoencoderTrainer(Trainer):
    """Stage 1; ``perceptual`` and ``vae`` may be passed in (tests, notebooks) instead of loaded by name."""

    stage = "autoencoder"

    def __init__(self, config: SimpleNamespace, accelerator: Any = None, perceptual: Perceptual | None = None,
                 vae: Any = None) -> None:
        super().__init__(config, accelerator)
        self._perceptual, self._vae = perceptual, vae

    def setup(self) -> None:
        config = self.config
        channels = check_channels(config.channels or RGBDDataset(Path(config.dataset)).channels)
        self.dataset = RGBDDataset(Path(config.dataset), channels)
        self.val = RGBDDataset(Path(config.val_dataset), channels) if config.val_dataset else None
        perceptual = self._perceptual if self._perceptual is not None else \
            load_perceptual(config.perceptual, config.perceptual_lin)  # before the VAE: a missing file fails fast
        self.perceptual = perceptual.to(self.device) if perceptual is not None else None
        vae = self._vae if self._vae is not None else load_vae(config.vae, revision=config.revision,
                                                                offline=config.offline)
        model = Reconstruct(widen(vae, channels).train())
        smallest = 3 * 2 ** config.disc_layers  # each stride-2 layer halves, the last two 4×4 layers take 1 px each
        if min(self.dataset.size) < smallest:
            raise ConfigError(f"a {config.disc_layers}-layer PatchGAN needs images of at least {smallest} px; the "
                              f"dataset's are {self.dataset.size[1]}x{self.dataset.size[0]} (lower disc_layers)")
        disc = PatchDiscriminator(channels, layers=config.disc_layers)
        betas = (config.adam_beta1, config.adam_beta2)
        opt = torch.optim.AdamW(model.parameters(), config.lr, betas, config.adam_eps, config.weight_decay)
        d_opt = torch.optim.AdamW(disc.parameters(), config.disc_lr or config.lr, betas, config.adam_eps,
                                  config.weight_decay)
        prepared = self.accelerator.prepare(model, disc, opt, d_opt, self.lr_schedule(opt), self.lr_schedule(d_opt))
        self.model, self.disc, self.opt, self.d_opt, self.sched, self.d_sched = prepared
        self.models = [self.model, self.disc]
        log.info("autoencoder: %d channels, dataset %d items%s, perceptual %s", channels, len(self.dataset),
                 f", held-out {len(self.val)}" if self.val else "", "on" if self.perceptual else "off")

    @property
    def vae(self) -> Any:
        return self.accelerator.unwrap_model(self.model).vae

    def _perceptual_terms(self, x: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
        if self.perceptual is None or not self.config.perceptual_weight:
            return x.new_zeros(x.shape[0])
        return self.perceptual(x[:, :3], recon[:, :3]) + self.perceptual(_grey3(x), _grey3(recon))

    def train_batch(self, batch: dict[str, Any]) -> dict[str, float]:
        config, acc = self.config, self.accelerator
        x = batch["pixel_values"].to(self.device)
        pixels = x[0].numel()
        gan = self.step >= config.disc_start
        with acc.autocast():
            recon, kl = self.model(x)
            diff = (x - recon).abs() if config.rec_loss == "l1" else (x - recon) ** 2
            perceptual = self._perceptual_terms(x, recon)
            nll = (diff.sum() + config.perceptual_weight * perceptual.sum() * pixels) / x.shape[0]
            kl = kl.sum() / x.shape[0]
            loss = nll + config.kl_weight * kl
            metrics = {"rec": diff.mean().item(), "perceptual": perceptual.mean().item(), "kl": kl.item()}
            if gan:
                disc = acc.unwrap_model(self.disc).requires_grad_(False)  # the generator step leaves D alone
                g_loss = -disc(recon).mean()
                weight = config.disc_weight * adaptive_weight(nll, g_loss, self.vae.decoder.conv_out.weight)
                loss = loss + weight * g_loss
                metrics |= {"g_loss": g_loss.item(), "d_weight": weight.item()}
        metrics |= self.update(loss, *((x, recon) if gan else ()))
        return {"loss": loss.item() / pixels, **metrics, "lr": self.sched.get_last_lr()[0]}

    def validate(self) -> dict[str, float]:
        if self.val is None:
            return {}
        totals: dict[str, float] = {}
        for start in range(0, len(self.val), self.config.batch_size):
            items = [self.val[i]["pixel_values"] for i in range(start, min(start + self.config.batch_size,
                                                                           len(self.val)))]
            for key, value in reconstruction_errors(self.vae, torch.stack(items).to(self.device)).items():
                totals[f"val_{key}"] = totals.get(f"val_{key}", 0.0) + value * len(items)
        return {k: v / len(self.val) for k, v in totals.items()}

    def save_output(self) -> Path:
        folder = self.output / "vae"
        if self.accelerator.is_main_process:
            self.vae.save_pretrained(folder)
            log.info("autoencoder saved to %s; next: train unet --vae %s", folder, self.output)
        return folder
