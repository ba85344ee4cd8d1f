"""RGB ↔ the latents a diffusers text-to-image pipeline denoises, through its VAE, normalised as the pipeline does
(scale and shift; Qwen-Image's per-channel mean and deviation, one video frame). The panorama backend decodes its
seamless transformers' latents here (only the frame's own columns, with the wrapping VAE); remix encodes its source.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import torch


@contextlib.contextmanager
def _running(pipe: Any) -> Iterator[torch.dtype]:
    """The pipeline's VAE in fp32 while it runs where its config asks (``force_upcast``: SDXL's VAE overflows in
    fp16), as diffusers' pipelines do; yields the dtype it runs in. Afterwards, under model CPU offload, the VAE
    (which its offload hook moved to the GPU) goes back to the CPU, as at the end of a pipeline call."""
    vae = pipe.vae
    dtype = vae.dtype
    upcast = dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    try:
        yield vae.dtype
    finally:
        if upcast:
            vae.to(dtype)
        pipe.maybe_free_model_hooks()  # nothing without model offload


def _spread(config: Any, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen-Image's per-channel latent mean and deviation, shaped (1, C, 1, 1) like ``like``."""
    channels = (1, len(config.latents_mean), 1, 1)
    return (torch.tensor(config.latents_mean).view(channels).to(like),
            torch.tensor(config.latents_std).view(channels).to(like))


def encode_rgb(pipe: Any, rgb: np.ndarray, device: Any) -> torch.Tensor:
    """(1, C, H/f, W/f) latents of an (H, W, 3) uint8 image as ``pipe`` denoises them (the VAE's mean), in the VAE's
    dtype; pixels are normalised in fp32."""
    vae, config = pipe.vae, pipe.vae.config
    pixels = torch.from_numpy(rgb).permute(2, 0, 1)[None].to(device, torch.float32) / 127.5 - 1
    dtype = vae.dtype
    with _running(pipe) as working:
        pixels = pixels.to(working)
        if getattr(config, "latents_mean", None) is not None:  # Qwen-Image: (B, C, T, H, W), one frame
            mean = vae.encode(pixels[:, :, None]).latent_dist.mean[:, :, 0]
            centre, spread = _spread(config, mean)
            latents = (mean - centre) / spread
        else:
            mean = vae.encode(pixels).latent_dist.mean
            latents = (mean - (getattr(config, "shift_factor", None) or 0.0)) * config.scaling_factor
    return latents.to(dtype)


def decode_latents(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    """(H, W, 3) float32 image in [0, 1] of (1, C, h, w) latents normalised as :func:`encode_rgb` makes them: what
    the pipeline's own ``output_type="np"`` decoding gives."""
    vae, config = pipe.vae, pipe.vae.config
    with _running(pipe) as working:
        latents = latents.to(working)
        if getattr(config, "latents_mean", None) is not None:
            centre, spread = _spread(config, latents)
            sample = vae.decode((latents * spread + centre)[:, :, None], return_dict=False)[0][:, :, 0]
        else:
            shift = getattr(config, "shift_factor", None) or 0.0
            sample = vae.decode(latents / config.scaling_factor + shift, return_dict=False)[0]
    image = (sample[0].float() / 2 + 0.5).clamp(0, 1)
    return image.permute(1, 2, 0).cpu().numpy()
