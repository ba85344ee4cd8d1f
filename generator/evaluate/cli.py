"""The ``evaluate`` CLI verb: its flags, and the real networks behind text2rgbd and autoencoder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from ..estimators.checkpoints import DEFAULT_MODEL as DEFAULT_RELATIVE_ESTIMATOR
from .clip import DEFAULT_CLIP
from .depth import NYU_RANGE, SPACES
from .inception_score import DEFAULT_SPLITS

DEFAULT_REFERENCE_DEPTH = "Intel/zoedepth-nyu"  # ZoeDepth-N, the paper's reference


def _size(text: str) -> tuple[int, int]:
    try:
        width, _, height = text.lower().partition("x")
        size = (int(width), int(height or width))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be N or WxH, got {text!r}") from None
    return size


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", required=True, type=Path, help="report folder (results.json, "
                        "report.md, plots; text2rgbd keeps its generated images here too, so a rerun resumes)")
    parser.add_argument("--inception-weights", type=Path, default=None, metavar="FILE",
                        help="a local copy of pt_inception-2015-12-05-6726825d.pth (default: fetched once into the "
                        "user cache)")
    parser.add_argument("--cache", type=Path, default=None, metavar="DIR",
                        help="where reference statistics and the Inception weights are kept (default: the user "
                        "cache folder, DepthFusion; or DEPTHFUSION_CACHE)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N, mps, cpu")
    parser.add_argument("--offline", action="store_true", help="use only models already downloaded")


def add_parser(sub: Any) -> None:
    """Add ``evaluate text2rgbd`` and ``evaluate autoencoder`` to the CLI's subcommands."""
    evaluate = sub.add_parser("evaluate", help="the paper's measurements: FID, IS, CLIP, depth; autoencoder table")
    kinds = evaluate.add_subparsers(dest="kind", required=True)
    t2 = kinds.add_parser("text2rgbd", help="generate for captions and score against a reference image set")
    t2.add_argument("--model", required=True, help="LDM3D hub id or local folder")
    t2.add_argument("--captions", required=True, type=Path, help="text (one caption a line) or MS-COCO captions JSON")
    t2.add_argument("--reference", required=True, type=Path, nargs="+", help="reference images or folders (FID)")
    t2.add_argument("--n", type=int, default=None, help="use the first N captions (default: all)")
    t2.add_argument("--guidance", type=float, nargs="+", default=[7.0], help="guidance scales to sweep (7)")
    t2.add_argument("--steps", type=int, nargs="+", default=[50], help="step counts to sweep (50)")
    t2.add_argument("--scheduler", default="ddim", choices=["ddim", "dpm++", "euler"], help="sampler (ddim)")
    t2.add_argument("--size", type=_size, default=(512, 512), help="N or WxH (512; 1024x512 scores a panorama)")
    t2.add_argument("--seed", type=int, default=0, help="seed of the first caption; caption i gets seed + i (0)")
    t2.add_argument("--splits", type=int, default=DEFAULT_SPLITS, help=f"Inception Score splits ({DEFAULT_SPLITS})")
    t2.add_argument("--clip-model", default=DEFAULT_CLIP, help=f"CLIP for the similarity ({DEFAULT_CLIP})")
    t2.add_argument("--depth-model", default=DEFAULT_REFERENCE_DEPTH,
                    help=f"reference depth estimator; metric for perspective images ({DEFAULT_REFERENCE_DEPTH})")
    t2.add_argument("--align", default="disparity", choices=SPACES,
                    help="least-squares scale and shift in disparity (default, as LDM3D predicts) or in depth")
    t2.add_argument("--max-depth", type=float, default=NYU_RANGE[1], help="depth range compared, metres (10)")
    t2.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"], help="LDM3D precision")
    _common(t2)
    ae = kinds.add_parser("autoencoder", help="reconstruct RGBD images through KL autoencoders: rFID, PSNR, SSIM, "
                          "depth error")
    ae.add_argument("--model", required=True, nargs="+", help="LDM3D model(s) (their vae/) or AutoencoderKL "
                    "folder(s) to compare, e.g. the original and a fine-tuned one")
    ae.add_argument("--images", required=True, type=Path, nargs="+",
                    help="frame folders (rgb.png + depth.png) or images (depth from --depth-model)")
    ae.add_argument("--depth-model", default=DEFAULT_RELATIVE_ESTIMATOR,
                    help=f"estimator for images without depth ({DEFAULT_RELATIVE_ESTIMATOR})")
    _common(ae)


