"""Command line: ``python -m generator serve`` and ``python -m generator generate PROMPT -o DIR``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from td_bridge.addresses import DEFAULT_COMMANDS, DEFAULT_FRAMES, AddressError
from td_bridge.params import (DISPLAY_PARAMS, ESTIMATION_PARAMS, GENERATION_PARAMS, REMIX_PARAMS, VIEW_PARAMS, Param,
                              ParamError, resolve_seed, validate, validate_generation)

from .backends.base import BackendUnavailable
from .estimators.checkpoints import DEFAULT_MODEL as DEFAULT_ESTIMATOR
from .library import LibraryError
from .render.video import PATHS
from .upscaling import DEFAULT_UPSCALER, UPSCALE_PARAMS, upscale_frame, upscale_params
from .render.views import VIEWS
from .sharding import Shard, join
from .train import cli as train_cli
from .evaluate import cli as evaluate_cli

log = logging.getLogger("depthfusion")
DEFAULT_WEB = "127.0.0.1:8080"  # generator.web.server.DEFAULT_ADDRESS (aiohttp is imported only when serving)


def _param_type(param: Param):
    def convert(text: str) -> Any:
        try:
            return param.coerce(text)
        except ParamError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = param.kind.__name__
    return convert


def _add_param_flags(parser: argparse.ArgumentParser, params: Sequence[Param], title: str,
                     skip: Sequence[str] = ()) -> None:
    group = parser.add_argument_group(title)
    for param in params:
        if param.name in skip:
            continue
        unit = f" [{param.unit}]" if param.unit else ""
        group.add_argument(param.flag, dest=param.name, type=_param_type(param), default=None,
                           help=f"{param.help}{unit} ({param.describe_range()}; default {param.default!r})")


def _add_library_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--library", type=Path, default=None, metavar="DIR",
                        help="frame library folder (default: your user data folder, DepthFusion/library)")
    parser.add_argument("--no-library", action="store_true", help="do not keep frames on disk")


def _library(args: argparse.Namespace, *, verify: bool = False):
    """The frame library the flags name, None with --no-library; ``verify`` checks every entry now."""
    from .library import FrameLibrary, default_root

    if getattr(args, "no_library", False):
        return None
    library = FrameLibrary(args.library or default_root())
    if verify:
        library.verify()
    return library


def _add_model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="auto",
                        help="auto (LDM3D if its weights load, else demo), demo, an LDM3D hub id / local folder, a "
                        "diffusers text-to-image pipeline (SD 1.x/2.x, SDXL, Z-Image: the panorama backend, depth from "
                        "--estimator) or preset:NAME (docs/models.md)")
    parser.add_argument("--demo-step-delay", type=float, default=0.0, metavar="SECONDS",
                        help="demo backend: pause per step to rehearse with model-like timing (0-10)")
    ldm3d = parser.add_argument_group("LDM3D options")
    ldm3d.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu; "
                       "serve also takes a comma list (cuda:0,cuda:1: one worker and model copy each; cpu may "
                       "repeat) or all (every CUDA GPU), docs/devices.md")
    ldm3d.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"],
                       help="weights precision; auto = fp16 on a GPU, fp32 on the CPU")
    ldm3d.add_argument("--offload", default="none", choices=["none", "model", "sequential"],
                       help="panorama backend on a GPU: keep the weights in host memory and move them to the GPU "
                       "model by model (model) or layer by layer (sequential: least memory, slowest); a model too "
                       "big for the GPU is refused before loading (docs/models.md#memory)")
    ldm3d.add_argument("--revision", default=None, help="hub branch, tag or commit of the model")
    ldm3d.add_argument("--offline", action="store_true", help="use only weights already downloaded")
    ldm3d.add_argument("--compile", nargs="?", const="default", default=None,
                       choices=["default", "reduce-overhead", "max-autotune"],
                       help="torch.compile the U-Net (slow first frame); reduce-overhead adds CUDA graphs (GPU)")
    ldm3d.add_argument("--decoder", default="full", metavar="full|tiny|FOLDER",
                       help="latents → RGBD: full (the model's VAE), tiny (MODEL/tiny-decoder, made by `train "
                       "tiny-decoder`) or a tiny decoder's folder; depth stays 16-bit (full)")
    ldm3d.add_argument("--lora", action="append", default=[], metavar="[NAME=]SOURCE[:SCALE]",
                       help="load a Stable Diffusion 1.x LoRA (kohya/A1111 or diffusers naming): a .safetensors "
                       "file, a folder holding one, a hub id, or owner/repo/FILE.safetensors; SCALE its weight "
                       "(1); NAME how the lora_N generation parameters pick it (the file's name). Repeatable")
    ldm3d.add_argument("--fuse-lora", action="store_true",
                       help="merge the --lora set into the weights at its scales (faster; the lora_N parameters "
                       "can then not change it per frame)")


def _add_fast_flag(parser: argparse.ArgumentParser) -> None:
    from .fast import PRESETS

    parser.add_argument("--fast", default=None, choices=list(PRESETS),
                        help="few-step preset: a published SD 1.5 distillation LoRA with the sampler, steps and "
                        "guidance its model card documents (docs/fast.md); flags given beside it win")


def _add_licence_flags(parser: argparse.ArgumentParser, estimator: bool) -> None:
    parser.add_argument("--commercial", action="store_true", help="refuse, before anything loads, any model, LoRA or "
                        "depth model whose licence does not allow commercial use or is not known (docs/models.md)")
    if estimator:
        parser.add_argument("--estimator", default=DEFAULT_ESTIMATOR, metavar="MODEL", help="depth model of the "
                            f"panorama backend (--model PIPELINE or preset:NAME; default {DEFAULT_ESTIMATOR})")


def _add_upscaler_flags(parser: argparse.ArgumentParser, device_flags: bool = False) -> None:
    group = parser.add_argument_group("upscaler")
    group.add_argument("--upscaler", default=DEFAULT_UPSCALER, help=f"ldm3d-sr hub id or local folder "
                       f"({DEFAULT_UPSCALER})")
    if device_flags:
        group.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu")
        group.add_argument("--dtype", default="auto", choices=["auto", "fp16", "bf16", "fp32"],
                           help="weights precision; auto = fp16 on a GPU, fp32 on the CPU")
        group.add_argument("--revision", default=None, help="hub branch, tag or commit of the upscaler")
        group.add_argument("--offline", action="store_true", help="use only weights already downloaded")
    _add_param_flags(parser, UPSCALE_PARAMS, "upscale parameters")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m generator", description="DepthFusion RGBD generator")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="serve frames over ZeroMQ")
    _add_model_flags(serve)
    _add_fast_flag(serve)
    _add_licence_flags(serve, estimator=False)  # serve's --estimator (below) serves both
    serve.add_argument("--frames", default=DEFAULT_FRAMES,
                       help=f"publisher endpoint for frames and events ({DEFAULT_FRAMES})")
    serve.add_argument("--commands", default=DEFAULT_COMMANDS,
                       help=f"ROUTER endpoint for commands ({DEFAULT_COMMANDS})")
    serve.add_argument("--allow-lan", action="store_true", help="allow binding to addresses other than loopback")
    serve.add_argument("--history", type=int, default=32, help="frames kept in memory for get_frame (1-1000)")
    serve.add_argument("--queue-size", type=int, default=16, help="maximum waiting jobs (1-1000)")
    serve.add_argument("--generate", action="store_true", help="queue one generation at start-up")
    serve.add_argument("--live", action="store_true", help="start the live session at start-up: frames back to back "
                       "from the generation flags' parameters (docs/live.md); the ZeroMQ `live` command and OSC "
                       "/depthfusion/live steer and stop it")
    _add_library_flags(serve)
    osc = serve.add_argument_group("OSC (docs/osc.md)")
    osc.add_argument("--osc-port", type=int, default=9000, help="UDP port for OSC; 0 turns OSC off (9000)")
    osc.add_argument("--osc-host", default="127.0.0.1", help="address to listen on; a LAN address needs "
                     "--allow-lan and --osc-allow (127.0.0.1)")
    osc.add_argument("--osc-allow", action="append", default=[], metavar="NETWORK",
                     help="sender network allowed on a LAN address, e.g. 192.168.1.0/24 (repeatable)")
    osc.add_argument("--osc-reply-port", type=int, default=None, help="reply to the sender's host at this port "
                     "(show tools that listen on a fixed port) instead of its source port")
    osc.add_argument("--osc-target", action="append", default=[], metavar="HOST:PORT",
                     help="send progress, frame and state events here (repeatable)")
    _add_param_flags(serve, GENERATION_PARAMS, "generation parameters")
    serve.add_argument("--estimator", default=DEFAULT_ESTIMATOR, metavar="MODEL|none", help="depth model for estimate "
                       f"commands and --depth-check, loaded at the first use (default {DEFAULT_ESTIMATOR}; none: off)")
    serve.add_argument("--depth-check", action="store_true", help="after each generated frame, estimate depth from "
                       "its RGB and report how well the frame's depth agrees (AbsRel, delta1) in its header, status "
                       "events, OSC and the TouchDesigner component")
    serve.add_argument("--upscaler", default=None, metavar="MODEL", help=f"answer upscale commands with this ldm3d-sr "
                       f"hub id or folder (e.g. {DEFAULT_UPSCALER}), loaded at the first one (default: none)")
    serve.add_argument("--web", nargs="?", const=DEFAULT_WEB, default=None, metavar="ADDRESS",
                       help=f"also serve the web viewer (docs/web.md) at ADDRESS ({DEFAULT_WEB}); a LAN address needs "
                       "--allow-lan and the access token the log prints")

    gen = sub.add_parser("generate", help="generate one frame and write rgb.png, depth.png, metadata.json")
    gen.add_argument("prompt", type=_param_type(GENERATION_PARAMS[0]), help="what to generate")
    gen.add_argument("-o", "--output", required=True, type=Path, help="output folder (created if missing)")
    gen.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_library_flags(gen)
    _add_model_flags(gen)
    _add_fast_flag(gen)
    _add_licence_flags(gen, estimator=True)
    _add_param_flags(gen, GENERATION_PARAMS, "generation parameters", skip=("prompt",))
    gen.add_argument("--upscale", action="store_true", help="then upscale the frame with ldm3d-sr (the --upscale-* "
                     "flags); the output folder gets the upscaled frame, the library both")
    _add_upscaler_flags(gen)

    export = sub.add_parser("export", help="write a frame folder (from generate) as a displaced sphere mesh")
    export.add_argument("frame", type=Path, help="folder holding rgb.png, depth.png and metadata.json")
    export.add_argument("-o", "--output", required=True, type=Path, help="mesh file: .glb, .obj or .ply")
    export.add_argument("--overwrite", action="store_true", help="replace existing files")
    _add_param_flags(export, DISPLAY_PARAMS, "mesh parameters")

    depth = sub.add_parser("depth", help="estimate depth for images or 360° panoramas; write rgb.png, depth.png, "
                           "metadata.json")
    depth.add_argument("images", nargs="+", type=Path, help="image files (PNG, JPEG, TIFF, WebP, ...)")
    depth.add_argument("-o", "--output", required=True, type=Path,
                       help="output folder; with several images, one subfolder per image name")
    depth.add_argument("--overwrite", action="store_true", help="replace existing output files")
    depth.add_argument("--model", default=DEFAULT_ESTIMATOR, help="depth model: hub id or local folder "
                       f"(DPT, Depth Anything, ZoeDepth; default {DEFAULT_ESTIMATOR})")
    depth.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:N, mps or cpu")
    depth.add_argument("--revision", default=None, help="hub branch, tag or commit of the model")
    depth.add_argument("--offline", action="store_true", help="use only weights already downloaded")
    _add_library_flags(depth)
    _add_param_flags(depth, ESTIMATION_PARAMS, "estimation parameters")

    download = sub.add_parser("download", help="fetch the files an LDM3D model needs into the Hugging Face cache")
    download.add_argument("model", help="hub id, e.g. Intel/ldm3d-pano (Intel/ldm3d-4c, Intel/ldm3d)")
    download.add_argument("--revision", default=None, help="hub branch, tag or commit (default main)")

    render = sub.add_parser("render", help="draw a frame folder or library frame id as stereo images, 360° stereo, "
                            "a dome or a video, with the TouchDesigner component's shaders")
    render.add_argument("frame", help="folder holding rgb.png and depth.png, or a frame id from the library")
    target = render.add_mutually_exclusive_group(required=True)
    target.add_argument("-o", "--output", type=Path, help="image file: .png or .jpg")
    target.add_argument("--video", type=Path, metavar="OUT.mp4", help="write a video along --path instead")
    render.add_argument("--view", default="sbs", choices=VIEWS, help="left, right, mono (head centre), sbs "
                        "(left | right), tb (left above right), anaglyph (red-cyan), ods (360° stereo, left above "
                        "right), dome (fisheye), cubemap (6 faces +X -X +Y -Y +Z -Z in a row) (sbs)")
    render.add_argument("--overwrite", action="store_true", help="replace an existing file")
    render.add_argument("--samples", type=int, default=4, choices=[1, 2, 4, 8], help="multisampling (4)")
    clip = render.add_argument_group("video")
    clip.add_argument("--path", default="orbit", choices=PATHS, help="camera path: orbit (a circle), dolly "
                      "(forwards and back), sway (side to side); one loop per clip (orbit)")
    clip.add_argument("--seconds", type=float, default=6.0, help="clip length (6)")
    clip.add_argument("--fps", type=int, default=30, help="frames per second (30)")
    clip.add_argument("--amplitude", type=float, default=None, metavar="METRES",
                      help="how far the path moves the head (default: a fifth of the way to the nearest surface)")
    _add_library_flags(render)
    _add_param_flags(render, DISPLAY_PARAMS, "display parameters")
    _add_param_flags(render, VIEW_PARAMS, "view parameters (as the TouchDesigner component's)")

    view = sub.add_parser("view", help="show a frame folder, library frame id or exported mesh in the web viewer "
                          "(docs/web.md), without a generator")
    view.add_argument("frame", metavar="FOLDER|FRAME_ID|MESH.glb", help="folder holding rgb.png and depth.png, a "
                      "frame id from the library, or a .glb from export")
    view.add_argument("--web", default=DEFAULT_WEB, metavar="ADDRESS", help=f"where to serve the page ({DEFAULT_WEB}); "
                      "a LAN address needs --allow-lan and the access token the log prints")
    view.add_argument("--allow-lan", action="store_true", help="allow serving on addresses other than loopback")
    _add_library_flags(view)
    _add_param_flags(view, DISPLAY_PARAMS, "display parameters")
    _add_param_flags(view, VIEW_PARAMS, "view parameters (as the TouchDesigner component's)")

    upscale = sub.add_parser("upscale", help="upscale a frame folder or library frame id with ldm3d-sr into a new "
                             "frame linked to its source; write rgb.png, depth.png, metadata.json")
    upscale.add_argument("frame", help="folder holding rgb.png and depth.png, or a frame id from the library")
    upscale.add_argument("-o", "--output", required=True, type=Path, help="output folder (created if missing)")
    upscale.add_argument("--overwrite", action="store_true", help="replace existing output files")
    _add_library_flags(upscale)
    _add_upscaler_flags(upscale, device_flags=True)

    remix = sub.add_parser("remix", help="regenerate a region of a frame folder or library frame id with a new "
                           "prompt, keeping the rest; write rgb.png, depth.png, metadata.json (docs/remix.md)")
    remix.add_argument("frame", help="folder holding rgb.png and depth.png, or a frame id from the library")
    remix.add_argument("-o", "--output", required=True, type=Path, help="output folder (created if missing)")
    remix.add_argument("--overwrite", action="store_true", help="replace existing output files")
    where = remix.add_mutually_exclusive_group()
    where.add_argument("--region", default=None, metavar="YAW,PITCH,WIDTH,HEIGHT",
                       help="the region on the sphere in degrees (sets the --remix-* flags of the same names)")
    where.add_argument("--mask", type=Path, default=None, metavar="FILE",
                       help="a grey mask image of the frame's size: white repaints, black keeps, grey blends")
    _add_library_flags(remix)
    _add_model_flags(remix)
    _add_licence_flags(remix, estimator=True)
    _add_param_flags(remix, GENERATION_PARAMS, "generation parameters", skip=("width", "height"))
    _add_param_flags(remix, REMIX_PARAMS, "region (on the sphere)")

    train_cli.add_dataset_parser(sub)
    train_cli.add_train_parser(sub)

    sub.add_parser("osc-doc", help="print the OSC address space (docs/osc.md) from the parameter schema")
    evaluate_cli.add_parser(sub)

    pre = sub.add_parser("pregenerate", help="generate a cue list (TOML or CSV) into the library up front")
    pre.add_argument("cues", type=Path, help="cue list: .toml ([[cue]] tables) or .csv (a header row)")
    _add_library_flags(pre)
    _add_model_flags(pre)
    pre.add_argument("--upscaler", default=DEFAULT_UPSCALER, help="ldm3d-sr hub id or folder for the cues with "
                     f"upscale = true ({DEFAULT_UPSCALER}; loaded only if one needs it)")
    pre.add_argument("--estimator", default=DEFAULT_ESTIMATOR, help="depth model for the cues that name an image "
                     f"({DEFAULT_ESTIMATOR}; loaded only if one needs it)")

    lib = sub.add_parser("library", help="list, delete or export kept frames")
    _add_library_flags(lib)
    lib_sub = lib.add_subparsers(dest="action", required=True)
    listing = lib_sub.add_parser("list", help="newest first")
    listing.add_argument("--search", default="", help="text in the prompt or cue")
    listing.add_argument("--limit", type=int, default=50)
    delete = lib_sub.add_parser("delete", help="remove frames")
    delete.add_argument("frame_ids", nargs="+")
    zip_ = lib_sub.add_parser("export", help="write frames into a zip")
    zip_.add_argument("frame_ids", nargs="+")
    zip_.add_argument("-o", "--output", type=Path, required=True)
    return parser


def _given_params(args: argparse.Namespace, params: Sequence[Param] = GENERATION_PARAMS) -> dict[str, Any]:
    return {p.name: getattr(args, p.name) for p in params if getattr(args, p.name, None) is not None}


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {value:g}")


def _generation_setup(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """(generation parameters given, LoRA arguments), with the --fast preset under them (serve and generate)."""
    from .fast import preset, with_preset

    from .backends.pano_presets import with_preset as with_pano_preset

    if getattr(args, "fast", None):
        chosen = preset(args.fast)
        log.info("--fast %s: LoRA %s (licence: %s; %s)", chosen.name, chosen.lora, chosen.licence, chosen.card)
    given, loras = with_pano_preset(args.model, _given_params(args), args.lora)
    given, loras = with_preset(getattr(args, "fast", None), given, loras)
    if getattr(args, "commercial", False):
        _check_commercial(args, loras)
    return given, loras


def _check_commercial(args: argparse.Namespace, loras: Sequence[str]) -> None:
    """--commercial: refuse every component whose licence does not allow commercial use, before anything loads."""
    from .backends.ldm3d_files import CHECKPOINTS
    from .backends.licences import commercial_problems
    from .backends.lora import parse
    from .backends.pano_presets import is_preset, preset

    models = {"demo": [], "auto": list(CHECKPOINTS)}.get(args.model, [args.model])  # auto may load any of them
    if is_preset(args.model):
        models = list(preset(args.model).components())
    estimator = getattr(args, "estimator", "none")
    upscaler = getattr(args, "upscaler", None) if getattr(args, "upscale", True) else None
    components = [*models, *(parse(spec).source for spec in loras), *([estimator] if estimator != "none" else []),
                  *([upscaler] if upscaler else [])]
    problems = commercial_problems(components)
    if problems:
        raise ValueError("--commercial: " + "; ".join(problems))


def _take_defaults(args: argparse.Namespace, backend: Any) -> dict[str, Any]:
    """A live take's full quality: serve's own flags, without the --fast preset's sampler, steps and LoRA."""
    from .fast import take_defaults

    loras = getattr(backend, "loras", None)
    loaded = {name: lora.scale for name, lora in loras.loaded.items()} if loras is not None else {}
    return take_defaults(getattr(args, "fast", None), _given_params(args), loaded)


