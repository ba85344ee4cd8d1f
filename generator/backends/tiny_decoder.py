"""A tiny RGBD decoder for LDM3D: diffusers' ``AutoencoderTiny`` (TAESD's shape) distilled from the model's own VAE
decoder by ``python -m generator train tiny-decoder``; chosen at generation with ``--decoder full|tiny|FOLDER``.

- **What it decodes.** The latents as the U-Net leaves them (already multiplied by the VAE's ``scaling_factor``;
  the tiny model's own ``scaling_factor`` is 1, as TAESD's) → 4 channels: RGB in [0, 1] and *one* depth channel
  in [0, 1] (relative inverse depth, 1 = near), whatever the teacher's layout. For the 6-channel ``Intel/ldm3d``
  that is the packed depth unpacked (256·high byte + low byte) / 65535, not the bytes. :func:`model_layout` puts
  it back into the model's own layout, so the backend's ``Variant.decode_depth`` turns it into uint16 exactly as
  it does the full decoder's (for 6 channels the depth is quantised to 16 bits, then packed: exact round trip).
- **Shape.** TAESD's decoder: a 3×3 conv, then per stage ``blocks`` residual blocks of three 3×3 convs, a 2×
  nearest upsample and a 3×3 conv; the last stage has one block and the output conv. The number of stages follows
  the teacher's latent-to-pixel scale factor (8 → 4 stages, TAESD's (3, 3, 3, 1) at 64 channels, ≈1.2 M
  parameters). The ``AutoencoderTiny`` is decode-only: its encoder is a placeholder of two small convs, never
  trained (use the model's VAE to encode).
- **Folder.** ``save_pretrained`` (``config.json`` + ``diffusion_pytorch_model.safetensors``, loadable with
  ``AutoencoderTiny.from_pretrained``) plus ``depthfusion_decoder.json``: what it was distilled from (teacher,
  latent channels, scale factor, scaling factor, VAE channels, a fingerprint of the teacher's decoder weights,
  seamless, training steps). ``--decoder tiny`` loads ``MODEL/tiny-decoder``. Before use a folder is checked
  against the model: latent channels, scale factor, scaling factor and VAE channels must match (else
  BackendUnavailable naming the mismatch); a different fingerprint (another VAE with the same shape, e.g. a
  fine-tuned one) is only a warning.
- **Precision.** The tiny decoder always runs in fp32: 16-bit depth needs more than fp16's 11-bit mantissa
  (ulp 4.9e-4 near 1 is 32 depth steps), and at ~1/18 of the full decoder's work fp32 costs little.
- **Seamless.** Its convolutions wrap across the width like the VAE's (seamless.set_seamless), so a rolled latent
  decodes to the rolled image and the 0°/360° seam wraps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from td_bridge.depth import DEPTH_MAX, depth16_to_vae6, to_uint16

from .base import BackendUnavailable
from .seamless import set_seamless

log = logging.getLogger("depthfusion.tiny_decoder")

FORMAT, VERSION = "depthfusion-tiny-decoder", 1
INFO_FILE = "depthfusion_decoder.json"
FOLDER_NAME = "tiny-decoder"  # MODEL/tiny-decoder is what --decoder tiny loads
TAESD_CHANNELS, TAESD_BLOCKS = 64, 3
CHOICES = "full, tiny or a tiny decoder's folder"


def stages_for(scale_factor: int) -> int:
    """Decoder stages for a latent-to-pixel scale factor (a power of two): one more than its 2× upsamplings."""
    if scale_factor < 1 or scale_factor & (scale_factor - 1):
        raise ValueError(f"the scale factor must be a power of two, got {scale_factor}")
    return int(math.log2(scale_factor)) + 1


def make_decoder(latent_channels: int, scale_factor: int, channels: int = TAESD_CHANNELS,
                 blocks: int = TAESD_BLOCKS):
    """A fresh decode-only ``AutoencoderTiny``: latents → RGB + depth (4 channels); TAESD's decoder by default."""
    from diffusers import AutoencoderTiny

    stages = stages_for(scale_factor)
    return AutoencoderTiny(
        in_channels=4, out_channels=4, latent_channels=latent_channels,
        encoder_block_out_channels=(4,), num_encoder_blocks=(0,),  # placeholder encoder: decode only
        decoder_block_out_channels=(channels,) * stages, num_decoder_blocks=(blocks,) * (stages - 1) + (1,),
        upsampling_scaling_factor=2, scaling_factor=1.0)


def decoder_scale_factor(config: Any) -> int:
    return int(config.upsampling_scaling_factor) ** (len(config.num_decoder_blocks) - 1)


def parameter_count(model: Any) -> int:
    """Parameters of the decoder part (the placeholder encoder is not counted)."""
    return sum(p.numel() for p in model.decoder.parameters())


def vae_scale_factor(vae: Any) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


