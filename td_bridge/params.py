"""The one schema of DepthFusion's user-facing parameters.

Each :class:`Param` drives ZeroMQ command validation, the CLI flags (``--name-with-dashes``)
and later the OSC addresses (``/depthfusion/<name>``) and TouchDesigner custom parameters.
"""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

SEED_MAX = 2**31 - 1  # an OSC int32: every show tool sends and shows it
RANDOM_SEED = -1


class ParamError(ValueError):
    """A parameter value is missing, unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: type
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    multiple_of: int | None = None
    choices: tuple[str, ...] | None = None
    max_length: int | None = None
    unit: str = ""
    pattern: str | None = None  # a str value other than "" must match it whole (e.g. a name's characters)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def describe_range(self) -> str:
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.kind is str:
            shape = f" matching {self.pattern}" if self.pattern else ""
            return f"text of at most {self.max_length} characters{shape}"
        if self.kind is bool:
            return "true or false"
        text = f"{self.kind.__name__} in [{_fmt(self.minimum)}, {_fmt(self.maximum)}]"
        if self.multiple_of:
            text += f", a multiple of {self.multiple_of}"
        return text

    def coerce(self, value: Any) -> Any:
        """Return ``value`` as this parameter's type, or raise ParamError naming the allowed range."""
        result = _coerce_kind(self, value)
        problem = self._problem(result)
        if problem:
            raise ParamError(f"{self.name}: {problem}; allowed: {self.describe_range()}")
        return result

    def _problem(self, value: Any) -> str | None:
        if self.kind is str:
            if self.max_length is not None and len(value) > self.max_length:
                return f"{len(value)} characters is too long"
            if "\x00" in value:
                return "NUL characters are not allowed"
            if not value.isascii() and any("\ud800" <= ch <= "\udfff" for ch in value):
                return "lone surrogates are not valid text"
            if self.choices and value not in self.choices:
                return f"{value!r} is not a choice"
            if self.pattern and value and not re.fullmatch(self.pattern, value):
                return f"{value!r} has characters it may not have"
            return None
        if self.kind is bool:
            return None
        if self.minimum is not None and value < self.minimum or self.maximum is not None and value > self.maximum:
            return f"{value} is out of range"
        if self.multiple_of and value % self.multiple_of:
            return f"{value} is not a multiple of {self.multiple_of}"
        return None


def _fmt(x: float | None) -> str:
    return "-inf" if x is None else (str(int(x)) if float(x).is_integer() else str(x))


def _coerce_kind(param: Param, value: Any) -> Any:
    kind = param.kind
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, (int, float)) and value in (0, 1):  # show tools send toggles as 0/1 or 0.0/1.0
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "on", "off"):
            return value.strip().lower() in ("true", "1", "on")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isfinite(value):
                return float(value)
        elif isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                return number
    elif kind is str and isinstance(value, str):
        return value
    raise ParamError(f"{param.name}: {value!r} is not a valid {kind.__name__}; allowed: {param.describe_range()}")


