"""RGBD super-resolution with Intel's ldm3d-sr, built from diffusers' models and schedulers (its community pipeline
fails to import on diffusers ≥ 0.38).

The low-resolution RGB + 16-bit depth is resized (bilinear) to the target size, encoded by the 4-channel VAE and
noised by the DDPM ``low_res_scheduler`` at ``noise_level``; each denoising step feeds the U-Net the noisy latents
beside those low-resolution latents (8 channels) with the noise level as its class label, under classifier-free
guidance; the VAE decodes RGB + depth as the LDM3D backend's 4-channel decoding does. Images larger than one tile
go through every stage (encoding, each step, decoding) in overlapping feathered tiles (generator/backends/tiles.py),
wrapping round the 0°/360° seam for panoramas.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import torch

from td_bridge.params import RANDOM_SEED

from .base import RGBD, BackendUnavailable, Cancelled, CancelledFn, ProgressFn
from .ldm3d import Variant, make_scheduler, pick_device, pick_dtype
from .seamless import set_seamless
from .tiles import Plan, make_plan, run_tiled
from .upscale_files import DEFAULT_UPSCALER, UpscalerSpec, resolve

log = logging.getLogger("depthfusion.upscale")

DEFAULT_TILE = {"cuda": 1024, "cpu": 512, "mps": 512}  # output pixels; 1024 is the model card's example size
MAX_PIXELS = 8192 * 4096


def target_size(source: tuple[int, int], params: dict[str, Any], multiple: int = 8) -> tuple[int, int]:
    """(width, height) of the upscaled frame: the explicit size, one side and the source's aspect, or the factor;
    sizes derived from the aspect or the factor are rounded to ``multiple`` pixels."""
    width, height = source
    want_w, want_h = params["upscale_width"], params["upscale_height"]
    if not (want_w or want_h):
        want_w, want_h = _round(width * params["upscale_factor"], multiple), _round(height * params["upscale_factor"],
                                                                                    multiple)
    elif not want_h:
        want_h = _round(want_w * height / width, multiple)
    elif not want_w:
        want_w = _round(want_h * width / height, multiple)
    if want_w < width or want_h < height:
        raise ValueError(f"the upscaled size {want_w}x{want_h} is smaller than the source's {width}x{height}")
    if want_w * want_h > MAX_PIXELS:
        raise ValueError(f"the upscaled size {want_w}x{want_h} is over {MAX_PIXELS // 2**20} megapixels")
    return want_w, want_h


def _round(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def wants_seamless(params: dict[str, Any], source_meta: dict[str, Any] | None, size: tuple[int, int]) -> bool:
    """``upscale_seamless``: yes, no, or auto — what the source was generated with, else whether it is 2:1."""
    choice = params["upscale_seamless"]
    if choice != "auto":
        return choice == "yes"
    recorded = ((source_meta or {}).get("params") or {}).get("seamless")
    return recorded if isinstance(recorded, bool) else size[0] == 2 * size[1]


def resize_bilinear(image: torch.Tensor, height: int, width: int, wrap: bool) -> torch.Tensor:
    """(1, C, h, w) → (1, C, height, width), bilinear with pixel centres aligned; across the width the samples
    either wrap round (a panorama) or clamp at the borders."""
    return _lerp(_lerp(image, height, 2, False), width, 3, wrap)


def _lerp(x: torch.Tensor, size: int, dim: int, wrap: bool) -> torch.Tensor:
    length = x.shape[dim]
    where = (torch.arange(size, device=x.device, dtype=torch.float64) + 0.5) * length / size - 0.5
    low = torch.floor(where)
    frac = (where - low).to(x.dtype)
    low = low.long()
    if wrap:
        left, right = low % length, (low + 1) % length
    else:
        left, right = low.clamp(0, length - 1), (low + 1).clamp(0, length - 1)
    shape = [1] * x.dim()
    shape[dim] = size
    frac = frac.view(shape)
    return x.index_select(dim, left) * (1 - frac) + x.index_select(dim, right) * frac


class UpscaleBackend:
    """RGBD in, a larger RGBD out: encode the resized source, denoise beside it, decode."""

    name = "ldm3d-sr"

    def __init__(self, model: str, spec: UpscalerSpec, tokenizer: Any, text_encoder: Any, unet: Any, vae: Any,
                 scheduler_config: Any, low_res_scheduler: Any, device: torch.device, dtype: torch.dtype) -> None:
        self.model, self.spec = model, spec
        self.variant = Variant(channels=4, scale_factor=spec.scale_factor)
        self.tokenizer, self.text_encoder, self.unet, self.vae = tokenizer, text_encoder, unet, vae
        self.scheduler_config, self.low_res_scheduler = scheduler_config, low_res_scheduler
        self.device, self.dtype = device, dtype
        upcast = getattr(vae.config, "force_upcast", False) and dtype == torch.float16
        self.vae_dtype = torch.float32 if upcast else dtype

    @classmethod
    def load(cls, model: str = DEFAULT_UPSCALER, *, device: str = "auto", dtype: str = "auto",
             revision: str | None = None, local_files_only: bool = False) -> UpscaleBackend:
        """Load from a hub id or a folder; the configs are checked before any weights load."""
        from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        torch_device = pick_device(device)
        torch_dtype = pick_dtype(dtype, torch_device)
        spec = resolve(model, revision=revision, local_files_only=local_files_only)
        folder, safe = spec.folder, spec.safetensors
        started = time.perf_counter()
        try:
            tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
            text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=torch_dtype,
                                                         use_safetensors=safe["text_encoder"])
            unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch_dtype,
                                                        low_cpu_mem_usage=False, use_safetensors=safe["unet"])
            vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32,
                                                low_cpu_mem_usage=False, use_safetensors=safe["vae"])
            scheduler_config = DDIMScheduler.load_config(folder, subfolder="scheduler")
            low_res = DDPMScheduler.from_pretrained(folder, subfolder="low_res_scheduler")
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise BackendUnavailable(f"cannot load the upscaler from {folder}: {type(exc).__name__}: {exc}") from exc
        backend = cls(model, spec, tokenizer, text_encoder, unet, vae, scheduler_config, low_res, torch_device,
                      torch_dtype)
        backend._place()
        log.info("upscaler %s: %s, %s, max noise level %d, loaded in %.1f s", model, torch_device,
                 str(torch_dtype).removeprefix("torch."), spec.max_noise_level, time.perf_counter() - started)
        return backend

    def _place(self) -> None:
        for module, dtype in ((self.text_encoder, self.dtype), (self.unet, self.dtype), (self.vae, self.vae_dtype)):
            if module.dtype != dtype:
                module.to(dtype=dtype)
            module.to(self.device).eval().requires_grad_(False)
        if self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)

    def default_tile(self) -> int:
        return DEFAULT_TILE.get(self.device.type, 512)

    # ------------------------------------------------------------ upscaling

    def upscale(self, rgb: np.ndarray, depth: np.ndarray, params: dict[str, Any], progress: ProgressFn,
                cancelled: CancelledFn, *, source_meta: dict[str, Any] | None = None,
                noise: torch.Tensor | None = None) -> RGBD:
        """The upscaled frame of ``rgb`` (H, W, 3) uint8 + ``depth`` (H, W) uint16 from validated upscale params
        (seed resolved). ``noise`` (2, 4, h, w) overrides the seeded start latents and low-resolution noise."""
        width, height = self._check(rgb, depth, params)
        wrap = wants_seamless(params, source_meta, (rgb.shape[1], rgb.shape[0]))
        factor = self.spec.scale_factor
        tile = (params["upscale_tile"] or self.default_tile()) // factor
        plan = make_plan(height // factor, width // factor, max(tile, 2), wrap)
        shape = (2, self.spec.latent_channels, plan.height, plan.width)
        if noise is None:
            noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(params["upscale_seed"]))
        elif tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        scheduler = make_scheduler(params["upscale_scheduler"], self.scheduler_config)
        scheduler.set_timesteps(params["upscale_steps"], device=self.device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        guided = params["upscale_guidance"] > 1.0
        circular = wrap and len(plan.cols) == 1  # one tile spans the whole width: the convolutions wrap
        with torch.inference_mode():
            set_seamless(self.unet, circular)
            set_seamless(self.vae, circular)
            embeddings = self._encode_text(params["upscale_prompt"], guided)
            low = self._encode_image(rgb, depth, (height, width), wrap, plan, cancelled)
            level = params["upscale_noise_level"]
            low = self.low_res_scheduler.add_noise(low, noise[1:].to(self.device, low.dtype),
                                                   torch.tensor([level], device=self.device))
            latents = noise[:1].to(self.device, torch.float32) * scheduler.init_noise_sigma
            latents = self._denoise(latents, low.to(self.dtype), embeddings, scheduler, plan, params, progress,
                                    cancelled, guided)
            image = self._decode(latents, plan, cancelled)
        out_rgb = np.clip(np.round(image[..., :3] * 255.0), 0, 255).astype(np.uint8)
        return RGBD(out_rgb, self.variant.decode_depth(image), info={
            "upscaler": self.model, "device": str(self.device), "dtype": str(self.dtype).removeprefix("torch."),
            "source_size": [int(rgb.shape[1]), int(rgb.shape[0])], "tiles": plan.tiles, "seamless": wrap,
            "scheduler": params["upscale_scheduler"], "noise_level": level,
        })

    def _check(self, rgb: np.ndarray, depth: np.ndarray, params: dict[str, Any]) -> tuple[int, int]:
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
            raise ValueError(f"rgb must be an (H, W, 3) uint8 array, got {getattr(rgb, 'dtype', type(rgb))} "
                             f"{getattr(rgb, 'shape', '')}")
        if not (isinstance(depth, np.ndarray) and depth.dtype == np.uint16 and depth.shape == rgb.shape[:2]):
            raise ValueError(f"depth must be an (H, W) uint16 array the size of rgb {rgb.shape[:2]}, got "
                             f"{getattr(depth, 'dtype', type(depth))} {getattr(depth, 'shape', '')}")
        if min(rgb.shape[:2]) < 8:
            raise ValueError(f"the source frame is {rgb.shape[1]}x{rgb.shape[0]}; at least 8x8 is needed")
        if params["upscale_seed"] == RANDOM_SEED:
            raise ValueError("upscale_seed must be resolved before upscaling (-1 picks one at submission)")
        if params["upscale_noise_level"] > self.spec.max_noise_level:
            raise ValueError(f"upscale_noise_level {params['upscale_noise_level']} is over this checkpoint's "
                             f"max_noise_level {self.spec.max_noise_level}")
        tile, factor = params["upscale_tile"], self.spec.scale_factor
        if tile and tile % (2 * factor):
            raise ValueError(f"upscale_tile must be a multiple of {2 * factor} pixels for this model, got {tile}")
        width, height = target_size((rgb.shape[1], rgb.shape[0]), params)
        if width % factor or height % factor:
            raise ValueError(f"the upscaled size {width}x{height} must be a multiple of {factor} for this model")
        return width, height

    def _encode_text(self, prompt: str, guided: bool) -> torch.Tensor:
        """[empty, prompt] embeddings when guided, each encoded as its own batch of one (as the LDM3D backend)."""
        limit = self.tokenizer.model_max_length
        embeddings = []
        for text in ["", prompt] if guided else [prompt]:
            tokens = self.tokenizer(text, padding="max_length", max_length=limit, truncation=True,
                                    return_tensors="pt")
            embeddings.append(self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype))
        return torch.cat(embeddings)

    def _encode_image(self, rgb: np.ndarray, depth: np.ndarray, size: tuple[int, int], wrap: bool, plan: Plan,
                      cancelled: CancelledFn) -> torch.Tensor:
        """Scaled VAE latents (the distribution's mean) of the source resized to ``size``, in [-1, 1]."""
        image = np.concatenate([rgb.astype(np.float32) / 255.0, depth[..., None].astype(np.float32) / 65535.0], -1)
        pixels = torch.from_numpy(image).permute(2, 0, 1)[None].to(self.device)
        pixels = resize_bilinear(pixels, *size, wrap) * 2.0 - 1.0
        scaling = self.vae.config.scaling_factor

        def encode(_index: int, tile: torch.Tensor) -> torch.Tensor:
            return self.vae.encode(tile.to(self.vae_dtype)).latent_dist.mode() * scaling

        return run_tiled(encode, pixels, plan, scale_in=self.spec.scale_factor,
                         out_channels=self.spec.latent_channels, cancelled=cancelled)

    def _denoise(self, latents: torch.Tensor, low: torch.Tensor, embeddings: torch.Tensor, scheduler: Any,
                 plan: Plan, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn,
                 guided: bool) -> torch.Tensor:
        """The loop; timesteps reach the scheduler as host numbers (no device reads per step)."""
        labels = torch.full((embeddings.shape[0],), params["upscale_noise_level"], device=self.device,
                            dtype=torch.long)
        guidance = params["upscale_guidance"]
        timesteps = scheduler.timesteps

        def predict(t: torch.Tensor, tile: torch.Tensor) -> torch.Tensor:
            model_input = torch.cat([tile] * 2) if guided else tile
            noise = self.unet(model_input, t, encoder_hidden_states=embeddings, class_labels=labels).sample
            if guided:
                uncond, cond = noise.chunk(2)
                noise = uncond + guidance * (cond - uncond)
            return noise

        for step, (t, t_host) in enumerate(zip(timesteps, timesteps.tolist()), start=1):
            if cancelled():
                raise Cancelled()
            scaled = scheduler.scale_model_input(latents, t_host).to(self.dtype)
            noise = run_tiled(lambda _i, tile, t=t: predict(t, tile), torch.cat([scaled, low], dim=1), plan,
                              out_channels=self.spec.latent_channels)
            latents = scheduler.step(noise, t_host, latents).prev_sample
            progress(step, len(timesteps))
        return latents

    def _decode(self, latents: torch.Tensor, plan: Plan, cancelled: CancelledFn) -> np.ndarray:
        latents = latents.to(self.vae_dtype) / self.vae.config.scaling_factor

        def decode(_index: int, tile: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(tile).sample

        image = run_tiled(decode, latents, plan, scale_out=self.spec.scale_factor, out_channels=4,
                          cancelled=cancelled)
        image = (image / 2 + 0.5).clamp(0, 1)
        return image[0].permute(1, 2, 0).cpu().numpy()
