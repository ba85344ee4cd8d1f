"""The live session: a way of driving a backend frame after frame from the newest parameters.

It owns the newest generation and live parameters (td_bridge.params LIVE_PARAMS), the pacing (``live_fps``) and the
transition state: when the prompt, negative prompt or seed changes, the new end blends in over ``transition``
seconds. LDM3D (a backend with ``encode`` and ``start_noise``) moves its text embeddings linearly and its start noise
by spherical interpolation from the old end to the new; any other backend (the demo) crossfades the two ends'
frames, RGB and depth, by the same factor, so rehearsals show the same timing. When nothing changed since the last
live frame and no transition runs, the session is idle: no frame is made and the last one stays on screen.

Live input (img2img): the newest input frame (``set_input``; one slot, newest wins) is resized to the frame's size
and, on LDM3D, encoded with the last live frame's depth (mid-grey before there is one) and noised to
``input_strength`` before the prompt denoises it; the demo backend mixes it into its frame by the same share. An
input frame at least ``input_similarity`` like the one the last frame was made from makes no new frame.

Each live frame's :class:`Recipe` (its ends, blend factor and input) is kept for the newest RECIPES frames, so that a
*take* makes it again at full quality (:meth:`LiveSession.take_params`, :meth:`LiveSession.take`).

The server's worker calls :meth:`LiveSession.next_frame` between queued jobs; the command loop calls
:meth:`LiveSession.update`, :meth:`start` and :meth:`stop`. Every method is thread-safe.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from td_bridge.depth import blend_depth
from td_bridge.params import (GENERATION_PARAMS, LIVE_PARAMS, ParamError, RANDOM_SEED, defaults, resolve_seed,
                              validate_all)

from ..backends.base import RGBD, Backend, CancelledFn, ProgressFn
from ..frames import frame_for

ENDS = ("prompt", "negative_prompt", "seed")  # what a transition blends; every other parameter applies at once
LIVE_NAMES = frozenset(p.name for p in LIVE_PARAMS)
GENERATION_NAMES = frozenset(p.name for p in GENERATION_PARAMS)
FPS_FRAMES = 8  # the measured rate is taken over the last this many frames…
FPS_STALE = 2.0  # …and is 0 once no frame came for this long, or for twice the frames' interval
RECIPES = 16  # live frames a take can name: the newest ones (the frame a receiver shows is one of them)
PINNED_TAKES = 16  # takes waiting in the job queue, each holding its frame's recipe
TAKE_KEY = "take_of"  # a take job's param: the live frame it makes again
SIMILARITY_SIDE = 64  # input frames are compared at about this many pixels across
MID_DEPTH = 32768  # the depth an input frame is encoded with before a live frame gave one


def lerp(a: Any, b: Any, t: float) -> Any:
    """(1 − t)·a + t·b, for arrays or tensors."""
    return a * (1.0 - t) + b * t


def slerp(a: Any, b: Any, t: float, *, dot_threshold: float = 0.9995) -> Any:
    """Spherical interpolation between two noise tensors (torch) taken as flat vectors: Gaussian noise keeps its
    norm along the way, where a straight line between two seeds' noises passes through a quieter middle. Nearly
    parallel ends fall back to :func:`lerp`. t = 0 gives ``a`` and t = 1 gives ``b`` exactly."""
    import torch

    if t <= 0.0:
        return a.clone()
    if t >= 1.0:
        return b.clone()
    a64, b64 = a.double().flatten(), b.double().flatten()
    dot = float(torch.dot(a64, b64) / (a64.norm() * b64.norm()))
    if abs(dot) > dot_threshold:
        return lerp(a, b, t)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_theta = np.sin(theta)
    wa, wb = np.sin((1.0 - t) * theta) / sin_theta, np.sin(t * theta) / sin_theta
    return (a64 * wa + b64 * wb).reshape(a.shape).to(a.dtype)


@dataclass(frozen=True)
class Recipe:
    """What one live frame was made from, enough to make it again: the target parameters, the old end while a
    transition blends (``source``) at ``blend``, and the input image (with the depth it was encoded with)."""

    params: dict[str, Any]
    source: dict[str, Any] | None = None
    blend: float = 1.0
    image: RGBD | None = None
    strength: float = 1.0

    def header(self, frames: int) -> dict[str, Any]:
        """The live frame's ``live`` header field."""
        blending = self.source is not None
        return {"frame": frames, "blend": round(self.blend, 6) if blending else None,
                "from": {k: self.source[k] for k in ENDS} if blending else None,
                "input_strength": self.strength if self.image is not None else None}


