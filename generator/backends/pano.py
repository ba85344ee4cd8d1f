"""The panorama backend: a diffusers text-to-image pipeline makes a 2:1 RGB panorama, the estimator module's
360° path gives it depth, and the two become an ordinary RGBD frame.

Supported pipeline classes (ARCHITECTURES, read from ``model_index.json``'s ``_class_name``): Stable Diffusion
1.x/2.x, SDXL, Z-Image, FLUX and Qwen-Image. Seamless at the 0°/360° seam: every zero-padded convolution of a U-Net
and of the VAE pads circularly across the width (seamless.py; Qwen-Image's causal 3D convolutions too); a
transformer denoiser has no padding to change, so its latents are rolled sideways between steps by whole patches, a
different column at the edge each step, and rolled back before decoding (whose VAE wraps too); it also denoises a
few columns of context copied from the other edge on each side, blended back after every step (SeamOverlap), and
only the frame's own columns are decoded (vae_latents.py), so the wrapping VAE joins them at the true seam. FLUX
and Qwen-Image hand the step callback 2x2 patches packed as tokens: they are unpacked to (B, C, H, W) for the roll
and packed back. Our guidance g is classifier-free guidance, uncond + g·(cond − uncond); each pipeline gets it in its own
terms (the ``_*_guidance`` functions). LoRAs load through the pipeline's own diffusers loader (peft), one named
adapter each, with per-frame weights as for LDM3D.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from td_bridge.params import ESTIMATION_PARAMS, ParamError, requested_loras, validate

from .base import RGBD, BackendUnavailable, Cancelled, CancelledFn, ProgressFn
from .ldm3d_files import CHECKPOINTS, HUB_ID
from .licences import records
from .lora import LoadedLora, LoraError, LoraSpec, file_sha256, load_all, locate

log = logging.getLogger("depthfusion.pano")

ROLL_FRACTION = 0.25  # of the latent width, per step (transformer denoisers)
OVERLAP_FRACTION = 1 / 16  # of the latent width, of context on each side (transformer denoisers)
LDM3D_CLASSES = ("StableDiffusionLDM3DPipeline", "StableDiffusionUpscaleLDM3DPipeline")


def _cfg_guidance(guidance: float) -> dict[str, float]:
    """Stable Diffusion's guidance_scale is ours: uncond + g·(cond − uncond), one pass at g ≤ 1."""
    return {"guidance_scale": guidance}


def _z_image_guidance(guidance: float) -> dict[str, float]:
    """Z-Image's guidance_scale s means cond + s·(cond − uncond), i.e. ours at g = s + 1; 0 is one pass."""
    return {"guidance_scale": max(guidance - 1.0, 0.0)}


def _flux_guidance(guidance: float) -> dict[str, float]:
    """Not ours: FLUX.1-dev is guidance-distilled, so g goes in as its embedded guidance_scale, which its training
    taught to imitate classifier-free guidance at that scale in one pass, without a negative prompt (FLUX.1-schnell
    has no guidance embedding and ignores it). FLUX's true_cfg_scale, an extra negative pass, stays off."""
    return {"guidance_scale": guidance}


def _true_cfg_guidance(guidance: float) -> dict[str, float]:
    """Qwen-Image's true_cfg_scale with a negative prompt is ours, uncond + g·(cond − uncond), after which it scales
    each token's prediction back to the conditional one's norm; one pass at g ≤ 1."""
    return {"true_cfg_scale": guidance}


@dataclass(frozen=True)
class Packing:
    """Latents that a pipeline keeps as 2x2 patches packed into (B, H/2·W/2, 4C) tokens (FLUX, Qwen-Image), seen
    as (B, C, H, W) through the pipeline's own ``_unpack_latents``/``_pack_latents``."""

    frame_axis: bool = False  # unpacked as (B, C, 1, H, W): one frame of a video VAE (Qwen-Image)
    patch: int = 2

    def unpack(self, pipe: Any, latents: Any, height: int, width: int) -> Any:
        """(B, C, H, W) latents of a ``width`` x ``height`` image from packed tokens."""
        grid = pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)
        return grid[:, :, 0] if self.frame_axis else grid

    def pack(self, pipe: Any, grid: Any) -> Any:
        batch, channels, rows, columns = grid.shape
        return pipe._pack_latents(grid, batch, channels, rows, columns)


