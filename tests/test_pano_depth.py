"""The 360° depth path and the alignment math, with exact depth from the demo backend's analytic scenes.

A stand-in estimator gives each perspective view its true disparity (1 / z-depth along the view's axis, as a
perspective model predicts it) distorted by a random scale and shift per view; the panorama path has to undo
the distortions from the overlaps alone.
"""

from __future__ import annotations

import numpy as np
import pytest

from generator.backends.demo import DemoScene, scene_for
from generator.estimators import pano
from generator.estimators.alignment import align, consistency, fit_scale_shift
from generator.estimators.frame import MAX_DISTANCE, encode, use_flip, use_pano
from td_bridge.depth import from_uint16, inverse_depth_from_distance
from td_bridge.geometry import perspective_uv_to_direction, pixel_directions, uv_to_direction

WIDTH, HEIGHT = 256, 128


def view_depth(scene: DemoScene, view: pano.View, size: int) -> np.ndarray:
    """True z-depth (along the view's axis) at the pixel centres of a view."""
    centres = (np.arange(size) + 0.5) / size
    directions = perspective_uv_to_direction(centres[None, :], centres[:, None], view.fov, view.rotation)
    return scene.distance(directions) * -(directions @ view.rotation)[..., 2]


def distorted_standin(scene: DemoScene, rng: np.random.Generator, shift: bool = True):
    """An estimator returning s·(1/z) + t per view, with s and t drawn once per view."""
    drawn: dict[pano.View, tuple[float, float]] = {}

    def predict(image: np.ndarray, view: pano.View) -> np.ndarray:
        s, t = drawn.setdefault(view, (rng.uniform(0.2, 5.0), rng.uniform(-1.0, 1.0) if shift else 0.0))
        return s / view_depth(scene, view, image.shape[0]) + t

    return predict, drawn


def scale_only_error(q: np.ndarray, truth_q: np.ndarray) -> np.ndarray:
    """|q / q_true − 1| after the one global scale the panorama path leaves free."""
    ratio = q / truth_q
    return np.abs(ratio / np.median(ratio) - 1.0)


@pytest.fixture(scope="module", params=[("a room", 3), ("a landscape", 5)], ids=["room", "landscape"])
def scene(request) -> DemoScene:
    return scene_for(*request.param)


# ------------------------------------------------------------------ layouts and views


@pytest.mark.parametrize("layout", sorted(pano.LAYOUTS))
def test_every_direction_is_seen_and_the_views_form_one_overlapping_whole(layout):
    grid = pixel_directions(WIDTH, HEIGHT)
    views = pano.LAYOUTS[layout]
    weights = np.stack([pano._seen(grid, v, np.zeros((8, 8))).weight for v in views])
    assert (weights.sum(axis=0) > 0).all(), "a direction no view sees"
    linked = {0}
    while True:  # grow the set of views reachable through shared directions
        grown = linked | {j for i in linked for j in range(len(views)) if ((weights[i] > 0) & (weights[j] > 0)).any()}
        if grown == linked:
            break
        linked = grown
    assert linked == set(range(len(views)))


def test_render_view_samples_the_panorama_along_the_view_directions():
    # a smooth colour field of the direction: each view pixel must show the field at its own direction
    u, v = (np.arange(512) + 0.5) / 512, (np.arange(256) + 0.5) / 256
    field = lambda d: np.clip(np.rint(127.5 + 120 * d), 0, 255)  # noqa: E731 - RGB from xyz
    image = field(uv_to_direction(u[None, :], v[:, None])).astype(np.uint8)
    for view in (pano.View(30.0, 10.0, 80.0), pano.View(180.0, 0.0, 110.0), pano.View(0.0, 90.0, 80.0)):
        rendered = pano.render_view(image, view, 64).astype(float)
        c = (np.arange(64) + 0.5) / 64
        expected = field(perspective_uv_to_direction(c[None, :], c[:, None], view.fov, view.rotation))
        assert np.abs(rendered - expected).max() <= 3  # bilinear between 1.4° pixels of a smooth field


def test_equirectangular_detection_and_view_sizes():
    assert pano.is_equirectangular(1024, 512) and pano.is_equirectangular(1025, 512)
    assert not pano.is_equirectangular(1024, 768) and not pano.is_equirectangular(512, 512)
    assert use_pano("auto", 2048, 1024) and not use_pano("auto", 800, 600)
    assert use_pano("yes", 800, 600) and not use_pano("no", 2048, 1024)
    assert use_flip("auto", "zoedepth") and not use_flip("auto", "dpt") and use_flip("yes", "dpt")
    with pytest.raises(ValueError, match="auto, yes or no"):
        use_pano("maybe", 10, 10)
    assert pano.view_size(1024, 80.0) == 228 and pano.view_size(100, 80) == 64 and pano.view_size(16384, 110) == 1024


# ------------------------------------------------------------------ alignment on exact data