BASE_GENERATION_PARAMS: tuple[Param, ...] = (
    Param("prompt", str, "a 360 degree panorama of a sunlit courtyard", "What to generate.", max_length=2000),
    Param("negative_prompt", str, "", "What to steer away from.", max_length=2000),
    Param("seed", int, RANDOM_SEED, "Random seed; -1 picks one (the frame's metadata records it).",
          minimum=RANDOM_SEED, maximum=SEED_MAX),
    Param("steps", int, 50, "Denoising steps.", minimum=1, maximum=500),
    Param("guidance", float, 7.0, "Classifier-free guidance scale.", minimum=0.0, maximum=50.0),
    Param("width", int, 1024, "Output width.", minimum=64, maximum=4096, multiple_of=8, unit="px"),
    Param("height", int, 512, "Output height.", minimum=64, maximum=4096, multiple_of=8, unit="px"),
    Param("scheduler", str, "ddim", "Sampler: ddim (as the LDM3D checkpoints ship), dpm++ (DPM-Solver++, "
          "good in 20-25 steps), euler, or the few-step samplers lcm (Latent Consistency) and tcd (Trajectory "
          "Consistency, see eta), which need a distilled model or LoRA and guidance 1 or less.",
          choices=("ddim", "dpm++", "euler", "lcm", "tcd")),
    Param("spacing", str, "auto", "How the sampler spaces its timesteps: auto (the model's configuration: leading "
          "for the LDM3D checkpoints), leading, trailing (what Hyper-SD and PCM LoRAs expect at few steps) or "
          "linspace. lcm and tcd space their own.", choices=("auto", "leading", "trailing", "linspace")),
    Param("eta", float, 0.3, "tcd only: how much fresh noise each step adds (TCD's gamma; 0 is deterministic "
          "given the start noise, higher adds detail); the other samplers ignore it.", minimum=0.0, maximum=1.0),
    Param("seamless", bool, True, "Wrap the left and right edges while generating, so the 0°/360° seam "
          "of a panorama shows no edge."),
    Param("cue", str, "", "A name for the frame, to recall it by cue later (empty: none).", max_length=100),
)

# LoRA slots: which of the LoRAs the generator loaded (serve --lora NAME=SOURCE:SCALE) a frame uses, at what weight.
# All slots empty: every loaded LoRA at the scale it was loaded with; "none" in a slot: no LoRA at all.
LORA_SLOTS = 4
LORA_NONE = "none"
LORA_NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"  # generator.backends.lora names LoRAs so
LORA_PARAMS: tuple[Param, ...] = tuple(param for slot in range(1, LORA_SLOTS + 1) for param in (
    Param(f"lora_{slot}", str, "", f"LoRA slot {slot}: the name of a LoRA the generator loaded (serve --lora "
          "NAME=SOURCE:SCALE). All slots empty: every loaded LoRA at its own scale; none: no LoRA.", max_length=64,
          pattern=LORA_NAME),
    Param(f"lora_{slot}_scale", float, 1.0, f"Weight of LoRA slot {slot} (0: off; negative: the opposite).",
          minimum=-4.0, maximum=4.0),
))
GENERATION_PARAMS: tuple[Param, ...] = BASE_GENERATION_PARAMS + LORA_PARAMS

DISPLAY_PARAMS: tuple[Param, ...] = (
    Param("mapping", str, "metric", "How depth moves sphere vertices: metric (depth as relative inverse depth "
          "between near and far, as LDM3D and DPT-style estimators make it: true scale, and screen parallax "
          "proportional to depth) or linear (the paper's rule: 1.0 pulls in, 0.0 pushes out, 0.5 stays).",
          choices=("linear", "metric")),
    Param("radius", float, 10.5, "Sphere radius; linear mapping only. With strength 1.81, depth 1.0 comes to 1 m "
          "and 0.0 goes to 20 m, as the metric defaults.", minimum=0.01, maximum=10000.0, unit="m"),
    Param("strength", float, 1.81, "Linear mapping: how far depth moves vertices (0 = plain sphere).",
          minimum=0.0, maximum=1.99),
    Param("near", float, 1.0, "Metric mapping: distance of depth 1.0, the nearest surfaces (true scale: about "
          "1 m; nearer comes further out of the screen).", minimum=0.001, maximum=10000.0, unit="m"),
    Param("far", float, 20.0, "Metric mapping: distance of depth 0.0, the farthest surfaces (more than near; a hall "
          "or courtyard; beyond it the default view's parallax hardly changes).",
          minimum=0.002, maximum=100000.0, unit="m"),
    Param("mesh_rows", int, 256, "Sphere latitude segments.", minimum=2, maximum=4096),
    Param("mesh_cols", int, 512, "Sphere longitude segments.", minimum=3, maximum=8192),
    Param("cull_jump", float, 0.3, "Hide triangles whose corners' distances differ by more than this fraction "
          "(rubber sheets across depth edges); 0 keeps every triangle.", minimum=0.0, maximum=10.0),
)

