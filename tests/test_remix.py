"""RGBD remix: the sphere-region and mask-image masks, LDM3D latent blending on tiny random-weight checkpoints (the
kept pixels exactly the source's, the region changed, depth continuous across the border), the server's remix
command, OSC and the CLI verb."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, RunningServer, wait_for
from generator.backends.base import RGBD
from generator.remixing import (MIN_FIT, REMIX_NAMES, border_jump, composite, read_mask, region_mask, remix_frame,
                                remix_params, ring)
from td_bridge.params import ParamError, defaults, REMIX_PARAMS
from td_bridge.receiver import CommandClient, FrameReceiver, CommandError
from td_bridge.region import RegionError, check_mask, sphere_region_mask

# Continuity across the region's edge, end to end on the tiny random-weight models, whose depth is close to pixel
# noise (a median step of 0.11 between any two neighbours): the median step across the edge is at most this many
# times the median step elsewhere in the frame (measured 1.1-1.5 with a 5° feather, 1.8-2.2 hard-edged; the raw
# decoded depth pasted in jumps up to 3x). On smooth depth (test_alignment_*): at most 0.005 in depth units [0, 1].
BORDER_RATIO = 2.5
SMOOTH_BORDER = 0.005


def columns(mask):
    return np.flatnonzero(mask.max(axis=0) > 0)


# ------------------------------------------------------------------ the region on the sphere

def test_a_region_straight_ahead_is_a_box_at_the_image_centre():
    mask = sphere_region_mask(360, 180, yaw=0, pitch=0, region_width=90, region_height=60)
    assert mask.dtype == np.float32 and mask.shape == (180, 360)
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert columns(mask).tolist() == list(range(135, 225))  # 1° per pixel: longitude -45° .. 45°
    assert np.flatnonzero(mask.max(axis=1)).tolist() == list(range(60, 120))  # latitude 30° .. -30°


def test_yaw_turns_left_and_pitch_up_as_the_view_does():
    left = sphere_region_mask(360, 180, yaw=90, pitch=30, region_width=20, region_height=20)
    assert columns(left).tolist() == list(range(80, 100))  # 90° left of the centre column
    assert np.flatnonzero(left.max(axis=1)).tolist() == list(range(50, 70))  # 30° above the horizon


def test_a_region_behind_wraps_across_the_seam():
    mask = sphere_region_mask(360, 180, yaw=180, pitch=0, region_width=60, region_height=40)
    assert columns(mask).tolist() == [*range(0, 30), *range(330, 360)]
    assert np.array_equal(sphere_region_mask(360, 180, yaw=-180, pitch=0, region_width=60, region_height=40), mask)
    assert np.array_equal(sphere_region_mask(360, 180, yaw=540 - 360, pitch=0, region_width=60, region_height=40),
                          mask)


def test_the_feather_ramps_outside_the_box():
    mask = sphere_region_mask(360, 180, yaw=0, pitch=0, region_width=90, region_height=60, feather=10)
    row = mask[90]
    assert (row[135:225] == 1).all() and (row[:125] == 0).all() and (row[236:] == 0).all()
    assert np.all(np.diff(row[124:136]) >= 0) and 0 < row[130] < 1  # rising towards the box
    assert mask[60:120, 135:225].min() == 1.0


@pytest.mark.parametrize("args, message", [
    ((360, 180, 0, 0, 0, 10), "wide"), ((360, 180, 0, 0, 10, 200), "high"), ((360, 180, 0, 95, 10, 10), "pitch"),
    ((360, 180, 0, 0, 10, 10, -1), "feather"), ((0, 180, 0, 0, 10, 10), "1x1"),
])
def test_bad_regions_are_refused(args, message):
    with pytest.raises(RegionError, match=message):
        sphere_region_mask(*args)


def test_a_region_must_repaint_and_keep_something():
    params = {**defaults(REMIX_PARAMS), "remix_width": 360, "remix_height": 180}
    with pytest.raises(RegionError, match="whole frame"):
        region_mask(params, 64, 32)
    feathered = {**params, "remix_height": 170.0, "remix_feather": 10.0}  # soft, but reaching every pixel
    with pytest.raises(RegionError, match="no pixel is black"):
        region_mask(feathered, 64, 32)
    assert isinstance(RegionError("x"), ParamError)  # the server answers bad_params


# ------------------------------------------------------------------ mask images

def test_mask_arrays_of_every_accepted_kind():
    grey = np.zeros((4, 8), np.uint8)
    grey[1:3, 2:5] = 255
    assert check_mask(grey, 8, 4).tolist() == (grey / 255).tolist()
    assert check_mask(grey.astype(np.uint16) * 257, 8, 4).tolist() == (grey / 255).tolist()
    assert check_mask(np.dstack([grey] * 3 + [np.full_like(grey, 7)]), 8, 4).tolist() == (grey / 255).tolist()
    assert check_mask(grey > 0, 8, 4).max() == 1.0
    assert check_mask(grey / 255.0, 8, 4).dtype == np.float32


@pytest.mark.parametrize("mask, message", [
    (np.zeros((4, 8), np.uint8), "repaints nothing"),
    (np.full((4, 8), 255, np.uint8), "whole frame"),
    (np.zeros((4, 9), np.uint8), "the mask is 9x4; the frame is 8x4"),
    (np.zeros((4, 8, 2), np.uint8), "1, 3 or 4 channels"),
    (np.dstack([np.zeros((4, 8), np.uint8), np.ones((4, 8), np.uint8) * 255, np.zeros((4, 8), np.uint8)]), "grey"),
    (np.full((4, 8), 1.5), r"\[0, 1\]"),
    (np.full((4, 8), np.nan), r"\[0, 1\]"),
    (np.zeros((4, 8), np.int32), "uint8, uint16"),
    (np.zeros((2, 4, 8, 1)), "2-D"),
])
def test_bad_masks_get_clear_errors(mask, message):
    with pytest.raises(RegionError, match=message):
        check_mask(mask, 8, 4)


def test_mask_files(tmp_path):
    grey = np.zeros((32, 64), np.uint8)
    grey[8:24, 40:60] = 255
    for name, image in (("l.png", Image.fromarray(grey)), ("rgba.png", Image.fromarray(np.dstack([grey] * 4))),
                        ("16.png", Image.fromarray(grey.astype(np.uint16) * 257)),
                        ("p.png", Image.fromarray(grey).convert("P"))):
        image.save(tmp_path / name)
        assert np.array_equal(read_mask(tmp_path / name, 64, 32), grey / 255.0), name
    with pytest.raises(RegionError, match="the mask is 64x32; the frame is 128x64"):
        read_mask(tmp_path / "l.png", 128, 64)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(RegionError, match="not a readable image"):
        read_mask(tmp_path / "bad.png", 64, 32)
    Image.fromarray(np.zeros((32, 64), np.float32), mode="F").save(tmp_path / "f.tiff")
    with pytest.raises(RegionError, match="mode F"):
        read_mask(tmp_path / "f.tiff", 64, 32)


def test_remix_params_keep_the_source_size_and_check_everything():
    params = remix_params({"prompt": "a desert at night", "seed": -1, "remix_yaw": 180}, 128, 64)
    assert (params["width"], params["height"], params["remix_yaw"]) == (128, 64, 180.0) and params["seed"] >= 0
    with pytest.raises(ParamError, match="width cannot be given"):
        remix_params({"width": 256}, 128, 64)
    with pytest.raises(ParamError, match="steps.*remix_pitch"):
        remix_params({"steps": 0, "remix_pitch": 100}, 128, 64)


# ------------------------------------------------------------------ LDM3D latent blending

torch = pytest.importorskip("torch")
import tiny_ldm3d  # noqa: E402
from generator.backends import load_backend  # noqa: E402


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    root = tmp_path_factory.mktemp("remix")
    return {channels: load_backend(str(tiny_ldm3d.build(root / f"tiny-{channels}c", vae_channels=channels)))
            for channels in (6, 4)}


def generation(**overrides):
    return {"prompt": "a sunlit courtyard", "seed": 3, "steps": 4, "seamless": False, **overrides}


@pytest.fixture(scope="module")
def sources(backends):
    """A generated 128x64 frame of each tiny model, with its metadata, as a remix's source."""
    from generator.frames import make_frame

    made = {}
    for channels, backend in backends.items():
        params = remix_params(generation(), 128, 64)
        header, result = make_frame(backend, {k: v for k, v in params.items() if not k.startswith("remix_")},
                                    lambda s, n: None, lambda: False)
        made[channels] = header, result
    return made


