"""RGB image files (Pillow); 16-bit depth PNGs live in td_bridge.depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_rgb_png(path: str | Path, rgb: np.ndarray) -> None:
    from PIL import Image

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"RGB PNG needs a (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    Image.fromarray(np.ascontiguousarray(rgb)).save(path, format="PNG")


def read_rgb_png(path: str | Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))