# The live session (generator.serving.live): frames made back to back from the newest parameters, a prompt or seed
# change blended in over `transition` seconds.
LIVE_PARAMS: tuple[Param, ...] = (
    Param("live_fps", float, 10.0, "Live frames per second the generator aims for (0: as fast as it goes). A "
          "frame takes as long as it takes: the rate is a ceiling, never a promise.", minimum=0.0, maximum=120.0,
          unit="fps"),
    Param("transition", float, 2.0, "Live: seconds over which a new prompt, negative prompt or seed blends in "
          "(LDM3D: text embeddings linearly, start noise by spherical interpolation; the demo backend crossfades "
          "the two ends' frames); 0 cuts.", minimum=0.0, maximum=600.0, unit="s"),
    Param("input_strength", float, 0.6, "Live input (img2img): how far each input frame is noised before it is "
          "denoised with the prompt (LDM3D runs that share of the steps, at least one); 0 keeps the input as it is, "
          "1 only takes its composition.", minimum=0.0, maximum=1.0),
    Param("input_similarity", float, 0.98, "Live input: an input frame at least this similar to the one the last "
          "live frame was made from makes no new frame (idle is free); 1 counts every changed input frame.",
          minimum=0.0, maximum=1.0),
    Param("stream_batch", bool, False, "Live, LDM3D: denoise as many frames at once as there are steps, each at its "
          "own step (one U-Net call per frame out): more frames per second, a change takes that many frames "
          "longer to show."),
)


# The TouchDesigner component's own view settings: edges, stereo cameras, 360° and dome outputs.
# Defaults stay within TouchDesigner Non-Commercial's 1280×1280 texture limit.
VIEW_PARAMS: tuple[Param, ...] = (
    Param("edges", str, "cull", "Triangles across depth edges (see cull_jump): keep them, cull them or fade "
          "them out.", choices=("keep", "cull", "fade")),
    # Default 0 (a cut, as before): a blend longer than the time between frames is cut short by the next one, and
    # that time runs from seconds (a 50-step generation) to a few hundredths (few-step live frames).
    Param("blend_time", float, 0.0, "Crossfade from the previous frame to a new one, colour and depth (the sphere "
          "morphs from one shape to the other) over this many seconds; 0 cuts. Keep it at or below the time "
          "between frames: a frame arriving mid-blend starts its own blend from the frame the running one was "
          "heading to.", minimum=0.0, maximum=60.0, unit="s"),
    Param("ipd", float, 0.064, "Distance between the eyes (0.064: a person's, true scale; a flat 3D output may "
          "raise it for more depth, and the scene then looks smaller).", minimum=0.0, maximum=1.0, unit="m"),
    Param("convergence", float, 1.46, "Distance with no parallax between the eyes: nearer points come out of "
          "the screen, farther ones recede. The default puts a third of the parallax from near to far in front "
          "of the screen, two thirds behind it (td_bridge.geometry.convergence_for_split).",
          minimum=0.01, maximum=100000.0, unit="m"),
    Param("fov", float, 90.0, "Vertical field of view of the left and right eye cameras.",
          minimum=1.0, maximum=179.0, unit="deg"),
    Param("head_x", float, 0.0, "Head position, right of the sphere's centre (parallax).",
          minimum=-10000.0, maximum=10000.0, unit="m"),
    Param("head_y", float, 0.0, "Head position, above the sphere's centre.", minimum=-10000.0, maximum=10000.0,
          unit="m"),
    Param("head_z", float, 0.0, "Head position, behind the sphere's centre (the view looks down -Z).",
          minimum=-10000.0, maximum=10000.0, unit="m"),
    Param("yaw", float, 0.0, "Head turn to the left.", minimum=-360.0, maximum=360.0, unit="deg"),
    Param("pitch", float, 0.0, "Head tilt upwards.", minimum=-90.0, maximum=90.0, unit="deg"),
    Param("eye_width", int, 1280, "Width of each eye's image.", minimum=16, maximum=16384, unit="px"),
    Param("eye_height", int, 720, "Height of each eye's image.", minimum=16, maximum=16384, unit="px"),
    Param("packing", str, "half", "Side-by-side and top-bottom outputs: half keeps one eye's size with each eye "
          "squeezed into its half (frame-compatible 3D, within Non-Commercial's 1280×1280); full puts both eyes "
          "at full size (twice as wide or high).", choices=("half", "full")),
    Param("ods_height", int, 640, "Height of each eye's 360° stereo equirectangular image (twice as wide).",
          minimum=16, maximum=8192, unit="px"),
    Param("dome_size", int, 1280, "Width and height of the dome's fisheye image.", minimum=16, maximum=16384,
          unit="px"),
    Param("dome_fov", float, 180.0, "Field of view across the dome's fisheye circle.", minimum=10.0,
          maximum=360.0, unit="deg"),
    Param("dome_tilt", float, 90.0, "Dome camera tilt: 90 puts the zenith in the centre (planetarium), 0 the "
          "horizon straight ahead.", minimum=-90.0, maximum=90.0, unit="deg"),
)

