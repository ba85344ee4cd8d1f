"""Depth of a generated image against a reference estimator's depth of the same image (numpy only).

LDM3D's depth is relative inverse depth (disparity up to an unknown scale and shift), a reference like
ZoeDepth-N (``Intel/zoedepth-nyu``) gives metres. The masking and alignment are those of Marigold's evaluation
(Ke et al. 2024; prs-eth/Marigold ``eval.py``, ``src/util/alignment.py``, ``src/util/metric.py``):

- compared: the reference pixels strictly inside ``depth_range`` (NYU's evaluation range, 1e-3 … 10 m, by
  default: a reference clipped at either end is left out);
- the least-squares fit (generator.estimators.alignment.fit_scale_shift) uses the compared pixels whose
  prediction is positive: a 0 in relative inverse depth means "infinitely far" and carries no scale;
- ``disparity`` (the default, MiDaS' protocol, matching what LDM3D predicts): s·d + t ≈ 1 / D_ref; every
  compared pixel's depth is 1 / (s·d + t), an aligned disparity ≤ 0 counting as the far end (Marigold floors it
  at 1e-3, which the clip below turns into the same far end);
- ``depth``: s·(1/d) + t ≈ D_ref; a pixel with d ≤ 0 lies at infinity, so it is scored at the far end.

Predicted depths are then clipped to ``depth_range`` and compared over all compared pixels:
AbsRel = mean |D̂ − D| / D, RMSE = √mean (D̂ − D)² in metres, δ1 = share with max(D̂/D, D/D̂) < 1.25.

MARE (panoramas, as ldm3d-pano's card reports it; the card does not define it, so this is ours): the mean
absolute relative error of disparity, mean |q̂ − q| / q, after aligning the prediction in disparity to the
reference's inverse distance q. It is invariant to the reference's scale, which the 360° estimator path leaves
free, and it weights every pixel of the equirectangular image alike.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..estimators.alignment import fit_scale_shift

SPACES = ("disparity", "depth")
NYU_RANGE = (1e-3, 10.0)


@dataclass(frozen=True)
class DepthErrors:
    abs_rel: float
    rmse: float  # metres (the reference's unit)
    delta1: float
    scale: float
    shift: float
    pixels: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _checked(pred: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, reference = np.asarray(pred, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if pred.shape != reference.shape:
        raise ValueError(f"predicted depth {pred.shape} and reference depth {reference.shape} differ in size")
    return pred, reference


def depth_errors(pred_disparity: np.ndarray, reference_depth: np.ndarray, space: str = "disparity",
                 depth_range: tuple[float, float] = NYU_RANGE) -> DepthErrors:
    """AbsRel, RMSE and δ1 of a relative inverse depth against a metric reference, after alignment."""
    if space not in SPACES:
        raise ValueError(f"alignment space must be one of {', '.join(SPACES)}, got {space!r}")
    low, high = depth_range
    if not 0 < low < high:
        raise ValueError(f"depth range must satisfy 0 < min < max, got {depth_range}")
    pred, reference = _checked(pred_disparity, reference_depth)
    compared = np.isfinite(pred) & np.isfinite(reference) & (reference > low) & (reference < high)
    fitted = compared & (pred > 0)
    if space == "disparity":
        scale, shift = fit_scale_shift(pred, 1.0 / np.where(fitted, reference, 1.0), fitted)
        aligned = scale * pred + shift
        depth = np.where(aligned > 0, 1.0 / np.maximum(aligned, 1e-12), high)
    else:
        raw = 1.0 / np.where(fitted, pred, 1.0)
        scale, shift = fit_scale_shift(raw, reference, fitted)
        depth = np.where(pred > 0, scale * raw + shift, high)
    depth, truth = np.clip(depth[compared], low, high), reference[compared]
    ratio = np.maximum(depth / truth, truth / depth)
    return DepthErrors(abs_rel=float(np.mean(np.abs(depth - truth) / truth)),
                       rmse=float(np.sqrt(np.mean((depth - truth) ** 2))), delta1=float(np.mean(ratio < 1.25)),
                       scale=scale, shift=shift, pixels=int(compared.sum()))


def mare(pred_disparity: np.ndarray, reference_disparity: np.ndarray, min_disparity: float = 1e-6) -> float:
    """Mean |q̂ − q| / q over pixels with reference disparity above ``min_disparity`` (relative to its maximum),
    with q̂ the prediction aligned to q in disparity."""
    pred, reference = _checked(pred_disparity, reference_disparity)
    finite = np.isfinite(pred) & np.isfinite(reference)
    if not finite.any() or not reference[finite].max() > 0:
        raise ValueError("the reference disparity has no positive values")
    compared = finite & (reference > min_disparity * reference[finite].max())
    scale, shift = fit_scale_shift(pred, reference, compared)
    aligned = scale * pred[compared] + shift
    return float(np.mean(np.abs(aligned - reference[compared]) / reference[compared]))
