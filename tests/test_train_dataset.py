"""`dataset build`: sources, exact 16-bit depth through the VAE packing, resuming, parts, reported skips."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from generator.__main__ import main
from generator.backends.demo import DemoBackend
from generator.frames import generate_into_library
from generator.images import write_rgb_png
from generator.library import FrameLibrary
from generator.train.dataset import DatasetError, RGBDDataset, Spec, build, fit_rgb, read_manifest
from generator.train.packing import depth_map, pack, unpack
from generator.train.sources import SourceError, open_source
from td_bridge.depth import read_depth_png
from td_bridge.params import validate_generation


def demo_library(root, count=4, size=64):
    library = FrameLibrary(root)
    for seed in range(count):
        params = validate_generation({"prompt": f"a misty forest {seed}", "seed": seed, "steps": 2, "width": size,
                                      "height": size})
        generate_into_library(DemoBackend(), params, library)
    return library


class StandIn:
    """A depth estimator stand-in: brightness as depth; counts its calls; fails on call ``fail_at``."""

    def __init__(self, fail_at=None):
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, rgb):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("power cut")
        return (rgb.astype(np.uint16).sum(axis=2) * 85).astype(np.uint16)


def image_folder(root, rows, good=5):
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(good):
        write_rgb_png(root / f"img{i}.png", rng.integers(0, 256, (40 + 8 * i, 48, 3), dtype=np.uint8))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    write_rgb_png(root / "tiny.png", np.zeros((20, 20, 3), np.uint8))
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


ROWS = [{"file_name": f"img{i}.png", "text": f"caption {i}"} for i in range(5)] + [
    {"file_name": "broken.png", "text": "x"}, {"file_name": "tiny.png", "text": "x"},
    {"file_name": "missing.png", "text": "x"}, {"file_name": "../outside.png", "text": "x"}]


@pytest.mark.parametrize("channels", [6, 4])
def test_library_frames_round_trip_their_depth_exactly_through_the_packing(tmp_path, channels):
    library = demo_library(tmp_path / "lib")
    summary = build(open_source(f"library:{tmp_path / 'lib'}"), tmp_path / "ds", Spec(channels, 64, 64),
                    progress=False)
    assert (summary.written, summary.skipped) == (4, 0)
    data = RGBDDataset(tmp_path / "ds")
    assert len(data) == 4 and data.channels == channels
    for i, entry in enumerate(sorted(library.find(), key=lambda e: e.frame_id)):
        _header, rgb, depth = library.load(entry.frame_id)
        item = data[i]
        assert item["caption"] == entry.prompt
        assert item["pixel_values"].shape == (channels, 64, 64)
        assert float(item["pixel_values"].min()) >= -1 and float(item["pixel_values"].max()) <= 1
        back_rgb, back_depth = unpack(item["pixel_values"])
        np.testing.assert_array_equal(back_rgb, rgb)
        np.testing.assert_array_equal(back_depth, depth)
        assert (depth % 257 != 0).any()  # values 8 bits cannot hold: the low byte matters
        differentiable = ((depth_map(item["pixel_values"][None]) + 1) / 2 * 65535).round()
        np.testing.assert_array_equal(differentiable[0, 0].numpy().astype(np.uint16), depth)


def test_every_16_bit_value_survives_both_packings():
    depth = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    rgb = np.zeros((256, 256, 3), np.uint8)
    for channels in (6, 4):
        np.testing.assert_array_equal(unpack(pack(rgb, depth, channels))[1], depth)


def test_image_folder_with_estimator_skips_bad_images_and_resumes(tmp_path):
    folder = image_folder(tmp_path / "images", ROWS)
    spec = Spec(4, 32, 32, shard_size=3, min_side=24)
    with pytest.raises(RuntimeError, match="power cut"):
        build(open_source(str(folder)), tmp_path / "ds", spec, estimator=StandIn(fail_at=3), progress=False)
    resumed = StandIn()
    summary = build(open_source(str(folder)), tmp_path / "ds", spec, estimator=resumed, progress=False)
    assert resumed.calls == 3 and (summary.written, summary.already, summary.skipped) == (3, 2, 4)
    skipped = [json.loads(line) for path in sorted((tmp_path / "ds").glob("shard-*/skipped.jsonl"))
               for line in path.read_text().splitlines()]
    reasons = {r["source"]: r["reason"] for r in skipped}
    assert set(reasons) == {"broken.png", "tiny.png", "missing.png", "../outside.png"}
    assert "not an image" in reasons["broken.png"] and "under 24 px" in reasons["tiny.png"]
    assert "no such file" in reasons["missing.png"] and "outside" in reasons["../outside.png"]
    again = StandIn()
    summary = build(open_source(str(folder)), tmp_path / "ds", spec, estimator=again, progress=False)
    assert again.calls == 0 and (summary.written, summary.already) == (0, 9)
    data = RGBDDataset(tmp_path / "ds")
    assert [data.read(i)[2] for i in range(len(data))] == [f"caption {i}" for i in range(5)]
    rgb, depth, _ = data.read(4)
    assert rgb.shape == (32, 32, 3) and depth.dtype == np.uint16
    np.testing.assert_array_equal(depth, StandIn()(rgb))  # depth is estimated on the image as stored


def test_a_line_cut_short_by_a_crash_is_redone(tmp_path):
    folder = image_folder(tmp_path / "images", ROWS[:3])
    build(open_source(str(folder)), tmp_path / "ds", Spec(6, 32, 32), estimator=StandIn(), progress=False)
    items = tmp_path / "ds" / "shard-00000" / "items.jsonl"
    items.write_text(items.read_text()[:-20])
    estimator = StandIn()
    summary = build(open_source(str(folder)), tmp_path / "ds", Spec(6, 32, 32), estimator=estimator, progress=False)
    assert (estimator.calls, summary.written, summary.already) == (1, 1, 2)
    assert len(RGBDDataset(tmp_path / "ds")) == 3


def test_parts_share_a_source_without_overlap(tmp_path):
    folder = image_folder(tmp_path / "images", ROWS[:5])
    counts = []
    for part in ((0, 2), (1, 2)):
        summary = build(open_source(str(folder)), tmp_path / "ds", Spec(4, 32, 32, shard_size=2),
                        estimator=StandIn(), part=part, progress=False)
        counts.append(summary.written)
    assert counts == [3, 2]
    data = RGBDDataset(tmp_path / "ds")
    assert [r["index"] for _s, r in data.items] == [0, 1, 2, 3, 4]


def test_csv_metadata_and_caption_column(tmp_path):
    folder = image_folder(tmp_path / "images", [])
    (folder / "metadata.jsonl").unlink()
    (folder / "metadata.csv").write_text("file_name,caption\nimg0.png,\"a room, at night\"\nimg1.png,desert\n")
    build(open_source(str(folder)), tmp_path / "ds", Spec(6, 32, 32), estimator=StandIn(), progress=False)
    assert [RGBDDataset(tmp_path / "ds").read(i)[2] for i in range(2)] == ["a room, at night", "desert"]
    with pytest.raises(SourceError, match="no caption column 'title'"):
        open_source(str(folder), caption_column="title")


def test_pano_size_crops_to_two_to_one():
    rgb = np.zeros((60, 60, 3), np.uint8)
    rgb[:15] = 255  # the top quarter is cut off by the centre crop to 2:1
    fitted = fit_rgb(rgb, 64, 32)
    assert fitted.shape == (32, 64, 3) and fitted.max() == 0


def test_bad_sources_and_datasets_get_clear_errors(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no metadata.jsonl or metadata.csv"):
        open_source(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "x"}\n{oops\n')
    with pytest.raises(SourceError, match="line 2: not JSON"):
        open_source(str(bad))
    (bad / "metadata.jsonl").write_text('{"image": "a.png", "text": "x"}\n')
    with pytest.raises(SourceError, match="no file_name column"):
        open_source(str(bad))
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # as where the package is not installed
    with pytest.raises(SourceError, match="`datasets` package"):
        open_source("hf:someone/captions")
    with pytest.raises(SourceError, match="no frame library at"):
        open_source(f"library:{tmp_path / 'nolib'}")
    with pytest.raises(SourceError, match="holds no frames"):
        open_source(f"library:{tmp_path / 'empty'}")
    with pytest.raises(DatasetError, match="not a dataset made by"):
        RGBDDataset(tmp_path / "empty")
    with pytest.raises(ValueError, match="multiple of 8"):
        Spec(6, 30, 32)
    folder = image_folder(tmp_path / "images", ROWS[:2])
    build(open_source(str(folder)), tmp_path / "ds", Spec(6, 32, 32), estimator=StandIn(), progress=False)
    with pytest.raises(DatasetError, match="other settings .*channels 6, now 4"):
        build(open_source(str(folder)), tmp_path / "ds", Spec(4, 32, 32), estimator=StandIn(), progress=False)
    assert read_manifest(tmp_path / "ds")["channels"] == 6
    assert main(["dataset", "build", str(tmp_path / "empty"), "-o", str(tmp_path / "x")]) == 2
    assert main(["dataset", "build", "-o", str(tmp_path / "x")]) == 2
    assert main(["dataset", "build", "library:", "--part", "3/2", "-o", str(tmp_path / "x")]) == 2


def test_cli_builds_from_the_library(tmp_path, capsys):
    demo_library(tmp_path / "lib", count=2)
    code = main(["dataset", "build", "--from-library", "--library", str(tmp_path / "lib"), "--variant", "ldm3d-4c",
                 "--width", "64", "--height", "64", "-o", str(tmp_path / "ds")])
    assert code == 0 and "wrote 2 items, skipped 0" in capsys.readouterr().out
    assert read_manifest(tmp_path / "ds")["channels"] == 4
    depth = read_depth_png(next((tmp_path / "ds" / "shard-00000").glob("*.depth.png")))
    assert depth.dtype == np.uint16 and depth.shape == (64, 64)


def test_cli_estimates_depth_with_the_estimator_module(tmp_path, capsys):
    import tiny_depth

    model = tiny_depth.build("dpt", tmp_path / "dpt")
    folder = image_folder(tmp_path / "images", ROWS[:2])
    code = main(["dataset", "build", str(folder), "--estimator", str(model), "--device", "cpu", "--width", "32",
                 "--height", "32", "-o", str(tmp_path / "ds")])
    assert code == 0 and "wrote 2 items" in capsys.readouterr().out
    assert read_manifest(tmp_path / "ds")["depth"] == str(model)
    depth = RGBDDataset(tmp_path / "ds").read(0)[1]
    assert depth.min() == 0 and depth.max() == 65535  # relative depth spread over the 16-bit range


class FakeDatasets:
    """The few parts of the `datasets` API the source uses (not installed here): load_dataset / load_from_disk
    returning a Dataset (column_names, len, rows with PIL images, a column by name) or a DatasetDict."""

    class DatasetDict(dict):
        pass

    class Dataset:
        def __init__(self, rows):
            self.rows, self.column_names = rows, list(rows[0])

        def __len__(self):
            return len(self.rows)

        def __getitem__(self, key):
            return [r[key] for r in self.rows] if isinstance(key, str) else self.rows[key]

    def __init__(self, rows):
        self.rows, self.asked = rows, []

    def load_dataset(self, name, split):
        self.asked.append((name, split))
        return self.Dataset(self.rows)

    def load_from_disk(self, path):
        return self.DatasetDict(validation=self.Dataset(self.rows))


def test_hugging_face_datasets_source(tmp_path, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(1)
    rows = [{"image": Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)), "caption": f"c{i}"}
            for i in range(3)] + [{"image": Image.new("F", (48, 48)), "caption": "float image"}]
    fake = FakeDatasets(rows)
    monkeypatch.setitem(__import__("sys").modules, "datasets", fake)
    source = open_source("hf:someone/rooms", split="train")
    assert fake.asked == [("someone/rooms", "train")]
    summary = build(source, tmp_path / "ds", Spec(6, 32, 32), estimator=StandIn(), progress=False)
    assert (summary.written, summary.skipped) == (3, 1)
    assert [RGBDDataset(tmp_path / "ds").read(i)[2] for i in range(3)] == ["c0", "c1", "c2"]
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "dataset_dict.json").write_text("{}")
    with pytest.raises(SourceError, match=f"^{re.escape(str(saved))} has splits validation, not 'train'"):
        open_source(str(saved))
    assert len(list(open_source(str(saved), split="validation").items())) == 4
    with pytest.raises(SourceError, match="no image column 'picture'"):
        open_source("hf:someone/rooms", image_column="picture")
