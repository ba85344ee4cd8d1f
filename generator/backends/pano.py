"""The panorama backend: a diffusers text-to-image pipeline makes a 2:1 RGB panorama, the estimator module's
360° path gives it depth, and the two become an ordinary RGBD frame.

Supported pipeline classes (ARCHITECTURES, read from ``model_index.json``'s ``_class_name``): Stable Diffusion
1.x/2.x, SDXL and Z-Image. Seamless at the 0°/360° seam: every zero-padded convolution of a U-Net and of the VAE
pads circularly across the width (seamless.py); a transformer denoiser has no padding to change, so its latents
are rolled sideways between steps, a different column at the edge each step, and rolled back before decoding
(whose VAE wraps too). LoRAs load through the pipeline's own diffusers loader (peft), one named adapter each,
with per-frame weights as for LDM3D.
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
LDM3D_CLASSES = ("StableDiffusionLDM3DPipeline", "StableDiffusionUpscaleLDM3DPipeline")


def _cfg(guidance: float) -> float:
    """Stable Diffusion's guidance_scale is ours: uncond + g·(cond − uncond), one pass at g ≤ 1."""
    return guidance


def _z_image(guidance: float) -> float:
    """Z-Image's guidance_scale s means cond + s·(cond − uncond), i.e. ours at g = s + 1; 0 is one pass."""
    return max(guidance - 1.0, 0.0)


@dataclass(frozen=True)
class Architecture:
    denoiser: str  # the pipeline's attribute: unet or transformer
    guidance: Callable[[float], float]  # our guidance → the pipeline's guidance_scale
    own_scheduler: bool  # True: flow matching; our scheduler/spacing/eta parameters do not apply
    load_options: tuple[tuple[str, Any], ...] = ()


