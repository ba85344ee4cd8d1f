"""Remixed frames: a region of a kept frame regenerated with a new prompt, the rest kept, into a new frame naming
its source.

Shared by ``python -m generator remix`` and the server's ``remix`` command. The region is a box on the sphere
(the ``remix_*`` parameters, td_bridge.region) or a mask image (white repaints, black keeps). The backend repaints
the region (LDM3D: latent blending, generator.backends.remix); then the new depth is aligned by scale and shift to
the kept depth on a ring just outside the region, and the source's pixels, RGB and depth, are put back wherever the
mask is 0, so everything outside the (feathered) mask is the source's exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from td_bridge.params import GENERATION_PARAMS, REMIX_PARAMS, ParamError, resolve_seed, validate_all
from td_bridge.region import RegionError, check_coverage, check_mask, sphere_region_mask

from .backends.base import RGBD, CancelledFn, ProgressFn
from .estimators.alignment import fit_scale_shift
from .frames import make_frame

REMIX_NAMES = frozenset(p.name for p in REMIX_PARAMS)
DEPTH_MAX = 65535.0
MIN_FIT = 0.5  # R² on the ring below which the new depth does not follow the kept depth there (no fit, a shift)


def remix_params(values: dict[str, Any], width: int, height: int) -> dict[str, Any]:
    """A remix's validated params: generation params (at the source's ``width`` x ``height``, a random seed drawn
    for -1) and the ``remix_*`` region; all problems in one ParamError."""
    given = {k: v for k, v in values.items() if k not in REMIX_NAMES}
    for name in ("width", "height"):
        if name in given:
            raise ParamError(f"remix keeps the source frame's size: {name} cannot be given")
    generation, region = validate_all(({**given, "width": width, "height": height}, GENERATION_PARAMS),
                                      ({k: v for k, v in values.items() if k in REMIX_NAMES}, REMIX_PARAMS))
    return {**resolve_seed(generation), **region}


def region_mask(params: dict[str, Any], width: int, height: int) -> np.ndarray:
    """The mask of the params' sphere region on a ``width`` x ``height`` frame, checked to repaint and keep
    something."""
    return check_coverage(sphere_region_mask(width, height, params["remix_yaw"], params["remix_pitch"],
                                             params["remix_width"], params["remix_height"],
                                             params["remix_feather"]))


def read_mask(path: str | Path, width: int, height: int) -> np.ndarray:
    """A mask image file (PNG or any image Pillow reads: grey 8 or 16 bit, or grey RGB/RGBA) as a checked mask for a
    ``width`` x ``height`` frame."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if image.mode == "P":
                image = image.convert("RGBA")
            elif image.mode == "LA":
                image = image.getchannel("L")
            elif image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
                return check_mask(np.asarray(image).astype(np.uint16), width, height)
            elif image.mode not in ("1", "L", "RGB", "RGBA"):
                raise RegionError(f"{path}: a mask is a grey or RGB(A) image, got mode {image.mode}")
            return check_mask(np.asarray(image), width, height)
    except (OSError, UnidentifiedImageError) as exc:
        raise RegionError(f"{path}: not a readable image ({exc})") from None


def ring(mask: np.ndarray, width: int) -> np.ndarray:
    """The kept pixels (mask 0) within ``width`` pixels of the repainted ones; rows clamp, columns wrap (360°)."""
    grown = mask > 0
    for _ in range(width):
        step = grown | np.roll(grown, 1, axis=1) | np.roll(grown, -1, axis=1)
        step[1:] |= grown[:-1]
        step[:-1] |= grown[1:]
        grown = step
    return grown & (mask == 0)


