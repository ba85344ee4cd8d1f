"""The depth checkpoints DepthFusion knows by name, with their licences.

Any folder or hub id holding a DPT, Depth Anything or ZoeDepth model in the transformers layout loads; whether it
predicts relative or metric depth is read from its config, never from its name. The table only adds what a
config does not say: the licence, to be shown when a checkpoint is chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MODEL = "depth-anything/Depth-Anything-V2-Small-hf"
NON_COMMERCIAL = "CC-BY-NC-4.0"


@dataclass(frozen=True)
class Checkpoint:
    licence: str
    note: str


_DA = "depth-anything/Depth-Anything-V2-"
_UNSTATED = "not confirmed here; read the model card"
KNOWN: dict[str, Checkpoint] = {
    "Intel/dpt-large": Checkpoint("Apache-2.0", "DPT-Large, 384x384, relative inverse depth (LDM3D's training depth)"),
    _DA + "Small-hf": Checkpoint("Apache-2.0", "Depth Anything V2 Small, 518 px, relative inverse depth"),
    _DA + "Base-hf": Checkpoint(NON_COMMERCIAL, "Depth Anything V2 Base, relative inverse depth"),
    _DA + "Large-hf": Checkpoint(NON_COMMERCIAL, "Depth Anything V2 Large, relative inverse depth"),
    _DA + "Metric-Indoor-Small-hf": Checkpoint(_UNSTATED, "metric, indoor (Hypersim), up to 20 m"),
    _DA + "Metric-Indoor-Base-hf": Checkpoint(NON_COMMERCIAL, "metric, indoor (Hypersim), up to 20 m"),
    _DA + "Metric-Indoor-Large-hf": Checkpoint(NON_COMMERCIAL, "metric, indoor (Hypersim), up to 20 m"),
    _DA + "Metric-Outdoor-Small-hf": Checkpoint(_UNSTATED, "metric, outdoor (Virtual KITTI 2), up to 80 m"),
    _DA + "Metric-Outdoor-Base-hf": Checkpoint(NON_COMMERCIAL, "metric, outdoor (Virtual KITTI 2), up to 80 m"),
    _DA + "Metric-Outdoor-Large-hf": Checkpoint(NON_COMMERCIAL, "metric, outdoor (Virtual KITTI 2), up to 80 m"),
    "Intel/zoedepth-nyu": Checkpoint("MIT", "ZoeDepth, metric metres, indoor (NYU Depth v2)"),
    "Intel/zoedepth-kitti": Checkpoint("MIT", "ZoeDepth, metric metres, outdoor (KITTI)"),
    "Intel/zoedepth-nyu-kitti": Checkpoint("MIT", "ZoeDepth, metric metres, indoor and outdoor"),
}


def licence_notice(model: str) -> str | None:
    """A line to show when ``model`` is chosen: its licence, and a warning when it forbids commercial use."""
    checkpoint = KNOWN.get(model)
    if checkpoint is None:
        return None
    if checkpoint.licence == NON_COMMERCIAL:
        return (f"{model} is licensed {NON_COMMERCIAL}: non-commercial use only "
                f"({DEFAULT_MODEL}, the default, is Apache-2.0)")
    return f"{model}: {checkpoint.note}; licence {checkpoint.licence}"
