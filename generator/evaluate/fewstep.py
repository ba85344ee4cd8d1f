"""``evaluate fewstep``: what a few-step set-up costs against the 50-step teacher, on the same captions and seeds.

The teacher is the model as it ships (default DDIM, 50 steps, guidance 7, its own VAE decoder, no LoRA); the fast
side is the same model with the fast configuration: a ``--fast`` preset (generator/fast.py) and/or ``--lora``,
sampler settings and ``--decoder``, once per step count of ``--steps``. Both sides make one frame per caption with
the same seed, so the start noise is the same and any difference is the configuration's.

The teacher is its own backend, loaded without any LoRA and with the full decoder: the LoRA-free model exactly,
with no adapter layers in its U-Net (LoRA weights 0 would give the same frames but time the adapters' extra
work). The fast side gets a second backend only when it needs one (a LoRA or another decoder); otherwise both
sides share one.

Per caption, the fast frame against the teacher's frame:

- depth: AbsRel and δ1 of the fast frame's relative inverse depth against the teacher's after the least-squares
  scale and shift in disparity (generator.estimators.alignment.consistency, the alignment ``evaluate
  autoencoder`` uses; pixels whose teacher disparity is at most 0.01 of the range are not compared). No metric
  reference exists here: the teacher's depth is relative too, so the metre range of depth.py does not apply.
- RGB: PSNR (dB on [0, 1]; identical frames give 100 dB, the MSE floor of ssim.py) and SSIM (ssim.py).
- perceptual: LPIPS as generator/train/losses.py computes it (0 = identical), on RGB in [-1, 1]; equal channel
  weights instead only when asked (``--perceptual-lin equal``).
- CLIP: each side's own CLIP score against the caption (clip.py, max(100·cos, 0)).
- time per frame: wall clock of one whole generate call (prompt encoding, denoising, decoding, RGB and depth on the
  host), after one untimed warm-up call per configuration; the median over captions, and the mean.

Everything that loads a network comes in through :class:`Tools`, so tests inject tiny ones.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from td_bridge.depth import from_uint16
from td_bridge.params import SEED_MAX, generation_param, validate_generation

from ..estimators.alignment import consistency
from ..estimators.pano import is_equirectangular
from . import plots, report

log = logging.getLogger("depthfusion.evaluate")

MAX_STEPS = int(generation_param("steps").maximum)
SUMMARY_KEYS = ("abs_rel", "delta1", "psnr", "ssim", "perceptual", "clip")
COLUMNS = (("label", "set-up", None), ("steps", "steps", 0), ("frame_s", "time/frame [s] ↓", 3),
           ("fps", "fps ↑", 2), ("speedup", "× teacher", 1), ("abs_rel", "depth AbsRel ↓", 4),
           ("delta1", "depth δ1 ↑", 3), ("psnr", "PSNR [dB] ↑", 2), ("ssim", "SSIM ↑", 3),
           ("perceptual", "perceptual ↓", 4), ("clip", "CLIP ↑", 2), ("clip_delta", "CLIP − teacher", 2))


def step_list(values: Sequence[str | int], flag: str = "--steps") -> list[int]:
    """Step counts from ``1,2,4,8`` or ``1 2 4 8`` (or both): whole numbers in 1 … 500, each once."""
    parts = [part.strip() for value in values for part in str(value).split(",")]
    if not parts or any(not part for part in parts):
        raise ValueError(f"{flag}: {' '.join(map(str, values))!r} is not a list of step counts (e.g. 1,2,4,8)")
    steps = []
    for part in parts:
        try:
            steps.append(int(part))
        except ValueError:
            raise ValueError(f"{flag}: {part!r} is not a whole number of steps (e.g. {flag} 1,2,4,8)") from None
    bad = [s for s in steps if not 1 <= s <= MAX_STEPS]
    if bad:
        raise ValueError(f"{flag}: {bad[0]} is not a step count (1 … {MAX_STEPS})")
    twice = sorted({s for s in steps if steps.count(s) > 1})
    if twice:
        raise ValueError(f"{flag}: {', '.join(map(str, twice))} given more than once")
    return steps


def seed_list(values: Sequence[str | int] | None, first: int, count: int) -> list[int]:
    """One seed per caption: ``values`` (``3,7,9`` or ``3 7 9``), else ``first``, ``first + 1``, …"""
    if values is None:
        seeds = list(range(first, first + count))
    else:
        try:
            seeds = [int(part) for value in values for part in str(value).split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"--seeds: {' '.join(map(str, values))!r} is not a list of whole numbers") from None
        if len(seeds) != count:
            raise ValueError(f"--seeds gives {len(seeds)} seed(s) for {count} caption(s): give one per caption")
    bad = [s for s in seeds if not 0 <= s <= SEED_MAX]
    if bad:
        raise ValueError(f"seed {bad[0]} is outside 0 … {SEED_MAX} (both sides need the same fixed seed)")
    return seeds


@dataclass
class Options:
    """What to compare. ``fast`` holds the fast side's generation parameters other than steps (scheduler, guidance,
    spacing, eta), ``teacher`` the teacher's (scheduler, steps, guidance); both already merged with any preset."""

    model: str
    captions: list[str]
    output: Path
    steps: list[int]
    seeds: list[int]
    fast: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=lambda: {"scheduler": "ddim", "steps": 50, "guidance": 7.0})
    width: int = 512
    height: int = 512
    loras: list[str] = field(default_factory=list)  # the fast side's LoRA arguments ([NAME=]SOURCE[:SCALE])
    decoder: str = "full"
    fuse_loras: bool = False
    preset: str | None = None
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        from ..backends.ldm3d import CONSISTENCY_MAX_STEPS
        from ..backends.lora import parse

        if not self.captions:
            raise ValueError("no captions to compare on")
        self.steps = step_list(self.steps)
        if len(self.seeds) != len(self.captions):
            raise ValueError(f"{len(self.seeds)} seeds for {len(self.captions)} captions: give one per caption")
        seed_list(self.seeds, 0, len(self.captions))
        names = [parse(spec).name for spec in self.loras]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            own = (f" (the --fast {self.preset} preset's LoRA is named {self.preset}: {self.preset}=SOURCE replaces it)"
                   if twice[0] == self.preset else "")
            raise ValueError(f"--lora: two LoRAs are named {twice[0]!r}{own}; name them NAME=SOURCE")
        if self.fuse_loras and not self.loras:
            raise ValueError("--fuse-lora needs a LoRA (--lora or --fast)")
        if self.fast.get("scheduler") in ("lcm", "tcd") and max(self.steps) > CONSISTENCY_MAX_STEPS:
            raise ValueError(f"{self.fast['scheduler']} takes at most {CONSISTENCY_MAX_STEPS} steps, --steps asks for "
                             f"{max(self.steps)}")
        for steps in self.steps:  # every parameter of both sides checked now, before any model loads
            validate_generation(self.params("fast", 0, steps))
        validate_generation(self.params("teacher", 0))

    @property
    def pano(self) -> bool:
        return is_equirectangular(self.width, self.height)

    @property
    def label(self) -> str:
        """The fast configuration's name in tables and plots: the preset, else the LoRAs, else the sampler."""
        if self.preset:
            return self.preset
        if self.loras:
            from ..backends.lora import parse

            return "+".join(parse(spec).name for spec in self.loras)
        return str(self.fast.get("scheduler", "ddim"))

    def params(self, side: str, index: int, steps: int | None = None) -> dict[str, Any]:
        """Validated generation parameters of caption ``index`` on ``side`` (``teacher`` or ``fast``)."""
        chosen = dict(self.teacher) if side == "teacher" else {**self.fast, "steps": steps}
        return validate_generation({**chosen, "prompt": self.captions[index], "negative_prompt": self.negative_prompt,
                                    "seed": self.seeds[index], "width": self.width, "height": self.height,
                                    "seamless": self.pano})


