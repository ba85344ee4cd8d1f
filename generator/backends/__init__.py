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
            return _load_ldm3d(DEFAULT_LDM3D, auto=True, **ldm3d_options)
        except BackendUnavailable as exc:
            log.warning("model auto: LDM3D is unavailable (%s); using the demo backend", exc)
            return DemoBackend(step_delay=demo_step_delay)
    return _load_ldm3d(model, **ldm3d_options)


def _load_ldm3d(model: str, auto: bool = False, **options: Any) -> Backend:
    try:
        from .ldm3d import LDM3DBackend, pick_device
    except ImportError as exc:
        missing = exc.name or str(exc)
        raise BackendUnavailable(f"the LDM3D backend cannot be imported (missing module {missing}); "
                                 "install it with: pip install 'depthfusion[generator]'") from exc
    if auto and pick_device(options.get("device", "auto")).type == "cpu":
        # minutes per frame on a CPU: use weights already downloaded, never start a multi-GB download
        options["local_files_only"] = True
    return LDM3DBackend.load(model, **options)
