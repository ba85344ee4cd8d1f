"""Upscaled frames: a source frame through the ldm3d-sr upscaler into a new frame linked to its source.

Shared by ``python -m generator upscale``, ``generate --upscale`` and the server's ``upscale`` command (its jobs:
generator.serving.upscale_jobs). The new frame keeps the source's prompt, negative prompt, seed and cue (as far as
the source records them: nothing is invented for a folder without metadata.json), records every upscale parameter
beside them, and names its source in the metadata field ``source_frame_id``.
"""

from __future__ import annotations

import secrets
from typing import Any

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
        self.device = getattr(upscaler, "device", None)  # make_frame records the peak memory on it

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