def align_depth(new: np.ndarray, source: np.ndarray, kept_ring: np.ndarray,
                inner_ring: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """``new`` depth (floats in [0, 1]) mapped by the scale and shift that best fit it to ``source`` on the kept
    ring (where the new frame decoded the kept latents). Where that fit explains too little (R² < MIN_FIT), or is
    undetermined or flips the depth, only a shift: the median of the kept ring minus that of ``inner_ring`` (the
    repainted pixels along the edge), so the levels meet at the border."""
    record: dict[str, Any] = {"ring_pixels": int(kept_ring.sum())}
    try:
        scale, shift = fit_scale_shift(new, source, kept_ring)
        target = source[kept_ring]
        spread = float(((target - target.mean()) ** 2).sum())
        fit = 1.0 - float(((scale * new[kept_ring] + shift - target) ** 2).sum()) / spread if spread > 0 else 0.0
    except ValueError:
        scale, fit = -1.0, 0.0
    fitted = scale > 0 and fit >= MIN_FIT
    if not fitted:
        scale, shift = 1.0, float(np.median(source[kept_ring]) - np.median(new[inner_ring]))
    record.update(method="fit" if fitted else "levels", fit_r2=round(fit, 6), scale=round(scale, 6),
                  shift=round(shift, 6))
    return np.clip(scale * new + shift, 0.0, 1.0), record


def neighbour_steps(depth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(across, elsewhere): the median absolute depth step between neighbouring pixels across the region's edge
    (one side mask < 0.5, the other ≥ 0.5; columns wrap) and between all other neighbours, in depth units [0, 1].
    Continuous geometry jumps no more where new meets kept than it steps anywhere else."""
    inside, values = mask >= 0.5, depth.astype(np.float64) / DEPTH_MAX
    across, elsewhere = [], []
    for axis in (0, 1):
        jumps = np.abs(values - np.roll(values, -1, axis=axis))
        crossing = inside != np.roll(inside, -1, axis=axis)
        valid = np.ones_like(crossing)
        if axis == 0:
            valid[-1] = False  # no wrap from the bottom row to the top
        across.append(jumps[crossing & valid])
        elsewhere.append(jumps[~crossing & valid])
    return _median(across), _median(elsewhere)


def _median(parts: list[np.ndarray]) -> float:
    values = np.concatenate(parts)
    return float(np.median(values)) if values.size else 0.0


def border_jump(depth: np.ndarray, mask: np.ndarray) -> float:
    """The median depth step across the region's edge (:func:`neighbour_steps`)."""
    return neighbour_steps(depth, mask)[0]


def composite(source: RGBD, new: RGBD, mask: np.ndarray) -> tuple[RGBD, dict[str, Any]]:
    """The remixed frame: ``new`` (its depth aligned to the kept depth) where the mask is 1, the source where it is
    0, blended between; (frame, alignment and continuity record)."""
    width = mask.shape[1]
    src_depth, new_depth = source.depth / DEPTH_MAX, new.depth / DEPTH_MAX
    band = max(2, width // 64)
    aligned, record = align_depth(new_depth, src_depth, ring(mask, band), ring((mask == 0).astype(np.float32), band))
    weight = mask.astype(np.float64)
    rgb = weight[..., None] * new.rgb + (1.0 - weight[..., None]) * source.rgb
    depth = (weight * aligned + (1.0 - weight) * src_depth) * DEPTH_MAX
    result = RGBD(np.clip(np.round(rgb), 0, 255).astype(np.uint8), np.clip(np.round(depth), 0, 65535).astype(np.uint16),
                  near=source.near, far=source.far, info=dict(new.info))
    across, elsewhere = neighbour_steps(result.depth, mask)
    record.update(repainted_share=round(float((mask > 0).mean()), 6), border_jump=round(across, 6),
                  neighbour_step=round(elsewhere, 6))
    return result, record


class _SourceRemix:
    """One source frame and mask as a backend for :func:`generator.frames.make_frame`: ``generate`` remixes it."""

    def __init__(self, backend: Any, source: RGBD, mask: np.ndarray) -> None:
        self.backend, self.source, self.mask = backend, source, mask
        self.name, self.model = backend.name, backend.model
        self.device = getattr(backend, "device", None)  # make_frame records the peak memory on it

    def generate(self, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn) -> RGBD:
        new = self.backend.remix(params, self.source, self.mask, progress, cancelled)
        result, record = composite(self.source, new, self.mask)
        result.info["remix"] = {"method": new.info.get("remix", ""), "depth_alignment": record}
        return result


def check_remixable(backend: Any) -> None:
    """ParamError unless ``backend`` can remix."""
    if not callable(getattr(backend, "remix", None)):
        raise ParamError(f"the {backend.name} backend cannot remix (serve an LDM3D model)")


def remix_frame(backend: Any, meta: dict[str, Any], rgb: np.ndarray, depth: np.ndarray, mask: np.ndarray,
                params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn, job_id: str | None = None,
                mask_name: str | None = None) -> tuple[dict[str, Any], RGBD]:
    """(header, result) of ``rgb``/``depth`` (a frame with metadata ``meta``) remixed where ``mask`` > 0 with
    ``params`` (:func:`remix_params`): a new frame id, ``source_frame_id`` naming the source; ``mask_name``
    records a mask image's name instead of the region."""
    check_remixable(backend)
    if mask.shape != depth.shape:
        raise RegionError(f"the mask is {mask.shape[1]}x{mask.shape[0]}; the frame is {depth.shape[1]}x"
                          f"{depth.shape[0]}")
    source = RGBD(rgb, depth, near=(meta.get("depth") or {}).get("near"), far=(meta.get("depth") or {}).get("far"))
    recorded = {k: v for k, v in params.items() if mask_name is None or k not in REMIX_NAMES}
    recorded.update(source_frame_id=meta.get("frame_id"), **({"remix_mask": mask_name} if mask_name else {}))
    header, result = make_frame(_SourceRemix(backend, source, mask), recorded, progress, cancelled, job_id=job_id)
    header["source_frame_id"] = meta.get("frame_id")
    return header, result