# How the running TouchDesigner's cameras and projections behave where Derivative's documentation can be read two
# ways. The defaults are our reading of the docs; the TouchDesigner component's Diagnose renders a test frame,
# measures each one (td_bridge.geometry_check) and its Apply Fixes pulse sets the ones that come out wrong.
CONVENTION_PARAMS: tuple[Param, ...] = (
    Param("window_x_sign", str, "docs", "Sign of the eye cameras' Window X: docs (a negative Window X moves the "
          "image centre left, as the Camera COMP page reads) or reversed.", choices=("docs", "reversed")),
    Param("ods_left_index", int, 0, "Camera index of the left eye in the 360° stereo Render TOP.",
          minimum=0, maximum=1),
    Param("ods_ipd_sign", str, "auto", "Sign of the 360° stereo camera's IPD Shift: auto (by build: reversed before "
          "2023.12370, as its release notes say), normal or reversed.", choices=("auto", "normal", "reversed")),
    Param("ods_ipd_shift", str, "half", "What the 360° stereo camera's IPD Shift measures: half (each eye's offset, "
          "IPD/2) or whole (the distance between the eyes).", choices=("half", "whole")),
    Param("equirect_yaw", float, 0.0, "Turn added to the Projection TOPs that make the 360° equirectangular "
          "outputs.", minimum=-360.0, maximum=360.0, unit="deg"),
    Param("equirect_mirror", bool, False, "Mirror the 360° equirectangular outputs left to right."),
    Param("dome_tilt_sign", str, "docs", "Sign of the dome camera's tilt: docs (positive tilts up, as the Camera "
          "COMP's Rotate X) or reversed.", choices=("docs", "reversed")),
)


# Depth estimation (python -m generator depth): an image in, an RGBD frame out.
ESTIMATION_PARAMS: tuple[Param, ...] = (
    Param("pano", str, "auto", "Treat the image as an equirectangular 360° panorama: auto (when it is 2:1), yes "
          "or no.", choices=("auto", "yes", "no")),
    Param("views", str, "dense", "How a panorama is cut into perspective views: dense (22 views of 80°) or cube "
          "(6 faces widened to 110°, faster).", choices=("dense", "cube")),
    Param("flip", str, "auto", "Average with the estimate of the mirrored image: auto (ZoeDepth only, as "
          "transformers documents), yes or no. Doubles the work.", choices=("auto", "yes", "no")),
    next(p for p in GENERATION_PARAMS if p.name == "cue"),
)


