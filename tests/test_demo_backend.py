import numpy as np
import pytest

from generator.backends import Cancelled, DemoBackend
from generator.backends.demo import scene_for
from td_bridge.depth import distance_from_inverse_depth, from_uint16
from td_bridge.geometry import pixel_directions


def render(prompt="a quiet room", seed=1, width=128, height=64, steps=4, backend=None):
    params = {"prompt": prompt, "seed": seed, "width": width, "height": height, "steps": steps}
    return (backend or DemoBackend()).generate(params, lambda s, n: None, lambda: False)


def test_shapes_dtypes_and_metric_range():
    out = render(width=96, height=48)
    assert out.rgb.shape == (48, 96, 3) and out.rgb.dtype == np.uint8
    assert out.depth.shape == (48, 96) and out.depth.dtype == np.uint16
    assert 0 < out.near < out.far


def test_same_prompt_and_seed_give_the_same_frame():
    a, b = render(seed=7), render(seed=7)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)


@pytest.mark.parametrize("other", [{"seed": 8}, {"prompt": "a quiet room at night"}])
def test_prompt_and_seed_change_the_scene(other):
    a, b = render(seed=7), render(**{"seed": 7, **other})
    assert not np.array_equal(a.depth, b.depth)


@pytest.mark.parametrize("prompt, kind", [("a gallery interior", "room"), ("a desert landscape", "landscape")])
def test_prompt_words_choose_the_scene_kind(prompt, kind):
    assert scene_for(prompt, 0).kind == kind


@pytest.mark.parametrize("prompt", ["an indoor studio", "a mountain landscape", "something else"])
def test_depth_reconstructs_the_analytic_scene(prompt):
    out = render(prompt=prompt, width=256, height=128)
    scene = scene_for(prompt, 1)
    truth = scene.distance(pixel_directions(256, 128))
    rebuilt = distance_from_inverse_depth(from_uint16(out.depth), out.near, out.far)
    # one uint16 step of inverse depth moves the distance by A·r²/65535, A = 1/near − 1/far
    a = 1 / out.near - 1 / out.far
    tolerance = a * truth**2 / 65535 * 0.51 + 1e-6 * truth
    assert np.all(np.abs(rebuilt - truth) <= tolerance)
    assert truth.min() >= out.near and truth.max() <= out.far * (1 + 1e-9)


def test_near_surfaces_get_high_depth_values():
    out = render(prompt="a mountain landscape", width=256, height=128)
    # looking down at the ground (bottom rows) is nearer than the horizon and sky
    assert out.depth[-1].mean() > out.depth[out.depth.shape[0] // 2].mean() > out.depth[0].mean()


def test_progress_and_cancellation_between_steps():
    calls = []
    params = {"prompt": "p", "seed": 1, "width": 64, "height": 32, "steps": 8}
    out = DemoBackend().generate(params, lambda s, n: calls.append((s, n)), lambda: False)
    assert calls == [(i, 8) for i in range(1, 9)] and out.rgb.shape == (32, 64, 3)
    calls.clear()
    with pytest.raises(Cancelled):
        DemoBackend().generate(params, lambda s, n: calls.append(s), lambda: len(calls) >= 3)
    assert calls == [1, 2, 3]


def test_step_delay_is_validated():
    with pytest.raises(ValueError, match="step delay"):
        DemoBackend(step_delay=-1)
