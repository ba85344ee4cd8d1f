"""Reading user images for depth estimation: checked before anything is decoded, converted to 8-bit RGB.

Conversions (documented in docs/depth.md): the first frame of an animation; EXIF orientation applied; greyscale
and palette images expanded to RGB; transparency composited over black; 16-bit greyscale scaled to 8 bits
(÷257); 16-bit colour PNGs reach us already reduced to 8 bits by Pillow; CMYK and YCbCr converted by Pillow.
Refused with a clear message: non-images, damaged or truncated files, 32-bit float images (no defined
brightness range), images larger than a frame may be (td_bridge.protocol's limits) or smaller than 16 px.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from td_bridge.protocol import MAX_PIXELS, MAX_SIDE

MIN_SIDE = 16
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_GREY16_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(ValueError):
    """An input image cannot be used (the message names the file and why)."""


def check_size(width: int, height: int, where: str) -> None:
    """Raise ImageError unless a width × height image fits the frame limits."""
    if width * height > MAX_PIXELS or width > MAX_SIDE or height > MAX_SIDE:
        raise ImageError(f"{where}: {width}x{height} is too large (at most {MAX_SIDE} px a side and "
                         f"{MAX_PIXELS:,} pixels)")
    if width < MIN_SIDE or height < MIN_SIDE:
        raise ImageError(f"{where}: {width}x{height} is too small (at least {MIN_SIDE} px a side)")


def probe_image(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file, checked without decoding its pixels: it opens as an image and fits the
    frame limits (read_image decodes it later)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        with Image.open(path) as image:
            check_size(*image.size, where=str(path))
            return image.size
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (PNG, JPEG, TIFF, WebP, BMP, ...)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: refused as a decompression bomb ({exc})") from None


def read_image(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """(H, W, 3) uint8 RGB of an image file, and what it was (format, mode, size, conversion)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file" if not path.exists() else f"{path}: not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                check_size(*image.size, where=str(path))  # from the header, before any pixel is decoded
                image.load()
                info = {"file": path.name, "format": image.format, "mode": image.mode, "width": image.width,
                        "height": image.height, "frames": getattr(image, "n_frames", 1)}
                image = ImageOps.exif_transpose(image)
                rgb, conversion = to_rgb(image, str(path))
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image Pillow can read (PNG, JPEG, TIFF, WebP, BMP, ...)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused as a decompression bomb ({exc})") from None
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise ImageError(f"{path}: damaged or truncated image ({type(exc).__name__}: {exc})") from None
    info["conversion"] = conversion
    return rgb, info


def to_rgb(image: Any, where: str = "image") -> tuple[np.ndarray, str]:
    """(H, W, 3) uint8 RGB of a loaded PIL image, and a word for the conversion made ("none" if none)."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image), "none"
    if mode == "F":
        raise ImageError(f"{where}: a 32-bit float image has no defined brightness range; save it as 8 or 16 bit")
    if mode in _GREY16_MODES:
        grey = np.asarray(image)
        if grey.min(initial=0) < 0 or grey.max(initial=0) > 65535:
            raise ImageError(f"{where}: integer image values outside 0..65535")
        grey8 = np.rint(grey.astype(np.float64) / 257.0).astype(np.uint8)
        return np.repeat(grey8[..., None], 3, axis=2), "16-bit grey to 8-bit RGB"
    if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float64)
        rgb = np.rint(rgba[..., :3] * rgba[..., 3:] / 255.0).astype(np.uint8)
        return rgb, f"{mode} composited over black"
    try:
        return np.asarray(image.convert("RGB")), f"{mode} to RGB"
    except (ValueError, OSError) as exc:
        raise ImageError(f"{where}: cannot convert a {mode} image to RGB ({exc})") from None