ARCHITECTURES: dict[str, Architecture] = {
    "StableDiffusionPipeline": Architecture("unet", _cfg, False,
                                            (("safety_checker", None), ("requires_safety_checker", False))),
    "StableDiffusionXLPipeline": Architecture("unet", _cfg, False),
    "ZImagePipeline": Architecture("transformer", _z_image, True),
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
    """A ``callback_on_step_end`` that rolls (B, C, H, W) latents sideways by ``shift`` columns after every step
    but the last, and after the last rolls them back by the total, so no column stays at the edge."""

    def __init__(self, shift: int, steps: int) -> None:
        self.shift, self.steps, self.total = shift, steps, 0

    def __call__(self, latents: Any, step: int) -> Any:
        import torch

        if step < self.steps - 1:
            self.total += self.shift
            return torch.roll(latents, self.shift, dims=-1)
        back, self.total = -self.total, 0
        return torch.roll(latents, back, dims=-1)


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

    @classmethod
    def load(cls, model: str, *, estimator: str, pipeline: str, device: str = "auto", dtype: str = "auto",
             revision: str | None = None, local_files_only: bool = False, loras: tuple[str | LoraSpec, ...] = (),
             unet: str | None = None, components: tuple[str, ...] = (), fuse_loras: bool = False,
             compile: bool | str | None = None, decoder: str = "full") -> PanoBackend:
        """Load pipeline class ``pipeline`` from a folder or hub id (``unet``: a hub id or folder whose unet/
        replaces the pipeline's), then its LoRAs and the depth ``estimator``; failures are BackendUnavailable."""
        from .ldm3d import pick_device, pick_dtype

        for option, given in (("--decoder", decoder != "full"), ("--fuse-lora", fuse_loras), ("--compile", compile)):
            if given:
                raise BackendUnavailable(f"{option} is for LDM3D models; the panorama backend does not take it yet")
        if estimator.lower() == "none":
            raise BackendUnavailable("the panorama backend takes its depth from --estimator; none leaves it none")
        is_pano_class(pipeline)
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(dtype, torch_device)
        started = time.perf_counter()
        pipe = _load_pipeline(model, pipeline, torch_dtype, revision, local_files_only, unet)
        backend = cls(model, pipe, None, torch_device, components or tuple(c for c in (model, unet) if c))
        load_all(backend.loras, loras, local_files_only=local_files_only)
        pipe.to(torch_device)
        pipe.set_progress_bar_config(disable=True)
        backend.estimator = _load_estimator(estimator, device, local_files_only)
        log.info("panorama %s: %s, %s, %s, depth from %s, loaded in %.1f s", model, pipeline, torch_device,
                 str(torch_dtype).removeprefix("torch."), estimator, time.perf_counter() - started)
        return backend

    def _size_factor(self) -> int:
        """Pixels per step of width and height: the VAE's scale factor times the transformer's patch size."""
        return 2 ** (len(self.pipe.vae.config.block_out_channels) - 1) * self._patch

    @property
    def _transformer(self) -> bool:
        return self.architecture.denoiser == "transformer"

    @property
    def _patch(self) -> int:
        """Latent columns per transformer patch (1 for a U-Net)."""
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
        """``source`` regenerated where ``mask`` is above 0 by latent blending through the pipeline's step callback
        (U-Net pipelines), then the 360° depth of the result with the source's RGB put back; generator.remixing
        aligns it to the kept depth."""
        from .remix import pipeline_remix

        return pipeline_remix(self, params, source, mask, progress, cancelled)

    def _rgb(self, params: dict[str, Any], weights: dict[str, float], step_done: Callable[[int], None],
             cancelled: CancelledFn, blend: Callable[[int, Any], Any] | None = None,
             latents: Any = None) -> np.ndarray:
        """The pipeline's RGB; ``latents`` its start noise, ``blend(step, latents)`` replacing the latents after each
        step (remix)."""
        import torch

        from .seamless import set_seamless

        self.loras.activate(weights)
        seamless = params["seamless"]
        set_seamless(self.pipe.vae, seamless)
        if not self._transformer:
            set_seamless(self.pipe.unet, seamless)
        roller = self._roller(params) if seamless and self._transformer else None

        def on_step_end(_pipe: Any, step: int, _t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            if cancelled():
                raise Cancelled()
            step_done(step + 1)
            if blend is not None:
                return {"latents": blend(step, tensors["latents"])}
            return {"latents": roller(tensors["latents"], step)} if roller else {}

        if cancelled():
            raise Cancelled()
        with torch.inference_mode():
            start = {} if latents is None else {"latents": latents}
            images = self.pipe(**self._call_options(params), **start, callback_on_step_end=on_step_end,
                               callback_on_step_end_tensor_inputs=["latents"], output_type="np").images
        return np.clip(np.round(np.asarray(images[0]) * 255.0), 0, 255).astype(np.uint8)

    def _roller(self, params: dict[str, Any]) -> LatentRoller:
        patches = params["width"] // self.factor  # transformer patches across the latent width
        return LatentRoller(max(1, round(patches * ROLL_FRACTION)) * self._patch, params["steps"])

    def _call_options(self, params: dict[str, Any]) -> dict[str, Any]:
        import torch

        from .ldm3d import make_scheduler

        options = {"prompt": params["prompt"], "negative_prompt": params["negative_prompt"],
                   "num_inference_steps": params["steps"], "width": params["width"], "height": params["height"],
                   "guidance_scale": self.architecture.guidance(params["guidance"]),
                   "generator": torch.Generator("cpu").manual_seed(params["seed"])}
        if not self.architecture.own_scheduler:
            self.pipe.scheduler = make_scheduler(params["scheduler"], self.scheduler_config, params["spacing"])
            if params["scheduler"] == "tcd":
                options["eta"] = params["eta"]
        return options

    def _info(self, params: dict[str, Any], weights: dict[str, float], depth: dict[str, Any]) -> dict[str, Any]:
        loras = self.loras.records(weights)
        return {
            "pipeline": self.pipeline, "device": str(self.device),
            "dtype": str(self.pipe.dtype).removeprefix("torch."),
            "scheduler": type(self.pipe.scheduler).__name__, "seamless": params["seamless"],
            "seam": ("latent roll + circular VAE" if self._transformer else "circular padding")
            if params["seamless"] else "none",
            "guidance_scale": self.architecture.guidance(params["guidance"]),
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
