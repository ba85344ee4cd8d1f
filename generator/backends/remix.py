"""Latent-blending remix: a region of an RGBD frame regenerated, the rest kept.

LDM3D (RGB and depth together): the source frame is encoded with the VAE; the frame then denoises from the seeded
start noise as a text-to-RGBD generation, and after every step the latent cells outside the mask are replaced by
the source's latents noised to the next timestep (with the same start noise), so the new region grows out of, and
in step with, what is kept. After the last step the kept cells are the source's latents exactly. The caller
(generator.remixing) puts the source's pixels back outside the mask after decoding.

The panorama backend (any of its diffusers pipelines): the same blending on the source's RGB latents through the
pipeline's step callback — noised by the pipeline's scheduler: ``add_noise`` for a U-Net, ``scale_noise`` (the
flow-matching path (1 − σ)·source + σ·noise at the next step's σ) for a transformer — in the rolled frame of a
seamless transformer's latents, and unpacked from FLUX's and Qwen-Image's tokens; then the 360° depth of the new RGB with the source's
RGB put back, which the caller aligns to the kept depth by scale and shift on the region's border.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import RGBD, CancelledFn, ProgressFn
from .vae_latents import encode_rgb

if TYPE_CHECKING:
    from .ldm3d import LDM3DBackend
    from .pano import PanoBackend


def latent_mask(mask: np.ndarray, factor: int) -> torch.Tensor:
    """(1, 1, H/factor, W/factor) float32: each latent cell takes the largest mask value of its pixels, so every
    cell that touches the region is repainted."""
    pixels = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]
    return F.max_pool2d(pixels, kernel_size=factor, stride=factor)


def latent_remix(backend: LDM3DBackend, params: dict[str, Any], source: RGBD, mask: np.ndarray,
                 progress: ProgressFn, cancelled: CancelledFn) -> RGBD:
    """The decoded frame of ``source`` remixed where ``mask`` > 0 with validated ``params`` (of the source's size),
    decoded with the model's own VAE."""
    if mask.shape != source.depth.shape:
        raise ValueError(f"the mask is {mask.shape[1]}x{mask.shape[0]}; the frame is "
                         f"{source.depth.shape[1]}x{source.depth.shape[0]}")
    with torch.inference_mode():
        noise = backend.start_noise(params)
        frame = backend.prepare(params, latents=noise)
        known = backend.encode_image(source, params)
        noise = noise.to(known.device, known.dtype)
        repaint = latent_mask(mask, backend.variant.scale_factor).to(known.device, known.dtype)
        timesteps, scheduler = frame.timesteps, frame.scheduler

        def keep(latents: torch.Tensor, index: int) -> torch.Tensor:
            """The latents with the kept cells set to the source noised to timestep ``index`` (the end: as is)."""
            kept = known if index >= len(timesteps) else scheduler.add_noise(known, noise, timesteps[index:index + 1])
            return repaint * latents + (1 - repaint) * kept

        frame.latents = keep(frame.latents, 0)
        latents = backend._denoise(frame, progress, cancelled, blend=lambda step, latents: keep(latents, step))
        decoded = backend._decode(latents, full=True)
    result = backend.result(frame, decoded, full_decoder=True)
    result.info["remix"] = "latent blending"
    return result


def pipeline_remix(backend: PanoBackend, params: dict[str, Any], source: RGBD, mask: np.ndarray,
                   progress: ProgressFn, cancelled: CancelledFn) -> RGBD:
    """The panorama backend's frame of ``source`` remixed where ``mask`` > 0: the pipeline's RGB (latent blending on
    the source's RGB latents), and the 360° depth of that RGB with the source's put back outside the mask."""
    from td_bridge.params import ESTIMATION_PARAMS, validate

    from ..estimators.frame import estimate_rgbd
    from ..estimators.pano import LAYOUTS
    from .seamless import set_seamless

    weights = backend.check(params)
    pipe, flow = backend.pipe, backend.architecture.own_scheduler
    estimation = validate({"pano": "yes"}, ESTIMATION_PARAMS)
    total = params["steps"] + len(LAYOUTS[estimation["views"]])
    set_seamless(pipe.vae, params["seamless"])  # encoded as the frame will be decoded
    with torch.inference_mode():
        known = encode_rgb(pipe, source.rgb, backend.device)
        noise = backend.start_noise(params).to(known.dtype)
        repaint = latent_mask(mask, pipe.vae_scale_factor).to(backend.device, known.dtype)

    def keep(step: int, latents: torch.Tensor, shift: int) -> torch.Tensor:
        """After step ``step`` (from 0): the kept cells set to the source noised to the next step's noise level,
        both rolled ``shift`` columns round as the latents are."""
        index = step + 1
        if index >= len(pipe.scheduler.timesteps):
            kept = known
        elif flow:  # the scheduler's own forward process, as diffusers' flow-matching inpainting pipelines use it
            kept = pipe.scheduler.scale_noise(known, pipe.scheduler.timesteps[index:index + 1], noise)
        else:
            kept = pipe.scheduler.add_noise(known, noise, pipe.scheduler.timesteps[index:index + 1])
        cells, kept = (torch.roll(x.to(latents.dtype), shift, dims=-1) for x in (repaint, kept))
        return cells * latents + (1 - cells) * kept

    rgb = backend._rgb(params, weights, lambda step: progress(step, total), cancelled, blend=keep, latents=noise)
    weight = mask[..., None].astype(np.float64)
    joined = np.clip(np.round(weight * rgb + (1.0 - weight) * source.rgb), 0, 255).astype(np.uint8)
    depth = estimate_rgbd(backend.estimator, joined, estimation,
                          lambda k, _n: progress(params["steps"] + k, total), cancelled)
    info = backend._info(params, weights, depth.info)
    info["remix"] = "latent blending (pipeline), depth of the joined panorama"
    return RGBD(rgb, depth.depth, near=depth.near, far=depth.far, info=info)