def remix(backend, source, mask, **overrides):
    header, frame = source
    params = remix_params(generation(prompt="a misty forest at dawn", seed=11, **overrides), 128, 64)
    return remix_frame(backend, header, frame.rgb, frame.depth, mask, params, lambda s, n: None, lambda: False)


@pytest.mark.parametrize("channels", [6, 4])
@pytest.mark.parametrize("scheduler", ["ddim", "euler", "dpm++"])
@pytest.mark.parametrize("feather", [5.0, 0.0])
def test_remix_keeps_the_rest_exactly_changes_the_region_and_joins_smoothly(backends, sources, channels, scheduler,
                                                                           feather):
    source = sources[channels][1]
    region = {"remix_yaw": 180.0, "remix_pitch": 0.0, "remix_width": 90.0, "remix_height": 90.0,
              "remix_feather": feather}  # behind the viewer: across the seam
    mask = region_mask({**defaults(REMIX_PARAMS), **region}, 128, 64)
    assert mask[:, 0].max() == 1 and mask[:, -1].max() == 1 and mask[:, 64].max() == 0
    header, out = remix(backends[channels], sources[channels], mask, scheduler=scheduler, **region)
    kept = mask == 0
    # outside the mask, after decoding: the source's pixels, RGB and depth, exactly (tolerance 0)
    assert np.array_equal(out.rgb[kept], source.rgb[kept]) and np.array_equal(out.depth[kept], source.depth[kept])
    core = mask == 1
    changed_rgb = np.abs(out.rgb[core].astype(int) - source.rgb[core]).mean()
    changed_depth = np.abs(out.depth[core].astype(int) - source.depth[core]).mean() / 65535
    assert changed_rgb > 2.0 and changed_depth > 0.002, (changed_rgb, changed_depth)
    record = out.info["remix"]["depth_alignment"]
    assert record["border_jump"] == pytest.approx(border_jump(out.depth, mask), abs=1e-6)
    assert record["border_jump"] <= BORDER_RATIO * record["neighbour_step"], record
    assert record["ring_pixels"] > 0 and 0 < record["repainted_share"] < 1
    assert out.info["peak_memory_of"] == "process peak RSS" and out.info["peak_memory_gib"] > 0
    assert header["source_frame_id"] == sources[channels][0]["frame_id"]
    assert header["params"]["source_frame_id"] == header["source_frame_id"]
    assert header["params"]["remix_yaw"] == 180.0 and header["params"]["prompt"] == "a misty forest at dawn"


