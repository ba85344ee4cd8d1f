"""``evaluate text2rgbd`` end to end on the tiny LDM3D with a tiny CLIP, a tiny ZoeDepth and a small injected
feature extractor; ``evaluate autoencoder`` on the tiny VAE; bad inputs through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from generator.__main__ import main
from generator.estimators.inputs import ImageError
from generator.evaluate import autoencoder, text2rgbd
from generator.evaluate.captions import read_captions
from generator.evaluate.cli import _reference_depth
from generator.evaluate.clip import ClipScorer
from tests import tiny_clip, tiny_depth, tiny_ldm3d
from tests.evaluate_fixtures import TinyFeatures

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from generator.backends.ldm3d import LDM3DBackend
    from generator.estimators.model import DepthModel

    root = tmp_path_factory.mktemp("eval-models")
    ldm3d = tiny_ldm3d.build(root / "ldm3d", vae_channels=4)
    zoe_folder, clip_folder = tiny_depth.build("zoedepth", root / "zoe"), tiny_clip.build(root / "clip")
    return {"ldm3d": ldm3d, "backend": LDM3DBackend.load(str(ldm3d), device="cpu"), "zoe_folder": zoe_folder,
            "zoe": DepthModel.load(str(zoe_folder), device="cpu"), "clip_folder": clip_folder,
            "clip": ClipScorer.load(str(clip_folder), device="cpu")}


def tools(models, calls: list | None = None, views: str = "dense") -> text2rgbd.Tools:
    def generate(params):
        if calls is not None:
            calls.append(params)
        return models["backend"].generate(params, lambda s, t: None, lambda: False)

    return text2rgbd.Tools(generate=generate, features=TinyFeatures(), clip=models["clip"],
                           reference_depth=_reference_depth(models["zoe"], views), depth_model="tiny-zoe",
                           clip_model="tiny-clip")


def write_images(folder, count, size=(40, 32), seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(folder / f"{k}.png")
    return folder


def test_a_sweep_end_to_end_writes_the_report_and_plots_and_resumes(models, tmp_path):
    reference = write_images(tmp_path / "reference", 5)
    options = text2rgbd.Options(model=str(models["ldm3d"]), captions=["a misty forest", "a room", "the desert"],
                                reference=sorted(reference.glob("*.png")), output=tmp_path / "out",
                                cache=tmp_path / "cache", guidance=[1.0, 5.0], steps=[2, 3], width=64, height=64,
                                splits=3)
    calls: list = []
    result = text2rgbd.run(options, tools(models, calls))
    assert len(calls) == 12 and result["generated_now"] == 12 and not result["reference_cached"]
    assert [(r["guidance"], r["steps"]) for r in result["results"]] == [(1.0, 2), (1.0, 3), (5.0, 2), (5.0, 3)]
    for row in result["results"]:
        assert row["images"] == 3 and row["fid"] > 0 and 1.0 <= row["is"] <= 6.0 and row["clip"] >= 0
        assert row["abs_rel"] >= 0 and row["rmse"] >= 0 and 0 <= row["delta1"] <= 1
    assert len({row["fid"] for row in result["results"]}) == 4  # different settings, different images
    stored = json.loads((tmp_path / "out" / "results.json").read_text())
    assert stored["results"] == result["results"] and stored["published"]["fid"] == 27.82
    markdown = (tmp_path / "out" / "report.md").read_text()
    assert "27.82" in markdown and "0.0911" in markdown and "tiny-clip" in markdown
    for name, panels in (("fid_is_vs_guidance.png", 2), ("fid_is_vs_steps.png", 2), ("clip_vs_guidance.png", 1)):
        with Image.open(tmp_path / "out" / name) as image:
            assert image.size == (480 * panels, 340)
            assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 5  # lines and text were drawn
    calls.clear()
    again = text2rgbd.run(options, tools(models, calls))
    assert calls == [] and again["generated_now"] == 0 and again["reference_cached"]
    assert again["results"] == result["results"]


def test_a_panorama_size_scores_mare_and_the_card_numbers(models, tmp_path):
    reference = write_images(tmp_path / "reference", 3, size=(64, 32))
    options = text2rgbd.Options(model=str(models["ldm3d"]), captions=["a 360 degree panorama", "a room"],
                                reference=sorted(reference.glob("*.png")), output=tmp_path / "out",
                                cache=tmp_path / "cache", guidance=[5.0], steps=[2], width=128, height=64,
                                splits=2)
    result = text2rgbd.run(options, tools(models, views="cube"))  # 6 views: 4x fewer estimates than dense
    row = result["results"][0]
    assert result["pano"] and row["mare"] >= 0 and "abs_rel" not in row
    assert result["published"]["mare"] == 1.54 and "118.07" in (tmp_path / "out" / "report.md").read_text()


def test_captions_from_text_and_coco_json(tmp_path):
    text = tmp_path / "c.txt"
    text.write_text("a room\n\n  the   desert \nnight\n", encoding="utf-8")
    assert read_captions(text) == ["a room", "the desert", "night"] and read_captions(text, 2) == ["a room",
                                                                                                   "the desert"]
    coco = tmp_path / "captions_val2014.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": 9, "id": 5, "caption": "b"},
                                                {"image_id": 3, "id": 7, "caption": "a second"},
                                                {"image_id": 3, "id": 2, "caption": "a first"}]}))
    assert read_captions(coco) == ["a first", "b"]
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="holds no captions"):
        read_captions(tmp_path / "empty.txt")
    with pytest.raises(ValueError, match="more captions than"):
        read_captions(text, 4)
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_captions(tmp_path / "bad.json")


def run_cli(capsys, *argv):
    code = main(["evaluate", *argv])
    return code, capsys.readouterr().err


def test_bad_inputs_give_clear_errors(tmp_path, capsys, caplog):
    captions = tmp_path / "c.txt"
    captions.write_text("a room\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "weights.pth").write_bytes(b"")  # only its existence is checked before the model fails to load
    base = ["text2rgbd", "--captions", str(captions), "-o", str(tmp_path / "out"), "--offline",
            "--inception-weights", str(tmp_path / "weights.pth")]
    cases = [
        (base + ["--model", "x", "--reference", str(tmp_path / "empty")], "folder holds no images"),
        (base + ["--model", "x", "--reference", str(tmp_path / "absent")], "no such file or folder"),
        (["text2rgbd", "--captions", str(tmp_path / "empty"), "-o", str(tmp_path / "o"), "--model", "x",
          "--reference", str(tmp_path)], "no such captions file"),
        (base + ["--model", str(tmp_path / "no-model"), "--reference", str(write_images(tmp_path / "r", 2))],
         "no-model"),
    ]
    cases.append((base + ["--model", "x", "--reference", str(tmp_path / "r"), "--splits", "0"], "--splits must be"))
    cases.append((base[:-1] + [str(tmp_path / "none.pth"), "--model", "x", "--reference", str(tmp_path / "r")],
                  "none.pth: no such Inception weights file"))
    for argv, message in cases:
        caplog.clear()
        code, _ = run_cli(capsys, *argv)
        assert code == 2 and message in caplog.text, (argv, caplog.text)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ImageError, match="broken.png: not an image Pillow can read"):
        text2rgbd.reference_statistics([tmp_path / "broken.png"], TinyFeatures(), tmp_path / "cache")


def test_autoencoder_reconstruction_metrics_and_mismatched_frames(models, tmp_path):
    from generator.estimators.command import write_frame_folder

    frames = tmp_path / "frames"
    backend = models["backend"]
    for k, prompt in enumerate(["a room", "a misty forest", "the desert"]):
        params = text2rgbd._params(text2rgbd.Options(model="m", captions=[prompt], reference=[], output=tmp_path,
                                                     cache=tmp_path, width=72, height=64, steps=[2]),
                                   prompt, k, 5.0, 2)
        frame = backend.generate(params, lambda s, t: None, lambda: False)
        write_frame_folder(frames / f"f{k}", {"k": k}, frame.rgb, frame.depth)
    items = autoencoder.read_items([frames], None)
    assert len(items) == 3
    vae = autoencoder.load_autoencoder(str(models["ldm3d"]), "cpu", offline=True)
    result = autoencoder.run([str(models["ldm3d"]), str(models["ldm3d"] / "vae")], items, TinyFeatures(),
                             tmp_path / "out", lambda m: autoencoder.load_autoencoder(m, "cpu", True))
    first, second = result["results"]
    assert first["rfid"] > 0 and 0 < first["psnr"] < 100 and -1 <= first["ssim"] <= 1
    assert {k: v for k, v in first.items() if k != "model"} == {k: v for k, v in second.items() if k != "model"}
    assert "rFID" in (tmp_path / "out" / "report.md").read_text()
    assert vae.config.out_channels == 4
    Image.fromarray(np.zeros((10, 12), dtype=np.uint16)).save(frames / "f0" / "depth.png")
    with pytest.raises(ValueError, match="rgb.png is 72x64 but depth.png 12x10"):
        autoencoder.read_items([frames / "f0"], None)
    with pytest.raises(ValueError, match="needs a depth estimator"):
        autoencoder.read_items([write_images(tmp_path / "plain", 1) / "0.png"], None)


def test_both_commands_through_the_cli_load_every_network_from_folders(models, tmp_path, capsys, monkeypatch):
    import torch

    from generator.evaluate import inception

    weights = tmp_path / inception.WEIGHTS_FILE
    torch.manual_seed(0)
    torch.save(inception.FIDInceptionV3().state_dict(), weights)  # random weights in the public file's layout
    monkeypatch.setattr(inception, "INPUT_SIZE", 75)  # real runs: 299; this keeps the CPU test short
    captions = tmp_path / "captions.txt"
    captions.write_text("a room\na misty forest\nthe desert\n")
    common = ["--inception-weights", str(weights), "--cache", str(tmp_path / "cache"), "--device", "cpu"]
    code = main(["evaluate", "text2rgbd", "--model", str(models["ldm3d"]), "--captions", str(captions), "--n", "2",
                 "--reference", str(write_images(tmp_path / "reference", 3)), "--guidance", "3", "--steps", "2",
                 "--size", "64", "--splits", "2", "--clip-model", str(models["clip_folder"]), "--depth-model",
                 str(models["zoe_folder"]), "-o", str(tmp_path / "t2"), *common])
    assert code == 0
    result = json.loads((tmp_path / "t2" / "results.json").read_text())
    assert result["features"].startswith("fid-inception-v3:") and result["results"][0]["images"] == 2
    assert result["clip_model"] == str(models["clip_folder"]) and result["align"] == "disparity"
    frames = sorted(p.parent for p in (tmp_path / "t2" / "images").rglob("meta.json"))
    for frame in frames:  # the cached generations, as frame folders for the autoencoder command
        (frame / "metadata.json").write_text((frame / "meta.json").read_text())
    plain = write_images(tmp_path / "plain", 1, size=(64, 64)) / "0.png"  # its depth from the estimator
    dpt = tiny_depth.build("dpt", tmp_path / "dpt")
    code = main(["evaluate", "autoencoder", "--model", str(models["ldm3d"]), "--images", *map(str, frames),
                 str(plain), "--depth-model", str(dpt), "-o", str(tmp_path / "ae"), *common])
    assert code == 0
    result = json.loads((tmp_path / "ae" / "results.json").read_text())
    row = result["results"][0]
    assert row["images"] == 3 and row["rfid"] >= 0 and row["psnr"] > 0 and result["images"][-1] == str(plain)
    assert "wrote" in capsys.readouterr().out