class PerceptualDistance:
    """An LPIPS-style network (generator.train.losses.Perceptual) as a distance of two uint8 (H, W, 3) images."""

    def __init__(self, network: Any, name: str, device: Any = "cpu") -> None:
        self.network, self.name, self.device = network.to(device), name, device

    def __call__(self, a: np.ndarray, b: np.ndarray) -> float:
        import torch

        def tensor(image: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float().div(127.5).sub(1.0)

        with torch.inference_mode():
            return float(self.network(tensor(a).to(self.device), tensor(b).to(self.device))[0])


@dataclass
class Tools:
    """The networks: the teacher's and the fast side's backends (the same object when the fast side needs no other
    model), clip.scores(images, captions) or None, perceptual(a, b) → float or None."""

    teacher: Any
    fast: Any
    clip: Any = None
    perceptual: Callable[[np.ndarray, np.ndarray], float] | None = None
    clip_model: str = "none"
    perceptual_model: str = "none"


@dataclass
class Frame:
    rgb: np.ndarray
    depth: np.ndarray
    seconds: float
    folder: Path
    info: dict[str, Any]


def _generate(backend: Any, params_list: list[dict[str, Any]], folder: Path, desc: str) -> list[Frame]:
    """One warm-up call (untimed, the first caption's parameters), then every caption's frame, each timed and
    written as a frame folder (rgb.png, depth.png, metadata.json)."""
    from tqdm import tqdm

    from ..estimators.command import write_frame_folder
    from ..frames import make_frame

    def never() -> bool:
        return False

    def quiet(step: int, total: int) -> None:
        return None

    backend.generate(params_list[0], quiet, never)
    frames = []
    for index, params in enumerate(tqdm(params_list, desc=desc, unit="frame", leave=False)):
        started = time.perf_counter()
        header, result = make_frame(backend, params, quiet, never)
        seconds = time.perf_counter() - started
        path = folder / f"{index:03d}-seed{params['seed']}"
        write_frame_folder(path, header, result.rgb, result.depth)
        frames.append(Frame(result.rgb, result.depth, seconds, path, dict(result.info)))
    return frames


def compare(fast: Frame, teacher: Frame, perceptual: Callable | None) -> dict[str, float | None]:
    """Depth AbsRel / δ1 (aligned in disparity), PSNR, SSIM and the perceptual distance of one fast frame against
    the teacher's frame of the same caption and seed."""
    import torch

    from .ssim import psnr, ssim

    row: dict[str, float | None] = {}
    try:
        agreement = consistency(from_uint16(fast.depth), from_uint16(teacher.depth))
        row.update(abs_rel=agreement.abs_rel, delta1=agreement.delta1)
    except ValueError as exc:  # a constant depth map (no scale to fit) or nothing to compare
        log.warning("%s: depth not compared with the teacher's (%s)", fast.folder, exc)
        row.update(abs_rel=None, delta1=None)
    a = torch.from_numpy(np.array(fast.rgb)).permute(2, 0, 1)[None].double() / 255
    b = torch.from_numpy(np.array(teacher.rgb)).permute(2, 0, 1)[None].double() / 255
    row["psnr"] = float(psnr(a, b)[0])
    row["ssim"] = float(ssim(a, b)[0]) if min(a.shape[-2:]) >= 11 else None
    row["perceptual"] = None if perceptual is None else float(perceptual(fast.rgb, teacher.rgb))
    return row


def _clip(tools: Tools, frames: list[Frame], captions: list[str]) -> list[float | None]:
    if tools.clip is None:
        return [None] * len(frames)
    return [float(x) for x in tools.clip.scores([f.rgb for f in frames], captions)]


def _knobs(params: dict[str, Any]) -> dict[str, Any]:
    """The sampler settings of validated params: scheduler, guidance, spacing, and eta where tcd reads it."""
    keys = ("scheduler", "guidance", "spacing", "eta") if params["scheduler"] == "tcd" else \
        ("scheduler", "guidance", "spacing")
    return {key: params[key] for key in keys}


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def machine(backend: Any) -> dict[str, Any]:
    """Where the timings were taken: host, accelerator, precision, library versions."""
    import os

    import torch

    device = getattr(backend, "device", None)
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                            "device": str(device), "dtype": str(getattr(backend, "dtype", "")).removeprefix("torch.")}
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    if device is not None and getattr(device, "type", "") == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def _summary(setup: str, label: str, params: dict[str, Any], rows: list[dict[str, Any]], frames: list[Frame],
             teacher_s: float | None, teacher_clip: float | None) -> dict[str, Any]:
    seconds = [f.seconds for f in frames]
    frame_s = float(np.median(seconds))
    out = {"setup": setup, "label": label, "steps": params["steps"], "scheduler": params["scheduler"],
           "guidance": params["guidance"], "spacing": params["spacing"],
           **({"eta": params["eta"]} if params["scheduler"] == "tcd" else {}),
           "decoder": frames[0].info.get("decoder", "full"),
           "loras": [lora["name"] for lora in frames[0].info.get("loras", [])], "frames": len(frames),
           "frame_s": frame_s, "frame_s_mean": float(np.mean(seconds)), "fps": 1.0 / frame_s if frame_s > 0 else None,
           "speedup": teacher_s / frame_s if teacher_s and frame_s > 0 else None}
    for key in SUMMARY_KEYS:
        out[key] = _mean([row.get(key) for row in rows])
    if setup == "fast":
        out["clip_teacher"] = teacher_clip
        out["clip_delta"] = None if out["clip"] is None or teacher_clip is None else out["clip"] - teacher_clip
    return out


