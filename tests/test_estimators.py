"""Depth estimators on tiny random-weight DPT, Depth Anything and ZoeDepth models, offline, on the CPU.

Our perspective path must give what transformers' ``pipeline("depth-estimation")`` gives for the same model and
image. Both run the same computation (the model's own image processor, one batch-1 forward, the same bicubic
resize, in one process on the same threads), so the depth is compared for equality, not within a tolerance.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from generator.__main__ import main
from generator.backends.base import BackendUnavailable
from generator.estimators.checkpoints import DEFAULT_MODEL, licence_notice
from generator.estimators.frame import estimate_rgbd, estimated_frame
from generator.estimators.inputs import ImageError, read_image
from generator.estimators.model import DepthModel
from td_bridge.depth import from_uint16, inverse_depth_from_distance, read_depth_png, to_uint16
from td_bridge.params import ESTIMATION_PARAMS, defaults

from tiny_depth import build

KINDS = ("dpt", "depth_anything", "depth_anything_metric", "zoedepth")
PARAMS = defaults(ESTIMATION_PARAMS)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("depth-models")
    return {kind: build(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A 45×70 photo-like image: smooth gradients and a few blocks (odd sizes on purpose)."""
    y, x = np.mgrid[0:45, 0:70]
    rgb = np.stack([x * 3, y * 5, (x + y) * 2], axis=-1) % 256
    rgb[10:25, 20:40] = (200, 40, 90)
    return rgb.astype(np.uint8)


@pytest.fixture
def torchvision_resize(monkeypatch):
    """transformers' ZoeDepth post-processing calls torchvision's resize, which is not installed here (nor needed
    by DepthFusion). For tensors, torchvision's resize(BICUBIC, antialias=False) is
    torch.nn.functional.interpolate(mode="bicubic", align_corners=False); this stand-in does exactly that, so
    transformers' own path can be run as the reference."""
    import types

    from transformers.models.zoedepth import image_processing_pil_zoedepth as module

    def resize(tensor, size, interpolation=None, antialias=False):
        assert not antialias
        return F.interpolate(tensor[None], size=list(size), mode="bicubic", align_corners=False)[0]

    monkeypatch.setattr(module, "tvF", types.SimpleNamespace(resize=resize, InterpolationMode=types.SimpleNamespace(
        BICUBIC="bicubic")), raising=False)


def pipeline_depth(folder: Path, image: np.ndarray) -> np.ndarray:
    from PIL import Image
    from transformers import pipeline

    estimator = pipeline("depth-estimation", model=str(folder), device="cpu")
    return estimator(Image.fromarray(image))["predicted_depth"].numpy()


# ------------------------------------------------------------------ matches transformers


@pytest.mark.parametrize("kind", KINDS)
def test_perspective_output_matches_the_transformers_pipeline(models, image, kind, torchvision_resize):
    model = DepthModel.load(str(models[kind]), device="cpu")
    assert model.kind == ("metric" if kind in ("depth_anything_metric", "zoedepth") else "relative")
    ours = model.predict(image, flip=False)
    reference = pipeline_depth(models[kind], image)
    assert ours.shape == image.shape[:2] == reference.shape
    assert np.ptp(reference) > 0  # random weights still give a varying map
    np.testing.assert_array_equal(ours, reference)
    # and the frame: relative → min..max onto 0..65535, metric → the metres' range recorded
    result = estimate_rgbd(model, image, {**PARAMS, "flip": "no"})
    reference = reference.astype(np.float64)
    if model.metric:
        assert (result.near, result.far) == pytest.approx((reference.min(), reference.max()), rel=1e-12)
        expected = inverse_depth_from_distance(reference, result.near, result.far)
    else:
        assert result.near is None and result.far is None
        expected = (reference - reference.min()) / np.ptp(reference)
    np.testing.assert_array_equal(result.depth, to_uint16(expected))
    assert result.info["projection"] == "perspective" and result.info["kind"] == model.kind