def _backend(args: argparse.Namespace, loras: Sequence[str] | None = None, device: str | None = None):
    """The backend the model flags name, on ``device`` (default --device)."""
    from .backends import load_backend

    loras = list(args.lora if loras is None else loras)
    if args.fuse_lora and not loras:
        raise ValueError("--fuse-lora needs --lora (or --fast)")
    estimator = getattr(args, "estimator", None)
    return load_backend(args.model, demo_step_delay=args.demo_step_delay, device=device or args.device,
                        dtype=args.dtype,
                        revision=args.revision, local_files_only=args.offline, compile=args.compile,
                        **({"estimator": estimator} if estimator else {}),  # none: the panorama backend refuses
                        **({"decoder": args.decoder} if args.decoder != "full" else {}),
                        **({"offload": args.offload} if args.offload != "none" else {}),
                        **({"loras": tuple(loras), "fuse_loras": args.fuse_lora} if loras else {}))


def cmd_serve(args: argparse.Namespace) -> int:
    from .serving.osc import OscConfig
    from .serving.server import GeneratorServer
    from .serving.workers import device_name, parse_devices

    _check_range("--history", args.history, 1, 1000)
    _check_range("--queue-size", args.queue_size, 1, 1000)
    devices = parse_devices(args.device)
    given, loras = _generation_setup(args)
    startup = validate_generation(given)
    osc = None
    if args.osc_port:
        osc = OscConfig(host=args.osc_host, port=args.osc_port, allow_lan=args.allow_lan, allow=args.osc_allow,
                        reply_port=args.osc_reply_port, targets=args.osc_target)
        osc.check()  # before the model loads: a typo should not cost a minute
    library = _library(args)
    backends = [_backend(args, loras, device) for device in devices]  # one copy of the model per worker
    names = [device_name(b) if d == "auto" else d for b, d in zip(backends, devices)]
    backend = backends[0]
    server = GeneratorServer(backends, frames_address=args.frames, commands_address=args.commands,
                             allow_lan=args.allow_lan, history=args.history, max_waiting=args.queue_size, osc=osc,
                             library=library, upscaler=_lazy_upscaler(args), estimator=_lazy_estimator(args),
                             depth_check=args.depth_check, defaults=given, live=bool(getattr(args, "live", False)),
                             take_defaults=_take_defaults(args, backend), devices=names)
    server.bind()
    log.info("backend %s (model %s) on %s", backend.name, backend.model, ", ".join(names))
    log.info("frames on %s, commands on %s", server.frames_endpoint, server.commands_endpoint)
    if args.generate:
        job = server.jobs.submit(resolve_seed(startup))
        log.info("job %s queued at start-up", job.id)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    web = None
    if args.web is not None:
        from .web.sources import GeneratorLink

        web = _start_web(args, GeneratorLink(server.frames_endpoint, server.commands_endpoint), {})
    try:
        server.serve(stop)
    finally:
        if web is not None:
            web.stop()
    log.info("stopped")
    return 0


