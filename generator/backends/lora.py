"""LoRA adapters on LDM3D's U-Net and CLIP text encoder, through diffusers' own loaders (peft underneath).

A LoRA is given as ``[NAME=]SOURCE[:SCALE]``: SOURCE is a ``.safetensors`` file, a folder holding one, a hub id
(``owner/repo``, whose one ``.safetensors`` file is taken) or a file in a hub repository
(``owner/repo/file.safetensors``, for repositories that hold several). Only safetensors are read: a LoRA file is
data, and ``.bin`` files are pickles. diffusers' ``StableDiffusionLoraLoaderMixin.lora_state_dict`` turns the
kohya/A1111 naming most LoRAs are shared in, and the diffusers/PEFT naming, into one; every key is then checked
against this model's modules and shapes before anything is loaded, so a LoRA for SDXL or SD 2 is refused with the
key that does not fit. Each loaded LoRA is a named adapter whose weight can change from frame to frame; a fixed set
can be fused into the weights for speed, and unfusing puts the exact original weights back.
"""

from __future__ import annotations

import hashlib
import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from td_bridge.params import LORA_NAME

from .base import BackendUnavailable

log = logging.getLogger("depthfusion.lora")

SUFFIX = ".safetensors"
SCALE_RANGE = (-4.0, 4.0)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
NAME = re.compile(LORA_NAME)
PREFIXES = ("unet", "text_encoder")  # what an SD 1.x LoRA may target
LORA_KEY = re.compile(r"(?P<module>.+?)\.lora_(?P<part>A|B)\.weight")  # peft naming, per model


class LoraError(BackendUnavailable, ValueError):
    """A LoRA that cannot be used with this model, or a LoRA name or scale that is not valid."""


@dataclass(frozen=True)
class LoraSpec:
    name: str
    source: str
    scale: float = 1.0


@dataclass(frozen=True)
class LoadedLora:
    name: str
    source: str
    file: Path
    sha256: str
    scale: float  # the default weight, as given at load
    targets: tuple[str, ...]  # "unet", "text_encoder"

    def record(self, weight: float) -> dict[str, Any]:
        """What a frame's metadata keeps to reproduce it."""
        return {"name": self.name, "source": self.source, "file": self.file.name, "sha256": self.sha256,
                "scale": weight}


def parse(text: str) -> LoraSpec:
    """``[NAME=]SOURCE[:SCALE]``; the name defaults to the file's or repository's last part."""
    text = str(text).strip()
    head, equals, tail = text.partition("=")
    name, text = (head, tail) if equals and not re.search(r"[/\\:]", head) else ("", text)  # NAME=, not a path
    source, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)", tail):  # not a Windows drive letter (C:\…)
        source, scale = head, float(tail)
    if not source:
        raise LoraError(f"--lora {text!r}: no source (a .safetensors file, a folder or a hub id)")
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1]:
        raise LoraError(f"--lora {text!r}: scale {scale} is outside {SCALE_RANGE[0]} … {SCALE_RANGE[1]}")
    name = name or re.sub(r"[^A-Za-z0-9_.-]", "-", re.split(r"[/\\]", source.rstrip("/\\"))[-1].removesuffix(SUFFIX))[:64]
    if not NAME.fullmatch(name):
        raise LoraError(f"--lora: {name!r} is not a usable LoRA name (letters, digits, _ . -; at most 64; give "
                        "NAME=SOURCE)")
    return LoraSpec(name, source, scale)


def load_all(loras: Any, specs: Iterable[str | LoraSpec], *, local_files_only: bool = False) -> None:
    """Load each LoRA (``[NAME=]SOURCE[:SCALE]`` or a LoraSpec) into ``loras`` (a LoraSet or a backend's like it),
    logging what was loaded."""
    for spec in specs:
        lora = loras.load(spec if isinstance(spec, LoraSpec) else parse(spec), local_files_only=local_files_only)
        log.info("LoRA %s: %s (%s, sha256 %s…) on the %s at %g", lora.name, lora.source, lora.file.name,
                 lora.sha256[:12], " and ".join(lora.targets), lora.scale)


