"""The evaluation metric math against independent references: FID, IS, depth errors, MARE, SSIM, PSNR."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from generator.evaluate.depth import depth_errors, mare
from generator.evaluate.fid import Statistics, fid, frechet_distance, frechet_distance_to, statistics
from generator.evaluate.inception_score import inception_score
from generator.evaluate.ssim import psnr, ssim

EPS = np.finfo(np.float64).eps


def numpy_reference_fid(a: np.ndarray, b: np.ndarray) -> float:
    """FID the plain way: tr √(Σ₁Σ₂) as Σ √λ over the eigenvalues of the (non-symmetric) product Σ₁Σ₂."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(cov_a @ cov_b)
    trace_sqrt = np.sqrt(np.abs(eig.real)).sum()  # the eigenvalues are real and ≥ 0 up to rounding
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt)


def fid_tolerance(a: np.ndarray, b: np.ndarray) -> float:
    """A rounding bound for both computations: a backward-stable eigensolver perturbs each of the D eigenvalues of
    Σ₁Σ₂ (or Σ₁^½Σ₂Σ₁^½) by at most ~D·ε·‖Σ₁‖‖Σ₂‖; √ turns a perturbation δ of an eigenvalue λ into at most
    √δ (the worst case, λ near 0), and the trace enters twice: |ΔFID| ≤ 2·D·√(D·ε·‖Σ₁‖‖Σ₂‖) for each method."""
    d = a.shape[1]
    norm = np.linalg.norm(np.cov(a, rowvar=False), 2) * np.linalg.norm(np.cov(b, rowvar=False), 2)
    return 2 * 2 * d * np.sqrt(d * EPS * norm)


# ------------------------------------------------------------------ FID


def test_fid_of_a_set_against_itself_is_zero_even_with_fewer_images_than_dimensions():
    rng = np.random.default_rng(0)
    for n, d in ((500, 32), (20, 64)):  # the second: a singular covariance (rank 19)
        x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
        scale = np.trace(np.cov(x, rowvar=False))
        assert fid(x, x) <= 1e-9 * scale


def test_fid_matches_a_plain_numpy_reference_on_random_features():
    rng = np.random.default_rng(1)
    for trial in range(5):
        d = 48
        a = rng.normal(size=(400, d)) @ rng.normal(size=(d, d)) * 0.5
        b = rng.normal(size=(300, d)) @ rng.normal(size=(d, d)) * 0.5 + rng.normal(size=d)
        ours, reference = fid(a, b), numpy_reference_fid(a, b)
        assert abs(ours - reference) <= fid_tolerance(a, b), (trial, ours, reference)
        assert ours > 1.0  # genuinely different sets: the comparison is not between two zeros


def test_the_small_set_shortcut_agrees_with_the_full_decomposition():
    rng = np.random.default_rng(8)
    d = 96
    samples = rng.normal(size=(500, d)) @ rng.normal(size=(d, d)) * 0.3
    reference = statistics(samples)
    for n in (2, 10, 60):  # fewer images than dimensions: the N × N path
        x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.5
        full = frechet_distance(statistics(x), reference)
        # the full path takes √ of D − N + 1 eigenvalues that are 0 up to rounding: the bound derived above
        assert abs(frechet_distance_to(x, reference) - full) <= fid_tolerance(x, samples)


def test_frechet_distance_of_diagonal_gaussians_has_its_closed_form():
    # commuting (diagonal) covariances: FID = ‖μ₁ − μ₂‖² + Σ (σ₁ − σ₂)²
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, -1.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 0.5, 0.5])
    distance = frechet_distance(Statistics(mean_a, np.diag(sd_a ** 2), 10), Statistics(mean_b, np.diag(sd_b ** 2), 10))
    assert distance == pytest.approx(10.0 + 4.0 + 2.25, rel=1e-12)


