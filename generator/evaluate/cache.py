"""What evaluation keeps on disk: generated images (resumable), reference statistics, reference depth.

Generated images live under ``OUTPUT/images/<key[:2]>/<key>/`` (rgb.png, depth.png, meta.json), the key a
SHA-256 of the model (and, for a local folder, its weight and config files' sizes and times), the caption, the
seed and every generation setting; a rerun skips what exists. Each entry is written to a temporary folder and
renamed into place, so an interrupted run leaves no half entry; when several processes write (one evaluation
sharded over GPUs, or two runs sharing a folder) and two make one key, the first whole entry stays. Reference statistics are cached under the
cache folder, keyed by the reference files (paths and sizes) and the feature extractor.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np

from td_bridge.depth import read_depth_png, write_depth_png

from ..images import read_rgb_png, write_rgb_png

MODEL_FILES = ("*.json", "*.safetensors", "*.bin", "*.txt")


def default_cache() -> Path:
    root = os.environ.get("DEPTHFUSION_CACHE")
    if root:
        return Path(root)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("DepthFusion", appauthor=False))


def model_identity(model: str) -> str:
    """The model string, plus the sizes and times of a local folder's files (a retrained folder is new)."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return model
    files = sorted(p for pattern in MODEL_FILES for p in folder.rglob(pattern) if p.is_file())
    stamp = [(str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return model + ":" + hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]


def key_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ImageCache:
    """Generated RGBD images by key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, key: str) -> Path:
        return self.root / key[:2] / key

    def has(self, key: str) -> bool:
        return (self.folder(key) / "meta.json").is_file()

    def load(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        folder = self.folder(key)
        return read_rgb_png(folder / "rgb.png"), read_depth_png(folder / "depth.png")

    def save(self, key: str, rgb: np.ndarray, depth: np.ndarray, meta: dict[str, Any]) -> None:
        """Write an entry whole; if another writer's entry for ``key`` got there first, keep that one."""
        final = self.folder(key)
        temp = final.with_name(f".{key}.{secrets.token_hex(4)}.partial")
        temp.mkdir(parents=True)
        try:
            write_rgb_png(temp / "rgb.png", rgb)
            write_depth_png(temp / "depth.png", depth)
            (temp / "meta.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            self._place(temp, final)
        finally:
            shutil.rmtree(temp, ignore_errors=True)

    def _place(self, temp: Path, final: Path) -> None:
        """Rename ``temp`` to ``final``, unless a whole entry is there; a folder there without meta.json (extra
        files only) is replaced."""
        for _attempt in range(3):
            if (final / "meta.json").is_file():
                return
            try:
                os.rename(temp, final)  # fails, on every system, when final is a folder that is not empty
                return
            except OSError:
                if not final.exists() or (final / "meta.json").is_file():
                    continue
                stale = final.with_name(f".{final.name}.{secrets.token_hex(4)}.stale")
                with suppress(OSError):  # another writer may have moved it first
                    os.rename(final, stale)
                    shutil.rmtree(stale, ignore_errors=True)
        raise OSError(f"could not place {final}: other writers keep changing it")

    def write_array(self, key: str, name: str, array: np.ndarray) -> None:
        """Keep ``array`` as ``name`` (.npy) beside an entry, atomically."""
        path = self.extra(key, name)
        temp = path.with_name(f".{name}.{secrets.token_hex(4)}.partial.npy")
        try:
            np.save(temp, array)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)

    def extra(self, key: str, name: str) -> Path:
        """A further file kept beside an entry (e.g. the reference estimator's depth of its image)."""
        return self.folder(key) / name