def locate(source: str, *, local_files_only: bool = False, revision: str | None = None) -> Path:
    """The .safetensors file a LoRA source names (downloaded into the Hugging Face cache for a hub id)."""
    path = Path(source).expanduser()
    if path.is_file():
        if path.suffix != SUFFIX:
            raise LoraError(f"{path}: only {SUFFIX} LoRA files are read (.bin and .ckpt files are pickles)")
        return path
    if path.is_dir():
        files = sorted(path.glob(f"*{SUFFIX}"))
        if len(files) != 1:
            found = ", ".join(f.name for f in files) or "none"
            raise LoraError(f"{path}: needs exactly one {SUFFIX} file (found: {found}); name the file instead")
        return files[0]
    return _from_hub(source, local_files_only=local_files_only, revision=revision)


def _from_hub(source: str, *, local_files_only: bool, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download, list_repo_files

    parts = source.strip("/").split("/")
    named_file = source.endswith(SUFFIX) and len(parts) > 2
    repo, weight_name = ("/".join(parts[:2]), "/".join(parts[2:])) if named_file else (source, "")
    if not HUB_ID.fullmatch(repo):
        raise LoraError(f"LoRA {source!r} is not a file, a folder or a hub id (owner/repo[/file{SUFFIX}])")
    try:
        if not weight_name:
            if local_files_only:
                raise LoraError(f"LoRA {source}: offline, name the file: {source}/FILE{SUFFIX}")
            files = [f for f in list_repo_files(repo, revision=revision) if f.endswith(SUFFIX) and "/" not in f]
            if len(files) != 1:
                raise LoraError(f"LoRA {source}: the repository holds {len(files)} {SUFFIX} files at its top "
                                f"({', '.join(files) or 'none'}); name one: {source}/FILE{SUFFIX}")
            weight_name = files[0]
        return Path(hf_hub_download(repo, weight_name, revision=revision, local_files_only=local_files_only))
    except LoraError:
        raise
    except Exception as exc:  # huggingface_hub raises many kinds: offline, not found, gated, network
        raise LoraError(f"LoRA {source}: cannot get it from the Hugging Face hub ({type(exc).__name__}: {exc})") \
            from exc


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read(path: Path) -> tuple[dict[str, torch.Tensor], Any]:
    """(state dict in diffusers/PEFT naming with unet./text_encoder. prefixes, network alphas) of a LoRA file."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        raw = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise LoraError(f"{path}: not a readable {SUFFIX} file ({exc})") from exc
    if not raw:
        raise LoraError(f"{path}: holds no tensors")
    try:
        state, alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(raw)
    except Exception as exc:  # diffusers' converters raise ValueError, KeyError, IndexError … on foreign layouts
        raise LoraError(f"{path}: not a Stable Diffusion 1.x LoRA diffusers can read (first key {next(iter(raw))!r}; "
                        f"{type(exc).__name__}: {exc})") from exc
    return state, alphas


def per_model(state: Mapping[str, torch.Tensor], text_encoder: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """{"unet": …, "text_encoder": …} in peft naming, converted as diffusers' loaders convert them before loading;
    keys for neither are kept under their own first part."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft, \
        convert_unet_state_dict_to_peft

    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        prefix, _, rest = key.partition(".")
        parts.setdefault(prefix, {})[rest] = tensor
    if "unet" in parts and not any("lora_A" in key for key in parts["unet"]):
        parts["unet"] = convert_unet_state_dict_to_peft(parts["unet"])
    if "text_encoder" in parts:
        converted = convert_state_dict_to_peft(convert_state_dict_to_diffusers(parts["text_encoder"]))
        if not hasattr(text_encoder, "text_model"):  # flattened CLIPTextModel in newer transformers
            converted = {key.removeprefix("text_model."): value for key, value in converted.items()}
        parts["text_encoder"] = converted
    return parts


def check_fits(path: Path, state: Mapping[str, torch.Tensor], models: Mapping[str, torch.nn.Module]) -> tuple[str, ...]:
    """The models (unet, text_encoder) a LoRA's keys target; LoraError naming the first key whose module is missing
    or whose shape does not fit (a LoRA for SDXL or SD 2, say)."""
    modules = {prefix: dict(model.named_modules()) for prefix, model in models.items()}
    targets = set()
    for prefix, keys in per_model(state, models["text_encoder"]).items():
        for rest, tensor in keys.items():
            key = f"{prefix}.{rest}"
            _check_key(path, key, prefix, rest, tensor, modules)
            targets.add(prefix)
    if not targets:
        raise LoraError(f"{path}: no LoRA weight for an SD 1.x U-Net or text encoder in it")
    return tuple(prefix for prefix in PREFIXES if prefix in targets)


def _check_key(path: Path, key: str, prefix: str, rest: str, tensor: torch.Tensor,
               modules: Mapping[str, Mapping[str, torch.nn.Module]]) -> None:
    match = LORA_KEY.fullmatch(rest)
    if prefix not in PREFIXES or match is None:
        if rest.endswith(".alpha") or ".lora_magnitude_vector" in rest:
            return
        raise LoraError(f"{path}: key {key!r} is not a LoRA weight of an SD 1.x U-Net or text encoder")
    name, part = match["module"], match["part"]
    module = modules.get(prefix, {}).get(name)
    if module is None:
        raise LoraError(f"{path}: key {key!r} names no module of this model's {prefix} "
                        "(a LoRA for another architecture, e.g. SDXL or SD 2?)")
    if hasattr(module, "get_base_layer"):  # already wrapped by another LoRA
        module = module.get_base_layer()
    if isinstance(module, torch.nn.Linear):
        fits = tensor.ndim == 2 and (tensor.shape[1] == module.in_features if part == "A"
                                     else tensor.shape[0] == module.out_features)
        wanted = f"Linear {module.in_features} → {module.out_features}"
    elif isinstance(module, torch.nn.Conv2d):
        fits = tensor.ndim == 4 and (tensor.shape[1] == module.in_channels if part == "A"
                                     else tensor.shape[0] == module.out_channels)
        wanted = f"Conv2d {module.in_channels} → {module.out_channels}"
    else:
        fits, wanted = False, type(module).__name__
    if not fits:
        raise LoraError(f"{path}: key {key!r} has shape {tuple(tensor.shape)}, which does not fit {prefix}.{name} "
                        f"({wanted}; a LoRA for another architecture, e.g. SDXL or SD 2?)")


class LoraSet:
    """The LoRAs loaded into one U-Net and text encoder: weights per frame, or fused."""

    def __init__(self, unet: torch.nn.Module, text_encoder: torch.nn.Module) -> None:
        self.unet, self.text_encoder = unet, text_encoder
        self.loaded: dict[str, LoadedLora] = {}
        self.fused: dict[str, float] | None = None
        self._originals: dict[str, torch.Tensor] = {}
        self._active: dict[str, float] | None = None

    def load(self, spec: LoraSpec, *, local_files_only: bool = False, revision: str | None = None) -> LoadedLora:
        from diffusers.loaders import StableDiffusionLoraLoaderMixin as Loader

        if spec.name in self.loaded:
            raise LoraError(f"two LoRAs are named {spec.name!r}: name them NAME=SOURCE")
        if self.fused is not None:
            raise LoraError("the LoRAs are fused: unfuse before loading another")
        path = locate(spec.source, local_files_only=local_files_only, revision=revision)
        state, alphas = read(path)
        targets = check_fits(path, state, {"unet": self.unet, "text_encoder": self.text_encoder})
        try:
            Loader.load_lora_into_unet(state, alphas, self.unet, adapter_name=spec.name)
            if "text_encoder" in targets:
                with warnings.catch_warnings():  # peft warns that a second adapter joins the first: intended
                    warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                    Loader.load_lora_into_text_encoder(state, alphas, self.text_encoder, prefix="text_encoder",
                                                       adapter_name=spec.name)
        except Exception as exc:  # peft and diffusers raise ValueError, RuntimeError … for what they cannot take
            raise LoraError(f"{path}: diffusers could not load it ({type(exc).__name__}: {exc})") from exc
        lora = LoadedLora(spec.name, spec.source, path, file_sha256(path), spec.scale, targets)
        self.loaded[spec.name] = lora
        self._active = None
        return lora

    def weights(self, requested: Mapping[str, float] | None) -> dict[str, float]:
        """The weight of each LoRA for a frame: ``requested`` (name → weight; unknown names refused), or every
        loaded LoRA at its default scale when None."""
        if requested is None:
            return {name: lora.scale for name, lora in self.loaded.items()}
        unknown = [name for name in requested if name not in self.loaded]
        if unknown:
            known = ", ".join(self.loaded) or "none (serve --lora NAME=SOURCE:SCALE loads them)"
            raise LoraError(f"LoRA {', '.join(map(repr, unknown))} is not loaded; loaded: {known}")
        return dict(requested)

    def check(self, weights: Mapping[str, float]) -> None:
        """LoraError unless a frame can have these weights: fused LoRAs take only the weights they were fused at."""
        if self.fused is not None and dict(weights) != self.fused:
            raise LoraError(f"the LoRAs are fused at {self.fused} (serve --fuse-lora); restart without --fuse-lora "
                            "to change them per frame")

    def activate(self, weights: Mapping[str, float]) -> None:
        """Give the adapters these weights (the others 0) for the next frame; nothing to do when unchanged."""
        from diffusers.utils.peft_utils import set_weights_and_activate_adapters

        self.check(weights)
        if self.fused is not None or not self.loaded or dict(weights) == self._active:
            return
        names = list(self.loaded)
        values = [float(weights.get(name, 0.0)) for name in names]
        self.unet.set_adapters(names, values)
        text_names = [name for name in names if "text_encoder" in self.loaded[name].targets]
        if text_names:
            set_weights_and_activate_adapters(self.text_encoder, text_names,
                                              [float(weights.get(name, 0.0)) for name in text_names])
        self._active = dict(weights)

    def fuse(self, weights: Mapping[str, float]) -> None:
        """Merge the LoRAs into the weights at ``weights`` (one fixed set: faster, no per-frame change)."""
        self.activate(weights)
        self._originals = {f"{prefix}:{name}": parameter.detach().clone()
                           for prefix, model in (("unet", self.unet), ("text_encoder", self.text_encoder))
                           for name, parameter in _lora_base_weights(model)}
        self.unet.fuse_lora(lora_scale=1.0, adapter_names=list(self.loaded))
        if any("text_encoder" in lora.targets for lora in self.loaded.values()):
            _merge_text_encoder(self.text_encoder)
        self.fused = dict(weights)

    def unfuse(self) -> None:
        """Take fused LoRAs out again, restoring the exact original weights."""
        if self.fused is None:
            return
        self.unet.unfuse_lora()
        _unmerge_text_encoder(self.text_encoder)
        with torch.no_grad():
            for prefix, model in (("unet", self.unet), ("text_encoder", self.text_encoder)):
                for name, parameter in _lora_base_weights(model):
                    parameter.copy_(self._originals[f"{prefix}:{name}"])
        self._originals, self.fused = {}, None

    def unload(self) -> None:
        """Remove every LoRA: the models are as loaded, bit for bit."""
        from diffusers.utils.peft_utils import recurse_remove_peft_layers

        self.unfuse()
        if self.loaded:
            self.unet.unload_lora()
            recurse_remove_peft_layers(self.text_encoder)
            for attribute in ("peft_config", "_hf_peft_config_loaded"):
                if hasattr(self.text_encoder, attribute):
                    delattr(self.text_encoder, attribute)
        self.loaded, self._active = {}, None

    def records(self, weights: Mapping[str, float]) -> list[dict[str, Any]]:
        return [self.loaded[name].record(weight) for name, weight in weights.items() if weight != 0.0]


def _lora_layers(model: torch.nn.Module) -> Iterable[Any]:
    from peft.tuners.lora import LoraLayer

    return (module for module in model.modules() if isinstance(module, LoraLayer))


def _lora_base_weights(model: torch.nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module.get_base_layer().weight
            if module.get_base_layer().bias is not None:
                yield f"{name}.bias", module.get_base_layer().bias


def _merge_text_encoder(model: torch.nn.Module) -> None:
    for layer in _lora_layers(model):
        layer.merge(adapter_names=[name for name in layer.active_adapters if name in layer.lora_A])


def _unmerge_text_encoder(model: torch.nn.Module) -> None:
    for layer in _lora_layers(model):
        if layer.merged:
            layer.unmerge()