def _start_web(args: argparse.Namespace, source: Any, settings: dict[str, Any]) -> Any:
    """The web viewer for ``source`` at ``--web``, started; logs the page's address (with the LAN token)."""
    from .web.server import WebServer, parse_address

    host, port = parse_address(args.web, args.allow_lan)
    web = WebServer(source, host, port, allow_lan=args.allow_lan, settings=settings)
    web.start()
    announce_page(web.url, web.urls, web.token is not None, sys.stderr)
    return web


def announce_page(bound: str, urls: list[str], lan: bool, stream: Any) -> None:
    """Log the page's address (``bound``) and, where that is a wildcard, the ``urls`` a browser opens; a LAN page's
    first URL (with its token) also as a QR code on ``stream`` for a phone."""
    from .web.qr import print_qr

    log.info("web viewer on %s", bound)
    if urls != [bound]:
        log.info("open it at %s", " or ".join(urls) if urls else
                 "this computer's LAN address (none found here) with the same port and token")
    if lan and urls and not print_qr(urls[0], stream):
        log.info("(this console cannot show the QR code's block characters: type the address)")


def cmd_view(args: argparse.Namespace) -> int:
    """Serve one saved frame or exported mesh in the web viewer until interrupted."""
    from td_bridge.protocol import Frame

    from .render.cli import load_frame
    from .web.meshes import load_model, pack_model
    from .web.messages import view_message
    from .web.sources import SavedFrame, SavedMesh

    settings = {**_given_params(args, DISPLAY_PARAMS), **_given_params(args, VIEW_PARAMS)}
    if args.frame.lower().endswith(".glb"):
        source: SavedFrame = SavedMesh(pack_model(load_model(Path(args.frame))))
    else:
        meta, rgb, depth = load_frame(args.frame, _library(args))
        source = SavedFrame(Frame(rgb, depth, meta))
    view_message(settings, source.packed)  # the flags checked against the frame before the page is served
    web = _start_web(args, source, settings)
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    finally:
        web.stop()
    log.info("stopped")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .frames import make_frame

    given, loras = _generation_setup(args)
    params = resolve_seed(validate_generation({**given, "prompt": args.prompt}))
    out: Path = args.output
    _check_frame_folder(out, args.overwrite)
    upscale = upscale_params(_given_params(args, UPSCALE_PARAMS)) if args.upscale else None
    library = _library(args)
    backend = _backend(args, loras)
    upscaler = _upscaler(args, revision=None) if upscale else None  # loaded before a minute-long generation
    with tqdm(desc=f"{backend.name}", unit="step", leave=False) as bar:
        header, result = make_frame(backend, params, _bar_progress(bar), lambda: False)
    if upscaler is not None:
        if library is not None:  # the source is kept too: the upscaled frame links to it
            library.save(header, result.rgb, result.depth)
        with tqdm(desc=upscaler.name, unit="step", leave=False) as bar:
            header, result = upscale_frame(upscaler, header, result.rgb, result.depth, upscale, _bar_progress(bar),
                                           lambda: False)
    _write_frame_folder(out, header, result)
    if library is not None:
        library.save(header, result.rgb, result.depth)
    print(f"wrote {out} (frame {header['frame_id']}, seed {params['seed']}, {header['timings']['generate_s']:.2f} s)")
    return 0