def vae_fingerprint(vae: Any) -> str:
    """A short hash of the teacher's first decoding weights (rounded to fp16, so a cast model keeps it)."""
    state = vae.state_dict()
    digest = hashlib.sha256()
    for name in ("post_quant_conv.weight", "post_quant_conv.bias", "decoder.conv_in.weight", "decoder.conv_in.bias",
                 "decoder.conv_out.weight", "decoder.conv_out.bias"):
        if name in state:
            digest.update(name.encode())
            digest.update(state[name].detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def teacher_info(vae: Any, teacher: str, seamless: bool, steps: int, **extra: Any) -> dict[str, Any]:
    """The ``depthfusion_decoder.json`` record of a decoder distilled from ``vae``."""
    return {"format": FORMAT, "version": VERSION, "teacher": teacher,
            "latent_channels": int(vae.config.latent_channels), "scale_factor": vae_scale_factor(vae),
            "scaling_factor": float(vae.config.scaling_factor), "vae_channels": int(vae.config.out_channels),
            "teacher_fingerprint": vae_fingerprint(vae), "seamless": bool(seamless), "steps": int(steps), **extra}


def save_decoder(model: Any, folder: Path, info: dict[str, Any]) -> Path:
    folder = Path(folder)
    model.save_pretrained(folder)
    (folder / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return folder


def read_info(folder: Path) -> dict[str, Any]:
    """The folder's ``depthfusion_decoder.json``, checked; BackendUnavailable when it is not a tiny decoder."""
    folder = Path(folder)
    path = folder / INFO_FILE
    if not path.is_file() or not (folder / "config.json").is_file():
        raise BackendUnavailable(f"{folder} is not a tiny decoder folder (needs config.json and {INFO_FILE}, as "
                                 "`python -m generator train tiny-decoder` writes)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackendUnavailable(f"{path}: unreadable ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise BackendUnavailable(f"{path}: not a {FORMAT} record")
    if info.get("version") != VERSION:
        raise BackendUnavailable(f"{path}: format version {info.get('version')}, this DepthFusion reads {VERSION}")
    missing = [k for k in ("latent_channels", "scale_factor", "scaling_factor", "vae_channels") if k not in info]
    if missing:
        raise BackendUnavailable(f"{path}: missing {', '.join(missing)}")
    return info


def check_match(info: dict[str, Any], vae: Any, folder: Path, model: str) -> None:
    """BackendUnavailable unless a decoder distilled as ``info`` says can decode ``vae``'s latents."""
    have = {"latent channels": (info["latent_channels"], vae.config.latent_channels),
            "latent-to-pixel scale factor": (info["scale_factor"], vae_scale_factor(vae)),
            "VAE output channels": (info["vae_channels"], vae.config.out_channels)}
    wrong = [f"{name} {mine} (the model's: {theirs})" for name, (mine, theirs) in have.items() if mine != theirs]
    if not math.isclose(float(info["scaling_factor"]), float(vae.config.scaling_factor), rel_tol=1e-6):
        wrong.append(f"scaling factor {info['scaling_factor']} (the model's: {vae.config.scaling_factor})")
    if wrong:
        raise BackendUnavailable(f"the tiny decoder {folder} was distilled from {info.get('teacher', 'another model')}"
                                 f" and does not fit {model}: {'; '.join(wrong)}. Train one for this model with "
                                 f"`python -m generator train tiny-decoder --model {model} …`")
    fingerprint = info.get("teacher_fingerprint")
    if fingerprint and fingerprint != vae_fingerprint(vae):
        log.warning("the tiny decoder %s was distilled from %s, whose VAE decoder weights differ from %s's: its "
                    "colours and depth may be off (fine for a fine-tuned VAE close to the teacher)", folder,
                    info.get("teacher"), model)


def _check_model(model: Any, info: dict[str, Any], folder: Path) -> None:
    config = model.config
    if config.out_channels != 4:
        raise BackendUnavailable(f"{folder}: the decoder gives {config.out_channels} channels; a tiny RGBD decoder "
                                 "gives 4 (RGB + depth)")
    if config.latent_channels != info["latent_channels"] or decoder_scale_factor(config) != info["scale_factor"]:
        raise BackendUnavailable(f"{folder}: its config.json (latent channels {config.latent_channels}, scale factor "
                                 f"{decoder_scale_factor(config)}) disagrees with {INFO_FILE} (latent channels "
                                 f"{info['latent_channels']}, scale factor {info['scale_factor']})")


def open_decoder(folder: Path, vae: Any, model: str = "this model"):
    """(AutoencoderTiny, info) from a tiny decoder folder, checked against ``vae`` before any weights load."""
    from diffusers import AutoencoderTiny

    folder = Path(folder)
    info = read_info(folder)
    check_match(info, vae, folder, model)
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # AutoencoderTiny's own saved config always draws an "unexpected" note
    try:
        tiny = AutoencoderTiny.from_pretrained(str(folder), torch_dtype=torch.float32, low_cpu_mem_usage=False)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise BackendUnavailable(f"cannot load the tiny decoder {folder}: {type(exc).__name__}: {exc}") from exc
    finally:
        diffusers_logging.set_verbosity(verbosity)
    _check_model(tiny, info, folder)
    return tiny, info


# ------------------------------------------------------------------ decoding


def tiny_unit(model: Any, latents: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """(B, 4, H, W) RGB + depth in [0, 1] (unclamped with ``clamp=False``, for training) from U-Net latents."""
    image = (model.decode(latents).sample + 1.0) / 2.0
    return image.clamp(0, 1) if clamp else image


def unpack_depth(image: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) depth in [0, 1] from a decoded full-VAE batch in [0, 1], exactly as generation reads it:
    6 channels → (256·round(255·c4) + round(255·c5)) / 65535 (channel 3 unused), 4 channels → c3."""
    if image.shape[1] == 6:
        high, low = (torch.round(image[:, c:c + 1] * 255.0) for c in (4, 5))
        return (256.0 * high + low) / DEPTH_MAX
    return image[:, 3:4]


def full_unit(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """The full decoder's (B, 4, H, W) RGB + one depth channel in [0, 1]: the tiny decoder's target."""
    image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    image = (image.float() / 2 + 0.5).clamp(0, 1)
    return torch.cat([image[:, :3], unpack_depth(image)], dim=1)


def model_layout(unit: np.ndarray, vae_channels: int) -> np.ndarray:
    """(H, W, 4) RGB + depth in [0, 1] → (H, W, vae_channels) as the full decoder lays it out, so that
    ``Variant.decode_depth`` reads the same uint16 (6 channels: quantised to 16 bits, then the bytes)."""
    rgb, depth = unit[..., :3], unit[..., 3]
    if vae_channels == 6:
        packed = depth16_to_vae6(to_uint16(depth))
    else:
        packed = depth[..., None]
    return np.concatenate([rgb.astype(np.float32), packed.astype(np.float32)], axis=-1)


def to_frame(unit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 RGB, uint16 depth) from (H, W, 4) RGB + depth in [0, 1]."""
    rgb = np.clip(np.round(unit[..., :3] * 255.0), 0, 255).astype(np.uint8)
    return rgb, to_uint16(unit[..., 3])


class TinyDecoder:
    """A loaded tiny decoder, as LDM3DBackend holds it: ``decode`` returns what the full decoder's path returns."""

    def __init__(self, model: Any, info: dict[str, Any], folder: Path, device: torch.device) -> None:
        self.model, self.info, self.folder, self.device = model, info, Path(folder), device
        self.vae_channels = int(info["vae_channels"])
        self.name = f"tiny:{self.folder}"
        model.to(device).eval().requires_grad_(False)  # loaded in fp32 (module docstring: precision)
        if device.type == "cuda":
            model.to(memory_format=torch.channels_last)

    def set_seamless(self, enabled: bool) -> None:
        set_seamless(self.model, enabled)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """(H, W, C) in [0, 1] in the model's layout (C = 6 or 4) from (1, latent, h, w) U-Net latents."""
        unit = tiny_unit(self.model, latents.to(self.device, torch.float32))
        return model_layout(unit[0].permute(1, 2, 0).cpu().numpy(), self.vae_channels)


def load_decoder(spec: str, backend: Any, model_folder: str | Path | None = None) -> TinyDecoder | None:
    """The decoder ``--decoder`` names for an LDM3DBackend (call before its VAE is cast): ``full`` → None (the
    model's own VAE), ``tiny`` → ``MODEL/tiny-decoder``, else a tiny decoder folder. Checked before use."""
    if spec == "full":
        return None
    if spec == "tiny":
        if model_folder is None:
            raise BackendUnavailable("--decoder tiny looks for MODEL/tiny-decoder, but no model folder is known here; "
                                     "pass the decoder's folder instead")
        folder = Path(model_folder) / FOLDER_NAME
        if not folder.is_dir():
            raise BackendUnavailable(
                f"--decoder tiny: {backend.model} has no tiny decoder ({folder} does not exist). Train one with "
                f"`python -m generator train tiny-decoder --model {backend.model} --dataset DATASET "
                f"--output {folder}` (or --from-model PROMPTS instead of --dataset), or pass --decoder FOLDER")
    else:
        folder = Path(spec).expanduser()
        if not folder.is_dir():
            raise BackendUnavailable(f"--decoder {spec!r}: choose {CHOICES} ({folder} is not a folder)")
    tiny, info = open_decoder(folder, backend.vae, backend.model)
    log.info("tiny decoder %s (%d parameters, distilled from %s in %s steps)", folder, parameter_count(tiny),
             info.get("teacher"), info.get("steps"))
    return TinyDecoder(tiny, info, folder, backend.device)