def test_statistics_round_trip_and_bad_features(tmp_path):
    x = np.random.default_rng(2).normal(size=(10, 4))
    stats = statistics(x)
    stats.save(tmp_path / "s.npz")
    back = Statistics.load(tmp_path / "s.npz")
    assert back.count == 10 and np.array_equal(back.cov, stats.cov) and np.array_equal(back.mean, stats.mean)
    with pytest.raises(ValueError, match="at least 2 images"):
        statistics(x[:1])
    with pytest.raises(ValueError, match="NaN"):
        statistics(np.full((3, 2), np.nan))
    with pytest.raises(ValueError, match="feature sizes differ"):
        fid(x, x[:, :3])


# ------------------------------------------------------------------ Inception Score


def test_inception_score_of_a_uniform_classifier_is_one():
    mean, std = inception_score(np.zeros((100, 1008)), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_a_confident_diverse_classifier_is_the_number_of_classes():
    classes = 20
    logits = np.full((200, classes), -40.0)
    logits[np.arange(200), np.arange(200) % classes] = 40.0  # every split holds every class equally often
    mean, std = inception_score(logits, splits=10)
    assert mean == pytest.approx(classes, rel=1e-12) and std < 1e-9


def test_inception_score_of_a_confident_classifier_that_always_says_the_same_class_is_one():
    logits = np.zeros((50, 10))
    logits[:, 3] = 80.0
    assert inception_score(logits, splits=5)[0] == pytest.approx(1.0, abs=1e-12)


def test_inception_score_matches_its_definition_on_random_logits():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(30, 7)) * 3
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = []
    for part in (p[:10], p[10:20], p[20:]):
        marginal = part.mean(0)
        expected.append(np.exp(np.mean([np.sum(row * np.log(row / marginal)) for row in part])))
    mean, std = inception_score(logits, splits=3)
    assert mean == pytest.approx(np.mean(expected), rel=1e-12) and std == pytest.approx(np.std(expected), rel=1e-9)


def test_inception_score_splits_at_the_original_boundaries_when_n_does_not_divide():
    """The original code and torch-fidelity cut N = 13 into 4 parts at k·13 // 4 = 0, 3, 6, 9, 13 (np.array_split
    would give 4, 3, 3, 3)."""
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(13, 6)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = []
    for start, stop in ((0, 3), (3, 6), (6, 9), (9, 13)):
        part = p[start:stop]
        marginal = part.mean(0)
        expected.append(np.exp(np.mean([np.sum(row * np.log(row / marginal)) for row in part])))
    mean, std = inception_score(logits, splits=4)
    assert mean == pytest.approx(np.mean(expected), rel=1e-12) and std == pytest.approx(np.std(expected), rel=1e-9)


def test_inception_score_bad_inputs():
    with pytest.raises(ValueError, match="splits"):
        inception_score(np.zeros((5, 3)), splits=10)
    with pytest.raises(ValueError, match="C ≥ 2"):
        inception_score(np.zeros((5,)))


# ------------------------------------------------------------------ depth


def reference_depth(seed: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 8.0, size=(24, 32))  # metres, inside NYU's range


def marigold_errors(pred: np.ndarray, truth: np.ndarray, space: str = "disparity", low: float = 1e-3,
                    high: float = 10.0) -> tuple[float, float, float, int]:
    """(AbsRel, RMSE, δ1, pixels) by Marigold's protocol, written out here from its description: reference pixels
    strictly inside (low, high); the least-squares fit (np.linalg.lstsq) over those where pred > 0; in disparity the
    aligned value floored at 1e-3 and inverted; in depth space s/pred + t, a pred ≤ 0 at infinity; then the depth
    clipped to the range."""
    valid = (truth > low) & (truth < high)
    fit = valid & (pred > 0)
    x, y = (pred[fit], 1 / truth[fit]) if space == "disparity" else (1 / pred[fit], truth[fit])
    (s, t), *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1), y, rcond=None)
    if space == "disparity":
        depth = 1 / np.maximum(s * pred + t, 1e-3)
    else:
        depth = np.full(pred.shape, np.inf)
        depth[pred > 0] = s / pred[pred > 0] + t
    d, g = np.clip(depth, low, high)[valid], truth[valid]
    return (float(np.mean(np.abs(d - g) / g)), float(np.sqrt(np.mean((d - g) ** 2))),
            float(np.mean(np.maximum(d / g, g / d) < 1.25)), int(valid.sum()))


