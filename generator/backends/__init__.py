"""Backend selection: ``demo``, an LDM3D hub id or folder, ``auto`` (LDM3D, else demo), or a diffusers
text-to-image pipeline (a folder, a hub id or ``preset:NAME``) for the panorama backend."""

from __future__ import annotations

import logging
from typing import Any

from .base import RGBD, Backend, BackendUnavailable, Cancelled
from .demo import DemoBackend

__all__ = ["RGBD", "Backend", "BackendUnavailable", "Cancelled", "DemoBackend", "load_backend", "DEFAULT_LDM3D"]

log = logging.getLogger("depthfusion.backends")

DEFAULT_LDM3D = "Intel/ldm3d-pano"


def load_backend(model: str = "auto", *, demo_step_delay: float = 0.0, estimator: str | None = None,
                 **ldm3d_options: Any) -> Backend:
    """The backend for ``model``: ``demo``, ``auto`` (see ``_auto``), ``preset:NAME`` or a folder or hub id whose
    model_index.json names a supported text-to-image pipeline (the panorama backend, depth from ``estimator``,
    default Depth Anything V2 Small), else an LDM3D hub id or folder. ``offload`` (model, sequential) is the
    panorama backend's only."""
    offload = ldm3d_options.pop("offload", "none")
    if model == "demo":
        if ldm3d_options.get("decoder", "full") != "full":
            raise BackendUnavailable("the demo backend has no VAE to replace: --decoder needs an LDM3D model")
        if ldm3d_options.get("loras"):
            raise BackendUnavailable("the demo backend takes no LoRAs: give an LDM3D model with --lora")
        if offload != "none":
            raise BackendUnavailable("the demo backend has no weights to offload: --offload needs a diffusers "
                                     "pipeline (the panorama backend)")
        return DemoBackend(step_delay=demo_step_delay)
    pano = None if model == "auto" else _pano_options(model, ldm3d_options)
    if pano is not None:
        from ..estimators.checkpoints import DEFAULT_MODEL
        from .pano import PanoBackend

        return PanoBackend.load(pano.pop("model"), estimator=estimator or DEFAULT_MODEL, offload=offload, **pano,
                                **ldm3d_options)
    if offload != "none":
        raise BackendUnavailable(f"--offload {offload} is for the panorama backend's diffusers pipelines; LDM3D "
                                 "models load whole onto the device (docs/models.md#memory)")
    if model == "auto":
        return _auto(demo_step_delay, **ldm3d_options)
    return _load_ldm3d(model, **ldm3d_options)


def _pano_options(model: str, options: dict[str, Any]) -> dict[str, Any] | None:
    """What the panorama backend loads for ``model`` (a preset, or a pipeline class it supports), else None."""
    from .pano_presets import is_preset, preset

    if is_preset(model):
        chosen = preset(model)
        return {"model": chosen.base, "pipeline": chosen.pipeline, "unet": chosen.unet,
                "components": chosen.components()}
    try:
        from .pano import is_pano_class, pipeline_class
    except ImportError as exc:
        raise BackendUnavailable(_import_problem(exc)) from exc
    name = pipeline_class(model, revision=options.get("revision"), local_files_only=options.get("local_files_only",
                                                                                                False))
    return {"model": model, "pipeline": name} if is_pano_class(name) else None


def _auto(demo_step_delay: float, **options: Any) -> Backend:
    """A cached LDM3D checkpoint (pano, then 4c, then ldm3d); with none cached, ldm3d-pano downloads on a GPU
    and the demo backend runs on a CPU. Every choice and fallback is logged with its reason."""
    try:
        from .ldm3d import pick_device
        from .ldm3d_files import CHECKPOINTS, cached_checkpoints, hub_cache
    except ImportError as exc:
        log.warning("model auto: %s; using the demo backend", _import_problem(exc))
        return DemoBackend(step_delay=demo_step_delay)
    usable, reasons = cached_checkpoints(options.get("revision"))
    on_cpu = pick_device(options.get("device", "auto")).type == "cpu"
    for model in usable:
        log.info("model auto: %s, the first of %s found complete in the Hugging Face cache %s", model,
                 ", ".join(CHECKPOINTS), hub_cache())
        for skipped in CHECKPOINTS[:CHECKPOINTS.index(model)]:
            log.info("model auto: not %s: %s", skipped, reasons[skipped])
        try:
            return _load_ldm3d(model, **{**options, "local_files_only": True})
        except BackendUnavailable as exc:
            reasons[model] = str(exc)
            log.warning("model auto: %s did not load (%s)", model, exc)
    if not usable and not on_cpu and not options.get("local_files_only"):
        log.info("model auto: no LDM3D checkpoint in the Hugging Face cache %s; fetching %s", hub_cache(),
                 DEFAULT_LDM3D)
        try:
            return _load_ldm3d(DEFAULT_LDM3D, **options)
        except BackendUnavailable as exc:
            reasons[DEFAULT_LDM3D] = str(exc)
    why = "; ".join(reasons.values()) or "no cached checkpoint loaded"
    cpu = " (on a CPU auto never starts a multi-GB download)" if on_cpu and not usable else ""
    if options.get("loras"):
        raise BackendUnavailable(f"LDM3D is unavailable{cpu}: {why}; the demo backend takes no LoRAs")
    log.warning("model auto: LDM3D is unavailable%s: %s. Using the demo backend; "
                "`python -m generator download %s` fetches a checkpoint", cpu, why, DEFAULT_LDM3D)
    return DemoBackend(step_delay=demo_step_delay)


def _import_problem(exc: ImportError) -> str:
    return (f"the LDM3D backend cannot be imported (missing module {exc.name or exc}); "
            "install it with: pip install 'depthfusion[generator]'")


def _load_ldm3d(model: str, **options: Any) -> Backend:
    try:
        from .ldm3d import LDM3DBackend
    except ImportError as exc:
        raise BackendUnavailable(_import_problem(exc)) from exc
    return LDM3DBackend.load(model, **options)
