"""One denoising step of each panorama architecture at 2048×1024 and the 360° depth, beside LDM3D's step at 1024×512.

    python bench/pano_step.py [--arch ldm3d,sd21,sdxl,zimage,flux,qwen,depth] [--device cpu|cuda]
                              [--dtype fp32|bf16|fp16] [--repeats 2] [--warmup 1] [--memory-gib 18]
                              [--views dense|cube] [--text-tokens 128] [--threads N] [--json FILE] [--smoke]

Each denoiser is built with random weights from its published config (the constants below, each with where it was
read) and called as its pipeline calls it in one step: the classifier-free-guidance batch of 2 where the usual
call has the negative pass in the same batch (SD 2.1, SDXL, LDM3D), two calls where the pipeline runs it
separately (Qwen-Image's true CFG), one call for the guidance-distilled ones (Z-Image-Turbo at guidance 0,
FLUX.1-dev's guidance embedding). Latents are the output size ÷ 8 (every VAE here has factor 8); the text
conditioning has the encoder's width and the pipeline's length (CLIP 77, T5 padded to 512, the trimmed
Qwen3/Qwen2.5-VL prompt: --text-tokens). A denoiser whose weights at --dtype exceed --memory-gib is not built
whole: a stand-in with one block of each repeated kind is timed, and the step is extrapolated as stand-in time
+ Σ block time × (real count − 1) — a labelled estimate, not a measurement (its process CPU scales the blocks'
wall time by the stand-in's CPU/wall ratio). FLOPs are counted, not estimated: torch's FlopCounterMode over the
whole real-size model on the meta device (every matmul, convolution and attention; elementwise work not counted).
The 360° depth is the estimator module's view path as the pano backend runs it (pano=yes, --views), on
bench/pano_depth.py's Depth-Anything-V2-Small of random weights (fp32) and a 2048×1024 demo-backend room.
Each case runs in its own process, so peak RSS is per case (weights included); times are medians of --repeats
after --warmup calls, under torch.inference_mode. On CUDA the budget defaults to 80 % of the GPU's memory, so at
bf16 every model here runs whole on an 80 GB card. ``--smoke``: tiny configs at 1/8 of the sides, one thread,
all cases in one process, each run measured or extrapolated as the full-size run would be.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
VAE_FACTOR = 8  # SD/SDXL/LDM3D KL autoencoders, FLUX's and Z-Image's 16-channel KL, Qwen-Image's: all 8×
PANO_SIZE, LDM3D_SIZE, SMOKE_DIVISOR = (2048, 1024), (1024, 512), 8

# ------------------------------------------------------------------ published configs (facts, with their source)

# CompVis/stable-diffusion-v1-4 unet/config.json, as bench/ldm3d_speed.py builds it for Intel/ldm3d-4c and -pano
SD14_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, "cross_attention_dim": 768, "attention_head_dim": 8}
# stabilityai/stable-diffusion-2-1 unet/config.json, read from a verbatim copy (GitHub
# Vikas-2025/Hugging_face_sta_dif_2.1; stable-diffusion-2-1-base's differs only in sample_size 64). upcast_attention,
# a precision switch that diffusers' SDPA attention processor does not read, is left at its default.
SD21_UNET = {**SD14_UNET, "sample_size": 96, "cross_attention_dim": 1024, "attention_head_dim": (5, 10, 20, 20),
             "use_linear_projection": True}
SDXL_UNET = {  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json, as quoted verbatim in public code
    "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), "cross_attention_dim": 2048,
    "attention_head_dim": (5, 10, 20), "transformer_layers_per_block": (1, 2, 10), "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816}
Z_IMAGE = {  # Tongyi-MAI/Z-Image-Turbo transformer/config.json, as quoted verbatim (with its URL) in public code
    "all_patch_size": (2,), "all_f_patch_size": (1,), "in_channels": 16, "dim": 3840, "n_layers": 30,
    "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "norm_eps": 1e-5, "qk_norm": True, "cap_feat_dim": 2560,
    "rope_theta": 256.0, "t_scale": 1000.0, "axes_dims": (32, 48, 48), "axes_lens": (1536, 512, 512)}
FLUX_DEV = {  # black-forest-labs/FLUX.1-dev transformer/config.json, as quoted verbatim in public code
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56)}
QWEN_IMAGE = {  # Qwen/Qwen-Image transformer/config.json (diffusers 0.34.0.dev0), as quoted verbatim in public code
    "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 3584, "guidance_embeds": False, "axes_dims_rope": (16, 56, 56)}

TINY_UNET = {"block_out_channels": (32, 64, 64, 64), "layers_per_block": 1, "cross_attention_dim": 32}


# ------------------------------------------------------------------ what each pipeline's step feeds its denoiser


def _unet(config: dict, batch: int, lh: int, lw: int, text: int, **place) -> dict[str, Any]:
    inputs = {"sample": torch.randn(batch, config["in_channels"], lh, lw, **place),
              "timestep": torch.full((batch,), 999.0, **place),
              "encoder_hidden_states": torch.randn(batch, text, config["cross_attention_dim"], **place)}
    if config.get("addition_embed_type") == "text_time":  # SDXL: pooled text embedding + 6 size/crop ids
        pooled = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        inputs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, pooled, **place),
                                       "time_ids": torch.tensor([[lh * 8, lw * 8, 0, 0, lh * 8, lw * 8]] * batch,
                                                                **place)}
    return inputs


def _z_image(config: dict, batch: int, lh: int, lw: int, text: int, **place) -> dict[str, Any]:
    return {"x": [torch.randn(config["in_channels"], 1, lh, lw, **place) for _ in range(batch)],
            "t": torch.full((batch,), 0.5, **place),
            "cap_feats": [torch.randn(text, config["cap_feat_dim"], **place) for _ in range(batch)]}


def _packed_ids(lh: int, lw: int, **place) -> torch.Tensor:
    """FLUX's image position ids: (0, row, column) per 2×2-packed latent token."""
    rows, cols = torch.meshgrid(torch.arange(lh // 2), torch.arange(lw // 2), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(**place)


def _flux(config: dict, batch: int, lh: int, lw: int, text: int, **place) -> dict[str, Any]:
    return {"hidden_states": torch.randn(batch, (lh // 2) * (lw // 2), config["in_channels"], **place),
            "encoder_hidden_states": torch.randn(batch, text, config["joint_attention_dim"], **place),
            "pooled_projections": torch.randn(batch, config["pooled_projection_dim"], **place),
            "timestep": torch.full((batch,), 0.5, **place), "guidance": torch.full((batch,), 3.5, **place),
            "img_ids": _packed_ids(lh, lw, **place), "txt_ids": torch.zeros(text, 3, **place)}


def _qwen(config: dict, batch: int, lh: int, lw: int, text: int, **place) -> dict[str, Any]:
    # the pipeline drops an all-ones text mask (one prompt, no padding), so no mask here either
    return {"hidden_states": torch.randn(batch, (lh // 2) * (lw // 2), config["in_channels"], **place),
            "encoder_hidden_states": torch.randn(batch, text, config["joint_attention_dim"], **place),
            "encoder_hidden_states_mask": None, "timestep": torch.full((batch,), 0.5, **place),
            "img_shapes": [[(1, lh // 2, lw // 2)]] * batch}


@dataclass(frozen=True)
class Denoiser:
    label: str
    pipeline: str  # the diffusers pipeline class that calls it
    model: str  # the diffusers model class
    config: dict[str, Any]
    tiny: dict[str, Any]  # --smoke: overrides that shrink the widths and depths
    inputs: Callable[..., dict[str, Any]]
    batch: int  # per call
    passes: int  # calls per step
    guidance: str  # how the usual call guides, i.e. why batch and passes are what they are
    size: tuple[int, int] = PANO_SIZE
    text_tokens: int | None = None  # None: --text-tokens (an encoder whose padding the pipeline trims)
    standin: dict[str, tuple[str, ...]] = field(default_factory=dict)  # depth key → block lists it counts


DENOISERS: dict[str, Denoiser] = {
    "ldm3d": Denoiser("LDM3D U-Net (SD 1.4 config, 4-channel latents)", "StableDiffusionLDM3DPipeline",
                      "UNet2DConditionModel", SD14_UNET, TINY_UNET, _unet, 2, 1, "CFG 7.5: batch 2",
                      size=LDM3D_SIZE, text_tokens=77),
    "sd21": Denoiser("SD 2.1 U-Net", "StableDiffusionPipeline", "UNet2DConditionModel", SD21_UNET,
                     {**TINY_UNET, "attention_head_dim": (2, 4, 4, 4)}, _unet, 2, 1, "CFG 7.5: batch 2",
                     text_tokens=77),
    "sdxl": Denoiser("SDXL base U-Net", "StableDiffusionXLPipeline", "UNet2DConditionModel", SDXL_UNET,
                     {"block_out_channels": (32, 64, 64), "layers_per_block": 1, "cross_attention_dim": 32,
                      "attention_head_dim": (2, 4, 4), "transformer_layers_per_block": (1, 1, 2),
                      "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 32 + 6 * 8},
                     _unet, 2, 1, "CFG 5: batch 2", text_tokens=77),
    "zimage": Denoiser("Z-Image-Turbo transformer", "ZImagePipeline", "ZImageTransformer2DModel", Z_IMAGE,
                       {"dim": 64, "n_heads": 2, "n_kv_heads": 2, "axes_dims": (8, 12, 12), "cap_feat_dim": 32},
                       _z_image, 1, 1, "guidance 0 (Turbo): one pass",
                       standin={"n_layers": ("layers",), "n_refiner_layers": ("noise_refiner", "context_refiner")}),
    "flux": Denoiser("FLUX.1-dev transformer", "FluxPipeline", "FluxTransformer2DModel", FLUX_DEV,
                     {"attention_head_dim": 16, "num_attention_heads": 2, "axes_dims_rope": (4, 6, 6),
                      "joint_attention_dim": 32, "pooled_projection_dim": 32, "num_layers": 2, "num_single_layers": 2},
                     _flux, 1, 1, "guidance-distilled (embedded guidance): one pass", text_tokens=512,
                     standin={"num_layers": ("transformer_blocks",),
                              "num_single_layers": ("single_transformer_blocks",)}),
    "qwen": Denoiser("Qwen-Image transformer", "QwenImagePipeline", "QwenImageTransformer2DModel", QWEN_IMAGE,
                     {"attention_head_dim": 16, "num_attention_heads": 2, "axes_dims_rope": (4, 6, 6),
                      "joint_attention_dim": 32, "num_layers": 2},
                     _qwen, 1, 2, "true CFG 4, negative prompt: two calls",
                     standin={"num_layers": ("transformer_blocks",)}),
}
CASES = (*DENOISERS, "depth")


# ------------------------------------------------------------------ one case, in its own process


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Parameters are created in ``dtype`` (a full-size bf16 model never exists in fp32 first)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(spec: Denoiser, config: dict, device: torch.device | str, dtype: torch.dtype) -> torch.nn.Module:
    import diffusers

    with torch.device(device), default_dtype(dtype):
        return getattr(diffusers, spec.model)(**config).eval()


def shapes(spec: Denoiser, args: argparse.Namespace) -> tuple[int, int, int]:
    """(latent height, latent width, text tokens) of one step."""
    width, height = (side // SMOKE_DIVISOR for side in spec.size) if args.smoke else spec.size
    text = spec.text_tokens or args.text_tokens
    return height // VAE_FACTOR, width // VAE_FACTOR, min(text, 16) if args.smoke else text


def count(spec: Denoiser, config: dict, args: argparse.Namespace) -> tuple[int, float]:
    """(parameters, FLOPs of one step) of the whole model, on the meta device: no memory, no compute."""
    from torch.utils.flop_counter import FlopCounterMode

    model = build(spec, config, "meta", torch.float32)
    lh, lw, text = shapes(spec, args)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(**spec.inputs(config, spec.batch, lh, lw, text, device="meta"), return_dict=False)
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() * spec.passes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BlockClock:
    """Wall seconds spent inside given modules, added up between resets (hooks; synchronised on CUDA)."""

    def __init__(self, modules: dict[str, torch.nn.Module], device: torch.device) -> None:
        self.seconds = dict.fromkeys(modules, 0.0)
        for name, module in modules.items():
            module.register_forward_pre_hook(lambda *_, name=name: self._mark(name, -1))
            module.register_forward_hook(lambda *_, name=name: self._mark(name, 1))
        self.device = device

    def _mark(self, name: str, sign: int) -> None:
        sync(self.device)
        self.seconds[name] += sign * time.perf_counter()

    def reset(self) -> None:
        self.seconds = dict.fromkeys(self.seconds, 0.0)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_denoiser(key: str, args: argparse.Namespace) -> dict[str, Any]:
    spec, device, dtype = DENOISERS[key], torch.device(args.device), DTYPES[args.dtype]
    config = {**spec.config, **spec.tiny} if args.smoke else spec.config
    full_params = count(spec, spec.config, args)[0] if args.smoke else None  # the mode is the full-size run's
    params, flops = count(spec, config, args)
    weights = (full_params or params) * dtype.itemsize
    lh, lw, text = shapes(spec, args)
    result = {"case": key, "label": spec.label, "pipeline": spec.pipeline, "guidance": spec.guidance,
              "size": f"{lw * VAE_FACTOR}x{lh * VAE_FACTOR}", "latent": f"{lw}x{lh}", "batch": spec.batch,
              "passes": spec.passes, "dtype": args.dtype,
              "params": params, "weights_gib": round(params * dtype.itemsize / 2**30, 2),
              "tflop_per_step": round(flops / 1e12, 3)}
    if spec.inputs is not _unet:  # a transformer: 2×2 latent patches, and the prompt's tokens
        result["tokens"] = {"image": (lh // 2) * (lw // 2), "text": text}
    standin = weights > args.memory_gib * 2**30
    if standin and not spec.standin:
        return {**result, "mode": f"not measured: weights {weights / 2**30:.1f} GiB > {args.memory_gib} GiB"}
    built = {**config, **dict.fromkeys(spec.standin, 1)} if standin else config
    started = time.perf_counter()
    torch.manual_seed(0)
    model = build(spec, built, device, dtype)
    result["build_s"] = round(time.perf_counter() - started, 1)
    inputs = spec.inputs(config, spec.batch, lh, lw, text, device=device, dtype=dtype)
    clock = BlockClock({f"{depth}:{blocks}": getattr(model, blocks)[0] for depth, names in spec.standin.items()
                        for blocks in names}, device) if standin else None

    def step() -> None:
        for _ in range(spec.passes):
            model(**inputs, return_dict=False)
        sync(device)

    with torch.inference_mode():
        for _ in range(args.warmup):
            step()
        walls, cpus = [], []
        for _ in range(args.repeats):
            if clock:
                clock.reset()
            wall, cpu = time.perf_counter(), time.process_time()
            step()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            if clock:  # each block once in the stand-in; add it again for every copy the real model has
                extra = sum(seconds * (config[name.split(":")[0]] - 1) for name, seconds in clock.seconds.items())
                wall, cpu = wall + extra, cpu + extra * cpu / wall  # the blocks' CPU share taken as their wall's
            walls.append(wall)
            cpus.append(cpu)
    step_s = statistics.median(walls)
    result.update(step_s=round(step_s, 3), cpu_s=round(statistics.median(cpus), 3),
                  tflops=round(flops / 1e12 / step_s, 3), peak_rss_gib=round(peak_rss_gib(), 2))
    if standin:
        counts = ", ".join(f"{blocks} ×{config[depth]}" for depth, names in spec.standin.items() for blocks in names)
        result.update(mode=f"extrapolated from a 1-block stand-in ({counts}); weights "
                      f"{weights / 2**30:.1f} GiB > {args.memory_gib} GiB",
                      standin_params=sum(p.numel() for p in model.parameters()))
    else:
        result["mode"] = "measured"
    if full_params:
        result["full_size_params"] = full_params
    if device.type == "cuda":
        result["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def run_depth(args: argparse.Namespace) -> dict[str, Any]:
    from pano_depth import CountedModel, build_full, timed
    from tiny_depth import build as build_tiny

    from generator.backends.demo import DemoBackend
    from generator.estimators.frame import estimate_rgbd
    from generator.estimators.model import DepthModel
    from generator.estimators.pano import LAYOUTS
    from td_bridge.params import ESTIMATION_PARAMS, validate

    folder = Path(tempfile.mkdtemp(prefix="depthfusion-pano-step-"))
    build_tiny("depth_anything", folder) if args.smoke else build_full(folder)
    width, height = (side // SMOKE_DIVISOR for side in PANO_SIZE) if args.smoke else PANO_SIZE
    rgb = DemoBackend().generate({"prompt": "a gallery room", "seed": 2, "width": width, "height": height,
                                  "steps": 1}, lambda *a: None, lambda: False).rgb
    model = CountedModel(DepthModel.load(str(folder), device=args.device))
    params = validate({"pano": "yes", "views": args.views}, ESTIMATION_PARAMS)  # as the pano backend asks
    with torch.inference_mode():
        wall, cpu = timed(lambda: estimate_rgbd(model, rgb, params), args.repeats, args.warmup)
    return {"case": "depth", "label": f"360° depth: Depth-Anything-V2-Small{' (tiny)' * args.smoke}, random weights",
            "pipeline": "estimators 360° view path", "size": f"{width}x{height}", "dtype": "fp32",
            "views": f"{args.views}, {len(LAYOUTS[args.views])} views", "mode": "measured",
            "params": sum(p.numel() for p in model.inner.network.parameters()), "step_s": round(wall, 3),
            "cpu_s": round(cpu, 3), "forwards_s": round(model.seconds / (args.repeats + args.warmup), 3),
            "peak_rss_gib": round(peak_rss_gib(), 2)}


# ------------------------------------------------------------------ the run: one process per case, then the table


def machine(args: argparse.Namespace) -> dict[str, Any]:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                 platform.processor() or platform.machine())
    import diffusers

    info = {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE")
                                                                         * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "threads": args.threads or torch.get_num_threads(), "device": args.device, "dtype": args.dtype,
            "date": datetime.date.today().isoformat(), "load_average_start": round(os.getloadavg()[0], 2)}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(args.device)
    return info


def run_case(case: str, args: argparse.Namespace) -> dict[str, Any]:
    return run_depth(args) if case == "depth" else run_denoiser(case, args)


def in_own_process(case: str, args: argparse.Namespace) -> dict[str, Any]:
    """``run_case`` in a fresh interpreter, so that its peak RSS is its own; a crash (or an OOM kill) is a row."""
    flags = ["--device", args.device, "--dtype", args.dtype, "--repeats", str(args.repeats), "--warmup",
             str(args.warmup), "--memory-gib", str(args.memory_gib), "--views", args.views, "--text-tokens",
             str(args.text_tokens), "--threads", str(args.threads), *["--smoke"] * args.smoke]
    done = subprocess.run([sys.executable, __file__, "--worker", case, *flags], stdout=subprocess.PIPE, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return {"case": case, "label": case, "error": f"failed (exit {done.returncode})"}
    return json.loads(lines[-1])


def row(result: dict[str, Any], base: float | None) -> str:
    if "step_s" not in result:
        return f"| {result['label']} | {result.get('size', '')} | {result.get('mode', result.get('error'))} |" \
               + " |" * 9
    gpu = f", {result['peak_gpu_gib']} GiB GPU" if "peak_gpu_gib" in result else ""
    how = result.get("views") or f"{result['batch']} × {result['passes']} ({result['guidance']})"
    tflop = f"{result['tflop_per_step']:.2f}" if "tflop_per_step" in result else ""
    rate = f"{result['tflops']:.3f}" if "tflops" in result else ""
    versus = f"{result['step_s'] / base:.1f}×" if base else ""
    mode = result["mode"].split(";")[0]
    return (f"| {result['label']} | {result['size']} | {mode} | {result['dtype']} | {how} | "
            f"{result['params'] / 1e6:,.1f} M | {tflop} | {result['step_s']:.2f} s | {result['cpu_s']:.2f} s | "
            f"{rate} | {versus} | {result['peak_rss_gib']:.2f} GiB RSS{gpu} |")


def table(results: list[dict[str, Any]]) -> str:
    base = next((r["step_s"] for r in results if r["case"] == "ldm3d" and "step_s" in r), None)
    lines = ["| model | output | how | dtype | batch × calls per step | parameters | TFLOP / step | wall / step "
             "| process CPU | TFLOP/s | × LDM3D step | peak memory |", "|" + "---|" * 12]
    lines += [row(result, base) for result in results]
    notes = [f"- {r['label']}: {r['mode']}" for r in results if r.get("mode", "").startswith(("extra", "not"))]
    notes += [f"- 360° depth: of its wall time, model forwards {r['forwards_s']:.2f} s ({r['views']})"
              for r in results if r["case"] == "depth" and "forwards_s" in r]
    return "\n".join(lines + notes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--memory-gib", type=float, default=None,
                        help="weights budget; larger models run as extrapolated stand-ins (default: 18 on CPU, "
                             "80%% of the GPU's memory on CUDA)")
    parser.add_argument("--views", default="dense", choices=("dense", "cube"), help="360° depth layout")
    parser.add_argument("--text-tokens", type=int, default=128, help="prompt length for Z-Image and Qwen-Image")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the machine and the results here")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny configs and sizes (1/8 of the sides), every case in this one process")
    parser.add_argument("--worker", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_gib is None:
        args.memory_gib = 18.0 if args.device == "cpu" else \
            round(0.8 * torch.cuda.get_device_properties(args.device).total_memory / 2**30, 1)
    if args.smoke and not args.threads:
        args.threads = 1  # tiny ops on a shared machine: more threads only wait on each other
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_case(args.worker, args)), flush=True)
        return
    cases = [case.strip() for case in args.arch.split(",")]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown --arch {', '.join(unknown)}; choose from {', '.join(CASES)}")
    info = machine(args)
    print(", ".join(f"{k} {v}" for k, v in info.items()) + f", median of {args.repeats} after {args.warmup} "
          f"warm-up{', SMOKE (tiny)' * args.smoke}", flush=True)
    results = []
    for case in cases:  # --smoke: all in this process (a quick start; its RSS figures are then cumulative)
        results.append(run_case(case, args) if args.smoke else in_own_process(case, args))
        print(json.dumps(results[-1]), flush=True)
    info["load_average_end"] = round(os.getloadavg()[0], 2)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