def assert_marigold(pred: np.ndarray, truth: np.ndarray, space: str) -> None:
    errors = depth_errors(pred, truth, space)
    abs_rel, rmse, delta1, pixels = marigold_errors(pred, truth, space)
    assert errors.abs_rel == pytest.approx(abs_rel, rel=1e-9) and errors.rmse == pytest.approx(rmse, rel=1e-9)
    assert errors.delta1 == pytest.approx(delta1, abs=1e-12) and errors.pixels == pixels


def test_disparity_alignment_undoes_a_scale_and_shift_of_disparity_exactly():
    truth = reference_depth()
    pred = 0.37 / truth - 0.05  # what a relative model predicts: disparity up to scale and shift
    errors = depth_errors(pred, truth, "disparity")
    assert errors.abs_rel < 1e-12 and errors.rmse < 1e-10 and errors.delta1 == 1.0
    assert errors.scale == pytest.approx(1 / 0.37) and errors.shift == pytest.approx(0.05 / 0.37)
    # aligning in depth cannot undo it: 1/pred is not affine in the true depth
    assert depth_errors(pred, truth, "depth").abs_rel > 0.05


def test_depth_alignment_undoes_a_scale_and_shift_of_depth_exactly():
    truth = reference_depth()
    pred = 1.0 / (2.0 * truth + 3.0)  # 1/pred is affine in the true depth
    errors = depth_errors(pred, truth, "depth")
    assert errors.abs_rel < 1e-10 and errors.rmse < 1e-9 and errors.delta1 == 1.0
    assert depth_errors(pred, truth, "disparity").abs_rel > 0.05


def test_depth_errors_of_a_known_mismatch():
    truth = reference_depth()
    pred = 1.0 / (truth * np.where(np.arange(truth.size).reshape(truth.shape) % 2, 1.5, 1.0))
    errors = depth_errors(pred, truth, "depth")  # half the pixels 50 % too far before the fit
    assert 0.0 < errors.abs_rel < 0.5 and 0.0 < errors.rmse and 0.0 < errors.delta1 < 1.0


def zeroed(pred: np.ndarray, where: np.ndarray) -> np.ndarray:
    out = pred.copy()
    out[where] = 0.0
    return out


def test_zero_predictions_in_depth_space_are_scored_at_the_far_end():
    """A 0 in relative inverse depth is infinitely far: left out of the fit and scored at the far clip (10 m), never
    at s·1 + t. The rest is exactly affine, so the expected errors come only from those pixels."""
    truth = reference_depth()
    zeros = np.random.default_rng(7).random(truth.shape) < 0.05
    errors = depth_errors(zeroed(1.0 / (2.0 * truth + 3.0), zeros), truth, "depth")
    assert errors.scale == pytest.approx(0.5) and errors.shift == pytest.approx(-1.5)
    assert errors.abs_rel == pytest.approx(np.sum(np.abs(10.0 - truth[zeros]) / truth[zeros]) / truth.size, rel=1e-9)
    assert errors.rmse == pytest.approx(np.sqrt(np.sum((10.0 - truth[zeros]) ** 2) / truth.size), rel=1e-9)
    assert errors.delta1 == pytest.approx(1 - zeros.mean(), abs=1e-12)  # every true depth is < 8 m: 10/D ≥ 1.25