def test_global_solve_undoes_known_scales_and_shifts(scene):
    """Noise-free samples (D = s/z + t): after the solve every view gives the same q = λ·(1/r) wherever it sees.
    (A and b separately are not always determined: a pole view of a flat ceiling sees a constant z, and then
    only a·D + b is, which is all q needs.)"""
    rng = np.random.default_rng(0)
    grid = pixel_directions(128, 64)
    truth_q = 1.0 / scene.distance(grid)
    views = pano.LAYOUTS["cube"]
    scales, shifts = rng.uniform(0.5, 2.0, len(views)), rng.uniform(-0.5, 0.5, len(views))
    seen = []
    for view, s, t in zip(views, scales, shifts):
        item = pano._seen(grid, view, np.zeros((4, 4)))
        item.disparity = s * truth_q / item.cos + t  # D = s/z + t, with z = r·cos
        seen.append(item)
    params = pano.solve_alignment(seen, np.ones(grid.shape[:2]), ridge=0.0)
    assert params[0, 0] == 1.0
    for item, (a, b) in zip(seen, params):
        inside = item.weight > 0
        q = (a * item.disparity[inside] + b) * item.cos[inside]
        np.testing.assert_allclose(q, scales[0] * truth_q[inside], rtol=1e-7)


def test_pano_reconstructs_true_depth_from_distorted_views(scene):
    """Tolerances from runs at 256×128 over four scenes and two draws (worst seen in brackets): AbsRel ≤ 0.8 %
    after alignment (0.58 %), the median pixel within 1.5 % up to one global scale (0.96 %), the first and last
    columns within 2.5 % (1.9 %), the first and last rows within 3 % (2.1 %). The larger errors sit on sphere
    silhouettes, where bilinear view sampling mixes both sides of a depth edge, so the 99th percentile is bounded
    by 10 % (6.4 %) rather than by rounding."""
    truth_r = scene.distance(pixel_directions(WIDTH, HEIGHT))
    rgb = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)  # the stand-in reads depth, not colour
    for layout in pano.LAYOUTS:
        predict, drawn = distorted_standin(scene, np.random.default_rng(1))
        q, info = pano.pano_inverse_distance(rgb, predict, layout=layout)
        assert len(drawn) == info["views"] == len(pano.LAYOUTS[layout])
        metrics = consistency(q, 1.0 / truth_r, min_disparity=1e-9)
        assert metrics.abs_rel < 0.008 and metrics.delta1 > 0.995, (layout, metrics)
        error = scale_only_error(q, 1.0 / truth_r)  # the shifts, too, are recovered: only the scale is free
        assert np.median(error) < 0.015 and np.percentile(error, 99) < 0.1, layout
        # the 0°/360° seam: the last and first columns are neighbours like any others
        assert np.median(error[:, [0, -1]]) < 0.025, layout
        seam_jump = np.abs(q[:, 0] / q[:, -1] - truth_r[:, -1] / truth_r[:, 0])  # vs the true step across it
        assert np.median(seam_jump) < 1e-3, layout  # (1e-5 seen; a sphere edge on the seam is a true step)
        # the poles: the first and last rows follow the true depth, no spike or hole
        assert error[[0, -1]].max() < 0.03, layout


def test_distortion_that_the_views_cannot_explain_is_not_hidden(scene):
    """Without the alignment (every view left at a = 1, b = 0) the same data is far off: the test above is
    measuring the solve, not a stand-in that happens to agree."""
    truth_r = scene.distance(pixel_directions(WIDTH, HEIGHT))
    predict, _ = distorted_standin(scene, np.random.default_rng(1))
    grid = pixel_directions(WIDTH, HEIGHT)
    views = pano.LAYOUTS["cube"]
    seen = [pano._seen(grid, v, predict(np.zeros((pano.view_size(WIDTH, v.fov),) * 2), v)) for v in views]
    q = sum(s.weight * s.disparity * s.cos for s in seen) / sum(s.weight for s in seen)
    assert consistency(q, 1.0 / truth_r, min_disparity=1e-9).abs_rel > 0.05


def test_metric_views_keep_the_reference_view_in_metres(scene):
    """Metric models: per-view scale errors only; the result keeps the reference view's metres."""
    truth_r = scene.distance(pixel_directions(WIDTH, HEIGHT))
    rng = np.random.default_rng(2)
    predict, drawn = distorted_standin(scene, rng, shift=False)
    reference = pano.LAYOUTS["dense"][0]
    drawn[reference] = (1.0, 0.0)  # the reference view is right in metres; the others are off by up to 5×
    q, info = pano.pano_inverse_distance(np.zeros((HEIGHT, WIDTH, 3), np.uint8), predict, metric=True)
    assert all(b == 0 for _, b in info["alignment"])
    assert np.median(np.abs(q * truth_r - 1.0)) < 0.015  # metres, no rescaling (0.52 % seen)


