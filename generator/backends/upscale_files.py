"""The files of an ldm3d-sr upscaler and the checks of its configs, all before any weights load.

``model_index.json`` must name ``StableDiffusionUpscaleLDM3DPipeline`` with a DDPM ``low_res_scheduler``; the
U-Net must take twice the VAE's latent channels (noisy latents + the low-resolution frame's latents) and embed the
noise level as a class; the VAE must encode and decode 4 channels (RGB + depth). What does not fit is refused with
the reason, and the weights are never read.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import BackendUnavailable
from .ldm3d_files import HUB_ID, SKIPPED, WEIGHT_FORMATS, _cache_folder_message, hub_cache

PIPELINE = "StableDiffusionUpscaleLDM3DPipeline"
DEFAULT_UPSCALER = "Intel/ldm3d-sr"
COMPONENTS = ("scheduler", "low_res_scheduler", "tokenizer", "text_encoder", "unet", "vae")
WEIGHTED = ("text_encoder", "unet", "vae")
CONFIGS = {"text_encoder": "config.json", "unet": "config.json", "vae": "config.json",
           "scheduler": "scheduler_config.json", "low_res_scheduler": "scheduler_config.json"}
DEFAULT_MAX_NOISE_LEVEL = 350  # the pipeline's own default where model_index.json records none
CLASS_EMBEDDINGS = (None, "timestep")  # an embedding table indexed by the level, or the level as a timestep


@dataclass(frozen=True)
class UpscalerSpec:
    """What the configs promise: checked, so that loading can only fail on the weights themselves."""

    folder: Path
    max_noise_level: int
    latent_channels: int
    scale_factor: int  # pixels per latent cell
    safetensors: dict[str, bool]  # per weighted component: safetensors weights (else .bin)


def _read_json(path: Path, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackendUnavailable(f"{where}: {path.parent.name}/{path.name} is missing") from None
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(f"{where}: {path.parent.name}/{path.name} is unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise BackendUnavailable(f"{where}: {path.parent.name}/{path.name} is not a JSON object")
    return data


def _int(config: dict[str, Any], key: str, where: str) -> int:
    value = config.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BackendUnavailable(f"{where}: {key} must be an integer, got {value!r}")
    return value


def check_index(index: dict[str, Any], where: str) -> int:
    """The max noise level, once the index names the upscaler pipeline and all its components."""
    name = index.get("_class_name")
    if name != PIPELINE:
        hint = " (a text-to-RGBD model: serve it with --model)" if "LDM3D" in str(name) else ""
        raise BackendUnavailable(f"{where} is {name or 'no named pipeline'}{hint}, not the RGBD upscaler: "
                                 f"model_index.json must name {PIPELINE}, as {DEFAULT_UPSCALER}'s does")
    missing = [c for c in COMPONENTS if not isinstance(index.get(c), list) or None in index[c]]
    if missing:
        raise BackendUnavailable(f"{where}: model_index.json lists no {', '.join(missing)}")
    if index["low_res_scheduler"][-1] != "DDPMScheduler":
        raise BackendUnavailable(f"{where}: the low_res_scheduler is {index['low_res_scheduler'][-1]}, "
                                 "the upscaler adds its noise with a DDPMScheduler")
    level = index.get("max_noise_level", DEFAULT_MAX_NOISE_LEVEL)
    if not isinstance(level, int) or isinstance(level, bool) or level < 0:
        raise BackendUnavailable(f"{where}: max_noise_level must be a non-negative integer, got {level!r}")
    return level


def check_configs(folder: Path, where: str | None = None) -> UpscalerSpec:
    """Read and check model_index.json and every component's config in ``folder``; weights are only looked for."""
    where = where or str(folder)
    max_level = check_index(_read_json(folder / "model_index.json", where), where)
    configs = {name: _read_json(folder / name / file, where) for name, file in CONFIGS.items()}
    unet, vae, low_res = configs["unet"], configs["vae"], configs["low_res_scheduler"]
    latent = _int(vae, "latent_channels", where)
    if (_int(vae, "in_channels", where), _int(vae, "out_channels", where)) != (4, 4):
        raise BackendUnavailable(f"{where}: the VAE codes {vae['in_channels']} → {vae['out_channels']} channels; "
                                 "the upscaler needs 4 (RGB + depth) in and out")
    if _int(unet, "in_channels", where) != 2 * latent or _int(unet, "out_channels", where) != latent:
        raise BackendUnavailable(
            f"{where}: the U-Net takes {unet['in_channels']} and gives {unet['out_channels']} channels; an upscaler "
            f"on a VAE of {latent} latent channels takes {2 * latent} (noisy + low-resolution latents) and gives "
            f"{latent}")
    _check_class_embedding(unet, max_level, where)
    if low_res.get("_class_name") != "DDPMScheduler":
        raise BackendUnavailable(f"{where}: low_res_scheduler/scheduler_config.json is a "
                                 f"{low_res.get('_class_name')}, not a DDPMScheduler")
    if _int(low_res, "num_train_timesteps", where) <= max_level:
        raise BackendUnavailable(f"{where}: the low-res scheduler has {low_res['num_train_timesteps']} noise "
                                 f"levels, fewer than max_noise_level {max_level} + 1")
    width = _int(configs["text_encoder"], "hidden_size", where)
    if unet.get("cross_attention_dim") != width:
        raise BackendUnavailable(f"{where}: the text encoder's width {width} does not match the U-Net's "
                                 f"cross-attention width {unet.get('cross_attention_dim')}")
    blocks = vae.get("block_out_channels")
    if not isinstance(blocks, list) or not blocks:
        raise BackendUnavailable(f"{where}: the VAE config has no block_out_channels")
    return UpscalerSpec(folder, max_level, latent, 2 ** (len(blocks) - 1), _weights(folder, where))


