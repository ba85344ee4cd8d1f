"""Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) ‖ p(y)), in splits.

The images are cut, in order, into ``splits`` parts: part k holds images k·N // splits up to (k + 1)·N // splits,
the boundaries of the original code and of torch-fidelity (when N does not divide, the longer parts are spread
out, not put first as ``np.array_split`` does). In each, p(y) is the mean of p(y|x) over that part. The score is
the mean over the splits, with their standard deviation. Standard practice (the original TensorFlow code,
torch-fidelity, torchmetrics) takes p(y|x) as the softmax of the 1008-way Inception logits *without* the fc bias,
and 10 splits; our extractor returns those.
A uniform classifier scores 1; a confident one spreading images evenly over C classes scores C.
"""

from __future__ import annotations

import numpy as np

DEFAULT_SPLITS = 10


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return top + np.log(np.exp(x - top).sum(axis=axis, keepdims=True))


def inception_score(logits: np.ndarray, splits: int = DEFAULT_SPLITS) -> tuple[float, float]:
    """(mean, std) of the Inception Score of (N, C) classifier logits."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must be (N, C) with C ≥ 2, got shape {logits.shape}")
    if not np.isfinite(logits).all():
        raise ValueError("logits hold NaN or infinite values")
    if not 1 <= splits <= logits.shape[0]:
        raise ValueError(f"splits must be between 1 and the number of images ({logits.shape[0]}), got {splits}")
    scores = []
    log_p = logits - _logsumexp(logits, axis=1)  # log p(y|x), finite even where p underflows to 0
    count = len(log_p)
    for k in range(splits):
        part = log_p[k * count // splits:(k + 1) * count // splits]
        log_marginal = _logsumexp(part, axis=0) - np.log(len(part))  # log p(y) within the split
        kl = (np.exp(part) * (part - log_marginal)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))
