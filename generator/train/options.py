"""Training options: one table per stage, read from flags and an optional TOML file (``--config``), checked.

Precedence: built-in default < the TOML file < flags given. Every value is checked before any model loads, and
an unknown key in the TOML file is an error (a typo must not silently train with the default).
"""

from __future__ import annotations

import argparse
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence


class ConfigError(ValueError):
    """A training option is missing or out of range (the message names it and what is allowed)."""


@dataclass(frozen=True)
class Option:
    name: str
    default: Any
    help: str
    kind: type = str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    required: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any, where: str) -> Any:
        if value is None:
            if self.required:
                raise ConfigError(f"{self.flag} is required ({self.help})")
            return None
        try:
            if self.kind is bool:
                if not isinstance(value, bool):
                    raise TypeError("expected true or false")
            elif self.kind is int:
                if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                    raise TypeError("expected a whole number")
                value = int(value)
            else:
                value = self.kind(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{self.name} ({where}): {exc} (got {value!r})") from None
        if self.choices and value not in self.choices:
            raise ConfigError(f"{self.name} ({where}) must be one of {', '.join(self.choices)}, got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ConfigError(f"{self.name} ({where}) must be in [{self.low:g}, {self.high:g}], got {value!r}")
        return value


COMMON: tuple[Option, ...] = (
    Option("dataset", None, "folder made by `dataset build`", required=True),
    Option("output", None, "output folder: checkpoints/, logs/ and the trained model", required=True),
    Option("steps", 1000, "optimiser steps to train", int, 1, 1e9),
    Option("batch_size", 8, "images per process per micro-batch", int, 1, 4096),
    Option("grad_accum", 1, "micro-batches per optimiser step (batch = batch_size × processes × this)", int, 1, 4096),
    Option("lr", 1e-5, "learning rate (the paper: Adam, 1e-5)", float, 0, 1),
    Option("adam_beta1", 0.9, "Adam β1", float, 0, 1),
    Option("adam_beta2", 0.999, "Adam β2", float, 0, 1),
    Option("adam_eps", 1e-8, "Adam ε", float, 0, 1),
    Option("weight_decay", 0.0, "weight decay (0: plain Adam, as the paper)", float, 0, 1),
    Option("warmup_steps", 0, "linear learning-rate warm-up steps, then constant", int, 0, 1e9),
    Option("max_grad_norm", 1.0, "gradient clipping norm (0: none)", float, 0, 1e6),
    Option("mixed_precision", "no", "autocast precision", choices=("no", "fp16", "bf16")),
    Option("seed", 0, "random seed (data order, noise, initialisation)", int, 0, 2**31 - 1),
    Option("checkpoint_every", 500, "save a resumable checkpoint every N steps", int, 1, 1e9),
    Option("keep_checkpoints", 3, "checkpoints kept (oldest removed)", int, 1, 1000),
    Option("resume", None, "resume from 'latest' or a checkpoint folder"),
    Option("log_every", 10, "write a log row every N steps", int, 1, 1e9),
    Option("validate_every", 0, "validate every N steps (0: never)", int, 0, 1e9),
    Option("log_with", "csv", "logs: csv (always written) or tensorboard as well", choices=("csv", "tensorboard")),
    Option("workers", 0, "data-loading worker processes", int, 0, 64),
    Option("cpu", False, "train on the CPU even if a GPU is there", bool),
)

SD14 = "CompVis/stable-diffusion-v1-4"  # the paper's starting point for both stages
PERCEPTUAL_LIN = Option("perceptual_lin", "lpips", "per-channel weights of the perceptual distance: lpips (LPIPS's "
                        "learned ones, its vgg.pth: from an installed lpips package or the cache's lpips/vgg.pth), a "
                        "vgg.pth file or hub id REPO:FILE, or equal (not LPIPS: smaller distances; logs a warning)")

AUTOENCODER: tuple[Option, ...] = COMMON + (
    Option("vae", SD14, "autoencoder to start from: hub id or folder (a diffusers model folder, its vae/ is used)"),
    Option("revision", None, "hub revision of --vae"),
    Option("offline", False, "use only files already downloaded", bool),
    Option("channels", 0, "6 (Intel/ldm3d's packing) or 4 (ldm3d-4c/pano); 0: the dataset's", int, 0, 6),
    Option("val_dataset", None, "held-out dataset folder: depth and RGB reconstruction error at each validation"),
    Option("rec_loss", "l1", "pixel loss", choices=("l1", "l2")),
    Option("perceptual", "timm/vgg16.tv_in1k", "VGG16 weights for the perceptual loss (file, hub id or none)"),
    PERCEPTUAL_LIN,
    Option("perceptual_weight", 1.0, "weight of the perceptual terms", float, 0, 1e3),
    Option("kl_weight", 1e-6, "weight of the KL term", float, 0, 1),
    Option("disc_start", 50001, "step from which the discriminator trains and weighs in", int, 0, 1e9),
    Option("disc_weight", 0.5, "discriminator weight (times the adaptive weight)", float, 0, 1e3),
    Option("disc_lr", None, "discriminator learning rate (default: lr)", float, 0, 1),
    Option("disc_layers", 3, "PatchGAN layers", int, 1, 6),
)
AUTOENCODER_DEFAULTS = {"batch_size": 8}  # the paper: batch 8, Adam 1e-5

UNET: tuple[Option, ...] = COMMON + (
    Option("base", SD14, "U-Net, text encoder, tokenizer and noise schedule to start from: hub id or folder"),
    Option("vae", None, "the widened autoencoder: `train autoencoder`'s output folder (default: --base's own "
           "vae/ when it already has 6 or 4 channels, e.g. Intel/ldm3d-4c)"),
    Option("revision", None, "hub revision of --base"),
    Option("offline", False, "use only files already downloaded", bool),
    Option("ema", True, "keep an exponential moving average of the U-Net weights (the output holds it)", bool),
    Option("ema_decay", 0.9999, "EMA decay", float, 0, 1),
    Option("snr_gamma", 0.0, "Min-SNR-γ loss weighting (0: off; 5 is the paper's suggestion)", float, 0, 100),
    Option("gradient_checkpointing", False, "recompute U-Net activations in backward (less memory)", bool),
    Option("use_8bit_adam", False, "bitsandbytes' 8-bit Adam (CUDA)", bool),
    Option("validation_prompts", "a 360 degree panorama of a sunlit courtyard",
           "prompts for validation samples, separated by |"),
    Option("validation_steps", 25, "denoising steps of a validation sample", int, 1, 500),
)
UNET_DEFAULTS = {"batch_size": 32}  # the paper: batch 32, Adam 1e-5


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option], defaults: dict[str, Any]) -> None:
    """Flags for ``options``; every default is None here so that given flags can be told apart."""
    parser.add_argument("--config", type=Path, default=None, help="TOML file with these options (flags override)")
    for option in options:
        default = defaults.get(option.name, option.default)
        shown = f" ({default})" if default is not None else ""
        if option.kind is bool:
            parser.add_argument(option.flag, dest=option.name, default=None, action=argparse.BooleanOptionalAction,
                                help=option.help + shown)
        else:
            parser.add_argument(option.flag, dest=option.name, default=None, type=_flag_type(option),
                                choices=option.choices or None, help=option.help + shown)


