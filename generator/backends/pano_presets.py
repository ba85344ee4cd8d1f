"""``--model preset:NAME``: the published 360° text-to-image checkpoints, with what their pages document.

Each preset names a base pipeline (a hub id in the diffusers layout), optionally a 360° LoRA or a replacement
U-Net, and the generation parameters its page documents; a flag given beside it wins. Only what was read is
recorded: where a page was not readable here the field is left to the schema's default and ``unverified`` says
so. Licences are in licences.py, keyed by the same ids. None of these checkpoints ran here (no hub access): the
backend was verified on tiny random-weight pipelines of the same classes only (docs/models.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .base import BackendUnavailable

PREFIX = "preset:"


@dataclass(frozen=True)
class PanoPreset:
    name: str
    base: str  # hub id of a diffusers text-to-image pipeline
    pipeline: str  # its model_index.json _class_name
    lora: str | None = None  # owner/repo[/FILE.safetensors] of a 360° LoRA
    unet: str | None = None  # hub id whose unet/ replaces the base's (a fine-tune shipped as a U-Net)
    params: dict[str, Any] = field(default_factory=dict)  # documented generation parameters (td_bridge.params)
    source: str = ""
    unverified: str = ""

    def components(self) -> tuple[str, ...]:
        """Every model the preset loads, for licences."""
        return tuple(part for part in (self.base, self.unet, self.lora) if part)


PRESETS: dict[str, PanoPreset] = {preset.name: preset for preset in (
    PanoPreset("qwen-360", "Qwen/Qwen-Image", "QwenImagePipeline",
               lora="ProGamerGov/qwen-360-diffusion/qwen-360-diffusion-int8-bf16-v1.safetensors",
               params={"width": 2048, "height": 1024, "steps": 50, "guidance": 4.0},
               source="https://huggingface.co/ProGamerGov/qwen-360-diffusion (card: a rank-128 LoRA on Qwen-Image, "
               "trained at 2048x1024; files qwen-360-diffusion-int8-bf16-v1 and int4 variants); steps 50 and "
               "true_cfg_scale 4 from https://github.com/QwenLM/Qwen-Image (README example) and Comfy-Org's "
               "Qwen-Image 360 LoRA workflow template (50 steps, CFG 4, LoRA strength 1.0); trigger words "
               "'equirectangular', '360 panorama'",
               unverified="the card's own steps and guidance; which LoRA file suits a bf16 base (the card lists int8 "
               "and int4 variants: name another with --lora qwen-360=FILE)"),
    PanoPreset("sdxl-360", "stabilityai/stable-diffusion-xl-base-1.0", "StableDiffusionXLPipeline",
               unet="ProGamerGov/sdxl-360-diffusion", params={"width": 2048, "height": 1024},
               source="https://huggingface.co/ProGamerGov/sdxl-360-diffusion (card: a fine-tune of SD-XL 1.0-base, "
               "images resized to 2048x1024 for training, base_model stabilityai/stable-diffusion-xl-base-1.0; "
               "files: unet/ in the diffusers layout, no model_index.json); trigger 'equirectangular 360 view'",
               unverified="steps and guidance (the card's recommendations were not readable here)"),
    PanoPreset("z-image-360", "Tongyi-MAI/Z-Image-Turbo", "ZImagePipeline", lora="CedarC/Z-Image_360",
               params={"steps": 8, "guidance": 1.0},
               source="https://huggingface.co/CedarC/Z-Image_360 (card: a LoRA, base_model "
               "Tongyi-MAI/Z-Image-Turbo, trigger '360panorama'); steps and guidance as the Z-Image-Turbo card's "
               "example (8 transformer passes, guidance_scale 0, which is guidance 1 here: no unconditional pass)",
               unverified="the LoRA's file name and trained size"),
    PanoPreset("flux-360", "black-forest-labs/FLUX.1-dev", "FluxPipeline",
               params={"width": 1408, "height": 704, "guidance": 2.5},
               source="https://civitai.com/models/735980 (2:1 sizes 1024x512, 1408x704, 2048x1024; LoRA weight "
               "0.5-1.5; Flux guidance about 2.5)",
               unverified="the LoRA is on civitai, not the hub: download it and pass --lora FILE"),
)}


def is_preset(model: str) -> bool:
    return model.startswith(PREFIX)


def preset(model: str) -> PanoPreset:
    """The preset ``preset:NAME`` names; BackendUnavailable listing the presets otherwise."""
    name = model.removeprefix(PREFIX)
    if name not in PRESETS:
        raise BackendUnavailable(f"--model {model!r}: no such preset; choose {', '.join(PREFIX + n for n in PRESETS)}")
    return PRESETS[name]


def with_preset(model: str, given: dict[str, Any], loras: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(generation parameters, LoRA arguments) with ``model``'s preset under what was given: a given parameter
    wins, and a --lora named like the preset replaces its LoRA. Unchanged for a model that is no preset."""
    if not is_preset(model):
        return dict(given), list(loras)
    chosen = preset(model)
    own = any(spec.split("=", 1)[0] == chosen.name for spec in loras)
    extra = [f"{chosen.name}={chosen.lora}:1.0"] if chosen.lora and not own else []
    return {**chosen.params, **given}, [*extra, *loras]
