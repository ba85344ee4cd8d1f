"""An RGB image → an RGBD frame in DepthFusion's encoding, with the header every frame carries.

Depth is written like generated depth: 16-bit relative inverse depth, 65535 = nearest. For a metric model the
frame records ``near``/``far`` in metres (the nearest and farthest estimated distances, the far one capped at
MAX_DISTANCE), so the metric mapping and ``export`` place surfaces at their estimated distance; for a relative
model the nearest and farthest points become 1 and 0 and no range is recorded. A panorama's depth is the
distance along each pixel's ray; a perspective image's is the model's own (along the optical axis).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from td_bridge.depth import inverse_depth_from_distance, to_uint16
from td_bridge.protocol import PROTOCOL_VERSION, check_arrays, frame_header

from .. import __version__
from ..backends.base import RGBD, Cancelled, CancelledFn, ProgressFn
from ..frames import new_frame_id
from .checkpoints import KNOWN
from .pano import is_equirectangular, pano_inverse_distance

BACKEND = "depth-estimation"
MAX_DISTANCE = 1000.0  # metres: a metric model's farthest recorded distance (its sky can come out unbounded)


def use_pano(choice: str, width: int, height: int) -> bool:
    """Whether the ``pano`` parameter (auto, yes, no) takes the 360° path for a width × height image."""
    if choice not in ("auto", "yes", "no"):
        raise ValueError(f"pano must be auto, yes or no, got {choice!r}")
    return choice == "yes" or (choice == "auto" and is_equirectangular(width, height))


def use_flip(choice: str, family: str) -> bool:
    """Whether the ``flip`` parameter (auto, yes, no) averages with the mirrored image for a model family."""
    if choice not in ("auto", "yes", "no"):
        raise ValueError(f"flip must be auto, yes or no, got {choice!r}")
    return choice == "yes" or (choice == "auto" and family == "zoedepth")


def _disparity(prediction: np.ndarray, metric: bool) -> np.ndarray:
    """Relative models already predict disparity; metric depth in metres becomes 1/metres."""
    prediction = np.asarray(prediction, dtype=np.float64)
    return 1.0 / np.clip(prediction, 1.0 / 1e6, MAX_DISTANCE) if metric else prediction


def encode(inverse: np.ndarray, metric: bool) -> tuple[np.ndarray, float | None, float | None]:
    """(uint16 depth, near, far) for inverse depth (1/metres when ``metric``, else any scale and shift)."""
    inverse = np.nan_to_num(np.asarray(inverse, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if metric:
        distance = 1.0 / np.clip(inverse, 1.0 / MAX_DISTANCE, None)
        near, far = float(distance.min()), float(distance.max())
        far = max(far, near * 1.001)  # a flat estimate still gets a valid range
        return to_uint16(inverse_depth_from_distance(distance, near, far)), near, far
    low, high = float(inverse.min()), float(inverse.max())
    if high - low <= 1e-12 * max(abs(high), 1e-30):
        return np.zeros(inverse.shape, dtype=np.uint16), None, None
    return to_uint16((inverse - low) / (high - low)), None, None


def estimate_rgbd(model: Any, rgb: np.ndarray, params: dict[str, Any], progress: ProgressFn | None = None,
                  cancelled: CancelledFn | None = None) -> RGBD:
    """Depth for an (H, W, 3) uint8 image with validated estimation parameters (td_bridge.params).

    ``model`` is a DepthModel or anything with ``predict(rgb, flip)``, ``metric``, ``family`` and ``model``.
    """
    height, width = rgb.shape[:2]
    pano = use_pano(params["pano"], width, height)
    flip = use_flip(params["flip"], model.family)
    info: dict[str, Any] = {"projection": "equirectangular" if pano else "perspective", "kind": model.kind,
                            "family": model.family, "flip": flip}
    if model.model in KNOWN:
        info["licence"] = KNOWN[model.model].licence
    if pano:
        inverse, summary = pano_inverse_distance(
            rgb, lambda image, _view: _disparity(model.predict(image, flip), model.metric), layout=params["views"],
            metric=model.metric, progress=progress, cancelled=cancelled)
        info["pano"] = summary
    else:
        if cancelled is not None and cancelled():
            raise Cancelled()
        inverse = _disparity(model.predict(rgb, flip), model.metric)
        if progress is not None:
            progress(1, 1)
    depth, near, far = encode(inverse, model.metric)
    return RGBD(np.ascontiguousarray(rgb, dtype=np.uint8), depth, near=near, far=far, info=info)


def estimated_frame(model: Any, rgb: np.ndarray, params: dict[str, Any], source: dict[str, Any] | None = None,
                    progress: ProgressFn | None = None, cancelled: CancelledFn | None = None,
                    job_id: str | None = None) -> tuple[dict[str, Any], RGBD]:
    """(frame header with a new frame id, result): what the library, the publisher and metadata.json take."""
    started = time.perf_counter()
    result = estimate_rgbd(model, rgb, params, progress, cancelled)
    check_arrays(result.rgb, result.depth)
    meta = {
        "model": model.model,
        "backend": BACKEND,
        "prompt": "",
        "negative_prompt": "",
        "seed": None,
        "params": dict(params),
        "source": dict(source or {}),
        "job_id": job_id,
        "created_at": time.time(),
        "timings": {"generate_s": round(time.perf_counter() - started, 6)},
        "generator": {"depthfusion": __version__, "protocol": PROTOCOL_VERSION},
        "backend_info": result.info,
    }
    header = frame_header(result.rgb, result.depth, frame_id=new_frame_id(), seq=0, meta=meta,
                          near=result.near, far=result.far)
    return header, result