def test_zero_predictions_are_left_out_of_the_disparity_fit():
    """The farthest 5 % predicted 0: the fit over the rest is exact (s = 1/0.37, t = 0.02/0.37), and the zeros are
    scored where it sends them: disparity t, 18.5 m, clipped to 10 m."""
    truth = reference_depth()
    far = truth > np.quantile(truth, 0.95)
    errors = depth_errors(zeroed(0.37 / truth - 0.02, far), truth, "disparity")
    assert errors.scale == pytest.approx(1 / 0.37) and errors.shift == pytest.approx(0.02 / 0.37)
    assert errors.abs_rel == pytest.approx(np.sum(np.abs(10.0 - truth[far]) / truth[far]) / truth.size, rel=1e-9)
    assert errors.delta1 == pytest.approx(1 - far.mean(), abs=1e-12)


def test_references_at_the_ends_of_the_range_are_not_compared():
    """A reference clipped at the maximum (10 m) or sitting at the minimum is left out, as Marigold's strict mask."""
    truth = reference_depth()
    pred = 1 / truth
    truth.flat[::16] = 10.0  # 1/16 of the pixels clipped at the maximum
    truth.flat[1] = 1e-3
    errors = depth_errors(pred, truth)
    assert errors.pixels == truth.size - truth.flat[::16].size - 1 and errors.abs_rel < 1e-12


@pytest.mark.parametrize("space", ["disparity", "depth"])
def test_noisy_predictions_with_zeros_and_clipped_references_follow_marigold(space):
    rng = np.random.default_rng(11)
    truth = reference_depth(12)
    truth.flat[::16] = 10.0
    truth.flat[3::40] = 1e-3
    disparity = 0.37 / truth * (1 + 0.15 * rng.standard_normal(truth.shape)) + 0.02
    pred = zeroed(np.abs(disparity), rng.random(truth.shape) < 0.05)
    pred.flat[5::50] = -0.01  # non-positive predictions are left out of the fit alike
    assert_marigold(pred, truth, space)


def test_depth_range_and_bad_inputs():
    truth = reference_depth()
    truth[0, 0] = 50.0  # outside NYU's 10 m: not compared
    errors = depth_errors(1 / truth, truth)
    assert errors.pixels == truth.size - 1 and errors.abs_rel < 1e-12
    with pytest.raises(ValueError, match="differ in size"):
        depth_errors(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(ValueError, match="alignment space"):
        depth_errors(truth, truth, "log")
    with pytest.raises(ValueError, match="constant"):
        depth_errors(np.ones_like(truth), truth)


def test_mare_is_zero_for_an_affine_disparity_and_scale_free():
    q = 1.0 / reference_depth(5)
    assert mare(3.0 * q + 1.0, q) < 1e-12
    noisy = q * (1 + 0.1 * np.random.default_rng(6).standard_normal(q.shape))
    assert mare(noisy, q) == pytest.approx(mare(noisy, 7.0 * q), rel=1e-9)  # reference scale does not matter
    assert 0.02 < mare(noisy, q) < 0.2


# ------------------------------------------------------------------ SSIM and PSNR


def numpy_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two (H, W) images in [0, 1] with explicit loops over the 11×11 windows."""
    x = np.arange(11) - 5.0
    g = np.exp(-x * x / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = (w * pa).sum(), (w * pb).sum()
            va, vb = (w * (pa - ma) ** 2).sum(), (w * (pb - mb) ** 2).sum()
            cov = (w * (pa - ma) * (pb - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_a_windowed_numpy_reference_and_is_one_for_a_copy():
    rng = np.random.default_rng(7)
    a = rng.uniform(size=(2, 3, 20, 24))
    b = np.clip(a + rng.normal(scale=0.1, size=a.shape), 0, 1)
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b))
    for n in range(2):
        expected = np.mean([numpy_ssim(a[n, c], b[n, c]) for c in range(3)])
        assert float(ours[n]) == pytest.approx(expected, abs=1e-12)
    assert torch.allclose(ssim(torch.from_numpy(a), torch.from_numpy(a)), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_psnr_of_known_noise():
    a = torch.zeros(1, 3, 8, 8)
    assert float(psnr(a, a + 0.1)) == pytest.approx(20.0, abs=1e-5)  # MSE 0.01
    assert float(psnr(a, a)) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="differ in size"):
        psnr(a, torch.zeros(1, 3, 8, 9))