@dataclass(frozen=True)
class Architecture:
    denoiser: str  # the pipeline's attribute: unet or transformer
    guidance: Callable[[float], dict[str, float]]  # our guidance → the pipeline's guidance keyword(s)
    own_scheduler: bool  # True: flow matching; our scheduler/spacing/eta parameters do not apply
    load_options: tuple[tuple[str, Any], ...] = ()
    negative_prompt: bool = True  # it takes ours (passed at g > 1, where it runs an unconditional pass)
    packing: Packing | None = None  # None: the step callback's latents are (B, C, H, W)


ARCHITECTURES: dict[str, Architecture] = {
    "StableDiffusionPipeline": Architecture("unet", _cfg_guidance, False,
                                            (("safety_checker", None), ("requires_safety_checker", False))),
    "StableDiffusionXLPipeline": Architecture("unet", _cfg_guidance, False),
    "ZImagePipeline": Architecture("transformer", _z_image_guidance, True),
    "FluxPipeline": Architecture("transformer", _flux_guidance, True, negative_prompt=False, packing=Packing()),
    "QwenImagePipeline": Architecture("transformer", _true_cfg_guidance, True, packing=Packing(frame_axis=True)),
}


def supported() -> str:
    return ", ".join(ARCHITECTURES)


# ------------------------------------------------------------------ which backend a model is for


def pipeline_class(model: str, *, revision: str | None = None, local_files_only: bool = False) -> str | None:
    """The ``_class_name`` of a folder's or hub repository's model_index.json; None where there is none to read
    (the LDM3D loader then explains what is missing). A malformed index is a BackendUnavailable."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        index = folder / "model_index.json"
        return _class_name(index) if index.is_file() else None
    if not HUB_ID.match(model) or model in CHECKPOINTS:  # Intel's LDM3D repositories: no need to ask
        return None
    from huggingface_hub import hf_hub_download

    try:
        index = Path(hf_hub_download(model, "model_index.json", revision=revision, local_files_only=local_files_only))
    except Exception:  # offline, not found, gated: the LDM3D loader's messages say which
        return None
    return _class_name(index)


def _class_name(index: Path) -> str:
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BackendUnavailable(f"{index}: not a readable model_index.json ({exc})") from exc
    name = data.get("_class_name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise BackendUnavailable(f"{index}: no _class_name string naming the diffusers pipeline")
    return name


def is_pano_class(name: str | None) -> bool:
    """Whether a pipeline class goes to this backend; other non-LDM3D classes are refused by name."""
    if name is None or name in LDM3D_CLASSES:
        return False
    if name not in ARCHITECTURES:
        raise BackendUnavailable(f"{name} is not supported: the LDM3D backend takes StableDiffusionLDM3DPipeline "
                                 f"models, the panorama backend {supported()}")
    return True


# ------------------------------------------------------------------ LoRAs


class PipelineLoras:
    """LoRAs loaded into a pipeline through its diffusers loader: one named adapter each, weights per frame."""

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe
        self.loaded: dict[str, LoadedLora] = {}
        self._active: dict[str, float] | None = None

    def load(self, spec: LoraSpec, *, local_files_only: bool = False) -> LoadedLora:
        if spec.name in self.loaded:
            raise LoraError(f"two LoRAs are named {spec.name!r}: name them NAME=SOURCE")
        path = locate(spec.source, local_files_only=local_files_only)
        try:
            self.pipe.load_lora_weights(str(path), adapter_name=spec.name)
        except Exception as exc:  # diffusers and peft raise ValueError, KeyError, RuntimeError … for foreign LoRAs
            raise LoraError(f"{path}: {type(self.pipe).__name__} cannot load it ({type(exc).__name__}: {exc})") \
                from exc
        targets = tuple(part for part, names in self.pipe.get_list_adapters().items() if spec.name in names)
        if not targets:
            raise LoraError(f"{path}: none of its keys fits this {type(self.pipe).__name__} (a LoRA for another "
                            "architecture?)")
        lora = LoadedLora(spec.name, spec.source, path, file_sha256(path), spec.scale, targets)
        self.loaded[spec.name] = lora
        self._active = None
        return lora

    def weights(self, requested: Mapping[str, float] | None) -> dict[str, float]:
        """Each LoRA's weight for a frame: ``requested`` (unknown names refused), or every default scale."""
        if requested is None:
            return {name: lora.scale for name, lora in self.loaded.items()}
        unknown = [name for name in requested if name not in self.loaded]
        if unknown:
            known = ", ".join(self.loaded) or "none (--lora NAME=SOURCE:SCALE loads them)"
            raise LoraError(f"LoRA {', '.join(map(repr, unknown))} is not loaded; loaded: {known}")
        return dict(requested)

    def activate(self, weights: Mapping[str, float]) -> None:
        if not self.loaded or dict(weights) == self._active:
            return
        names = list(self.loaded)
        self.pipe.set_adapters(names, [float(weights.get(name, 0.0)) for name in names])
        self._active = dict(weights)

    def records(self, weights: Mapping[str, float]) -> list[dict[str, Any]]:
        return [self.loaded[name].record(weight) for name, weight in weights.items() if weight != 0.0]


