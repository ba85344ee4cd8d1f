import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from td_bridge import depth as dm

depth16_arrays = arrays(np.uint16, st.tuples(st.integers(1, 8), st.integers(1, 8)))
unit_floats = st.floats(0.0, 1.0, allow_nan=False)


@given(depth16_arrays)
def test_rgb8_packing_round_trips(depth16):
    packed = dm.depth16_to_rgb8(depth16)
    assert packed.dtype == np.uint8 and (packed[..., 0] == 0).all()
    np.testing.assert_array_equal(dm.rgb8_to_depth16(packed), depth16)


@given(depth16_arrays)
def test_vae6_channels_round_trip(depth16):
    np.testing.assert_array_equal(dm.depth16_from_vae6(dm.depth16_to_vae6(depth16)), depth16)


def test_vae6_decode_gives_exact_values_for_known_channels():
    # high byte 0xAB, low byte 0xCD; channel 3 is unused and must not matter
    channels = np.array([[[0.9, 0xAB / 255, 0xCD / 255], [0.0, 1.0, 1.0]]])
    np.testing.assert_array_equal(dm.depth16_from_vae6(channels), [[0xABCD, 0xFFFF]])
    # rounding to the nearest byte tolerates decoder noise below half a step
    noisy = channels + np.array([0, 0.4 / 255, -0.4 / 255])
    np.testing.assert_array_equal(dm.depth16_from_vae6(noisy), [[0xABCD, 0xFFFF]])


def test_vae4_and_uint16_conversions():
    np.testing.assert_array_equal(dm.depth16_from_vae4(np.array([0.0, 0.5, 1.0, 1.5, -1, np.nan])),
                                  [0, 32768, 65535, 65535, 0, 0])
    np.testing.assert_allclose(dm.from_uint16(np.array([0, 65535], np.uint16)), [0.0, 1.0])


def test_packing_rejects_wrong_types():
    with pytest.raises(ValueError):
        dm.depth16_to_rgb8(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError):
        dm.rgb8_to_depth16(np.zeros((2, 2, 4), np.uint8))
    with pytest.raises(ValueError):
        dm.depth16_from_vae6(np.zeros((2, 2)))


def test_depth_png_round_trip(tmp_path):
    depth16 = np.random.default_rng(1).integers(0, 65536, (17, 31), dtype=np.uint16)
    dm.write_depth_png(tmp_path / "d.png", depth16)
    back = dm.read_depth_png(tmp_path / "d.png")
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, depth16)


def test_depth_png_rejects_colour_images(tmp_path):
    from PIL import Image

    Image.new("RGB", (4, 4)).save(tmp_path / "c.png")
    with pytest.raises(ValueError, match="greyscale"):
        dm.read_depth_png(tmp_path / "c.png")


@given(radius=st.floats(0.1, 100), strength=st.floats(0, 1.99))
def test_half_depth_everywhere_is_the_sphere_of_radius_r(radius, strength):
    r = dm.radius_linear(np.full((4, 4), 0.5), radius, strength)
    np.testing.assert_allclose(r, radius, rtol=1e-6)


def test_linear_rule_direction():
    r = dm.radius_linear(np.array([0.0, 0.5, 1.0]), radius=2.0, strength=1.0)
    np.testing.assert_allclose(r, [3.0, 2.0, 1.0])  # far pushed out, near pulled in


@settings(max_examples=50)
@given(d=st.lists(unit_floats, min_size=2, max_size=20), strength=st.floats(0.01, 1.99),
       near=st.floats(0.05, 10), ratio=st.floats(1.01, 1000))
def test_radius_is_monotone_decreasing_in_depth_for_both_mappings(d, strength, near, ratio):
    d = np.sort(np.asarray(d, dtype=np.float32))
    for r in (dm.radius_linear(d, 1.0, strength), dm.radius_metric(d, near, near * ratio)):
        assert np.all(np.diff(r) <= 1e-6 * r[:-1])
        assert np.all(r > 0)


