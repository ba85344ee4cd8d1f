"""``python -m generator dataset build SOURCE -o DATASET``: image–caption pairs → RGB + 16-bit depth, and the
torch Dataset the trainers read.

Layout (``manifest.json`` says which variant and size)::

    DATASET/manifest.json
    DATASET/shard-00000/items.jsonl     one line per finished item: index, source id, caption, file names
    DATASET/shard-00000/skipped.jsonl   one line per item reported and skipped, with the reason
    DATASET/shard-00000/00000042.png    RGB, the variant's size (centre-cropped to its aspect, then resized)
    DATASET/shard-00000/00000042.depth.png   16-bit relative inverse depth (65535 = nearest)

Item ``i`` of the source lives in shard ``i // shard_size``. An item's files are written under temporary names
and renamed, then its line is appended and fsynced: a build stopped at any point resumes where it stopped
(items and skips already recorded are not redone). ``--part I/N`` builds only the shards with number ≡ I mod N,
so N processes or machines can share one source; every part writes its own shards. Packing into the VAE's 6 or
4 channels happens when the trainers read the items (packing.py), from the exact 16-bit depth.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from td_bridge.depth import read_depth_png, to_uint16, write_depth_png

from ..estimators.inputs import ImageError
from ..images import read_rgb_png, write_rgb_png
from .packing import check_channels, pack
from .sources import Item, Source

log = logging.getLogger("depthfusion.train.dataset")

FORMAT, VERSION, MANIFEST = "depthfusion-rgbd-dataset", 1, "manifest.json"
VARIANTS = {"ldm3d": (6, 512, 512), "ldm3d-4c": (4, 512, 512), "ldm3d-pano": (4, 1024, 512)}  # channels, w, h
DEFAULT_ESTIMATOR = "Intel/dpt-large"  # the paper's depth: DPT-Large at 384×384
Estimator = Callable[[np.ndarray], np.ndarray]
"""(H, W, 3) uint8 RGB → (H, W) uint16 relative inverse depth (65535 = nearest)."""


class DatasetError(ValueError):
    """A dataset folder or build request is unusable (the message names the file and why)."""


@dataclass(frozen=True)
class Spec:
    channels: int
    width: int
    height: int
    shard_size: int = 1000
    min_side: int = 0  # source images with a shorter side are skipped; 0: half the target's shorter side

    def __post_init__(self) -> None:
        check_channels(self.channels)
        for name in ("width", "height"):
            value = getattr(self, name)
            if not 8 <= value <= 4096 or value % 8:
                raise DatasetError(f"{name} must be a multiple of 8 in 8..4096, got {value}")
        if not 1 <= self.shard_size <= 100_000:
            raise DatasetError(f"shard size must be in 1..100000, got {self.shard_size}")
        if self.min_side < 0:
            raise DatasetError(f"min side must be ≥ 0, got {self.min_side}")

    @property
    def smallest(self) -> int:
        return self.min_side or min(self.width, self.height) // 2


@dataclass
class Summary:
    written: int = 0
    skipped: int = 0
    already: int = 0
    other_parts: int = 0


def parse_part(text: str) -> tuple[int, int]:
    """``I/N`` → (I, N) with 0 ≤ I < N."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError:
        raise DatasetError(f"--part must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise DatasetError(f"--part {text}: need 0 ≤ I < N")
    return index, count


def load_estimator(model: str = DEFAULT_ESTIMATOR, *, device: str = "auto", revision: str | None = None,
                   offline: bool = False) -> Estimator:
    """The estimator module's depth (generator.estimators) as a callable: 360° images take its panorama path."""
    from td_bridge.params import ESTIMATION_PARAMS, validate

    from ..estimators.checkpoints import licence_notice
    from ..estimators.frame import estimate_rgbd
    from ..estimators.model import DepthModel

    notice = licence_notice(model)
    if notice:
        log.warning("%s", notice)  # a dataset inherits its depth model's terms
    depth_model = DepthModel.load(model, device=device, revision=revision, local_files_only=offline)
    params = validate({}, ESTIMATION_PARAMS)
    return lambda rgb: estimate_rgbd(depth_model, rgb, params).depth


# ------------------------------------------------------------------ resizing


def _crop_box(width: int, height: int, aspect: float) -> tuple[int, int, int, int]:
    """The largest centred box of ``aspect`` (w/h) inside a width × height image."""
    if width / height > aspect:
        w = max(1, round(height * aspect))
        return (width - w) // 2, 0, (width - w) // 2 + w, height
    h = max(1, round(width / aspect))
    return 0, (height - h) // 2, width, (height - h) // 2 + h


def fit_rgb(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Centre-crop to width:height, then resize (Lanczos); an image of that size already is returned as is."""
    from PIL import Image

    if rgb.shape[:2] == (height, width):
        return rgb
    image = Image.fromarray(rgb).crop(_crop_box(rgb.shape[1], rgb.shape[0], width / height))
    return np.asarray(image.resize((width, height), Image.Resampling.LANCZOS))


def fit_depth(depth16: np.ndarray, width: int, height: int) -> np.ndarray:
    """The same crop as :func:`fit_rgb`, resized bilinearly in float; exact when the size already matches."""
    from PIL import Image

    if depth16.shape == (height, width):
        return depth16
    image = Image.fromarray(depth16.astype(np.float32) / 65535.0, mode="F")
    image = image.crop(_crop_box(depth16.shape[1], depth16.shape[0], width / height))
    return to_uint16(np.asarray(image.resize((width, height), Image.Resampling.BILINEAR)))


# ------------------------------------------------------------------ manifest and records


def _manifest(spec: Spec, depth: str) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "channels": spec.channels, "width": spec.width,
            "height": spec.height, "shard_size": spec.shard_size, "depth": depth}


def read_manifest(folder: Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DatasetError(f"{folder} is not a dataset made by `python -m generator dataset build` (no {MANIFEST})")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise DatasetError(f"{path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DatasetError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise DatasetError(f"{path}: format version {manifest.get('version')}, this DepthFusion reads {VERSION}")
    try:
        Spec(int(manifest["channels"]), int(manifest["width"]), int(manifest["height"]), int(manifest["shard_size"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{path}: bad or missing field ({exc})") from None
    return manifest


def _read_records(path: Path) -> list[dict[str, Any]]:
    """The whole lines of a JSONL record file; a line cut short by a crash is dropped (and the file rewritten)."""
    if not path.is_file():
        return []
    good, bad = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if isinstance(record, dict) and isinstance(record.get("index"), int):
            good.append(record)
        else:
            bad += 1
    if bad:
        log.warning("%s: %d damaged lines dropped (a build stopped mid-write); those items are redone", path, bad)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in good), encoding="utf-8")
    return good


def _append(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


# ------------------------------------------------------------------ build


def _prepare(item: Item, spec: Spec, estimator: Estimator | None) -> tuple[np.ndarray, np.ndarray]:
    """(RGB, depth16) at the spec's size; ImageError for an item to report and skip."""
    rgb, depth = item.load()
    height, width = rgb.shape[:2]
    if min(height, width) < spec.smallest:
        raise ImageError(f"{width}x{height} is too small (shorter side under {spec.smallest} px; see --min-side)")
    rgb = fit_rgb(rgb, spec.width, spec.height)
    if depth is not None:
        if depth.shape != (height, width):
            raise ImageError(f"depth {depth.shape} and RGB {(height, width)} sizes differ")
        return rgb, fit_depth(depth, spec.width, spec.height)
    depth = np.asarray(estimator(rgb))
    if depth.dtype != np.uint16 or depth.shape != rgb.shape[:2]:
        raise TypeError(f"the depth estimator returned {depth.dtype} {depth.shape}; "
                        f"expected uint16 {rgb.shape[:2]}")
    return rgb, depth


def _write_item(shard: Path, index: int, rgb: np.ndarray, depth: np.ndarray) -> tuple[str, str]:
    names = (f"{index:08d}.png", f"{index:08d}.depth.png")
    temporary = [shard / f".{name}.tmp" for name in names]
    write_rgb_png(temporary[0], rgb)
    write_depth_png(temporary[1], depth)
    for tmp, name in zip(temporary, names):
        os.replace(tmp, shard / name)
    return names


def build(source: Source, output: Path, spec: Spec, *, estimator: Estimator | None = None,
          estimator_name: str = DEFAULT_ESTIMATOR, part: tuple[int, int] = (0, 1), progress: bool = True) -> Summary:
    """Build (or resume building) the dataset in ``output``; returns what was written, skipped and found done."""
    from tqdm import tqdm

    if not source.exact_depth and estimator is None:
        raise DatasetError("this source has no depth of its own: an estimator is needed")
    output = Path(output)
    manifest = _manifest(spec, "exact (frame library)" if source.exact_depth else estimator_name)
    if (output / MANIFEST).exists():
        found = read_manifest(output)
        changed = [k for k in manifest if found.get(k) != manifest[k]]
        if changed:
            was = ", ".join(f"{k} {found.get(k)!r}, now {manifest[k]!r}" for k in changed)
            raise DatasetError(f"{output} was built with other settings ({was}); resume with the same ones "
                               "or choose another -o")
    else:
        output.mkdir(parents=True, exist_ok=True)
        partial = output / f".{MANIFEST}.{os.getpid()}.tmp"  # parts starting together each write it whole
        partial.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        os.replace(partial, output / MANIFEST)
    summary, done_by_shard = Summary(), {}
    with tqdm(desc="dataset", unit="image", disable=not progress) as bar:
        for index, item in enumerate(source.items()):
            number = index // spec.shard_size
            if number % part[1] != part[0]:
                summary.other_parts += 1
                continue
            shard = output / f"shard-{number:05d}"
            if number not in done_by_shard:
                shard.mkdir(exist_ok=True)
                done_by_shard[number] = {r["index"] for name in ("items.jsonl", "skipped.jsonl")
                                         for r in _read_records(shard / name)}
            bar.update(1)
            if index in done_by_shard[number]:
                summary.already += 1
                continue
            try:
                rgb, depth = _prepare(item, spec, estimator)
            except ImageError as exc:
                bar.write(f"skipped {item.source_id}: {exc}")
                _append(shard / "skipped.jsonl", {"index": index, "source": item.source_id, "reason": str(exc)})
                summary.skipped += 1
                continue
            rgb_name, depth_name = _write_item(shard, index, rgb, depth)
            _append(shard / "items.jsonl", {"index": index, "source": item.source_id, "caption": item.caption,
                                            "rgb": rgb_name, "depth": depth_name})
            summary.written += 1
            bar.set_postfix(skipped=summary.skipped, refresh=False)
    return summary


# ------------------------------------------------------------------ reading for training


class RGBDDataset:
    """The finished items of a built dataset (all shards), packed for a ``channels``-channel VAE.

    ``dataset[i]`` is ``{"pixel_values": (C, H, W) float32 in [-1, 1], "caption": str}``.
    """

    def __init__(self, folder: Path, channels: int | None = None) -> None:
        self.folder = Path(folder)
        self.manifest = read_manifest(self.folder)
        self.channels = check_channels(channels or self.manifest["channels"])
        self.items: list[tuple[Path, dict[str, Any]]] = []
        for shard in sorted(self.folder.glob("shard-*")):
            self.items += [(shard, r) for r in _read_records(shard / "items.jsonl")]
        self.items.sort(key=lambda pair: pair[1]["index"])
        if not self.items:
            raise DatasetError(f"{self.folder} holds no finished items (was the build stopped before any?)")
        self.size = (self.manifest["height"], self.manifest["width"])

    def __len__(self) -> int:
        return len(self.items)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(RGB uint8, depth uint16, caption) of item ``i``, checked against the manifest's size."""
        shard, record = self.items[i]
        try:
            rgb, depth = read_rgb_png(shard / record["rgb"]), read_depth_png(shard / record["depth"])
        except (OSError, ValueError, KeyError) as exc:
            raise DatasetError(f"{shard}, item {record.get('index')}: cannot read ({exc})") from None
        if rgb.shape[:2] != self.size or depth.shape != self.size:
            raise DatasetError(f"{shard}, item {record['index']}: size {rgb.shape[:2]}/{depth.shape}, "
                               f"the manifest says {self.size}")
        return rgb, depth, str(record.get("caption", ""))

    def __getitem__(self, i: int) -> dict[str, Any]:
        rgb, depth, caption = self.read(i)
        return {"pixel_values": pack(rgb, depth, self.channels), "caption": caption}