def test_zoedepth_flip_averaging_is_the_documented_recipe(models, image, torchvision_resize):
    """transformers documents ZoeDepth's flip: run the model on the mirrored pixel values too and hand both
    outputs to post_process_depth_estimation(outputs_flipped=...)."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    folder = models["zoedepth"]
    network, processor = AutoModelForDepthEstimation.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder)
    inputs = processor(images=Image.fromarray(image), return_tensors="pt")
    with torch.inference_mode():
        outputs = network(**inputs)
        flipped = network(pixel_values=torch.flip(inputs.pixel_values, dims=[3]))
    reference = processor.post_process_depth_estimation(outputs, source_sizes=[image.shape[:2]],
                                                        outputs_flipped=flipped)[0]["predicted_depth"].numpy()
    model = DepthModel.load(str(folder), device="cpu")
    ours = model.predict(image, flip=True)
    np.testing.assert_array_equal(ours, reference)
    assert not np.array_equal(ours, model.predict(image, flip=False))
    assert estimate_rgbd(model, image, PARAMS).info["flip"] is True  # auto: on for ZoeDepth


def test_a_panorama_takes_the_360_path_and_stays_seamless(models):
    """A 2:1 image goes through the views (22 by default); the blend is continuous across the 0°/360° seam."""
    model = DepthModel.load(str(models["depth_anything"]), device="cpu")
    rng = np.random.default_rng(0)
    pano = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    steps = []
    header, result = estimated_frame(model, pano, {**PARAMS, "views": "cube"}, {"file": "p.png"},
                                     progress=lambda step, total: steps.append((step, total)))
    assert steps[-1] == (6, 6) and result.info["projection"] == "equirectangular"
    assert header["width"] == 128 and header["backend"] == "depth-estimation" and header["source"]["file"] == "p.png"
    d = from_uint16(result.depth)
    column_steps = np.abs(np.diff(d, axis=1))
    assert np.abs(d[:, 0] - d[:, -1]).max() <= column_steps.max()  # the seam is no edge
    assert np.median(np.abs(d[:, 0] - d[:, -1])) <= 2 * np.median(column_steps) + 1e-6


# ------------------------------------------------------------------ loading


def test_loading_errors_are_clear(models, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(BackendUnavailable, match="neither an existing folder nor a hub id"):
        DepthModel.load(str(tmp_path / "no" / "such" / "folder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackendUnavailable, match="no config.json"):
        DepthModel.load(str(tmp_path / "empty"))
    with pytest.raises(BackendUnavailable, match="not in the local Hugging Face cache"):
        DepthModel.load(DEFAULT_MODEL, local_files_only=True)
    other = tmp_path / "glpn"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "glpn"}))
    with pytest.raises(BackendUnavailable, match="'glpn' model; supported are DPT, Depth Anything and ZoeDepth"):
        DepthModel.load(str(other))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "dpt"}))  # no weights, no processor
    with pytest.raises(BackendUnavailable, match="cannot load the depth model"):
        DepthModel.load(str(broken))
    with pytest.raises(BackendUnavailable, match="sees no CUDA GPU"):
        DepthModel.load(str(models["dpt"]), device="cuda")


def test_licences_are_named_and_non_commercial_ones_flagged():
    assert "Apache-2.0" in licence_notice(DEFAULT_MODEL)
    for model in ("depth-anything/Depth-Anything-V2-Large-hf", "depth-anything/Depth-Anything-V2-Base-hf"):
        assert "CC-BY-NC-4.0: non-commercial use only" in licence_notice(model)
    assert "MIT" in licence_notice("Intel/zoedepth-nyu-kitti")
    assert licence_notice("/some/folder") is None


# ------------------------------------------------------------------ input images


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width × height and whose data is a few bytes: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def test_image_conversions(tmp_path):
    from PIL import Image

    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[..., :3], rgba[..., 3] = 200, 128
    cases = {  # file → (picture, the RGB expected, the conversion named)
        "rgba.png": (Image.fromarray(rgba, "RGBA"), 100, "RGBA composited over black"),  # 200·128/255
        "grey.png": (Image.fromarray(np.full((20, 20), 77, np.uint8), "L"), 77, "L to RGB"),
        "grey16.png": (Image.fromarray(np.full((20, 20), 257 * 40, np.uint16)), 40, "16-bit grey to 8-bit RGB"),
        "palette.gif": (Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).convert("P"), None, "P to RGB"),
        "bits.png": (Image.new("1", (20, 20), 1), 255, "1 to RGB"),
        "cmyk.jpg": (Image.new("CMYK", (20, 20), (0, 0, 0, 0)), 255, "CMYK to RGB"),
    }
    for name, (picture, value, conversion) in cases.items():
        picture.save(tmp_path / name)
        rgb, info = read_image(tmp_path / name)
        assert rgb.dtype == np.uint8 and rgb.shape == (20, 20, 3) and info["conversion"] == conversion, (name, info)
        expected = np.asarray(picture.convert("RGB")) if value is None else np.full((20, 20, 3), value)
        assert np.abs(rgb.astype(int) - expected).max() <= 1, name
    transparent = Image.new("P", (20, 20), 5)  # every pixel palette index 5, which is transparent
    transparent.putpalette([90] * 768)
    transparent.save(tmp_path / "clear.png", transparency=5)
    rgb, info = read_image(tmp_path / "clear.png")
    assert (rgb == 0).all() and info["conversion"] == "P composited over black"


@pytest.mark.parametrize("case, message", [
    ("text", "not an image Pillow can read"),
    ("truncated", "damaged or truncated"),
    ("bomb", "refused as a decompression bomb"),
    ("huge", "9000x9000 is too large"),
    ("tiny", "too small"),
    ("float", "32-bit float image"),
    ("missing", "no such file"),
    ("folder", "not a file"),
])
def test_bad_images_are_refused_clearly(tmp_path, case, message):
    from PIL import Image

    path = tmp_path / f"{case}.png"
    if case == "text":
        path.write_text("hello, not an image")
    elif case == "truncated":
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:3000])
    elif case == "bomb":
        png_header_only(path, 30000, 30000)  # 900 megapixels claimed by a 100-byte file: Pillow refuses it
    elif case == "huge":
        png_header_only(path, 9000, 9000)  # under Pillow's limit, over a frame's: refused before decoding
    elif case == "tiny":
        Image.new("RGB", (8, 40)).save(path)
    elif case == "float":
        path = tmp_path / "float.tiff"
        Image.fromarray(np.zeros((20, 20), np.float32)).save(path)
    elif case == "folder":
        path.mkdir()
    with pytest.raises(ImageError, match=message):
        read_image(path)


# ------------------------------------------------------------------ the CLI verb


def run_depth(*args: str) -> int:
    try:
        return main(["--log-level", "ERROR", "depth", *args])
    except SystemExit as exc:  # argparse refuses a bad flag value
        return int(exc.code)


def test_depth_verb_writes_frames_the_library_and_export_read(models, image, tmp_path, caplog):
    from PIL import Image

    from generator.library import FrameLibrary

    Image.fromarray(image).save(tmp_path / "photo.png")
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 80, 3), dtype=np.uint8)).save(tmp_path / "pano.jpg")
    out, library = tmp_path / "out", tmp_path / "library"
    assert run_depth(str(tmp_path / "photo.png"), str(tmp_path / "pano.jpg"), "-o", str(out), "--model",
                     str(models["depth_anything_metric"]), "--library", str(library), "--views", "cube",
                     "--cue", "act 1") == 0
    for name, projection in (("photo", "perspective"), ("pano", "equirectangular")):
        meta = json.loads((out / name / "metadata.json").read_text())
        assert meta["backend_info"]["projection"] == projection and meta["params"]["cue"] == "act 1"
        assert 0 < meta["depth"]["near"] < meta["depth"]["far"] and meta["source"]["file"].startswith(name)
        assert read_depth_png(out / name / "depth.png").dtype == np.uint16
        assert sorted(p.name for p in (out / name).iterdir()) == ["depth.png", "metadata.json", "rgb.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "photo" / "rgb.png")), image)
    entries = FrameLibrary(library).find("")
    assert len(entries) == 2 and {e.cue for e in entries} == {"act 1"}
    assert main(["--log-level", "ERROR", "export", str(out / "pano"), "-o", str(tmp_path / "pano.ply"),
                 "--mapping", "metric", "--mesh-rows", "8", "--mesh-cols", "16"]) == 0
    assert (tmp_path / "pano.ply").stat().st_size > 0
    # a second run refuses to overwrite, and changes nothing
    before = (out / "photo" / "depth.png").read_bytes()
    assert run_depth(str(tmp_path / "photo.png"), "-o", str(out / "photo"), "--model",
                     str(models["dpt"]), "--no-library") == 2
    assert "already there; pass --overwrite" in caplog.text
    assert (out / "photo" / "depth.png").read_bytes() == before
    assert run_depth(str(tmp_path / "photo.png"), "-o", str(out / "photo"), "--model", str(models["dpt"]),
                     "--no-library", "--overwrite") == 0
    assert (out / "photo" / "depth.png").read_bytes() != before


def test_depth_verb_checks_everything_before_writing(models, image, tmp_path, capsys, caplog):
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_text("not an image")
    out, library = tmp_path / "out", tmp_path / "library"
    model = ["--model", str(models["dpt"]), "--library", str(library)]
    assert run_depth(str(tmp_path / "good.png"), str(tmp_path / "bad.png"), "-o", str(out), *model) == 2
    assert "bad.png: not an image" in caplog.text
    assert not out.exists() and not any(library.glob("2*"))  # nothing written, nothing in the library
    (tmp_path / "b").mkdir()
    Image.fromarray(image).save(tmp_path / "b" / "good.jpg")
    assert run_depth(str(tmp_path / "good.png"), str(tmp_path / "b" / "good.jpg"), "-o", str(out), *model) == 2
    assert "would both write" in caplog.text
    assert run_depth(str(tmp_path / "good.png"), "-o", str(out), "--pano", "sometimes", *model) == 2
    assert "pano: 'sometimes' is not a choice" in capsys.readouterr().err
    assert run_depth(str(tmp_path / "good.png"), "-o", str(out), "--model", str(tmp_path / "nowhere")) == 2
    assert "neither an existing folder nor a hub id" in caplog.text
    assert not out.exists()
