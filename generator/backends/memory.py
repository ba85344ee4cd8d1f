"""Memory for big models: will the weights fit on the device (checked before loading), the offload modes, and the
peak memory a frame took.

The weights' size comes from the safetensors headers of the model's components (each tensor's dtype and shape,
read through safetensors' ``safe_open``; no tensor is read), with floating-point tensors counted at the dtype
they will be loaded in and integer ones as stored. The fit rule, each with MARGIN on top for activations, the
depth model and the allocator's slack (an estimate that refuses only what surely cannot fit, not a guarantee):

- ``--offload none``: every component's weights must fit in the device's free memory;
- ``--offload model`` (diffusers' model CPU offload: one component on the device at a time): the largest component;
- ``--offload sequential`` (layer by layer): the largest layer (the tensors sharing one module prefix);
- with either offload the whole pipeline waits in host memory, which must hold it (MemAvailable on Linux).

Free memory: ``torch.cuda.mem_get_info`` on CUDA, /proc/meminfo's MemAvailable for the CPU; elsewhere (MPS, other
systems) unknown. An unknown size or free memory skips the check with a log line; it never refuses.
"""

from __future__ import annotations

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterable

from .base import BackendUnavailable
from .ldm3d_files import HUB_ID

log = logging.getLogger("depthfusion.memory")

GIB = 1024 ** 3
MARGIN = 0.2  # of what must fit, for activations, the depth model and the allocator's slack
OFFLOADS = ("none", "model", "sequential")
FLOATS = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}  # loaded in the target dtype
FIXED = {"I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
         "F8_E4M3": 1, "F8_E5M2": 1}  # loaded as stored


@dataclass
class Layer:
    """The tensors of one module prefix: floating-point elements (and their stored bytes), other bytes."""

    floats: int = 0
    float_bytes: int = 0
    fixed: int = 0

    def nbytes(self, itemsize: int | None = None) -> int:
        """Bytes with floating-point tensors at ``itemsize`` bytes each (None: as stored)."""
        return (self.float_bytes if itemsize is None else self.floats * itemsize) + self.fixed


@dataclass(frozen=True)
class Weights:
    """A model's weights: component → layer (module prefix) → its tensors' sizes."""

    components: dict[str, dict[str, Layer]]

    def component_bytes(self, itemsize: int | None = None) -> dict[str, int]:
        return {name: sum(layer.nbytes(itemsize) for layer in layers.values())
                for name, layers in self.components.items()}

    def total(self, itemsize: int | None = None) -> int:
        return sum(self.component_bytes(itemsize).values())

    def need(self, offload: str, itemsize: int | None = None) -> tuple[str, int]:
        """(what must be on the device at once, its bytes) under ``offload``'s rule."""
        if offload == "none":
            return "the whole pipeline", self.total(itemsize)
        if offload == "model":
            name, size = max(self.component_bytes(itemsize).items(), key=lambda item: item[1], default=("", 0))
            return f"its largest component ({name})", size
        (name, layer), size = max((((c, n), layer.nbytes(itemsize)) for c, layers in self.components.items()
                                   for n, layer in layers.items()), key=lambda item: item[1], default=(("", ""), 0))
        return f"its largest layer ({name}: {layer})", size


# ------------------------------------------------------------------ sizes from safetensors headers


def add_file(layers: dict[str, Layer], path: Path) -> None:
    """Add a safetensors file's tensors to ``layers``, grouped by module prefix: their dtypes and shapes from its
    header, through safetensors (the file is mapped, no tensor is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        for name in file.keys():
            tensor = file.get_slice(name)
            count, dtype = math.prod(tensor.get_shape()), tensor.get_dtype()
            layer = layers.setdefault(name.rpartition(".")[0], Layer())
            if dtype in FLOATS:
                layer.floats += count
                layer.float_bytes += count * FLOATS[dtype]
            elif dtype in FIXED:
                layer.fixed += count * FIXED[dtype]
            else:
                raise ValueError(f"{path}: tensor {name} has dtype {dtype}, of unknown size")


def weight_files(component: Path) -> list[Path] | None:
    """The safetensors files diffusers and transformers load from a component folder without a variant (no
    ``.fp16``-style part in the name; shards included); [] for a part without weights (tokenizer, scheduler:
    no config.json); None where a model's weights are not (all) safetensors or are missing."""
    if not component.is_dir():
        return None
    files = sorted(p for p in component.glob("*.safetensors") if "." not in p.stem)
    if files:
        return files
    return None if (component / "config.json").is_file() else []