# RGBD super-resolution with Intel's ldm3d-sr (python -m generator upscale): a frame in, a larger frame out.
# Guidance and noise level default as the checkpoint's diffusers community pipeline does, steps and prompt as its
# model card's example.
UPSCALE_PARAMS: tuple[Param, ...] = (
    Param("upscale_factor", float, 4.0, "How many times wider and higher the frame becomes (rounded to a multiple "
          "of 8 pixels); upscale_width or upscale_height overrides it.", minimum=1.0, maximum=8.0),
    Param("upscale_width", int, 0, "Target width; 0 follows upscale_height (keeping the aspect) or the factor.",
          minimum=0, maximum=8192, multiple_of=8, unit="px"),
    Param("upscale_height", int, 0, "Target height; 0 follows upscale_width (keeping the aspect) or the factor.",
          minimum=0, maximum=8192, multiple_of=8, unit="px"),
    Param("upscale_prompt", str, "high quality high resolution uhd 4k image", "What the upscaler steers toward.",
          max_length=2000),
    Param("upscale_steps", int, 50, "Denoising steps of the upscaler.", minimum=1, maximum=500),
    Param("upscale_guidance", float, 9.0, "Classifier-free guidance scale of the upscaler.", minimum=0.0,
          maximum=50.0),
    Param("upscale_noise_level", int, 20, "Noise added to the low-resolution frame and told to the model: more "
          "invents more detail, less stays closer to the source; at most the checkpoint's max_noise_level (350).",
          minimum=0, maximum=999),
    Param("upscale_seed", int, RANDOM_SEED, "Random seed of the upscaler; -1 picks one.", minimum=RANDOM_SEED,
          maximum=SEED_MAX),
    Param("upscale_scheduler", str, "ddim", "Sampler of the upscaler: ddim, dpm++ or euler.",
          choices=("ddim", "dpm++", "euler")),
    Param("upscale_seamless", str, "auto", "Wrap the left and right edges (360° panoramas): auto (when the source "
          "was generated seamless, or is 2:1 when it says nothing), yes or no.", choices=("auto", "yes", "no")),
    Param("upscale_tile", int, 0, "Largest tile processed at once, in output pixels; bigger images are done in "
          "overlapping tiles. 0: 1024 on a CUDA GPU, 512 elsewhere.", minimum=0, maximum=4096, multiple_of=64,
          unit="px"),
)


# RGBD remix (python -m generator remix, the remix command): a region of a kept frame regenerated with a new prompt,
# the rest kept. The region is a box on the sphere in the view's terms (td_bridge.region).
REMIX_PARAMS: tuple[Param, ...] = (
    Param("remix_yaw", float, 0.0, "Centre of the remixed region: degrees to the left of straight ahead (the "
          "image centre), as the view's Yaw; it wraps, so 180 is behind and spans the 0°/360° seam.",
          minimum=-360.0, maximum=360.0, unit="deg"),
    Param("remix_pitch", float, 0.0, "Centre of the remixed region: degrees above the horizon, as the view's "
          "Pitch.", minimum=-90.0, maximum=90.0, unit="deg"),
    Param("remix_width", float, 90.0, "Width of the remixed region in degrees of longitude.", minimum=1.0,
          maximum=360.0, unit="deg"),
    Param("remix_height", float, 60.0, "Height of the remixed region in degrees of latitude.", minimum=1.0,
          maximum=180.0, unit="deg"),
    Param("remix_feather", float, 5.0, "Soft edge: degrees beyond the region over which the new content fades into "
          "the kept frame (0: a hard edge).", minimum=0.0, maximum=45.0, unit="deg"),
)


def find_param(name: str, params: Iterable[Param] = GENERATION_PARAMS) -> Param:
    params = tuple(params)
    for param in params:
        if param.name == name:
            return param
    raise ParamError(f"unknown parameter {name!r}; known: {', '.join(p.name for p in params)}")