def test_metric_mapping_hits_near_and_far():
    np.testing.assert_allclose(dm.radius_metric(np.array([1.0, 0.0]), 0.5, 20.0), [0.5, 20.0], rtol=1e-6)
    np.testing.assert_allclose(
        dm.distance_from_inverse_depth(dm.inverse_depth_from_distance(np.array([0.7, 3.0, 19.0]), 0.5, 20), 0.5, 20),
        [0.7, 3.0, 19.0], rtol=1e-9)


def test_non_finite_and_out_of_range_depth_is_handled_explicitly():
    d = np.array([np.nan, np.inf, -np.inf, -3.0, 7.0], dtype=np.float32)
    np.testing.assert_allclose(dm.radius_linear(d, 1.0, 1.0), [1.0, 1.0, 1.0, 1.5, 0.5])
    np.testing.assert_allclose(dm.radius_metric(d, 1.0, 10.0), [10.0, 10.0, 10.0, 10.0, 1.0], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"mode": "log"}, "linear, metric"),
        ({"strength": 2.0}, r"\[0, 2\)"),
        ({"strength": -0.1}, r"\[0, 2\)"),
        ({"radius": 0.0}, "radius"),
        ({"mode": "metric", "near": 5.0, "far": 5.0}, "near < far"),
        ({"mode": "metric", "near": 0.0, "far": 5.0}, "near < far"),
        ({"mode": "metric", "near": 1.0, "far": float("inf")}, "near < far"),
    ],
)
def test_mapping_parameters_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        dm.DepthMapping(**kwargs)


def test_mapping_object_dispatches():
    d = np.array([0.25], np.float32)
    assert dm.DepthMapping("linear", 2.0, 0.5)(d)[0] == pytest.approx(2.0 * (1 + 0.5 * 0.25))
    assert dm.DepthMapping("metric", near=1.0, far=4.0)(d)[0] == pytest.approx(1 / (0.75 * 0.25 + 0.25))


def test_the_frame_blend_mixes_depth_before_the_mapping():
    before, after = np.array([1.0, 0.2, 0.6], np.float32), np.array([0.0, 0.4, np.nan], np.float32)
    assert np.array_equal(dm.blend_depth(before, after, 1.0), after, equal_nan=True)  # the new frame's own
    np.testing.assert_allclose(dm.blend_depth(before, after, 0.5)[:2], [0.5, 0.3])
    np.testing.assert_array_equal(dm.blend_depth(before, after, 0.0)[:2], before[:2])
    np.testing.assert_array_equal(dm.blend_depth(before, after, -2.0)[:2], before[:2])  # clipped to [0, 1]
    metric = dm.DepthMapping("metric", near=1.0, far=10.0)
    halfway = metric(dm.blend_depth(before, after, 0.5))
    assert halfway[0] == pytest.approx(1 / (0.9 * 0.5 + 0.1))  # the radius of the mean depth: 1.82 m ...
    assert (metric(before[:1])[0] + metric(after[:1])[0]) / 2 == pytest.approx(5.5)  # ... not the mean radius
    assert halfway[2] == 10.0  # NaN on one side: the mapping's non-finite rule (metric: far), as the shader


def test_dilation_grows_near_objects_across_the_seam():
    d = np.zeros((5, 8), np.float32)
    d[2, 0] = 1.0
    grown = dm.dilate_near(d, 3)
    assert grown[1:4, [7, 0, 1]].min() == 1.0  # wrapped to the last column
    assert grown[:, 2:7].max() == 0.0 and grown[0, 0] == 0.0 == grown[4, 0]


def test_smoothing_preserves_constants_and_wraps():
    np.testing.assert_allclose(dm.smooth(np.full((4, 6), 0.3), 5), 0.3, rtol=1e-6)
    d = np.zeros((3, 6), np.float32)
    d[:, 0] = 0.9
    s = dm.smooth(d, 3)
    np.testing.assert_allclose(s[1, 5], 0.3, rtol=1e-6)  # left neighbour across the seam
    with pytest.raises(ValueError, match="odd"):
        dm.smooth(d, 4)