def similarity(a: np.ndarray, b: np.ndarray) -> float | None:
    """1 − the mean absolute difference (0–1) of two RGB frames seen at about SIMILARITY_SIDE pixels across; None
    when their sizes differ."""
    if a.shape != b.shape:
        return None
    step = max(1, max(a.shape[:2]) // SIMILARITY_SIDE)
    small_a, small_b = a[::step, ::step].astype(np.int16), b[::step, ::step].astype(np.int16)
    return 1.0 - float(np.abs(small_a - small_b).mean()) / 255.0


def resized(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """An input frame at the generation size (Lanczos), as a new array."""
    if rgb.shape[:2] == (height, width):
        return np.array(rgb, dtype=np.uint8, copy=True)
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((width, height), Image.LANCZOS))


@dataclass
class Transition:
    source: dict[str, Any]  # generation params of the old end
    started: float  # monotonic time
    seconds: float

    def factor(self, now: float) -> float:
        return 1.0 if self.seconds <= 0 else min(1.0, max(0.0, (now - self.started) / self.seconds))


class LiveSession:
    """The newest parameters, the pacing and the transition state of live generation on one backend."""

    def __init__(self, backend: Backend, defaults_: dict[str, Any] | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backend = backend
        self.clock = clock  # monotonic seconds: pacing, transitions and the measured rate (tests pass their own)
        self._lock = threading.Lock()
        self.on = False
        self.params = resolve_seed({**defaults(GENERATION_PARAMS), **(defaults_ or {})})
        self.live = defaults(LIVE_PARAMS)
        self.transition: Transition | None = None
        self.frames = 0
        self._dirty = True  # something changed since the last live frame
        self._last_at = 0.0  # monotonic start of the last live frame
        self._making = False  # a live frame is being made now
        self._times: collections.deque[float] = collections.deque(maxlen=FPS_FRAMES)
        self._cache: collections.OrderedDict[Any, Any] = collections.OrderedDict()  # ends' frames / tensors
        self._input: np.ndarray | None = None  # the newest input frame (img2img), as uploaded
        self._input_changed = False  # it differs enough from the one the last live frame was made from
        self._used_input: np.ndarray | None = None  # the input frame the last live frame was made from
        self._last_depth: np.ndarray | None = None  # the last live frame's depth: an input frame is encoded with it
        self._recipes: collections.OrderedDict[str, Recipe] = collections.OrderedDict()  # frame id → recipe
        self._takes: collections.OrderedDict[str, Recipe] = collections.OrderedDict()  # pinned for queued takes
        self._stream: Any = _NoStream()
        if callable(getattr(backend, "prepare", None)):  # LDM3D (torch: not imported for the demo backend)
            from ..backends.stream_batch import StreamBatch

            self._stream = StreamBatch(backend)
        self._entered: dict[int, Recipe] = {}  # stream batching: the recipe of each frame in flight

    # ------------------------------------------------------------ steering (command loop)

    def validate(self, args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(generation, live) parameters ``args`` would give, merged over the current ones; a ParamError names every
        bad or unknown value. Nothing changes."""
        unknown = sorted(str(k) for k in args if k not in GENERATION_NAMES and k not in LIVE_NAMES)
        if unknown:
            raise ParamError(f"unknown live parameter(s) {', '.join(unknown)}; known: the generation parameters "
                             f"and {', '.join(sorted(LIVE_NAMES))}")
        with self._lock:
            current, live = dict(self.params), dict(self.live)
        generation, live = validate_all(
            ({**current, **{k: v for k, v in args.items() if k in GENERATION_NAMES}}, GENERATION_PARAMS),
            ({**live, **{k: v for k, v in args.items() if k in LIVE_NAMES}}, LIVE_PARAMS))
        if "seed" in args and generation["seed"] == RANDOM_SEED:
            generation = resolve_seed(generation)  # -1: a new random seed now, kept while live
        check = getattr(self.backend, "check", None)
        if check is not None:
            check(generation)
        return generation, live

    def update(self, args: dict[str, Any]) -> dict[str, Any]:
        """Apply parameters (validated; a ParamError changes nothing); a changed prompt, negative prompt or seed
        starts a transition from the end shown (or being headed to) now. Returns the parameters in force."""
        generation, live = self.validate(args)
        with self._lock:
            old = self.params
            self.live = live
            if generation == old:
                return self._summary_locked()
            if any(generation[k] != old[k] for k in ENDS):
                # both ends are made with the newest other parameters (size, steps, guidance…), so they always blend
                seconds = live["transition"]
                self.transition = Transition(dict(old), self.clock(), seconds) if seconds > 0 and self.frames \
                    and self.on else None  # off: the next start shows the new end at once
            self.params = generation
            self._dirty = True
            return self._summary_locked()

    def start(self, args: dict[str, Any] | None = None) -> dict[str, Any]:
        self.update(args or {})
        with self._lock:
            if not self.on:
                self.on, self._dirty, self._times = True, True, collections.deque(maxlen=FPS_FRAMES)
                self._stream.clear()  # frames left in flight by a stop are not shown after a new start
            return self._summary_locked()

    def stop(self) -> dict[str, Any]:
        """Stop making live frames; the last one stays on screen."""
        with self._lock:
            self.on = False
            self.transition = None
            return self._summary_locked()

    def set_input(self, rgb: np.ndarray | None, args: dict[str, Any] | None = None) -> dict[str, Any]:
        """The newest input frame ((H, W, 3) uint8, copied; None removes the input) with any live or generation
        parameters (validated first, as :meth:`update`). Returns {"accepted": whether it makes a new frame,
        "similarity": to the input the last frame was made from, or None}."""
        if args:
            self.update(args)
        with self._lock:
            if rgb is None:
                accepted = self._input is not None or self._used_input is not None
                self._input, self._input_changed = None, accepted
                return {"accepted": accepted, "similarity": None}
            same = None if self._used_input is None else similarity(rgb, self._used_input)
            accepted = same is None or same < self.live["input_similarity"] or (
                self.live["input_similarity"] >= 1.0 and not np.array_equal(rgb, self._used_input))
            self._input = np.array(rgb, dtype=np.uint8, copy=True)
            self._input_changed = self._input_changed or accepted
            return {"accepted": accepted, "similarity": None if same is None else round(same, 6)}

    # ------------------------------------------------------------ the worker

    def _due_locked(self) -> bool:
        return self.on and (self._dirty or self._input_changed or self.transition is not None)

    def _streaming_locked(self) -> bool:
        return self.live["stream_batch"] and callable(getattr(self.backend, "prepare", None))

    def wait_s(self, now: float | None = None) -> float | None:
        """Seconds until the next live frame is due (0: now); None while off or idle."""
        now = self.clock() if now is None else now
        with self._lock:
            if not (self._due_locked() or (self.on and self._stream.in_flight)):
                return None
            fps = self.live["live_fps"]
            if fps <= 0 or not self.frames:
                return 0.0
            return max(0.0, self._last_at + 1.0 / fps - now)

    def next_frame(self, progress: ProgressFn, cancelled: CancelledFn) -> tuple[dict[str, Any], RGBD] | None:
        """Make the next live frame now: (header, result), or None when the session is off or idle (or, stream
        batching, when no frame came out of this call yet)."""
        now = self.clock()
        with self._lock:
            streaming = self._streaming_locked()
            if not streaming:
                self._stream.clear()  # stream batching turned off: what was in flight is dropped
            if not self._stream.in_flight:
                self._entered.clear()  # a cancelled batch leaves its recipes behind
            due = self._due_locked()
            if not (due or (self.on and self._stream.in_flight)):
                return None
            recipe, raw, last_depth = self._recipe_locked(now) if due else (None, None, None)
            self._dirty = self._input_changed = False
            self._last_at = now
            self._making = True
        started = time.perf_counter()
        made = None
        try:
            if recipe is not None:
                recipe = _with_input(recipe, raw, last_depth)
            if streaming:
                made = self._stream_step(recipe, cancelled)
            else:
                made = recipe, self.render(recipe, progress, cancelled)
        finally:
            with self._lock:  # counted and no longer making in one step: idle is never reported in between
                self._making = False
                if made is not None:
                    self.frames += 1
                    self._times.append(self.clock())
                    self._last_depth = made[1].depth
                frames = self.frames
        if made is None:
            return None
        recipe, result = made
        header = frame_for(self.backend, recipe.params, result, time.perf_counter() - started,
                           extra={"live": recipe.header(frames)}, kind="live")
        with self._lock:
            _bounded_put(self._recipes, header["frame_id"], recipe, RECIPES)
        return header, result

    def _stream_step(self, recipe: Recipe | None, cancelled: CancelledFn) -> tuple[Recipe, RGBD] | None:
        """Stream batching: the recipe (if any) enters the batch, one U-Net call advances every frame in flight; the
        newest frame that came out (older ones of the same call are dropped: newest wins), or None."""
        entering = None
        if recipe is not None:
            import torch

            source = recipe.source if recipe.source is not None else recipe.params
            with torch.inference_mode():
                entering = self.backend.prepare(recipe.params, **self._inputs(
                    self.backend, self._cached, source, recipe.params, recipe.blend, recipe))
            self._entered[id(entering)] = recipe
        out = self._stream.advance(entering, cancelled)
        if not out:
            return None
        recipes = [self._entered.pop(id(state)) for state, _ in out]
        return recipes[-1], out[-1][1]

    def _recipe_locked(self, now: float) -> tuple[Recipe, np.ndarray | None, np.ndarray | None]:
        """What the next live frame is made from, before its input image is sized (:func:`_with_input`): (recipe,
        the input frame, the last live frame's depth). Ends a transition that has run its time."""
        params, transition = dict(self.params), self.transition
        factor = transition.factor(now) if transition is not None else 1.0
        if transition is not None and factor >= 1.0:
            self.transition = transition = None
        self._used_input = self._input
        recipe = Recipe(params, dict(transition.source) if transition is not None else None, factor, None,
                        self.live["input_strength"])
        return recipe, self._input, self._last_depth

    def render(self, recipe: Recipe, progress: ProgressFn, cancelled: CancelledFn, *,
               full_decoder: bool = False, backend: Backend | None = None) -> RGBD:
        """Make a recipe's frame: its ends blended at its factor, from its input image if it has one. ``backend``:
        another copy of the model (a take on another device's worker), which never shares the session's cache (its
        tensors live on the session's device)."""
        backend = backend or self.backend
        cached = self._cached if backend is self.backend else _uncached
        params, source = recipe.params, recipe.source if recipe.source is not None else recipe.params
        if _blends_inside(backend):
            options = self._inputs(backend, cached, source, params, recipe.blend, recipe)
            if full_decoder:
                options["full_decoder"] = True
            return backend.generate(params, progress, cancelled, **options)
        if recipe.source is None:
            result = cached(("frame", _key(params)), lambda: backend.generate(params, progress, cancelled))
        else:
            result = self._crossfade(backend, cached, recipe.source, params, recipe.blend, progress, cancelled)
        return result if recipe.image is None else _mix_input(result, recipe.image, recipe.strength)

    # ------------------------------------------------------------ takes

    def latest(self) -> str | None:
        """The id of the newest live frame, None before the first."""
        with self._lock:
            return next(reversed(self._recipes), None)

    def take_params(self, frame_id: str, overrides: dict[str, Any]) -> dict[str, Any]:
        """A take's job params: the live frame's parameters with ``overrides`` (generation parameters: the full step
        count, guidance…) over them, validated, and its recipe pinned until the job runs. The prompt, negative
        prompt and seed stay the frame's (and its size, when it was made from an input image); KeyError for a frame
        this session no longer knows."""
        fixed = sorted(set(overrides) & set(ENDS))
        if fixed:
            raise ParamError(f"a take keeps the live frame's {', '.join(ENDS)}; got {', '.join(fixed)}")
        with self._lock:
            recipe = self._recipes.get(frame_id) or self._takes.get(frame_id)
        if recipe is None:
            raise KeyError(frame_id)
        kept = {k: recipe.params[k] for k in ENDS + (("width", "height") if recipe.image is not None else ())}
        params = validate_all(({**recipe.params, **overrides, **kept}, GENERATION_PARAMS))[0]
        check = getattr(self.backend, "check", None)
        if check is not None:
            check(params)
        with self._lock:
            _bounded_put(self._takes, frame_id, recipe, PINNED_TAKES)
        return {**params, TAKE_KEY: frame_id}

    def take(self, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn,
             job_id: str | None = None, backend: Backend | None = None) -> tuple[dict[str, Any], RGBD]:
        """On a worker: a take job's frame (header, result), with the model's full decoder; ``backend``: the
        worker's copy of the model (default the session's)."""
        backend = backend or self.backend
        frame_id = params[TAKE_KEY]
        with self._lock:
            recipe = self._takes.get(frame_id)
        if recipe is None:
            raise RuntimeError(f"the live frame {frame_id} of this take is no longer known")
        target = {k: v for k, v in params.items() if k != TAKE_KEY}
        again = Recipe(target, recipe.source, recipe.blend, recipe.image, recipe.strength)
        started = time.perf_counter()
        result = self.render(again, progress, cancelled, full_decoder=True, backend=backend)
        take = {"live_frame": frame_id, **{k: v for k, v in recipe.header(0).items() if k != "frame"}}
        return frame_for(backend, target, result, time.perf_counter() - started, job_id=job_id,
                         extra={"take": take}), result

    @staticmethod
    def _inputs(backend: Any, cached: Callable[[Any, Any], Any], source: dict[str, Any], target: dict[str, Any],
                t: float, recipe: Recipe) -> dict[str, Any]:
        """LDM3D's generate/prepare arguments for a recipe: embeddings lerp(t), start noise slerp(t), generated with
        the target's other parameters, from the recipe's input image when it has one."""

        def text(p: dict[str, Any]) -> Any:
            # the target's guidance and LoRAs encode both ends, so that the two embeddings always match in shape
            q = {**target, "prompt": p["prompt"], "negative_prompt": p["negative_prompt"]}
            return cached(("text", _key(q)), lambda: backend.encode(q))

        def noise(p: dict[str, Any]) -> Any:
            q = {**target, "seed": p["seed"]}
            return cached(("noise", q["seed"], q["width"], q["height"]), lambda: backend.start_noise(q))

        options: dict[str, Any] = {
            "embeddings": lerp(text(source), text(target), t) if t < 1.0 else text(target),
            "latents": slerp(noise(source), noise(target), t) if t < 1.0 else noise(target)}
        if recipe.image is not None:
            options.update(image=recipe.image, strength=recipe.strength)
        return options

    @staticmethod
    def _crossfade(backend: Backend, cached: Callable[[Any, Any], Any], source: dict[str, Any],
                   target: dict[str, Any], t: float, progress: ProgressFn, cancelled: CancelledFn) -> RGBD:
        """Any other backend: the two ends' frames (each made once), RGB and depth mixed by t."""
        old_params = {**target, **{k: source[k] for k in ENDS}}
        old = cached(("frame", _key(old_params)), lambda: backend.generate(old_params, progress, cancelled))
        new = cached(("frame", _key(target)), lambda: backend.generate(target, progress, cancelled))
        rgb = np.clip(np.rint(lerp(old.rgb.astype(np.float32), new.rgb.astype(np.float32), t)), 0, 255)
        depth = np.clip(np.rint(blend_depth(old.depth, new.depth, t)), 0, 65535)  # td_bridge's frame blend
        near = new.near if old.near == new.near else None  # mixed depth has no single metric range otherwise
        far = new.far if old.far == new.far else None
        return RGBD(rgb.astype(np.uint8), depth.astype(np.uint16), near=near, far=far,
                    info={**new.info, "crossfade": round(t, 6)})

    def _cached(self, key: Any, make: Any) -> Any:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = make()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > 6:  # two ends of each kind, and one spare
                self._cache.popitem(last=False)
        return value

    # ------------------------------------------------------------ status

    def summary(self) -> dict[str, Any]:
        with self._lock:
            return self._summary_locked()

    def _summary_locked(self) -> dict[str, Any]:
        now = self.clock()
        fps = 0.0
        if len(self._times) >= 2 and self._times[-1] > self._times[0]:
            interval = (self._times[-1] - self._times[0]) / (len(self._times) - 1)
            fps = 0.0 if now - self._times[-1] > max(FPS_STALE, 2.0 * interval) else 1.0 / interval
        idle = self.on and not self._due_locked() and not self._stream.in_flight and not self._making
        return {"on": self.on, "fps": round(fps, 3), "frames": self.frames, "idle": idle,
                "input": self._input is not None,
                "blend": None if self.transition is None else round(self.transition.factor(now), 6),
                "params": dict(self.params), **self.live}


class _NoStream:
    """A backend without stream batching: never anything in flight."""

    in_flight = 0

    def clear(self) -> None:
        pass


def _uncached(key: Any, make: Callable[[], Any]) -> Any:
    """What :meth:`LiveSession._cached` does for another backend than the session's: make it, keep nothing."""
    return make()


def _blends_inside(backend: Any) -> bool:
    return callable(getattr(backend, "encode", None)) and callable(getattr(backend, "start_noise", None))


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, v) for k, v in params.items() if k != "cue"))


def _with_input(recipe: Recipe, rgb: np.ndarray | None, last_depth: np.ndarray | None) -> Recipe:
    """The recipe with its input frame at the frame's size, paired with the last live frame's depth when that has
    the size (else MID_DEPTH): LDM3D's VAE encodes RGB and depth together."""
    if rgb is None:
        return recipe
    width, height = recipe.params["width"], recipe.params["height"]
    depth = last_depth
    if depth is None or depth.shape != (height, width):
        depth = np.full((height, width), MID_DEPTH, dtype=np.uint16)
    return Recipe(recipe.params, recipe.source, recipe.blend, RGBD(resized(rgb, width, height), depth),
                  recipe.strength)


def _mix_input(result: RGBD, image: RGBD, strength: float) -> RGBD:
    """A backend without img2img (the demo): the input's RGB mixed into the frame, ``strength`` of the frame's own;
    depth stays the frame's."""
    rgb = np.clip(np.rint(lerp(image.rgb.astype(np.float32), result.rgb.astype(np.float32), strength)), 0, 255)
    return RGBD(rgb.astype(np.uint8), result.depth, near=result.near, far=result.far,
                info={**result.info, "input_strength": strength})


def _bounded_put(store: collections.OrderedDict, key: Any, value: Any, size: int) -> None:
    store[key] = value
    store.move_to_end(key)
    while len(store) > size:
        store.popitem(last=False)