# ------------------------------------------------------------------ seamless for transformer denoisers


class LatentRoller:
    """Rolls (B, C, H, W) latents sideways by ``shift`` columns after every step but the last, and after the last
    rolls them back by the total, so no column stays at the edge; ``total`` is how far they are rolled now."""

    def __init__(self, shift: int, steps: int) -> None:
        self.shift, self.steps, self.total = shift, steps, 0

    def __call__(self, latents: Any, step: int) -> Any:
        import torch

        if step < self.steps - 1:
            self.total += self.shift
            return torch.roll(latents, self.shift, dims=-1)
        back, self.total = -self.total, 0
        return torch.roll(latents, back, dims=-1)


class SeamOverlap:
    """``columns`` latent columns of context on each side of a seamless transformer's latents: the pipeline denoises
    [copy of the last columns | latents | copy of the first columns], so the columns at the seam are denoised beside
    their true neighbours. After every step each edge's two versions (its own, and the copy denoised beyond the
    other edge) are blended, the copy's weight ramping up to one half at the seam, and the copies made anew."""

    def __init__(self, columns: int, scale: int) -> None:
        self.columns, self.pixels = columns, columns * scale

    def widen(self, inner: Any) -> Any:
        import torch

        return torch.cat([inner[..., -self.columns:], inner, inner[..., :self.columns]], dim=-1)

    def crop(self, wide: Any) -> Any:
        """The frame's own latents of widened ones (their edges already joined by the last step)."""
        return wide[..., self.columns:-self.columns]

    def join(self, grid: Any) -> Any:
        """The latents without their copies, each edge blended with the copy of it denoised across the seam."""
        import torch

        c = self.columns
        inner = grid[..., c:-c].clone()
        towards_seam = torch.arange(1, c + 1, dtype=grid.dtype, device=grid.device) / (2 * c)
        inner[..., -c:] = (1 - towards_seam) * inner[..., -c:] + towards_seam * grid[..., :c]
        from_seam = towards_seam.flip(0)
        inner[..., :c] = (1 - from_seam) * inner[..., :c] + from_seam * grid[..., -c:]
        return inner


# ------------------------------------------------------------------ the backend