def smooth_frames(new_depth):
    """A source with smooth depth (a slope round the sphere and down it) and a new frame with ``new_depth`` (a
    function of the source's depth field in [0, 1])."""
    y, x = np.mgrid[0:64, 0:128] / np.array([63.0, 128.0])[:, None, None]
    field = 0.3 + 0.25 * np.sin(2 * np.pi * x) + 0.3 * y
    rgb = np.zeros((64, 128, 3), np.uint8)
    as16 = lambda d: np.round(np.clip(d, 0, 1) * 65535).astype(np.uint16)  # noqa: E731
    return RGBD(rgb, as16(field)), RGBD(rgb + 200, as16(new_depth(field)))


@pytest.mark.parametrize("feather", [0.0, 5.0])
def test_alignment_fits_a_decoded_depth_at_another_scale(feather):
    """The new frame reproduces the kept geometry at another scale and shift (as a decoder of the kept latents
    does), with a new object in the region: the fit on the ring puts it back on the kept geometry's scale."""
    mask = region_mask({**defaults(REMIX_PARAMS), "remix_yaw": 180.0, "remix_feather": feather}, 128, 64)
    rows, cols = np.mgrid[0:64, 0:128]
    thing = (np.abs(rows - 32) < 4) & ((cols < 4) | (cols >= 124))  # at the region's centre, behind the viewer
    source, new = smooth_frames(lambda field: 0.5 * field + 0.2 + 0.3 * thing)
    out, record = composite(source, new, mask)
    assert record["method"] == "fit" and record["scale"] == pytest.approx(2.0, rel=1e-3), record
    pasted = mask * new.depth + (1 - mask) * source.depth  # not aligned
    assert border_jump(pasted, mask) > 0.02 and record["border_jump"] <= SMOOTH_BORDER, (border_jump(pasted, mask),
                                                                                           record)