def _inception_weights(args: argparse.Namespace) -> Path:
    """The weights file: --inception-weights, else the cached public one (downloaded now if missing)."""
    from .inception import cache_path, fetch_weights

    if args.inception_weights is not None:
        if not args.inception_weights.is_file():
            raise OSError(f"{args.inception_weights}: no such Inception weights file")
        return args.inception_weights
    return fetch_weights(cache_path(args.cache))


def _features(weights: Path, device: Any):
    from .inception import InceptionFeatures

    return InceptionFeatures.load(weights, device)


def _reference_depth(depth_model: Any, views: str = "dense"):
    """rgb, pano → the estimator's metres (perspective) or inverse ray distance up to scale (360° path)."""
    from td_bridge.depth import distance_from_inverse_depth, from_uint16

    from ..estimators.frame import estimate_rgbd, use_flip

    flip = use_flip("auto", depth_model.family)

    def predict(rgb: np.ndarray, pano: bool) -> np.ndarray:
        if not pano:
            return depth_model.predict(rgb, flip)
        frame = estimate_rgbd(depth_model, rgb, {"pano": "yes", "views": views, "flip": "auto", "cue": ""})
        if frame.near is None:
            return from_uint16(frame.depth)
        return 1.0 / distance_from_inverse_depth(from_uint16(frame.depth), frame.near, frame.far)

    return predict


def run_text2rgbd(args: argparse.Namespace) -> int:
    from ..backends import load_backend
    from ..backends.ldm3d import pick_device
    from ..estimators.model import DepthModel
    from .cache import default_cache
    from .captions import read_captions
    from .clip import ClipScorer
    from .images import list_images
    from .report import summarise
    from .text2rgbd import Options, Tools, run

    width, height = args.size
    options = Options(model=args.model, captions=read_captions(args.captions, args.n),
                      reference=list_images(args.reference, "reference images"), output=args.output,
                      cache=args.cache or default_cache(), guidance=args.guidance, steps=args.steps,
                      scheduler=args.scheduler, width=width, height=height, seed=args.seed, splits=args.splits,
                      align=args.align, depth_range=(NYU_RANGE[0], args.max_depth))
    weights = _inception_weights(args)  # first: a missing weights file costs no model load
    backend = load_backend(args.model, device=args.device, dtype=args.dtype, revision=None,
                           local_files_only=args.offline, compile=False)
    depth_model = DepthModel.load(args.depth_model, device=args.device, local_files_only=args.offline)
    if not options.pano and not depth_model.metric:
        raise ValueError(f"{args.depth_model} predicts relative depth; AbsRel and RMSE in metres need a metric "
                         f"reference such as {DEFAULT_REFERENCE_DEPTH}")
    clip = ClipScorer.load(args.clip_model, device=args.device, local_files_only=args.offline)
    features = _features(weights, pick_device(args.device))
    tools = Tools(generate=lambda params: backend.generate(params, lambda step, total: None, lambda: False),
                  features=features, clip=clip, reference_depth=_reference_depth(depth_model),
                  depth_model=args.depth_model, clip_model=args.clip_model)
    result = run(options, tools)
    summarise(result, args.output)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """``python -m generator evaluate text2rgbd|autoencoder``."""
    if args.kind == "text2rgbd":
        return run_text2rgbd(args)
    from ..backends.ldm3d import pick_device
    from .autoencoder import run_cli

    return run_cli(args, _features(_inception_weights(args), pick_device(args.device)))
