"""``--fast``: few-step presets from published Stable Diffusion 1.5 distillation LoRAs.

Each preset loads a LoRA and sets the sampler, steps, guidance (and spacing or eta) its model card documents; a
flag given beside ``--fast`` wins over the preset's value. The LoRAs were distilled on SD 1.5's RGB latents:
whether they keep LDM3D's depth is not known (docs/fast.md; ``train lcm-lora`` distils our own).

Sources (model cards, read December 2026):
- ``latent-consistency/lcm-lora-sdv1-5`` (openrail++): LCMScheduler, 4 steps, ``guidance_scale=0``.
- ``h1t/TCD-SD15-LoRA`` (MIT): TCDScheduler, 4 steps, ``guidance_scale=0``, ``eta=0.3``.
- ``ByteDance/Hyper-SD`` (licence in the repository's LICENSE.md; the card's metadata said openrail++ until
  August 2024): N-step LoRAs with DDIMScheduler ``timestep_spacing="trailing"``, N steps, ``guidance_scale=0``;
  the 1-step "unified" LoRA with TCDScheduler, ``eta=1.0``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from td_bridge.params import LORA_NONE, LORA_SLOTS

# what a live take (generator.serving.live) renders at full quality: serve's own flags, else the schema's defaults
TAKE_QUALITY = ("steps", "guidance", "scheduler", "spacing", "eta")


@dataclass(frozen=True)
class FastPreset:
    name: str
    lora: str  # owner/repo/FILE.safetensors
    params: dict[str, Any] = field(default_factory=dict)  # generation parameters (td_bridge.params)
    licence: str = ""
    card: str = ""

    def lora_spec(self) -> str:
        return f"{self.name}={self.lora}:1.0"


def _hyper(steps: int) -> FastPreset:
    file = f"Hyper-SD15-{steps}step{'s' if steps > 1 else ''}-lora.safetensors"
    params = ({"scheduler": "tcd", "eta": 1.0} if steps == 1 else {"scheduler": "ddim", "spacing": "trailing"})
    return FastPreset(f"hyper-{steps}" if steps != 4 else "hyper", f"ByteDance/Hyper-SD/{file}",
                      {**params, "steps": steps, "guidance": 0.0},
                      "see LICENSE.md in the repository (openrail++ in the card's metadata until August 2024)",
                      "https://huggingface.co/ByteDance/Hyper-SD")


PRESETS: dict[str, FastPreset] = {preset.name: preset for preset in (
    FastPreset("lcm", "latent-consistency/lcm-lora-sdv1-5/pytorch_lora_weights.safetensors",
               {"scheduler": "lcm", "steps": 4, "guidance": 0.0}, "openrail++",
               "https://huggingface.co/latent-consistency/lcm-lora-sdv1-5"),
    FastPreset("tcd", "h1t/TCD-SD15-LoRA/pytorch_lora_weights.safetensors",
               {"scheduler": "tcd", "steps": 4, "guidance": 0.0, "eta": 0.3}, "MIT",
               "https://huggingface.co/h1t/TCD-SD15-LoRA"),
    *(_hyper(steps) for steps in (4, 1, 2, 8)),
)}


def preset(name: str) -> FastPreset:
    if name not in PRESETS:
        raise ValueError(f"--fast {name!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def with_preset(name: str | None, given: Mapping[str, Any], loras: list[str]) -> tuple[dict[str, Any], list[str]]:
    """(generation parameters, LoRA arguments) with preset ``name`` under what was given: a given parameter wins,
    and a --lora named like the preset replaces its LoRA."""
    if not name:
        return dict(given), list(loras)
    chosen = preset(name)
    own = any(spec.split("=", 1)[0] == chosen.name for spec in loras)
    return {**chosen.params, **given}, (list(loras) if own else [chosen.lora_spec(), *loras])


def take_defaults(name: str | None, given: Mapping[str, Any], loaded: Mapping[str, float]) -> dict[str, Any]:
    """A live take's full-quality parameters: the TAKE_QUALITY flags given to serve (not the preset's), and under
    preset ``name`` the LoRA slots naming every loaded LoRA (name → scale) but the preset's own."""
    quality = {k: v for k, v in given.items() if k in TAKE_QUALITY}
    if not name:
        return quality
    others = [(lora, scale) for lora, scale in loaded.items() if lora != preset(name).name]
    if len(others) > LORA_SLOTS:
        raise ValueError(f"a take can name at most {LORA_SLOTS} LoRAs besides --fast's; {len(others)} are loaded")
    slots = {f"lora_{i}": lora for i, (lora, _) in enumerate(others, start=1)} or {"lora_1": LORA_NONE}
    return {**quality, **slots, **{f"lora_{i}_scale": scale for i, (_, scale) in enumerate(others, start=1)}}