def test_alignment_meets_the_kept_level_when_the_new_depth_does_not_follow_it():
    """New depth unrelated to the kept depth on the ring (R² below MIN_FIT): shifted so the levels meet."""
    mask = region_mask({**defaults(REMIX_PARAMS), "remix_feather": 0.0}, 128, 64)
    source, new = smooth_frames(lambda field: np.full_like(field, 0.9))
    out, record = composite(source, new, mask)
    assert record["method"] == "levels" and record["fit_r2"] < MIN_FIT
    kept_level = np.median(source.depth[ring(mask, 2)]) / 65535  # the kept ring's median (band 2 at 128 wide)
    assert np.median(out.depth[mask == 1]) / 65535 == pytest.approx(kept_level, abs=1e-3)


def test_remix_is_seeded_and_refuses_what_it_cannot_do(backends, sources):
    mask = region_mask(defaults(REMIX_PARAMS), 128, 64)
    a, b = (remix(backends[4], sources[4], mask)[1] for _ in range(2))
    assert np.abs(a.depth.astype(int) - b.depth).max() <= 1 and np.abs(a.rgb.astype(int) - b.rgb).max() <= 1
    header, frame = sources[4]
    with pytest.raises(RegionError, match="the mask is 64x32"):
        remix_frame(backends[4], header, frame.rgb, frame.depth, mask[::2, ::2], remix_params(generation(), 128, 64),
                    lambda s, n: None, lambda: False)
    from generator.backends.demo import DemoBackend

    with pytest.raises(ParamError, match="demo backend cannot remix"):
        remix_frame(DemoBackend(), header, frame.rgb, frame.depth, mask, remix_params(generation(), 128, 64),
                    lambda s, n: None, lambda: False)


# ------------------------------------------------------------------ the panorama backend

@pytest.fixture(scope="module")
def pano(tmp_path_factory):
    import tiny_depth
    import tiny_pipelines

    root = tmp_path_factory.mktemp("pano-remix")
    estimator = tiny_depth.build("depth_anything", root / "depth-anything")
    return {kind: load_backend(str(tiny_pipelines.build(kind, root / kind)), estimator=str(estimator))
            for kind in tiny_pipelines.KINDS if kind != "sdxl"}  # SDXL's U-Net path is SD's


@pytest.mark.parametrize("kind", ("sd", "z-image", "flux", "qwen-image"))
def test_pano_remix_keeps_the_rest_and_aligns_the_new_depth_to_it(pano, kind, one_torch_thread):
    from generator.frames import make_frame

    backend = pano[kind]
    params = remix_params(generation(steps=3, guidance=3.0), 128, 64)
    source = make_frame(backend, {k: v for k, v in params.items() if not k.startswith("remix_")},
                        lambda s, n: None, lambda: False)
    region = {**defaults(REMIX_PARAMS), "remix_yaw": 180.0, "remix_feather": 0.0}
    mask = region_mask(region, 128, 64)
    steps = []
    header, out = remix_frame(backend, source[0], source[1].rgb, source[1].depth, mask,
                              remix_params(generation(prompt="a desert at night", steps=3, guidance=3.0, **region),
                                           128, 64), lambda s, n: steps.append((s, n)), lambda: False)
    kept, core = mask == 0, mask == 1
    assert np.array_equal(out.rgb[kept], source[1].rgb[kept]) and np.array_equal(out.depth[kept],
                                                                                 source[1].depth[kept])
    assert np.abs(out.rgb[core].astype(int) - source[1].rgb[core]).mean() > 2.0
    record = out.info["remix"]["depth_alignment"]
    assert record["border_jump"] <= BORDER_RATIO * record["neighbour_step"], record
    assert header["source_frame_id"] == source[0]["frame_id"] and steps[-1][0] == steps[-1][1]