def _panels(options: Options, rows: list[dict[str, Any]], teacher: dict[str, Any]) -> list[plots.Panel]:
    """Quality against steps (AbsRel, PSNR, perceptual, CLIP with the teacher's as a dashed line) and the time per
    frame against steps (the teacher's time in the title: as a line it would flatten the fast curve)."""
    fast = [row for row in rows if row["setup"] == "fast"]

    def series(key: str) -> dict[str, list]:
        return {options.label: [(row["steps"], row[key]) for row in fast]}

    name = f"teacher {teacher['steps']} steps"
    panels = [plots.Panel("depth vs teacher", "steps", "AbsRel (lower: closer)", series("abs_rel")),
              plots.Panel("RGB vs teacher", "steps", "PSNR [dB] (100 = identical)", series("psnr"))]
    if any(row["perceptual"] is not None for row in fast):
        panels.append(plots.Panel("perceptual vs teacher", "steps", "distance (lower: closer)", series("perceptual")))
    if teacher["clip"] is not None:
        panels.append(plots.Panel("CLIP score", "steps", "CLIP", series("clip"), (name, teacher["clip"])))
    panels.append(plots.Panel(f"time per frame (teacher {teacher['frame_s']:.3g} s)", "steps", "seconds",
                              series("frame_s")))
    return panels


