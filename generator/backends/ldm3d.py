"""LDM3D text → RGBD, built from diffusers' models and schedulers (not its deprecated pipeline).

Checkpoints: ``Intel/ldm3d`` (6-channel VAE: RGB + depth as three 8-bit channels),
``Intel/ldm3d-4c`` and ``Intel/ldm3d-pano`` (4-channel VAE: RGB + one depth channel, the
pano model at 1024×512). The variant is read from the VAE config, never from the name.
The safety checker is not loaded.
"""

from __future__ import annotations

import logging
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from td_bridge.depth import depth16_from_vae4, depth16_from_vae6
from td_bridge.params import ParamError, requested_loras

from .base import RGBD, BackendUnavailable, Cancelled, CancelledFn, ProgressFn
from .ldm3d_files import WEIGHTED, resolve
from .licences import records
from .lora import LoraError, LoraSet, LoraSpec, load_all
from .memory import check_model_fits
from .seamless import set_seamless

log = logging.getLogger("depthfusion.ldm3d")

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
CONSISTENCY_MAX_STEPS = 50
# torch.compile modes for the U-Net: reduce-overhead adds CUDA graphs (one launch for the whole step on a GPU)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")  # lcm and tcd: the original_inference_steps diffusers' schedulers skip along


def pick_device(name: str = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU; otherwise the named device, checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cuda", "mps", "cpu") and not re.fullmatch(r"cuda:\d{1,2}", name):
        raise BackendUnavailable(f"device must be auto, cpu, mps, cuda or cuda:N, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailable(f"device {name} asked for, but this torch build sees no CUDA GPU")
    if name == "mps" and not torch.backends.mps.is_available():
        raise BackendUnavailable("device mps asked for, but Apple's MPS is not available here")
    return torch.device(name)


def compile_mode(compile: bool | str | None) -> str | None:
    """The torch.compile mode ``compile`` asks for (True: default; False, None, "": none)."""
    if compile is True:
        return "default"
    if not compile:
        return None
    if compile not in COMPILE_MODES:
        raise BackendUnavailable(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
    return compile


def pick_dtype(name: str, device: torch.device, bf16_first: bool = False) -> torch.dtype:
    """``auto``: fp16 on CUDA and MPS, fp32 on CPU; ``bf16_first``: bf16 on a CUDA GPU that has it (models trained
    in bf16 whose activations overflow fp16, as Qwen-Image's do)."""
    if name == "auto":
        if bf16_first and device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if name not in DTYPES:
        raise BackendUnavailable(f"dtype must be auto, {', '.join(DTYPES)}; got {name!r}")
    if device.type == "cpu" and DTYPES[name] == torch.float16:
        raise BackendUnavailable("fp16 is not supported on the CPU; use fp32 or bf16")
    return DTYPES[name]


@dataclass(frozen=True)
class Variant:
    channels: int  # VAE output channels: 6 (RGB + 3 depth bytes) or 4 (RGB + depth)
    scale_factor: int  # pixels per latent cell

    def decode_depth(self, image: np.ndarray) -> np.ndarray:
        """uint16 depth from a decoded (H, W, C) image in [0, 1]."""
        return depth16_from_vae6(image[..., 3:6]) if self.channels == 6 else depth16_from_vae4(image[..., 3])


def check_components(tokenizer: Any, text_encoder: Any, unet: Any, vae: Any) -> Variant:
    """Raise BackendUnavailable unless the parts form a text → RGBD LDM3D model."""
    out = vae.config.out_channels
    if out not in (4, 6):
        raise BackendUnavailable(f"the VAE decodes {out} channels; "
                                 "LDM3D needs 6 (RGB + 3×8-bit depth) or 4 (RGB + depth)")
    if unet.config.in_channels != vae.config.latent_channels:
        sr = unet.config.in_channels == 8
        extra = " (this looks like ldm3d-sr, an upscaler, not a text-to-RGBD model)" if sr else ""
        raise BackendUnavailable(
            f"the U-Net takes {unet.config.in_channels} input channels but the VAE has "
            f"{vae.config.latent_channels} latent channels{extra}"
        )
    if unet.config.cross_attention_dim != text_encoder.config.hidden_size:
        raise BackendUnavailable(
            f"the text encoder's width {text_encoder.config.hidden_size} does not match the U-Net's "
            f"cross-attention width {unet.config.cross_attention_dim}"
        )
    if not 1 <= tokenizer.model_max_length <= 4096:
        raise BackendUnavailable(f"tokenizer model_max_length {tokenizer.model_max_length} is not usable")
    return Variant(channels=out, scale_factor=2 ** (len(vae.config.block_out_channels) - 1))


@contextmanager
def _quiet_loading():
    """No transformers weight-loading progress bar: the load is announced by one log line instead."""
    from transformers.utils import logging as transformers_logging

    shown = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            transformers_logging.enable_progress_bar()


def make_scheduler(name: str, config: Any, spacing: str = "auto"):
    """diffusers' scheduler ``name`` on the model's scheduler config; ``spacing`` other than auto overrides its
    timestep spacing (lcm and tcd space their own steps: they skip along the original 50-step schedule)."""
    from diffusers import (DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler,
                           TCDScheduler)

    overrides = {} if spacing == "auto" or name in ("lcm", "tcd") else {"timestep_spacing": spacing}
    if name == "ddim":
        return DDIMScheduler.from_config(config, **overrides)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", **overrides)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config, **overrides)
    if name == "lcm":
        return LCMScheduler.from_config(config)
    if name == "tcd":
        return TCDScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}; choose ddim, dpm++, euler, lcm or tcd")


def step_options(name: str, params: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
    """Keyword arguments of the scheduler's step: lcm and tcd add seeded noise at each step, tcd scaled by eta."""
    if name == "lcm":
        return {"generator": generator}
    if name == "tcd":
        return {"eta": params["eta"], "generator": generator}
    return {}


def start_step(steps: int, strength: float) -> int:
    """The step img2img starts at: it runs ``strength`` of the steps (diffusers' img2img rounding down), at least
    one."""
    return steps - min(steps, max(1, int(steps * strength)))


@dataclass
class DenoiseState:
    """One frame's denoising state (:meth:`LDM3DBackend.prepare`)."""

    params: dict[str, Any]
    scheduler: Any
    timesteps: torch.Tensor  # the steps still to run
    embeddings: torch.Tensor
    latents: torch.Tensor
    guided: bool
    options: dict[str, Any]  # of the scheduler's step
    weights: dict[str, float]  # LoRA weights
    strength: float | None  # img2img's, None without an input image


class LDM3DBackend:
    """Our own LDM3D pipeline: encode prompt → denoise latents → decode RGB + depth."""

    name = "ldm3d"

    def __init__(self, model: str, tokenizer: Any, text_encoder: Any, unet: Any, vae: Any, scheduler_config: Any,
                 device: torch.device, dtype: torch.dtype) -> None:
        self.model = model
        self.variant = check_components(tokenizer, text_encoder, unet, vae)
        self.tokenizer, self.text_encoder, self.unet, self.vae = tokenizer, text_encoder, unet, vae
        self.loras = LoraSet(unet, text_encoder)
        self.scheduler_config = scheduler_config
        self.device, self.dtype = device, dtype
        upcast = getattr(vae.config, "force_upcast", False) and dtype == torch.float16
        self.vae_dtype = torch.float32 if upcast else dtype
        self.decoder: Any = None  # None: the model's own VAE decodes; else a TinyDecoder (tiny_decoder.py)

    @classmethod
    def load(cls, model: str, *, device: str = "auto", dtype: str = "auto", revision: str | None = None,
             local_files_only: bool = False, compile: bool | str | None = False, loras: tuple[str | LoraSpec, ...] = (),
             fuse_loras: bool = False, decoder: str = "full") -> LDM3DBackend:
        """Load from a hub id or a local folder (``compile``: True or one of COMPILE_MODES), with LoRAs (``[NAME=]SOURCE[:SCALE]``, fused at their scales with
        ``fuse_loras``); every failure is a BackendUnavailable (LoraError for a LoRA)."""
        from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        compile_mode(compile)  # a bad mode fails before the weights load
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(dtype, torch_device)
        files = resolve(model, revision=revision, local_files_only=local_files_only)
        folder, safetensors = files.folder, files.safetensors
        check_model_fits(str(folder), torch_device, torch_dtype, only=WEIGHTED, label=model, can_offload=False)
        kinds = sorted({"safetensors" if safe else "PyTorch .bin" for safe in safetensors.values()}, reverse=True)
        log.info("loading LDM3D %s from %s (%s weights)", model, folder, " and ".join(kinds))
        started = time.perf_counter()
        try:
            with _quiet_loading():
                tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
                text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", torch_dtype=torch_dtype,
                                                             use_safetensors=safetensors["text_encoder"])
                # low_cpu_mem_usage needs accelerate, which loaded no faster here; asking for it without
                # accelerate makes diffusers warn at every load
                unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=torch_dtype,
                                                            low_cpu_mem_usage=False,
                                                            use_safetensors=safetensors["unet"])
                vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=torch.float32,
                                                    low_cpu_mem_usage=False, use_safetensors=safetensors["vae"])
                scheduler_config = DDIMScheduler.load_config(folder, subfolder="scheduler")
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise BackendUnavailable(f"cannot load LDM3D from {folder}: {type(exc).__name__}: {exc}") from exc
        backend = cls(model, tokenizer, text_encoder, unet, vae, scheduler_config, torch_device, torch_dtype)
        if decoder != "full":  # full | tiny (MODEL/tiny-decoder) | a tiny decoder's folder, checked against the VAE
            from .tiny_decoder import load_decoder

            backend.decoder = load_decoder(decoder, backend, folder)
        load_all(backend.loras, loras, local_files_only=local_files_only)
        backend._place(compile)
        if fuse_loras and backend.loras.loaded:
            backend.loras.fuse(backend.loras.weights(None))
        log.info("LDM3D %s: %d-channel VAE, %s, %s%s, loaded in %.1f s", model, backend.variant.channels,
                 torch_device, str(torch_dtype).removeprefix("torch."),
                 f", torch.compile {compile_mode(compile)}" if compile_mode(compile) else "",
                 time.perf_counter() - started)
        if torch_device.type == "cpu":
            log.warning("LDM3D runs on the CPU: expect minutes per frame")
        return backend

    def _place(self, compile: bool | str | None) -> None:
        for module, dtype in ((self.text_encoder, self.dtype), (self.unet, self.dtype), (self.vae, self.vae_dtype)):
            if any(p.dtype != dtype for p in module.parameters()):  # only when needed: diffusers warns on each cast
                module.to(dtype=dtype)
            module.to(self.device).eval().requires_grad_(False)
        if self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
            self.vae.to(memory_format=torch.channels_last)
        mode = compile_mode(compile)
        if mode:
            self.unet = torch.compile(self.unet, mode=mode)

    # ------------------------------------------------------------ generation

    def check(self, params: dict[str, Any]) -> dict[str, float]:
        """Refuse what this model cannot make from validated params (ParamError), before a job is queued; returns
        the frame's LoRA weights."""
        width, height = params["width"], params["height"]
        factor = self.variant.scale_factor
        if width % factor or height % factor:
            raise ParamError(f"width and height must be multiples of {factor} for this model, got {width}x{height}")
        if params["scheduler"] in ("lcm", "tcd") and params["steps"] > CONSISTENCY_MAX_STEPS:
            raise ParamError(f"{params['scheduler']} takes at most {CONSISTENCY_MAX_STEPS} steps (it skips along the "
                             f"original {CONSISTENCY_MAX_STEPS}-step schedule), got {params['steps']}")
        try:
            weights = self.loras.weights(requested_loras(params))
            self.loras.check(weights)
        except LoraError as exc:
            raise ParamError(str(exc)) from exc
        return weights

    def start_noise(self, params: dict[str, Any]) -> torch.Tensor:
        """The seeded start noise ``generate`` draws for these params (CPU, float32, before the scheduler's
        init_noise_sigma): what the live session interpolates between two seeds."""
        factor = self.variant.scale_factor
        shape = (1, self.unet.config.in_channels, params["height"] // factor, params["width"] // factor)
        generator = torch.Generator("cpu").manual_seed(params["seed"])
        return torch.randn(shape, generator=generator, dtype=torch.float32)

    def encode(self, params: dict[str, Any]) -> torch.Tensor:
        """The text embeddings ``generate`` computes for these params (``[negative, prompt]`` when guidance > 1), with
        the params' LoRAs active: what the live session interpolates between two prompts."""
        weights = self.check(params)
        self.loras.activate(weights)
        with torch.inference_mode():
            return self._encode(params["prompt"], params["negative_prompt"], params["guidance"] > 1.0)

    def generate(self, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn,
                 latents: torch.Tensor | None = None, embeddings: torch.Tensor | None = None,
                 image: RGBD | None = None, strength: float = 1.0, full_decoder: bool = False) -> RGBD:
        """One RGBD frame from validated params; ``latents`` overrides the seeded start noise, ``embeddings`` the
        prompt's text embeddings (the shape :meth:`encode` returns for these params). With ``image`` (an RGBD of the
        params' size) the frame starts from it (img2img): its latents are noised to ``strength`` and that share of
        the steps denoises them. ``full_decoder`` decodes with the model's VAE even when a tiny decoder is loaded."""
        with torch.inference_mode():
            frame = self.prepare(params, latents=latents, embeddings=embeddings, image=image, strength=strength)
            latents = self._denoise(frame, progress, cancelled)
            decoded = self._decode(latents, full=full_decoder)
        return self.result(frame, decoded, full_decoder=full_decoder)

    def remix(self, params: dict[str, Any], source: RGBD, mask: np.ndarray, progress: ProgressFn,
              cancelled: CancelledFn) -> RGBD:
        """``source`` regenerated where ``mask`` (H, W in [0, 1]) is above 0 by latent blending, RGB and depth
        together (generator.backends.remix); the decoded frame, before the kept pixels are put back."""
        from .remix import latent_remix

        return latent_remix(self, params, source, mask, progress, cancelled)

    def prepare(self, params: dict[str, Any], *, latents: torch.Tensor | None = None,
                embeddings: torch.Tensor | None = None, image: RGBD | None = None,
                strength: float = 1.0) -> DenoiseState:
        """Everything one frame's denoising needs, with the params' LoRAs active and seamless set (call under
        ``torch.inference_mode``); see :meth:`generate` for the arguments."""
        weights = self.check(params)
        width, height, factor = params["width"], params["height"], self.variant.scale_factor
        scheduler = make_scheduler(params["scheduler"], self.scheduler_config, params["spacing"])
        scheduler.set_timesteps(params["steps"], device=self.device)  # before init_noise_sigma, which it sets
        guided = params["guidance"] > 1.0
        self.apply(weights, params["seamless"])  # before the prompt is encoded: a LoRA may change the text encoder
        if embeddings is None:
            embeddings = self._encode(params["prompt"], params["negative_prompt"], guided)
        else:
            expected = (2 if guided else 1, self.tokenizer.model_max_length, self.text_encoder.config.hidden_size)
            if tuple(embeddings.shape) != expected:
                raise ValueError(f"embeddings must have shape {expected}, got {tuple(embeddings.shape)}")
            embeddings = embeddings.to(self.device, self.dtype)
        shape = (1, self.unet.config.in_channels, height // factor, width // factor)
        generator = torch.Generator("cpu").manual_seed(params["seed"])  # start noise, then lcm/tcd step noise
        if latents is None:
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        first = 0
        if image is None:
            latents = latents.to(self.device, self.dtype) * scheduler.init_noise_sigma
        else:
            first = start_step(params["steps"], strength) * scheduler.order
            start = scheduler.timesteps[first:first + 1]
            latents = scheduler.add_noise(self.encode_image(image, params), latents.to(self.device, self.dtype),
                                          start)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(first)  # else the first step searches its index on the device
        return DenoiseState(params, scheduler, scheduler.timesteps[first:], embeddings, latents, guided,
                     step_options(params["scheduler"], params, generator), weights, strength if image else None)

    def apply(self, weights: dict[str, float], seamless: bool) -> None:
        """The models' frame-wide settings: LoRA weights, and seamless on the U-Net and decoders (set every time:
        trainers and decoder swaps change them behind the backend's back)."""
        self.loras.activate(weights)
        set_seamless(self.unet, seamless)
        set_seamless(self.vae, seamless)
        if self.decoder is not None:
            self.decoder.set_seamless(seamless)

    def encode_image(self, image: RGBD, params: dict[str, Any]) -> torch.Tensor:
        """The VAE latents (the mean, scaled) of an RGBD image of the params' size: where img2img starts."""
        from ..train.packing import pack

        if image.rgb.shape[:2] != (params["height"], params["width"]):
            raise ValueError(f"the input image is {image.rgb.shape[1]}x{image.rgb.shape[0]}; "
                             f"this frame is {params['width']}x{params['height']}")
        pixels = pack(image.rgb, image.depth, self.variant.channels)[None].to(self.device, self.vae_dtype)
        latents = self.vae.encode(pixels).latent_dist.mean * self.vae.config.scaling_factor
        return latents.to(self.dtype)

    def result(self, frame: DenoiseState, image: np.ndarray, *, full_decoder: bool = False) -> RGBD:
        """The RGBD of a decoded (H, W, C) image in [0, 1] made from ``frame``."""
        params = frame.params
        rgb = np.clip(np.round(image[..., :3] * 255.0), 0, 255).astype(np.uint8)
        info = {
            "decoder": "full" if self.decoder is None or full_decoder else self.decoder.name,
            "vae_channels": self.variant.channels, "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."), "scheduler": params["scheduler"],
            "timestep_spacing": frame.scheduler.config.get("timestep_spacing"), "seamless": params["seamless"],
            "loras": self.loras.records(frame.weights), "loras_fused": self.loras.fused is not None,
        }
        info["licences"] = records([self.model, *(lora["source"] for lora in info["loras"])])
        if frame.strength is not None:
            info.update(input_strength=frame.strength, steps_run=len(frame.timesteps) // frame.scheduler.order)
        return RGBD(rgb, self.variant.decode_depth(image), info=info)

    def _encode(self, prompt: str, negative: str, guided: bool) -> torch.Tensor:
        """Text embeddings, ``[negative, prompt]`` when guided. Each text is encoded as its own batch of one, as
        diffusers' pipelines do: CPU GEMM kernels (MKL on AVX-512) round differently by batch size, and this way
        the prompt's embedding never depends on whether a negative prompt is encoded beside it."""
        limit = self.tokenizer.model_max_length
        full = self.tokenizer(prompt, truncation=False).input_ids
        if len(full) > limit:
            log.warning("prompt is %d tokens; the model reads only the first %d", len(full), limit)
        texts = [negative, prompt] if guided else [prompt]
        return torch.cat([self._embed(text, limit) for text in texts])

    def _embed(self, text: str, limit: int) -> torch.Tensor:
        tokens = self.tokenizer(text, padding="max_length", max_length=limit, truncation=True, return_tensors="pt")
        return self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)

    def _denoise(self, frame: DenoiseState, progress: ProgressFn, cancelled: CancelledFn,
                 blend: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """The frame's latents denoised; ``blend(step, latents)``, when given, replaces the latents after each step
        (remix: the kept region put back, noised to the next timestep)."""
        # The U-Net takes each timestep as a device tensor, the scheduler as a host number: a scheduler indexing
        # its tables with a device tensor makes the host wait for the GPU at every step.
        latents, scheduler, timesteps = frame.latents, frame.scheduler, frame.timesteps
        for step, (t, t_host) in enumerate(zip(timesteps, timesteps.tolist()), start=1):
            if cancelled():
                raise Cancelled()
            noise = self.predict(torch.cat([latents] * 2) if frame.guided else latents, t, t_host, frame)
            latents = scheduler.step(noise, t_host, latents, **frame.options).prev_sample
            if blend is not None:
                latents = blend(step, latents)
            progress(step, len(timesteps))
        return latents

    def predict(self, latents: torch.Tensor, t: torch.Tensor, t_host: float, frame: DenoiseState) -> torch.Tensor:
        """The guided noise prediction for ``latents`` (doubled when guided) at timestep t."""
        model_input = frame.scheduler.scale_model_input(latents, t_host)
        return self.guide(self.unet(model_input, t, encoder_hidden_states=frame.embeddings).sample, frame)

    @staticmethod
    def guide(noise: torch.Tensor, frame: DenoiseState) -> torch.Tensor:
        """Classifier-free guidance of a frame's noise prediction ([unconditional, prompt] rows when guided)."""
        if not frame.guided:
            return noise
        uncond, cond = noise.chunk(2)
        return uncond + frame.params["guidance"] * (cond - uncond)

    def _decode(self, latents: torch.Tensor, *, full: bool = False) -> np.ndarray:
        if self.decoder is not None and not full:  # a tiny RGBD decoder, returning the same layout as the VAE's path below
            return self.decoder.decode(latents)
        latents = latents.to(self.vae_dtype) / self.vae.config.scaling_factor
        image = self.vae.decode(latents).sample
        image = (image.float() / 2 + 0.5).clamp(0, 1)
        return image[0].permute(1, 2, 0).cpu().numpy()