@pytest.mark.parametrize("kind", ("sd", "z-image", "flux", "qwen-image"))
def test_pano_remix_ends_on_the_sources_latents_outside_the_region(pano, kind, monkeypatch, one_torch_thread):
    """What the pipeline decodes: outside the region exactly the source's latents (encoded as the pipeline
    normalises them), inside new ones; for a seamless transformer after its latents were rolled round and back,
    and for FLUX and Qwen-Image after unpacking their tokens."""
    from generator.backends.remix import latent_mask
    from generator.backends.vae_latents import encode_rgb
    from generator.frames import make_frame

    backend = pano[kind]
    params = remix_params(generation(steps=3, guidance=3.0), 128, 64)
    _, source = make_frame(backend, {k: v for k, v in params.items() if not k.startswith("remix_")},
                           lambda s, n: None, lambda: False)
    region = {**defaults(REMIX_PARAMS), "remix_yaw": 180.0, "remix_width": 100.0, "remix_feather": 0.0}  # the seam
    mask = region_mask(region, 128, 64)
    grids = []
    pack = backend.pack
    monkeypatch.setattr(backend, "pack", lambda grid: grids.append(grid) or pack(grid))
    backend.remix(remix_params(generation(prompt="a desert at night", steps=3, guidance=3.0, seamless=True, **region),
                               128, 64), source, mask, lambda s, n: None, lambda: False)
    known = encode_rgb(backend.pipe, source.rgb, backend.device)
    cells = latent_mask(mask, backend.pipe.vae_scale_factor)[0, 0].bool()
    last = grids[-1][0]  # the latents after the last step's blend (and roll back): what is decoded
    if backend._transformer:  # without the context columns of the seam overlap
        columns = backend.overlap(params).columns
        last = last[..., columns:-columns]
    assert last.shape == known[0].shape and cells.any() and (~cells).any()
    assert cells[:, 0].any() and cells[:, -1].any()  # the region crosses the 0°/360° seam
    assert torch.equal(last[:, ~cells], known[0][:, ~cells])
    assert (last[:, cells] - known[0][:, cells]).abs().mean() > 0.1


@pytest.mark.parametrize("kind", ("z-image", "flux", "qwen-image"))
def test_flow_remix_keeps_the_source_on_the_flow_path_between_steps(pano, kind, monkeypatch, one_torch_thread):
    """After the first of three steps the kept cells are the source on the flow-matching path at the next step's
    noise level, (1 − σ₁)·source + σ₁·noise with the frame's start noise: the scheduler's scale_noise at the step
    diffusers' inpainting pipelines call it."""
    from generator.backends.remix import latent_mask
    from generator.backends.vae_latents import encode_rgb
    from generator.frames import make_frame

    backend = pano[kind]
    params = remix_params(generation(steps=3, guidance=3.0, seamless=False), 128, 64)
    _, source = make_frame(backend, {k: v for k, v in params.items() if not k.startswith("remix_")},
                           lambda s, n: None, lambda: False)
    region = {**defaults(REMIX_PARAMS), "remix_feather": 0.0}
    mask = region_mask(region, 128, 64)
    grids = []
    pack = backend.pack
    monkeypatch.setattr(backend, "pack", lambda grid: grids.append(grid) or pack(grid))
    given = remix_params(generation(prompt="a desert at night", steps=3, guidance=3.0, seamless=False, **region),
                         128, 64)
    backend.remix(given, source, mask, lambda s, n: None, lambda: False)
    known = encode_rgb(backend.pipe, source.rgb, backend.device)[0]
    noise = backend.start_noise(given)[0]
    sigma = float(backend.pipe.scheduler.sigmas[1])
    cells = latent_mask(mask, backend.pipe.vae_scale_factor)[0, 0].bool()
    after_first = grids[1][0]  # grids[0]: the start noise handed in
    assert 0 < sigma < 1 and after_first.shape == known.shape
    torch.testing.assert_close(after_first[:, ~cells], ((1 - sigma) * known + sigma * noise)[:, ~cells],
                               rtol=1e-5, atol=1e-5)


