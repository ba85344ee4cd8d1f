"""The live session: a way of driving a backend frame after frame from the newest parameters.

It owns the newest generation and live parameters (td_bridge.params LIVE_PARAMS), the pacing (``live_fps``) and the
transition state: when the prompt, negative prompt or seed changes, the new end blends in over ``transition``
seconds. LDM3D (a backend with ``encode`` and ``start_noise``) moves its text embeddings linearly and its start noise
by spherical interpolation from the old end to the new; any other backend (the demo) crossfades the two ends'
frames, RGB and depth, by the same factor, so rehearsals show the same timing. When nothing changed since the last
live frame and no transition runs, the session is idle: no frame is made and the last one stays on screen.

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
FPS_WINDOW = 2.0  # seconds of frame times the measured rate is taken over


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
        self._times: collections.deque[float] = collections.deque()
        self._cache: collections.OrderedDict[Any, Any] = collections.OrderedDict()  # ends' frames / tensors

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
                self.on, self._dirty, self._times = True, True, collections.deque()
            return self._summary_locked()

    def stop(self) -> dict[str, Any]:
        """Stop making live frames; the last one stays on screen."""
        with self._lock:
            self.on = False
            self.transition = None
            return self._summary_locked()

    # ------------------------------------------------------------ the worker

    def wait_s(self, now: float | None = None) -> float | None:
        """Seconds until the next live frame is due (0: now); None while off or idle."""
        now = self.clock() if now is None else now
        with self._lock:
            if not self.on or not (self._dirty or self.transition is not None):
                return None
            fps = self.live["live_fps"]
            if fps <= 0 or not self.frames:
                return 0.0
            return max(0.0, self._last_at + 1.0 / fps - now)

    def next_frame(self, progress: ProgressFn, cancelled: CancelledFn) -> tuple[dict[str, Any], RGBD] | None:
        """Make the next live frame now: (header, result), or None when the session is off or idle."""
        now = self.clock()
        with self._lock:
            if not self.on or not (self._dirty or self.transition is not None):
                return None
            params, transition = dict(self.params), self.transition
            factor = transition.factor(now) if transition is not None else 1.0
            if transition is not None and factor >= 1.0:
                self.transition = transition = None
            self._dirty = False
            self._last_at = now
            self._making = True
        started = time.perf_counter()
        made = False
        try:
            if transition is None:
                result = self._end(params, progress, cancelled)
            elif _blends_inside(self.backend):
                result = self._blend_inside(transition.source, params, factor, progress, cancelled)
            else:
                result = self._crossfade(transition.source, params, factor, progress, cancelled)
            made = True
        finally:
            with self._lock:  # counted and no longer making in one step: idle is never reported in between
                self._making = False
                if made:
                    self.frames += 1
                    self._times.append(self.clock())
                frames = self.frames
        live = {"frame": frames, "blend": round(factor, 6) if transition is not None else None,
                "from": {k: transition.source[k] for k in ENDS} if transition is not None else None}
        return frame_for(self.backend, params, result, time.perf_counter() - started, extra={"live": live}), result

    def _end(self, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn) -> RGBD:
        if _blends_inside(self.backend):
            return self._blend_inside(params, params, 1.0, progress, cancelled)
        return self._cached(("frame", _key(params)), lambda: self.backend.generate(params, progress, cancelled))

    def _blend_inside(self, source: dict[str, Any], target: dict[str, Any], t: float, progress: ProgressFn,
                      cancelled: CancelledFn) -> RGBD:
        """LDM3D: embeddings lerp(t), start noise slerp(t), generated with the target's other parameters."""
        backend: Any = self.backend

        def text(p: dict[str, Any]) -> Any:
            # the target's guidance and LoRAs encode both ends, so that the two embeddings always match in shape
            q = {**target, "prompt": p["prompt"], "negative_prompt": p["negative_prompt"]}
            return self._cached(("text", _key(q)), lambda: backend.encode(q))

        def noise(p: dict[str, Any]) -> Any:
            q = {**target, "seed": p["seed"]}
            return self._cached(("noise", q["seed"], q["width"], q["height"]), lambda: backend.start_noise(q))

        embeddings = lerp(text(source), text(target), t) if t < 1.0 else text(target)
        latents = slerp(noise(source), noise(target), t) if t < 1.0 else noise(target)
        return backend.generate(target, progress, cancelled, latents=latents, embeddings=embeddings)

    def _crossfade(self, source: dict[str, Any], target: dict[str, Any], t: float, progress: ProgressFn,
                   cancelled: CancelledFn) -> RGBD:
        """Any other backend: the two ends' frames (each made once), RGB and depth mixed by t."""
        old_params = {**target, **{k: source[k] for k in ENDS}}
        old = self._cached(("frame", _key(old_params)), lambda: self.backend.generate(old_params, progress, cancelled))
        new = self._cached(("frame", _key(target)), lambda: self.backend.generate(target, progress, cancelled))
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
        while self._times and self._times[0] < now - FPS_WINDOW:
            self._times.popleft()
        fps = 0.0
        if len(self._times) >= 2:
            span = self._times[-1] - self._times[0]
            fps = (len(self._times) - 1) / span if span > 0 else 0.0
        idle = self.on and not self._dirty and self.transition is None and not self._making
        return {"on": self.on, "fps": round(fps, 3), "frames": self.frames, "idle": idle,
                "blend": None if self.transition is None else round(self.transition.factor(now), 6),
                "params": dict(self.params), **self.live}


def _blends_inside(backend: Any) -> bool:
    return callable(getattr(backend, "encode", None)) and callable(getattr(backend, "start_noise", None))


def _key(params: dict[str, Any]) -> tuple:
    return tuple(sorted((k, v) for k, v in params.items() if k != "cue"))
