"""The ``dataset`` and ``train`` verbs' flags and runners (imported by generator.__main__; torch loads lazily)."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_dataset_parser(sub: argparse._SubParsersAction) -> None:
    dataset = sub.add_parser("dataset", help="prepare RGBD training data (images + captions → 16-bit depth)")
    dataset_sub = dataset.add_subparsers(dest="action", required=True)
    build = dataset_sub.add_parser("build", help="build or resume a dataset for `train autoencoder` / `train unet`")
    build.add_argument("source", nargs="?", default=None,
                       help="image folder with metadata.jsonl or metadata.csv (file_name + text/caption), a Hugging "
                       "Face dataset (hf:NAME, or a folder from save_to_disk), or library:[DIR] (frames keep their "
                       "own exact depth)")
    build.add_argument("-o", "--output", required=True, type=Path, help="dataset folder (resumed if it exists)")
    build.add_argument("--from-library", action="store_true", help="the frame library (--library DIR or the default)")
    build.add_argument("--library", type=Path, default=None, metavar="DIR", help="frame library for --from-library")
    build.add_argument("--variant", default="ldm3d", choices=["ldm3d", "ldm3d-4c", "ldm3d-pano"],
                       help="ldm3d: 6 channels 512x512; ldm3d-4c: 4 channels 512x512; ldm3d-pano: 4 channels "
                       "1024x512 (ldm3d)")
    build.add_argument("--width", type=int, default=None, help="override the variant's width (multiple of 8)")
    build.add_argument("--height", type=int, default=None, help="override the variant's height (multiple of 8)")
    build.add_argument("--min-side", type=int, default=0,
                       help="skip source images whose shorter side is smaller (default: half the target's)")
    build.add_argument("--shard-size", type=int, default=1000, help="items per shard folder (1000)")
    build.add_argument("--part", default="0/1", metavar="I/N", help="build only shards ≡ I mod N (parallel builds)")
    build.add_argument("--caption-column", default=None, help="caption column (default: text, else caption)")
    build.add_argument("--image-column", default="image", help="image column of a datasets dataset (image)")
    build.add_argument("--split", default="train", help="split of a datasets dataset (train)")
    depth = build.add_argument_group("depth estimation (not for library frames, whose depth is exact)")
    depth.add_argument("--estimator", default=None, metavar="MODEL",
                       help="depth model hub id or folder (default Intel/dpt-large: DPT-Large at 384, the paper's)")
    depth.add_argument("--device", default="auto", help="auto, cuda, cuda:N, mps or cpu")
    depth.add_argument("--revision", default=None, help="hub revision of the depth model")
    depth.add_argument("--offline", action="store_true", help="use only weights already downloaded")


def cmd_dataset(args: argparse.Namespace) -> int:
    from .dataset import DEFAULT_ESTIMATOR, VARIANTS, Spec, build, load_estimator, parse_part
    from .sources import LIBRARY_PREFIX, open_source

    if args.from_library == (args.source is not None):
        raise ValueError("give either a SOURCE or --from-library")
    spec_text = f"{LIBRARY_PREFIX}{args.library or ''}" if args.from_library else args.source
    channels, width, height = VARIANTS[args.variant]
    spec = Spec(channels, args.width or width, args.height or height, args.shard_size, args.min_side)
    part = parse_part(args.part)
    source = open_source(spec_text, caption_column=args.caption_column, image_column=args.image_column,
                         split=args.split)
    estimator, name = None, args.estimator or DEFAULT_ESTIMATOR
    if source.exact_depth:
        if args.estimator:
            raise ValueError("library frames carry their own depth; --estimator does not apply")
    else:
        estimator = load_estimator(name, device=args.device, revision=args.revision, offline=args.offline)
    print(f"{source.description} → {args.output} ({channels} channels, {spec.width}x{spec.height})")
    summary = build(source, args.output, spec, estimator=estimator, estimator_name=name, part=part)
    print(f"wrote {summary.written} items, skipped {summary.skipped} (see skipped.jsonl in the shards), "
          f"{summary.already} already done" + (f", {summary.other_parts} left to other parts" if part[1] > 1 else ""))
    return 0


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    from .options import (AUTOENCODER, AUTOENCODER_DEFAULTS, LCM_LORA, LCM_LORA_DEFAULTS, TINY_DECODER,
                          TINY_DECODER_DEFAULTS, UNET, UNET_DEFAULTS, add_options)

    train = sub.add_parser("train", help="fine-tune LDM3D: the RGBD autoencoder, then the U-Net; distil a tiny "
                           "decoder or a few-step LCM LoRA (accelerate)")
    stages = train.add_subparsers(dest="stage", required=True)
    ae = stages.add_parser("autoencoder", help="widen SD's KL autoencoder to RGB + depth and fine-tune it")
    add_options(ae, AUTOENCODER, AUTOENCODER_DEFAULTS)
    unet = stages.add_parser("unet", help="fine-tune the U-Net on the frozen RGBD autoencoder's latents")
    add_options(unet, UNET, UNET_DEFAULTS)
    tiny = stages.add_parser("tiny-decoder", help="distil the model's VAE decoder into a TAESD-sized RGB + depth "
                             "decoder (--decoder at generation)")
    add_options(tiny, TINY_DECODER, TINY_DECODER_DEFAULTS)
    lcm = stages.add_parser("lcm-lora", help="distil the model into a LoRA for few-step generation (latent "
                            "consistency distillation; --lora FILE --scheduler lcm at generation)")
    add_options(lcm, LCM_LORA, LCM_LORA_DEFAULTS)


def cmd_train(args: argparse.Namespace) -> int:
    from .options import (AUTOENCODER, AUTOENCODER_DEFAULTS, LCM_LORA, LCM_LORA_DEFAULTS, TINY_DECODER,
                          TINY_DECODER_DEFAULTS, UNET, UNET_DEFAULTS, resolve)

    given = {k: v for k, v in vars(args).items() if k not in ("command", "stage", "log_level")}
    if args.stage == "autoencoder":
        from .autoencoder import AutoencoderTrainer

        trainer = AutoencoderTrainer(resolve(given, AUTOENCODER, AUTOENCODER_DEFAULTS))
    elif args.stage == "tiny-decoder":
        from .tiny_decoder import TinyDecoderTrainer

        trainer = TinyDecoderTrainer(resolve(given, TINY_DECODER, TINY_DECODER_DEFAULTS))
    elif args.stage == "lcm-lora":
        from .lcm_lora import LcmLoraTrainer

        trainer = LcmLoraTrainer(resolve(given, LCM_LORA, LCM_LORA_DEFAULTS))
    else:
        from .unet import UNetTrainer

        trainer = UNetTrainer(resolve(given, UNET, UNET_DEFAULTS))
    folder = trainer.run()
    if trainer.accelerator.is_main_process:
        print(f"trained {args.stage}: {folder}")
    return 0