def test_pano_remix_matches_diffusers_inpainting_pipeline(pano, monkeypatch, one_torch_thread):
    """The reference: diffusers' StableDiffusionInpaintPipeline on the same tiny weights (a 4-channel U-Net: it
    blends latents the way we do), same prompt, start noise, scheduler and a mask on whole latent cells, gives the
    same picture. diffusers samples the VAE's posterior where we take its mean: the test makes it take the mean."""
    from diffusers import StableDiffusionInpaintPipeline
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as inpaint
    from PIL import Image

    from generator.backends.base import RGBD
    from generator.backends.vae_latents import encode_rgb

    backend = pano["sd"]
    rng = np.random.default_rng(4)
    source = RGBD(rng.integers(0, 256, (64, 128, 3), dtype=np.uint8), rng.random((64, 128), dtype=np.float32))
    mask = np.zeros((64, 128), np.float32)
    mask[10:40, 20:70] = 1.0  # whole 2x2 latent cells of the tiny VAE
    params = remix_params(generation(prompt="a misty forest", steps=3, guidance=3.0, negative_prompt="fog"), 128, 64)
    ours = backend.remix(params, source, mask, lambda s, n: None, lambda: False).rgb

    monkeypatch.setattr(inpaint, "retrieve_latents", lambda output, generator=None: output.latent_dist.mean)
    with torch.inference_mode():
        noise = torch.randn(encode_rgb(backend.pipe, source.rgb, backend.device).shape,
                            generator=torch.Generator("cpu").manual_seed(params["seed"]))  # what the remix drew
        reference = StableDiffusionInpaintPipeline(**backend.pipe.components, requires_safety_checker=False)
        reference.set_progress_bar_config(disable=True)
        theirs = reference(prompt="a misty forest", negative_prompt="fog", image=Image.fromarray(source.rgb),
                           mask_image=Image.fromarray((mask * 255).astype(np.uint8)), height=64, width=128,
                           strength=1.0, num_inference_steps=3, guidance_scale=3.0, latents=noise,
                           output_type="np").images[0]
    difference = np.abs(ours.astype(int) - np.round(theirs * 255).astype(int))
    print(f"ours vs StableDiffusionInpaintPipeline: max {difference.max()}, mean {difference.mean():.4f} levels")
    assert difference.max() <= 1


# ------------------------------------------------------------------ served, OSC and the CLI

def test_the_remix_command_publishes_and_keeps_a_frame_naming_its_source(backends, tmp_path):
    from generator.library import FrameLibrary

    srv = RunningServer(backends[4], library=FrameLibrary(tmp_path / "library"))
    try:
        with FrameReceiver(srv.frames) as rx, CommandClient(srv.commands, timeout=10) as client:
            wait_for(lambda: rx.connected)
            job = client.generate(prompt="a desert at night", seed=2, width=128, height=64, steps=3, cue="desert")
            source = wait_for(lambda: (f := rx.latest()) and f.meta["job_id"] == job["job_id"] and f, timeout=60)
            queued = client.remix(name="desert", prompt="a misty forest", seed=5, steps=3, remix_yaw=180,
                                  remix_feather=0, cue="forest")
            assert queued["params"]["width"] == 128 and "remix_source" not in queued["params"]
            frame = wait_for(lambda: (f := rx.latest()) and f.meta["job_id"] == queued["job_id"] and f, timeout=60)
            assert frame.meta["source_frame_id"] == source.meta["frame_id"]
            kept = region_mask({**defaults(REMIX_PARAMS), "remix_yaw": 180, "remix_feather": 0}, 128, 64) == 0
            assert np.array_equal(frame.depth[kept], source.depth[kept])
            assert srv.server.library.load(frame.meta["frame_id"])[0]["source_frame_id"] == source.meta["frame_id"]
            assert srv.server.library.latest_for_cue("forest").frame_id == frame.meta["frame_id"]
            for args, message in (({"width": 64}, "width cannot be given"),
                                  ({"remix_width": 360, "remix_height": 180}, "whole frame"),
                                  ({"remix_pitch": 91}, "remix_pitch"),
                                  ({"name": "nothing"}, "no frame with cue")):
                with pytest.raises(CommandError, match=message):
                    client.remix(**args)
    finally:
        srv.close()


