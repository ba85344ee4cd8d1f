"""Upscaled frames: a source frame through the ldm3d-sr upscaler into a new frame linked to its source.

Shared by ``python -m generator upscale``, ``generate --upscale`` and the server's ``upscale`` command. The new
frame keeps the source's prompt, negative prompt, seed and cue (as far as the source records them: nothing is
invented for a folder without metadata.json), records every upscale parameter beside them, and names its source in
the metadata field ``source_frame_id``.
"""

from __future__ import annotations

import collections
import secrets
import threading
from typing import Any, Callable

import numpy as np

from td_bridge.params import GENERATION_PARAMS, RANDOM_SEED, SEED_MAX, UPSCALE_PARAMS, ParamError, find_param, validate

from .backends.base import RGBD, CancelledFn, ProgressFn
from .backends.upscale_files import DEFAULT_UPSCALER
from .frames import make_frame

DEFAULT_OPTIONS = {"device": "auto", "dtype": "auto", "revision": None, "local_files_only": False}


def upscale_params(values: dict[str, Any]) -> dict[str, Any]:
    """Upscale parameters validated, a random ``upscale_seed`` drawn when it is -1."""
    params = validate(values, UPSCALE_PARAMS)
    if params["upscale_seed"] == RANDOM_SEED:
        params["upscale_seed"] = secrets.randbelow(SEED_MAX + 1)
    return params


class _SourceUpscale:
    """One source frame as a backend for :func:`generator.frames.make_frame`: ``generate`` upscales it."""

    name = "ldm3d-sr"

    def __init__(self, upscaler: Any, meta: dict[str, Any], rgb: np.ndarray, depth: np.ndarray) -> None:
        self.upscaler, self.meta, self.rgb, self.depth = upscaler, meta, rgb, depth
        self.model = upscaler.model

    def generate(self, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn) -> RGBD:
        return self.upscaler.upscale(self.rgb, self.depth, params, progress, cancelled, source_meta=self.meta)


def frame_params(meta: dict[str, Any], upscale: dict[str, Any]) -> dict[str, Any]:
    """The params an upscaled frame records: those of the source's recorded generation params that the schema
    accepts, the upscale params and ``source_frame_id``. Only what the source records: nothing is filled in with
    defaults (a folder without metadata.json, or a depth-estimated frame, has no seed, steps or generation size to
    report; the source's actual size is in the upscaler's ``backend_info.source_size``)."""
    recorded = meta.get("params") if isinstance(meta.get("params"), dict) else {}
    recorded = {**{k: meta[k] for k in ("prompt", "negative_prompt") if k in meta}, **recorded}
    source = {}
    for name, value in recorded.items():
        try:
            source[str(name)] = find_param(str(name), GENERATION_PARAMS).coerce(value)
        except ParamError:  # not a generation parameter (an estimation or upscale one), or out of range
            pass
    return {**source, **upscale, "source_frame_id": meta.get("frame_id")}


def upscale_frame(upscaler: Any, meta: dict[str, Any], rgb: np.ndarray, depth: np.ndarray, upscale: dict[str, Any],
                  progress: ProgressFn, cancelled: CancelledFn, job_id: str | None = None
                  ) -> tuple[dict[str, Any], RGBD]:
    """(header, result) of the upscaled frame: a new frame id, ``source_frame_id`` naming the source."""
    params = frame_params(meta, upscale)
    header, result = make_frame(_SourceUpscale(upscaler, meta, rgb, depth), params, progress, cancelled,
                                job_id=job_id)
    header["source_frame_id"] = params["source_frame_id"]
    return header, result


def load_upscaler(model: str, **options: Any) -> Any:
    """The upscaler backend; a missing torch/diffusers is a BackendUnavailable naming the extra."""
    from .backends.base import BackendUnavailable

    try:
        from .backends.upscale import UpscaleBackend
    except ImportError as exc:
        raise BackendUnavailable(f"the upscaler cannot be imported (missing module {exc.name or exc}); install it "
                                 "with: pip install 'depthfusion[generator]'") from exc
    return UpscaleBackend.load(model or DEFAULT_UPSCALER, **{**DEFAULT_OPTIONS, **options})


def split_upscale(args: dict[str, Any]) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(upscale params or None, the other args) of a generate request: ``upscale`` true upscales the frame
    afterwards with the ``upscale_*`` fields; those without it are refused."""
    from .cues import UPSCALE

    rest = {k: v for k, v in args.items() if k != "upscale" and not str(k).startswith("upscale_")}
    given = {k: v for k, v in args.items() if str(k).startswith("upscale_")}
    if not UPSCALE.coerce(args.get("upscale", False)):
        if given:
            raise ParamError(f"{', '.join(given)} given without upscale = true")
        return None, rest
    return upscale_params(given), rest


FRAME_KEYS = ("frame_id", "cue", "name")  # how an upscale request names its source frame
SOURCE_KEY = "upscale_source"  # the job param naming its stashed source frame


class UpscaleJobs:
    """The server's upscaling: the source frame of each queued upscale job kept until the worker takes it (the
    newest ``keep`` of them: a cancelled job's source goes with time), the upscaler loaded on the first job."""

    def __init__(self, load: Callable[[], Any], keep: int = 32) -> None:
        self._load, self._upscaler, self._keep = load, None, keep
        self._sources: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._chained: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def job_params(self, args: dict[str, Any], frame: Any) -> dict[str, Any]:
        """Validated params of an upscale job for ``frame`` (a decoded frame), its source stashed under a token."""
        params = upscale_params(args)
        token = secrets.token_hex(8)
        with self._lock:
            self._sources[token] = frame
            while len(self._sources) > self._keep:
                self._sources.popitem(last=False)
        return {**params, "source_frame_id": frame.meta.get("frame_id"), SOURCE_KEY: token}

    def chain(self, job_id: str, upscale: dict[str, Any]) -> None:
        """Upscale the frame of generation job ``job_id`` with ``upscale`` once it is published."""
        with self._lock:
            self._chained[job_id] = upscale
            while len(self._chained) > self._keep:  # a cancelled job's entry goes with time
                self._chained.popitem(last=False)

    def chained(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            return self._chained.pop(job_id, None)

    def run(self, params: dict[str, Any], progress: ProgressFn, cancelled: CancelledFn,
            job_id: str) -> tuple[dict[str, Any], RGBD]:
        """On the worker thread: load the upscaler if needed, upscale the job's source."""
        with self._lock:
            frame = self._sources.pop(params[SOURCE_KEY], None)
        if frame is None:
            raise RuntimeError("the source frame of this upscale job was dropped (too many jobs queued)")
        if self._upscaler is None:
            self._upscaler = self._load()
        upscale = {k: v for k, v in params.items() if k in {p.name for p in UPSCALE_PARAMS}}
        return upscale_frame(self._upscaler, frame.meta, frame.rgb, frame.depth, upscale, progress, cancelled,
                             job_id=job_id)