def test_a_constant_or_isolated_view_does_not_break_the_solve(scene):
    rgb = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    real, _ = distorted_standin(scene, np.random.default_rng(3))
    flat_view = pano.LAYOUTS["cube"][2]

    def predict(image, view):  # one view sees "nothing": a constant
        return np.full(image.shape[:2], 0.7) if view == flat_view else real(image, view)

    q, _ = pano.pano_inverse_distance(rgb, predict, layout="cube")
    assert np.isfinite(q).all()
    with pytest.raises(ValueError, match="unknown view layout"):
        pano.pano_inverse_distance(rgb, predict, layout="octahedron")


def test_cancellation_stops_between_views(scene):
    from generator.backends.base import Cancelled

    calls = []
    predict, _ = distorted_standin(scene, np.random.default_rng(4))
    with pytest.raises(Cancelled):
        pano.pano_inverse_distance(np.zeros((HEIGHT, WIDTH, 3), np.uint8), predict, layout="cube",
                                   progress=lambda step, total: calls.append(step), cancelled=lambda: len(calls) >= 2)
    assert calls == [1, 2]


# ------------------------------------------------------------------ the alignment module


def test_fit_scale_shift_recovers_known_transforms():
    rng = np.random.default_rng(0)
    target = rng.uniform(0.1, 1.0, (40, 60))
    for scale, shift in ((2.0, 0.3), (0.01, -5.0), (-3.0, 1.0)):
        pred = (target - shift) / scale  # so that scale·pred + shift == target
        s, t = fit_scale_shift(pred, target)
        assert s == pytest.approx(scale, rel=1e-10) and t == pytest.approx(shift, rel=1e-10, abs=1e-10)
        np.testing.assert_allclose(align(pred, target), target, rtol=1e-10)
    # masked and weighted fits ignore what they are told to
    pred = target.copy()
    pred[:, :10] = 99.0  # garbage outside the mask
    mask = np.ones_like(target, dtype=bool)
    mask[:, :10] = False
    assert fit_scale_shift(pred, target, mask) == pytest.approx((1.0, 0.0), abs=1e-12)
    weights = mask.astype(float)
    assert fit_scale_shift(pred, target, weights=weights) == pytest.approx((1.0, 0.0), abs=1e-12)
    pred[0, 10] = np.nan  # non-finite pixels are skipped
    assert fit_scale_shift(pred, target, mask) == pytest.approx((1.0, 0.0), abs=1e-12)


def test_fit_scale_shift_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="constant"):
        fit_scale_shift(np.ones((4, 4)), np.arange(16.0).reshape(4, 4))
    with pytest.raises(ValueError, match="at least 2"):
        fit_scale_shift(np.ones(3), np.ones(3), np.array([True, False, False]))
    with pytest.raises(ValueError, match="differ in shape"):
        fit_scale_shift(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="mask"):
        fit_scale_shift(np.ones(3), np.ones(3), np.ones(4, dtype=bool))


def test_consistency_is_zero_for_identical_depth_and_grows_with_error(scene):
    target = inverse_depth_from_distance(scene.distance(pixel_directions(128, 64)), scene.near, scene.far)
    same = consistency(target, target)
    assert same.abs_rel < 1e-12 and same.delta1 == 1.0 and same.pixels > 0
    # a relative prediction (any scale and shift of the disparity) is just as consistent
    shifted = consistency(3.0 * target - 0.2, target)
    assert shifted.abs_rel < 1e-10 and shifted.scale == pytest.approx(1 / 3)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(target.shape)
    errors = [consistency(target + level * noise, target) for level in (0.01, 0.03, 0.1, 0.3)]
    abs_rels = [e.abs_rel for e in errors]
    assert abs_rels == sorted(abs_rels) and abs_rels[0] > 0.005 and abs_rels[-1] > 0.3
    assert [e.delta1 for e in errors] == sorted((e.delta1 for e in errors), reverse=True)
    assert errors[-1].delta1 < 0.8 and errors[0].delta1 > 0.9


# ------------------------------------------------------------------ encoding


def test_encoding_relative_and_metric():
    inverse = np.array([[0.0, 0.5], [1.0, 2.0]])
    depth, near, far = encode(3.0 * inverse + 7.0, metric=False)  # any scale and shift: nearest 1, farthest 0
    assert near is None and far is None
    np.testing.assert_array_equal(depth, [[0, 16384], [32768, 65535]])
    distance = np.array([[1.0, 2.0], [4.0, 10.0]])
    depth, near, far = encode(1.0 / distance, metric=True)
    assert (near, far) == (1.0, 10.0)
    np.testing.assert_allclose(from_uint16(depth), inverse_depth_from_distance(distance, 1.0, 10.0), atol=1e-5)
    _, _, far = encode(np.array([[0.0, -1.0], [0.5, 1.0]]), metric=True)  # beyond infinity is the far cap
    assert far == MAX_DISTANCE
    flat, _, _ = encode(np.full((3, 3), 0.4), metric=False)
    assert (flat == 0).all()