def _flag_type(option: Option) -> Callable[[str], Any]:
    return {int: int, float: float}.get(option.kind, str)


def resolve(args: argparse.Namespace | dict[str, Any], options: Sequence[Option],
            defaults: dict[str, Any] | None = None) -> SimpleNamespace:
    """The checked options: defaults, then the TOML file named by ``config``, then the given flags."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    known = {o.name: o for o in options}
    values: dict[str, tuple[Any, str]] = {n: ((defaults or {}).get(n, o.default), "default") for n, o in known.items()}
    config = given.pop("config", None)
    if config is not None:
        try:
            table = tomllib.loads(Path(config).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read the config file {config}: {exc}") from None
        unknown = sorted(set(table) - set(known))
        if unknown:
            raise ConfigError(f"{config}: unknown options {', '.join(unknown)}; known: {', '.join(known)}")
        values.update({k: (v, str(config)) for k, v in table.items()})
    values.update({k: (v, "flag") for k, v in given.items() if k in known and v is not None})
    return SimpleNamespace(**{n: known[n].check(v, where) for n, (v, where) in values.items()})

TINY_DECODER: tuple[Option, ...] = tuple(
    Option("dataset", None, "folder made by `dataset build`: its images, encoded with the model's VAE, give the "
           "latents (or --from-model)") if o.name == "dataset" else o for o in COMMON) + (
    Option("model", None, "the LDM3D model whose VAE decoder is distilled: hub id or folder", required=True),
    Option("from_model", None, "text file of prompts, one a line: latents from the model's own sampling, made "
           "once into OUTPUT/latents (minutes per prompt on a CPU); or --dataset"),
    Option("revision", None, "hub revision of --model"),
    Option("offline", False, "use only files already downloaded", bool),
    Option("val_dataset", None, "held-out dataset folder (with --dataset): the error against the full decoder "
           "at each validation"),
    Option("val_prompts", None, "held-out prompts file (with --from-model)"),
    Option("validation_items", 4, "held-out items validated (without a held-out set: the first training items)",
           int, 1, 1024),
    Option("resolution", 256, "training crop side in pixels, a multiple of the model's scale factor (random "
           "crops of the latents; seamless runs keep the whole width); 0: whole images", int, 0, 8192),
    Option("seamless", None, "wrap the width around (360° panoramas): latents rolled at random, convolutions "
           "circular in width; default: on for 2:1 images", bool),
    Option("decoder_channels", 64, "channels of every decoder stage (TAESD: 64)", int, 1, 1024),
    Option("decoder_blocks", 3, "residual blocks per upsampling stage; the last stage has 1 (TAESD: 3)", int, 1, 16),
    Option("perceptual", "timm/vgg16.tv_in1k", "VGG16 weights for the perceptual loss on RGB (file, hub id or "
           "none)"),
    PERCEPTUAL_LIN,
    Option("perceptual_weight", 1.0, "weight of the perceptual term (RGB)", float, 0, 1e3),
    Option("depth_weight", 1.0, "weight of the depth terms (L1 + gradient)", float, 0, 1e3),
    Option("gradient_weight", 1.0, "weight of the depth gradient term within them", float, 0, 1e3),
    Option("adv_weight", 0.0, "weight of an adversarial term (PatchGAN on RGB + depth, hinge); 0: off", float, 0,
           1e3),
    Option("disc_start", 0, "step from which the discriminator trains and weighs in", int, 0, 1e9),
    Option("disc_lr", None, "discriminator learning rate (default: lr)", float, 0, 1),
    Option("disc_layers", 3, "PatchGAN layers", int, 1, 6),
    Option("sample_steps", 20, "--from-model: denoising steps per sample", int, 1, 500),
    Option("sample_width", 512, "--from-model: sample width in pixels", int, 64, 4096),
    Option("sample_height", 512, "--from-model: sample height in pixels", int, 64, 4096),
    Option("sample_guidance", 7.0, "--from-model: classifier-free guidance", float, 0, 50),
    Option("samples_per_prompt", 1, "--from-model: samples (seeds) per prompt", int, 1, 1000),
)
TINY_DECODER_DEFAULTS = {"batch_size": 8, "lr": 2e-4, "steps": 20000, "validate_every": 1000}

LCM_LORA: tuple[Option, ...] = tuple(
    Option("dataset", None, "folder made by `dataset build`: its images, encoded with the model's VAE, give the "
           "latents (or --from-teacher)") if o.name == "dataset" else o for o in COMMON) + (
    Option("model", None, "the LDM3D teacher whose U-Net gets the LoRA: hub id or folder", required=True),
    Option("from_teacher", None, "text file of prompts, one a line: latents from the teacher's own sampling, made "
           "once into OUTPUT/latents (minutes per prompt on a CPU); or --dataset"),
    Option("revision", None, "hub revision of --model"),
    Option("offline", False, "use only files already downloaded", bool),
    Option("rank", 64, "LoRA rank (LCM-LoRA: 64)", int, 1, 1024),
    Option("alpha", 64.0, "LoRA alpha; the LoRA is scaled by alpha/rank (multiplied into the saved weights)", float,
           1e-3, 1e5),
    Option("lora_conv", False, "also put the LoRA on the ResNet convolutions and time-embedding projections (by "
           "default: attention and feed-forward projections only)", bool),
    Option("num_ddim_timesteps", 50, "DDIM solver grid: the teacher steps from t to t − 1000/N (generation's lcm "
           "sampler skips along a 50-step grid)", int, 1, 1000),
    Option("w_min", 5.0, "lowest guidance w drawn per item (the LCM papers' w: generation's --guidance = w + 1)",
           float, 0, 49),
    Option("w_max", 15.0, "highest guidance w drawn per item", float, 0, 49),
    Option("loss", "huber", "distance of the student's and the target's consistency outputs", choices=("huber", "l2")),
    Option("huber_c", 0.001, "pseudo-Huber c (with --loss huber)", float, 0, 10),
    Option("resolution", 0, "training crop side in pixels, a multiple of the model's scale factor (random crops of "
           "the latents; seamless runs keep the whole width); 0: whole images", int, 0, 8192),
    Option("seamless", None, "wrap the width around (360° panoramas): latents rolled at random, U-Net convolutions "
           "circular in width; default: on for 2:1 images", bool),
    Option("gradient_checkpointing", False, "recompute U-Net activations in backward (less memory)", bool),
    Option("validation_prompts", "a 360 degree panorama of a sunlit courtyard",
           "prompts for validation frames (student against teacher), separated by |"),
    Option("validation_steps", 4, "the student's lcm steps in validation", int, 1, 50),
    Option("validation_teacher_steps", 50, "the teacher's DDIM steps in validation", int, 1, 500),
    Option("sample_steps", 50, "--from-teacher: the teacher's DDIM steps per sample", int, 1, 500),
    Option("sample_width", 512, "--from-teacher: sample width in pixels (1024 with height 512: a panorama)", int, 64,
           4096),
    Option("sample_height", 512, "--from-teacher: sample height in pixels", int, 64, 4096),
    Option("sample_guidance", 7.0, "--from-teacher: the teacher's classifier-free guidance", float, 0, 50),
    Option("samples_per_prompt", 1, "--from-teacher: samples (seeds) per prompt", int, 1, 1000),
)
LCM_LORA_DEFAULTS = {"batch_size": 8, "lr": 1e-4, "steps": 1000, "validate_every": 200}  # diffusers' LCM-LoRA README