def _markdown(options: Options, result: dict[str, Any], figure: str) -> str:
    teacher, fast = result["teacher"], result["fast"]
    loras = ", ".join(f"{lora['name']} = {lora['source']} ({lora['file']}, sha256 {lora['sha256'][:12]}…, "
                      f"scale {lora['scale']:g})" for lora in fast["loras"]) or "none"
    knobs = ", ".join(f"{k} {v}" for k, v in fast["params"].items())
    lines = [f"# Few-step set-up against the teacher: {options.model}", "",
             f"{len(options.captions)} captions, {options.width}x{options.height}"
             f"{' (panorama, seamless)' if options.pano else ''}, seeds {', '.join(map(str, options.seeds[:8]))}"
             f"{' …' if len(options.seeds) > 8 else ''}; the same caption and seed on both sides.", "",
             f"- **teacher:** {teacher['params']['scheduler']}, {teacher['params']['steps']} steps, guidance "
             f"{teacher['params']['guidance']:g}, full decoder, no LoRA (a backend of its own: the model as it ships)",
             f"- **fast ({options.label}):** {knobs}; steps {', '.join(map(str, options.steps))}; decoder "
             f"{fast['decoder']}; LoRA {loras}{'; fused' if options.fuse_loras else ''}",
             f"- **machine:** {result['machine'].get('device_name', result['machine']['device'])}, "
             f"{result['machine']['dtype']}, torch {result['machine']['torch']}", "",
             report.table(result["results"], COLUMNS), "",
             "Time per frame: the median wall clock of one generate call (text encoding, denoising, decoding, RGB "
             "and depth on the host) after one warm-up call; fps = 1 / that; × teacher = how many times faster. "
             "Depth AbsRel / δ1: the fast frame's depth against the teacher's, after a least-squares scale and shift "
             "in disparity (0 / 1 = identical). PSNR and SSIM on RGB against the teacher's frame (100 dB = "
             "identical). Perceptual: the LPIPS-style distance "
             f"({result['perceptual_model']}; 0 = identical). CLIP: each side's own score against the caption "
             f"({result['clip_model']}, max(100·cos, 0)); CLIP − teacher > 0: the fast frames match the captions "
             "better. All averaged over the captions; per frame in fewstep.json, frames in frames/.", "",
             f"![quality and time against steps]({figure})", ""]
    return "\n".join(lines)