class PanoBackend:
    """Text → 2:1 RGB (a diffusers pipeline) → depth (an estimator's 360° path) → RGBD."""

    name = "pano"

    def __init__(self, model: str, pipe: Any, estimator: Any, device: Any, components: tuple[str, ...]) -> None:
        self.model, self.pipe, self.estimator, self.device = model, pipe, estimator, device
        self.pipeline = type(pipe).__name__
        self.architecture = ARCHITECTURES[self.pipeline]
        self.components = components  # every model that makes a frame, for its licences
        self.loras = PipelineLoras(pipe)
        self.scheduler_config = pipe.scheduler.config
        self.factor = self._size_factor()
        self.offload = "none"  # or model, sequential: how the weights reach the device (memory.place)

    @classmethod
    def load(cls, model: str, *, estimator: str, pipeline: str, device: str = "auto", dtype: str = "auto",
             revision: str | None = None, local_files_only: bool = False, loras: tuple[str | LoraSpec, ...] = (),
             unet: str | None = None, components: tuple[str, ...] = (), fuse_loras: bool = False,
             compile: bool | str | None = None, decoder: str = "full", offload: str = "none") -> PanoBackend:
        """Load pipeline class ``pipeline`` from a folder or hub id (``unet``: a hub id or folder whose unet/
        replaces the pipeline's), then its LoRAs and the depth ``estimator``; ``offload`` none, model or sequential
        (memory.py; checked to fit first); failures are BackendUnavailable."""
        from .ldm3d import pick_device, pick_dtype
        from .memory import check_model_fits, check_offload, place

        for option, given in (("--decoder", decoder != "full"), ("--fuse-lora", fuse_loras), ("--compile", compile)):
            if given:
                raise BackendUnavailable(f"{option} is for LDM3D models; the panorama backend does not take it yet")
        if estimator.lower() == "none":
            raise BackendUnavailable("the panorama backend takes its depth from --estimator; none leaves it none")
        is_pano_class(pipeline)
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(dtype, torch_device, bf16_first=ARCHITECTURES[pipeline].denoiser == "transformer")
        check_offload(offload, torch_device)
        unloaded = [name for name, value in ARCHITECTURES[pipeline].load_options if value is None]
        check_model_fits(model, torch_device, torch_dtype, offload, revision=revision, skip=unloaded,
                         replace={"unet": unet} if unet else None)
        started = time.perf_counter()
        pipe = _load_pipeline(model, pipeline, torch_dtype, revision, local_files_only, unet)
        backend = cls(model, pipe, None, torch_device, components or tuple(c for c in (model, unet) if c))
        load_all(backend.loras, loras, local_files_only=local_files_only)
        place(pipe, torch_device, offload)
        backend.offload = offload
        pipe.set_progress_bar_config(disable=True)
        backend.estimator = _load_estimator(estimator, device, local_files_only)
        log.info("panorama %s: %s, %s, %s, offload %s, depth from %s, loaded in %.1f s", model, pipeline,
                 torch_device, str(torch_dtype).removeprefix("torch."), offload, estimator,
                 time.perf_counter() - started)
        return backend

    def _size_factor(self) -> int:
        """Pixels per step of width and height: the VAE's scale factor times the transformer's patch size."""
        return self.pipe.vae_scale_factor * self._patch

    @property
    def _transformer(self) -> bool:
        return self.architecture.denoiser == "transformer"

    @property
    def _patch(self) -> int:
        """Latent columns per transformer patch (1 for a U-Net)."""
        if self.architecture.packing is not None:
            return self.architecture.packing.patch
        return self.pipe.transformer.config.all_patch_size[0] if self._transformer else 1

    def check(self, params: dict[str, Any]) -> dict[str, float]:
        """ParamError for what this pipeline cannot make (before a job is queued); the frame's LoRA weights."""
        width, height = params["width"], params["height"]
        if width != 2 * height:
            raise ParamError(f"the panorama backend makes 2:1 equirectangular frames; got {width}x{height}")
        if width % self.factor or height % self.factor:
            raise ParamError(f"width and height must be multiples of {self.factor} for {self.pipeline}, "
                             f"got {width}x{height}")
        try:
            return self.loras.weights(requested_loras(params))
        except LoraError as exc:
            raise ParamError(str(exc)) from exc

    def generate(self, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn) -> RGBD:
        """One RGBD frame from validated params: the pipeline's RGB, the estimator's 360° depth."""
        from ..estimators.frame import estimate_rgbd
        from ..estimators.pano import LAYOUTS

        weights = self.check(params)
        estimation = validate({"pano": "yes"}, ESTIMATION_PARAMS)
        total = params["steps"] + len(LAYOUTS[estimation["views"]])
        rgb = self._rgb(params, weights, lambda step: progress(step, total), cancelled)
        depth = estimate_rgbd(self.estimator, rgb, estimation, lambda k, _n: progress(params["steps"] + k, total),
                              cancelled)
        return RGBD(rgb, depth.depth, near=depth.near, far=depth.far, info=self._info(params, weights, depth.info))

    def remix(self, params: dict[str, Any], source: RGBD, mask: np.ndarray, progress: ProgressFn,
              cancelled: CancelledFn) -> RGBD:
        """``source`` regenerated where ``mask`` is above 0 by latent blending through the pipeline's step callback,
        then the 360° depth of the result with the source's RGB put back; generator.remixing aligns it to the kept
        depth."""
        from .remix import pipeline_remix

        return pipeline_remix(self, params, source, mask, progress, cancelled)

    def _rgb(self, params: dict[str, Any], weights: dict[str, float], step_done: Callable[[int], None],
             cancelled: CancelledFn, blend: Callable[[int, Any, int], Any] | None = None,
             latents: Any = None) -> np.ndarray:
        """The pipeline's RGB; ``latents`` its (B, C, H, W) start noise, ``blend(step, latents, shift)`` replacing
        the (B, C, H, W) latents after each step (remix), ``shift`` columns rolled round (seamless transformers,
        which also denoise with SeamOverlap's context columns: the pipeline denoises wider latents, of which
        only the frame's own are decoded)."""
        import torch

        from .seamless import set_seamless
        from .vae_latents import decode_latents

        self.loras.activate(weights)
        seamless = params["seamless"]
        set_seamless(self.pipe.vae, seamless)
        if not self._transformer:
            set_seamless(self.pipe.unet, seamless)
        roller = self._roller(params) if seamless and self._transformer else None
        overlap = self.overlap(params) if seamless and self._transformer else None
        wide = {**params, "width": params["width"] + 2 * overlap.pixels} if overlap else params

        def on_step_end(_pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled():
                raise Cancelled()
            step_done(step + 1)
            if blend is None and roller is None:
                return {}
            grid = self.unpack(tensors["latents"], wide)
            grid = overlap.join(grid) if overlap else grid
            if blend is not None:
                grid = blend(step, grid, roller.total if roller else 0)
            grid = roller(grid, step) if roller else grid
            return {"latents": self.pack(overlap.widen(grid) if overlap else grid)}

        if cancelled():
            raise Cancelled()
        if overlap is not None and latents is None:  # the pipeline's own draw would be of the wider picture
            latents = self.start_noise(params)
        with torch.inference_mode():
            start = {} if latents is None else {"latents": self.pack(overlap.widen(latents) if overlap else latents)}
            images = self.pipe(**self._call_options(wide), **start, callback_on_step_end=on_step_end,
                               callback_on_step_end_tensor_inputs=["latents"],
                               output_type="latent" if overlap else "np").images
            # The wide picture's ends are not neighbours: decoded with the wrapping VAE they would meet a few
            # columns from the seam. Only the frame's own latents are decoded; they wrap at the true seam.
            image = decode_latents(self.pipe, overlap.crop(self.unpack(images, wide))) if overlap else images[0]
        return np.clip(np.round(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)

    def _roller(self, params: dict[str, Any]) -> LatentRoller:
        patches = params["width"] // self.factor  # transformer patches across the latent width
        return LatentRoller(max(1, round(patches * ROLL_FRACTION)) * self._patch, params["steps"])

    def overlap(self, params: dict[str, Any]) -> SeamOverlap:
        """The context columns of a seamless transformer's frame of ``params``' size: whole patches."""
        scale = self.factor // self._patch
        columns = max(1, round(params["width"] // scale * OVERLAP_FRACTION / self._patch)) * self._patch
        return SeamOverlap(columns, scale)

    def start_noise(self, params: dict[str, Any]) -> Any:
        """(1, C, H, W) start noise of a frame of ``params``: what the pipeline draws from the frame's seed."""
        import torch

        scale, packing = self.factor // self._patch, self.architecture.packing
        denoiser = self.pipe.transformer if self._transformer else self.pipe.unet
        channels = denoiser.config.in_channels // (packing.patch ** 2 if packing else 1)
        shape = (1, channels, params["height"] // scale, params["width"] // scale)
        noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(params["seed"]), dtype=self.pipe.dtype)
        return noise.to(self.device)

    def unpack(self, latents: Any, params: dict[str, Any]) -> Any:
        """The pipeline's latents of a frame of ``params``' size as (B, C, H, W)."""
        packing = self.architecture.packing
        return latents if packing is None else packing.unpack(self.pipe, latents, params["height"], params["width"])

    def pack(self, grid: Any) -> Any:
        """(B, C, H, W) latents as the pipeline keeps them."""
        packing = self.architecture.packing
        return grid if packing is None else packing.pack(self.pipe, grid)

    def _call_options(self, params: dict[str, Any]) -> dict[str, Any]:
        import torch

        from .ldm3d import make_scheduler

        options = {"prompt": params["prompt"], "num_inference_steps": params["steps"], "width": params["width"],
                   "height": params["height"], **self.architecture.guidance(params["guidance"]),
                   "generator": torch.Generator("cpu").manual_seed(params["seed"])}
        if self.architecture.negative_prompt and params["guidance"] > 1.0:
            options["negative_prompt"] = params["negative_prompt"]
        if not self.architecture.own_scheduler:
            self.pipe.scheduler = make_scheduler(params["scheduler"], self.scheduler_config, params["spacing"])
            if params["scheduler"] == "tcd":
                options["eta"] = params["eta"]
        return options

    def _info(self, params: dict[str, Any], weights: dict[str, float], depth: dict[str, Any]) -> dict[str, Any]:
        loras = self.loras.records(weights)
        return {
            "pipeline": self.pipeline, "device": str(self.device),
            "dtype": str(self.pipe.dtype).removeprefix("torch."), "offload": self.offload,
            "scheduler": type(self.pipe.scheduler).__name__, "seamless": params["seamless"],
            "seam": (f"latent roll, {self.overlap(params).pixels} px overlap each side, circular VAE"
                     if self._transformer else "circular padding") if params["seamless"] else "none",
            **self.architecture.guidance(params["guidance"]),
            "loras": loras, "estimator": self.estimator.model, "depth": depth,
            "licences": records([*self.components, *(lora["source"] for lora in loras), self.estimator.model]),
        }


def _load_pipeline(model: str, pipeline: str, dtype: Any, revision: str | None, local_files_only: bool,
                   unet: str | None) -> Any:
    import diffusers

    options = dict(ARCHITECTURES[pipeline].load_options)
    try:
        if unet is not None:
            options["unet"] = diffusers.UNet2DConditionModel.from_pretrained(
                unet, subfolder="unet", dtype=dtype, local_files_only=local_files_only)
        return getattr(diffusers, pipeline).from_pretrained(model, dtype=dtype, revision=revision,
                                                            local_files_only=local_files_only, **options)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError) as exc:
        raise BackendUnavailable(f"cannot load {pipeline} from {model}: {type(exc).__name__}: {exc}") from exc


def _load_estimator(estimator: str, device: str, local_files_only: bool) -> Any:
    from ..estimators.model import DepthModel

    return DepthModel.load(estimator, device=device, local_files_only=local_files_only)
