"""Scale-and-shift alignment in disparity and the depth-consistency metrics built on it (numpy only).

Relative depth models (DPT, Depth Anything) predict disparity up to an unknown scale and shift, so two depth
maps are compared only after the least-squares fit ``s·pred + t ≈ target`` in disparity (MiDaS' protocol).
The metrics are then taken on depth = 1 / disparity: AbsRel = mean(|D̂ − D| / D) (0 = identical) and
δ1 = share of pixels with max(D̂/D, D/D̂) < 1.25 (1 = identical).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _valid(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if pred.shape != target.shape:
        raise ValueError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    valid = np.isfinite(pred) & np.isfinite(target)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != pred.shape:
            raise ValueError(f"mask {mask.shape} does not match the depth maps {pred.shape}")
        valid &= mask
    return valid


def fit_scale_shift(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
                    weights: np.ndarray | None = None) -> tuple[float, float]:
    """(s, t) minimising Σ w·(s·pred + t − target)² over the valid pixels (finite, and in ``mask``)."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    valid = _valid(pred, target, mask)
    w = np.ones_like(pred) if weights is None else np.broadcast_to(np.asarray(weights, dtype=np.float64), pred.shape)
    valid &= np.isfinite(w) & (w > 0)
    p, y, w = pred[valid], target[valid], w[valid]
    if p.size < 2:
        raise ValueError(f"need at least 2 valid pixels to fit a scale and a shift, got {p.size}")
    total = w.sum()
    p_mean, y_mean = (w * p).sum() / total, (w * y).sum() / total
    dp = p - p_mean
    spread = (w * dp * dp).sum()
    if not spread > 1e-12 * max(1.0, (w * p * p).sum()):
        raise ValueError("the prediction is constant where it is compared: its scale is undetermined")
    scale = (w * dp * (y - y_mean)).sum() / spread
    return float(scale), float(y_mean - scale * p_mean)


def align(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``pred`` mapped onto ``target`` by the least-squares scale and shift (see fit_scale_shift)."""
    scale, shift = fit_scale_shift(pred, target, mask)
    return scale * np.asarray(pred, dtype=np.float64) + shift


@dataclass(frozen=True)
class Consistency:
    """How well a predicted disparity agrees with a reference after alignment."""

    abs_rel: float  # mean |D̂ − D| / D over the compared pixels; 0 = identical
    delta1: float  # share of compared pixels within a factor 1.25; 1 = identical
    scale: float
    shift: float
    pixels: int  # how many were compared

    def as_dict(self) -> dict[str, float | int]:
        return {"abs_rel": self.abs_rel, "delta1": self.delta1, "scale": self.scale, "shift": self.shift,
                "pixels": self.pixels}


def consistency(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None,
                min_disparity: float = 0.01) -> Consistency:
    """AbsRel and δ1 of ``pred`` against ``target`` (both disparity, e.g. DepthFusion's relative inverse depth
    in [0, 1]) after aligning ``pred`` in disparity.

    Pixels whose target disparity is at most ``min_disparity`` (farther than 1/min_disparity times the
    nearest, or the far plane itself) are not compared; aligned predictions are floored there, so a
    prediction pushed beyond infinity counts as very far rather than as a negative depth.
    """
    if not (np.isfinite(min_disparity) and min_disparity > 0):
        raise ValueError(f"min_disparity must be positive, got {min_disparity}")
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    compared = _valid(pred, target, mask) & (target > min_disparity)
    scale, shift = fit_scale_shift(pred, target, compared)
    aligned = np.maximum(scale * pred[compared] + shift, min_disparity)
    depth_pred, depth_true = 1.0 / aligned, 1.0 / target[compared]
    ratio = np.maximum(depth_pred / depth_true, depth_true / depth_pred)
    return Consistency(abs_rel=float(np.mean(np.abs(depth_pred - depth_true) / depth_true)),
                       delta1=float(np.mean(ratio < 1.25)), scale=scale, shift=shift, pixels=int(compared.sum()))
