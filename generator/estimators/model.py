"""A depth model on transformers' AutoModelForDepthEstimation + AutoImageProcessor: image → depth at its size.

DPT and Depth Anything predict relative inverse depth (disparity up to a scale and shift); ZoeDepth and the
metric Depth Anything V2 checkpoints (``depth_estimation_type: metric``) predict metres. The model's own image
processor prepares the input, and the prediction is resized back as transformers' post-processing does
(bicubic; ZoeDepth's reflection padding cut off again), so a plain image gives what
``pipeline("depth-estimation")`` gives. ZoeDepth's post-processing is our own here: transformers' runs only
with torchvision installed, which DepthFusion does not need.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..backends.base import BackendUnavailable
from ..backends.ldm3d import pick_device
from ..backends.ldm3d_files import HUB_ID

log = logging.getLogger("depthfusion.estimators")

FAMILIES = ("dpt", "depth_anything", "zoedepth")
RELATIVE, METRIC = "relative", "metric"


def depth_kind(config: Any) -> str:
    """``metric`` (metres) or ``relative`` (inverse depth up to scale and shift), from a model config."""
    if config.model_type == "zoedepth" or getattr(config, "depth_estimation_type", RELATIVE) == METRIC:
        return METRIC
    return RELATIVE


def _check_family(model: str, family: str) -> None:
    if family not in FAMILIES:
        raise BackendUnavailable(f"{model} is a {family!r} model; supported are DPT, Depth Anything and ZoeDepth")


def resolve_checkpoint(model: str, *, revision: str | None = None, local_files_only: bool = False) -> Path:
    """A local folder in the transformers layout, downloading from the Hugging Face hub if needed."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise BackendUnavailable(f"{folder} holds no config.json: not a transformers depth model folder")
        return folder
    if not HUB_ID.match(model):
        raise BackendUnavailable(f"depth model {model!r} is neither an existing folder nor a hub id like "
                                 "depth-anything/Depth-Anything-V2-Small-hf")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(model, revision=revision, local_files_only=local_files_only,
                                        allow_patterns=["*.json", "*.safetensors"]))
        if not any(folder.glob("*.safetensors")):  # older repositories ship PyTorch .bin weights only
            folder = Path(snapshot_download(model, revision=revision, local_files_only=local_files_only,
                                            allow_patterns=["*.json", "*.bin"]))
        return folder
    except LocalEntryNotFoundError as exc:
        where = "is not in the local Hugging Face cache"
        where += "" if local_files_only else " and the hub cannot be reached"
        raise BackendUnavailable(
            f"the depth model {model} {where}. Download it once where there is internet "
            f"(`hf download {model}`), copy the cache folder over, or pass a local folder with --model"
        ) from exc
    except HfHubHTTPError as exc:
        raise BackendUnavailable(f"the hub refused {model} (revision {revision or 'main'}): {exc}") from exc


class DepthModel:
    """One loaded depth model; :meth:`predict` maps an RGB image to depth at the image's size."""

    def __init__(self, model: str, network: Any, processor: Any, device: torch.device) -> None:
        family = network.config.model_type
        _check_family(model, family)
        self.model, self.network, self.processor, self.device = model, network, processor, device
        self.family, self.kind = family, depth_kind(network.config)

    @property
    def metric(self) -> bool:
        return self.kind == METRIC

    @classmethod
    def load(cls, model: str, *, device: str = "auto", revision: str | None = None,
             local_files_only: bool = False) -> DepthModel:
        """Load from a hub id or a local folder; every failure is a BackendUnavailable."""
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForDepthEstimation

        torch_device = pick_device(device)
        folder = resolve_checkpoint(model, revision=revision, local_files_only=local_files_only)
        try:
            family = AutoConfig.from_pretrained(folder).model_type
            _check_family(model, family)
            network = AutoModelForDepthEstimation.from_pretrained(folder)
            processor = AutoImageProcessor.from_pretrained(folder)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise BackendUnavailable(f"cannot load the depth model {model} from {folder}: "
                                     f"{type(exc).__name__}: {exc}") from exc
        network.to(torch_device).eval().requires_grad_(False)
        loaded = cls(model, network, processor, torch_device)
        log.info("depth model %s: %s, %s depth, %s", model, family, loaded.kind, torch_device)
        return loaded

    def predict(self, rgb: np.ndarray, flip: bool = False) -> np.ndarray:
        """(H, W) float32 for an (H, W, 3) uint8 image: disparity for relative models, metres for metric ones.
        ``flip`` averages with the prediction for the mirrored image (ZoeDepth's documented test-time flip)."""
        from PIL import Image

        height, width = rgb.shape[:2]
        inputs = self.processor(images=Image.fromarray(rgb), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            predicted = self.network(**inputs).predicted_depth
            if flip:
                mirrored = {**inputs, "pixel_values": torch.flip(inputs["pixel_values"], dims=[3])}
                predicted = (predicted + torch.flip(self.network(**mirrored).predicted_depth, dims=[-1])) / 2
            return self._resize(predicted, height, width).float().cpu().numpy()

    def _resize(self, predicted: torch.Tensor, height: int, width: int) -> torch.Tensor:
        x = predicted[:1, None]  # (1, 1, h, w)
        if self.family == "zoedepth" and getattr(self.processor, "do_pad", False):
            # ZoeDepth's processor reflect-pads int(sqrt(side / 2) * 3) pixels on each side before resizing
            pad_h, pad_w = int(np.sqrt(height / 2) * 3), int(np.sqrt(width / 2) * 3)
            x = F.interpolate(x, size=(height + 2 * pad_h, width + 2 * pad_w), mode="bicubic", align_corners=False)
            return x[0, 0, pad_h:pad_h + height, pad_w:pad_w + width]
        return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False)[0, 0]
