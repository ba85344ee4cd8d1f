"""``evaluate autoencoder``: RGBD images through KL autoencoders (the original and a fine-tuned one, say):
rFID (FID of the reconstructions against the inputs), PSNR and SSIM on RGB, and depth error.

Inputs: frame folders (rgb.png + 16-bit depth.png, as ``generate`` and ``depth`` write them) or plain images,
whose depth the estimator gives (relative inverse depth, as LDM3D was trained on DPT depth). Each image is
centre-cropped to a multiple of the autoencoder's scale factor. The autoencoder sees RGB + depth packed as
training packs them (generator.train.packing); its reconstruction is the decoder's output for the posterior's
mode, unpacked as generation decodes it. Depth error: AbsRel and δ1 after alignment in disparity
(generator.estimators.alignment.consistency), and the RMSE of relative inverse depth in [0, 1], unaligned.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from td_bridge.depth import from_uint16, read_depth_png

from ..backends.base import BackendUnavailable
from ..estimators.alignment import consistency
from ..estimators.inputs import ImageError, read_image
from . import report
from .fid import fid
from .images import SUFFIXES

log = logging.getLogger("depthfusion.evaluate")


def read_items(paths: list[Path], estimate: Callable[[np.ndarray], np.ndarray] | None) -> list[tuple[str, Any, Any]]:
    """(name, uint8 RGB, uint16 depth) for frame folders and image files (depth from ``estimate``)."""
    items = []
    for path in map(Path, paths):
        if path.is_dir() and (path / "rgb.png").is_file():
            rgb, depth = read_image(path / "rgb.png")[0], read_depth_png(path / "depth.png")
            if depth.shape != rgb.shape[:2]:
                raise ImageError(f"{path}: rgb.png is {rgb.shape[1]}x{rgb.shape[0]} but depth.png "
                                 f"{depth.shape[1]}x{depth.shape[0]}")
            items.append((str(path), rgb, depth))
        elif path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
            frames = sorted(p for p in path.iterdir() if (p / "rgb.png").is_file())
            if not found and not frames:
                raise ImageError(f"{path}: the folder holds no images and no frame folders")
            items += read_items(frames + found, estimate)
        elif path.is_file():
            if estimate is None:
                raise ImageError(f"{path}: an image without depth needs a depth estimator")
            rgb = read_image(path)[0]
            items.append((str(path), rgb, estimate(rgb)))
        else:
            raise ImageError(f"{path}: no such file or folder")
    return items


def centre_crop(array: np.ndarray, factor: int) -> np.ndarray:
    height, width = array.shape[:2]
    h, w = height - height % factor, width - width % factor
    top, left = (height - h) // 2, (width - w) // 2
    return array[top:top + h, left:left + w]


def load_autoencoder(model: str, device: Any, offline: bool) -> Any:
    """An AutoencoderKL from its own folder, or from an LDM3D model's ``vae/`` (folder or hub id)."""
    from diffusers import AutoencoderKL

    folder = Path(model).expanduser()
    own = folder.is_dir() and (folder / "config.json").is_file()
    if not own and not folder.is_dir() and "/" not in model:
        raise BackendUnavailable(f"{model!r} is neither a folder nor a hub id")
    try:
        vae = AutoencoderKL.from_pretrained(str(folder) if own else model, subfolder=None if own else "vae",
                                            local_files_only=offline, low_cpu_mem_usage=False)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise BackendUnavailable(f"cannot load a KL autoencoder from {model}: {type(exc).__name__}: {exc}") from exc
    if vae.config.out_channels not in (4, 6) or vae.config.in_channels != vae.config.out_channels:
        raise BackendUnavailable(f"{model}: the autoencoder maps {vae.config.in_channels} to "
                                 f"{vae.config.out_channels} channels; RGBD needs 6 → 6 or 4 → 4")
    return vae.to(device).eval().requires_grad_(False)


def reconstruct(vae: Any, rgb: np.ndarray, depth16: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The autoencoder's (uint8 RGB, uint16 depth) for one image (already cropped to its scale factor)."""
    import torch

    from ..train.packing import pack, unpack

    x = pack(rgb, depth16, vae.config.out_channels)[None].to(vae.device, vae.dtype)
    with torch.inference_mode():
        return unpack(vae.decode(vae.encode(x).latent_dist.mode()).sample[0])


def evaluate(vae: Any, items: list, features: Any) -> dict[str, Any]:
    """rFID, PSNR, SSIM and depth errors of one autoencoder over the items."""
    import torch

    from .ssim import psnr, ssim

    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    originals, recons, psnrs, ssims, depth_rows = [], [], [], [], []
    for name, rgb, depth16 in items:
        rgb, depth16 = centre_crop(rgb, factor), centre_crop(depth16, factor)
        if min(rgb.shape[:2]) < 11:
            raise ImageError(f"{name}: {rgb.shape[1]}x{rgb.shape[0]} after cropping is too small for SSIM (11 px)")
        rgb_out, depth_out = reconstruct(vae, rgb, depth16)
        a = torch.from_numpy(np.array(rgb)).permute(2, 0, 1)[None].double() / 255  # a writable copy
        b = torch.from_numpy(rgb_out).permute(2, 0, 1)[None].double() / 255
        psnrs.append(float(psnr(a, b)[0]))
        ssims.append(float(ssim(a, b)[0]))
        d_in, d_out = from_uint16(depth16), from_uint16(depth_out)
        aligned = consistency(d_out, d_in)
        depth_rows.append((aligned.abs_rel, aligned.delta1, float(np.sqrt(np.mean((d_out - d_in) ** 2)))))
        originals.append(rgb)
        recons.append(rgb_out)
    rfid = fid(features(originals)[0], features(recons)[0]) if len(items) >= 2 else None
    depth = np.mean(depth_rows, axis=0)
    return {"images": len(items), "rfid": rfid, "psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)),
            "depth_abs_rel": float(depth[0]), "depth_delta1": float(depth[1]), "depth_rmse": float(depth[2])}


def run(models: list[str], items: list, features: Any, output: Path, load: Callable[[str], Any]) -> dict[str, Any]:
    """Evaluate each model on the same items; write results.json and report.md."""
    from tqdm import tqdm

    if not items:
        raise ImageError("no images to reconstruct")
    rows = [{"model": model, **evaluate(load(model), items, features)} for model in tqdm(models, unit="model")]
    result = {"images": [name for name, _, _ in items], "features": features.name, "results": rows}
    markdown = "\n".join([f"# Autoencoder reconstruction, {len(items)} images", "",
                          report.table(rows, report.AUTOENCODER_COLUMNS), "",
                          "rFID: FID of the reconstructions against the inputs (Inception features). Depth AbsRel "
                          "and δ1 after alignment in disparity; depth RMSE of relative inverse depth in [0, 1], "
                          "unaligned.", ""])
    report.write(output, result, markdown)
    return result


def run_cli(args: argparse.Namespace, features: Any) -> int:
    from ..backends.ldm3d import pick_device
    from ..estimators.frame import estimate_rgbd

    device = pick_device(args.device)
    estimator: list = []

    def estimate(rgb: np.ndarray) -> np.ndarray:
        if not estimator:
            from ..estimators.model import DepthModel

            estimator.append(DepthModel.load(args.depth_model, device=args.device, local_files_only=args.offline))
        return estimate_rgbd(estimator[0], rgb, {"pano": "auto", "views": "dense", "flip": "auto", "cue": ""}).depth

    items = read_items(args.images, estimate)
    result = run(args.model, items, features, args.output, lambda m: load_autoencoder(m, device, args.offline))
    report.summarise(result, args.output)
    return 0
