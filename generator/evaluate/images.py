"""Image sets for evaluation: folders and files expanded, read as 8-bit RGB, fingerprinted for caching."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..estimators.inputs import ImageError, read_image

SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def list_images(paths: Sequence[Path], what: str = "images") -> list[Path]:
    """Every image file named or found (recursively, sorted) in the named folders; at least one."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            if not found:
                raise ImageError(f"{path}: the folder holds no images ({', '.join(SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise ImageError(f"{path}: no such file or folder")
    if not files:
        raise ImageError(f"no {what} given")
    return files


def fingerprint(files: Sequence[Path]) -> str:
    """A key for a set of files: their resolved paths and sizes (changing, adding or removing one changes it)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{Path(path).resolve()}\0{Path(path).stat().st_size}\n".encode())
    return digest.hexdigest()


def read_batches(files: Sequence[Path], batch: int = 64) -> Iterator[list[np.ndarray]]:
    """The images as (H, W, 3) uint8, ``batch`` at a time (an unreadable one raises ImageError naming it)."""
    for start in range(0, len(files), batch):
        yield [read_image(path)[0] for path in files[start:start + batch]]