def generation_param(name: str) -> Param:
    return find_param(name, GENERATION_PARAMS)


def defaults(params: Iterable[Param] = GENERATION_PARAMS) -> dict[str, Any]:
    return {p.name: p.default for p in params}


def validate(values: Mapping[str, Any], params: Iterable[Param]) -> dict[str, Any]:
    """Defaults filled in, every value coerced and range-checked; all problems in one ParamError."""
    params = tuple(params)
    return {**defaults(params), **coerce_given(values, params)}


def coerce_given(values: Mapping[str, Any], params: Iterable[Param]) -> dict[str, Any]:
    """Only the values given, each coerced and range-checked; all problems in one ParamError."""
    params = tuple(params)
    result, problems = {}, []
    for name, value in values.items():
        try:
            result[name] = find_param(str(name), params).coerce(value)
        except ParamError as exc:
            problems.append(str(exc))
    if problems:
        raise ParamError("; ".join(problems))
    return result


def validate_all(*groups: tuple[Mapping[str, Any], Iterable[Param]]) -> list[dict[str, Any]]:
    """``validate`` for several (values, params) groups; the problems of all of them in one ParamError."""
    results, problems = [], []
    for values, params in groups:
        try:
            results.append(validate(values, params))
        except ParamError as exc:
            problems.append(str(exc))
    if problems:
        raise ParamError("; ".join(problems))
    return results


def validate_generation(values: Mapping[str, Any]) -> dict[str, Any]:
    return validate(values, GENERATION_PARAMS)


def requested_loras(params: Mapping[str, Any]) -> dict[str, float] | None:
    """LoRA name → weight the LoRA slots of validated generation params ask for; None when every slot is empty
    (the generator's own set). A name in two slots, or "none" beside a name, is a ParamError."""
    slots = [(params.get(f"lora_{i}", ""), params.get(f"lora_{i}_scale", 1.0)) for i in range(1, LORA_SLOTS + 1)]
    named = [(str(name).strip(), float(scale)) for name, scale in slots if str(name).strip()]
    if not named:
        return None
    names = [name for name, _ in named]
    if LORA_NONE in names:
        if len(names) > 1:
            raise ParamError(f"lora slots: {LORA_NONE!r} (no LoRA) cannot stand beside {', '.join(names)}")
        return {}
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ParamError(f"lora slots: {', '.join(twice)} in more than one slot")
    return dict(named)


def resolve_seed(params: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``params`` with a random seed drawn when it is -1."""
    if params.get("seed", RANDOM_SEED) == RANDOM_SEED:
        return {**params, "seed": secrets.randbelow(SEED_MAX + 1)}
    return dict(params)


# ------------------------------------------------------------------ TouchDesigner custom parameters

TD_STYLES = {int: "Int", float: "Float", bool: "Toggle", str: "Str"}


def td_name(name: str) -> str:
    """TouchDesigner custom parameter name: a capital letter, then lowercase letters and digits."""
    cleaned = "".join(ch for ch in name.lower() if ch.isascii() and ch.isalnum())
    if not cleaned or not cleaned[0].isalpha():
        raise ParamError(f"{name!r} cannot become a TouchDesigner parameter name")
    return cleaned[0].upper() + cleaned[1:]


def td_parameter_specs(params: Iterable[Param], page: str) -> list[dict[str, Any]]:
    """Custom parameter definitions for one page: name, label, style, default, range or menu, help."""
    specs = []
    for param in params:
        spec: dict[str, Any] = {
            "name": td_name(param.name),
            "label": param.name.replace("_", " ").title(),
            "style": "Menu" if param.choices else TD_STYLES[param.kind],
            "default": param.default,
            "help": param.help,
            "page": page,
            "param": param.name,
        }
        if param.choices:
            spec["menu"] = list(param.choices)
        if param.kind in (int, float):
            spec["min"], spec["max"] = param.minimum, param.maximum
        specs.append(spec)
    return specs