def test_a_mask_image_sent_with_the_remix_command_repaints_just_its_white(backends, tmp_path):
    """ZeroMQ remix with a mask image (gray8 data part): white repaints, black keeps; a mask of the wrong size, that
    keeps nothing, beside a region, or a data part without its argument is refused and nothing is queued."""
    srv = RunningServer(backends[4])
    try:
        with FrameReceiver(srv.frames) as rx, CommandClient(srv.commands, timeout=10) as client:
            wait_for(lambda: rx.connected)
            job = client.generate(prompt="a desert at night", seed=2, width=128, height=64, steps=3)
            source = wait_for(lambda: (f := rx.latest()) and f.meta["job_id"] == job["job_id"] and f, timeout=60)
            mask = np.zeros((64, 128), np.uint8)
            mask[10:40, 20:70] = 255  # a box no sphere region draws: only the image can say it
            queued = client.remix(mask=mask, prompt="a misty forest", seed=5, steps=3)
            frame = wait_for(lambda: (f := rx.latest()) and f.meta["job_id"] == queued["job_id"] and f, timeout=60)
            kept, repainted = mask == 0, mask == 255
            assert np.array_equal(frame.rgb[kept], source.rgb[kept]) and np.array_equal(frame.depth[kept],
                                                                                         source.depth[kept])
            assert np.abs(frame.rgb[repainted].astype(int) - source.rgb[repainted]).mean() > 2.0
            recorded = frame.meta["params"]  # the mask, not a region it was not made with
            assert recorded["remix_mask"] == "uploaded 128x64 gray8" and not set(recorded) & REMIX_NAMES
            assert queued["params"]["remix_mask"] == "uploaded 128x64 gray8"
            for bad, args, message in ((np.zeros((32, 64), np.uint8), {}, "the mask is 64x32; the frame is 128x64"),
                                       (np.full((64, 128), 255, np.uint8), {}, "keeping nothing"),
                                       (mask, {"remix_yaw": 90.0}, "not both")):
                with pytest.raises(CommandError, match=message):
                    client.remix(mask=bad, **args)
            with pytest.raises(CommandError, match="'mask' must be"):
                client.request("remix", {}, data=mask.tobytes())
            with pytest.raises(CommandError, match="has 10 bytes; 128x64 gray8 needs 8192"):
                client.request("remix", {"mask": {"width": 128, "height": 64, "format": "gray8"}}, data=b"0" * 10)
            assert client.status()["queued"] == 0
    finally:
        srv.close()


def test_a_demo_server_says_it_cannot_remix():
    srv = RunningServer()
    try:
        with FrameReceiver(srv.frames) as rx, CommandClient(srv.commands, timeout=10) as client:
            wait_for(lambda: rx.connected)
            client.generate(width=128, height=64, steps=1)
            wait_for(lambda: rx.latest(), timeout=30)
            with pytest.raises(CommandError, match="demo backend cannot remix"):
                client.remix()
    finally:
        srv.close()


def test_osc_remix_sends_the_sticky_parameters_and_region():
    from generator.serving.osc import OscBridge

    bridge = OscBridge.__new__(OscBridge)  # only the command mapping: no sockets
    bridge.params = {"prompt": "a room", "width": 1024, "height": 512, "seed": 4}
    bridge.remix_params = defaults(REMIX_PARAMS)
    cmd, args = bridge._command("remix", ["a forest", 180, -10, 45.0, "30"])
    assert cmd == "remix" and args["frame_id"] == "latest" and "width" not in args and "height" not in args
    assert (args["prompt"], args["seed"], args["remix_yaw"], args["remix_pitch"], args["remix_width"],
            args["remix_height"]) == ("a forest", 4, 180.0, -10.0, 45.0, 30.0)
    assert bridge._command("remix", [])[1]["remix_width"] == 90.0
    for bad in (["a", 1, 2], ["a", 0, 100, 10, 10]):
        with pytest.raises(ParamError):
            bridge._command("remix", bad)


def test_remix_cli_with_a_region_and_with_a_mask(backends, sources, tmp_path):
    from td_bridge.depth import write_depth_png

    header, frame = sources[6]
    folder = tmp_path / "source"
    folder.mkdir()
    Image.fromarray(frame.rgb).save(folder / "rgb.png")
    write_depth_png(folder / "depth.png", frame.depth)
    (folder / "metadata.json").write_text(json.dumps(header))
    model = backends[6].model
    base = [sys.executable, "-m", "generator", "remix", str(folder), "--model", model, "--no-library", "--steps", "2",
            "--prompt", "a misty forest", "--seed", "3"]
    result = subprocess.run([*base, "-o", str(tmp_path / "region"), "--region", "180,0,90,60"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "region" / "metadata.json").read_text())
    assert meta["source_frame_id"] == header["frame_id"] and meta["params"]["remix_yaw"] == 180.0
    mask = np.zeros((64, 128), np.uint8)
    mask[16:48, 32:96] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    result = subprocess.run([*base, "-o", str(tmp_path / "masked"), "--mask", str(tmp_path / "mask.png")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "masked" / "metadata.json").read_text())
    assert meta["params"]["remix_mask"] == "mask.png" and "remix_yaw" not in meta["params"]
    Image.fromarray(mask[:, :64]).save(tmp_path / "small.png")
    result = subprocess.run([*base, "-o", str(tmp_path / "bad"), "--mask", str(tmp_path / "small.png")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "the mask is 64x64; the frame is 128x64" in result.stderr
