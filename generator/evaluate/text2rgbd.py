"""``evaluate text2rgbd``: generate for captions over a sweep of guidance scales × step counts, then FID / IS
against a reference image set, CLIP similarity, and depth against a reference estimator; a report with plots.

Everything that loads a network comes in through :class:`Tools`, so tests inject tiny ones. A 2:1 size is a
panorama: generated seamless, depth scored by MARE against the estimator's 360° path (ldm3d-pano's card);
otherwise AbsRel / RMSE / δ1 against the estimator's metric depth (the paper's ZoeDepth-N comparison).

Over several processes (generator/sharding.py) each generates its share of the images and their reference depth
into the shared image cache; after all are done the main process scores every image and writes the report.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from td_bridge.depth import from_uint16
from td_bridge.params import validate_generation

from ..backends.base import RGBD
from ..estimators.pano import is_equirectangular
from ..sharding import Shard
from . import paper, plots, report
from .cache import ImageCache, key_of, model_identity
from .depth import NYU_RANGE, SPACES, depth_errors, mare
from .fid import Statistics, frechet_distance_to, statistics
from .images import fingerprint, read_batches
from .inception_score import DEFAULT_SPLITS, inception_score

log = logging.getLogger("depthfusion.evaluate")

Features = Callable[[list], tuple[np.ndarray, np.ndarray]]  # images → (pool features, logits); has .name


@dataclass
class Tools:
    """The networks: generate(params) → RGBD; features (with a ``name``); clip.scores(images, captions);
    reference_depth(rgb, pano) → metres (perspective) or inverse distance up to scale (panorama). Only the main
    process scores: the others may leave ``features`` and ``clip`` None."""

    generate: Callable[[dict[str, Any]], RGBD]
    features: Any
    clip: Any
    reference_depth: Callable[[np.ndarray, bool], np.ndarray]
    depth_model: str
    clip_model: str


@dataclass
class Options:
    model: str
    captions: list[str]
    reference: list[Path]
    output: Path
    cache: Path
    guidance: Sequence[float] = (7.0,)
    steps: Sequence[int] = (50,)
    scheduler: str = "ddim"
    width: int = 512
    height: int = 512
    seed: int = 0
    splits: int = DEFAULT_SPLITS
    align: str = "disparity"
    depth_range: tuple[float, float] = NYU_RANGE
    negative_prompt: str = ""
    settings: list[tuple[float, int]] = field(init=False)

    def __post_init__(self) -> None:
        if not self.guidance or not self.steps:
            raise ValueError("give at least one guidance scale and one step count")
        if self.splits < 1:
            raise ValueError(f"--splits must be at least 1, got {self.splits}")
        if self.align not in SPACES:
            raise ValueError(f"alignment must be one of {', '.join(SPACES)}, got {self.align!r}")
        if not 0 < self.depth_range[0] < self.depth_range[1]:
            raise ValueError(f"the depth range must satisfy 0 < min < max, got {self.depth_range}")
        self.settings = [(float(g), int(s)) for g in self.guidance for s in self.steps]

    @property
    def pano(self) -> bool:
        return is_equirectangular(self.width, self.height)


def _params(options: Options, caption: str, index: int, guidance: float, steps: int) -> dict[str, Any]:
    return validate_generation({"prompt": caption, "negative_prompt": options.negative_prompt,
                                "seed": options.seed + index, "steps": steps, "guidance": guidance,
                                "width": options.width, "height": options.height, "scheduler": options.scheduler,
                                "seamless": options.pano})


def plan(options: Options) -> list[tuple[tuple[float, int], int, str, dict[str, Any]]]:
    """(setting, caption index, cache key, params) for every image of the sweep; all params checked first."""
    identity = model_identity(options.model)
    jobs = []
    for guidance, steps in options.settings:
        for index, caption in enumerate(options.captions):
            params = _params(options, caption, index, guidance, steps)
            jobs.append(((guidance, steps), index, key_of({"model": identity, "params": params}), params))
    return jobs


def generate_missing(jobs: list, cache: ImageCache, tools: Tools, model: str) -> int:
    """Generate every image not cached yet; returns how many were made."""
    from tqdm import tqdm

    todo = [job for job in jobs if not cache.has(job[2])]
    if len(todo) < len(jobs):
        log.info("%d of %d images already generated in %s", len(jobs) - len(todo), len(jobs), cache.root)
    for _setting, _index, key, params in tqdm(todo, desc="generating", unit="image"):
        result = tools.generate(params)
        cache.save(key, result.rgb, result.depth, {"model": model, "params": params})
    return len(todo)


def reference_statistics(files: list[Path], features: Any, cache_root: Path) -> tuple[Statistics, bool]:
    """The reference set's feature statistics, from the cache when this set and extractor were seen before."""
    from tqdm import tqdm

    path = cache_root / "reference" / f"{key_of([fingerprint(files), features.name])[:32]}.npz"
    if path.is_file():
        return Statistics.load(path), True
    pools = [features(batch)[0] for batch in tqdm(read_batches(files), desc="reference features", unit="batch",
                                                   total=-(-len(files) // 64))]
    stats = statistics(np.concatenate(pools))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{secrets.token_hex(4)}.partial.npz")
    stats.save(partial)
    partial.replace(path)
    return stats, False


def _depth_name(tools: Tools) -> str:
    return f"reference-depth-{key_of(tools.depth_model)[:12]}.npy"


def _reference_depth(cache: ImageCache, key: str, rgb: np.ndarray, tools: Tools, pano: bool) -> np.ndarray:
    path = cache.extra(key, _depth_name(tools))
    if path.is_file():
        return np.load(path)
    depth = np.asarray(tools.reference_depth(rgb, pano), dtype=np.float32)
    if depth.shape != rgb.shape[:2]:
        raise ValueError(f"the reference estimator returned {depth.shape} for a {rgb.shape[1]}x{rgb.shape[0]} image")
    cache.write_array(key, _depth_name(tools), depth)
    return depth


def prepare(jobs: list, cache: ImageCache, tools: Tools, options: Options) -> int:
    """Generate the missing images of ``jobs`` and estimate their reference depth; returns how many were made."""
    made = generate_missing(jobs, cache, tools, options.model)
    for _setting, _index, key, _params in jobs:
        if not cache.extra(key, _depth_name(tools)).is_file():
            _reference_depth(cache, key, cache.load(key)[0], tools, options.pano)
    return made


def score_setting(options: Options, jobs: list, cache: ImageCache, tools: Tools, reference: Statistics) -> dict:
    """Every metric of one setting's images."""
    images, captions, rows = [], [], []
    for _setting, index, key, _params in jobs:
        rgb, depth16 = cache.load(key)
        images.append(rgb)
        captions.append(options.captions[index])
        truth = _reference_depth(cache, key, rgb, tools, options.pano)
        pred = from_uint16(depth16)
        rows.append({"mare": mare(pred, truth)} if options.pano else
                    depth_errors(pred, truth, options.align, options.depth_range).as_dict())
    pool, logits = tools.features(images)
    splits = min(options.splits, len(images))
    is_mean, is_std = inception_score(logits, splits)
    fid = frechet_distance_to(pool, reference) if len(images) >= 2 else None
    result = {"images": len(images), "fid": fid, "is": is_mean, "is_std": is_std, "is_splits": splits,
              "clip": float(np.mean(tools.clip.scores(images, captions)))}
    for name in rows[0]:
        if name in ("abs_rel", "rmse", "delta1", "mare"):
            result[name] = float(np.mean([row[name] for row in rows]))
    return result


def _panels(rows: list[dict], published: dict) -> dict[str, list[plots.Panel]]:
    """The paper's figures: FID and IS against guidance (one line per step count), against steps (one line per
    guidance), and CLIP against guidance."""
    def series(metric: str, x: str, per: str) -> dict[str, list]:
        out: dict[str, list] = {}
        for row in rows:
            name = f"{row[per]} steps" if per == "steps" else f"guidance {row[per]:g}"
            out.setdefault(name, []).append((row[x], row[metric]))
        return out

    def ref(metric: str):
        return (f"published {published[metric]}", published[metric]) if metric in published else None

    return {
        "fid_is_vs_guidance.png": [
            plots.Panel("FID vs guidance", "guidance scale", "FID", series("fid", "guidance", "steps"),
                        ref("fid")),
            plots.Panel("IS vs guidance", "guidance scale", "IS", series("is", "guidance", "steps"),
                        ref("is"))],
        "fid_is_vs_steps.png": [
            plots.Panel("FID vs steps", "steps", "FID", series("fid", "steps", "guidance"), ref("fid")),
            plots.Panel("IS vs steps", "steps", "IS", series("is", "steps", "guidance"), ref("is"))],
        "clip_vs_guidance.png": [
            plots.Panel("CLIP vs guidance", "guidance scale", "CLIP similarity",
                        series("clip", "guidance", "steps"), ref("clip"))],
    }


def _markdown(options: Options, rows: list[dict], published: dict, tools: Tools, figures: list[str]) -> str:
    ours = report.table(rows, report.TEXT2RGBD_COLUMNS)
    theirs = report.table([{k: v for k, v in published.items() if k != "source"}], report.TEXT2RGBD_COLUMNS)
    depth = ("MARE of disparity after alignment in disparity (panorama)" if options.pano else
             f"AbsRel / RMSE / δ1 after alignment in {options.align}, depth range {options.depth_range} m")
    lines = [f"# text2rgbd evaluation of {options.model}", "",
             f"{len(options.captions)} captions, {options.width}x{options.height}, scheduler {options.scheduler}, "
             f"seeds {options.seed}…{options.seed + len(options.captions) - 1}; reference set "
             f"{len(options.reference)} images; FID/IS on {tools.features.name}; CLIP {tools.clip_model} "
             f"(max(100·cos, 0)); depth vs {tools.depth_model}: {depth}.", "", "## Ours", "", ours, "",
             f"## Published ({published['source']}; one setting, not stated per sweep point)", "", theirs, "",
             "Numbers from fewer images than the paper's are biased (FID falls with more images) and not comparable "
             "one to one.", ""]
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


def run(options: Options, tools: Tools, shard: Shard = Shard()) -> dict[str, Any] | None:
    """The whole evaluation; the main process writes the report and plots into ``options.output`` and returns
    the result, the others return None once their share is in the cache."""
    jobs = plan(options)
    cache = ImageCache(options.output / "images")
    made = shard.total(prepare(shard.mine(jobs), cache, tools, options))  # every process waits here for all
    if not shard.main:
        return None
    reference, cached = reference_statistics(options.reference, tools.features, options.cache)
    rows = []
    for setting in options.settings:
        chosen = [job for job in jobs if job[0] == setting]
        rows.append({"guidance": setting[0], "steps": setting[1],
                     **score_setting(options, chosen, cache, tools, reference)})
    published = paper.published(options.pano)
    figures = _panels(rows, published)
    for name, panels in figures.items():
        plots.figure(options.output / name, panels)
    result = {"model": options.model, "captions": len(options.captions), "width": options.width,
              "height": options.height, "scheduler": options.scheduler, "seed": options.seed,
              "pano": options.pano, "align": None if options.pano else options.align,
              "depth_range": list(options.depth_range), "features": tools.features.name,
              "clip_model": tools.clip_model, "depth_model": tools.depth_model,
              "reference_images": len(options.reference), "reference_count": reference.count,
              "reference_cached": cached, "generated_now": made, "results": rows, "published": published}
    report.write(options.output, result, _markdown(options, rows, published, tools, list(figures)))
    return result
