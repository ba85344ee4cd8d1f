"""Backend selection: ``demo``, an LDM3D hub id or folder, or ``auto`` (LDM3D, else demo)."""

from __future__ import annotations

import logging
from typing import Any

from .base import RGBD, Backend, BackendUnavailable, Cancelled
from .demo import DemoBackend

__all__ = ["RGBD", "Backend", "BackendUnavailable", "Cancelled", "DemoBackend", "load_backend", "DEFAULT_LDM3D"]

log = logging.getLogger("depthfusion.backends")

DEFAULT_LDM3D = "Intel/ldm3d-pano"


def load_backend(model: str = "auto", *, demo_step_delay: float = 0.0, **ldm3d_options: Any) -> Backend:
    """The backend for ``model``; ``auto`` falls back to the demo backend with one log line."""
    if model == "demo":
        return DemoBackend(step_delay=demo_step_delay)
    if model == "auto":
        try:
            return _load_ldm3d(DEFAULT_LDM3D, **ldm3d_options)
        except BackendUnavailable as exc:
            log.warning("model auto: LDM3D is unavailable (%s); using the demo backend", exc)
            return DemoBackend(step_delay=demo_step_delay)
    return _load_ldm3d(model, **ldm3d_options)


def _load_ldm3d(model: str, **options: Any) -> Backend:
    try:
        from .ldm3d import LDM3DBackend
    except ImportError as exc:
        missing = exc.name or str(exc)
        hint = "" if missing.startswith("generator") else "; install it with: pip install 'depthfusion[generator]'"
        raise BackendUnavailable(f"the LDM3D backend cannot be imported (missing module {missing}){hint}") from exc
    return LDM3DBackend.load(model, **options)
