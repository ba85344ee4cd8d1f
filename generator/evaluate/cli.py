"""The ``evaluate`` CLI verb: its flags, and the real networks behind text2rgbd and autoencoder."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..estimators.checkpoints import DEFAULT_MODEL as DEFAULT_RELATIVE_ESTIMATOR
from .clip import DEFAULT_CLIP
from .depth import NYU_RANGE, SPACES
from .inception_score import DEFAULT_SPLITS

log = logging.getLogger("depthfusion.evaluate")

DEFAULT_REFERENCE_DEPTH = "Intel/zoedepth-nyu"  # ZoeDepth-N, the paper's reference
DEFAULT_PERCEPTUAL = "timm/vgg16.tv_in1k"  # VGG16 (ImageNet, torchvision's weights), as train autoencoder uses


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
    """Add ``evaluate text2rgbd``, ``evaluate autoencoder`` and ``evaluate fewstep`` to the CLI's subcommands."""
    evaluate = sub.add_parser("evaluate", help="the paper's measurements: FID, IS, CLIP, depth; autoencoder table; "
                              "what a few-step set-up costs (fewstep)")
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
    _add_fewstep(kinds)


def _add_fewstep(kinds: Any) -> None:
    from td_bridge.params import generation_param

    from ..fast import PRESETS

    fs = kinds.add_parser("fewstep", help="a few-step set-up against the 50-step teacher on the same captions and "
                          "seeds: depth AbsRel / δ1, PSNR, SSIM, perceptual distance, CLIP, time per frame")
    fs.add_argument("--model", required=True, help="the teacher: LDM3D hub id or local folder (the fast side is the "
                    "same model with the LoRA, sampler and decoder below)")
    fs.add_argument("--captions", required=True, type=Path, help="text (one caption a line) or MS-COCO captions JSON")
    fs.add_argument("--n", type=int, default=None, help="use the first N captions (default: all)")
    seeds = fs.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="seed of the first caption; caption i gets seed + i (0)")
    seeds.add_argument("--seeds", nargs="+", metavar="SEEDS", help="one seed per caption, e.g. 3,7,9")
    fs.add_argument("--size", type=_size, default=(512, 512), help="N or WxH (512; 1024x512: a panorama, seamless)")
    fast = fs.add_argument_group("the fast set-up (as generate takes it; flags given beside --fast win)")
    fast.add_argument("--fast", default=None, choices=list(PRESETS), help="few-step preset (docs/fast.md): its "
                      "LoRA, sampler, steps and guidance")
    fast.add_argument("--lora", action="append", default=[], metavar="[NAME=]SOURCE[:SCALE]",
                      help="LoRA(s) of the fast side only; one named like the --fast preset replaces its LoRA")
    fast.add_argument("--fuse-lora", action="store_true", help="merge the fast side's LoRAs into its weights (as a "
                      "show would run them with serve --fuse-lora: time that)")
    fast.add_argument("--steps", nargs="+", metavar="STEPS", help="step counts, one fast configuration each, "
                      "e.g. 1,2,4,8 (default: the preset's)")
    fast.add_argument("--scheduler", default=None, choices=generation_param("scheduler").choices,
                      help="sampler (the preset's; else ddim)")
    fast.add_argument("--guidance", type=float, default=None, help="guidance (the preset's; else 7)")
    fast.add_argument("--spacing", default=None, choices=generation_param("spacing").choices,
                      help="timestep spacing (the preset's; else auto)")
    fast.add_argument("--eta", type=float, default=None, help="tcd's eta (the preset's; else 0.3)")
    fast.add_argument("--decoder", default="full", metavar="full|tiny|FOLDER", help="the fast side's decoder (full)")
    teacher = fs.add_argument_group("the teacher (no LoRA, full decoder)")
    teacher.add_argument("--teacher-steps", type=int, default=50, help="steps (50)")
    teacher.add_argument("--teacher-guidance", type=float, default=7.0, help="guidance (7)")
    teacher.add_argument("--teacher-scheduler", default="ddim", choices=["ddim", "dpm++", "euler"],
                         help="sampler (ddim)")
    fs.add_argument("--clip-model", default=DEFAULT_CLIP, help=f"CLIP for the scores, or none ({DEFAULT_CLIP})")
    fs.add_argument("--perceptual", default=DEFAULT_PERCEPTUAL, metavar="WEIGHTS|none",
                    help=f"VGG16 weights (file or hub id) of the LPIPS-style distance, or none ({DEFAULT_PERCEPTUAL})")
    fs.add_argument("--perceptual-lin", default="lpips", metavar="lpips|equal|FILE",
                    help="per-channel weights of the distance: lpips (LPIPS's learned ones, its vgg.pth: from an "
                    "installed lpips package or the cache's lpips/vgg.pth), a vgg.pth file or hub id REPO:FILE, or "
                    "equal (not LPIPS: smaller distances) (lpips)")
    fs.add_argument("-o", "--output", required=True, type=Path, help="report folder: fewstep.json, fewstep.md, "
                    "fewstep.png and frames/")
    fs.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N, mps, cpu")
    fs.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"], help="LDM3D precision")
    fs.add_argument("--offline", action="store_true", help="use only models already downloaded")


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
    from ..sharding import join
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
    with join() as shard:  # several processes (accelerate launch, torchrun): only the main one scores
        device = shard.device(args.device)
        weights = _inception_weights(args) if shard.main else None  # first: a missing file costs no model load
        backend = load_backend(args.model, device=device, dtype=args.dtype, revision=None,
                               local_files_only=args.offline, compile=False)
        depth_model = DepthModel.load(args.depth_model, device=device, local_files_only=args.offline)
        if not options.pano and not depth_model.metric:
            raise ValueError(f"{args.depth_model} predicts relative depth; AbsRel and RMSE in metres need a metric "
                             f"reference such as {DEFAULT_REFERENCE_DEPTH}")
        clip = ClipScorer.load(args.clip_model, device=device, local_files_only=args.offline) if shard.main else None
        features = _features(weights, pick_device(device)) if weights is not None else None
        tools = Tools(generate=lambda params: backend.generate(params, lambda step, total: None, lambda: False),
                      features=features, clip=clip, reference_depth=_reference_depth(depth_model),
                      depth_model=args.depth_model, clip_model=args.clip_model)
        result = run(options, tools, shard)
    if result is not None:
        summarise(result, args.output)
    return 0


