"""CLIP similarity of images and their captions (transformers' CLIPModel and CLIPProcessor).

Score = max(100 · cos(E_image, E_text), 0) per image, averaged over the set, with torchmetrics' default model
``openai/clip-vit-large-patch14`` (ViT-L/14 at 224 px). Two conventions differ from torchmetrics' CLIPScore:
it clamps the *mean* at 0 rather than each image (the same number unless some image scores below 0), and a
caption over CLIP's 77 tokens is cut here by the tokenizer, which keeps the end token the text embedding is
read at, while torchmetrics cuts the token ids after it and so loses it (a long caption can score far apart).
torchmetrics 1.9's CLIPScore does not run under transformers 5.x, so it is not used. The LDM3D paper reports
"CLIP similarity" 26.61 without naming the CLIP model in what we read; another model gives other numbers, so
the report records the one used.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from ..backends.base import BackendUnavailable

log = logging.getLogger("depthfusion.evaluate")

DEFAULT_CLIP = "openai/clip-vit-large-patch14"


class ClipScorer:
    """A loaded CLIP model; :meth:`scores` gives each (image, caption) pair its max(100·cos, 0)."""

    def __init__(self, model: str, network: Any, processor: Any, device: Any, batch_size: int = 16) -> None:
        self.model, self.network, self.processor, self.device = model, network, processor, device
        self.batch_size = batch_size

    @classmethod
    def load(cls, model: str = DEFAULT_CLIP, *, device: str = "auto", local_files_only: bool = False) -> ClipScorer:
        from transformers import CLIPModel, CLIPProcessor

        from ..backends.ldm3d import pick_device
        from ..estimators.model import resolve_checkpoint

        torch_device = pick_device(device)
        folder = resolve_checkpoint(model, local_files_only=local_files_only)
        try:
            network = CLIPModel.from_pretrained(folder)
            processor = CLIPProcessor.from_pretrained(folder)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise BackendUnavailable(f"cannot load the CLIP model {model} from {folder}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        return cls(model, network.to(torch_device).eval().requires_grad_(False), processor, torch_device)

    def scores(self, images: Sequence[np.ndarray], captions: Sequence[str]) -> np.ndarray:
        """(N,) scores for N uint8 (H, W, 3) images and their N captions."""
        import torch
        from PIL import Image

        if len(images) != len(captions):
            raise ValueError(f"{len(images)} images but {len(captions)} captions")
        limit = min(getattr(self.processor.tokenizer, "model_max_length", 77), 77)
        result = []
        for start in range(0, len(images), self.batch_size):
            batch = slice(start, start + self.batch_size)
            inputs = self.processor(text=list(captions[batch]), images=[Image.fromarray(x) for x in images[batch]],
                                    return_tensors="pt", padding=True, truncation=True, max_length=limit)
            with torch.inference_mode():
                out = self.network(**inputs.to(self.device))
            image, text = out.image_embeds.double(), out.text_embeds.double()
            cos = (image * text).sum(-1) / (image.norm(dim=-1) * text.norm(dim=-1))
            result.append(torch.clamp(100.0 * cos, min=0.0).cpu().numpy())
        return np.concatenate(result) if result else np.zeros(0)