def _bar_progress(bar: Any):
    def progress(step: int, total: int) -> None:
        bar.total = total
        bar.update(step - bar.n)

    return progress


def _check_frame_folder(out: Path, overwrite: bool) -> None:
    from .library import FILES

    existing = [str(out / name) for name in FILES if (out / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{', '.join(existing)} already there; pass --overwrite or choose another folder")


def _write_frame_folder(out: Path, header: dict[str, Any], result: Any) -> None:
    from td_bridge.depth import write_depth_png

    from .images import write_rgb_png

    out.mkdir(parents=True, exist_ok=True)
    write_rgb_png(out / "rgb.png", result.rgb)
    write_depth_png(out / "depth.png", result.depth)
    (out / "metadata.json").write_text(json.dumps(header, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _upscaler(args: argparse.Namespace, **options: Any):
    from .upscaling import load_upscaler

    return load_upscaler(args.upscaler, **{"device": args.device, "dtype": args.dtype, "revision": args.revision,
                                           "local_files_only": args.offline, **options})


def _lazy_estimator(args: argparse.Namespace):
    """What loads the --estimator on a device (serve: each worker its own copy, at its first use), or None for
    --estimator none."""
    if args.estimator.lower() == "none":
        if getattr(args, "depth_check", False):
            raise SystemExit("serve: --depth-check needs an --estimator")
        return None

    def load(device: str) -> Any:
        from .estimators.model import DepthModel  # torch and transformers only when an estimate comes

        return DepthModel.load(args.estimator, device=device, local_files_only=args.offline)

    return load


def _lazy_upscaler(args: argparse.Namespace):
    """serve: what loads the --upscaler on a device (each worker its own copy, at its first upscale), or None."""
    if args.upscaler is None:
        return None
    return lambda device: _upscaler(argparse.Namespace(**{**vars(args), "device": device}), revision=None)


def cmd_upscale(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .render.cli import load_frame

    upscale = upscale_params(_given_params(args, UPSCALE_PARAMS))
    _check_frame_folder(args.output, args.overwrite)
    library = _library(args)
    meta, rgb, depth = load_frame(args.frame, library)
    upscaler = _upscaler(args)
    with tqdm(desc=upscaler.name, unit="step", leave=False) as bar:
        header, result = upscale_frame(upscaler, meta, rgb, depth, upscale, _bar_progress(bar), lambda: False)
    _write_frame_folder(args.output, header, result)
    if library is not None:
        library.save(header, result.rgb, result.depth)
    print(f"wrote {args.output} (frame {header['frame_id']}, {rgb.shape[1]}x{rgb.shape[0]} → {result.rgb.shape[1]}x"
          f"{result.rgb.shape[0]}, upscale seed {upscale['upscale_seed']}, {header['timings']['generate_s']:.2f} s)")
    return 0


def cmd_remix(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .remixing import read_mask, region_mask, remix_frame, remix_params
    from .render.cli import load_frame

    given, loras = _generation_setup(args)  # a preset's size gives way to the source's
    given = {**{k: v for k, v in given.items() if k not in ("width", "height")}, **_given_params(args, REMIX_PARAMS)}
    if args.region is not None:
        parts = args.region.split(",")
        if len(parts) != 4:
            raise ParamError(f"--region takes YAW,PITCH,WIDTH,HEIGHT in degrees, got {args.region!r}")
        given.update(zip(("remix_yaw", "remix_pitch", "remix_width", "remix_height"), parts))
    _check_frame_folder(args.output, args.overwrite)
    library = _library(args)
    meta, rgb, depth = load_frame(args.frame, library)
    height, width = depth.shape
    params = remix_params(given, width, height)
    mask = read_mask(args.mask, width, height) if args.mask else region_mask(params, width, height)
    backend = _backend(args, loras)
    with tqdm(desc=f"{backend.name} remix", unit="step", leave=False) as bar:
        header, result = remix_frame(backend, meta, rgb, depth, mask, params, _bar_progress(bar), lambda: False,
                                     mask_name=args.mask.name if args.mask else None)
    _write_frame_folder(args.output, header, result)
    if library is not None:
        library.save(header, result.rgb, result.depth)
    alignment = result.info["remix"]["depth_alignment"]
    print(f"wrote {args.output} (frame {header['frame_id']} from {header['source_frame_id']}, seed {params['seed']}, "
          f"{alignment['repainted_share']:.0%} repainted, {header['timings']['generate_s']:.2f} s)")
    return 0


def _display_params(args: argparse.Namespace, meta: dict[str, Any]) -> dict[str, Any]:
    """Display flags given, validated; metric mapping takes the frame's recorded near/far unless given."""
    from .frames import display_for_frame

    return display_for_frame(_given_params(args, DISPLAY_PARAMS), meta)


def cmd_export(args: argparse.Namespace) -> int:
    from td_bridge.depth import read_depth_png

    from .export import export_mesh
    from .images import read_rgb_png

    meta_file, meta = args.frame / "metadata.json", {}
    if meta_file.exists():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{meta_file}: not valid JSON ({exc})") from None
    display = _display_params(args, meta)
    rgb, depth = read_rgb_png(args.frame / "rgb.png"), read_depth_png(args.frame / "depth.png")
    summary = export_mesh(args.output, rgb, depth, display, overwrite=args.overwrite)
    print(f"wrote {', '.join(summary['files'])}: {summary['vertices']} vertices, {summary['triangles']} triangles "
          f"({summary['culled']} culled across depth edges)")
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    from .render.cli import load_frame, run

    meta, rgb, depth = load_frame(args.frame, None if Path(args.frame).is_dir() else _library(args))
    return run(args, rgb, depth, _display_params(args, meta), _given_params(args, VIEW_PARAMS))


def cmd_library(args: argparse.Namespace) -> int:
    library = _library(args, verify=True)
    if library is None:
        raise ValueError("--no-library leaves nothing to list, delete or export")
    if args.action == "list":
        _check_range("--limit", args.limit, 1, 10000)
        for entry in library.find(args.search, args.limit):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.created_at))
            cue = f"  [{entry.cue}]" if entry.cue else ""
            print(f"{entry.frame_id}  {when}{cue}  {entry.prompt[:80]}")
        print(f"library {library.root}: {len(library)} frames", file=sys.stderr)
    elif args.action == "delete":
        library.delete(args.frame_ids)
        print(f"deleted {len(args.frame_ids)} frames")
    else:
        print(f"wrote {library.export_zip(args.frame_ids, args.output)} frames to {args.output}")
    return 0


def cmd_pregenerate(args: argparse.Namespace) -> int:
    from .cues import read_cues

    library = _library(args, verify=True)  # a broken frame does not count as done
    if library is None:
        raise ValueError("pregenerate fills the frame library; drop --no-library")
    cues = read_cues(args.cues)
    with join() as shard:  # under accelerate launch or torchrun, cue i is made by process i % processes
        args.device = shard.device(args.device)
        _pregenerate(args, library, shard, cues)
    return 0


def _pregenerate(args: argparse.Namespace, library: Any, shard: Shard, cues: list) -> None:
    """Make this process's share of the cues that are not in the library yet (all of them in one process)."""
    from tqdm import tqdm

    from .cues import is_image_cue, pending_cues
    from .frames import estimate_into_library, generate_into_library

    mine = shard.mine(cues)
    backend = _backend(args) if any(not is_image_cue(params) for _, params in mine) else None
    todo = pending_cues(mine, library, backend.model if backend else "", args.upscaler, args.estimator)
    problems = []
    for name, params in todo:  # what the model cannot make (an unknown LoRA, say) before the first frame
        try:
            if not is_image_cue(params) and hasattr(backend, "check"):
                backend.check({key: value for key, value in params.items() if key != "upscale"})
        except ParamError as exc:
            problems.append(f"cue {name}: {exc}")
    if problems:
        raise ParamError("; ".join(problems))
    share = f"{shard.describe()}: {len(mine)} of " if shard.sharded else ""
    print(f"{share}{len(cues)} cues, {len(mine) - len(todo)} already in {library.root}")
    upscaler = _upscaler(args, revision=None) if any("upscale" in params for _, params in todo) else None
    estimator = None
    if any(is_image_cue(params) for _, params in todo):
        load = _lazy_estimator(args)
        if load is None:
            raise ValueError("cues that name an image need a depth model: drop --estimator none")
        estimator = load(args.device)
    shard.barrier()  # every process has checked its cues before any makes a frame
    with tqdm(todo, unit="cue") as bar:
        for name, params in bar:
            bar.set_postfix_str(name[:30])
            upscale = params.pop("upscale", None)
            if is_image_cue(params):
                entry = estimate_into_library(estimator, params, library)
            else:
                entry = generate_into_library(backend, resolve_seed(params), library)
            if upscale is not None:
                header, rgb, depth = library.load(entry.frame_id)
                header, result = upscale_frame(upscaler, header, rgb, depth, upscale_params(upscale),
                                               lambda step, total: None, lambda: False)
                entry = library.save(header, result.rgb, result.depth)
            bar.write(f"{name}: {entry.frame_id}")


def cmd_depth(args: argparse.Namespace) -> int:
    from .estimators.command import run

    params = validate(_given_params(args, ESTIMATION_PARAMS), ESTIMATION_PARAMS)
    with join() as shard:  # under accelerate launch or torchrun, image i is estimated by process i % processes
        return run(args.images, args.output, params, overwrite=args.overwrite, library=_library(args),
                   model=args.model, device=shard.device(args.device), revision=args.revision, offline=args.offline,
                   shard=shard)


def cmd_download(args: argparse.Namespace) -> int:
    from .backends.ldm3d_files import download

    files = download(args.model, args.revision)
    print(f"{args.model} is ready in {files.folder}; serve it with --model {args.model}")
    return 0


def cmd_osc_doc(args: argparse.Namespace) -> int:
    from .serving.osc_space import reference

    sys.stdout.write(reference())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        commands = {"serve": cmd_serve, "generate": cmd_generate, "export": cmd_export, "osc-doc": cmd_osc_doc,
                    "pregenerate": cmd_pregenerate, "library": cmd_library, "render": cmd_render, "depth": cmd_depth,
                    "evaluate": evaluate_cli.run_evaluate, "view": cmd_view,
                    "download": cmd_download, "upscale": cmd_upscale, "remix": cmd_remix,
                    "dataset": train_cli.cmd_dataset, "train": train_cli.cmd_train}
        return commands[args.command](args)
    except (ParamError, AddressError, BackendUnavailable, LibraryError, ValueError, OSError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
