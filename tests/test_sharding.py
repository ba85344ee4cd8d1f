"""Batch verbs over two processes (gloo on the CPU, forked as tests/train_ddp_worker.py forks training): the
split, `evaluate text2rgbd` and `pregenerate` equal to one process, and the frame library and the evaluation's
image cache with two writers adding at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from generator.evaluate import text2rgbd
from generator.evaluate.cache import ImageCache
from generator.library import JOURNAL, PARTIAL, FrameLibrary
from generator.sharding import Shard, from_environment, join
from tests import tiny_clip, tiny_depth, tiny_ldm3d
from tests.evaluate_fixtures import TinyFeatures
from tests.test_evaluate_commands import tools as evaluation_tools
from tests.test_evaluate_commands import write_images
from tests.train_ddp_worker import fork_ranks, rank_environment

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FORK = multiprocessing.get_context("fork") if sys.platform != "win32" else None
needs_fork = pytest.mark.skipif(FORK is None, reason="the ranks are forked (as the training test forks them)")


def _rank(rank: int, port: int, target, args) -> None:
    rank_environment(rank, port)
    code = target(*args)
    sys.exit(code or 0)


def run_two_ranks(target, *args, timeout: float = 240) -> list[int | None]:
    """Fork ranks 0 and 1 of a 2-process run of ``target(*args)``; their exit codes."""
    return fork_ranks(_rank, (target, args), timeout)


def run_together(target, args_per_process: list[tuple], timeout: float = 120) -> list[int | None]:
    """Start one forked process per argument tuple at once; their exit codes."""
    processes = [FORK.Process(target=target, args=args) for args in args_per_process]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=timeout)
    return [p.exitcode for p in processes]


# ------------------------------------------------------------------ the split


def test_items_are_split_by_index_and_the_environment_is_checked():
    assert Shard().mine("abcde") == list("abcde") and not Shard().sharded and Shard().main
    halves = [Shard(rank, 2).mine(list(range(7))) for rank in range(2)]
    assert halves == [[0, 2, 4, 6], [1, 3, 5]]
    assert [Shard(rank, 3).mine(list("abcdefg")) for rank in range(3)] == [list("adg"), list("be"), list("cf")]
    assert from_environment({}) == Shard()
    assert Shard(1, 2).device("cpu") == "cpu" and Shard().device("auto") == "auto"
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    assert from_environment(env) == Shard(1, 2, 1) and not from_environment(env).main
    with pytest.raises(ValueError, match="RANK='x': expected a whole number"):
        from_environment({**env, "RANK": "x"})
    with pytest.raises(ValueError, match="need 0 <= RANK < WORLD_SIZE"):
        from_environment({**env, "RANK": "2"})
    with pytest.raises(ValueError, match="MASTER_PORT not set: start the processes with accelerate launch"):
        from_environment({k: v for k, v in env.items() if k != "MASTER_PORT"})


def _count_ranks(out: Path) -> int:
    with join() as shard:
        total = shard.total(shard.rank + 1)
        (out / f"{shard.rank}.json").write_text(json.dumps({"total": total, "mine": shard.mine(list(range(5)))}))
    return 0


@needs_fork
def test_two_processes_meet_and_add_up(tmp_path):
    assert run_two_ranks(_count_ranks, tmp_path, timeout=60) == [0, 0]
    seen = [json.loads((tmp_path / f"{rank}.json").read_text()) for rank in range(2)]
    assert seen == [{"total": 3, "mine": [0, 2, 4]}, {"total": 3, "mine": [1, 3]}]


# ------------------------------------------------------------------ two writers


def _image(seed: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)


def _add_frames(root: Path, writer: int, count: int) -> None:
    library = FrameLibrary(root)
    for k in range(count):
        seed = writer * 1000 + k
        header = {"frame_id": f"20261207T0000{writer:02d}.{k:06d}Z-0000abcd", "created_at": 1.0e9 + seed,
                  "prompt": f"writer {writer}", "params": {"seed": seed, "cue": f"w{writer}-{k}"}}
        library.save(header, _image(seed, (24, 32, 3), np.uint8), _image(seed, (24, 32), np.uint16))
        if k % 4 == 0:
            FrameLibrary(root)  # a start beside the writes: rebuilds, may rewrite the journal


@needs_fork
def test_the_library_keeps_every_frame_when_two_processes_add_at_once(tmp_path):
    (tmp_path / JOURNAL).write_text("torn\n")  # out of date: every start rewrites it while the other appends
    assert run_together(_add_frames, [(tmp_path, writer, 24) for writer in range(2)]) == [0, 0]
    library = FrameLibrary(tmp_path)
    assert len(library) == 48 and library.skipped == [] and library.verify() == []
    for entry in library.find(limit=100):
        writer, seed = int(entry.prompt.split()[1]), entry.params["seed"]
        header, rgb, depth = library.load(entry.frame_id)
        assert header["params"]["cue"] == entry.cue and seed // 1000 == writer
        np.testing.assert_array_equal(rgb, _image(seed, (24, 32, 3), np.uint8))
        np.testing.assert_array_equal(depth, _image(seed, (24, 32), np.uint16))
    lines = [json.loads(line) for line in (tmp_path / JOURNAL).read_text().splitlines()]  # every line whole
    assert {line["add"]["frame_id"] for line in lines if "add" in line} == {e.frame_id for e in library.find(limit=100)}
    assert list((tmp_path / PARTIAL).iterdir()) == []


def test_a_rebuild_leaves_a_write_under_way_alone(tmp_path, monkeypatch):
    import generator.library as library_module

    library = FrameLibrary(tmp_path)
    seen, rename = {}, os.rename

    def rename_after_a_rebuild(staging, final):  # another process starts while this frame is being written
        FrameLibrary(tmp_path)
        seen["staging kept"] = Path(staging).is_dir()
        rename(staging, final)

    monkeypatch.setattr(library_module.os, "rename", rename_after_a_rebuild)
    header = {"frame_id": "20261207T000000.000001Z-0000abcd", "created_at": 1.0e9, "prompt": "p", "params": {}}
    library.save(header, _image(1, (8, 8, 3), np.uint8), _image(1, (8, 8), np.uint16))
    monkeypatch.undo()
    assert seen == {"staging kept": True} and len(FrameLibrary(tmp_path)) == 1


def _cache_writes(root: Path, writer: int) -> None:
    cache = ImageCache(root)
    for k in range(12):  # keys 0-5 written by both, the others by one
        key = f"{k:02d}" * 32 if k < 6 else f"{writer}{k:02d}" * 21 + "x"
        cache.save(key, _image(k, (16, 16, 3), np.uint8), _image(k, (16, 16), np.uint16), {"k": k})
        cache.write_array(key, "d.npy", np.full(4, k))


@needs_fork
def test_the_image_cache_survives_two_writers_of_the_same_keys(tmp_path):
    assert run_together(_cache_writes, [(tmp_path, writer, ) for writer in range(2)]) == [0, 0]
    cache = ImageCache(tmp_path)
    keys = [f"{k:02d}" * 32 for k in range(6)] + [f"{w}{k:02d}" * 21 + "x" for w in range(2) for k in range(6, 12)]
    for key in keys:
        k = json.loads((cache.folder(key) / "meta.json").read_text())["k"]
        rgb, depth = cache.load(key)
        np.testing.assert_array_equal(np.load(cache.extra(key, "d.npy")), np.full(4, k))
        np.testing.assert_array_equal(rgb, _image(k, (16, 16, 3), np.uint8))
        np.testing.assert_array_equal(depth, _image(k, (16, 16), np.uint16))
    assert sorted(p.name for p in tmp_path.glob("*/*")) == sorted(keys)  # no partial or stale folder left


# ------------------------------------------------------------------ the verbs, one process against two


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from generator.backends.ldm3d import LDM3DBackend
    from generator.estimators.model import DepthModel
    from generator.evaluate.clip import ClipScorer

    root = tmp_path_factory.mktemp("shard-models")
    ldm3d = tiny_ldm3d.build(root / "ldm3d", vae_channels=4)
    return {"ldm3d": ldm3d, "backend": LDM3DBackend.load(str(ldm3d), device="cpu"),
            "zoe": DepthModel.load(str(tiny_depth.build("zoedepth", root / "zoe")), device="cpu"),
            "clip": ClipScorer.load(str(tiny_clip.build(root / "clip")), device="cpu")}


def _options(models, tmp_path: Path, output: str) -> text2rgbd.Options:
    return text2rgbd.Options(model=str(models["ldm3d"]), captions=["a misty forest", "a room", "the desert",
                                                                   "a harbour at night", "snow"],
                             reference=sorted((tmp_path / "reference").glob("*.png")), output=tmp_path / output,
                             cache=tmp_path / f"cache-{output}", guidance=[1.0, 5.0], steps=[2], width=64,
                             height=64, splits=2)


def _evaluate_rank(models, tmp_path: Path) -> int:
    calls: list = []
    with join() as shard:
        tools = evaluation_tools(models, calls)
        if not shard.main:
            tools.features = tools.clip = None  # as the CLI loads them: only the main process scores
        result = text2rgbd.run(_options(models, tmp_path, "two"), tools, shard)
    (tmp_path / f"rank-{shard.rank}.json").write_text(json.dumps({"calls": [c["seed"] for c in calls],
                                                                  "result": result is not None}))
    return 0


@needs_fork
def test_evaluate_over_two_processes_reports_what_one_process_reports(models, tmp_path):
    write_images(tmp_path / "reference", 6)
    options = _options(models, tmp_path, "one")
    one = text2rgbd.run(options, evaluation_tools(models))
    assert run_two_ranks(_evaluate_rank, models, tmp_path) == [0, 0]
    ranks = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["result"] and not ranks[1]["result"]  # only the main process reports
    assert sorted(ranks[0]["calls"] + ranks[1]["calls"]) == sorted(list(range(5)) * 2)  # each image made once
    assert ranks[0]["calls"] == [0, 2, 4, 1, 3] and ranks[1]["calls"] == [1, 3, 0, 2, 4]  # job i by rank i % 2
    two = json.loads((tmp_path / "two" / "results.json").read_text())
    assert two["generated_now"] == one["generated_now"] == 10
    for ours, theirs in zip(two["results"], one["results"], strict=True):
        assert ours["images"] == theirs["images"] == 5
        for metric in ("fid", "is", "clip", "abs_rel", "rmse", "delta1"):
            assert ours[metric] == pytest.approx(theirs[metric], rel=1e-6, abs=1e-9), metric
    reference = text2rgbd.reference_statistics(options.reference, TinyFeatures(), options.cache)[0]
    half = text2rgbd.score_setting(options, text2rgbd.plan(options)[:5:2], ImageCache(options.output / "images"),
                                   evaluation_tools(models), reference)  # one process's share of a setting
    assert abs(half["fid"] - one["results"][0]["fid"]) > 1e-3 * one["results"][0]["fid"]  # the tolerance bites
    assert run_two_ranks(_evaluate_rank, models, tmp_path) == [0, 0]  # resumed: nothing generated again
    assert all(json.loads((tmp_path / f"rank-{r}.json").read_text())["calls"] == [] for r in range(2))
    assert json.loads((tmp_path / "two" / "results.json").read_text())["results"] == two["results"]


def _cli_rank(argv: list[str]) -> int:
    from generator.__main__ import main

    return main(argv)


def _library_frames(root: Path) -> dict[tuple, tuple]:
    library = FrameLibrary(root)
    frames = {}
    for entry in library.find(limit=1000):
        _header, rgb, depth = library.load(entry.frame_id)
        frames[(entry.cue, entry.prompt, entry.params["seed"])] = (rgb, depth)
    return frames


@needs_fork
def test_pregenerate_over_two_processes_fills_the_library_as_one_process_does(models, tmp_path, capsys):
    from generator.__main__ import main

    cues = tmp_path / "show.toml"
    cues.write_text("[defaults]\nsteps = 2\nwidth = 64\nheight = 64\n" + "".join(
        f'[[cue]]\nname = "c{k}"\nprompt = "scene {k}"\nseed = {k + 10}\n' for k in range(5)), encoding="utf-8")
    common = [str(cues), "--model", str(models["ldm3d"]), "--device", "cpu"]
    assert main(["pregenerate", *common, "--library", str(tmp_path / "one")]) == 0
    assert run_two_ranks(_cli_rank, ["pregenerate", *common, "--library", str(tmp_path / "two")]) == [0, 0]
    one, two = _library_frames(tmp_path / "one"), _library_frames(tmp_path / "two")
    assert sorted(two) == sorted(one) == [(f"c{k}", f"scene {k}", k + 10) for k in range(5)]
    for key, (rgb, depth) in one.items():
        np.testing.assert_array_equal(two[key][0], rgb)
        np.testing.assert_array_equal(two[key][1], depth)
    capsys.readouterr()
    assert run_two_ranks(_cli_rank, ["pregenerate", *common, "--library", str(tmp_path / "two")]) == [0, 0]
    assert len(_library_frames(tmp_path / "two")) == 5  # resumed: every cue found done, none made again


@needs_fork
def test_depth_over_two_processes_writes_what_one_process_writes(tmp_path):
    from generator.__main__ import main
    from td_bridge.depth import read_depth_png

    model = tiny_depth.build("depth_anything", tmp_path / "tiny")
    images = [str(p) for p in sorted(write_images(tmp_path / "photos", 3, size=(48, 32)).glob("*.png"))]
    common = ["depth", *images, "--model", str(model), "--device", "cpu", "--no-library"]
    assert main([*common, "-o", str(tmp_path / "one")]) == 0
    assert run_two_ranks(_cli_rank, [*common, "-o", str(tmp_path / "two")]) == [0, 0]
    for name in ("0", "1", "2"):  # one folder per image, by file name
        np.testing.assert_array_equal(read_depth_png(tmp_path / "two" / name / "depth.png"),
                                      read_depth_png(tmp_path / "one" / name / "depth.png"))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["0", "1", "2"]