def folder_weights(folder: Path, only: Iterable[str] | None = None, skip: Collection[str] = ()) -> Weights | None:
    """The weights of a diffusers-layout folder's components (``only`` these, else those model_index.json names,
    less ``skip``); None where any component's size cannot be read."""
    if only is None:
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        only = [name for name, value in index.items() if not name.startswith("_") and isinstance(value, list)
                and value and value[0] is not None]
    components: dict[str, dict[str, Layer]] = {}
    for name in only:
        if name in skip:
            continue
        files = weight_files(folder / name)
        if files is None:
            log.info("memory check skipped: no safetensors weights for %s in %s", name, folder)
            return None
        layers: dict[str, Layer] = {}
        for path in files:
            add_file(layers, path)
        if layers:
            components[name] = layers
    return Weights(components)


def model_weights(model: str, *, revision: str | None = None, only: Iterable[str] | None = None,
                  skip: Collection[str] = ()) -> Weights | None:
    """The weights of a folder, or of a hub id already in the Hugging Face cache (nothing is fetched); None, with a
    log line, where they cannot be read."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        if not HUB_ID.match(model):
            return None
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(model, revision=revision, local_files_only=True))
        except Exception:  # not cached (yet): the size is known only once it is downloaded
            log.info("memory check skipped: %s is not in the Hugging Face cache yet, so its size is unknown", model)
            return None
    from safetensors import SafetensorError

    try:
        return folder_weights(folder, only, skip)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as exc:
        log.info("memory check skipped: cannot read the weights' sizes in %s (%s)", folder, exc)
        return None


# ------------------------------------------------------------------ free memory and the check


def host_free() -> int | None:
    """Bytes of host memory available (Linux /proc/meminfo MemAvailable), else None."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_memory(device: Any) -> int | None:
    """Free bytes on a torch device: CUDA's free memory, the host's for the CPU; None where unknown."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return host_free() if device.type == "cpu" else None


def check_offload(offload: str, device: Any) -> None:
    """BackendUnavailable for an unknown mode, or an offload onto the CPU (the weights already live there)."""
    if offload not in OFFLOADS:
        raise BackendUnavailable(f"offload must be one of {', '.join(OFFLOADS)}, got {offload!r}")
    if offload != "none" and device.type == "cpu":
        raise BackendUnavailable(f"--offload {offload} moves weights between host memory and a GPU; on the CPU "
                                 "they are in host memory already: leave --offload out, or give a --device GPU")


def _gib(size: float) -> str:
    return f"{size / GIB:.2f} GiB"


def _suggestions(weights: Weights, device: Any, itemsize: int, offload: str, free: int, can_offload: bool) -> str:
    """The --offload and --dtype changes under which ``weights`` would fit, each with what it then needs: single
    changes first, both together where no single one fits."""
    half = [("bf16" if device.type == "cpu" else "fp16 (or bf16)", 2)] if itemsize > 2 else []
    modes = OFFLOADS[OFFLOADS.index(offload) + 1:] if can_offload and device.type != "cpu" else ()
    singles = [(f"--dtype {name}", offload, size) for name, size in half]
    singles += [(f"--offload {mode}", mode, itemsize) for mode in modes]
    both = [(f"--offload {mode} --dtype {name}", mode, size) for mode in modes for name, size in half]
    for changes in (singles, both):
        needs = [(flags, weights.need(mode, size)[1] * (1 + MARGIN)) for flags, mode, size in changes]
        fitting = [f"{flags} ({_gib(need)})" for flags, need in needs if need <= free]
        if fitting:
            return "; it would fit with " + " or ".join(fitting)
    if not singles:
        return ""
    flags, mode, size = (both or singles)[-1]
    return f"; even {flags} needs {_gib(weights.need(mode, size)[1] * (1 + MARGIN))}"


def check_fit(weights: Weights, device: Any, dtype: Any, offload: str, free: int, host: int | None = None,
              model: str = "the model", can_offload: bool = True) -> None:
    """BackendUnavailable, with sizes and what would fit (offloading only where ``can_offload``), where ``weights``
    loaded in ``dtype`` cannot fit in ``free`` bytes on ``device`` under ``offload``'s rule (or, offloading, in
    ``host`` bytes of host memory, unless None)."""
    itemsize = dtype.itemsize
    precision = str(dtype).removeprefix("torch.")
    what, size = weights.need(offload, itemsize)
    need = size * (1 + MARGIN)
    if need > free:
        raise BackendUnavailable(
            f"{model} does not fit on {device}: {what} is {_gib(size)} in {precision}, {_gib(need)} with "
            f"{MARGIN:.0%} for activations, and {_gib(free)} is free"
            f"{_suggestions(weights, device, itemsize, offload, free, can_offload)} (docs/models.md#memory)")
    total = weights.total(itemsize)
    if offload != "none" and host is not None and total > host:
        raise BackendUnavailable(f"{model} does not fit in host memory: --offload {offload} keeps the whole pipeline "
                                 f"there ({_gib(total)} in {precision}) and {_gib(host)} is available")
    log.info("memory: %s needs %s on %s in %s with --offload %s; %s free", model, _gib(need), device, precision,
             offload, _gib(free))


def check_model_fits(model: str, device: Any, dtype: Any, offload: str = "none", *, revision: str | None = None,
                     only: Iterable[str] | None = None, skip: Collection[str] = (),
                     replace: dict[str, str] | None = None, label: str | None = None,
                     can_offload: bool = True) -> None:
    """Check that ``model`` (a folder or a cached hub id; named ``label`` in messages) fits before it loads
    (:func:`check_fit`); ``replace`` maps a component to the model whose same-named component is loaded instead.
    Unknown sizes or free memory skip the check, with a log line."""
    replace = replace or {}
    weights = model_weights(model, revision=revision, only=only, skip=[*skip, *replace])  # not fetched: replaced
    for name, source in replace.items():
        part = None if weights is None else model_weights(source, only=(name,))
        weights = None if part is None else Weights({**weights.components, **part.components})
    if weights is None:
        return
    free = free_memory(device)
    if free is None:
        log.info("memory check skipped: the free memory of %s is unknown", device)
        return
    check_fit(weights, device, dtype, offload, free, host_free() if offload != "none" else None, label or model,
              can_offload)


def place(pipe: Any, device: Any, offload: str) -> None:
    """A diffusers pipeline onto ``device``: whole (none), or offloaded model by model or layer by layer."""
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)


# ------------------------------------------------------------------ peak memory of a frame


def reset_peak(device: Any) -> None:
    """Start measuring a frame's peak on a CUDA device (the CPU's peak RSS cannot be reset)."""
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: Any) -> tuple[int, str] | None:
    """(bytes, what was measured) since :func:`reset_peak`: torch's peak allocated memory on a CUDA device, the
    process's peak resident set size (since it started) for the CPU; None elsewhere (MPS, no torch device)."""
    kind = getattr(device, "type", None)
    if kind == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device), "torch.cuda.max_memory_allocated"
    if kind == "cpu":
        try:
            import resource
        except ImportError:  # Windows
            return None
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak * (1 if sys.platform == "darwin" else 1024), "process peak RSS"
    return None


def record_peak(device: Any, info: dict[str, Any]) -> None:
    """Log a frame's peak memory and record it in its ``info`` (``peak_memory_gib``, ``peak_memory_of``)."""
    measured = peak_memory(device)
    if measured is None:
        return
    size, what = measured
    info.update(peak_memory_gib=round(size / GIB, 3), peak_memory_of=what)
    log.info("peak memory %s on %s (%s)", _gib(size), device, what)