def _check_class_embedding(unet: dict[str, Any], max_level: int, where: str) -> None:
    kind, count = unet.get("class_embed_type"), unet.get("num_class_embeds")
    if kind not in CLASS_EMBEDDINGS:
        raise BackendUnavailable(f"{where}: the U-Net's class_embed_type {kind!r} cannot take a noise level "
                                 "(the upscaler needs an embedding table or 'timestep')")
    if kind is None and not (isinstance(count, int) and count > max_level):
        raise BackendUnavailable(f"{where}: the U-Net embeds {count} noise levels (num_class_embeds); "
                                 f"max_noise_level {max_level} needs {max_level + 1}")


def _weights(folder: Path, where: str) -> dict[str, bool]:
    found = {}
    for name in WEIGHTED:
        files = [p.suffix for p in (folder / name).glob("*") if p.suffix in WEIGHT_FORMATS
                 and not any(fnmatch(p.name, pattern) for pattern in SKIPPED)]
        dangling = [p.name for p in (folder / name).glob("*") if p.is_symlink() and not p.exists()]
        if dangling:
            raise BackendUnavailable(f"{where}: {name}/{dangling[0]} links to a file that is not there (a cache "
                                     "snapshot copied without its blobs/? copy with links followed, cp -rL)")
        if not files:
            raise BackendUnavailable(f"{where}: no weights in {name}/ (*.safetensors or *.bin)")
        found[name] = ".safetensors" in files
    return found


def resolve(model: str, *, revision: str | None = None, local_files_only: bool = False) -> UpscalerSpec:
    """A checked upscaler from a folder or a hub id; from the hub the configs come first, the weights only after
    they passed."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        if not (folder / "model_index.json").exists() and any((folder / d).is_dir() for d in ("snapshots", "blobs")):
            raise BackendUnavailable(_cache_folder_message(folder))
        return check_configs(folder)
    if not HUB_ID.match(model):
        raise BackendUnavailable(f"upscaler {model!r} is neither an existing folder nor a hub id like "
                                 f"{DEFAULT_UPSCALER}")
    configs = ["model_index.json", *(f"{c}/*.json" for c in COMPONENTS), "tokenizer/*.txt"]
    check_configs(_snapshot(model, revision, local_files_only, configs), model)
    folder = _snapshot(model, revision, local_files_only, configs + [f"{c}/*.safetensors" for c in WEIGHTED])
    missing = [c for c in WEIGHTED if not any((folder / c).glob("*.safetensors"))]
    if missing:  # older repositories ship PyTorch .bin weights only
        folder = _snapshot(model, revision, local_files_only, configs + [f"{c}/*.bin" for c in missing])
    return check_configs(folder, model)


def _snapshot(model: str, revision: str | None, local_files_only: bool, patterns: list[str]) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(model, revision=revision, local_files_only=local_files_only,
                                      allow_patterns=patterns, ignore_patterns=list(SKIPPED)))
    except LocalEntryNotFoundError as exc:
        where = f"is not in the local Hugging Face cache ({hub_cache()})"
        where += "" if local_files_only else " and the hub is unreachable"
        raise BackendUnavailable(f"the upscaler {model} {where}: fetch it where there is internet "
                                 f"(`hf download {model}`), copy the cache over, or pass a local folder") from exc
    except (HfHubHTTPError, OSError) as exc:
        raise BackendUnavailable(f"the hub refused {model} (revision {revision or 'main'}): {exc}") from exc