def run(options: Options, tools: Tools) -> dict[str, Any]:
    """Generate both sides, score the fast frames against the teacher's; write fewstep.json, fewstep.md,
    fewstep.png and the frames into ``options.output``; return the result."""
    count = len(options.captions)
    teacher_params = [options.params("teacher", i) for i in range(count)]
    fast_params = {steps: [options.params("fast", i, steps) for i in range(count)] for steps in options.steps}
    for params in teacher_params:  # what this model cannot make (size, scheduler, LoRA) fails before generating
        tools.teacher.check(params)
    for params_list in fast_params.values():
        for params in params_list:
            tools.fast.check(params)
    out = Path(options.output)
    teacher = _generate(tools.teacher, teacher_params, out / "frames" / "teacher", "teacher")
    teacher_clip = _clip(tools, teacher, options.captions)
    records = [{"setup": "teacher", "steps": teacher_params[0]["steps"], "index": i, "caption": options.captions[i],
                "seed": options.seeds[i], "frame": str(f.folder.relative_to(out)), "seconds": f.seconds,
                "clip": teacher_clip[i]} for i, f in enumerate(teacher)]
    teacher_row = _summary("teacher", "teacher", teacher_params[0], records, teacher, None, None)
    rows = [teacher_row]
    for steps, params_list in fast_params.items():
        frames = _generate(tools.fast, params_list, out / "frames" / f"fast-{steps}", f"{options.label} {steps}")
        clip = _clip(tools, frames, options.captions)
        own = []
        for i, frame in enumerate(frames):
            own.append({"setup": "fast", "steps": steps, "index": i, "caption": options.captions[i],
                        "seed": options.seeds[i], "frame": str(frame.folder.relative_to(out)),
                        "seconds": frame.seconds, "clip": clip[i], **compare(frame, teacher[i], tools.perceptual)})
        records += own
        rows.append(_summary("fast", f"{options.label} {steps}", params_list[0], own, frames, teacher_row["frame_s"],
                             teacher_row["clip"]))
        fast_info = frames[0].info
    result = {
        "command": "evaluate fewstep", "model": options.model, "captions": options.captions,
        "seeds": options.seeds, "width": options.width, "height": options.height, "pano": options.pano,
        "teacher": {"params": {"steps": teacher_params[0]["steps"], **_knobs(teacher_params[0])},
                    "decoder": teacher[0].info.get("decoder", "full"), "loras": teacher[0].info.get("loras", [])},
        "fast": {"label": options.label, "preset": options.preset, "steps": options.steps,
                 "params": _knobs(fast_params[options.steps[0]][0]),
                 "decoder": fast_info.get("decoder", "full"), "loras": fast_info.get("loras", []),
                 "fused": bool(fast_info.get("loras_fused", False))},
        "clip_model": tools.clip_model, "perceptual_model": tools.perceptual_model,
        "metrics": {"depth": "AbsRel and δ1 of the fast depth against the teacher's after least-squares scale and "
                             "shift in disparity (generator.estimators.alignment.consistency, min disparity 0.01)",
                    "psnr": "dB on RGB in [0, 1]; MSE floored at 1e-10, so identical frames give 100",
                    "ssim": "Gaussian window 11, sigma 1.5, on RGB in [0, 1]",
                    "perceptual": "LPIPS-style distance (generator.train.losses.Perceptual) on RGB in [-1, 1]",
                    "clip": "max(100 cos(image, caption), 0) of each side's own frame",
                    "time": "median wall clock of one generate call after one warm-up call per configuration"},
        "machine": machine(tools.fast), "results": rows, "frames": records,
    }
    figure = "fewstep.png"
    plots.figure(out / figure, _panels(options, rows, teacher_row))
    result["figure"] = figure
    (out / "fewstep.json").write_text(json.dumps(result, indent=2, ensure_ascii=False, allow_nan=False) + "\n",
                                      encoding="utf-8")
    (out / "fewstep.md").write_text(_markdown(options, result, figure), encoding="utf-8")
    return result


def summarise(result: dict[str, Any], output: Path) -> None:
    """One line per configuration on stdout, and where the report went."""
    for row in result["results"]:
        cells = [f"{row['label']}", f"{row['steps']} steps", f"{row['frame_s']:.4g} s/frame"]
        cells += [f"{key} {row[key]:.4g}" for key in ("abs_rel", "delta1", "psnr", "perceptual", "clip")
                  if row.get(key) is not None and math.isfinite(row[key])]
        print(", ".join(cells))
    print(f"wrote {output / 'fewstep.md'}, {output / 'fewstep.json'} and {output / 'fewstep.png'}")