def _check_decoder(spec: str, model: str) -> None:
    """--decoder, before any model loads: full, tiny (MODEL/tiny-decoder, checked when MODEL is a folder) or a tiny
    decoder's folder (its record read)."""
    from ..backends.tiny_decoder import FOLDER_NAME, read_info

    if spec == "full":
        return
    if spec == "tiny":
        folder = Path(model).expanduser()
        if folder.is_dir() and not (folder / FOLDER_NAME).is_dir():
            raise ValueError(f"--decoder tiny: {folder / FOLDER_NAME} does not exist (train one with `python -m "
                             "generator train tiny-decoder`, or pass --decoder FOLDER)")
        return
    if not Path(spec).expanduser().is_dir():
        raise ValueError(f"--decoder {spec!r}: choose full, tiny or a tiny decoder's folder ({spec} is not a folder)")
    read_info(Path(spec).expanduser())


def fewstep_options(args: argparse.Namespace):
    """Every fewstep input checked (captions, steps, seeds, sizes, LoRA names, decoder), before any model loads."""
    from ..fast import preset, with_preset
    from .captions import read_captions
    from .fewstep import Options, seed_list, step_list

    if args.model in ("auto", "demo"):
        raise ValueError(f"--model {args.model}: name the LDM3D teacher (a hub id or a folder)")
    if args.output.exists() and not args.output.is_dir():
        raise ValueError(f"-o {args.output}: a file is in the way of the report folder")
    captions = read_captions(args.captions, args.n)
    given = {key: getattr(args, key) for key in ("scheduler", "guidance", "spacing", "eta")
             if getattr(args, key) is not None}
    fast, loras = with_preset(args.fast, given, args.lora)
    preset_steps = fast.pop("steps", None)
    if args.steps:
        steps = step_list(args.steps)
    elif preset_steps is not None:
        steps = [preset_steps]
    else:
        raise ValueError("--steps: give the fast side's step counts (e.g. --steps 1,2,4,8) or a --fast preset")
    if args.fast:
        chosen = preset(args.fast)
        replaced = any(spec.split("=", 1)[0] == chosen.name for spec in args.lora)
        log.info("--fast %s: %s (licence: %s; %s)", chosen.name, "its LoRA replaced by --lora " + chosen.name
                 if replaced else f"LoRA {chosen.lora}", chosen.licence, chosen.card)
    _check_decoder(args.decoder, args.model)
    width, height = args.size
    return Options(model=args.model, captions=captions, output=args.output, steps=steps,
                   seeds=seed_list(args.seeds, args.seed, len(captions)), fast=fast,
                   teacher={"scheduler": args.teacher_scheduler, "steps": args.teacher_steps,
                            "guidance": args.teacher_guidance},
                   width=width, height=height, loras=loras, decoder=args.decoder, fuse_loras=args.fuse_lora,
                   preset=args.fast)


def run_fewstep(args: argparse.Namespace) -> int:
    from ..backends import load_backend
    from ..backends.ldm3d import pick_device
    from .clip import ClipScorer
    from .fewstep import PerceptualDistance, Tools, run, summarise

    options = fewstep_options(args)
    perceptual = None
    if args.perceptual != "none":  # the small networks first: a wrong weights file costs no LDM3D load
        from ..train.losses import load_perceptual

        network = load_perceptual(args.perceptual, args.perceptual_lin)
        perceptual = PerceptualDistance(network, f"{args.perceptual} + {args.perceptual_lin}", pick_device(args.device))
    clip = None if args.clip_model == "none" else ClipScorer.load(args.clip_model, device=args.device,
                                                                  local_files_only=args.offline)
    common = {"device": args.device, "dtype": args.dtype, "revision": None, "local_files_only": args.offline,
              "compile": False}
    teacher = load_backend(args.model, **common)  # the model as it ships: no LoRA, full decoder
    fast = teacher
    if options.loras or options.decoder != "full":
        fast = load_backend(args.model, **common, **({"decoder": options.decoder} if options.decoder != "full" else {}),
                            **({"loras": tuple(options.loras), "fuse_loras": options.fuse_loras}
                               if options.loras else {}))
    tools = Tools(teacher=teacher, fast=fast, clip=clip, perceptual=perceptual, clip_model=args.clip_model,
                  perceptual_model=perceptual.name if perceptual else "none")
    result = run(options, tools)
    summarise(result, args.output)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    """``python -m generator evaluate text2rgbd|autoencoder|fewstep``."""
    if args.kind == "text2rgbd":
        return run_text2rgbd(args)
    if args.kind == "fewstep":
        return run_fewstep(args)
    from ..backends.ldm3d import pick_device
    from .autoencoder import run_cli

    return run_cli(args, _features(_inception_weights(args), pick_device(args.device)))
